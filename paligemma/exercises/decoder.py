"""Checkers for notebook 05 (the Gemma decoder): two variants of its blocks that need the layer understood.

- the gated MLP with `gate_proj` and `up_proj` fused into one matrix (one matmul instead of two);
- a *parallel* block (GPT-J, PaLM): attention and MLP side by side on one normalised input.

Each checker builds a small package module with random weights (norm weights included), computes the
reference from its parts, and when the learner's result differs, recomputes the usual mistakes to name one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..configuration import GemmaConfig
from ..masks import additive_mask, allowed_positions
from ..modeling_gemma import GemmaDecoderLayer, GemmaMLP
from ..rope import GemmaRotaryEmbedding
from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_fused_mlp", "check_parallel_block"]


def _config() -> GemmaConfig:
    return GemmaConfig(vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                       attn_implementation="eager")


def _randomize(module: torch.nn.Module, generator: torch.Generator, std: float = 0.5) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def _diagnose(got: torch.Tensor, expected: torch.Tensor, mistakes: dict[str, torch.Tensor]) -> None:
    """Raise the message of the first known mistake that reproduces `got`."""
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype):
        return
    if torch.allclose(got, expected, atol=1e-5, rtol=1e-5):
        return
    for message, wrong in mistakes.items():
        if got.shape == wrong.shape and torch.allclose(got, wrong, atol=1e-5, rtol=1e-5):
            raise ExerciseError(message)


def check_fused_mlp(fused_mlp_fn: Callable) -> None:
    """`fused_mlp_fn(x, gate_up_weight, down_weight)`: down(gelu_tanh(gate) * up), with gate and up the two halves
    of x @ gate_up_weight.T, gate_up_weight = cat((gate_proj.weight, up_proj.weight)) of shape (2I, D)."""
    generator = torch.Generator().manual_seed(0)
    config = _config()
    mlp = GemmaMLP(config)
    _randomize(mlp, generator)
    x = torch.randn(2, 3, config.hidden_size, generator=generator)
    gate_up = torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight)).detach()  # (2I, D)
    down = mlp.down_proj.weight.detach()
    with torch.no_grad():
        expected = mlp(x)
        got = run_candidate(fused_mlp_fn, x, gate_up.clone(), down.clone())
        gate, up = mlp.gate_proj(x), mlp.up_proj(x)
        both = x @ gate_up.T  # (B, T, 2I)
        tanh = dict(approximate="tanh")
        mistakes = {
            "you split the fused product into alternating channels; the fused weight stacks all of gate_proj's "
            "rows first, then up_proj's, so its output's first half is the gate: .chunk(2, dim=-1)":
                mlp.down_proj(F.gelu(both[..., ::2], **tanh) * both[..., 1::2]),
            "the GELU goes on the gate, the first half of the fused output; you put it on the second half (up)":
                mlp.down_proj(F.gelu(up, **tanh) * gate),
            "you used the exact GELU (erf); Gemma uses its tanh approximation: F.gelu(..., approximate='tanh')":
                mlp.down_proj(F.gelu(gate) * up),
            "you used SiLU (Llama's activation); Gemma uses GELU with the tanh approximation":
                mlp.down_proj(F.silu(gate) * up),
            "the gating product is missing: multiply gelu_tanh(gate) by up before down_proj":
                mlp.down_proj(F.gelu(gate, **tanh)),
            "the activation goes on the gate alone, before the product: down(gelu_tanh(gate) * up)":
                mlp.down_proj(F.gelu(gate * up, **tanh)),
            "the activation is missing: down(gelu_tanh(gate) * up)": mlp.down_proj(gate * up),
        }
    _diagnose(got, expected, mistakes)
    hints = {(2, 3, 2 * config.intermediate_size): "that is the fused product itself: split it in two, gate the up "
                                                   "half, and finish with the down projection",
             (2, 3, config.intermediate_size): "that is the gated intermediate activation: finish with the down "
                                               f"projection back to hidden_size={config.hidden_size}"}
    check_close(got, expected, what="the fused MLP's output", shape_hints=hints)
    passed("fused_mlp")


def check_parallel_block(parallel_block_fn: Callable) -> None:
    """`parallel_block_fn(layer, hidden_states, position_embeddings, attention_mask)` for a `GemmaDecoderLayer`:
    x + attn(n) + mlp(n) with n = input_layernorm(x), one normalised input for both branches."""
    generator = torch.Generator().manual_seed(0)
    config = _config()
    layer = GemmaDecoderLayer(config, layer_idx=0).eval()
    _randomize(layer, generator, std=0.3)  # random norm weights too, so the two norms differ
    batch, length = 2, 5
    x = torch.randn(batch, length, config.hidden_size, generator=generator)
    position_embeddings = GemmaRotaryEmbedding(config.head_dim, config.rope_theta)(x, torch.arange(length)[None])
    mask = additive_mask(allowed_positions(length, 0, batch_size=batch), x.dtype)  # (B, 1, T, T) causal
    with torch.no_grad():
        norm1, norm2, mlp = layer.input_layernorm, layer.post_attention_layernorm, layer.mlp

        def attn(h, attention_mask=mask):
            return layer.self_attn(h, position_embeddings, attention_mask)

        normed = norm1(x)
        expected = x + attn(normed) + mlp(normed)
        got = run_candidate(parallel_block_fn, layer, x, position_embeddings, mask)
        h = x + attn(normed)
        mistakes = {
            "that is Gemma's sequential layer: in a parallel block the MLP does not wait for attention, it reads the "
            "same normalised x: out = x + attn(n) + mlp(n), n = input_layernorm(x)": layer(x, position_embeddings, mask),
            "the MLP reads post_attention_layernorm(x); a parallel block normalises once and feeds the same n to "
            "both branches": x + attn(normed) + mlp(norm2(x)),
            "the MLP must read the normalised x, n = input_layernorm(x), not x itself": x + attn(normed) + mlp(x),
            "the residual is missing: add both branches to x itself": attn(normed) + mlp(normed),
            "x is added twice: each branch is an increment, out = x + attn(n) + mlp(n)": 2 * x + attn(normed)
                + mlp(normed),
            "the residual must carry the un-normalised x: out = x + attn(n) + mlp(n), not n + ...": normed
                + attn(normed) + mlp(normed),
            "the attention mask is not passed on: self_attn(n, position_embeddings, attention_mask)": x
                + attn(normed, None) + mlp(normed),
            "the MLP branch is missing: out = x + attn(n) + mlp(n)": h,
        }
    _diagnose(got, expected, mistakes)
    check_close(got, expected, what="the parallel block's output")
    passed("parallel_block", "the block built from the layer's modules")
