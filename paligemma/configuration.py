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
        # A null in config.json means "use the default" (e.g. "head_dim": null), not None.
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})

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
        if d.get("num_key_value_heads") is None and "num_attention_heads" in d:
            d["num_key_value_heads"] = d["num_attention_heads"]
        return d

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json that transformers' GemmaForCausalLM reads."""
        d = self.to_dict()
        d.pop("attn_implementation")
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": d.pop("rope_theta")}
        return {"architectures": ["GemmaForCausalLM"], "model_type": "gemma", **d}


@dataclass
class SiglipVisionConfig(ConfigMixin):
    """The SigLIP vision tower. Defaults: PaliGemma-3B-224's So400m/14 encoder (224 px -> 256 patches)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    attention_dropout: float = 0.0
    vision_use_head: bool = False

    def __post_init__(self):
        self._check_positive("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                             "num_channels", "image_size", "patch_size")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"SiglipVisionConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.image_size % self.patch_size:
            raise ValueError(f"SiglipVisionConfig.image_size ({self.image_size}) must be a multiple of "
                             f"patch_size ({self.patch_size})")
        if self.hidden_act not in GELU_TANH_NAMES[:2]:
            raise ValueError(f"SiglipVisionConfig.hidden_act must be 'gelu_pytorch_tanh', got {self.hidden_act!r}")
        if self.vision_use_head:
            raise ValueError("SiglipVisionConfig.vision_use_head must be False: PaliGemma uses every patch "
                             "embedding, not SigLIP's pooling head")

    @property
    def num_patches(self) -> int:
        """(image_size / patch_size)^2: 224 / 14 = 16 -> 256 image tokens."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def _normalise_dict(cls, d):
        d.setdefault("vision_use_head", False)  # absent in PaliGemma's hub config: it has no head
        return d

    def to_hf_dict(self) -> dict[str, Any]:
        return {"model_type": "siglip_vision_model", **self.to_dict()}


@dataclass
class PaliGemmaConfig(ConfigMixin):
    """A SigLIP vision config + a Gemma text config + how they are joined."""

    text_config: GemmaConfig = dataclasses.field(default_factory=GemmaConfig)
    vision_config: SiglipVisionConfig = dataclasses.field(default_factory=SiglipVisionConfig)
    image_token_index: int = 257152
    projection_dim: int = 2048

    def __post_init__(self):
        if isinstance(self.text_config, dict):
            self.text_config = GemmaConfig.from_dict(self.text_config)
        if isinstance(self.vision_config, dict):
            self.vision_config = SiglipVisionConfig.from_dict(self.vision_config)
        if self.projection_dim != self.text_config.hidden_size:
            raise ValueError(f"PaliGemmaConfig.projection_dim ({self.projection_dim}) must equal the text "
                             f"hidden_size ({self.text_config.hidden_size}): image tokens enter the decoder as embeddings")
        if not 0 <= self.image_token_index < self.text_config.vocab_size:
            raise ValueError(f"PaliGemmaConfig.image_token_index {self.image_token_index} is outside the text "
                             f"vocabulary [0, {self.text_config.vocab_size})")

    @property
    def num_image_tokens(self) -> int:
        return self.vision_config.num_patches

    @classmethod
    def _normalise_dict(cls, d):
        text = dict(d.get("text_config") or {})
        # The hub file keeps token ids at the top level only. Its top-level vocab_size (257152) is the
        # tokenizer's size, not the embedding table's (257216, in text_config), so it is not copied down.
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if key in d:
                text.setdefault(key, d[key])
        d["text_config"] = GemmaConfig.from_dict(text)
        d["vision_config"] = SiglipVisionConfig.from_dict(dict(d.get("vision_config") or {}))
        if "image_token_id" in d and "image_token_index" not in d:
            d["image_token_index"] = d["image_token_id"]
        return d

    def to_dict(self) -> dict[str, Any]:
        return {"text_config": self.text_config.to_dict(), "vision_config": self.vision_config.to_dict(),
                "image_token_index": self.image_token_index, "projection_dim": self.projection_dim}

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json that transformers' PaliGemmaForConditionalGeneration reads."""
        text = self.text_config.to_hf_dict()
        text.pop("architectures")
        return {"architectures": ["PaliGemmaForConditionalGeneration"], "model_type": "paligemma",
                "text_config": text, "vision_config": self.vision_config.to_hf_dict(),
                "image_token_index": self.image_token_index, "projection_dim": self.projection_dim,
                "hidden_size": self.text_config.hidden_size, "vocab_size": self.text_config.vocab_size,
                "pad_token_id": self.text_config.pad_token_id, "bos_token_id": self.text_config.bos_token_id,
                "eos_token_id": self.text_config.eos_token_id, "tie_word_embeddings": True}
