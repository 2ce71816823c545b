"""GGUF -> Hugging Face for Gemma, Gemma 2 and Gemma 3 on tiny files the tests write: the config dict, the
tensor names and values (against transformers' own GGUF loader where it reads the architecture), and the
strict errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gguf_helpers import TINY, V, Q, library_dequantize, tiny_gemma_file, tiny_gemma_metadata, tiny_gemma_tensors
from gguf_helpers import write_gguf
from paligemma.gguf_file import GGUFError, GGUFFile
from paligemma.gguf_gemma import gemma_config, read_gemma_gguf

LAYERS = {"gemma": 2, "gemma2": 2, "gemma3": 6}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_gemma")
    files = {}
    for arch, layers in LAYERS.items():
        (root / arch).mkdir()
        files[arch] = tiny_gemma_file(root / arch / "model.gguf", arch, layers)
    return files


def _metadata_only(arch: str, layers: int, **extra) -> GGUFFile:
    """A parsed file with this metadata and no tensors, for config rules that need many layers."""
    metadata = {key: value for key, (value, *_) in tiny_gemma_metadata(arch, layers, **extra).items()}
    metadata["general.architecture"] = arch
    return GGUFFile(Path("meta.gguf"), 3, metadata, {}, 32, 0, 0)


def test_gemma_config(tiny_files):
    config, _ = read_gemma_gguf(tiny_files["gemma"])
    assert config == {
        "architectures": ["GemmaForCausalLM"], "model_type": "gemma", "vocab_size": 64, "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 128, "max_position_embeddings": 128, "rms_norm_eps": float(np.float32(1e-6)),
        "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False, "tie_word_embeddings": True,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}  # no freq_base in Gemma 1 files


def test_gemma2_config(tiny_files):
    config, _ = read_gemma_gguf(tiny_files["gemma2"])
    assert config["model_type"] == "gemma2" and config["architectures"] == ["Gemma2ForCausalLM"]
    assert (config["attn_logit_softcapping"], config["final_logit_softcapping"]) == (50.0, 30.0)
    assert config["sliding_window"] == 16 and config["layer_types"] == ["sliding_attention", "full_attention"]
    assert config["query_pre_attn_scalar"] == 128  # head_dim, as llama.cpp scales (transformers leaves 256)
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}


def test_gemma3_config(tiny_files):
    config, _ = read_gemma_gguf(tiny_files["gemma3"])
    assert config["model_type"] == "gemma3_text" and config["architectures"] == ["Gemma3ForCausalLM"]
    assert config["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    assert config["rope_parameters"] == {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    assert config["sliding_window"] == 16 and config["final_logit_softcapping"] is None
    assert config["attn_logit_softcapping"] is None and config["query_pre_attn_scalar"] == 128


@pytest.mark.parametrize("arch, layers, scalar", [("gemma2", 46, 4608 // 32), ("gemma3", 62, 5376 // 32),
                                                  ("gemma2", 42, 256), ("gemma3", 34, 256)])
def test_query_scale_of_the_27b_models(arch, layers, scalar):
    """llama.cpp: 1/sqrt(hidden / heads) for the 27B models (the only ones where it differs from head_dim)."""
    hidden = 4608 if arch == "gemma2" else 5376
    meta = _metadata_only(arch, layers, **{f"{arch}.embedding_length": (hidden, V.UINT32),
                                           f"{arch}.attention.head_count": (32, V.UINT32),
                                           f"{arch}.attention.head_count_kv": (16, V.UINT32),
                                           f"{arch}.attention.key_length": (256 if layers < 46 else 128, V.UINT32),
                                           f"{arch}.attention.value_length": (256 if layers < 46 else 128, V.UINT32)})
    assert gemma_config(meta)["query_pre_attn_scalar"] == scalar


def test_gemma3_linear_rope_scaling_applies_to_global_layers_only():
    meta = _metadata_only("gemma3", 6, **{"gemma3.rope.scaling.type": ("linear", V.STRING),
                                          "gemma3.rope.scaling.factor": (8.0, V.FLOAT32)})
    rope = gemma_config(meta)["rope_parameters"]
    assert rope["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
    assert rope["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}


def test_gemma3_without_a_window_is_all_global():
    config = gemma_config(_metadata_only("gemma3", 6, **{"gemma3.attention.sliding_window": None}))
    assert config["sliding_window"] is None and set(config["layer_types"]) == {"full_attention"}


def test_defaults_where_the_file_is_silent():
    silent = ["attention.key_length", "attention.value_length", "attention.head_count_kv",
              "attn_logit_softcapping", "final_logit_softcapping"]
    meta = _metadata_only("gemma2", 2, **{f"gemma2.{key}": None for key in silent})
    config = gemma_config(meta)
    assert config["head_dim"] == TINY["hidden"] // TINY["heads"] and config["num_key_value_heads"] == TINY["heads"]
    assert (config["attn_logit_softcapping"], config["final_logit_softcapping"]) == (50.0, 30.0)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_config_and_tensors_equal_transformers(tiny_files, arch):
    """transformers reads Gemma 2 and 3 GGUF files: same config values and the very same float32 tensors."""
    transformers = pytest.importorskip("transformers")
    folder, name = str(tiny_files[arch].parent), tiny_files[arch].name
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config, tensors = read_gemma_gguf(tiny_files[arch])
    hf_config = hf.config.to_dict()
    # query_pre_attn_scalar: transformers keeps its class default 256 whatever the head size (see above)
    differences = {k for k, v in config.items() if hf_config.get(k, "absent") != v}
    assert differences == {"architectures", "query_pre_attn_scalar"}, differences
    state = hf.state_dict()
    ours = dict(tensors)
    assert set(state) - set(ours) == {"lm_head.weight"}  # tied to embed_tokens in transformers' model
    for name, tensor in ours.items():
        assert torch.equal(tensor, state[name]), name


def test_gemma1_names_and_values(tiny_files):
    """Gemma 1 (no transformers GGUF support to compare with): names by llama.cpp's table, 1 + w undone."""
    config, tensors = read_gemma_gguf(tiny_files["gemma"])
    ours = dict(tensors)
    assert len(ours) == 2 + 9 * 2
    assert ours["model.layers.1.post_attention_layernorm.weight"].shape == (256,)  # ffn_norm: the pre-MLP norm
    stored = torch.from_numpy(library_dequantize(tiny_files["gemma"], "blk.1.ffn_norm.weight"))
    assert torch.equal(ours["model.layers.1.post_attention_layernorm.weight"], stored - 1)
    q = torch.from_numpy(library_dequantize(tiny_files["gemma"], "blk.0.attn_q.weight"))
    assert torch.equal(ours["model.layers.0.self_attn.q_proj.weight"], q)  # no Q/K permutation for Gemma
    assert "lm_head.weight" not in ours and config["tie_word_embeddings"]


