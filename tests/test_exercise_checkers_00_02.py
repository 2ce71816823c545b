"""The checkers of notebooks 00-02 accept the package's own code and name the usual mistakes in plain words."""

import pytest
import torch

from paligemma import (GemmaRMSNorm, GemmaRotaryEmbedding, PaliGemmaForConditionalGeneration, SiglipVisionConfig,
                       apply_rotary_pos_emb, rotate_half)
from paligemma.exercises import (check_apply_rope, check_num_image_tokens, check_parameter_count,
                                 check_rms_norm, check_rotate_half)
from exercise_helpers import assert_rejected, not_written


def test_checkers_are_exported_from_their_topic_modules():
    from paligemma.exercises import overview, rmsnorm, rope
    assert overview.__all__ == ["check_num_image_tokens", "check_parameter_count"]
    assert rmsnorm.__all__ == ["check_rms_norm"]
    assert rope.__all__ == ["check_rotate_half", "check_apply_rope"]


@pytest.mark.parametrize("checker", [check_num_image_tokens, check_parameter_count, check_rms_norm,
                                     check_rotate_half, check_apply_rope])
def test_a_stub_is_reported_as_not_implemented(checker):
    assert_rejected(checker, not_written, "not_written is not implemented yet")


# ---------------------------------------------------------------- image tokens (notebook 00)

