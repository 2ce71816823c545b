"""Gemma 2, PaliGemma 2's decoder: only what changes from Gemma 1, each change a small named piece.

NEW in Gemma 2 (everything else is Gemma 1's code, inherited):
1. soft-capping: attention scores and final logits pass through cap * tanh(x / cap) (`soft_cap`);
2. attention scale query_pre_attn_scalar**-0.5 instead of head_dim**-0.5;
3. "sandwich" norms: the attention and MLP outputs are normalised too, not only their inputs;
4. local layers: every other layer attends only to the last `sliding_window` positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .attention import GemmaAttention, repeat_kv
from .configuration import GemmaConfig
from .masks import additive_mask, allowed_positions
from .modeling_gemma import GemmaDecoderLayer, GemmaForCausalLM, GemmaModel
from .rmsnorm import GemmaRMSNorm
from .sliding_window import SlidingWindowKVCache, ring_allowed, sliding_window_allowed

LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass
class Gemma2Config(GemmaConfig):
    """Gemma 2's config.json (model_type "gemma2"). Defaults: transformers' Gemma2Config (the 2B model)."""

    vocab_size: int = 256000
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    query_pre_attn_scalar: int = 256  # NEW: scores are scaled by query_pre_attn_scalar**-0.5
    attn_logit_softcapping: float | None = 50.0  # NEW: tanh cap of the attention scores
    final_logit_softcapping: float | None = 30.0  # NEW: tanh cap of the logits
    sliding_window: int | None = 4096  # NEW: what a local layer sees
    layer_types: list[str] | None = None  # NEW: per layer "sliding_attention" or "full_attention"

    model_type: ClassVar[str] = "gemma2"
    architecture: ClassVar[str] = "Gemma2ForCausalLM"
    unsupported_keys: ClassVar[dict[str, str]] = {
        "use_bidirectional_attention": "bidirectional attention over text (EmbeddingGemma)",
        "rope_local_base_freq": "a second RoPE base for local layers (Gemma 3)",
    }

    def __post_init__(self):
        super().__post_init__()
        self._check_positive("query_pre_attn_scalar")
        for name in ("attn_logit_softcapping", "final_logit_softcapping"):
            self._check_number(name, low=0, low_inclusive=False, optional=True)
        if self.sliding_window is not None:
            self._check_positive("sliding_window")
        if self.layer_types is None:
            self.layer_types = self.default_layer_types()
        if not isinstance(self.layer_types, list) or len(self.layer_types) != self.num_hidden_layers \
                or any(t not in LAYER_TYPES for t in self.layer_types):
            self._fail("layer_types", f"a list of {self.num_hidden_layers} entries (one per layer), each one of "
                                      f"{LAYER_TYPES}")

    def default_layer_types(self) -> list[str]:
        """Local, global, local, global, ...: layer 0 is a sliding-window layer."""
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.num_hidden_layers)]

    @property
    def layer_attention_types(self) -> list[str]:
        return list(self.layer_types)

    @property
    def layer_windows(self) -> list[int | None]:
        """Per layer, the window its cache must keep (None: a global layer keeps everything)."""
        return [self.sliding_window if t == "sliding_attention" else None for t in self.layer_types]

    @classmethod
    def _normalise_dict(cls, d):
        d = super()._normalise_dict(d)
        pattern = d.pop("sliding_window_pattern", None)
        if pattern not in (None, 2):
            raise ValueError(f"{cls.__name__}: sliding_window_pattern {pattern} contradicts Gemma 2's alternating "
                             "layers; give layer_types, or model_type gemma3_text for Gemma 3's pattern")
        return d

    def to_hf_dict(self) -> dict:
        d = super().to_hf_dict()
        d["hidden_activation"] = d.pop("hidden_act")
        return d


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    r"""NEW: $c \tanh(x / c)$: about x for |x| << c, never beyond ±c. None = no cap (Gemma 3)."""
    return x if cap is None else torch.tanh(x / cap) * cap


def capped_eager_attention(query, key, value, mask, scale, cap):
    r"""Gemma 1's eager attention with one line more: scores are soft-capped before the mask and softmax."""
    scores = soft_cap(torch.matmul(query, key.transpose(2, 3)) * scale, cap)  # (B, H, T, S), NEW: capped
    if mask is not None:
        scores = scores + mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value), weights


