"""Checkers for notebook 11 (performance): arithmetic intensity of a matmul, and a fixed-shape cache write.

The references come from the package and from PyTorch itself: FLOPs counted by
`torch.utils.flop_counter.FlopCounterMode`, and `KVCache.update(..., cache_position)`. A wrong number is
compared with the numbers the usual mistakes give, so the message can name the mistake.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..kv_cache import KVCache
from .checking import ExerciseError, LearnerCrash, check_close, passed, run_candidate

__all__ = ["check_arithmetic_intensity", "check_static_cache_write"]

DTYPES = {2: torch.bfloat16, 4: torch.float32}  # bytes per number -> a dtype of that size

# (out_features, in_features, tokens, bytes_per_number): the first tells the mistakes apart; then a decode step
# and a prefill of PaliGemma's 2048 x 2048 projection, and a small float32 case.
MATMUL_CASES = ((96, 64, 5, 2), (2048, 2048, 1, 2), (16384, 2048, 268, 2), (8, 4, 3, 4))


def _number(got, call: str, unit: str) -> float:
    if isinstance(got, bool) or not isinstance(got, Real):
        raise ExerciseError(f"{call} should return a plain number ({unit}), got {type(got).__name__}"
                            + (": use .item() to turn a one-element tensor into a number"
                               if isinstance(got, torch.Tensor) else ""))
    return float(got)


def _diagnose(got: float, expected: float, mistakes: dict[str, float], call: str) -> None:
    """Raise with the mistake whose number equals `got` (single mistakes first, then pairs of them)."""
    if math.isclose(got, expected, rel_tol=1e-9):
        return
    for hint, value in mistakes.items():
        if math.isclose(got, value, rel_tol=1e-9):
            raise ExerciseError(f"{call} returned {got:.6g}, expected {expected:.6g}: your formula {hint}")
    raise ExerciseError(f"{call} returned {got:.6g}, expected {expected:.6g}")


def matmul_reference(out_features: int, in_features: int, tokens: int, bytes_per_number: int) -> tuple[int, int]:
    """(FLOPs counted by PyTorch, bytes of W, x and y) for y = W @ x on meta tensors."""
    dtype = DTYPES[bytes_per_number]
    weight = torch.empty(out_features, in_features, dtype=dtype, device="meta")  # (out, in)
    x = torch.empty(in_features, tokens, dtype=dtype, device="meta")  # (in, n)
    with FlopCounterMode(display=False) as counter:
        y = weight @ x  # (out, n)
    return counter.get_total_flops(), sum(t.numel() * t.element_size() for t in (weight, x, y))


def _intensity_mistakes(out_features, in_features, tokens, bytes_per_number, flops, moved) -> dict[str, float]:
    weights, x, y = (bytes_per_number * n for n in (out_features * in_features, in_features * tokens,
                                                    out_features * tokens))
    return {
        "counts one FLOP per multiply-add; a multiply and an add are 2 FLOPs": flops / 2 / moved,
        "gives bytes per FLOP; arithmetic intensity is FLOPs divided by bytes": moved / flops,
        "counts bits, not bytes: bytes_per_number is already in bytes": flops / moved / 8,
        "counts the weight bytes once per token; the point of a matmul over n tokens is that W is read once for "
        "all of them": flops / (tokens * weights + x + y),
        "leaves out the tokens in the FLOPs: each of the n columns of x costs 2 x out x in FLOPs":
            flops / tokens / moved,
        "counts only the bytes of the weights; x is read and y is written too": flops / weights,
        "leaves out the bytes of y, which is written to memory too": flops / (weights + x),
        "leaves out the bytes of x, which is read too": flops / (weights + y),
    }


def check_arithmetic_intensity(arithmetic_intensity: Callable) -> None:
    """`arithmetic_intensity(out_features, in_features, tokens, bytes_per_number)`: FLOPs per byte of y = W @ x."""
    for out_features, in_features, tokens, bytes_per_number in MATMUL_CASES:
        call = (f"arithmetic_intensity(out_features={out_features}, in_features={in_features}, tokens={tokens}, "
                f"bytes_per_number={bytes_per_number})")
        got = run_candidate(arithmetic_intensity, out_features=out_features, in_features=in_features,
                            tokens=tokens, bytes_per_number=bytes_per_number)
        flops, moved = matmul_reference(out_features, in_features, tokens, bytes_per_number)
        mistakes = _intensity_mistakes(out_features, in_features, tokens, bytes_per_number, flops, moved)
        _diagnose(_number(got, call, "FLOPs per byte"), flops / moved, mistakes, call)
    passed("arithmetic_intensity")


# (batch, kv_heads, max_length, head_dim, slots): one decode token, a chunk of three, the very last slot.
WRITE_CASES = ((2, 2, 10, 4, [6]), (2, 2, 10, 4, [2, 3, 4]), (1, 3, 8, 4, [7]))


def _same_memory(a, b: torch.Tensor) -> bool:
    return isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _check_written(name: str, buffer: torch.Tensor, expected: torch.Tensor, old: torch.Tensor, new: torch.Tensor,
                   other_new: torch.Tensor, slots: list[int], call: str) -> None:
    """Say which slots went wrong: swapped, shifted by one, only the first written, or others overwritten."""
    if torch.equal(buffer, expected):
        return
    if torch.equal(buffer[:, :, slots], other_new):
        raise ExerciseError(f"{call}: keys and values are swapped; write key_states into key_buffer")
    length = buffer.shape[2]
    landed = [[s for s in range(length) if torch.equal(buffer[:, :, s], new[:, :, j])] for j in range(len(slots))]
    if all(where == [slot + 1] for where, slot in zip(landed, slots)):
        raise ExerciseError(f"{call}: the new {name} landed one slot too late; cache_position already holds the "
                            "(0-based) slot of each new token, so write at exactly those slots")
    if all(where == [slot - 1] for where, slot in zip(landed, slots)):
        raise ExerciseError(f"{call}: the new {name} landed one slot too early; write at exactly the slots in "
                            "cache_position")
    if len(slots) > 1 and landed[0] == [slots[0]] and not any(landed[1:]):
        raise ExerciseError(f"{call}: only the first of the {len(slots)} slots in cache_position was written; "
                            "cache_position may hold several slots (a chunk of prompt): write all of them")
    changed = [s for s in range(length) if s not in slots and not torch.equal(buffer[:, :, s], old[:, :, s])]
    if changed:
        raise ExerciseError(f"{call}: slots {changed} changed although only slots {slots} should; a slice that runs "
                            "to the end of the buffer (buffer[:, :, start:]) broadcasts the new token into every "
                            "later slot. Use index_copy_ or buffer[:, :, start:start + n]")
    check_close(buffer, expected, what=f"the {name} buffer after {call}", atol=0, rtol=0,
                value_hint=f"the new {name} go along the time axis (dim 2) at the slots in cache_position")


def check_static_cache_write(static_cache_write: Callable) -> None:
    """`static_cache_write(key_buffer, value_buffer, key_states, value_states, cache_position)`: write in place.

    The buffers are (B, kv_heads, max_length, head_dim), the states (B, kv_heads, T_new, head_dim) and
    cache_position (T_new,) the slots to write. The result must be the very same buffers, as
    `KVCache.update(..., cache_position)` returns them: a compiled step replays on fixed memory.
    """
    generator = torch.Generator().manual_seed(0)
    for batch, kv_heads, length, head_dim, slots in WRITE_CASES:
        old_keys, old_values = (torch.randn(batch, kv_heads, length, head_dim, generator=generator) for _ in range(2))
        new_keys, new_values = (torch.randn(batch, kv_heads, len(slots), head_dim, generator=generator)
                                for _ in range(2))
        cache_position = torch.tensor(slots)
        reference = KVCache(max_length=length)
        reference.update(old_keys, old_values, 0)  # every slot holds something, so overwriting shows
        expected_keys, expected_values = reference.update(new_keys, new_values, 0, cache_position=cache_position)
        key_buffer, value_buffer = old_keys.clone(), old_values.clone()
        call = (f"static_cache_write on buffers of shape {tuple(key_buffer.shape)} with cache_position={slots}")
        try:
            result = run_candidate(static_cache_write, key_buffer, value_buffer, new_keys, new_values,
                                   cache_position)
        except LearnerCrash as crash:
            raise ExerciseError(f"{call} raised {type(crash.error).__name__}: {crash.reason.rstrip('.')}{crash.where}. "
                                "The buffers are (B, kv_heads, max_length, head_dim): the new tokens go along the "
                                "time axis, dim 2") from None
        if not (isinstance(result, tuple | list) and len(result) == 2):
            raise ExerciseError(f"{call} should return the pair (key_buffer, value_buffer), "
                                f"got {type(result).__name__}")
        for name, got, buffer, old in (("keys", result[0], key_buffer, old_keys),
                                       ("values", result[1], value_buffer, old_values)):
            if not _same_memory(got, buffer):
                if torch.equal(buffer, old):
                    raise ExerciseError(f"{call}: the {name} buffer you were given is unchanged and a new tensor "
                                        "was returned; write into the buffer in place, buffer.index_copy_(2, "
                                        "cache_position, states) or slicing (torch.cat, torch.index_copy without "
                                        "the underscore and clone() all make a new tensor, which a compiled step "
                                        "replaying on fixed memory never sees)")
                raise ExerciseError(f"{call}: return the buffers themselves (key_buffer, value_buffer), not "
                                    f"a new tensor")
            if got.shape != buffer.shape:
                raise ExerciseError(f"{call}: returned {name} of shape {tuple(got.shape)}; return the whole "
                                    f"buffer {tuple(buffer.shape)}: a fixed shape is what lets the step compile once")
        _check_written("keys", key_buffer, expected_keys, old_keys, new_keys, new_values, slots, call)
        _check_written("values", value_buffer, expected_values, old_values, new_values, new_keys, slots, call)
    passed("static_cache_write")
