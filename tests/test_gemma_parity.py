"""Our Gemma decoder against transformers' on the same random weights, float32, at 1e-5."""

import pytest
import torch

from conftest import TOL, hf_gemma_twin, make_gemma
from paligemma import KVCache

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "mqa": dict(num_attention_heads=4, num_key_value_heads=1),
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2),
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "head_dim_not_hidden_over_heads": dict(hidden_size=24, num_attention_heads=3, num_key_value_heads=1, head_dim=20),
    "three_layers_odd_sizes": dict(hidden_size=40, intermediate_size=70, num_hidden_layers=3,
                                   num_attention_heads=6, num_key_value_heads=3, head_dim=10, rope_theta=500.0),
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers(name, attn):
    model = make_gemma(seed=1, attn_implementation=attn, **CONFIGS[name])
    twin = hf_gemma_twin(model)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(input_ids=input_ids)["logits"]
        theirs = twin(input_ids=input_ids).logits
    assert ours.shape == (2, 11, model.config.vocab_size)
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_left_padded_batch_matches_transformers(attn):
    model = make_gemma(seed=3, attn_implementation=attn)
    twin = hf_gemma_twin(model)
    input_ids = torch.randint(1, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(4))
    attention_mask = torch.ones(2, 9, dtype=torch.long)
    attention_mask[1, :4] = 0  # second row: 4 pads on the left, 5 real tokens
    input_ids[1, :4] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(input_ids=input_ids, attention_mask=attention_mask)["logits"]  # positions derived from mask
        theirs = twin(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    real = attention_mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], **TOL)
    # and the padded row equals the same prompt run alone, unpadded
    with torch.no_grad():
        alone = model(input_ids=input_ids[1:, 4:])["logits"]
    torch.testing.assert_close(ours[1, 4:], alone[0], **TOL)


def test_cached_decoding_matches_transformers_cache():
    model = make_gemma(seed=5)
    twin = hf_gemma_twin(model)
    input_ids = torch.randint(0, model.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(6))
    cache = KVCache()
    with torch.no_grad():
        hf_out = twin(input_ids=input_ids, use_cache=True)
        hf_cache = hf_out.cache if hasattr(hf_out, "cache") and hf_out.cache is not None else hf_out.past_key_values
        ours = model(input_ids=input_ids, kv_cache=cache)["logits"]
        torch.testing.assert_close(ours, hf_out.logits, **TOL)
        token = ours[:, -1:].argmax(-1)
        for _ in range(5):
            ours = model(input_ids=token, kv_cache=cache)["logits"]
            hf_out = twin(input_ids=token, cache=hf_cache, use_cache=True)
            torch.testing.assert_close(ours, hf_out.logits, **TOL)
            token = ours[:, -1:].argmax(-1)
    assert cache.num_items() == 11


def test_full_size_parameter_names_and_shapes_match_transformers():
    from paligemma import GemmaConfig, GemmaForCausalLM

    config = GemmaConfig()  # PaliGemma-3B's decoder
    with torch.device("meta"):
        ours = GemmaForCausalLM(config)
        theirs = transformers.GemmaForCausalLM(transformers.GemmaConfig(**config.to_hf_dict()))
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    theirs_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert ours_shapes == theirs_shapes
    # embeddings 257216 x 2048 + 18 layers x (attention 2048x(2048+256+256+2048) + MLP 3x2048x16384 + 2 norms) + norm
    layer = 2048 * (2048 + 256 + 256) + 2048 * 2048 + 3 * 2048 * 16384 + 2 * 2048
    expected = 257216 * 2048 + 18 * layer + 2048
    assert sum(p.numel() for p in ours.parameters()) == expected == 2_508_662_784
