"""Checkers for notebook 05 (the Gemma decoder): the gated MLP and the pre-norm decoder layer.

Each checker builds a small package module with random weights (norm weights included, so the two norms of a
layer differ), runs the learner's function and the module, and, when they disagree, recomputes the usual
mistakes to name the one that was made.
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

__all__ = ["check_gemma_mlp", "check_decoder_layer"]


def _config() -> GemmaConfig:
    return GemmaConfig(vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                       attn_implementation="eager")


def _randomize(module: torch.nn.Module, generator: torch.Generator, std: float = 0.5) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def _diagnose(got: torch.Tensor, mistakes: dict[str, torch.Tensor]) -> None:
    """Raise the message of the first known mistake that reproduces `got`."""
    for message, wrong in mistakes.items():
        if got.shape == wrong.shape and torch.allclose(got, wrong, atol=1e-5, rtol=1e-5):
            raise ExerciseError(message)


def check_gemma_mlp(mlp_forward: Callable) -> None:
    """`mlp_forward(mlp, x)` for a `GemmaMLP`: down(gelu_tanh(gate(x)) * up(x))."""
    generator = torch.Generator().manual_seed(0)
    config = _config()
    mlp = GemmaMLP(config)
    _randomize(mlp, generator)
    x = torch.randn(2, 3, config.hidden_size, generator=generator)
    with torch.no_grad():
        expected = mlp(x)
        got = run_candidate(mlp_forward, mlp, x)
        gate, up, down = mlp.gate_proj(x), mlp.up_proj(x), mlp.down_proj
        tanh = dict(approximate="tanh")
        mistakes = {
            "you used the exact GELU (erf); Gemma uses its tanh approximation: "
            "F.gelu(..., approximate='tanh')": down(F.gelu(gate) * up),
            "the GELU goes on gate_proj's output and up_proj's output is the linear factor; "
            "you swapped them": down(F.gelu(up, **tanh) * gate),
            "you used SiLU (Llama's activation); Gemma uses GELU with the tanh approximation": down(F.silu(gate) * up),
            "you used ReLU; Gemma uses GELU with the tanh approximation": down(F.relu(gate) * up),
            "the gate is missing: multiply gelu_tanh(gate_proj(x)) by up_proj(x) before down_proj":
                down(F.gelu(gate, **tanh)),
            "the activation goes on the gate alone, before the product: "
            "down(gelu_tanh(gate(x)) * up(x))": down(F.gelu(gate * up, **tanh)),
            "the activation is missing: down(gelu_tanh(gate(x)) * up(x))": down(gate * up),
        }
    hints = {tuple(gate.shape): "this is the intermediate activation: finish with down_proj to come back to "
                                f"hidden_size={config.hidden_size}"}
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype:
        if not torch.allclose(got, expected, atol=1e-5, rtol=1e-5):
            _diagnose(got, mistakes)
    check_close(got, expected, what="the MLP output", shape_hints=hints)
    passed("GemmaMLP forward")


def check_decoder_layer(layer_forward: Callable) -> None:
    """`layer_forward(layer, hidden_states, position_embeddings, attention_mask)` for a `GemmaDecoderLayer`:
    h = x + attn(input_layernorm(x)), then h + mlp(post_attention_layernorm(h))."""
    generator = torch.Generator().manual_seed(0)
    config = _config()
    layer = GemmaDecoderLayer(config, layer_idx=0).eval()
    _randomize(layer, generator, std=0.3)  # random norm weights too, so the two norms differ
    batch, length = 2, 5
    x = torch.randn(batch, length, config.hidden_size, generator=generator)
    position_embeddings = GemmaRotaryEmbedding(config.head_dim, config.rope_theta)(x, torch.arange(length)[None])
    mask = additive_mask(allowed_positions(length, 0, batch_size=batch), x.dtype)  # (B, 1, T, T) causal
    with torch.no_grad():
        expected = layer(x, position_embeddings, mask)
        got = run_candidate(layer_forward, layer, x, position_embeddings, mask)
        norm1, norm2, mlp = layer.input_layernorm, layer.post_attention_layernorm, layer.mlp

        def attn(h, attention_mask=mask):
            return layer.self_attn(h, position_embeddings, attention_mask)

        h = x + attn(norm1(x))
        post_h = norm1(x + attn(x))
        normed = norm1(x)
        normed_h = normed + attn(normed)
        unmasked_h = x + attn(norm1(x), None)
        mistakes = {
            "you normalise after adding (post-norm); Gemma normalises each block's input (pre-norm): "
            "h = x + attn(input_layernorm(x)), out = h + mlp(post_attention_layernorm(h))":
                norm2(post_h + mlp(post_h)),
            "the residual connections are missing: add each block's output back to its input":
                mlp(norm2(attn(norm1(x)))),
            "the residual around attention is missing: h = x + attn(input_layernorm(x))": attn(norm1(x))
                + mlp(norm2(attn(norm1(x)))),
            "the residual around the MLP is missing: out = h + mlp(post_attention_layernorm(h))": mlp(norm2(h)),
            "the residual stream must carry the un-normalised x: add attn(input_layernorm(x)) to x itself, "
            "not to the normalised x": normed_h + mlp(norm2(normed_h)),
            "the two norms are swapped: input_layernorm goes before attention, post_attention_layernorm before "
            "the MLP": (lambda h2: h2 + mlp(norm1(h2)))(x + attn(norm2(x))),
            "post_attention_layernorm is not used: the MLP's input is post_attention_layernorm(h)":
                h + mlp(norm1(h)),
            "the MLP must read h, the output of the attention block, not x (the blocks run one after the other)":
                h + mlp(norm2(x)),
            "the attention mask is not passed on: self_attn(..., attention_mask) keeps tokens from seeing the "
            "future": unmasked_h + mlp(norm2(unmasked_h)),
        }
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype:
        if not torch.allclose(got, expected, atol=1e-5, rtol=1e-5):
            _diagnose(got, mistakes)
    check_close(got, expected, what="the decoder layer output")
    passed("GemmaDecoderLayer forward")
