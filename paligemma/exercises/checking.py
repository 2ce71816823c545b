"""The shared machinery of every checker: run the learner's code, compare, and say what is wrong in words."""

from __future__ import annotations

from collections.abc import Callable

import torch


class ExerciseError(AssertionError):
    """Raised by a checker with a plain-words diagnosis of what the learner's code got wrong."""


def run_candidate(function: Callable, *args, **kwargs):
    """Call the learner's function, turning 'not written yet' into a friendly message."""
    try:
        return function(*args, **kwargs)
    except NotImplementedError:
        raise ExerciseError(f"{getattr(function, '__name__', 'your function')} is not implemented yet: replace "
                            "the `raise NotImplementedError` line with your solution and run the cell again") from None


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


def passed(name: str) -> None:
    print(f"Correct: {name} matches the package.")
