"""The course in a real nbgrader: release an assignment, then autograde the instructor's copy and a student's.

One small notebook (00, two checked coding exercises and a written answer) keeps this to about a minute and a
half on a busy two-core machine: nbgrader's start-up, `generate_assignment`, and one `autograde` run that
executes both submissions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from paligemma.exercises.student import notebook_json, student_notebook

nbgrader_api = pytest.importorskip("nbgrader.api")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "00_overview.ipynb"
ASSIGNMENT = "overview"
WRONG_TOKENS = "    return height * width // patch_size ** 2  # counts the leftover pixels as patches\n"


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    """Run nbgrader with this Python; its environment's scripts go first on PATH (nbgrader runs `alembic` by
    name), so the test also works when pytest is started as .venv/bin/python -m pytest, unactivated."""
    scripts = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": scripts + os.pathsep + os.environ.get("PATH", "")}
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def solution_lines(cell: dict) -> list[str]:
    """The lines between the markers of an instructor cell (the learner's answer, when right)."""
    lines = "".join(cell["source"]).split("\n")
    begin = next(i for i, line in enumerate(lines) if "BEGIN SOLUTION" in line)
    end = next(i for i, line in enumerate(lines) if "END SOLUTION" in line)
    return [line + "\n" for line in lines[begin + 1:end]]


def answer(released: dict, instructor: dict, grade_id: str, lines: list[str]) -> None:
    """Write `lines` where the released cell `grade_id` has nbgrader's stub."""
    for cell in released["cells"]:
        if cell["metadata"].get("nbgrader", {}).get("grade_id") == grade_id:
            text = "".join(cell["source"])
            stub = "    # YOUR CODE HERE\n    raise NotImplementedError()"
            assert stub in text, text
            cell["source"] = text.replace(stub, "".join(lines).rstrip("\n")).splitlines(keepends=True)
            return
    raise AssertionError(f"no cell {grade_id}")


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    course = tmp_path_factory.mktemp("course")
    (course / "nbgrader_config.py").write_text('c = get_config()\nc.CourseDirectory.course_id = "paligemma"\n'
                                               'c.ExecutePreprocessor.timeout = 300\n')
    source = course / "source" / ASSIGNMENT
    source.mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, source / NOTEBOOK)
    nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")
    return course


def test_generate_assignment_releases_what_the_student_tool_writes(course):
    released = (course / "release" / ASSIGNMENT / NOTEBOOK).read_text()
    ours, _ = student_notebook(json.loads((ROOT / "notebooks" / NOTEBOOK).read_text()))
    assert notebook_json(ours) == released  # same stubs, cleared outputs, same metadata and checksums, same bytes


def test_autograde_gives_the_instructor_full_marks_and_a_student_partial_marks(course):
    instructor = json.loads((ROOT / "notebooks" / NOTEBOOK).read_text())
    solutions = {cell["metadata"]["nbgrader"]["grade_id"]: solution_lines(cell) for cell in instructor["cells"]
                 if cell["metadata"].get("nbgrader", {}).get("solution") and cell["cell_type"] == "code"}
    released = json.loads((course / "release" / ASSIGNMENT / NOTEBOOK).read_text())
    answer(released, instructor, "00_num_image_tokens", [WRONG_TOKENS])          # one wrong answer
    answer(released, instructor, "00_count_parameters", solutions["00_count_parameters"])  # one right
    # ... and the written answer to exercise 3 left as released: missing
    for student, notebook in (("teacher", instructor), ("alice", released)):
        folder = course / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        (folder / NOTEBOOK).write_text(notebook_json(notebook))
    nbgrader(course, "autograde", ASSIGNMENT, "--create", "--force")

    with nbgrader_api.Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        def grades(student):
            notebook = gradebook.find_submission_notebook(NOTEBOOK[:-6], ASSIGNMENT, student)
            return {grade.name: grade.auto_score for grade in notebook.grades}, notebook

        teacher, teacher_notebook = grades("teacher")
        alice, alice_notebook = grades("alice")
        assert teacher == {"00_num_image_tokens_check": 1, "00_count_parameters_check": 1,
                           "00_exercise_3_answer": None}  # the written answer waits for a human
        assert teacher_notebook.needs_manual_grade
        assert alice == {"00_num_image_tokens_check": 0, "00_count_parameters_check": 1,
                         "00_exercise_3_answer": 0}  # an untouched written answer scores 0 by itself
        assert (alice_notebook.score, alice_notebook.max_score) == (1, 3)

    graded = json.loads((course / "autograded" / "alice" / ASSIGNMENT / NOTEBOOK).read_text())
    check = next(cell for cell in graded["cells"]
                 if cell["metadata"].get("nbgrader", {}).get("grade_id") == "00_num_image_tokens_check")
    error = next(output for output in check["outputs"] if output["output_type"] == "error")
    assert error["ename"] == "ExerciseError" and len(error["traceback"]) == 1  # one line, no checker source
    assert "leftover pixels" in error["evalue"], error["evalue"]
