"""Grouped-query attention with rotary embeddings: an explicit eager path and a fused SDPA path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rotary_pos_emb
from .stacked_linear import apply_each

# SDPA learned to share K/V heads itself (`enable_gqa`) in torch 2.5; before that we repeat them.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, kv_heads, T, d) -> (B, kv_heads * n_rep, T, d): each K/V head copied for the n_rep query heads it serves."""
    batch, kv_heads, length, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    expanded = hidden_states[:, :, None].expand(batch, kv_heads, n_rep, length, head_dim)
    return expanded.reshape(batch, kv_heads * n_rep, length, head_dim)


def eager_attention(query, key, value, mask, scale):
    r"""$\mathrm{softmax}(QK^\top \cdot s + M)\,V$ written out; the softmax runs in float32.

    query (B, H, T, d); key, value (B, H, S, d) already repeated to H heads; mask (B, 1, T, S) or None.
    Returns the output (B, H, T, d) and the attention weights (B, H, T, S).
    """
    scores = torch.matmul(query, key.transpose(2, 3)) * scale  # (B, H, T, S)
    if mask is not None:
        scores = scores + mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value), weights


class GemmaAttention(nn.Module):
    """Multi-head attention where groups of query heads share one key/value head (GQA)."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_implementation = config.attn_implementation
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = config.head_dim ** -0.5
        self.attention_dropout = config.attention_dropout
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.last_attention_weights = None  # filled by the eager path when `keep_attention_weights` is set
        self.keep_attention_weights = False

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None = None, kv_cache=None,
                cache_position: torch.Tensor | None = None) -> torch.Tensor:
        """`cache_position` (T,) writes K/V at those cache slots (fixed shapes, for compiled decoding)."""
        batch, length, _ = hidden_states.shape
        query, key, value = self.project(hidden_states)  # (B, heads, T, d), (B, kv_heads, T, d) x 2
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if kv_cache is not None and cache_position is None:  # key, value: (B, kv_heads, past + T, d)
            key, value = kv_cache.update(key, value, self.layer_idx)
        elif kv_cache is not None:  # key, value: (B, kv_heads, max_length, d), the whole preallocated buffer
            key, value = kv_cache.update(key, value, self.layer_idx, cache_position)
        output = self.attend(query, key, value, attention_mask)  # (B, heads, T, d)
        output = output.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)  # (B, T, H*d)
        return self.o_proj(output)

    def project(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, hidden) -> queries (B, heads, T, d) and keys, values (B, kv_heads, T, d)."""
        batch, length, _ = hidden_states.shape

        def heads(x, n):  # (B, T, n*d) -> (B, T, n, d) -> (B, n, T, d)
            return x.view(batch, length, n, self.head_dim).transpose(1, 2)

        # q_proj(x), k_proj(x), v_proj(x): (B, T, heads*d), (B, T, kv_heads*d) x 2; one product where quantize
        # stacked them (stacked_linear.py)
        query, key, value = apply_each((self.q_proj, self.k_proj, self.v_proj), hidden_states)
        return heads(query, self.num_heads), heads(key, self.num_kv_heads), heads(value, self.num_kv_heads)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(Q K^T * scale + mask) V over the grouped K/V heads, eagerly or with fused SDPA."""
        dropout = self.attention_dropout if self.training else 0.0
        if self.attn_implementation == "eager":
            if dropout:
                raise NotImplementedError("attention dropout is only supported with attn_implementation='sdpa'")
            key, value = repeat_kv(key, self.num_key_value_groups), repeat_kv(value, self.num_key_value_groups)
            output, weights = eager_attention(query, key, value, attention_mask, self.scaling)
            self.last_attention_weights = weights if self.keep_attention_weights else None
            return output
        gqa = {"enable_gqa": self.num_key_value_groups > 1}
        if not _SDPA_HAS_GQA:
            key, value = repeat_kv(key, self.num_key_value_groups), repeat_kv(value, self.num_key_value_groups)
            gqa = {}
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                              scale=self.scaling, **gqa)
