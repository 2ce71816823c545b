"""The classroom tool: student copies have stubs instead of solutions, and their checker cells explain what is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from paligemma.exercises.nbgrader_format import BEGIN
from paligemma.exercises.student import CODE_STUB

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
EXECUTED = ("03_grouped_query_attention.ipynb",  # short, and has two coding exercises
            "05_gemma_decoder.ipynb")  # reuses functions of 01-03, one of which is a stub in the copies


def write_copies(outdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paligemma.exercises", "student", str(NOTEBOOK_DIR), str(outdir)],
                          capture_output=True, text=True, check=True)


def test_the_tool_writes_every_notebook_and_is_repeatable(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write_copies(first)
    write_copies(first)  # over its own output: still the same bytes
    write_copies(second)
    names = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert sorted(p.name for p in first.glob("*.ipynb")) == names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
        copy = json.loads((first / name).read_text())
        sources = ["".join(c["source"]) for c in copy["cells"] if c["cell_type"] == "code"]
        assert not any(BEGIN in s for s in sources)
        assert all(c.get("outputs", []) == [] for c in copy["cells"] if c["cell_type"] == "code")


def test_the_tool_rejects_a_folder_without_notebooks(tmp_path):
    result = subprocess.run([sys.executable, "-m", "paligemma.exercises", "student", str(tmp_path), str(tmp_path / "o")],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "no .ipynb notebooks" in result.stderr


@pytest.fixture(scope="module")
def handed_out(tmp_path_factory) -> Path:
    outdir = tmp_path_factory.mktemp("course") / "handed_out"  # not the repository's layout: figures go beside
    write_copies(outdir)
    return outdir


@pytest.mark.parametrize("name", EXECUTED)
def test_a_student_copy_runs_and_its_checkers_say_what_is_missing(handed_out, name, monkeypatch):
    """Execute a student copy: only the checker cells fail, each with the one-line 'not implemented yet' message."""
    monkeypatch.delenv("PALIGEMMA_FIGURES", raising=False)  # as a student runs it: figures beside the notebook
    notebook = nbformat.read(handed_out / name, as_version=4)
    NotebookClient(notebook, kernel_name="python3", allow_errors=True, timeout=300,
                   resources={"metadata": {"path": str(handed_out)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = {i: out for i, cell in enumerate(code) for out in cell.outputs if out.output_type == "error"}
    stubbed = [i for i, cell in enumerate(code) if all(line in cell.source for line in CODE_STUB.split("\n"))]
    assert stubbed, "the copy has no stubbed exercise"
    assert sorted(errors) == [i + 1 for i in stubbed], "only the checker cell after each stub should fail"
    for out in errors.values():
        assert out.ename == "ExerciseError"
        assert "is not implemented yet" in out.evalue
        assert len(out.traceback) == 1 and "paligemma/exercises" not in out.traceback[0], out.traceback  # one line
    assert any((handed_out / "figures").glob(f"{name[:2]}_*.png"))  # saved beside the notebook
    printed = "".join(out.get("text", "") for cell in code for out in cell.outputs)
    if name.startswith("05"):
        assert "rms_norm: the package's version (01_rmsnorm.ipynb: still an exercise stub)" in printed
        assert "rope_tables: from 02_rope.ipynb" in printed


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_links_to_the_instructor_notebooks_are_refused_and_nothing_is_lost(tmp_path, link):
    """`cp -al notebooks/*.ipynb DST` then the tool: writing through the links would destroy the solutions."""
    course = tmp_path / "course"
    course.mkdir()
    name = "03_grouped_query_attention.ipynb"
    (course / name).write_bytes((NOTEBOOK_DIR / name).read_bytes())
    before = (course / name).read_bytes()
    dst = tmp_path / "students"
    dst.mkdir()
    (dst / name).hardlink_to(course / name) if link == "hard" else (dst / name).symlink_to(course / name)
    result = subprocess.run([sys.executable, "-m", "paligemma.exercises", "student", str(course), str(dst)],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "same file as the instructor notebook" in result.stderr and "Traceback" not in result.stderr
    assert (course / name).read_bytes() == before  # the solutions are still there


def test_a_link_to_another_file_is_replaced_not_written_through(tmp_path):
    course, dst = tmp_path / "course", tmp_path / "students"
    course.mkdir(), dst.mkdir()
    name = "03_grouped_query_attention.ipynb"
    (course / name).write_bytes((NOTEBOOK_DIR / name).read_bytes())
    elsewhere = tmp_path / "keep.txt"
    elsewhere.write_text("not a notebook")
    (dst / name).symlink_to(elsewhere)
    subprocess.run([sys.executable, "-m", "paligemma.exercises", "student", str(course), str(dst)], check=True,
                   capture_output=True)
    assert elsewhere.read_text() == "not a notebook"
    assert not (dst / name).is_symlink() and BEGIN not in (dst / name).read_text()


# ---------------------------------------------------------------- the other classroom tools

def notebook_with(cells: list[str]) -> dict:
    return {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                       "source": text} for text in cells],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def test_from_notebook_takes_the_learners_function_or_the_packages(tmp_path, monkeypatch, capsys):
    from paligemma.exercises import from_notebook
    from paligemma.exercises.pieces import PACKAGE_EQUIVALENTS

    course = tmp_path / "course"
    (course / "rmsnorm").mkdir(parents=True)
    (course / "decoder").mkdir()
    (course / "rmsnorm" / "01_rmsnorm.ipynb").write_text(json.dumps(notebook_with([
        "import torch\nimport not_a_module_anywhere",                     # a failing import is skipped
        "def rms_norm(x, weight, eps=1e-6):\n    return x * 2\n\nprint('run only on import?')",
        "def attention(q, k, v, mask=None):\n    # YOUR CODE HERE\n    raise NotImplementedError()"])))
    monkeypatch.chdir(course / "decoder")  # nbgrader's layout: the earlier notebook sits in a sibling folder
    rms_norm, attention = from_notebook("01_rmsnorm.ipynb", "rms_norm", "attention")
    assert rms_norm(torch.ones(2), None).tolist() == [2.0, 2.0]
    assert attention is PACKAGE_EQUIVALENTS["attention"]
    assert from_notebook("02_rope.ipynb", "apply_rope") is PACKAGE_EQUIVALENTS["apply_rope"]
    printed = capsys.readouterr().out
    assert "run only on import?" not in printed  # only imports and definitions are run
    assert printed.splitlines() == ["rms_norm: from 01_rmsnorm.ipynb",
                                    "attention: the package's version (01_rmsnorm.ipynb: still an exercise stub)",
                                    "apply_rope: the package's version (02_rope.ipynb: not found)"]


def test_figures_go_to_the_variable_the_repository_or_beside_the_notebook(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from paligemma.exercises import measured, save_figure

    fig = plt.figure()
    monkeypatch.setenv("PALIGEMMA_FIGURES", str(tmp_path / "chosen"))
    assert save_figure(fig, "x.png") == tmp_path / "chosen" / "x.png" and (tmp_path / "chosen" / "x.png").is_file()
    monkeypatch.delenv("PALIGEMMA_FIGURES")
    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    (tmp_path / "repo" / "figures").mkdir()
    monkeypatch.chdir(tmp_path / "repo" / "notebooks")
    assert save_figure(fig, "y.png") == tmp_path / "repo" / "figures" / "y.png"  # the repository's figures/
    monkeypatch.chdir(tmp_path)
    assert save_figure(fig, "z.png") == tmp_path / "figures" / "z.png"  # alone: a figures/ folder beside it
    plt.close(fig)

    calls = []
    def measure():
        calls.append(1)
        return {"ms": [len(calls)]}

    monkeypatch.chdir(tmp_path / "repo" / "notebooks")
    assert measured("t", measure)["ms"] == [1] and not (tmp_path / "repo" / "figures" / "t.json").exists()
    monkeypatch.setenv("PALIGEMMA_MEASURE", "1")
    assert measured("t", measure)["ms"] == [2]                      # asked: measured and stored
    monkeypatch.delenv("PALIGEMMA_MEASURE")
    stored = measured("t", measure)
    assert stored["ms"] == [2] and len(calls) == 2 and "processor" in stored["machine"]  # read back, not re-run


def test_tag_restores_the_metadata_from_the_markers(tmp_path):
    name = "03_grouped_query_attention.ipynb"
    notebook = json.loads((NOTEBOOK_DIR / name).read_text())
    for cell in notebook["cells"]:
        cell["metadata"].pop("nbgrader", None)
    (tmp_path / name).write_text(json.dumps(notebook))
    result = subprocess.run([sys.executable, "-m", "paligemma.exercises", "tag", str(tmp_path / name)],
                            capture_output=True, text=True, check=True)
    assert "6 cell(s) re-tagged" in result.stdout  # 2 answers, their 2 checkers, 2 written answers
    tagged = json.loads((tmp_path / name).read_text())
    assert [c["metadata"].get("nbgrader") for c in tagged["cells"]] == \
        [c["metadata"].get("nbgrader") for c in json.loads((NOTEBOOK_DIR / name).read_text())["cells"]]
    refused = subprocess.run([sys.executable, "-m", "paligemma.exercises", "tag", str(tmp_path / "nope.txt")],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "is not a notebook" in refused.stderr and "Traceback" not in refused.stderr


def test_a_solution_without_metadata_is_refused_by_the_student_tool(tmp_path):
    course = tmp_path / "course"
    course.mkdir()
    (course / "00_x.ipynb").write_text(json.dumps(notebook_with(["def f():\n    ### BEGIN SOLUTION\n    return 1\n"
                                                                 "    ### END SOLUTION"])))
    result = subprocess.run([sys.executable, "-m", "paligemma.exercises", "student", str(course),
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode != 0 and "tag" in result.stderr and "Traceback" not in result.stderr