def test_gemma3_q_and_k_norms_are_stored_as_one_plus_w(tiny_files):
    ours = dict(read_gemma_gguf(tiny_files["gemma3"])[1])
    stored = torch.from_numpy(library_dequantize(tiny_files["gemma3"], "blk.5.attn_k_norm.weight"))
    assert torch.equal(ours["model.layers.5.self_attn.k_norm.weight"], stored - 1)


def test_dtype_and_one_tensor_at_a_time(tiny_files):
    config, tensors = read_gemma_gguf(tiny_files["gemma3"], dtype=torch.bfloat16, device="cpu")
    name, first = next(tensors)
    assert name == "model.embed_tokens.weight" and first.dtype == torch.bfloat16 and first.shape == (64, 256)
    rest = dict(tensors)
    assert all(t.dtype == torch.bfloat16 for t in rest.values()) and len(rest) == 1 + 6 * 13


def test_an_untied_output_becomes_lm_head(tmp_path):
    path = tiny_gemma_file(tmp_path / "untied.gguf", "gemma2", tied=False)
    config, tensors = read_gemma_gguf(path)
    assert not config["tie_word_embeddings"] and dict(tensors)["lm_head.weight"].shape == (64, 256)


# ---- strict errors ---------------------------------------------------------------------------------------------

def test_not_a_gemma(tmp_path):
    path = tiny_gemma_file(tmp_path / "llama.gguf", "llama", metadata={})
    with pytest.raises(GGUFError, match=r"architecture 'llama' is not a Gemma; this loader reads gemma, gemma2, "
                                        r"gemma3"):
        read_gemma_gguf(path)


