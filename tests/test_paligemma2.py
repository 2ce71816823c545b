"""PaliGemma 2 (SigLIP + a Gemma 2 decoder) against transformers: a prefix longer than the window, padding,
prefix/suffix split, loss, cached decoding; and its checkpoints in the hub and transformers 5 layouts."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TOL, hf_paligemma_twin, make_paligemma, random_images
from paligemma import Gemma2ForCausalLM, KVCache, PaliGemmaForConditionalGeneration
from paligemma.sliding_window import SlidingWindowKVCache

transformers = pytest.importorskip("transformers")
IMAGE, N_IMG = 96, 16  # the tiny config's <image> id and tokens per image
WINDOW = 6  # shorter than the 16 image tokens + prompt: the prefix is longer than the window


def make(seed, **overrides):
    fields = dict(sliding_window=WINDOW, attn_logit_softcapping=8.0, final_logit_softcapping=5.0)
    fields.update(overrides)
    return make_paligemma(seed=seed, generation="gemma2", **fields)


def batch(rows):
    longest = max(len(r) for r in rows)
    ids, mask = torch.zeros(len(rows), longest, dtype=torch.long), torch.zeros(len(rows), longest, dtype=torch.long)
    for i, r in enumerate(rows):  # left padding
        ids[i, longest - len(r):], mask[i, longest - len(r):] = torch.tensor(r), 1
    return ids, mask


def prompt(text_ids):
    return [IMAGE] * N_IMG + [2] + text_ids


def hf_positions(mask):
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1) + 1  # PaliGemma counts positions from 1


def test_the_decoder_is_gemma_2():
    model = make(seed=1)
    assert isinstance(model.language_model, Gemma2ForCausalLM)
    assert isinstance(model.language_model.new_kv_cache(), SlidingWindowKVCache)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prefill_and_cached_steps_match_transformers(attn):
    model = make(seed=2, attn_implementation=attn)
    twin = hf_paligemma_twin(model)
    ids, mask = batch([prompt([10, 11, 12, 13]), prompt([20])])
    pixels = random_images(2, seed=3)
    cache = model.language_model.new_kv_cache()
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, kv_cache=cache)
        theirs = twin(input_ids=ids, pixel_values=pixels, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                      position_ids=hf_positions(mask), use_cache=True)
        real = mask.bool()
        torch.testing.assert_close(ours["logits"][real], theirs.logits[real], **TOL)
        hf_cache = theirs.cache if getattr(theirs, "cache", None) is not None else theirs.past_key_values
        tokens = torch.tensor([[30], [31]])
        for step in range(12):  # suffix tokens: causal, inside the window only
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], -1)
            ours = model(input_ids=tokens, attention_mask=mask, kv_cache=cache)
            theirs = twin(input_ids=tokens, attention_mask=mask, cache=hf_cache, use_cache=True,
                          position_ids=hf_positions(mask)[:, -1:], token_type_ids=torch.ones_like(tokens))
            torch.testing.assert_close(ours["logits"], theirs.logits, **TOL)
            tokens = (tokens * 7 + step) % 90 + 3
    assert cache.stored(0) == WINDOW - 1 and cache.stored(1) == ids.shape[1] + 12


def test_training_forward_with_suffix_matches_transformers_loss():
    model = make(seed=4)
    twin = hf_paligemma_twin(model)
    rows = [prompt([10, 11]) + [30, 31, 32, 33, 34, 35, 36, 1], prompt([12, 13, 14]) + [37, 1]]
    n_prefix = [N_IMG + 3, N_IMG + 4]
    ids, mask = batch(rows)
    types = torch.zeros_like(ids)
    for i, (row, prefix) in enumerate(zip(rows, n_prefix)):
        types[i, ids.shape[1] - len(row) + prefix:] = 1  # the suffix (answer) is causal and scored
    labels = ids.masked_fill(types == 0, -100)
    pixels = random_images(2, seed=5)
    ours = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, token_type_ids=types, labels=labels)
    theirs = twin(input_ids=ids, pixel_values=pixels, attention_mask=mask, token_type_ids=types, labels=labels,
                  position_ids=hf_positions(mask))
    real = mask.bool()
    torch.testing.assert_close(ours["logits"][real], theirs.logits[real], **TOL)
    torch.testing.assert_close(ours["loss"], theirs.loss, **TOL)


def test_generation_paths_agree_past_the_window():
    model = make(seed=6)
    ids, mask = batch([prompt([10, 11, 12]), prompt([20])])
    kwargs = dict(pixel_values=random_images(2, seed=7), attention_mask=mask, max_new_tokens=14, eos_token_id=None)
    eager = model.generate(ids, **kwargs)
    assert torch.equal(model.generate(ids, static=True, **kwargs), eager)
    plain = KVCache()  # a cache that keeps everything: the window then comes from the mask alone
    with torch.no_grad():
        first = model(input_ids=ids, pixel_values=kwargs["pixel_values"], attention_mask=mask, kv_cache=plain,
                      logits_to_keep=1)["logits"][:, -1].argmax(-1, keepdim=True)
    assert torch.equal(first[:, 0], eager[:, 0])


# --- checkpoints --------------------------------------------------------------------------------------------

def logits(model, ids, pixels):
    with torch.no_grad():
        if isinstance(model, PaliGemmaForConditionalGeneration):
            return model(input_ids=ids, pixel_values=pixels)["logits"]
        return model(input_ids=ids, pixel_values=pixels, token_type_ids=torch.zeros_like(ids),
                     position_ids=torch.arange(1, ids.shape[1] + 1)[None]).logits


def hub_key(key):
    """Our names -> the names in PaliGemma 2's files on the hub (transformers 4 layout)."""
    return key.replace("vision_tower.", "vision_tower.vision_model.", 1) if key.startswith("vision_tower.") else key


def test_hub_layout_loads_and_ours_loads_in_transformers(tmp_path):
    model = make(seed=8)
    ids, pixels = torch.tensor([prompt([10, 11, 12])]), random_images(1, seed=9)
    expected = logits(model, ids, pixels)
    hub = tmp_path / "hub"
    hub.mkdir()
    config = model.config.to_hf_dict()
    config["text_config"].pop("rope_parameters")  # the hub file is older: rope_theta and no layer_types
    config["text_config"].pop("layer_types")
    config["text_config"]["rope_theta"] = 10000.0
    (hub / "config.json").write_text(json.dumps(config))
    state = {hub_key(k): v for k, v in model.state_dict().items() if k != "language_model.lm_head.weight"}
    save_file(state, hub / "model.safetensors", metadata={"format": "pt"})
    loaded = PaliGemmaForConditionalGeneration.from_pretrained(hub)
    assert loaded.config.text_config == model.config.text_config
    torch.testing.assert_close(logits(loaded, ids, pixels), expected, **TOL)

    model.save_pretrained(tmp_path / "ours")
    theirs = transformers.PaliGemmaForConditionalGeneration.from_pretrained(tmp_path / "ours",
                                                                            attn_implementation="eager")
    assert theirs.config.text_config.model_type == "gemma2"
    torch.testing.assert_close(logits(theirs, ids, pixels), expected, **TOL)
    theirs.save_pretrained(tmp_path / "theirs")  # transformers 5 writes its own layout: we read it back
    again = PaliGemmaForConditionalGeneration.from_pretrained(tmp_path / "theirs")
    torch.testing.assert_close(logits(again, ids, pixels), expected, **TOL)
    assert set(load_file(tmp_path / "ours" / "model.safetensors")) == set(
        k for k in model.state_dict() if k != "language_model.lm_head.weight")
