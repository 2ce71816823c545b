"""Model configurations as plain dataclasses whose field names are the keys of Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .config_base import ConfigMixin

__all__ = ["GemmaConfig", "SiglipVisionConfig", "PaliGemmaConfig"]

# Activation names found in real Gemma config.json files. Gemma was trained with the tanh
# approximation of GELU; old configs say "gelu" but mean the same thing (transformers maps it too).
GELU_TANH_NAMES = ("gelu_pytorch_tanh", "gelu_tanh", "gelu")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")


@dataclass
class GemmaConfig(ConfigMixin):
    """Shape and numerics of a Gemma decoder. The defaults are PaliGemma-3B's 2B language model.

    `GemmaConfig.from_dict` reads every generation: `model_type` picks Gemma 1 (`gemma`), Gemma 2
    (`gemma2`) or Gemma 3 (`gemma3_text`, or a multimodal `gemma3` file's text_config), each a subclass.
    """

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

    model_type: ClassVar[str] = "gemma"
    architecture: ClassVar[str] = "GemmaForCausalLM"
    generations: ClassVar[dict[str, type]] = {}  # model_type -> config class, filled as subclasses are defined
    # config.json keys that change the maths and that this generation does not implement -> what they do
    unsupported_keys: ClassVar[dict[str, str]] = {
        "attn_logit_softcapping": "tanh soft-capping of attention scores (Gemma 2)",
        "final_logit_softcapping": "tanh soft-capping of the logits (Gemma 2)",
        "sliding_window": "sliding-window attention (Gemma 2 and 3)",
        "layer_types": "local and global attention layers (Gemma 2 and 3)",
        "sliding_window_pattern": "local and global attention layers (Gemma 3)",
        "rope_local_base_freq": "a second RoPE base for local layers (Gemma 3)",
        "use_bidirectional_attention": "bidirectional attention over text (EmbeddingGemma)",
    }

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        GemmaConfig.generations[cls.model_type] = cls

    def __post_init__(self):
        self._check_positive("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                             "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"{type(self).__name__}.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads}): each KV head serves a whole group of query heads")
        if self.head_dim % 2:
            raise ValueError(f"{type(self).__name__}.head_dim must be even for rotary embeddings, got {self.head_dim}")
        self._check_number("rms_norm_eps", low=0, low_inclusive=False)
        self._check_number("rope_theta", low=1, low_inclusive=False)
        self._check_number("attention_dropout", low=0, high=1)
        if self.attention_dropout == 1:
            self._fail("attention_dropout", "a probability in [0, 1)")
        self._check_bool("attention_bias", "tie_word_embeddings")
        self._check_choice("hidden_act", GELU_TANH_NAMES, " (Gemma uses tanh-approximated GELU)")
        self._check_choice("attn_implementation", ATTN_IMPLEMENTATIONS)
        if not self.tie_word_embeddings:
            raise ValueError(f"{type(self).__name__}.tie_word_embeddings must be True: Gemma reuses embed_tokens "
                             "as its lm_head")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            self._check_token_id(name, self.vocab_size)

    @property
    def num_key_value_groups(self) -> int:
        """How many query heads share one K/V head (1 = multi-head, num_attention_heads = multi-query)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.hidden_size)

    @property
    def layer_attention_types(self) -> list[str]:
        """Per layer, "full_attention" or "sliding_attention". Gemma 1: every layer sees every token."""
        return ["full_attention"] * self.num_hidden_layers

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GemmaConfig:
        """The config of whichever Gemma generation `d["model_type"]` names (Gemma 1 when absent)."""
        if not isinstance(d, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
        model_type = d.get("model_type") or cls.model_type
        if model_type == "gemma3":  # a multimodal Gemma 3 file: its decoder is described by text_config
            d = dict(d.get("text_config") or {})
            model_type = d.get("model_type") or "gemma3_text"
        generation = GemmaConfig.generations.get(model_type)
        if generation is None:
            raise ValueError(f"config model_type {model_type!r} is not a Gemma decoder this package builds "
                             f"(it knows {sorted(GemmaConfig.generations)})")
        if not issubclass(generation, cls):
            raise ValueError(f"{cls.__name__}.from_dict got a {model_type!r} config; GemmaConfig.from_dict picks "
                             "the right generation")
        for key, meaning in generation.unsupported_keys.items():
            if d.get(key) not in (None, False):
                raise ValueError(f"config key {key!r} = {d[key]!r} asks for {meaning}, which a {model_type!r} "
                                 f"decoder does not have; set model_type to the generation it belongs to")
        return generation._build(d)

    @classmethod
    def _normalise_dict(cls, d):
        cls._read_rope(d)
        # Hub Gemma files carry both a legacy "hidden_act": "gelu" and the real "hidden_activation".
        if d.get("hidden_activation"):
            d["hidden_act"] = d["hidden_activation"]
        if d.get("num_key_value_heads") is None and "num_attention_heads" in d:
            d["num_key_value_heads"] = d["num_attention_heads"]
        return d

    @classmethod
    def _read_rope(cls, d: dict) -> None:
        """RoPE settings from `rope_parameters` (transformers 5) or `rope_scaling`: only the plain rotation here."""
        rope = d.get("rope_parameters") or d.get("rope_scaling")
        if isinstance(rope, dict):
            cls._check_rope_type(rope)
            if "rope_theta" in rope and "rope_theta" not in d:
                d["rope_theta"] = rope["rope_theta"]

    @classmethod
    def _check_rope_type(cls, rope: dict, allowed: tuple = ("default",)) -> None:
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in allowed:
            raise ValueError(f"{cls.__name__}: RoPE type {rope_type!r} is not implemented (config asks for {rope!r}; "
                             f"supported: {allowed})")

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json that transformers' causal LM class of this generation reads."""
        d = self.to_dict()
        d.pop("attn_implementation")
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": d.pop("rope_theta")}
        return {"architectures": [self.architecture], "model_type": self.model_type, **d}


GemmaConfig.generations[GemmaConfig.model_type] = GemmaConfig


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
        if self.patch_size > self.image_size:
            raise ValueError(f"SiglipVisionConfig.patch_size ({self.patch_size}) is larger than image_size "
                             f"({self.image_size}): the image would have no patch")
        self._check_number("layer_norm_eps", low=0, low_inclusive=False)
        self._check_number("attention_dropout", low=0, high=1)
        self._check_bool("vision_use_head")
        self._check_choice("hidden_act", GELU_TANH_NAMES[:2])

    @property
    def num_patches(self) -> int:
        """(image_size // patch_size)^2: 224 / 14 = 16 -> 256 image tokens. A remainder is cut off, as a
        convolution with stride = kernel = patch_size does."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def _normalise_dict(cls, d):
        d.setdefault("vision_use_head", False)  # absent in PaliGemma's hub config: it has no head
        return d

    def to_hf_dict(self) -> dict[str, Any]:
        return {"model_type": "siglip_vision_model", **self.to_dict()}


@dataclass
class PaliGemmaConfig(ConfigMixin):
    """A SigLIP vision config + a Gemma text config (any generation: PaliGemma 2 uses Gemma 2) + how they join."""

    text_config: GemmaConfig = dataclasses.field(default_factory=GemmaConfig)
    vision_config: SiglipVisionConfig = dataclasses.field(default_factory=SiglipVisionConfig)
    image_token_index: int = 257152
    projection_dim: int = 2048

    def __post_init__(self):
        if isinstance(self.text_config, dict):
            self.text_config = GemmaConfig.from_dict(self.text_config)
        if isinstance(self.vision_config, dict):
            self.vision_config = SiglipVisionConfig.from_dict(self.vision_config)
        if not isinstance(self.text_config, GemmaConfig) or not isinstance(self.vision_config, SiglipVisionConfig):
            raise TypeError("PaliGemmaConfig takes a GemmaConfig (or dict) and a SiglipVisionConfig (or dict)")
        self._check_positive("projection_dim")
        if self.projection_dim != self.text_config.hidden_size:
            raise ValueError(f"PaliGemmaConfig.projection_dim ({self.projection_dim}) must equal the text "
                             f"hidden_size ({self.text_config.hidden_size}): image tokens enter the decoder as embeddings")
        # transformers accepts an <image> id outside the embedding table (it looks such ids up as id 0)
        if isinstance(self.image_token_index, bool) or not isinstance(self.image_token_index, int) \
                or self.image_token_index < 0:
            self._fail("image_token_index", "a non-negative token id")

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
        # transformers 5 sets this in every PaliGemma text config: for it, it means "the mask decides", and the
        # mask is PaliGemma's prefix-LM (bidirectional prefix, causal suffix), which is what is built here.
        text.pop("use_bidirectional_attention", None)
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
