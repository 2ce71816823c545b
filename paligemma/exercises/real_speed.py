"""Checkers for notebook 14 (real-model speed): int8 quantization of a weight matrix, one scale per row."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..quantization import quantize_int8
from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_int8_rows"]


def _test_weight() -> torch.Tensor:
    """(48, 64) weights whose rows differ in size by 1000x, and one row holding a single large value."""
    g = torch.Generator().manual_seed(14)
    w = torch.randn(48, 64, generator=g) * torch.logspace(-3, 0, 48)[:, None]  # (48, 64)
    w[7, 5] = 4.0
    return w


def check_int8_rows(quantize_fn: Callable) -> None:
    """`quantize_fn(w)`: (out, in) float -> (q, scale): q int8 (out, in), scale (out,) with w ≈ q * scale[:, None]."""
    w = _test_weight()
    got = run_candidate(quantize_fn, w.clone())
    if not (isinstance(got, tuple) and len(got) == 2):
        raise ExerciseError("return two things: (q, scale)")
    q, scale = got
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
        raise ExerciseError(f"q should be an int8 tensor, got {getattr(q, 'dtype', type(q).__name__)}: round, "
                            "clamp to [-127, 127], then .to(torch.int8)")
    if not isinstance(scale, torch.Tensor):
        raise ExerciseError(f"scale should be a tensor, got {type(scale).__name__}")
    if scale.numel() == 1:
        raise ExerciseError("one scale for the whole matrix: the small rows then round to 0; give each row its "
                            "own scale, max |w| of that row / 127 (amax over dim=1)")
    if scale.shape == (w.shape[1],):
        raise ExerciseError("one scale per column: the scale belongs to an output row (amax over dim=1)")
    expected_q, expected_scale = quantize_int8(w)
    scale = scale.reshape(-1).float()
    amax = w.abs().amax(1)
    for divisor in (128, 255, 256):
        if torch.allclose(scale, amax / divisor, rtol=1e-5):
            raise ExerciseError(f"scale = max|w| / {divisor}: int8 levels run from -127 to 127 (symmetric), so "
                                "divide by 127 and the largest weight of each row lands exactly on ±127")
    check_close(scale, expected_scale, what="your scales", rtol=1e-5, atol=0,
                value_hint="scale of row r: max_j |w[r, j]| / 127")
    if torch.equal(q, (w / expected_scale[:, None]).trunc().to(torch.int8)) and not torch.equal(q, expected_q):
        raise ExerciseError("q was truncated towards 0 (a plain .to(torch.int8)): round to the nearest level first")
    check_close(q.float(), expected_q.float(), what="your q", atol=0, rtol=0,
                value_hint="q = round(w / scale[:, None]), clamped to [-127, 127]")
    passed("int8 quantization, one scale per row")
