"""Attention masks: which key positions each query may look at (causal, left padding, bidirectional prefix)."""

from __future__ import annotations

import torch


def causal_positions(query_length: int, past_length: int, device=None) -> torch.Tensor:
    """(T, S) booleans: key j is at or before query i's own position past_length + i."""
    query_pos = torch.arange(past_length, past_length + query_length, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(past_length + query_length, device=device)[None, :]  # (1, S)
    return key_pos <= query_pos


def prefix_pairs(bidirectional: torch.Tensor, past_length: int) -> torch.Tensor:
    """(B, T) prefix flags of this chunk -> (B, T, S) booleans, True where query and key are both prefix."""
    prefix = bidirectional.bool()
    both_prefix = prefix[:, :, None] & prefix[:, None, :]  # (B, T, T) among this chunk's tokens
    cached = both_prefix.new_zeros(prefix.shape[0], prefix.shape[1], past_length)  # earlier chunks: causal only
    return torch.cat((cached, both_prefix), dim=-1)


def allowed_positions(query_length: int, past_length: int, attention_mask: torch.Tensor | None = None,
                      bidirectional: torch.Tensor | None = None, batch_size: int = 1,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (B, T, S) table, True where query i may attend to key j; S = past_length + T.

    - causal: key j is at or before the query's own position past_length + i;
    - attention_mask (B, S), 1 = real token, 0 = padding: padded keys are never attended to;
    - bidirectional (B, T), True for prefix tokens of this chunk: prefix tokens also see each other
      in both directions (PaliGemma's prefix-LM: image + prompt are read as a whole).
    """
    key_length = past_length + query_length
    allowed = causal_positions(query_length, past_length, device).expand(batch_size, query_length, key_length)
    if bidirectional is not None:
        allowed = allowed | prefix_pairs(bidirectional, past_length)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]  # (B, 1, S) hides padded keys
    return allowed


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T, S) booleans -> (B, 1, T, S) floats: 0 where allowed, the most negative finite number elsewhere.

    A finite minimum instead of -inf keeps rows that allow nothing (padding queries) free of NaNs.
    """
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
