"""Checkers for notebook 03 (grouped-query attention): `repeat_kv`, and a sliding-window mask over a KV cache."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..attention import repeat_kv
from ..masks import allowed_positions
from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_repeat_kv", "check_sliding_window_mask"]

# (batch, kv_heads, length, head_dim, n_rep): several KV heads so a wrong head order shows; MQA; n_rep = 1.
REPEAT_KV_CASES = ((2, 2, 5, 16, 4), (1, 3, 4, 8, 2), (2, 1, 3, 8, 8), (1, 2, 3, 4, 1))


def _source_heads(got: torch.Tensor, kv: torch.Tensor) -> list[int | None]:
    """For each output head, the input KV head it is an exact copy of (None if it copies none)."""
    sources = []
    for head in range(got.shape[1]):
        match = [j for j in range(kv.shape[1]) if torch.equal(got[:, head], kv[:, j])]
        sources.append(match[0] if match else None)
    return sources


def check_repeat_kv(repeat_kv_fn: Callable) -> None:
    """`repeat_kv_fn(x, n_rep)`: (B, kv_heads, T, d) -> (B, kv_heads * n_rep, T, d); head h copies h // n_rep."""
    generator = torch.Generator().manual_seed(0)
    for batch, kv_heads, length, head_dim, n_rep in REPEAT_KV_CASES:
        kv = torch.randn(batch, kv_heads, length, head_dim, generator=generator)
        original = kv.clone()
        expected = repeat_kv(kv, n_rep)
        got = run_candidate(repeat_kv_fn, kv, n_rep)
        call = f"repeat_kv(x of shape {tuple(kv.shape)}, n_rep={n_rep})"
        along = "K/V heads are copied along the head axis (dim 1)"
        hints = {
            (batch, kv_heads, length * n_rep, head_dim): f"did you repeat along the time axis (dim 2)? {along}",
            (batch, kv_heads, length, head_dim * n_rep): f"did you repeat along the last axis (head_dim)? {along}",
            (batch * n_rep, kv_heads, length, head_dim): f"did you repeat along the batch axis (dim 0)? {along}",
            (batch, kv_heads, n_rep, length, head_dim): "you added the copy axis but did not merge it: reshape "
                                                       "(B, kv_heads, n_rep, T, d) to (B, kv_heads * n_rep, T, d)",
        }
        if not (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype):
            check_close(got, expected, what=f"the result of {call}", shape_hints=hints)  # names type, shape, dtype
        if not torch.equal(kv, original):
            raise ExerciseError(f"{call} changed its input in place: return a new tensor and leave x as it was")
        if not torch.equal(got, expected):
            sources = _source_heads(got, kv)
            wanted = [h // n_rep for h in range(kv_heads * n_rep)]
            if None not in sources:
                raise ExerciseError(
                    f"{call}: the heads are in the wrong order. Query head h must read KV head h // n_rep, so the "
                    f"output heads should copy KV heads {wanted}, but yours copy {sources}. Tiling the whole block "
                    "(like .repeat) interleaves the groups; copy each KV head n_rep times in a row "
                    "(like .repeat_interleave, or x[:, :, None].expand(...) then reshape)")
            check_close(got, expected, what=f"the result of {call}",
                        value_hint="each output head should be an exact copy of one input KV head")
    passed("repeat_kv")


def _first_difference(got: torch.Tensor, expected: torch.Tensor, past_length: int) -> str:
    query, key = (got != expected).nonzero()[0].tolist()
    verdict = "allowed" if bool(expected[query, key]) else "blocked"
    return (f"query {query} (at position {past_length + query}) and key {key} should be {verdict}; "
            f"{int((got != expected).sum())} entries differ")


def _window_mask(query_length: int, past_length: int, window: int, shift: int = 0) -> torch.Tensor:
    """Causal (the package's rule) and at most `window + shift` keys back counting the query itself."""
    key_length = past_length + query_length
    query_pos = torch.arange(past_length, key_length)[:, None]  # (T, 1)
    key_pos = torch.arange(key_length)[None, :]  # (1, S)
    return allowed_positions(query_length, past_length)[0] & (key_pos > query_pos - window - shift)


def _window_mistakes(query_length: int, past_length: int, window: int) -> dict[str, torch.Tensor]:
    key_length = past_length + query_length
    query_pos = torch.arange(past_length, key_length)[:, None]
    key_pos = torch.arange(key_length)[None, :]
    from_zero = torch.arange(query_length)[:, None]
    return {
        f"each query sees {window + 1} keys: the window counts the query itself, so it reaches back to key "
        f"position {past_length} - {window} + 1 (use key > query - window, not >=)": _window_mask(
            query_length, past_length, window, 1),
        f"each query sees only {window - 1} keys: the window of {window} includes the query itself": _window_mask(
            query_length, past_length, window, -1),
        "the window must also be causal: a query may not look at keys after its own position":
            (key_pos > query_pos - window),
        "you placed the queries at positions 0, 1, ...; after past_length cached tokens, query i sits at position "
        "past_length + i": (key_pos <= from_zero) & (key_pos > from_zero - window),
        "you kept the first `window` keys; a sliding window keeps the last ones, those just before each query":
            allowed_positions(query_length, past_length)[0] & (key_pos < window),
    }


def check_sliding_window_mask(sliding_window_mask_fn: Callable) -> None:
    """`sliding_window_mask_fn(query_length, past_length, window)` -> bool (T, past + T): causal, and each query
    sees only itself and the window - 1 keys before it."""
    for query_length, past_length, window in ((6, 0, 3), (3, 5, 4), (1, 9, 4), (4, 2, 10)):
        key_length = past_length + query_length
        expected = _window_mask(query_length, past_length, window)
        got = run_candidate(sliding_window_mask_fn, query_length, past_length, window)
        call = f"sliding_window_mask(query_length={query_length}, past_length={past_length}, window={window})"
        if not isinstance(got, torch.Tensor):
            raise ExerciseError(f"{call} should return a torch.Tensor, got {type(got).__name__}")
        hints = {(query_length, query_length): "the keys are the past_length cached tokens followed by the new "
                                               "ones: past_length + query_length columns",
                 (key_length, query_length): "rows are queries and columns are keys: did you transpose it?",
                 (1, query_length, key_length): "return a 2-D (query_length, key_length) table, no batch axis"}
        if got.shape != expected.shape:
            hint = hints.get(tuple(got.shape), "")
            raise ExerciseError(f"{call} returned shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
                                + (f": {hint}" if hint else ""))
        if got.dtype != torch.bool:
            raise ExerciseError(f"{call} returned dtype {got.dtype}, expected torch.bool: True where the query "
                                "may attend to the key, the result of comparisons like key_pos <= query_pos")
        if torch.equal(got, expected):
            continue
        if torch.equal(got, ~expected):
            raise ExerciseError(f"{call} is inverted: True must mean 'may attend', False 'blocked'")
        if query_length == key_length and torch.equal(got, expected.T):
            raise ExerciseError(f"{call} is transposed: rows are queries and columns are keys, and query i may see "
                                "key j only when j <= i")
        for message, wrong in _window_mistakes(query_length, past_length, window).items():
            if torch.equal(got, wrong):
                raise ExerciseError(f"{call}: {message}")
        if torch.equal(got, allowed_positions(query_length, past_length)[0]):
            raise ExerciseError(f"{call} is the plain causal mask: also block the keys more than window - 1 "
                                "positions before each query")
        raise ExerciseError(f"{call} is wrong: {_first_difference(got, expected, past_length)}")
    passed("sliding_window_mask", "the reference mask")