def test_missing_tensor_is_named(tmp_path):
    tensors = tiny_gemma_tensors("gemma3", 6)
    del tensors["blk.3.attn_q_norm.weight"]
    path = tiny_gemma_file(tmp_path / "missing.gguf", "gemma3", 6, tensors=tensors)
    with pytest.raises(GGUFError, match=r"not a valid gemma3 file: missing tensors: blk.3.attn_q_norm.weight$"):
        read_gemma_gguf(path)


def test_unexpected_tensor_is_named(tmp_path):
    tensors = tiny_gemma_tensors("gemma", 2)
    tensors["blk.0.attn_q_norm.weight"] = (np.ones(128), Q.F32)  # a Gemma 3 tensor in a Gemma 1 file
    path = tiny_gemma_file(tmp_path / "extra.gguf", "gemma", 2, tensors=tensors)
    with pytest.raises(GGUFError, match=r"unexpected tensors: blk.0.attn_q_norm.weight"):
        read_gemma_gguf(path)


def test_wrong_shape_is_named(tmp_path):
    tensors = tiny_gemma_tensors("gemma2", 2)
    tensors["blk.1.attn_k.weight"] = (np.zeros((256, 256)), Q.Q8_0)  # 2 KV heads' rows for a 1-KV-head config
    path = tiny_gemma_file(tmp_path / "shape.gguf", "gemma2", 2, tensors=tensors)
    with pytest.raises(GGUFError, match=r"shape mismatches: blk.1.attn_k.weight: file \(256, 256\), "
                                        r"config \(128, 256\)"):
        read_gemma_gguf(path)


def test_unsupported_type_is_named_before_anything_loads(tmp_path):
    tensors = tiny_gemma_tensors("gemma2", 2)
    tensors["blk.0.ffn_up.weight"] = (np.zeros((512, 256)), Q.Q4_1)
    path = tiny_gemma_file(tmp_path / "q41.gguf", "gemma2", 2, tensors=tensors)
    with pytest.raises(GGUFError, match=r"cannot dequantize: blk.0.ffn_up.weight \(Q4_1\)"):
        read_gemma_gguf(path)


def test_missing_metadata_key_is_named(tmp_path):
    path = tiny_gemma_file(tmp_path / "nokey.gguf", "gemma3", 6, metadata={"gemma3.block_count": None})
    with pytest.raises(GGUFError, match=r"metadata key 'gemma3.block_count' is missing"):
        read_gemma_gguf(path)


@pytest.mark.parametrize("key, value, message", [
    ("gemma.attention.head_count_kv", 3, "num_attention_heads 2 is not a multiple of num_key_value_heads 3"),
    ("gemma.embedding_length", 0, "hidden_size must be a positive integer, the metadata gives 0"),
    ("gemma.attention.value_length", 64, "value_length differs from key_length 128")])
def test_impossible_values_are_named(key, value, message):
    meta = _metadata_only("gemma", 2, **{key: (value, V.UINT32)})
    with pytest.raises(GGUFError, match=message):
        gemma_config(meta)


def test_per_layer_values_are_refused():
    meta = _metadata_only("gemma", 2, **{"gemma.feed_forward_length": ([512, 512], V.ARRAY, V.UINT32)})
    with pytest.raises(GGUFError, match=r"intermediate_size must be a positive integer, "
                                        r"the metadata gives \[512, 512\]"):
        gemma_config(meta)


def test_write_gguf_helper_builds_what_it_is_asked(tmp_path):
    """The helper itself: a file with exactly the tensors given (guards the tests above against a silent helper)."""
    values = np.arange(64).reshape(2, 32) / 7
    path = write_gguf(tmp_path / "h.gguf", "gemma", {}, {"a": (values, Q.F32)})
    assert np.array_equal(library_dequantize(path, "a"), values.astype(np.float32))


@pytest.mark.parametrize("key, value, message", [
    ("gemma2.attention.sliding_window", ("4096", V.STRING), "sliding_window must be a positive integer"),
    ("gemma2.final_logit_softcapping", ("30", V.STRING), "metadata 'final_logit_softcapping' must be a number")])
def test_values_of_the_wrong_type_are_named(key, value, message):
    with pytest.raises(GGUFError, match=message):
        gemma_config(_metadata_only("gemma2", 2, **{key: value}))
