"""Notebook hygiene: what nbval cannot see on its own (it skips what was never executed, trusts kernelspecs, ...)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from paligemma.exercises.student import BEGIN, END, STUB, student_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ABSOLUTE_PATH = re.compile(r"(?<![\w.])(/(home|root|tmp|work|Users|var|opt)/[\w.-]+|[A-Z]:\\\\[\w.-]+)")
FIGURE = re.compile(r"figures/([\w.-]+\.png)")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def source(cell: dict) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def outputs_text(cell: dict) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append("".join(output.get("text", "")))
        for value in output.get("data", {}).values():
            if isinstance(value, (str, list)) and not str(value).startswith("iVBOR"):  # skip base64 PNGs
                parts.append("".join(value))
        parts.append("".join(output.get("traceback", [])))
    return "\n".join(parts)


def code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name}: expected NN_name.ipynb"


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.stem)
def notebook(request) -> tuple[str, dict]:
    return request.param.name, load(request.param)


def test_kernelspec_is_python3(notebook):
    name, nb = notebook
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", f"{name}: kernelspec must be python3"


def test_every_code_cell_was_executed_in_order(notebook):
    """A cell without an execution count is skipped by nbval: committed notebooks are run top to bottom."""
    name, nb = notebook
    counts = [cell["execution_count"] for cell in code_cells(nb) if source(cell).strip()]
    assert None not in counts, f"{name}: {counts.count(None)} code cell(s) never executed"
    assert counts == list(range(1, len(counts) + 1)), f"{name}: execution counts {counts} are not 1..n in order"


def test_no_stored_errors(notebook):
    name, nb = notebook
    for cell in code_cells(nb):
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", f"{name}: stored error {output.get('ename')} in\n{source(cell)}"


def test_no_stderr_in_checked_cells(notebook):
    """nbval compares stderr: a warning that depends on library versions would break CI on the next release."""
    name, nb = notebook
    for cell in code_cells(nb):
        if "NBVAL_IGNORE_OUTPUT" in source(cell) or "NBVAL_SKIP" in source(cell):
            continue
        streams = [o for o in cell.get("outputs", []) if o["output_type"] == "stream" and o["name"] == "stderr"]
        assert not streams, f"{name}: stderr output in a checked cell:\n{source(cell)[:200]}"


def test_no_absolute_paths(notebook):
    name, nb = notebook
    for cell in nb["cells"]:
        for text in (source(cell), outputs_text(cell)):
            match = ABSOLUTE_PATH.search(text)
            assert match is None, f"{name}: absolute path {match.group(0)!r} in a cell"


def test_exercises_and_summary_close_the_notebook(notebook):
    name, nb = notebook
    headings = [line.strip() for cell in nb["cells"] if cell["cell_type"] == "markdown"
                for line in source(cell).splitlines() if line.startswith("## ")]
    assert "## Exercises" in headings, f"{name}: no '## Exercises' section"
    assert headings[-1] == "## Summary", f"{name}: the last section should be '## Summary', not {headings[-1]!r}"
    assert headings.index("## Exercises") < headings.index("## Summary"), f"{name}: Summary before Exercises"


def test_every_solution_is_followed_by_a_checker(notebook):
    name, nb = notebook
    cells = code_cells(nb)
    solutions = [i for i, cell in enumerate(cells) if BEGIN in source(cell)]
    assert solutions, f"{name}: no coding exercise with a solution block"
    for i in solutions:
        assert source(cells[i]).count(BEGIN) == source(cells[i]).count(END), f"{name}: unbalanced markers"
        following = source(cells[i + 1]) if i + 1 < len(cells) else ""
        assert re.search(r"\bcheck_\w+\(", following), (
            f"{name}: the cell after a solution should call a checker from paligemma.exercises:\n{following[:200]}")


def test_student_copy_keeps_signatures_and_stubs_solutions(notebook):
    name, nb = notebook
    copy, count = student_notebook(nb)
    assert count == sum(source(cell).count(BEGIN) for cell in code_cells(nb))
    for original, stubbed in zip(code_cells(nb), code_cells(copy)):
        text = source(stubbed)
        assert BEGIN not in text and END not in text
        assert stubbed["outputs"] == [] and stubbed["execution_count"] is None
        if BEGIN in source(original):
            assert STUB in text, f"{name}: solution not replaced by a stub"
            compile(text, f"{name} (student copy)", "exec")  # the stub leaves valid Python: signature kept


def referenced_figures() -> set[tuple[str, str]]:
    found = set()
    for path in [ROOT / "README.md", *NOTEBOOKS]:
        for figure in FIGURE.findall(path.read_text()):
            found.add((path.name, figure))
    return found


def test_every_referenced_figure_exists():
    missing = sorted((where, figure) for where, figure in referenced_figures()
                     if not (ROOT / "figures" / figure).is_file())
    assert not missing, f"figures referenced but not in figures/: {missing}"
