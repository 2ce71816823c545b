"""Checkers for notebook 02 (rotary position embeddings): two variants that need the half-split pairing understood.

- partial RoPE (GPT-NeoX, Phi): only the first `rotary_dim` channels of each head turn, paired among themselves;
- converting a checkpoint trained with interleaved pairs so that the half-split code of the notebook runs it.

The references are built from the package's `GemmaRotaryEmbedding` and `apply_rotary_pos_emb`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..rope import GemmaRotaryEmbedding, apply_rotary_pos_emb, rotate_half
from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_partial_rope", "check_interleaved_to_half_split"]


def _rope(x: torch.Tensor, position_ids: torch.Tensor, base: float) -> torch.Tensor:
    """The package's half-split RoPE of x (B, H, T, d) over all of its d channels."""
    cos, sin = GemmaRotaryEmbedding(x.shape[-1], base)(x, position_ids)
    return apply_rotary_pos_emb(x, x, cos, sin)[0]


def _rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): a quarter turn of every neighbouring pair."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def _interleaved_rope(x: torch.Tensor, position_ids: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE with pairs (2i, 2i + 1), as the RoFormer paper and Meta's Llama code write it."""
    d = x.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = (position_ids[:, None, :, None].float() * inv_freq).repeat_interleave(2, dim=-1)  # (B, 1, T, d)
    return x * angles.cos() + _rotate_interleaved(x) * angles.sin()


# (x shape (B, H, T, d), rotary_dim, first position per sequence, base)
PARTIAL_CASES = (((2, 3, 5, 16), 8, (3, 7), 10000.0), ((1, 2, 4, 12), 4, (11,), 100.0), ((1, 1, 3, 8), 8, (0,), 1e4))


def _partial_mistakes(x, position_ids, rotary_dim, base) -> dict[str, torch.Tensor]:
    d = x.shape[-1]
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    cos, sin = GemmaRotaryEmbedding(d, base)(x, position_ids)
    whole_tables = (rot * cos[:, None, :, :rotary_dim] + rotate_half(rot) * sin[:, None, :, :rotary_dim])
    slow = 1.0 / base ** (torch.arange(0, rotary_dim, 2).float() / d)
    angles = position_ids[:, None, :, None].float() * slow
    angles = torch.cat((angles, angles), dim=-1)
    return {
        "you rotated the whole head: only the first rotary_dim channels turn, the others pass through unchanged":
            _rope(x, position_ids, base),
        "you rotated the last rotary_dim channels; the rotated part is the first rotary_dim channels of each head, "
        "x[..., :rotary_dim]": torch.cat((x[..., :d - rotary_dim], _rope(x[..., d - rotary_dim:], position_ids,
                                                                          base)), dim=-1),
        "the frequencies must use the rotated width: base^(-2i / rotary_dim) for i < rotary_dim / 2, not "
        "base^(-2i / head_dim); yours turn too slowly": torch.cat((rot * angles.cos() + rotate_half(rot) *
                                                                   angles.sin(), rest), dim=-1),
        "you cut the head_dim-wide cos/sin tables down to rotary_dim columns; their first rotary_dim / 2 angles "
        "are not duplicated any more. Build the tables for rotary_dim itself": torch.cat((whole_tables, rest), -1),
        "you paired neighbouring channels (interleaved); pair channel i with channel i + rotary_dim / 2, as "
        "rotate_half does": torch.cat((_interleaved_rope(rot, position_ids, base), rest), dim=-1),
    }


def check_partial_rope(partial_rope_fn: Callable) -> None:
    """`partial_rope_fn(x, position_ids, rotary_dim, base)`: RoPE on the first rotary_dim channels, the rest kept."""
    generator = torch.Generator().manual_seed(0)
    for shape, rotary_dim, starts, base in PARTIAL_CASES:
        x = torch.randn(shape, generator=generator)
        position_ids = torch.stack([torch.arange(start, start + shape[2]) for start in starts])  # (B, T)
        expected = torch.cat((_rope(x[..., :rotary_dim], position_ids, base), x[..., rotary_dim:]), dim=-1)
        original = x.clone()
        got = run_candidate(partial_rope_fn, x, position_ids, rotary_dim, base)
        call = f"partial_rope(x of shape {shape}, rotary_dim={rotary_dim}, base={base:g})"
        if not torch.equal(x, original):
            raise ExerciseError(f"{call} changed x in place: return a new tensor")
        hints = {shape[:-1] + (rotary_dim,): "you returned only the rotated channels: concatenate the unrotated "
                                             "rest, x[..., rotary_dim:], back on"}
        if not (isinstance(got, torch.Tensor) and got.shape == expected.shape):
            check_close(got, expected, what=f"the result of {call}", shape_hints=hints)
        if torch.allclose(got, expected, atol=1e-5, rtol=1e-5):
            continue
        if not torch.equal(got[..., rotary_dim:], x[..., rotary_dim:]) and torch.allclose(
                got[..., :rotary_dim], expected[..., :rotary_dim], atol=1e-5):
            raise ExerciseError(f"{call}: channels rotary_dim.. must pass through unchanged")
        for message, wrong in _partial_mistakes(x, position_ids, rotary_dim, base).items():
            if not torch.allclose(wrong, expected, atol=1e-5) and torch.allclose(got, wrong, atol=1e-5, rtol=1e-5):
                raise ExerciseError(f"{call}: {message}")
        check_close(got, expected, what=f"the result of {call}")
    passed("partial_rope")


