"""PaliGemma checkpoints: every key layout in circulation loads; ours loads in transformers; strict errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TOL, hf_paligemma_twin, make_paligemma, random_images
from paligemma import PaliGemmaForConditionalGeneration
from paligemma.weights import CheckpointError

transformers = pytest.importorskip("transformers")
IDS = torch.tensor([[96] * 16 + [2, 10, 11, 12]])
PIXELS = random_images(1, seed=41)


def logits(model):
    with torch.no_grad():
        if isinstance(model, PaliGemmaForConditionalGeneration):
            return model(input_ids=IDS, pixel_values=PIXELS)["logits"]
        return model(input_ids=IDS, pixel_values=PIXELS, token_type_ids=torch.zeros_like(IDS),
                     position_ids=torch.arange(1, IDS.shape[1] + 1)[None]).logits


@pytest.fixture(scope="module")
def saved_by_transformers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    twin = hf_paligemma_twin(make_paligemma(seed=42))
    twin.save_pretrained(folder)
    return folder, logits(twin)


def relayout(source, target, rename):
    """Copy a checkpoint folder with every key renamed (to produce the other layouts)."""
    target.mkdir()
    (target / "config.json").write_text((source / "config.json").read_text())
    state = {rename(k): v for k, v in load_file(source / "model.safetensors").items()}
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})


def hub_layout(key):  # the files on the hub: vision_tower.vision_model.*
    return key.replace("vision_tower.", "vision_tower.vision_model.", 1) if key.startswith("vision_tower.") else key


def state_dict_layout(key):  # transformers 5 state_dict names
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model."):]
    return "model." + key


@pytest.mark.parametrize("layout", ["as_saved", "hub", "state_dict"])
def test_each_key_layout_loads_with_equal_logits(saved_by_transformers, tmp_path, layout):
    folder, expected = saved_by_transformers
    if layout != "as_saved":
        relayout(folder, tmp_path / layout, hub_layout if layout == "hub" else state_dict_layout)
        folder = tmp_path / layout
    model = PaliGemmaForConditionalGeneration.from_pretrained(folder)
    assert model.language_model.lm_head.weight is model.language_model.model.embed_tokens.weight
    torch.testing.assert_close(logits(model), expected, **TOL)


def test_state_dict_layout_with_lm_head_and_sharded(saved_by_transformers, tmp_path):
    folder, expected = saved_by_transformers
    state = {state_dict_layout(k): v for k, v in load_file(folder / "model.safetensors").items()}
    state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"].clone()
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, tmp_path / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    torch.testing.assert_close(logits(PaliGemmaForConditionalGeneration.from_pretrained(tmp_path)), expected, **TOL)


@pytest.mark.parametrize("max_shard_size", [None, 20_000])
def test_ours_saved_loads_in_transformers(tmp_path, max_shard_size):
    ours = make_paligemma(seed=43)
    ours.save_pretrained(tmp_path, max_shard_size=max_shard_size)
    theirs = transformers.PaliGemmaForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager")
    torch.testing.assert_close(logits(theirs), logits(ours), **TOL)
    again = PaliGemmaForConditionalGeneration.from_pretrained(tmp_path)
    torch.testing.assert_close(logits(again), logits(ours), **TOL)


def test_dtype_argument(saved_by_transformers):
    folder, _ = saved_by_transformers
    model = PaliGemmaForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.language_model.model.rotary_emb.inv_freq.dtype == torch.float32  # angles stay float32
    model(input_ids=IDS, pixel_values=PIXELS)  # runs end to end in bfloat16


def test_strict_errors_name_the_keys(saved_by_transformers, tmp_path):
    folder, _ = saved_by_transformers

    def broken(edit):
        relayout(folder, tmp_path / "broken", lambda k: k)
        state = load_file(tmp_path / "broken" / "model.safetensors")
        edit(state)
        save_file(state, tmp_path / "broken" / "model.safetensors", metadata={"format": "pt"})
        return tmp_path / "broken"

    import shutil

    path = broken(lambda s: s.pop("multi_modal_projector.linear.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys: multi_modal_projector\.linear\.bias"):
        PaliGemmaForConditionalGeneration.from_pretrained(path)
    shutil.rmtree(path)
    path = broken(lambda s: s.update({"vision_tower.head.probe": torch.zeros(1, 1, 24)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys: vision_tower\.head\.probe"):
        PaliGemmaForConditionalGeneration.from_pretrained(path)
    shutil.rmtree(path)
    path = broken(lambda s: s.update({"multi_modal_projector.linear.weight": torch.zeros(32, 25)}))
    with pytest.raises(CheckpointError, match=r"multi_modal_projector\.linear\.weight: checkpoint \(32, 25\), model \(32, 24\)"):
        PaliGemmaForConditionalGeneration.from_pretrained(path)


def test_real_config_json_is_read():
    """paligemma-3b-pt-224's config.json (its top-level vocab_size is the tokenizer's, not the table's)."""
    from paligemma import PaliGemmaConfig

    real = {
        "architectures": ["PaliGemmaForConditionalGeneration"], "bos_token_id": 2, "eos_token_id": 1,
        "hidden_size": 2048, "ignore_index": -100, "image_token_index": 257152, "model_type": "paligemma",
        "pad_token_id": 0, "projection_dim": 2048,
        "text_config": {"hidden_size": 2048, "intermediate_size": 16384, "model_type": "gemma",
                        "num_attention_heads": 8, "num_hidden_layers": 18, "num_image_tokens": 256,
                        "num_key_value_heads": 1, "torch_dtype": "float32", "vocab_size": 257216},
        "torch_dtype": "float32", "transformers_version": "4.41.0.dev0",
        "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "model_type": "siglip_vision_model",
                          "num_attention_heads": 16, "num_hidden_layers": 27, "num_image_tokens": 256,
                          "patch_size": 14, "projection_dim": 2048, "projector_hidden_act": "gelu_fast",
                          "vision_use_head": False},
        "vocab_size": 257152,
    }
    config = PaliGemmaConfig.from_dict(real)
    assert config.text_config.vocab_size == 257216 and config.text_config.head_dim == 256
    assert config.num_image_tokens == 256 and config.image_token_index == 257152
    assert config == PaliGemmaConfig()  # our defaults are this checkpoint
    with pytest.raises(ValueError, match="projection_dim"):
        PaliGemmaConfig.from_dict({**real, "projection_dim": 1024})
