"""`python -m paligemma.exercises student notebooks/ OUTDIR`: write student copies of the notebooks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .student import write_student_copies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paligemma.exercises", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    student = commands.add_parser("student", help="copy notebooks with every solution replaced by a stub")
    student.add_argument("source", type=Path, help="folder of instructor notebooks (e.g. notebooks/)")
    student.add_argument("outdir", type=Path, help="folder to write the student notebooks to")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