def _per_head(weight: torch.Tensor, heads: int, order: torch.Tensor) -> torch.Tensor:
    return weight.reshape(heads, -1, weight.shape[-1])[:, order].reshape(weight.shape)


def _score_error(weight: torch.Tensor, converted: torch.Tensor, heads: int, generator: torch.Generator) -> float:
    """Largest difference between the interleaved model's q.q scores and half-split RoPE's on the converted rows."""
    x = torch.randn(1, 5, weight.shape[-1], generator=generator)  # (B, T, hidden)
    positions = torch.arange(5)[None]

    def scores(rotated):  # (B, H, T, d) -> (B, H, T, T)
        return rotated @ rotated.transpose(-1, -2)

    heads_of = lambda w: (x @ w.T).view(1, 5, heads, -1).transpose(1, 2)  # noqa: E731  (B, H, T, d)
    reference = scores(_interleaved_rope(heads_of(weight), positions, 1e4))
    return (scores(_rope(heads_of(converted), positions, 1e4)) - reference).abs().max().item()


def check_interleaved_to_half_split(convert_fn: Callable) -> None:
    """`convert_fn(weight, num_heads, head_dim)`: rows of a q_proj/k_proj weight trained with interleaved RoPE,
    reordered so that half-split RoPE gives the same attention scores."""
    generator = torch.Generator().manual_seed(0)
    for heads, head_dim, hidden in ((3, 8, 20), (1, 4, 6), (2, 16, 24)):
        weight = torch.randn(heads * head_dim, hidden, generator=generator)  # (H*d, hidden), as nn.Linear stores it
        original = weight.clone()
        got = run_candidate(convert_fn, weight, heads, head_dim)
        call = f"interleaved_to_half_split(weight {tuple(weight.shape)}, num_heads={heads}, head_dim={head_dim})"
        if not torch.equal(weight, original):
            raise ExerciseError(f"{call} changed the weight in place: return a new tensor")
        half_split = torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))  # new i <- old 2i, ...
        expected = _per_head(weight, heads, half_split)
        if not (isinstance(got, torch.Tensor) and got.shape == expected.shape):
            check_close(got, expected, what=f"the result of {call}",
                        shape_hints={weight.shape[::-1]: "keep nn.Linear's layout (out_features, in_features): "
                                                         "reorder the rows, do not transpose"})
        if torch.equal(got, expected):
            continue
        forward = torch.stack((torch.arange(head_dim // 2), torch.arange(head_dim // 2, head_dim)), -1).flatten()
        mistakes = {
            "you returned the rows in their original order; each head's rows must be reordered": weight,
            "you applied the permutation that goes the other way (half-split to interleaved); you need its inverse, "
            "torch.argsort of it": _per_head(weight, heads, forward),
            "you permuted the whole (num_heads * head_dim) block as if it were one head; RoPE pairs channels within "
            "each head, so reorder the head_dim rows of every head separately": weight[torch.cat(
                (torch.arange(0, heads * head_dim, 2), torch.arange(1, heads * head_dim, 2)))],
            "you reordered the columns (input features); the RoPE pairs are output channels, i.e. rows of the weight":
                weight[:, torch.cat((torch.arange(0, hidden, 2), torch.arange(1, hidden, 2)))],
        }
        for message, wrong in mistakes.items():
            if wrong.shape == got.shape and torch.equal(got, wrong) and not torch.equal(wrong, expected):
                raise ExerciseError(f"{call}: {message}")
        x = torch.randn(1, 5, hidden, generator=generator)
        positions = torch.arange(5)[None]
        raise ExerciseError(f"{call}: half-split RoPE with your rows gives attention scores off by up to "
                            f"{_score_error(weight, got, heads, generator):.3g} from the interleaved model's: new "
                            "channel i must be old channel 2i, and new channel i + head_dim / 2 old channel 2i + 1")
    passed("interleaved_to_half_split", "the reference permutation")
