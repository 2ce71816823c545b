"""Checkers for notebook 12 (Gemma 2 and 3): a local layer's mask over its cache, and soft-capping's gradient."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..masks import causal_positions
from ..sliding_window import within_window
from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_cached_window_mask", "check_soft_cap_grad"]

# (query_length, past_length, window): a first prefill, prefills past the window, cached single steps
WINDOW_CASES = ((5, 0, 3), (6, 0, 8), (1, 10, 4), (1, 2, 4), (3, 9, 4), (4, 20, 6), (1, 0, 1))


def reference_cached_window_mask(query_length: int, past_length: int, window: int) -> torch.Tensor:
    """(T, K): the keys the cache returns are the last K = min(past, window - 1) + T positions."""
    kept = min(past_length, window - 1) + query_length
    full = causal_positions(query_length, past_length) & within_window(query_length, past_length, window)
    return full[:, -kept:]


def check_cached_window_mask(mask_fn: Callable) -> None:
    """`mask_fn(query_length, past_length, window)` -> bool (T, K) over the keys a local layer's cache returns."""
    for length, past, window in WINDOW_CASES:
        expected = reference_cached_window_mask(length, past, window)
        got = run_candidate(mask_fn, length, past, window)
        call = f"cached_window_mask({length}, {past}, {window})"
        kept = expected.shape[1]
        hints = {(length, past + length): f"that is a column for every position seen; the cache returns only the "
                                          f"last {kept} keys (window - 1 = {window - 1} kept, plus {length} new)",
                 (length, min(past, window) + length): "the cache keeps window - 1 earlier keys, not window: the "
                                                       "new token is the window's last member"}
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            check_close(got, expected, what=f"the result of {call}", shape_hints=hints)  # names the type or shape
        if got.dtype != torch.bool:
            raise ExerciseError(f"{call} should be a boolean tensor (True = may attend), got dtype {got.dtype}")
        if torch.equal(got, expected):
            continue
        if torch.equal(got, expected.flip(-1)):
            raise ExerciseError(f"{call}: the columns are reversed; the cache returns the keys oldest first")
        earlier = kept - length  # columns of cached keys; the last `length` columns are this chunk's own keys
        if torch.equal(got[:, :earlier], expected[:, :earlier]):
            raise ExerciseError(f"{call}: the columns of the new tokens are wrong: among themselves they are "
                                "causal (a new token does not see the ones after it)")
        raise ExerciseError(f"{call}: wrong entries. Column k is the key at position {past + length - kept} + k; "
                            "query i (at position past + i) may see it if it is not later and fewer than `window` "
                            "positions back")
    passed("the cached sliding-window mask")


def check_soft_cap_grad(grad_fn: Callable) -> None:
    """`grad_fn(x, cap)` -> d/dx of cap * tanh(x / cap), elementwise."""
    x = torch.linspace(-200, 200, 801, dtype=torch.float64)
    for cap in (50.0, 30.0, 5.0):
        probe = x.clone().requires_grad_(True)
        (torch.tanh(probe / cap) * cap).sum().backward()
        expected = probe.grad
        got = run_candidate(grad_fn, x.clone(), cap)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            got = got.to(expected.dtype)
            if torch.allclose(got * cap, expected, atol=1e-9):
                raise ExerciseError(f"soft_cap_grad(x, {cap}) is the derivative divided by cap: the chain rule's "
                                    "1/cap from tanh(x / cap) is cancelled by the cap in front")
            if torch.allclose(got, torch.tanh(x / cap) ** 2, atol=1e-9):
                raise ExerciseError(f"soft_cap_grad(x, {cap}) returns tanh²(x / cap): the derivative of tanh is "
                                    "1 - tanh², not tanh²")
        check_close(got, expected, what=f"soft_cap_grad(x, cap={cap})", atol=1e-9, rtol=1e-9,
                    value_hint="differentiate c·tanh(x/c) with the chain rule")
    passed("the gradient of soft-capping")
