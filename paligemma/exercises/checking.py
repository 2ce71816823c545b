"""The shared machinery of every checker: run the learner's code, compare, and say what is wrong in words."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parent.parent  # frames in here are the checker's, not the learner's


class ExerciseError(AssertionError):
    """Raised by a checker with a plain-words diagnosis of what the learner's code got wrong.

    Jupyter (IPython) shows an exception through its `_render_traceback_` when it has one: here the
    diagnosis alone, one line, instead of a traceback through the checker's source (which would show
    the reference solution). nbgrader records the same line in the graded cell's output.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class LearnerCrash(ExerciseError):
    """The learner's function raised an error of its own; `reason` and `where` let a checker add a hint."""

    def __init__(self, name: str, error: Exception, where: str):
        self.error, self.where = error, where
        self.reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        super().__init__(f"{name} raised {type(error).__name__}{': ' + self.reason if self.reason else ''}{where}")


def _learner_line(error: BaseException) -> str:
    """' (line N: `code`)' for the innermost frame outside the package and torch, or '' if none."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not Path(frame.filename).resolve().is_relative_to(PACKAGE)
              and "site-packages" not in frame.filename and "/torch/" not in frame.filename]
    if not frames:
        return ""
    frame = frames[-1]
    code = f": `{frame.line.strip()}`" if frame.line else ""
    return f" (line {frame.lineno} of your code{code})"


def run_candidate(function: Callable, *args, **kwargs):
    """Call the learner's function; its own errors become one line that says where they happened."""
    name = getattr(function, "__name__", "your function")
    try:
        return function(*args, **kwargs)
    except NotImplementedError:
        raise ExerciseError(f"{name} is not implemented yet: replace the `raise NotImplementedError` line with "
                            "your solution and run the cell again") from None
    except ExerciseError:
        raise
    except Exception as error:  # the learner's code crashed: name the error and the line, not our frames
        raise LearnerCrash(name, error, _learner_line(error)) from None


def check_close(got, expected: torch.Tensor, what: str = "the output",
                shape_hints: dict[tuple, str] | None = None, value_hint: str = "",
                atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """Compare one result with the reference: type, then shape (with a hint per wrong shape), then values."""
    if not isinstance(got, torch.Tensor):
        raise ExerciseError(f"{what} should be a torch.Tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        hint = (shape_hints or {}).get(tuple(got.shape), "")
        raise ExerciseError(f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
                            + (f": {hint}" if hint else ""))
    if got.dtype != expected.dtype:
        raise ExerciseError(f"{what} has dtype {got.dtype}, expected {expected.dtype}")
    if not torch.allclose(got, expected, atol=atol, rtol=rtol):
        worst = (got - expected).abs().max().item()
        raise ExerciseError(f"{what} has the right shape but wrong values (largest difference {worst:.3g})"
                            + (f": {value_hint}" if value_hint else ""))


def passed(name: str, reference: str = "the package") -> None:
    print(f"Correct: {name} matches {reference}.")
