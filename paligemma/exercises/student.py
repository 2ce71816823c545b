"""Turn instructor notebooks into student copies: solutions (nbgrader markers) become stubs, outputs go."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("Exercise: write your solution here")'


def strip_solutions(source: str) -> tuple[str, int]:
    """Replace every BEGIN/END SOLUTION block (markers included) by a stub at the block's indentation."""
    lines, out, count, inside = source.splitlines(keepends=True), [], 0, False
    for line in lines:
        if line.strip() == BEGIN:
            if inside:
                raise ValueError(f"nested {BEGIN!r}")
            inside, count = True, count + 1
            indent = re.match(r"\s*", line).group(0)
            out.append(f"{indent}{STUB}\n")
        elif line.strip() == END:
            if not inside:
                raise ValueError(f"{END!r} without {BEGIN!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} without {END!r}")
    return "".join(out), count


def student_notebook(notebook: dict) -> tuple[dict, int]:
    """A copy of the notebook with solutions stubbed and every output and execution count cleared."""
    notebook = json.loads(json.dumps(notebook))
    total = 0
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        cell["source"], count = strip_solutions(source)
        total += count
        cell["outputs"], cell["execution_count"] = [], None
    return notebook, total


def refuse_overwriting_sources(sources: list[Path], outdir: Path) -> None:
    """Stop before writing if any target is (a link to) one of the instructor notebooks.

    A hard link or symlink in the output folder shares the file with the source: writing through
    it would replace the solutions by the student copy. `os.path.samefile` sees both kinds.
    """
    for path in sources:
        for candidate in outdir.glob("*.ipynb"):
            if candidate.exists() and os.path.samefile(candidate, path):
                raise ValueError(f"{candidate} is the same file as the instructor notebook {path} (a hard link or "
                                 "symlink): writing the student copy there would destroy the solutions; remove it "
                                 "or choose another output folder")


def write_new_file(target: Path, text: str) -> None:
    """Write `text` to a fresh file beside `target`, then rename it into place.

    The rename replaces a link at `target` by the new file instead of writing through it to
    whatever the link points at.
    """
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_student_copies(source: Path, outdir: Path) -> list[tuple[Path, int]]:
    """Write a student copy of every notebook in `source` to `outdir`; same input gives the same bytes."""
    sources = sorted(Path(source).glob("*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"no .ipynb notebooks in {source}")
    outdir.mkdir(parents=True, exist_ok=True)
    refuse_overwriting_sources(sources, outdir)
    copies = [(path, *student_notebook(json.loads(path.read_text()))) for path in sources]  # all parsed first
    written = []
    for path, notebook, count in copies:
        target = outdir / path.name
        write_new_file(target, json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
        written.append((target, count))
    (outdir.parent / "figures").mkdir(exist_ok=True)  # the notebooks save their figures to ../figures
    return written
