"""Shared helpers: tiny configs, and a transformers twin of one of our models holding the same weights."""

from __future__ import annotations

import contextlib
import threading
from functools import partial

import pytest
import torch

from paligemma import GemmaConfig, GemmaForCausalLM
from paligemma.modeling_gemma import init_weights

TOL = dict(atol=1e-5, rtol=1e-5)

# pytest runs two workers (pyproject: -n 2) on machines with few cores: one thread each avoids oversubscription,
# and the tiny models here are fastest on one thread anyway.
torch.set_num_threads(1)


def tiny_gemma_config(**overrides) -> GemmaConfig:
    fields = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=128, rope_theta=10000.0)
    fields.update(overrides)
    return GemmaConfig(**fields)


def tiny_config(generation: str = "gemma", **overrides) -> GemmaConfig:
    """A tiny config of one generation: "gemma", "gemma2" or "gemma3" (windows shorter than test prompts)."""
    from paligemma import Gemma2Config, Gemma3TextConfig

    if generation == "gemma":
        return tiny_gemma_config(**overrides)
    fields = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=128, sliding_window=4,
                  query_pre_attn_scalar=12)
    if generation == "gemma2":
        fields.update(rope_theta=10000.0)
        cls = Gemma2Config
    else:  # distinct RoPE bases, so that mixing up the local and global one shows
        fields.update(rope_theta=1000.0, rope_local_base_freq=50.0, sliding_window_pattern=3)
        cls = Gemma3TextConfig
    fields.update(overrides)
    return cls(**fields)


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Norm weights start at zero (scale 1); give them random values so parity tests exercise them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


# Weights far larger than Gemma's N(0, 0.02) initialisation: a model that small-weighted only repeats
# its last token (the tied lm_head scores the input embedding highest), which makes decoding tests trivial.
TEST_INIT_STD = 0.2


def make_gemma(seed: int = 0, std: float = TEST_INIT_STD, **overrides) -> GemmaForCausalLM:
    return make_causal_lm("gemma", seed, std, **overrides)


def make_causal_lm(generation: str = "gemma", seed: int = 0, std: float = TEST_INIT_STD,
                   embed_std: float | None = None, **overrides) -> GemmaForCausalLM:
    """A tiny random model of one generation. `embed_std` well below `std` (e.g. 0.02 vs 0.3) makes greedy
    decoding wander over many tokens instead of repeating the input (the tied lm_head favours it)."""
    torch.manual_seed(seed)
    model = GemmaForCausalLM.for_config(tiny_config(generation, **overrides)).eval()
    model.apply(partial(init_weights, std=std))
    randomize_norms(model, seed)
    if embed_std is not None:
        with torch.no_grad():
            model.model.embed_tokens.weight.normal_(0, embed_std, generator=torch.Generator().manual_seed(seed))
    return model


HF_CAUSAL_LM = {"gemma": ("GemmaConfig", "GemmaForCausalLM"), "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
                "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM")}


def hf_gemma_twin(model: GemmaForCausalLM, attn_implementation: str = "eager"):
    """transformers' causal LM of the model's generation, with our model's config and weights."""
    transformers = pytest.importorskip("transformers")
    config_name, model_name = HF_CAUSAL_LM[model.config.model_type]
    hf_config = getattr(transformers, config_name)(**model.config.to_hf_dict(), attn_implementation=attn_implementation)
    twin = getattr(transformers, model_name)(hf_config).eval()
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    return twin


@pytest.fixture
def tiny_model() -> GemmaForCausalLM:
    return make_gemma()


def tiny_paligemma_config(image_token_index: int = 96, generation: str = "gemma", **text_overrides):
    from paligemma import PaliGemmaConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                                image_size=16, patch_size=4)  # 16 / 4 = 4 x 4 = 16 image tokens
    text = tiny_config(generation, **text_overrides)
    return PaliGemmaConfig(text_config=text, vision_config=vision, image_token_index=image_token_index,
                           projection_dim=text.hidden_size)


def make_paligemma(seed: int = 0, generation: str = "gemma", **text_overrides):
    from paligemma import PaliGemmaForConditionalGeneration

    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(tiny_paligemma_config(generation=generation, **text_overrides)).eval()
    model.apply(partial(init_weights, std=TEST_INIT_STD))
    randomize_norms(model, seed)
    with torch.no_grad():  # LayerNorms start at (1, 0): perturb them too
        for name, param in model.named_parameters():
            if "layer_norm" in name or "post_layernorm" in name:
                param.add_(torch.randn(param.shape) * 0.3)
    return model


def ours_to_hf_paligemma_key(key: str) -> str:
    if key == "language_model.lm_head.weight":
        return "lm_head.weight"
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model."):]
    return "model." + key


def hf_paligemma_twin(model, attn_implementation: str = "eager"):
    """transformers.PaliGemmaForConditionalGeneration with our model's config and weights."""
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.PaliGemmaConfig(**model.config.to_hf_dict())
    hf_config._attn_implementation = attn_implementation
    hf_config.text_config._attn_implementation = attn_implementation
    hf_config.vision_config._attn_implementation = attn_implementation
    twin = transformers.PaliGemmaForConditionalGeneration(hf_config).eval()
    state = {ours_to_hf_paligemma_key(k): v for k, v in model.state_dict().items()}
    missing, unexpected = twin.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    return twin


def random_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def tiny_tokenizer(vocab_size: int = 97, image_token_index: int = 96):
    """A word-level tokenizer in the real layout: <pad> 0, <eos> 1, <bos> 2, "\\n", words, <image>."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<eos>", "<bos>", "\n", "<unk>", "caption", "en", "a", "red", "blue", "circle", "square"]
    words += [f"w{i}" for i in range(vocab_size - len(words) - 1)]
    vocab = {word: i for i, word in enumerate(words)}
    vocab["<image>"] = image_token_index
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(" +"), behavior="removed"),
        pre_tokenizers.Split("\n", behavior="isolated"),
    ])
    tokenizer.add_special_tokens(["<pad>", "<eos>", "<bos>", "<image>"])
    return tokenizer


@contextlib.contextmanager
def fifo_guard(path, seconds: float = 5.0):
    """If the code under test opens the FIFO `path` for reading, open its other end after a few seconds, so a
    test of "FIFOs are refused" fails instead of hanging forever."""
    done = threading.Event()

    def unblock():
        if not done.wait(seconds):
            with open(path, "wb"):
                pass
    threading.Thread(target=unblock, daemon=True).start()
    try:
        yield
    finally:
        done.set()
