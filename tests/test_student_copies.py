"""The classroom tool: student copies have stubs instead of solutions, and their checker cells explain what is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from paligemma.exercises.student import BEGIN, STUB

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
EXECUTED = "03_grouped_query_attention.ipynb"  # short, and has two coding exercises


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


@pytest.mark.skipif(not (NOTEBOOK_DIR / EXECUTED).exists(), reason=f"{EXECUTED} not present")
def test_a_student_copy_runs_and_its_checkers_say_what_is_missing(tmp_path):
    """Execute a student copy: only the checker cells fail, each with the 'not implemented yet' message."""
    outdir = tmp_path / "notebooks"
    write_copies(outdir)
    assert (tmp_path / "figures").is_dir()  # the notebooks save their figures to ../figures
    notebook = nbformat.read(outdir / EXECUTED, as_version=4)
    NotebookClient(notebook, kernel_name="python3", allow_errors=True, timeout=120,
                   resources={"metadata": {"path": str(outdir)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = {i: out for i, cell in enumerate(code) for out in cell.outputs if out.output_type == "error"}
    stubbed = [i for i, cell in enumerate(code) if STUB in cell.source]
    assert stubbed, "the copy has no stubbed exercise"
    assert sorted(errors) == [i + 1 for i in stubbed], "only the checker cell after each stub should fail"
    for out in errors.values():
        assert out.ename == "ExerciseError"
        assert "is not implemented yet" in out.evalue


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