class Gemma2Attention(GemmaAttention):
    """Grouped-query attention with Gemma 2's scale, capped scores and, in local layers, a window."""

    def __init__(self, config: Gemma2Config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.scaling = config.query_pre_attn_scalar ** -0.5  # NEW (equal to head_dim**-0.5 in 2B and 9B)
        self.softcap = config.attn_logit_softcapping  # NEW
        self.sliding_window = config.layer_windows[layer_idx]  # NEW: None in global layers

    def attend(self, query, key, value, attention_mask):
        if attention_mask is not None:  # a local layer's cache returns only its window: the mask's last columns
            attention_mask = attention_mask[..., -key.shape[-2]:]
        if self.softcap is None:  # Gemma 3, or an uncapped Gemma 2: eager or SDPA as configured
            return super().attend(query, key, value, attention_mask)
        # SDPA fuses QK^T, softmax and V with no hook in between, where the cap must go: capped layers always
        # take this eager path, whatever attn_implementation says (so both settings give the same numbers).
        if self.training and self.attention_dropout:
            raise NotImplementedError("attention dropout is not supported together with attn_logit_softcapping")
        key, value = repeat_kv(key, self.num_key_value_groups), repeat_kv(value, self.num_key_value_groups)
        output, weights = capped_eager_attention(query, key, value, attention_mask, self.scaling, self.softcap)
        self.last_attention_weights = weights if self.keep_attention_weights else None
        return output


class Gemma2DecoderLayer(GemmaDecoderLayer):
    """x + norm(attn(norm(x))), then x + norm(mlp(norm(x))): "sandwich" norms around both blocks."""

    attention_class = Gemma2Attention

    def __init__(self, config: Gemma2Config, layer_idx: int):
        super().__init__(config, layer_idx)
        # In Gemma 1 post_attention_layernorm is the MLP's input norm; here it normalises the attention output
        # and the MLP gets its own pair. (The names are the checkpoints'.)
        self.pre_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)  # NEW
        self.post_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)  # NEW

    def forward(self, hidden_states, position_embeddings, attention_mask=None, kv_cache=None, cache_position=None):
        attended = self.self_attn(self.input_layernorm(hidden_states), position_embeddings, attention_mask,
                                  kv_cache, cache_position)
        hidden_states = hidden_states + self.post_attention_layernorm(attended)  # NEW: output normalised
        transformed = self.mlp(self.pre_feedforward_layernorm(hidden_states))
        return hidden_states + self.post_feedforward_layernorm(transformed)  # NEW


class Gemma2Model(GemmaModel):
    """Gemma 1's stack, whose local layers get a sliding-window mask."""

    layer_class = Gemma2DecoderLayer

    def position_embeddings_by_type(self, hidden_states, position_ids) -> dict:
        """(cos, sin) per layer type: one RoPE for all layers in Gemma 2 (Gemma 3 has two)."""
        cos_sin = self.rotary_emb(hidden_states, position_ids)
        return {"full_attention": cos_sin, "sliding_attention": cos_sin}

    def layer_inputs(self, hidden_states, position_ids, allowed, past_length, bidirectional) -> list[tuple]:
        batch, length, _ = hidden_states.shape
        window = self.config.sliding_window
        local = window is not None and "sliding_attention" in self.config.layer_types
        if allowed is None and local and past_length + length > window:  # a cache that kept everything
            allowed = allowed_positions(length, past_length, None, None, batch, hidden_states.device)
        masks = {"full_attention": allowed, "sliding_attention": allowed}
        if local and allowed is not None:
            masks["sliding_attention"] = sliding_window_allowed(allowed, past_length, window, bidirectional)  # NEW
        return self._per_layer(hidden_states, position_ids, masks)

    def decode_layer_inputs(self, hidden_states, position_ids, cache_position, key_mask) -> list[tuple]:
        """Static decoding: global layers read the whole buffer, local layers their ring (SlidingWindowKVCache)."""
        slots = torch.arange(key_mask.shape[1], device=hidden_states.device)
        masks = {"full_attention": (slots <= cache_position)[None, None, :] & key_mask[:, None, :]}  # (B, 1, L)
        if self.config.sliding_window is not None:
            ring = min(self.config.sliding_window, key_mask.shape[1])
            masks["sliding_attention"] = ring_allowed(cache_position, key_mask, ring)  # (B, 1, R)
        else:
            masks["sliding_attention"] = masks["full_attention"]
        return self._per_layer(hidden_states, position_ids, masks)

    def _per_layer(self, hidden_states, position_ids, masks: dict) -> list[tuple]:
        cos_sin = self.position_embeddings_by_type(hidden_states, position_ids)
        additive = {kind: None if m is None else additive_mask(m, hidden_states.dtype) for kind, m in masks.items()}
        return [(cos_sin[layer.attention_type], additive[layer.attention_type]) for layer in self.layers]


class Gemma2ForCausalLM(GemmaForCausalLM):
    """Gemma2Model + the tied lm_head, whose logits are soft-capped."""

    config_class = Gemma2Config
    model_class = Gemma2Model

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return soft_cap(self.lm_head(hidden_states), self.config.final_logit_softcapping)  # NEW

    def new_kv_cache(self, max_length: int | None = None) -> SlidingWindowKVCache:
        """Local layers keep only their window: memory grows with the global layers alone."""
        return SlidingWindowKVCache(self.config.layer_windows, max_length=max_length)
