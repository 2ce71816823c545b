"""Loading and saving Gemma checkpoints in the Hugging Face layout, both ways with transformers."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TOL, hf_gemma_twin, make_gemma
from paligemma import GemmaForCausalLM
from paligemma.weights import CheckpointError

transformers = pytest.importorskip("transformers")
IDS = torch.tensor([[5, 17, 3, 88, 42, 9, 60]])


def logits(model):
    with torch.no_grad():
        out = model(input_ids=IDS)
    return out["logits"] if isinstance(out, dict) else out.logits


@pytest.fixture
def hf_saved(tmp_path):
    """A checkpoint folder written by transformers itself, and the model that wrote it."""
    twin = hf_gemma_twin(make_gemma(seed=11, num_key_value_heads=1))
    twin.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", twin


def test_loads_checkpoint_saved_by_transformers(hf_saved):
    folder, twin = hf_saved
    ours = GemmaForCausalLM.from_pretrained(folder)
    assert ours.config.num_key_value_heads == 1
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    torch.testing.assert_close(logits(ours), logits(twin), **TOL)


def test_loads_sharded_checkpoint_saved_by_transformers(tmp_path):
    twin = hf_gemma_twin(make_gemma(seed=12))
    twin.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    torch.testing.assert_close(logits(GemmaForCausalLM.from_pretrained(tmp_path)), logits(twin), **TOL)


@pytest.mark.parametrize("max_shard_size", [None, 10_000])
def test_our_checkpoint_loads_in_transformers(tmp_path, max_shard_size):
    ours = make_gemma(seed=13)
    ours.save_pretrained(tmp_path, max_shard_size=max_shard_size)
    assert (tmp_path / "model.safetensors.index.json").exists() == (max_shard_size is not None)
    theirs = transformers.GemmaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    torch.testing.assert_close(logits(theirs), logits(ours), **TOL)
    torch.testing.assert_close(logits(GemmaForCausalLM.from_pretrained(tmp_path)), logits(ours), **TOL)


def test_dtype_and_tied_lm_head_in_file(tmp_path, hf_saved):
    folder, twin = hf_saved
    state = load_file(folder / "model.safetensors")
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()  # some files store the tied copy
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    ours = GemmaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert ours.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    state["lm_head.weight"] += 1
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        GemmaForCausalLM.from_pretrained(folder)


def _rewrite(folder, edit):
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def test_missing_key_is_named(hf_saved):
    folder, _ = hf_saved
    _rewrite(folder, lambda s: s.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys: model\.layers\.1\.mlp\.down_proj\.weight"):
        GemmaForCausalLM.from_pretrained(folder)


def test_unexpected_key_is_named(hf_saved):
    folder, _ = hf_saved
    _rewrite(folder, lambda s: s.update({"model.layers.9.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys: model\.layers\.9\.extra\.weight"):
        GemmaForCausalLM.from_pretrained(folder)


def test_wrong_shape_is_named(hf_saved):
    folder, _ = hf_saved
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 64  # the file holds 48-wide MLPs
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mlp\.gate_proj\.weight: checkpoint \(48, 32\), model \(64, 32\)"):
        GemmaForCausalLM.from_pretrained(folder)
