"""SigLIP's vision tower as PaliGemma uses it: patches -> a pre-LayerNorm ViT encoder -> one vector per patch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import eager_attention
from .configuration import SiglipVisionConfig


class SiglipVisionEmbeddings(nn.Module):
    """Cut the image into patch_size x patch_size squares, project each to hidden_size, add a learned position."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        # A convolution whose stride equals its kernel is a linear map applied to each patch separately.
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        self.position_embedding = nn.Embedding(config.num_patches, config.hidden_size)
        self.register_buffer("position_ids", torch.arange(config.num_patches)[None], persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, D, H/p, W/p)
        patches = patches.flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major order
        return patches + self.position_embedding(self.position_ids)

    def reset_parameters(self, device=None) -> None:
        """Recompute the position-id buffer (needed after building on the `meta` device)."""
        self.position_ids = torch.arange(self.position_ids.shape[1], device=device)[None]


class SiglipAttention(nn.Module):
    """Plain multi-head self-attention over all patches (no mask, no rotary positions), with biases."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim ** -0.5
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_implementation = "sdpa"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden_states.shape

        def heads(x):  # (B, N, D) -> (B, heads, N, head_dim)
            return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        query, key, value = heads(self.q_proj(hidden_states)), heads(self.k_proj(hidden_states)), \
            heads(self.v_proj(hidden_states))
        if self.attn_implementation == "eager":
            output, _ = eager_attention(query, key, value, None, self.scale)
        else:
            output = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
        return self.out_proj(output.transpose(1, 2).reshape(batch, length, -1))  # (B, N, D)


class SiglipMLP(nn.Module):
    """fc2(gelu_tanh(fc1(x))): SigLIP's MLP is not gated, unlike Gemma's."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    """x + attn(LN(x)), then x + mlp(LN(x)): pre-LayerNorm, with mean-centring and biases (unlike RMSNorm)."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SiglipAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states))
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class SiglipEncoder(nn.Module):
    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class SiglipPoolingHead(nn.Module):
    """SigLIP's attention-pooling head (one learned query `probe` over all patches -> one vector per image).

    PaliGemma reads every patch, never this vector; checkpoints saved with `vision_use_head=True` still carry
    its weights, so the module exists to load and save them unchanged (names as in transformers).
    """

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D)."""
        probe = self.probe.expand(patch_features.shape[0], -1, -1)  # (B, 1, D)
        pooled = self.attention(probe, patch_features, patch_features, need_weights=False)[0]
        return (pooled + self.mlp(self.layernorm(pooled)))[:, 0]


class SiglipVisionModel(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] -> patch features (B, num_patches, hidden_size), after a final LayerNorm."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if config.vision_use_head:  # kept for its weights only: see SiglipPoolingHead
            self.head = SiglipPoolingHead(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (self.config.num_channels, size, size):
            raise ValueError(f"pixel_values must have shape (batch, {self.config.num_channels}, {size}, {size}), "
                             f"got {tuple(pixel_values.shape)}; the processor resizes images to {size} px")
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))
