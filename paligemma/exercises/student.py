"""Turn instructor notebooks into student copies: solutions (nbgrader markers) become stubs, outputs go."""

from __future__ import annotations

import json
import re
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


def write_student_copies(source: Path, outdir: Path) -> list[tuple[Path, int]]:
    """Write a student copy of every notebook in `source` to `outdir`; same input gives the same bytes."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(Path(source).glob("*.ipynb")):
        notebook, count = student_notebook(json.loads(path.read_text()))
        target = outdir / path.name
        target.write_text(json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
        written.append((target, count))
    if not written:
        raise FileNotFoundError(f"no .ipynb notebooks in {source}")
    (outdir.parent / "figures").mkdir(exist_ok=True)  # the notebooks save their figures to ../figures
    return written