def test_num_image_tokens_accepts_the_package(capsys):
    check_num_image_tokens(lambda image_size, patch_size: SiglipVisionConfig(image_size=image_size,
                                                                             patch_size=patch_size).num_patches)
    check_num_image_tokens(lambda image_size, patch_size: torch.tensor((image_size // patch_size) ** 2))
    assert capsys.readouterr().out.count("Correct: num_image_tokens") == 2


@pytest.mark.parametrize("wrong, phrases", [
    (lambda s, p: s // p, ["returned 16, expected 256", "16 x 16 patches"]),
    (lambda s, p: s * s // p, ["returned 3584", "patch_size x patch_size pixels"]),
    (lambda s, p: (s // p) ** 2 + 1, ["returned 257", "no class token"]),
    (lambda s, p: 3 * (s // p) ** 2, ["colour channels"]),
    (lambda s, p: (s / p) ** 2, ["256.0, a float", "//"]),
    (lambda s, p: str((s // p) ** 2), ["should return an int, got str"]),
    (lambda s, p: 256, ["image_size=448", "returned 256, expected 1024"]),
])
def test_num_image_tokens_names_the_mistake(wrong, phrases):
    assert_rejected(check_num_image_tokens, wrong, *phrases)


# ---------------------------------------------------------------- parameter count (notebook 00)

def count_by_formula(config, lm_head=False, kv_heads=None, mlp_matrices=3, vision_biases=True):
    """Parameters from the config alone; the keyword arguments reproduce typical mistakes."""
    text, vision = config.text_config, config.vision_config
    d, head, layers = text.hidden_size, text.head_dim, text.num_hidden_layers
    kv = kv_heads or text.num_key_value_heads
    attention = d * head * (text.num_attention_heads * 2 + kv * 2)
    gemma = text.vocab_size * d * (2 if lm_head else 1) + layers * (attention + mlp_matrices * d
                                                                    * text.intermediate_size + 2 * d) + d
    dv, iv, p = vision.hidden_size, vision.intermediate_size, vision.patch_size
    bias = 1 if vision_biases else 0
    siglip_layer = 4 * (dv * dv + bias * dv) + dv * iv + bias * iv + iv * dv + bias * dv + 4 * dv
    siglip = 3 * p * p * dv + bias * dv + vision.num_patches * dv + vision.num_hidden_layers * siglip_layer + 2 * dv
    return gemma + siglip + dv * d + d


def count_the_package(config):
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_accepts_the_package_and_a_formula(capsys):
    check_parameter_count(count_the_package)
    check_parameter_count(count_by_formula)
    assert capsys.readouterr().out.count("Correct: parameter count") == 2


@pytest.mark.parametrize("wrong, phrases", [
    (lambda c: count_by_formula(c, lm_head=True), ["tiny config is 39,240", "off by +3,104", "tied to embed_tokens"]),
    (lambda c: count_by_formula(c, kv_heads=c.text_config.num_attention_heads), ["num_key_value_heads"]),
    (lambda c: count_by_formula(c, mlp_matrices=2), ["gated"]),
    (lambda c: count_by_formula(c, vision_biases=False), ["biases of SigLIP"]),
    (lambda c: count_by_formula(c) - c.vision_config.num_patches * c.vision_config.hidden_size,
     ["position embeddings"]),
    (lambda c: count_by_formula(c) + 7, ["off by +7", "module"]),
    (lambda c: count_by_formula(c) + (0 if c.text_config.vocab_size < 1000 else 1),
     ["real paligemma-3b-pt-224", "expected 2,923,466,480"]),
    (lambda c: "many", ["should be an int, got str"]),
])
def test_parameter_count_names_the_mistake(wrong, phrases):
    assert_rejected(check_parameter_count, wrong, *phrases)


# ---------------------------------------------------------------- RMSNorm (notebook 01)

def package_rms_norm(x, weight, eps):
    norm = GemmaRMSNorm(x.shape[-1], eps=eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


def rms_norm_by_division(x, weight, eps):
    x32 = x.float()
    return (x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * (1 + weight.float())).to(x.dtype)


def test_rms_norm_accepts_the_package_and_a_variant(capsys):
    check_rms_norm(package_rms_norm)
    check_rms_norm(rms_norm_by_division)
    assert capsys.readouterr().out.count("Correct: rms_norm") == 2


def rms(x, dim=-1):
    return x.pow(2).mean(dim, keepdim=True)


@pytest.mark.parametrize("wrong, phrases", [
    (lambda x, w, eps: (x.float() * torch.rsqrt(rms(x.float()) + eps) * w.float()).to(x.dtype),
     ["forgot the 1 + weight"]),
    (lambda x, w, eps: x * torch.rsqrt(rms(x, 1) + eps) * (1 + w), ["wrong axis", "time axis (dim 1)"]),
    (lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean() + eps) * (1 + w), ["wrong axis", "whole tensor"]),
    (lambda x, w, eps: torch.rsqrt(x.pow(2).mean(-1) + eps), ["shape (2, 5), expected (2, 5, 64)", "keepdim"]),
    (lambda x, w, eps: (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + eps)
     * (1 + w), ["subtracted the mean", "LayerNorm"]),
    (lambda x, w, eps: x / (rms(x).sqrt() + eps) * (1 + w), ["eps goes inside the square root"]),
    (lambda x, w, eps: x * torch.rsqrt(rms(x)) * (1 + w), ["eps is missing"]),
    (lambda x, w, eps: x / (rms(x) + eps) * (1 + w), ["forgot the square root"]),
    (lambda x, w, eps: x * torch.rsqrt(rms(x) + eps) * (1 + w), ["did not compute in float32"]),
    (lambda x, w, eps: (x.float() * torch.rsqrt(rms(x.float()) + eps)).to(x.dtype) * (1 + w),
     ["before the (1 + weight) scaling", "Llama"]),
    (lambda x, w, eps: x.float() * torch.rsqrt(rms(x.float()) + eps) * (1 + w.float()),
     ["returned float32, expected torch.bfloat16", "cast the result back"]),
])
def test_rms_norm_names_the_mistake(wrong, phrases):
    assert_rejected(check_rms_norm, wrong, *phrases)


def test_rms_norm_spots_bfloat16_arithmetic_written_differently():
    def bfloat16_by_division(x, weight, eps):
        return x / torch.sqrt(rms(x) + eps) * (1 + weight)

    assert_rejected(check_rms_norm, bfloat16_by_division, "did not compute in float32")


def test_rms_norm_must_not_change_its_input():
    def in_place(x, weight, eps):
        return x.mul_(torch.rsqrt(rms(x) + eps)).mul_(1 + weight)

    assert_rejected(check_rms_norm, in_place, "changed its input in place")


# ---------------------------------------------------------------- rotate_half and RoPE (notebook 02)

def test_rotate_half_accepts_the_package(capsys):
    check_rotate_half(rotate_half)
    check_rotate_half(lambda x: torch.cat((-x[..., x.shape[-1] // 2:], x[..., :x.shape[-1] // 2]), dim=-1))
    assert capsys.readouterr().out.count("Correct: rotate_half") == 2


def halves(x):
    return x.chunk(2, dim=-1)


@pytest.mark.parametrize("wrong, phrases", [
    (lambda x: torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2), ["interleaved", "i + d/2"]),
    (lambda x: torch.cat((halves(x)[1], -halves(x)[0]), dim=-1), ["minus sign is on the wrong half"]),
    (lambda x: torch.cat((halves(x)[1], halves(x)[0]), dim=-1), ["minus sign is missing"]),
    (lambda x: torch.cat((-x.chunk(2, dim=2)[1], x.chunk(2, dim=2)[0]), dim=2), ["time axis (dim 2)"]),
    (lambda x: -halves(x)[1], ["shape (2, 4, 6, 4)", "one half only"]),
    (lambda x: rotate_half(x) * 1.5, ["wrong values"]),
])
def test_rotate_half_names_the_mistake(wrong, phrases):
    assert_rejected(check_rotate_half, wrong, *phrases)


def package_rope(x, position_ids, theta):
    cos, sin = GemmaRotaryEmbedding(x.shape[-1], theta)(x, position_ids)
    return apply_rotary_pos_emb(x, x, cos, sin)[0]


def rope_variant(kind="right"):
    """A from-scratch RoPE in float32; `kind` makes one of the usual mistakes."""
    def rope(x, position_ids, theta):
        d = x.shape[-1]
        exponents = torch.arange(d // 2) / d if kind == "exponent" else torch.arange(0, d, 2) / d
        inv_freq = 1.0 / (10000.0 if kind == "theta" else theta) ** exponents.float()
        positions = position_ids.to(x.dtype if kind == "low precision" else torch.float32)
        angles = (positions[:, None, :, None] * inv_freq.to(positions.dtype)).float()  # (B, 1, T, d/2)
        if kind == "interleaved":
            angles = angles.repeat_interleave(2, dim=-1)
            turned = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
        else:
            angles = angles.repeat_interleave(2, dim=-1) if kind == "repeat" else torch.cat((angles, angles), -1)
            turned = rotate_half(x)
        sign = -1 if kind == "sign" else 1
        return (x.float() * angles.cos() + sign * turned.float() * angles.sin()).to(x.dtype)
    return rope


def test_rope_accepts_the_package_and_a_float32_variant(capsys):
    check_apply_rope(package_rope)
    check_apply_rope(rope_variant())
    assert capsys.readouterr().out.count("Correct: RoPE") == 2


@pytest.mark.parametrize("wrong, phrases", [
    (rope_variant("interleaved"), ["interleaved layout", "rotate_half"]),
    (rope_variant("repeat"), ["repeat_interleave", "torch.cat((angles, angles), dim=-1)"]),
    (rope_variant("sign"), ["wrong way"]),
    (rope_variant("exponent"), ["theta^(-i/d)"]),
    (rope_variant("theta"), ["theta=100", "theta argument is not used"]),
    (rope_variant("low precision"), ["bfloat16", "positions from [8000, 8100]", "angles in float32"]),
    (lambda x, p, theta: package_rope(x, torch.arange(x.shape[2])[None], theta), ["ignored position_ids"]),
    (lambda x, p, theta: package_rope(x, p, theta).float(), ["returned torch.float32", "input's dtype"]),
    (lambda x, p, theta: package_rope(x, p, theta).transpose(1, 2), ["shape (2, 5, 3, 16)"]),
])
def test_rope_names_the_mistake(wrong, phrases):
    assert_rejected(check_apply_rope, wrong, *phrases)
