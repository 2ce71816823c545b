"""Checkers for notebook 01 (RMSNorm): a from-scratch `rms_norm(x, weight, eps)` against `GemmaRMSNorm`."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..rmsnorm import GemmaRMSNorm
from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_rms_norm"]

# (name, shape, scale of x, scale of weight, eps, dtype). B, T, d all differ so a wrong axis shows in the values;
# eps = 0.01 makes a missing or misplaced eps visible; the bfloat16 case has Gemma-sized activations.
RMS_NORM_CASES = (
    ("float32 input", (2, 5, 64), 3.0, 0.5, 1e-6, torch.float32),
    ("float32 input with eps=0.01", (3, 4, 32), 1.0, 0.5, 1e-2, torch.float32),
    ("bfloat16 input", (2, 5, 64), 30.0, 0.02, 1e-6, torch.bfloat16),
)


def _mean_square(x: torch.Tensor, dim=-1) -> torch.Tensor:
    return x.pow(2).mean(dim, keepdim=True)


def _float32_mistakes(x: torch.Tensor, weight: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    """The usual wrong formulas, each computed in float32 and labelled with its diagnosis."""
    x, w = x.float(), weight.float()
    normed = x * torch.rsqrt(_mean_square(x) + eps)
    centred = x - x.mean(-1, keepdim=True)
    return {
        "forgot the 1 + weight: Gemma scales by (1 + weight), so a zero-initialised weight means 'scale by 1'":
            normed * w,
        "the weight is not applied at all: multiply the normalised x by (1 + weight)": normed,
        "normalised over the wrong axis: average x² over the last axis (the d features of one token), "
        "x.pow(2).mean(-1, keepdim=True); yours averaged over the time axis (dim 1)":
            x * torch.rsqrt(_mean_square(x, 1) + eps) * (1 + w),
        "normalised over the wrong axis: average x² over the last axis (the d features of one token), "
        "x.pow(2).mean(-1, keepdim=True); yours averaged over the batch axis (dim 0)":
            x * torch.rsqrt(_mean_square(x, 0) + eps) * (1 + w),
        "normalised over the wrong axis: average x² over the last axis only (each token separately), "
        "not over the whole tensor": x * torch.rsqrt(x.pow(2).mean() + eps) * (1 + w),
        "subtracted the mean: that is LayerNorm. RMSNorm divides x itself (not x - mean) by its root mean square":
            centred * torch.rsqrt(_mean_square(centred) + eps) * (1 + w),
        "forgot the square root: divide by sqrt(mean(x²) + eps), not by mean(x²) + eps":
            x / (_mean_square(x) + eps) * (1 + w),
        "used the sum of the squares instead of their mean: x.pow(2).mean(-1, keepdim=True)":
            x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps) * (1 + w),
        "eps goes inside the square root: x / sqrt(mean(x²) + eps), not x / (sqrt(mean(x²)) + eps)":
            x / (_mean_square(x).sqrt() + eps) * (1 + w),
        "eps is missing or is not the one passed in: x / sqrt(mean(x²) + eps) with the eps argument":
            x * torch.rsqrt(_mean_square(x) + 1e-6) * (1 + w),
    }


def _low_precision_mistakes(x: torch.Tensor, weight: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    """Computing in the input's dtype, wholly or from the (1 + weight) scaling on (Llama's order)."""
    x32 = x.float()
    return {
        f"did not compute in float32: everything ran in {x.dtype}, which rounds the squares, their mean and "
        "(1 + weight) to 8 significant bits. Compute with x.float() and cast the result back at the end":
            x * torch.rsqrt(_mean_square(x) + eps) * (1 + weight.to(x.dtype)),
        f"cast back to {x.dtype} before the (1 + weight) scaling (that is Llama's order): Gemma multiplies by "
        "(1 + weight) in float32 too and casts only the final result":
            (x32 * torch.rsqrt(_mean_square(x32) + eps)).to(x.dtype) * (1 + weight.to(x.dtype)),
    }


def _diagnose(got: torch.Tensor, mistakes: dict[str, torch.Tensor], tolerance: float) -> None:
    """Raise the diagnosis of the first mistake that reproduces `got` (tolerance 0: bit for bit)."""
    for message, wrong in mistakes.items():
        wrong = wrong.to(got.dtype)
        if torch.equal(got, wrong) or tolerance and torch.allclose(got, wrong, atol=tolerance, rtol=tolerance):
            raise ExerciseError(message)


def check_rms_norm(rms_norm_fn: Callable) -> None:
    """`rms_norm_fn(x, weight, eps)`: x (..., d), weight (d,) -> x / sqrt(mean(x², -1) + eps) * (1 + weight)."""
    generator = torch.Generator().manual_seed(0)
    for case, shape, x_scale, weight_scale, eps, dtype in RMS_NORM_CASES:
        x = (torch.randn(shape, generator=generator) * x_scale).to(dtype)
        weight = (torch.randn(shape[-1], generator=generator) * weight_scale).to(dtype)
        norm = GemmaRMSNorm(shape[-1], eps=eps).to(dtype)
        with torch.no_grad():
            norm.weight.copy_(weight)
            expected = norm(x)
        original = x.clone()
        got = run_candidate(rms_norm_fn, x, weight.clone(), eps)
        what = f"rms_norm on the {case} of shape {tuple(shape)}"
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == torch.float32 != dtype:
            raise ExerciseError(f"{what} returned float32, expected {dtype}: compute in float32, then cast the result "
                                "back to the input's dtype (.type_as(x) or .to(x.dtype))")
        if not torch.equal(x, original):
            raise ExerciseError(f"{what} changed its input in place: return a new tensor and leave x as it was")
        if not (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype):
            check_close(got, expected, what=f"the result of {what}",
                        shape_hints={shape[:-1]: "keep the feature axis: mean(-1, keepdim=True) keeps a size-1 axis "
                                                 "so the mean divides every feature of its token"})
        if dtype == torch.float32:
            if not torch.allclose(got, expected, atol=1e-5, rtol=1e-5):
                _diagnose(got, _float32_mistakes(x, weight, eps), tolerance=1e-5)
            check_close(got, expected, what=f"the result of {what}")
            continue
        # bfloat16: a float32 computation rounded once agrees with the package almost everywhere.
        if not torch.equal(got, expected):
            _diagnose(got, _low_precision_mistakes(x, weight, eps), tolerance=0)
        differs = (got != expected).float().mean().item()
        if differs > 0.05:
            if torch.allclose(got.float(), expected.float(), atol=0.05, rtol=0.02):
                raise ExerciseError(f"{what}: {differs:.0%} of the outputs differ from the package by bfloat16 "
                                    "rounding errors: did not compute in float32. Convert x (and the weight) with "
                                    ".float(), do all the arithmetic, and cast back only at the end")
            _diagnose(got, _float32_mistakes(x, weight, eps), tolerance=0.02)
            check_close(got, expected, what=f"the result of {what}", atol=0.05, rtol=0.02)
    passed("rms_norm")
