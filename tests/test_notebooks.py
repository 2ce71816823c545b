"""Notebook hygiene: what nbval cannot see on its own (it skips what was never executed, trusts kernelspecs, ...)."""

from __future__ import annotations

import io
import json
import re
import textwrap
import tokenize
from pathlib import Path

import pytest

from paligemma.exercises.nbgrader_format import BEGIN, END, expected_metadata, has_solution
from paligemma.exercises.student import CODE_STUB, TEXT_STUB, student_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ABSOLUTE_PATH = re.compile(r"(?<![\w.])(/(home|root|tmp|work|Users|var|opt)/[\w.-]+|[A-Z]:\\\\[\w.-]+)")
FIGURE = re.compile(r"figures/([\w.-]+\.png)")
SAVED_FIGURE = re.compile(r'save_figure\([^,]+,\s*f?\\?"([\w.{}-]+\.png)')  # in the notebook's JSON too
ANSWER_RUN = 16  # a run of this many of a solution's tokens found in another cell gives the answer away


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
    solutions = [i for i, cell in enumerate(cells) if has_solution(cell)]
    assert solutions, f"{name}: no coding exercise with a solution block"
    for i in solutions:
        assert source(cells[i]).count(BEGIN) == source(cells[i]).count(END), f"{name}: unbalanced markers"
        following = source(cells[i + 1]) if i + 1 < len(cells) else ""
        assert re.search(r"\bcheck_\w+\(", following), (
            f"{name}: the cell after a solution should call a checker from paligemma.exercises:\n{following[:200]}")


def test_every_exercise_has_an_answer_cell(notebook):
    """Each '**Exercise N' question is followed by its answer: a code solution or a written model answer."""
    name, nb = notebook
    cells = nb["cells"]
    questions = [i for i, cell in enumerate(cells) if cell["cell_type"] == "markdown"
                 and re.search(r"\*\*Exercise \w+", source(cell)) and not has_solution(cell)]
    assert questions, f"{name}: no exercises"
    for i in questions:
        assert len(re.findall(r"\*\*Exercise \w+", source(cells[i]))) == 1, (
            f"{name}: one question per cell, so that its answer can follow it:\n{source(cells[i])[:300]}")
        following = cells[i + 1] if i + 1 < len(cells) else None
        assert following is not None and has_solution(following), (
            f"{name}: the question below has no answer cell after it (code with a solution, or a markdown model "
            f"answer between <!-- BEGIN SOLUTION --> and <!-- END SOLUTION -->):\n{source(cells[i])[:300]}")


def test_nbgrader_metadata_matches_the_markers(notebook):
    """Answer cells, graded checker cells and written answers carry nbgrader's metadata, as `tag` writes it."""
    name, nb = notebook
    wanted = expected_metadata(nb["cells"], prefix=name[:2])
    for cell, meta in zip(nb["cells"], wanted):
        assert cell.get("metadata", {}).get("nbgrader") == meta, (
            f"{name}: nbgrader metadata out of date (run `python -m paligemma.exercises tag notebooks/{name}`) at:"
            f"\n{source(cell)[:200]}")
    assert any(meta and meta["grade"] for meta in wanted), f"{name}: nothing is graded"
    validator = pytest.importorskip("nbgrader.nbgraderformat").MetadataValidator()
    import nbformat
    validator.validate_nb(nbformat.from_dict(json.loads(json.dumps(nb))))  # nbgrader's own rules


def test_student_copy_keeps_signatures_and_stubs_solutions(notebook):
    name, nb = notebook
    copy, count = student_notebook(nb)
    assert count == sum(source(cell).count(BEGIN) for cell in nb["cells"])
    for original, stubbed in zip(nb["cells"], copy["cells"]):
        text = source(stubbed)
        assert BEGIN not in text and END not in text
        if stubbed["cell_type"] == "code":
            assert stubbed["outputs"] == [] and stubbed["execution_count"] is None
        if has_solution(original):
            stub = CODE_STUB if original["cell_type"] == "code" else TEXT_STUB
            assert all(line in text for line in stub.split("\n")), f"{name}: no stub in\n{text}"
            if original["cell_type"] == "code":
                compile(text, f"{name} (student copy)", "exec")  # the stub leaves valid Python: signature kept


def normalised_tokens(code: str) -> list[str]:
    """Python tokens without comments, line breaks or indentation (so layout and comments do not matter)."""
    code = textwrap.dedent("\n".join(line for line in code.split("\n") if not line.lstrip().startswith(("%", "!"))))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    try:
        return [t.string for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type not in skip]
    except (tokenize.TokenError, IndentationError, SyntaxError):  # a fragment that does not close its brackets
        return re.findall(r"\w+|[^\w\s]", code)


def solution_regions(text: str) -> list[str]:
    regions, current = [], None
    for line in text.split("\n"):
        if BEGIN in line:
            current = []
        elif END in line:
            regions.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return regions


def contains_run(haystack: list[str], needle: list[str], run: int) -> bool:
    """Whether `run` consecutive tokens of `needle` (all of it, if shorter) appear in order in `haystack`."""
    width = min(run, len(needle))
    windows = {tuple(needle[i:i + width]) for i in range(len(needle) - width + 1)}
    return any(tuple(haystack[i:i + width]) in windows for i in range(len(haystack) - width + 1))


def test_a_student_copy_never_contains_its_own_answers(notebook):
    """No code cell of the student copy holds a solution: its tokens (16 in a row, or all if fewer) found
    anywhere else would hand the answer to the student a few cells above or below the exercise."""
    name, nb = notebook
    copy, _ = student_notebook(nb)
    others = [normalised_tokens(source(cell)) for cell in code_cells(copy)]
    for cell in code_cells(nb):
        for region in solution_regions(source(cell)):
            answer = normalised_tokens(region)
            for other, text in zip(others, (source(c) for c in code_cells(copy))):
                assert not contains_run(other, answer, ANSWER_RUN), (
                    f"{name}: the student copy gives away this solution:\n{region}\nin the cell:\n{text[:600]}")


def test_figures_are_saved_where_any_copy_can_write(notebook):
    """No hard-coded ../figures path: a notebook handed out alone, or in nbgrader's folders, must still run."""
    name, nb = notebook
    for cell in code_cells(nb):
        text = source(cell)
        assert "../figures" not in text and ".savefig(" not in text, (
            f"{name}: save figures with paligemma.exercises.save_figure(fig, 'NN_name.png'):\n{text[:300]}")


def referenced_figures() -> set[tuple[str, str]]:
    found = set()
    for path in [ROOT / "README.md", *NOTEBOOKS]:
        for figure in FIGURE.findall(path.read_text()) + SAVED_FIGURE.findall(path.read_text()):
            if "{" not in figure:  # a name built at run time (e.g. one per GPU report)
                found.add((path.name, figure))
    return found


def test_every_referenced_figure_exists():
    missing = sorted((where, figure) for where, figure in referenced_figures()
                     if not (ROOT / "figures" / figure).is_file())
    assert not missing, f"figures referenced but not in figures/: {missing}"
