"""Configs of every Gemma generation: real config.json files, what is refused, real sizes, checkpoints both ways."""

import json
import math

import pytest
import torch

from conftest import TOL, hf_gemma_twin, make_causal_lm
from paligemma import (Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, GemmaConfig,
                       GemmaForCausalLM, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig)
from paligemma.real_configs import gemma3_270m_config, paligemma2_config

transformers = pytest.importorskip("transformers")

GEMMA2_2B = {  # the keys of google/gemma-2-2b's config.json (an older file: rope_theta, both activation keys)
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
    "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
    "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 8,
    "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "torch_dtype": "float32",
    "vocab_size": 256000,
}
GEMMA3_270M = {  # what transformers 5 writes for Gemma 3 270M (per-layer-type RoPE, the pattern as a private key)
    "_sliding_window_pattern": 6, "architectures": ["Gemma3ForCausalLM"], "attention_bias": False,
    "attention_dropout": 0.0, "attn_logit_softcapping": None, "bos_token_id": 2, "eos_token_id": 1,
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 640,
    "intermediate_size": 2048, "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 18,
    "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
    "rope_parameters": {"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
                        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
    "sliding_window": 512, "tie_word_embeddings": True, "unk_token_id": 3, "use_bidirectional_attention": False,
    "vocab_size": 262144,
}
GEMMA3_4B = {  # a multimodal Gemma 3 file in the older format: the decoder is its text_config
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "mm_tokens_per_image": 256,
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                    "sliding_window_pattern": 6, "query_pre_attn_scalar": 256, "num_attention_heads": 8,
                    "num_key_value_heads": 4, "head_dim": 256},
    "vision_config": {"hidden_size": 1152, "image_size": 896, "model_type": "siglip_vision_model"},
}


def test_model_type_picks_the_generation():
    assert type(GemmaConfig.from_dict({"model_type": "gemma"})) is GemmaConfig
    assert type(GemmaConfig.from_dict(GEMMA2_2B)) is Gemma2Config
    assert type(GemmaConfig.from_dict(GEMMA3_270M)) is Gemma3TextConfig
    assert type(GemmaConfig.from_dict(GEMMA3_4B)) is Gemma3TextConfig
    assert GemmaConfig.from_dict(GEMMA2_2B) == Gemma2Config()  # our defaults are transformers' (the 2B model)


@pytest.mark.parametrize("name, d, hf_class", [("gemma-2-2b", GEMMA2_2B, "Gemma2Config"),
                                               ("gemma-3-270m", GEMMA3_270M, "Gemma3TextConfig"),
                                               ("gemma-3-4b", GEMMA3_4B["text_config"], "Gemma3TextConfig")])
def test_real_files_read_as_transformers_reads_them(name, d, hf_class):
    ours = GemmaConfig.from_dict(d)
    theirs = getattr(transformers, hf_class)(**{k: v for k, v in d.items() if k != "architectures"})
    assert ours.layer_types == theirs.layer_types
    assert (ours.sliding_window, ours.query_pre_attn_scalar, ours.head_dim) == \
        (theirs.sliding_window, theirs.query_pre_attn_scalar, theirs.head_dim)
    assert (ours.attn_logit_softcapping, ours.final_logit_softcapping) == \
        (theirs.attn_logit_softcapping, theirs.final_logit_softcapping)
    rope = theirs.rope_parameters
    if "full_attention" in rope:  # Gemma 3: one RoPE per layer type
        assert ours.rope_theta == rope["full_attention"]["rope_theta"]
        assert ours.rope_local_base_freq == rope["sliding_attention"]["rope_theta"]
        assert ours.rope_scaling_factor == rope["full_attention"].get("factor", 1.0)
    else:
        assert ours.rope_theta == rope["rope_theta"]
    back = getattr(transformers, hf_class)(**ours.to_hf_dict())  # what we write, transformers reads the same
    assert back.layer_types == theirs.layer_types and back.rope_parameters == theirs.rope_parameters


def test_paligemma2_hub_config_is_read():
    d = paligemma2_config("3b", 448).to_hf_dict()
    d["text_config"] = {k: d["text_config"][k] for k in (  # the hub file's text_config is short
        "hidden_activation", "hidden_size", "intermediate_size", "model_type", "num_attention_heads",
        "num_hidden_layers", "num_key_value_heads", "query_pre_attn_scalar", "sliding_window", "vocab_size")}
    d["text_config"]["use_bidirectional_attention"] = True  # transformers 5 adds it to PaliGemma text configs
    config = PaliGemmaConfig.from_dict(d)
    assert isinstance(config.text_config, Gemma2Config) and config.num_image_tokens == 1024
    assert config.text_config.attn_logit_softcapping == 50.0 and config.text_config.layer_types[:2] == [
        "sliding_attention", "full_attention"]


