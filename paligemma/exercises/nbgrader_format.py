"""nbgrader's cell metadata for the notebooks' exercises, derived from their solution markers.

nbgrader (the tool teachers grade notebooks with) needs to know which cells hold answers and which
grade them. The notebooks say it with markers: a code or markdown cell holding a `BEGIN SOLUTION` /
`END SOLUTION` region is an answer; the code cell right after a code answer, which calls a
`check_...` function, is its locked, graded test; a markdown answer is graded by hand.
`tag_notebook` writes that metadata (schema version 3), so it never drifts from the markers.
"""

from __future__ import annotations

import ast
import hashlib
import re

BEGIN, END = "BEGIN SOLUTION", "END SOLUTION"  # nbgrader's delimiters: a line *containing* them is a marker
SCHEMA_VERSION = 3
POINTS = 1  # per graded cell: a checker cell, or a written answer
CHECKER_CALL = re.compile(r"\bcheck_\w+\(")


def source(cell: dict) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def has_solution(cell: dict) -> bool:
    return any(BEGIN in line for line in source(cell).split("\n"))


def _defined_name(text: str) -> str | None:
    """The function or class whose body holds the first BEGIN SOLUTION marker (None at top level)."""
    marker = next(number for number, line in enumerate(text.split("\n"), 1) if BEGIN in line)
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.lineno <= marker <= node.end_lineno:
            return node.name
    return None


def _exercise_number(cells: list[dict], index: int) -> str | None:
    """'3' for the '**Exercise 3' heading nearest above cell `index`."""
    for cell in reversed(cells[:index + 1]):
        found = re.findall(r"\*\*Exercise (\w+)", source(cell)) if cell["cell_type"] == "markdown" else []
        if found:
            return found[-1]
    return None


def _metadata(grade: bool, solution: bool, locked: bool, grade_id: str) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": SCHEMA_VERSION,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = POINTS
    return meta


def expected_metadata(cells: list[dict], prefix: str) -> list[dict | None]:
    """The nbgrader metadata each cell should carry (None: no nbgrader metadata)."""
    wanted: list[dict | None] = [None] * len(cells)
    last_code_solution = None
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code" and has_solution(cell):
            name = _defined_name(source(cell)) or f"solution_{index}"
            last_code_solution = f"{prefix}_{name}"
            wanted[index] = _metadata(False, True, False, last_code_solution)
            continue
        if cell["cell_type"] == "markdown" and has_solution(cell):
            number = _exercise_number(cells, index) or str(index)
            wanted[index] = _metadata(True, True, False, f"{prefix}_exercise_{number}_answer")
            continue
        if cell["cell_type"] == "code" and last_code_solution and CHECKER_CALL.search(source(cell)):
            wanted[index] = _metadata(True, False, True, f"{last_code_solution}_check")
        if cell["cell_type"] == "code" and source(cell).strip():
            last_code_solution = None  # a checker belongs to the code cell right before it
    return wanted


def tag_notebook(notebook: dict, prefix: str) -> int:
    """Write the expected nbgrader metadata into `notebook` (in place); return how many cells changed."""
    changed = 0
    for cell, meta in zip(notebook["cells"], expected_metadata(notebook["cells"], prefix)):
        if cell.get("metadata", {}).get("nbgrader") == meta:
            continue
        changed += 1
        cell.setdefault("metadata", {})
        if meta is None:
            del cell["metadata"]["nbgrader"]
        else:
            cell["metadata"]["nbgrader"] = meta
    return changed


def checksum(cell: dict) -> str:
    """nbgrader's checksum of a graded, answer or read-only cell: it tells an untouched answer from a new one.

    The recipe is nbgrader's (md5 over source, type, the three flags, the id and, for graded cells, the
    points), so a student copy made here is graded exactly like one nbgrader released.
    """
    meta = cell["metadata"]["nbgrader"]
    grade, solution = bool(meta.get("grade")), bool(meta.get("solution"))
    locked = not solution and (grade or bool(meta.get("locked")))
    digest = hashlib.md5()
    for part in (source(cell), cell["cell_type"], str(grade), str(solution), str(locked), meta["grade_id"]):
        digest.update(part.encode("utf-8"))
    if grade:
        digest.update(str(float(meta["points"])).encode("utf-8"))
    return digest.hexdigest()
