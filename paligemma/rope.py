"""Rotary position embeddings (RoPE), in the half-split layout Gemma checkpoints use."""

from __future__ import annotations

import torch
from torch import nn


def rope_inverse_frequencies(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    r"""$\omega_i = \theta^{-2i/d}$ for $i = 0 \dots d/2 - 1$: one rotation speed per pair of channels."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


class GemmaRotaryEmbedding(nn.Module):
    """Turns integer positions into the (cos, sin) tables that `apply_rotary_pos_emb` rotates by."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.register_buffer("inv_freq", self.inverse_frequencies(), persistent=False)

    def inverse_frequencies(self) -> torch.Tensor:
        """(head_dim/2,) rotation speeds; a scaled RoPE (Gemma 3's global layers) changes only this."""
        return rope_inverse_frequencies(self.head_dim, self.theta)

    def reset_parameters(self, device: torch.device | str | None = None) -> None:
        """Recompute the frequency buffer, e.g. on `device` after the module was built on `meta`."""
        self.inv_freq = self.inverse_frequencies().to(device or self.inv_freq.device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # position_ids: (B, T) -> angles (B, T, head_dim/2), computed in float32 whatever x's dtype:
        # at position 8000 a bfloat16 angle would be off by whole radians.
        angles = position_ids[..., None].float() * self.inv_freq.to(x.device)
        angles = torch.cat((angles, angles), dim=-1)  # (B, T, head_dim): same angle for channel i and i + d/2
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis: a 90-degree turn of every pair (x1_i, x2_i)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Rotate each pair by its angle: $x' = x \cos\phi + \mathrm{rotate\_half}(x) \sin\phi$.

    q, k: (B, heads, T, head_dim); cos, sin: (B, T, head_dim), broadcast over the head axis.
    """
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)  # (B, 1, T, head_dim)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
