"""Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p."""

from __future__ import annotations

import torch

from . import cpu_kernels


def check_sampling_arguments(do_sample: bool, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Reject settings that would be ignored or break sampling, with the reason."""
    if not do_sample and (temperature != 1.0 or top_k is not None or top_p is not None):
        raise ValueError("temperature, top_k and top_p only apply when sampling: pass do_sample=True "
                         "(greedy decoding always takes the most likely token)")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus): tokens outside the allowed set get -inf. (B, V) -> (B, V)."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


ARGMAX_BLOCK = 1024  # greedy_tokens: a long row's maximum is first looked for among the maxima of blocks this long


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """logits.argmax(-1), the same indices (the first of equal maxima; the first NaN), found faster on a CPU.

    On a CPU torch's argmax walks a long row one value at a time: for Gemma's 262144 logits it took 0.25-0.5 ms
    here, 15-25 times its max and up to a twentieth of a quantized decode step. So: our kernel's argmax
    (`cpu_kernels.argmax_rows`) where it is built; else the largest value of each block of ARGMAX_BLOCK, the first
    block holding the row's largest, then the first largest inside that block. (B, V) -> (B,).
    """
    batch, vocab = logits.shape
    if vocab < 64 * ARGMAX_BLOCK or logits.device.type != "cpu":  # short rows: the extra calls would cost more
        return logits.argmax(-1)
    found = cpu_kernels.argmax_rows(logits)  # our C loop, where it is built: one pass, both threads
    if found is not None:
        return found
    whole = vocab - vocab % ARGMAX_BLOCK
    maxima = logits[:, :whole].reshape(batch, -1, ARGMAX_BLOCK).amax(-1)  # (B, whole / block); NaN stays NaN
    if whole < vocab:  # the shorter last block
        maxima = torch.cat([maxima, logits[:, whole:].amax(-1, keepdim=True)], -1)
    start = maxima.argmax(-1) * ARGMAX_BLOCK  # (B,) where the first block holding the largest value begins
    # (B, block) columns of that block; in the last block, columns past the end repeat the last one, which can
    # never come first among equal values: its own column comes before them
    columns = (start[:, None] + torch.arange(ARGMAX_BLOCK, device=logits.device)).clamp_(max=vocab - 1)
    return start + logits.gather(-1, columns).argmax(-1)


def next_tokens(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None,
                top_p: float | None, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits of the last position -> (B,) chosen token ids."""
    if not do_sample:
        return greedy_tokens(logits)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
