"""Checkers for notebook 08 (generation): top-k and top-p (nucleus) filtering of next-token logits.

The reference is the package's `filter_logits`; a wrong result is compared with the usual mistakes (a token
too few or too many, the wrong sort order, a mask left in sorted order, ...) to name the one made.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..sampling import filter_logits
from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_top_k", "check_top_p"]

NEG_INF = float("-inf")


def _logits(generator: torch.Generator) -> torch.Tensor:
    """(3, 12) logits without ties: a flat row, a peaked row, and one whose top token alone holds most mass."""
    logits = torch.randn(3, 12, generator=generator)
    logits[1] *= 3
    logits[2, 5] = 6.0
    return logits


def _compare(got, expected: torch.Tensor, call: str, mistakes: dict[str, torch.Tensor]) -> None:
    """Type and shape first, then the known mistakes, then which tokens should be kept or dropped."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        check_close(got, expected, what=f"the result of {call}",
                    shape_hints={tuple(expected.shape[::-1]): "keep the logits' (batch, vocab) layout"})
    if torch.equal(got, expected):
        return
    if torch.isfinite(got).all() and bool((got >= 0).all()) and torch.allclose(got.sum(-1), torch.ones(len(got))):
        raise ExerciseError(f"{call}: return logits (the kept ones unchanged, the others -inf), not probabilities: "
                            "sampling applies the softmax afterwards")
    dropped_got, dropped_expected = got == NEG_INF, expected == NEG_INF
    mistakes = {**mistakes, "dropped tokens must get -inf, so that softmax gives them probability 0; 0 is an "
                            "ordinary logit and leaves them possible": expected.masked_fill(dropped_expected, 0.0)}
    for message, wrong in mistakes.items():
        if torch.equal(got, wrong):
            raise ExerciseError(f"{call}: {message}")
    if not torch.equal(dropped_got, dropped_expected):
        row, token = (dropped_got != dropped_expected).nonzero()[0].tolist()
        verdict = "dropped (-inf)" if bool(dropped_expected[row, token]) else "kept"
        raise ExerciseError(f"{call}: in row {row}, token {token} should be {verdict}; you keep "
                            f"{(~dropped_got).sum(-1).tolist()} tokens per row, the package keeps "
                            f"{(~dropped_expected).sum(-1).tolist()}")
    check_close(got, expected, what=f"the result of {call}",
                value_hint="the kept tokens must keep their logits unchanged")


def check_top_k(top_k_fn: Callable) -> None:
    """`top_k_fn(logits, k)`: (B, V) -> (B, V), the k largest logits of each row kept, every other one -inf."""
    generator = torch.Generator().manual_seed(0)
    logits = _logits(generator)
    for k in (1, 3, 5, 12):
        expected = filter_logits(logits, top_k=k)
        got = run_candidate(top_k_fn, logits.clone(), k)
        order = logits.argsort(-1, descending=True)

        def keep_ranks(ranks):  # keep the tokens whose rank (0 = largest) is in `ranks`
            keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order[:, ranks], True)
            return logits.masked_fill(~keep, NEG_INF)

        vocab = logits.shape[-1]
        mistakes = {
            "you kept the k smallest logits; keep the k largest (torch.topk's default, largest=True)":
                keep_ranks(list(range(vocab - k, vocab))),
            f"you kept {k - 1} tokens instead of k = {k}: the k-th largest logit itself must stay (drop only "
            "logits strictly smaller than it)": keep_ranks(list(range(k - 1))),
            f"you kept {k + 1} tokens instead of k = {k}: the k-th largest is at index k - 1 of the sorted "
            "values": keep_ranks(list(range(min(k + 1, logits.shape[-1])))),
            "the k largest must be chosen in each row (over the vocabulary, the last axis), not down the batch axis":
                logits.masked_fill(logits < torch.topk(logits, min(k, logits.shape[0]), dim=0).values[-1:],
                                   NEG_INF),
        }
        mistakes = {message: wrong for message, wrong in mistakes.items() if not torch.equal(wrong, expected)}
        _compare(got, expected, f"top_k(logits, k={k})", mistakes)
    passed("top_k")


def check_top_p(top_p_fn: Callable) -> None:
    """`top_p_fn(logits, p)`: (B, V) -> (B, V), the smallest set of most likely tokens whose probability
    reaches p kept, every other logit -inf."""
    generator = torch.Generator().manual_seed(0)
    logits = _logits(generator)
    for top_p in (0.5, 0.9, 0.05, 1.0):
        expected = filter_logits(logits, top_p=top_p)
        got = run_candidate(top_p_fn, logits.clone(), top_p)
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)

        def unsort(drop_sorted):
            return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), NEG_INF)

        mass_before = probs.cumsum(-1) - probs
        shifted_left = (probs.cumsum(-1) >= top_p)[:, 1:]
        shifted_left = torch.cat((shifted_left, torch.ones_like(shifted_left[:, :1])), dim=-1)
        mistakes = {
            "you shifted the mask the wrong way: it drops the token that takes the total past p and the one before "
            "it. Keep every token whose predecessors have not reached p yet, i.e. drop where (cumulative sum - own "
            "probability) >= p": unsort(shifted_left),
            "top-p keeps the most likely tokens until their *total* reaches p; you kept the tokens whose own "
            "probability reaches p": logits.masked_fill(logits.softmax(-1) < top_p, NEG_INF),
            "you dropped the token that takes the running total past p; it must stay: drop a token only when the "
            "tokens ranked above it already reach p (cumulative sum minus its own probability >= p)":
                unsort(probs.cumsum(-1) >= top_p),
            "the running total must add probabilities (softmax of the sorted logits), not the logits themselves":
                unsort(sorted_logits.cumsum(-1) - sorted_logits >= top_p),
            "you applied the mask in sorted order: scatter it back to the original token positions "
            "(the mask of sorted position i belongs to token order[i])":
                logits.masked_fill(mass_before >= top_p, NEG_INF),
            "sort the tokens from most to least likely (descending=True): the nucleus is the most likely tokens":
                _unsort_ascending(logits, top_p),
        }
        mistakes = {message: wrong for message, wrong in mistakes.items() if not torch.equal(wrong, expected)}
        _compare(got, expected, f"top_p(logits, p={top_p})", mistakes)
    passed("top_p")


def _unsort_ascending(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """The nucleus filter with the sort the wrong way round (least likely first)."""
    sorted_logits, order = logits.sort(-1)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs >= top_p
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)
