"""Bad input gets a clear ValueError naming the problem, not a stack trace from deep inside torch."""

import json

import pytest
import torch

from conftest import tiny_gemma_config
from paligemma import GemmaConfig, GemmaForCausalLM, KVCache


@pytest.mark.parametrize("field, value, words", [
    ("num_key_value_heads", 3, "divisible by num_key_value_heads"),
    ("hidden_size", 0, "hidden_size must be a positive integer"),
    ("num_hidden_layers", -1, "num_hidden_layers"),
    ("head_dim", 7, "head_dim must be even"),
    ("rms_norm_eps", 0.0, "rms_norm_eps"),
    ("hidden_act", "relu", "hidden_act"),
    ("attn_implementation", "flash", "attn_implementation"),
    ("vocab_size", 2.5, "vocab_size"),
    ("tie_word_embeddings", False, "tie_word_embeddings"),
])
def test_bad_config_values(field, value, words):
    with pytest.raises(ValueError, match=words):
        tiny_gemma_config(**{field: value})


def test_bad_input_rank(tiny_model):
    with pytest.raises(ValueError, match=r"\(batch, seq_len\).*input_ids\[None\]"):
        tiny_model(input_ids=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integer token ids"):
        tiny_model(input_ids=torch.ones(1, 3))
    with pytest.raises(ValueError, match="inputs_embeds must have shape"):
        tiny_model(inputs_embeds=torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match="exactly one"):
        tiny_model()


@pytest.mark.parametrize("bad_id", [-1, 97, 10_000])
def test_token_ids_out_of_range(tiny_model, bad_id):
    with pytest.raises(ValueError, match=r"\[0, 97\)"):
        tiny_model(input_ids=torch.tensor([[1, bad_id, 2]]))


def test_sequence_longer_than_max_positions(tiny_model):
    with pytest.raises(ValueError, match="max_position_embeddings=128"):
        tiny_model(input_ids=torch.zeros(1, 129, dtype=torch.long))
    cache = KVCache()
    tiny_model(input_ids=torch.zeros(1, 128, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="128 cached"):
        tiny_model(input_ids=torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


def test_mismatched_attention_mask(tiny_model):
    with pytest.raises(ValueError, match=r"expected shape \(1, 4\)"):
        tiny_model(input_ids=torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3))
    cache = KVCache()
    tiny_model(input_ids=torch.zeros(1, 4, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="cached and new tokens"):  # mask of the new token only
        tiny_model(input_ids=torch.zeros(1, 1, dtype=torch.long), attention_mask=torch.ones(1, 1), kv_cache=cache)


def test_bad_position_ids(tiny_model):
    with pytest.raises(ValueError, match="position_ids must have shape"):
        tiny_model(input_ids=torch.zeros(2, 4, dtype=torch.long), position_ids=torch.arange(3)[None])


def test_config_from_dict_reads_real_files_and_ignores_unknown_keys(tmp_path):
    real = {  # the text_config of paligemma-3b-pt-224 plus keys we do not use
        "hidden_size": 2048, "intermediate_size": 16384, "model_type": "gemma", "num_attention_heads": 8,
        "num_hidden_layers": 18, "num_image_tokens": 256, "num_key_value_heads": 1, "torch_dtype": "float32",
        "vocab_size": 257216, "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0},
        "hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh",
    }
    config = GemmaConfig.from_dict(real)
    assert (config.hidden_size, config.num_key_value_heads, config.head_dim, config.rope_theta) == (2048, 1, 256, 5000.0)
    assert config.hidden_act == "gelu_pytorch_tanh"
    (tmp_path / "config.json").write_text(json.dumps(real))
    assert GemmaConfig.from_pretrained(tmp_path) == config
    with pytest.raises(ValueError, match="RoPE type .linear. is not implemented"):
        GemmaConfig.from_dict({**real, "rope_parameters": {"rope_type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="divisible"):
        GemmaConfig.from_dict({**real, "num_key_value_heads": 3})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GemmaConfig.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        GemmaConfig.from_pretrained(tmp_path / "empty")


def test_from_pretrained_of_folder_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GemmaForCausalLM.from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps(tiny_gemma_config().to_hf_dict()))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        GemmaForCausalLM.from_pretrained(tmp_path)