@pytest.mark.parametrize("d, words", [
    ({"model_type": "gemma", "attn_logit_softcapping": 50.0}, "attn_logit_softcapping.*Gemma 2"),
    ({"model_type": "gemma", "sliding_window": 4096}, "sliding_window"),
    ({**GEMMA2_2B, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "RoPE type 'linear' is not implemented"),
    ({**GEMMA2_2B, "sliding_window_pattern": 6}, "sliding_window_pattern 6 contradicts"),
    ({**GEMMA2_2B, "rope_local_base_freq": 10000.0}, "rope_local_base_freq"),
    ({**GEMMA3_270M, "rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 4.0},
                                         "sliding_attention": {"rope_type": "default"}}}, "'yarn'"),
    ({**GEMMA3_270M, "use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ({**GEMMA3_270M, "attn_logit_softcapping": 50.0}, "attn_logit_softcapping.*QK-norm"),
    ({"model_type": "llama"}, "'llama' is not a Gemma decoder"),
    ({"model_type": "gemma3n_text"}, "'gemma3n_text' is not a Gemma decoder"),
])
def test_unsupported_maths_is_refused_by_name(d, words):
    with pytest.raises(ValueError, match=words):
        GemmaConfig.from_dict(d)


@pytest.mark.parametrize("cls, field, value, words", [
    (GemmaConfig, "rms_norm_eps", -1e-6, "rms_norm_eps must be a finite number > 0"),
    (GemmaConfig, "rms_norm_eps", math.inf, "rms_norm_eps"),
    (GemmaConfig, "rope_theta", math.inf, "rope_theta"),
    (GemmaConfig, "rope_theta", "10000", "rope_theta"),
    (GemmaConfig, "attention_dropout", 1.5, "attention_dropout"),
    (GemmaConfig, "attention_dropout", math.nan, "attention_dropout"),
    (GemmaConfig, "attention_bias", "no", "attention_bias must be true or false"),
    (GemmaConfig, "pad_token_id", 257216, "pad_token_id must be a token id in"),
    (GemmaConfig, "bos_token_id", -2, "bos_token_id"),
    (GemmaConfig, "eos_token_id", [1, "x"], "eos_token_id"),
    (GemmaConfig, "vocab_size", True, "vocab_size must be a positive integer"),
    (GemmaConfig, "max_position_embeddings", 0, "max_position_embeddings"),
    (Gemma2Config, "sliding_window", 0, "sliding_window must be a positive integer"),
    (Gemma2Config, "query_pre_attn_scalar", -256, "query_pre_attn_scalar"),
    (Gemma2Config, "attn_logit_softcapping", math.inf, "attn_logit_softcapping"),
    (Gemma2Config, "final_logit_softcapping", -30.0, "final_logit_softcapping"),
    (Gemma2Config, "layer_types", ["full_attention"], "layer_types must be a list of 26 entries"),
    (Gemma2Config, "layer_types", ["local"] * 26, "layer_types"),
    (Gemma3TextConfig, "sliding_window_pattern", 0, "sliding_window_pattern"),
    (Gemma3TextConfig, "rope_local_base_freq", math.inf, "rope_local_base_freq"),
    (Gemma3TextConfig, "rope_scaling", {"rope_type": "linear", "factor": 0}, "positive, finite 'factor'"),
    (SiglipVisionConfig, "layer_norm_eps", 0.0, "layer_norm_eps"),
    (SiglipVisionConfig, "attention_dropout", -0.1, "attention_dropout"),
    (SiglipVisionConfig, "patch_size", 300, "larger than image_size"),
])
def test_bad_values_name_the_field(cls, field, value, words):
    with pytest.raises(ValueError, match=words):
        cls(**{field: value})


def test_a_gemma1_class_refuses_a_later_config():
    with pytest.raises(TypeError, match="for_config"):
        GemmaForCausalLM(Gemma2Config(num_hidden_layers=2))
    assert type(GemmaForCausalLM.for_config(Gemma3TextConfig(num_hidden_layers=2, vocab_size=64, hidden_size=32,
                                                             intermediate_size=32))) is Gemma3ForCausalLM


REAL_SIZES = [("paligemma2", size, px) for size in ("3b", "10b", "28b") for px in (224, 448, 896)]


@pytest.mark.parametrize("kind, size, px", REAL_SIZES + [("gemma3", "270m", None)])
def test_real_sizes_have_transformers_parameter_names_and_counts(kind, size, px):
    with torch.device("meta"):
        if kind == "paligemma2":
            config = paligemma2_config(size, px)
            ours = PaliGemmaForConditionalGeneration(config)
            theirs = transformers.PaliGemmaForConditionalGeneration(transformers.PaliGemmaConfig(**config.to_hf_dict()))
        else:
            config = gemma3_270m_config()
            ours = GemmaForCausalLM.for_config(config)
            theirs = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**config.to_hf_dict()))
    from conftest import ours_to_hf_paligemma_key
    rename = ours_to_hf_paligemma_key if kind == "paligemma2" else (lambda k: k)
    ours_shapes = {rename(k): tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_published_parameter_counts():
    """PaliGemma 2 3B-224 has 3.03 B parameters, Gemma 3 270M 268 M (counted by hand here, per part)."""
    with torch.device("meta"):
        ours = GemmaForCausalLM.for_config(gemma3_270m_config())
    embed = 262144 * 640
    attention = 640 * 256 * (4 + 1 + 1) + 4 * 256 * 640 + 2 * 256  # q, k, v, o projections + q_norm, k_norm
    layer = attention + 3 * 640 * 2048 + 4 * 640  # gated MLP + 4 norms
    assert sum(p.numel() for p in ours.parameters()) == embed + 18 * layer + 640 == 268_098_176


@pytest.mark.parametrize("generation", ["gemma2", "gemma3"])
def test_checkpoints_both_ways_with_transformers(generation, tmp_path):
    model = make_causal_lm(generation, seed=21)
    twin = hf_gemma_twin(model)
    ids = torch.randint(3, 97, (1, 15), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = twin(input_ids=ids).logits
    twin.save_pretrained(tmp_path / "theirs")
    loaded = GemmaForCausalLM.from_pretrained(tmp_path / "theirs")
    assert type(loaded) is type(model) and loaded.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids)["logits"], expected, **TOL)
    model.save_pretrained(tmp_path / "ours", max_shard_size=20_000)
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == model.config.model_type
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager")
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, expected, **TOL)


def test_a_later_generation_class_refuses_an_earlier_checkpoint(tmp_path):
    make_causal_lm("gemma", seed=22).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a 'gemma' model"):
        Gemma2ForCausalLM.from_pretrained(tmp_path)
