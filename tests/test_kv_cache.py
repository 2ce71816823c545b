"""KVCache: the seed's API, identical results to recomputing, and growth without re-copying history."""

import pytest
import torch

from conftest import TOL, make_gemma
from paligemma import KVCache


def greedy_without_cache(model, input_ids, steps):
    tokens, logits = input_ids, []
    for _ in range(steps):
        step_logits = model(input_ids=tokens)["logits"][:, -1]
        logits.append(step_logits)
        tokens = torch.cat([tokens, step_logits.argmax(-1, keepdim=True)], dim=-1)
    return tokens[:, input_ids.shape[1]:], torch.stack(logits, 1)


def greedy_with_cache(model, input_ids, steps, cache):
    tokens, logits, new = input_ids, [], []
    for _ in range(steps):
        step_logits = model(input_ids=tokens, kv_cache=cache)["logits"][:, -1]
        logits.append(step_logits)
        tokens = step_logits.argmax(-1, keepdim=True)  # only the new token goes in next time
        new.append(tokens)
    return torch.cat(new, -1), torch.stack(logits, 1)


@pytest.mark.parametrize("max_length", [None, 32])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_cached_greedy_equals_recomputation(attn, max_length):
    model = make_gemma(seed=7, attn_implementation=attn)
    prompt = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(8))
    cache = KVCache(max_length=max_length)
    with torch.no_grad():
        plain_tokens, plain_logits = greedy_without_cache(model, prompt, 20)
        cached_tokens, cached_logits = greedy_with_cache(model, prompt, 20, cache)
    assert torch.equal(plain_tokens, cached_tokens)
    torch.testing.assert_close(cached_logits, plain_logits, **TOL)
    # the last generated token was never fed back, so 5 prompt + 19 generated tokens are stored
    assert cache.num_items() == 24
    assert len(cache) == model.config.num_hidden_layers


def test_update_returns_history_and_counts():
    cache = KVCache()
    assert cache.num_items() == 0
    k1, v1 = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    keys, values = cache.update(k1, v1, 0)
    assert torch.equal(keys, k1) and torch.equal(values, v1)
    k2, v2 = torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4)
    keys, values = cache.update(k2, v2, 0)
    assert keys.shape == (2, 1, 4, 4)
    assert torch.equal(keys, torch.cat([k1, k2], 2)) and torch.equal(values, torch.cat([v1, v2], 2))
    assert cache.num_items() == 4


def test_growth_is_geometric_so_history_is_rarely_copied():
    """Appending n tokens one by one must reallocate O(log n) times, not n times (torch.cat would)."""
    cache = KVCache()
    reallocations, last_storage = 0, None
    for _ in range(1000):
        cache.update(torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8), 0)
        storage = cache.key_cache[0].data_ptr()
        reallocations += storage != last_storage
        last_storage = storage
    assert cache.num_items() == 1000
    assert reallocations <= 8  # 16 -> 32 -> ... -> 1024: 7 buffers
    assert cache.capacity() < 2 * 1000 + 16  # and never more than twice what is needed


def test_preallocated_cache_never_moves_and_overflows_clearly():
    cache = KVCache(max_length=10)
    cache.update(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), 0)
    storage = cache.key_cache[0].data_ptr()
    for _ in range(6):
        cache.update(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8), 0)
    assert cache.key_cache[0].data_ptr() == storage and cache.num_items() == 10
    with pytest.raises(ValueError, match="max_length=10"):
        cache.update(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8), 0)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_max_length(bad):
    with pytest.raises(ValueError, match="max_length"):
        KVCache(max_length=bad)


def test_layers_must_be_written_in_order_and_shapes_must_agree():
    cache = KVCache()
    with pytest.raises(ValueError, match="in order"):
        cache.update(torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4), 1)
    cache.update(torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4), 0)
    with pytest.raises(ValueError, match="cannot append"):
        cache.update(torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4), 0)
    with pytest.raises(ValueError, match="same 4-D shape"):
        cache.update(torch.randn(1, 1, 4), torch.randn(1, 1, 4), 0)
