"""PaliGemma's Gemma decoder (and, later, the SigLIP front), built from scratch to match transformers."""

from .attention import GemmaAttention, repeat_kv
from .configuration import GemmaConfig
from .kv_cache import KVCache
from .modeling_gemma import GemmaDecoderLayer, GemmaForCausalLM, GemmaMLP, GemmaModel
from .rmsnorm import GemmaRMSNorm
from .rope import GemmaRotaryEmbedding, apply_rotary_pos_emb, rotate_half

__version__ = "0.1.0"

__all__ = [
    "GemmaConfig", "KVCache", "GemmaRMSNorm", "GemmaRotaryEmbedding", "rotate_half", "apply_rotary_pos_emb",
    "repeat_kv", "GemmaAttention", "GemmaMLP", "GemmaDecoderLayer", "GemmaModel", "GemmaForCausalLM",
]
