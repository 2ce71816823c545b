"""Gemma 3 (text): only what changes from Gemma 2, each change a small named piece.

NEW in Gemma 3:
1. no soft-capping (None by default); instead QK-norm: an RMSNorm on every head's query and key;
2. five local layers per global layer (sliding_window_pattern 6) and a shorter window (512 in 270M);
3. two RoPE bases: 10k for local layers, 1M for global ones, whose positions may also be scaled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .configuration import GemmaConfig
from .modeling_gemma2 import Gemma2Attention, Gemma2Config, Gemma2DecoderLayer, Gemma2ForCausalLM, Gemma2Model
from .rmsnorm import GemmaRMSNorm
from .rope import GemmaRotaryEmbedding

ROPE_TYPES = ("default", "linear")


@dataclass
class Gemma3TextConfig(Gemma2Config):
    """Gemma 3's text config.json (model_type "gemma3_text"). Defaults: transformers' Gemma3TextConfig."""

    vocab_size: int = 262208
    max_position_embeddings: int = 131072
    rope_theta: float = 1_000_000.0  # NEW: the global layers' base
    rope_local_base_freq: float = 10_000.0  # NEW: the local layers' base
    rope_scaling: dict | None = None  # NEW: global layers only, e.g. {"rope_type": "linear", "factor": 8.0}
    attn_logit_softcapping: float | None = None  # NEW: no capping...
    final_logit_softcapping: float | None = None
    sliding_window_pattern: int = 6  # NEW: ... and 5 local layers per global one

    model_type: ClassVar[str] = "gemma3_text"
    architecture: ClassVar[str] = "Gemma3ForCausalLM"
    unsupported_keys: ClassVar[dict[str, str]] = {
        "use_bidirectional_attention": "bidirectional attention over text (EmbeddingGemma)",
        # transformers keeps this key in Gemma 3 configs but never applies it: refused rather than guessed at
        "attn_logit_softcapping": "soft-capping of attention scores, which Gemma 3 replaced by QK-norm",
    }

    def __post_init__(self):
        self._check_positive("sliding_window_pattern")
        super().__post_init__()
        if self.attn_logit_softcapping is not None:
            self._fail("attn_logit_softcapping", "None: Gemma 3 has no attention soft-capping (QK-norm instead; "
                                                 "transformers ignores the key)")
        self._check_number("rope_local_base_freq", low=1, low_inclusive=False)
        if self.rope_scaling is not None:
            self._check_rope_type(self.rope_scaling, ROPE_TYPES)
            if self.rope_scaling.get("rope_type", self.rope_scaling.get("type")) == "linear":
                factor = self.rope_scaling.get("factor")
                if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < float("inf"):
                    self._fail("rope_scaling", "a linear scaling with a positive, finite 'factor'")

    def default_layer_types(self) -> list[str]:
        """Every `sliding_window_pattern`-th layer is global: L L L L L G L L L L L G ..."""
        pattern = self.sliding_window_pattern
        return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                for i in range(self.num_hidden_layers)]

    @property
    def rope_scaling_factor(self) -> float:
        """How much slower the global layers' positions turn (linear scaling); 1 = unscaled."""
        if self.rope_scaling is None or self.rope_scaling.get("rope_type", self.rope_scaling.get("type")) == "default":
            return 1.0
        return float(self.rope_scaling["factor"])

    @classmethod
    def _normalise_dict(cls, d):
        if "_sliding_window_pattern" in d:  # how transformers 5 saves the pattern
            d.setdefault("sliding_window_pattern", d.pop("_sliding_window_pattern"))
        return GemmaConfig._normalise_dict.__func__(cls, d)  # not Gemma 2's, which insists on alternating layers

    @classmethod
    def _read_rope(cls, d: dict) -> None:
        """NEW: per layer type. transformers 5 writes rope_parameters = {"full_attention": {...},
        "sliding_attention": {...}}; older files rope_theta, rope_local_base_freq and rope_scaling."""
        rope = d.pop("rope_parameters", None)
        if isinstance(rope, dict) and ("full_attention" in rope or "sliding_attention" in rope):
            full, local = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
            cls._check_rope_type(local)
            if "rope_theta" in local:
                d["rope_local_base_freq"] = local["rope_theta"]
        else:
            full = rope if isinstance(rope, dict) else {}  # one set of parameters: the global layers'
        if "rope_theta" in full:
            d["rope_theta"] = full["rope_theta"]
        if full.get("rope_type", full.get("type", "default")) != "default":
            d["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
        if isinstance(d.get("rope_scaling"), dict):
            cls._check_rope_type(d["rope_scaling"], ROPE_TYPES)

    def to_hf_dict(self) -> dict:
        d = super().to_hf_dict()
        global_rope = {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta}
        d["rope_parameters"] = {"full_attention": global_rope,
                                "sliding_attention": {"rope_type": "default", "rope_theta": self.rope_local_base_freq}}
        for key in ("rope_local_base_freq", "rope_scaling"):  # (the pattern is kept: transformers reads it too)
            d.pop(key)
        return d


class LinearScaledRotaryEmbedding(GemmaRotaryEmbedding):
    r"""NEW: RoPE whose positions are divided by `factor` ($\omega_i / f$): long contexts turn as slowly as short ones."""

    def __init__(self, head_dim: int, theta: float, factor: float):
        self.factor = factor
        super().__init__(head_dim, theta)

    def inverse_frequencies(self) -> torch.Tensor:
        return super().inverse_frequencies() / self.factor


class Gemma3Attention(Gemma2Attention):
    """Gemma 2's attention with QK-norm: queries and keys are RMS-normalised per head before RoPE."""

    def __init__(self, config: Gemma3TextConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.q_norm = GemmaRMSNorm(config.head_dim, eps=config.rms_norm_eps)  # NEW: over head_dim
        self.k_norm = GemmaRMSNorm(config.head_dim, eps=config.rms_norm_eps)  # NEW

    def project(self, hidden_states):
        query, key, value = super().project(hidden_states)  # (B, heads, T, d)
        return self.q_norm(query), self.k_norm(key), value  # NEW: bounded scores without a tanh cap


class Gemma3DecoderLayer(Gemma2DecoderLayer):
    attention_class = Gemma3Attention


class Gemma3Model(Gemma2Model):
    """Gemma 2's stack with Gemma 3's layers and a second rotary embedding for the local layers."""

    layer_class = Gemma3DecoderLayer

    def __init__(self, config: Gemma3TextConfig):
        super().__init__(config)
        if config.rope_scaling_factor != 1.0:
            self.rotary_emb = LinearScaledRotaryEmbedding(config.head_dim, config.rope_theta,
                                                          config.rope_scaling_factor)
        self.rotary_emb_local = GemmaRotaryEmbedding(config.head_dim, config.rope_local_base_freq)  # NEW

    def position_embeddings_by_type(self, hidden_states, position_ids) -> dict:
        return {"full_attention": self.rotary_emb(hidden_states, position_ids),
                "sliding_attention": self.rotary_emb_local(hidden_states, position_ids)}  # NEW: base 10k


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    config_class = Gemma3TextConfig
    model_class = Gemma3Model
