"""PaliGemma against transformers on the same random weights: prefill, cached decoding, padding, training loss."""

import pytest
import torch

from conftest import TOL, hf_paligemma_twin, make_paligemma, random_images
from paligemma import KVCache

transformers = pytest.importorskip("transformers")
IMAGE = 96  # image token id of the tiny config
N_IMG = 16  # image tokens per image


def prompt(text_ids, pad=0):
    return [0] * pad + [IMAGE] * N_IMG + [2] + text_ids


def batch(rows):
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, r in enumerate(rows):  # left padding
        ids[i, longest - len(r):] = torch.tensor(r)
        mask[i, longest - len(r):] = 1
    return ids, mask


def hf_positions(mask, past=0):
    """transformers' generate: positions from the mask, then +1 (PaliGemma counts from 1)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, past:] + 1


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_prefill_and_twenty_cached_steps_match_transformers(kv_heads):
    model = make_paligemma(seed=21, num_key_value_heads=kv_heads)
    twin = hf_paligemma_twin(model)
    ids, mask = batch([prompt([10, 11, 12, 13]), prompt([20, 21])])
    pixels = random_images(2, seed=22)
    types = torch.zeros_like(ids)
    cache = KVCache()
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, kv_cache=cache)
        theirs = twin(input_ids=ids, pixel_values=pixels, attention_mask=mask, token_type_ids=types,
                      position_ids=hf_positions(mask), use_cache=True)
        real = mask.bool()
        torch.testing.assert_close(ours["logits"][real], theirs.logits[real], **TOL)
        hf_cache = theirs.cache if getattr(theirs, "cache", None) is not None else theirs.past_key_values
        token = ours["logits"][:, -1:].argmax(-1)
        for _ in range(20):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], -1)
            # the seed's loop passes pixel_values on every step: harmless, no image tokens in the input
            ours = model(input_ids=token, pixel_values=pixels, attention_mask=mask, kv_cache=cache)
            theirs = twin(input_ids=token, attention_mask=mask, cache=hf_cache, use_cache=True,
                          position_ids=hf_positions(mask)[:, -1:], token_type_ids=torch.ones_like(token))
            torch.testing.assert_close(ours["logits"], theirs.logits, **TOL)
            token = ours["logits"][:, -1:].argmax(-1)
    assert cache.num_items() == ids.shape[1] + 20


def test_training_forward_with_suffix_matches_transformers_loss():
    model = make_paligemma(seed=23)
    twin = hf_paligemma_twin(model)
    rows = [prompt([10, 11]) + [30, 31, 32, 1], prompt([12, 13, 14]) + [33, 1]]
    prefix_lengths = [N_IMG + 3, N_IMG + 4]
    ids, mask = batch(rows)
    types = torch.zeros_like(ids)
    for i, (row, n_prefix) in enumerate(zip(rows, prefix_lengths)):
        start = ids.shape[1] - len(row)
        types[i, start + n_prefix:] = 1
    labels = ids.masked_fill(types == 0, -100)
    pixels = random_images(2, seed=24)
    ours = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, token_type_ids=types, labels=labels)
    theirs = twin(input_ids=ids, pixel_values=pixels, attention_mask=mask, token_type_ids=types, labels=labels,
                  position_ids=hf_positions(mask))
    torch.testing.assert_close(ours["loss"], theirs.loss, **TOL)
    real = mask.bool()
    torch.testing.assert_close(ours["logits"][real], theirs.logits[real], **TOL)
    # the loss reaches the vision tower through the image tokens the suffix attends to
    ours["loss"].backward()
    assert model.vision_tower.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_suffix_is_causal_prefix_is_bidirectional():
    """Changing a later suffix token must not change earlier logits; changing a later prefix token must."""
    model = make_paligemma(seed=25)
    ids, mask = batch([prompt([10, 11, 12]) + [40, 41, 42]])
    types = torch.zeros_like(ids)
    types[0, -3:] = 1
    pixels = random_images(1, seed=26)
    with torch.no_grad():
        base = model(input_ids=ids, pixel_values=pixels, token_type_ids=types)["logits"]
        later_suffix = ids.clone()
        later_suffix[0, -1] = 50
        changed = model(input_ids=later_suffix, pixel_values=pixels, token_type_ids=types)["logits"]
        torch.testing.assert_close(changed[:, :-1], base[:, :-1])
        later_prefix = ids.clone()
        later_prefix[0, -4] = 50  # the last prompt token: the image positions before it see it
        changed = model(input_ids=later_prefix, pixel_values=pixels, token_type_ids=types)["logits"]
        assert not torch.allclose(changed[:, :N_IMG], base[:, :N_IMG])


def test_full_size_paligemma_on_meta_matches_transformers():
    from paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    config = PaliGemmaConfig()
    with torch.device("meta"):
        ours = PaliGemmaForConditionalGeneration(config)
        theirs = transformers.PaliGemmaForConditionalGeneration(transformers.PaliGemmaConfig(**config.to_hf_dict()))
    assert sum(p.numel() for p in ours.parameters()) == 2_923_466_480
    ours_shapes = {ours_key: tuple(v.shape) for ours_key, v in ours.state_dict().items()}
    from conftest import ours_to_hf_paligemma_key
    theirs_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {ours_to_hf_paligemma_key(k): s for k, s in ours_shapes.items()} == theirs_shapes
