"""Model configurations as plain dataclasses whose field names are the keys of Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# Activation names found in real Gemma config.json files. Gemma was trained with the tanh
# approximation of GELU; old configs say "gelu" but mean the same thing (transformers maps it too).
GELU_TANH_NAMES = ("gelu_pytorch_tanh", "gelu_tanh", "gelu")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")


class ConfigMixin:
    """`from_dict` / `from_pretrained` / `to_dict` shared by every config dataclass."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build a config from a config.json dictionary: unknown keys are ignored, known ones validated."""
        if not isinstance(d, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
        d = cls._normalise_dict(dict(d))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def _normalise_dict(cls, d: dict[str, Any]) -> dict[str, Any]:
        """Hook for subclasses: map alternative spellings of keys to the field names."""
        return d

    @classmethod
    def from_pretrained(cls, path: str | Path):
        """Read `config.json` from a checkpoint folder (or the file itself)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint folder {path} does not exist")
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no config.json found at {path}")
        return cls.from_dict(json.loads(file.read_text()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _check_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive integer, got {value!r}")


@dataclass
class GemmaConfig(ConfigMixin):
    """Shape and numerics of a Gemma decoder. The defaults are PaliGemma-3B's 2B language model."""

    vocab_size: int = 257216
    hidden_size: int = 2048
    intermediate_size: int = 16384
    num_hidden_layers: int = 18
    num_attention_heads: int = 8
    num_key_value_heads: int = 1
    head_dim: int = 256
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    hidden_act: str = "gelu_pytorch_tanh"
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    bos_token_id: int | None = 2
    tie_word_embeddings: bool = True
    # Not a transformers key: which attention kernel to run ("eager" teaches, "sdpa" is fast).
    attn_implementation: str = "sdpa"

    def __post_init__(self):
        self._check_positive("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                             "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"GemmaConfig.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads}): each KV head serves a whole group of query heads")
        if self.head_dim % 2:
            raise ValueError(f"GemmaConfig.head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not (isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0):
            raise ValueError(f"GemmaConfig.rms_norm_eps must be a positive number, got {self.rms_norm_eps!r}")
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 1):
            raise ValueError(f"GemmaConfig.rope_theta must be a number greater than 1, got {self.rope_theta!r}")
        if self.hidden_act not in GELU_TANH_NAMES:
            raise ValueError(f"GemmaConfig.hidden_act must be one of {GELU_TANH_NAMES} (Gemma uses tanh-approximated "
                             f"GELU), got {self.hidden_act!r}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"GemmaConfig.attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, "
                             f"got {self.attn_implementation!r}")
        if not self.tie_word_embeddings:
            raise ValueError("GemmaConfig.tie_word_embeddings must be True: Gemma reuses embed_tokens as its lm_head")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"GemmaConfig.pad_token_id {self.pad_token_id} is outside the vocabulary "
                             f"[0, {self.vocab_size})")

    @property
    def num_key_value_groups(self) -> int:
        """How many query heads share one K/V head (1 = multi-head, num_attention_heads = multi-query)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.hidden_size)

    @classmethod
    def _normalise_dict(cls, d):
        rope = d.get("rope_parameters") or d.get("rope_scaling")
        if isinstance(rope, dict):
            if rope.get("rope_type", rope.get("type", "default")) != "default":
                raise ValueError(f"GemmaConfig: only the default RoPE is supported, config asks for {rope!r}")
            if "rope_theta" in rope and "rope_theta" not in d:
                d["rope_theta"] = rope["rope_theta"]
        # Hub Gemma files carry both a legacy "hidden_act": "gelu" and the real "hidden_activation".
        if d.get("hidden_activation"):
            d["hidden_act"] = d["hidden_activation"]
        if d.get("head_dim") is None and "hidden_size" in d and "num_attention_heads" in d:
            d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        if d.get("num_key_value_heads") is None and "num_attention_heads" in d:
            d["num_key_value_heads"] = d["num_attention_heads"]
        return d

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json that transformers' GemmaForCausalLM reads."""
        d = self.to_dict()
        d.pop("attn_implementation")
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": d.pop("rope_theta")}
        return {"architectures": ["GemmaForCausalLM"], "model_type": "gemma", **d}
