"""Classroom tools for the notebooks.

    python -m paligemma.exercises student notebooks/ OUTDIR   student copies, as nbgrader would release them
    python -m paligemma.exercises tag notebooks/*.ipynb        (re)write the nbgrader metadata from the markers
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .nbgrader_format import tag_notebook
from .student import notebook_json, write_new_file, write_student_copies


def _student(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not args.source.is_dir():
        parser.error(f"{args.source} is not a folder of notebooks")
    if args.outdir.resolve() == args.source.resolve():
        parser.error("the output folder must differ from the source: student copies would overwrite the solutions")
    try:
        written = write_student_copies(args.source, args.outdir)
    except (FileNotFoundError, ValueError) as error:  # no notebooks, unbalanced markers, a link to a source
        parser.error(str(error))
    except OSError as error:  # e.g. an output folder that cannot be written
        parser.error(f"cannot write the student copies to {args.outdir}: {error}")
    for path, n_solutions in written:
        print(f"{path}: {n_solutions} solution block(s) replaced")
    return 0


def _tag(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    for path in args.notebooks:
        if not path.is_file() or path.suffix != ".ipynb":
            parser.error(f"{path} is not a notebook (.ipynb file)")
        try:
            notebook = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            parser.error(f"{path} is not valid notebook JSON: {error}")
        changed = tag_notebook(notebook, prefix=path.stem.split("_")[0])
        if changed:
            write_new_file(path, notebook_json(notebook))
        print(f"{path}: {changed} cell(s) re-tagged")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paligemma.exercises", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    student = commands.add_parser("student", help="copy notebooks with every solution replaced by nbgrader's stub")
    student.add_argument("source", type=Path, help="folder of instructor notebooks (e.g. notebooks/)")
    student.add_argument("outdir", type=Path, help="folder to write the student notebooks to")
    tag = commands.add_parser("tag", help="write nbgrader metadata (answers, graded checks) from the markers")
    tag.add_argument("notebooks", type=Path, nargs="+", help="instructor notebooks to tag in place")
    args = parser.parse_args(argv)
    return (_student if args.command == "student" else _tag)(parser, args)


if __name__ == "__main__":
    sys.exit(main())
