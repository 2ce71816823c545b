"""Turn instructor notebooks into student copies, exactly as nbgrader's `generate_assignment` releases them.

Each step is one of nbgrader's: lock the answer and graded cells against deletion (and the graded ones
against editing), replace every solution region by nbgrader's stub, clear the outputs, and record each
cell's checksum (which lets the autograder give zero to an answer left untouched).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from .nbgrader_format import BEGIN, END, checksum, has_solution, source

CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"  # nbgrader's defaults, so both tools agree
TEXT_STUB = "YOUR ANSWER HERE"
OUTPUT_METADATA = ("collapsed", "scrolled")  # cleared with the outputs, as nbconvert's ClearOutput does


def strip_solutions(text: str, stub: str = CODE_STUB) -> tuple[str, int]:
    """Replace every BEGIN/END SOLUTION region (marker lines included) by `stub` at the marker's indentation."""
    out, count, inside = [], 0, False
    for line in text.split("\n"):
        if BEGIN in line:
            if inside:
                raise ValueError(f"nested {BEGIN!r} in:\n{text}")
            inside, count = True, count + 1
            indent = re.match(r"\s*", line).group(0)
            out += [indent + stub_line for stub_line in stub.split("\n")]
        elif END in line:
            if not inside:
                raise ValueError(f"{END!r} without {BEGIN!r} in:\n{text}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} without {END!r} in:\n{text}")
    return "\n".join(out), count


def _lock(cell: dict, meta: dict) -> None:
    if meta.get("solution"):
        cell["metadata"]["deletable"] = False
    elif meta.get("grade") or meta.get("locked"):
        cell["metadata"]["deletable"] = False
        cell["metadata"]["editable"] = False


def student_notebook(notebook: dict) -> tuple[dict, int]:
    """A student copy of `notebook` and the number of solution regions replaced."""
    notebook = json.loads(json.dumps(notebook))
    notebook["metadata"].pop("celltoolbar", None)
    total = 0
    for cell in notebook["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader")
        if has_solution(cell) and not (meta and meta.get("solution")):
            raise ValueError("solution region in a cell without nbgrader solution metadata (run `python -m "
                             f"paligemma.exercises tag` on the notebook first):\n{source(cell)}")
        if meta:
            _lock(cell, meta)
        stub = CODE_STUB if cell["cell_type"] == "code" else TEXT_STUB
        text, count = strip_solutions(source(cell), stub)
        total += count
        if meta and meta.get("solution") and not count:  # an answer cell without markers: all of it goes
            text = stub
        cell["source"] = text.splitlines(keepends=True)  # stored line by line, as nbformat writes it
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            for field in OUTPUT_METADATA:
                cell["metadata"].pop(field, None)
        if meta and (meta.get("grade") or meta.get("solution") or meta.get("locked")):
            meta["checksum"], meta["cell_type"] = checksum(cell), cell["cell_type"]
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


def notebook_json(notebook: dict) -> str:
    """The file text, formatted as Jupyter and nbgrader write notebooks (so the two tools give the same bytes)."""
    return json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def write_student_copies(source_dir: Path, outdir: Path) -> list[tuple[Path, int]]:
    """Write a student copy of every notebook in `source_dir` to `outdir`; same input gives the same bytes."""
    sources = sorted(Path(source_dir).glob("*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"no .ipynb notebooks in {source_dir}")
    outdir.mkdir(parents=True, exist_ok=True)
    refuse_overwriting_sources(sources, outdir)
    copies = [(path, *student_notebook(json.loads(path.read_text()))) for path in sources]  # all parsed first
    written = []
    for path, notebook, count in copies:
        target = outdir / path.name
        write_new_file(target, notebook_json(notebook))
        written.append((target, count))
    return written
