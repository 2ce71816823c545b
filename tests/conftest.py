"""Shared helpers: tiny configs, and a transformers twin of one of our models holding the same weights."""

from __future__ import annotations

import pytest
import torch

from paligemma import GemmaConfig, GemmaForCausalLM

TOL = dict(atol=1e-5, rtol=1e-5)


def tiny_gemma_config(**overrides) -> GemmaConfig:
    fields = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=128, rope_theta=10000.0)
    fields.update(overrides)
    return GemmaConfig(**fields)


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Norm weights start at zero (scale 1); give them random values so parity tests exercise them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def make_gemma(seed: int = 0, **overrides) -> GemmaForCausalLM:
    torch.manual_seed(seed)
    model = GemmaForCausalLM(tiny_gemma_config(**overrides)).eval()
    randomize_norms(model, seed)
    return model


def hf_gemma_twin(model: GemmaForCausalLM, attn_implementation: str = "eager"):
    """transformers.GemmaForCausalLM with our model's config and weights."""
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GemmaConfig(**model.config.to_hf_dict(), attn_implementation=attn_implementation)
    twin = transformers.GemmaForCausalLM(hf_config).eval()
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    return twin


@pytest.fixture
def tiny_model() -> GemmaForCausalLM:
    return make_gemma()
