"""The configs of the real models this package describes, from their published sizes (no download needed).

PaliGemma 2 = SigLIP So400m/14 + Gemma 2 (2B / 9B / 27B) at 224, 448 or 896 px; Gemma 3 270M is the real
model that notebook 13 runs from its GGUF file.
"""

from __future__ import annotations

from .configuration import PaliGemmaConfig, SiglipVisionConfig
from .modeling_gemma2 import Gemma2Config
from .modeling_gemma3 import Gemma3TextConfig

# Gemma 2's published shapes: hidden, layers, heads, KV heads, head_dim, MLP, query_pre_attn_scalar
GEMMA2_SIZES = {
    "2b": (2304, 26, 8, 4, 256, 9216, 256),
    "9b": (3584, 42, 16, 8, 256, 14336, 256),
    "27b": (4608, 46, 32, 16, 128, 36864, 144),  # the 27B scales queries by (hidden / heads)**-0.5, not head_dim
}
PALIGEMMA2_DECODERS = {"3b": "2b", "10b": "9b", "28b": "27b"}
PALIGEMMA_VOCAB = 257216  # 256,000 Gemma tokens + 1,024 <loc> + 128 <seg> = 257,152, padded to a multiple of 64
IMAGE_TOKEN = 257152


def gemma2_config(size: str, **overrides) -> Gemma2Config:
    hidden, layers, heads, kv_heads, head_dim, mlp, scalar = GEMMA2_SIZES[size]
    return Gemma2Config(**{"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                           "num_key_value_heads": kv_heads, "head_dim": head_dim, "intermediate_size": mlp,
                           "query_pre_attn_scalar": scalar, **overrides})


def paligemma2_config(size: str = "3b", image_size: int = 224) -> PaliGemmaConfig:
    """PaliGemma 2 3B / 10B / 28B at 224, 448 or 896 px: (image_size / 14)^2 = 256, 1024 or 4096 image tokens."""
    text = gemma2_config(PALIGEMMA2_DECODERS[size], vocab_size=PALIGEMMA_VOCAB)
    vision = SiglipVisionConfig(image_size=image_size)  # So400m/14: 1152 wide, 27 layers, 16 heads, MLP 4304
    return PaliGemmaConfig(text_config=text, vision_config=vision, image_token_index=IMAGE_TOKEN,
                           projection_dim=text.hidden_size)


def gemma3_270m_config() -> Gemma3TextConfig:
    """Gemma 3 270M: 640 wide, 18 layers (5 local : 1 global), 4 query heads sharing 1 KV head, window 512."""
    return Gemma3TextConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                            num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                            max_position_embeddings=32768, query_pre_attn_scalar=256, rope_theta=1_000_000.0,
                            rope_local_base_freq=10_000.0)
