"""Gemma 2 and Gemma 3 against transformers on the same random weights, float32, windows shorter than the input."""

import pytest
import torch

from conftest import TOL, hf_gemma_twin, make_causal_lm
from paligemma import KVCache, SlidingWindowKVCache

transformers = pytest.importorskip("transformers")

CONFIGS = {  # every window here is shorter than the 20-token inputs
    "gemma2": ("gemma2", {}),  # caps 50 / 30, window 4, local/global alternating
    "gemma2_tight_caps_mqa": ("gemma2", dict(num_key_value_heads=1, attn_logit_softcapping=5.0,
                                             final_logit_softcapping=3.0, sliding_window=3, query_pre_attn_scalar=20)),
    "gemma2_uncapped_own_layout": ("gemma2", dict(attn_logit_softcapping=None, final_logit_softcapping=None,
                                                  layer_types=["full_attention", "sliding_attention",
                                                               "sliding_attention", "full_attention"])),
    "gemma3": ("gemma3", {}),  # 4 layers L L G L, window 4, RoPE bases 1000 (global) / 50 (local)
    "gemma3_pattern6_linear_rope": ("gemma3", dict(num_hidden_layers=7, sliding_window_pattern=6, sliding_window=5,
                                                   rope_scaling={"rope_type": "linear", "factor": 4.0})),
    "gemma3_logit_cap_head8": ("gemma3", dict(final_logit_softcapping=2.0, head_dim=8, num_attention_heads=2,
                                              num_key_value_heads=1)),
}


def model_and_twin(name, attn="eager", seed=1, **extra):
    generation, overrides = CONFIGS[name]
    model = make_causal_lm(generation, seed=seed, attn_implementation=attn, **overrides, **extra)
    return model, hf_gemma_twin(model)


def random_ids(shape, seed):
    return torch.randint(3, 97, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers(name, attn):
    model, twin = model_and_twin(name, attn)
    ids = random_ids((2, 20), seed=2)
    with torch.no_grad():
        ours, theirs = model(input_ids=ids)["logits"], twin(input_ids=ids).logits
    assert ours.shape == (2, 20, 97)
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_left_padding_matches_transformers_and_the_unpadded_row(name):
    model, twin = model_and_twin(name, seed=3)
    ids, mask = random_ids((2, 20), seed=4), torch.ones(2, 20, dtype=torch.long)
    ids[1, :7], mask[1, :7] = 0, 0  # 7 pads: the window counts sequence slots, so pads fall out of it first
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask)["logits"]
        theirs = twin(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        alone = model(input_ids=ids[1:, 7:])["logits"]
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], **TOL)
    torch.testing.assert_close(ours[1, 7:], alone[0], **TOL)


@pytest.mark.parametrize("name", ["gemma2_tight_caps_mqa", "gemma3", "gemma3_logit_cap_head8"])
def test_labels_give_transformers_loss(name):
    model, twin = model_and_twin(name, seed=5)
    ids = random_ids((2, 20), seed=6)
    labels = ids.clone()
    labels[0, :5] = -100  # not scored
    ours = model(input_ids=ids, labels=labels)
    theirs = twin(input_ids=ids, labels=labels)
    torch.testing.assert_close(ours["loss"], theirs.loss, **TOL)
    ours["loss"].backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cache_kind", ["window", "keep_everything"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_steps_past_the_window_match_transformers(name, cache_kind):
    """Prefill 6, then 18 single tokens through the cache: every step's logits equal transformers' cached ones."""
    model, twin = model_and_twin(name, seed=7)
    ids = random_ids((2, 24), seed=8)
    cache = model.new_kv_cache() if cache_kind == "window" else KVCache()
    with torch.no_grad():
        ours = model(input_ids=ids[:, :6], kv_cache=cache)["logits"]
        out = twin(input_ids=ids[:, :6], use_cache=True)
        torch.testing.assert_close(ours, out.logits, **TOL)
        hf_cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        for t in range(6, 24):
            ours = model(input_ids=ids[:, t:t + 1], kv_cache=cache)["logits"]
            out = twin(input_ids=ids[:, t:t + 1], cache=hf_cache, use_cache=True)
            torch.testing.assert_close(ours, out.logits, **TOL)
    assert cache.num_items() == 24
    if cache_kind == "window":
        windows = model.config.layer_windows
        assert [cache.stored(i) for i in range(len(windows))] == [24 if w is None else w - 1 for w in windows]


