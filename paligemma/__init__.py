"""PaliGemma (SigLIP -> projector -> Gemma decoder), built from scratch to match transformers."""

from .attention import GemmaAttention, repeat_kv
from .configuration import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from .generation import generate
from .kv_cache import KVCache
from .modeling_gemma import GemmaDecoderLayer, GemmaForCausalLM, GemmaMLP, GemmaModel
from .modeling_gemma2 import Gemma2Config, Gemma2ForCausalLM, Gemma2Model
from .modeling_gemma3 import Gemma3ForCausalLM, Gemma3Model, Gemma3TextConfig
from .modeling_paligemma import PaliGemmaForConditionalGeneration, PaliGemmaMultiModalProjector
from .modeling_siglip import SiglipVisionModel
from .processing_paligemma import PaliGemmaProcessor
from .rmsnorm import GemmaRMSNorm
from .rope import GemmaRotaryEmbedding, apply_rotary_pos_emb, rotate_half
from .sliding_window import SlidingWindowKVCache

__version__ = "0.1.0"

__all__ = [
    "GemmaConfig", "KVCache", "GemmaRMSNorm", "GemmaRotaryEmbedding", "rotate_half", "apply_rotary_pos_emb",
    "repeat_kv", "GemmaAttention", "GemmaMLP", "GemmaDecoderLayer", "GemmaModel", "GemmaForCausalLM",
    "SiglipVisionConfig", "PaliGemmaConfig", "SiglipVisionModel", "PaliGemmaMultiModalProjector",
    "PaliGemmaForConditionalGeneration", "PaliGemmaProcessor", "generate",
    "Gemma2Config", "Gemma2Model", "Gemma2ForCausalLM", "Gemma3TextConfig", "Gemma3Model", "Gemma3ForCausalLM",
    "SlidingWindowKVCache",
]
