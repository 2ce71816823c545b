"""Checkers for notebook 07 (the PaliGemma model): the prefix-LM attention mask from token types and padding."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..masks import allowed_positions
from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_prefix_lm_mask"]

# token_type_ids (0 = prefix: image + prompt, 1 = suffix: the answer) and attention_mask (0 = left padding).
PREFIX_LM_CASES = (
    ([[0, 0, 0, 0, 1, 1, 1]], [[1, 1, 1, 1, 1, 1, 1]]),
    ([[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1]], [[0, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]]),
    ([[0, 0, 0, 0, 0]], [[1, 1, 1, 1, 1]]),  # a prompt alone (inference): all prefix
)


def _expected(token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    batch, length = token_type_ids.shape
    return allowed_positions(length, 0, attention_mask, token_type_ids == 0, batch)  # (B, T, T)


def _mistakes(token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the usual wrong masks look like, with the diagnosis of each."""
    batch, length = token_type_ids.shape
    real = attention_mask.bool()
    causal = torch.ones(length, length, dtype=torch.bool).tril().expand(batch, length, length)
    expected = _expected(token_type_ids, attention_mask)
    return {
        "every token is causal: the prefix (token_type_ids == 0, image + prompt) must see itself in both "
        "directions, so prefix queries may also look at later prefix keys": causal & real[:, None, :],
        "the roles of the token types are swapped: 0 marks the prefix (bidirectional), 1 the suffix (causal)":
            allowed_positions(length, 0, attention_mask, token_type_ids == 1, batch),
        "the suffix (token_type_ids == 1, the answer) must stay causal: an answer token may not look at the "
        "answer tokens after it, or training would let it copy the token it has to predict":
            real[:, None, :].expand(batch, length, length).clone(),
        "padding keys are not hidden: no query may look at a key whose attention_mask is 0":
            allowed_positions(length, 0, None, token_type_ids == 0, batch),
        "you hid the padding rows (queries) instead of the padding columns (keys): the mask is indexed "
        "[batch, query, key], and attention_mask says which keys may be looked at":
            allowed_positions(length, 0, None, token_type_ids == 0, batch) & real[:, :, None],
        "you also hid the padding rows (queries): only padding keys (columns) need hiding; a padding query's "
        "output is never used, and the package leaves its row as the token-type rule makes it":
            expected & real[:, :, None],
    }


def check_prefix_lm_mask(prefix_lm_mask_fn: Callable) -> None:
    """`prefix_lm_mask_fn(token_type_ids, attention_mask)` -> bool (B, T, T), True where query i may see key j."""
    for types, padding in PREFIX_LM_CASES:
        token_type_ids, attention_mask = torch.tensor(types), torch.tensor(padding)
        batch, length = token_type_ids.shape
        expected = _expected(token_type_ids, attention_mask)
        got = run_candidate(prefix_lm_mask_fn, token_type_ids.clone(), attention_mask.clone())
        call = f"prefix_lm_mask(token_type_ids={types}, attention_mask={padding})"
        hints = {
            (length, length): "keep the batch axis: return (B, T, T), one table per sequence",
            (batch, 1, length, length): "return (B, T, T) booleans, without the head axis",
            (batch, length): "build a (T, T) table per sequence by comparing query and key positions, e.g. with "
                             "x[:, :, None] & x[:, None, :]",
        }
        if not (isinstance(got, torch.Tensor) and got.shape == expected.shape):
            check_close(got, expected, what=f"the mask returned by {call}", shape_hints=hints)
        if got.dtype != torch.bool:
            raise ExerciseError(f"{call} returned dtype {got.dtype}, expected torch.bool: True where the query may "
                                "attend to the key (the additive 0 / -inf mask is made from it later)")
        if torch.equal(got, expected):
            continue
        if torch.equal(got, ~expected):
            raise ExerciseError(f"{call} is inverted: True must mean 'may attend', False 'blocked'")
        for message, wrong in _mistakes(token_type_ids, attention_mask).items():
            if torch.equal(got, wrong):
                raise ExerciseError(f"{call}: {message}")
        b, query, key = (got != expected).nonzero()[0].tolist()
        verdict = "allowed" if bool(expected[b, query, key]) else "blocked"
        raise ExerciseError(f"{call} is wrong: in sequence {b}, query {query} and key {key} should be {verdict}; "
                            f"{int((got != expected).sum())} entries differ")
    passed("prefix_lm_mask")