@pytest.mark.parametrize("generation", ["gemma2", "gemma3"])
def test_greedy_decoding_past_the_window_equals_transformers_and_recomputation(generation):
    """Left-padded prompts longer than the window; 30 new tokens through every decoding path."""
    model = make_causal_lm(generation, seed=3, std=0.3, embed_std=0.02)  # varied tokens, not one repeated
    twin = hf_gemma_twin(model)
    ids, mask = random_ids((2, 10), seed=2), torch.ones(2, 10, dtype=torch.long)
    ids[1, :3], mask[1, :3] = 0, 0
    kwargs = dict(attention_mask=mask, max_new_tokens=30, eos_token_id=None)
    eager = model.generate(ids, **kwargs)
    assert min(len(set(row)) for row in eager.tolist()) >= 5  # a test that could fail: real variety
    with torch.no_grad():
        theirs = twin.generate(input_ids=ids, attention_mask=mask, max_new_tokens=30, min_new_tokens=30,
                               do_sample=False)[:, 10:]
    assert torch.equal(eager, theirs)
    assert torch.equal(model.generate(ids, static=True, **kwargs), eager)
    if generation == "gemma3":  # the compiled step is the static one traced by torch.compile: once is enough
        compiled = model.generate(ids, compile={"backend": "aot_eager", "fullgraph": True}, **kwargs)
        assert torch.equal(compiled, eager)
    sequence, full_mask = ids, mask  # recompute the whole sequence for every token, no cache at all
    with torch.no_grad():
        for _ in range(30):
            logits = model(input_ids=sequence, attention_mask=full_mask)["logits"][:, -1]
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], -1)
            full_mask = torch.cat([full_mask, torch.ones(2, 1, dtype=torch.long)], -1)
    assert torch.equal(sequence[:, 10:], eager)


def test_local_layers_of_a_long_decode_hold_only_their_window():
    """300 tokens with window 8: local layers store 7 keys, global layers all 300; same logits as no cache."""
    model = make_causal_lm("gemma3", seed=9, max_position_embeddings=512, sliding_window=8)
    ids = random_ids((1, 300), seed=10)
    cache = model.new_kv_cache()
    with torch.no_grad():
        full = model(input_ids=ids)["logits"]
        model(input_ids=ids[:, :100], kv_cache=cache)
        stepped = [model(input_ids=ids[:, t:t + 1], kv_cache=cache)["logits"] for t in range(100, 300)]
    torch.testing.assert_close(torch.cat(stepped, 1), full[:, 100:], **TOL)
    for i, kind in enumerate(model.config.layer_types):
        if kind == "sliding_attention":
            assert cache.stored(i) == 7 and cache.capacity(i) <= 100  # the prefill's 100, never more
        else:
            assert cache.stored(i) == 300


def test_window_cache_decoding_8k_tokens_keeps_window_sized_buffers():
    """8192 single-token updates of a local layer: the buffer stays at 2 x 511 slots and returns the right keys."""
    cache = SlidingWindowKVCache([512, None])
    for t in range(8192):
        token = torch.full((1, 1, 1, 2), float(t))
        keys, values = cache.update(token, -token, 0)
        cache.update(token, -token, 1)
        assert keys.shape[2] == min(t + 1, 512)  # the window: 511 kept + the new one
    assert torch.equal(keys[0, 0, :, 0], torch.arange(8192 - 512, 8192, dtype=torch.float32))
    assert torch.equal(values, -keys)
    assert cache.capacity(0) == 2 * 511 and cache.stored(0) == 511
    assert cache.stored(1) == 8192 and cache.num_items() == 8192


def test_static_ring_cache_returns_the_window_in_order():
    cache = SlidingWindowKVCache([4], max_length=20)
    prefill = torch.arange(10, dtype=torch.float32).view(1, 1, 10, 1)
    keys, _ = cache.update(prefill, prefill, 0)
    assert keys[0, 0, :, 0].tolist() == list(range(10))  # the prefill attends to all of its own keys
    assert sorted(cache.key_cache[0][0, 0, :, 0].tolist()) == [6, 7, 8, 9]  # the ring keeps the last 4
    keys, _ = cache.update(torch.full((1, 1, 2, 1), 10.0), torch.zeros(1, 1, 2, 1), 0)
    assert keys[0, 0, :, 0].tolist() == [7, 8, 9, 10, 10]  # 3 earlier in order + the new chunk
