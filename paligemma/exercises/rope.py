"""Checkers for notebook 02 (rotary position embeddings): `rotate_half` and a whole from-scratch RoPE."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..rope import GemmaRotaryEmbedding, apply_rotary_pos_emb, rotate_half
from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_rotate_half", "check_apply_rope"]

HALF_SPLIT = "Gemma checkpoints pair channel i with channel i + d/2 (half-split), so the second half comes first"


def _interleaved_rotate(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the 90-degree turn of neighbouring pairs."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def _rotate_half_along(x: torch.Tensor, dim: int) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=dim)
    return torch.cat((-x2, x1), dim=dim)


def _first_match(got: torch.Tensor, mistakes: dict[str, torch.Tensor], tolerance: float, what: str = "") -> None:
    """Raise the diagnosis of the first mistake that reproduces `got`, after `what` was computed."""
    for message, wrong in mistakes.items():
        if wrong.shape == got.shape and torch.allclose(got.float(), wrong.float(), atol=tolerance, rtol=tolerance):
            raise ExerciseError(f"{what}: {message}" if what else message)


def check_rotate_half(rotate_half_fn: Callable) -> None:
    """`rotate_half_fn(x)`: split the last axis into halves (x1, x2) and return (-x2, x1)."""
    x = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(0))  # every axis splits in two
    original = x.clone()
    expected = rotate_half(x)
    got = run_candidate(rotate_half_fn, x)
    if not torch.equal(x, original):
        raise ExerciseError("rotate_half changed its input in place: return a new tensor and leave x as it was")
    hints = {(2, 4, 6, 4): "you returned one half only: concatenate (-x2, x1) back to the full last axis"}
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape):
        check_close(got, expected, what="rotate_half(x)", shape_hints=hints)
    if torch.equal(got, expected):
        passed("rotate_half")
        return
    x1, x2 = x.chunk(2, dim=-1)
    mistakes = {
        f"you rotated neighbouring pairs (x0, x1), (x2, x3), ... (the interleaved layout); {HALF_SPLIT}: "
        "(x1, x2) -> (-x2, x1)": _interleaved_rotate(x),
        "the minus sign is on the wrong half: (x1, x2) -> (-x2, x1), yours gives (x2, -x1), a turn the other way":
            torch.cat((x2, -x1), dim=-1),
        "the minus sign is missing: (x1, x2) -> (-x2, x1), not (x2, x1); without it this is a reflection, "
        "not a rotation": torch.cat((x2, x1), dim=-1),
        "the halves are not swapped: (x1, x2) -> (-x2, x1), yours gives (-x1, x2)": torch.cat((-x1, x2), dim=-1),
    }
    for dim, name in ((0, "batch"), (1, "head"), (2, "time")):
        mistakes[f"you split the {name} axis (dim {dim}); split the last axis (head_dim), whose channels are "
                 "the pairs that rotate: x.chunk(2, dim=-1)"] = _rotate_half_along(x, dim)
    _first_match(got, mistakes, tolerance=0)
    check_close(got, expected, what="rotate_half(x)")


# (x shape (B, H, T, d), first positions per sequence, theta, dtype). Positions do not start at 0, theta changes
# once (a hard-coded 10000 shows), and the bfloat16 case has positions near 8000, where angles need float32.
APPLY_ROPE_CASES = (
    ((2, 3, 5, 16), (3, 7), 10000.0, torch.float32),
    ((1, 2, 4, 8), (11,), 100.0, torch.float32),
    ((2, 2, 4, 16), (8000, 8100), 10000.0, torch.bfloat16),
)


def _rope_mistakes(x, position_ids, theta):
    """Common wrong RoPEs, computed in float32."""
    d = x.shape[-1]
    x32, positions = x.float(), position_ids[:, None, :, None].float()  # (B, 1, T, 1)

    def rotate(inv_freq, layout="half", sign=1.0):
        angles = positions * inv_freq  # (B, 1, T, d/2)
        if layout == "interleaved":
            angles = angles.repeat_interleave(2, dim=-1)
            return x32 * angles.cos() + sign * _interleaved_rotate(x32) * angles.sin()
        if layout == "repeat_interleave":
            angles = angles.repeat_interleave(2, dim=-1)
        else:
            angles = torch.cat((angles, angles), dim=-1)
        return x32 * angles.cos() + sign * rotate_half(x32) * angles.sin()

    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    t = x.shape[2]
    from_zero = torch.arange(t).float()[None, None, :, None] * inv_freq
    from_zero = torch.cat((from_zero, from_zero), dim=-1)
    mistakes = {
        f"you rotated neighbouring channels (2i, 2i+1) together, the interleaved layout of the RoFormer paper and "
        f"Meta's Llama code; {HALF_SPLIT}: use rotate_half and cos/sin tables of cat((angles, angles))":
            rotate(inv_freq, "interleaved"),
        "you repeated each angle for neighbouring channels (repeat_interleave), but rotate_half pairs channel i "
        "with channel i + d/2: duplicate the angles with torch.cat((angles, angles), dim=-1)":
            rotate(inv_freq, "repeat_interleave"),
        "you rotated the wrong way (by minus the angle): x cos + rotate_half(x) sin, with a plus":
            rotate(inv_freq, sign=-1.0),
        "wrong frequencies: theta^(-2i/d) for i = 0 .. d/2 - 1, i.e. exponents torch.arange(0, d, 2) / d; "
        "yours look like theta^(-i/d)": rotate(1.0 / theta ** (torch.arange(d // 2).float() / d)),
        "wrong frequencies: the theta argument is not used (yours look like theta = 10000)":
            rotate(1.0 / 10000.0 ** (torch.arange(0, d, 2).float() / d)),
        "you ignored position_ids and counted positions 0, 1, 2, ...: rotate token t by position_ids[b, t]":
            x32 * from_zero.cos() + rotate_half(x32) * from_zero.sin(),
    }
    if x.dtype != torch.float32:
        low_angles = position_ids[:, None, :, None].to(x.dtype) * inv_freq.to(x.dtype)  # (B, 1, T, d/2)
        low_angles = torch.cat((low_angles, low_angles), dim=-1).float()
        mistakes[f"did not compute the angles in float32: positions times frequencies in {x.dtype} are off by "
                 "whole radians at large positions. Use position_ids.float() * inv_freq in float32, then cast "
                 "cos and sin"] = x32 * low_angles.cos() + rotate_half(x32) * low_angles.sin()
    return mistakes


def check_apply_rope(rope_fn: Callable) -> None:
    """`rope_fn(x, position_ids, theta)`: x (B, H, T, d), position_ids (B, T) -> x rotated, same shape and dtype."""
    generator = torch.Generator().manual_seed(0)
    for shape, starts, theta, dtype in APPLY_ROPE_CASES:
        batch, _, length, head_dim = shape
        x = torch.randn(shape, generator=generator).to(dtype)
        position_ids = torch.stack([torch.arange(start, start + length) for start in starts])  # (B, T)
        cos, sin = GemmaRotaryEmbedding(head_dim, theta)(x, position_ids)
        expected, _ = apply_rotary_pos_emb(x, x, cos, sin)
        original = x.clone()
        got = run_candidate(rope_fn, x, position_ids, theta)
        what = f"RoPE of x {tuple(shape)} ({dtype}) at positions from {list(starts)}, theta={theta:g}"
        if not torch.equal(x, original):
            raise ExerciseError(f"{what} changed its input in place: return a new tensor and leave x as it was")
        tolerance = 1e-5 if dtype == torch.float32 else 0.05  # bfloat16 keeps about 3 significant digits
        hints = {(batch, length, head_dim): "return the rotated x with its head axis: (B, H, T, d)",
                 (batch, shape[1], length, head_dim // 2): "cos and sin need head_dim entries per position: "
                                                            "torch.cat((angles, angles), dim=-1)"}
        if not (isinstance(got, torch.Tensor) and got.shape == expected.shape):
            check_close(got, expected, what=what, shape_hints=hints)
        if got.dtype != dtype:
            raise ExerciseError(f"{what} returned {got.dtype}: return the input's dtype ({dtype}); compute the "
                                "angles in float32 but cast cos and sin (or the result) back")
        if not torch.allclose(got.float(), expected.float(), atol=tolerance, rtol=tolerance):
            _first_match(got, _rope_mistakes(x, position_ids, theta), tolerance, what)
            check_close(got, expected, what=what, atol=tolerance, rtol=tolerance)
    passed("RoPE")
