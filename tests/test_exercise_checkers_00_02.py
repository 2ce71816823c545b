"""The checkers of notebooks 00-02 accept the package's own code and name the usual mistakes in plain words."""

import pytest
import torch

from paligemma import (GemmaRMSNorm, GemmaRotaryEmbedding, PaliGemmaForConditionalGeneration, apply_rotary_pos_emb,
                       rotate_half)
from paligemma.exercises import (check_interleaved_to_half_split, check_num_image_tokens, check_parameter_count,
                                 check_partial_rope, check_rms_norm)
from exercise_helpers import assert_rejected, not_written


def test_checkers_are_exported_from_their_topic_modules():
    from paligemma.exercises import overview, rmsnorm, rope
    assert overview.__all__ == ["check_num_image_tokens", "check_parameter_count"]
    assert rmsnorm.__all__ == ["check_rms_norm"]
    assert rope.__all__ == ["check_partial_rope", "check_interleaved_to_half_split"]


@pytest.mark.parametrize("checker", [check_num_image_tokens, check_parameter_count, check_rms_norm,
                                     check_partial_rope, check_interleaved_to_half_split])
def test_a_stub_is_reported_as_not_implemented(checker):
    assert_rejected(checker, not_written, "not_written is not implemented yet")


# ---------------------------------------------------------------- image tokens (notebook 00)

def conv_tokens(height, width, patch_size):
    """The count read off a real stride-p convolution's output."""
    conv = torch.nn.Conv2d(3, 1, patch_size, stride=patch_size)
    return conv(torch.zeros(1, 3, height, width)).shape[-2:].numel()


def test_num_image_tokens_accepts_the_package(capsys):
    check_num_image_tokens(conv_tokens)
    check_num_image_tokens(lambda h, w, p: torch.tensor((h // p) * (w // p)))
    assert capsys.readouterr().out.count("Correct: num_image_tokens") == 2


@pytest.mark.parametrize("wrong, phrases", [
    (lambda h, w, p: -(-h // p) * -(-w // p), ["height=230", "returned 374, expected 336", "leftover pixels",
                                                "floor division"]),
    (lambda h, w, p: h * w // (p * p), ["returned 352", "area"]),
    (lambda h, w, p: (h // p) ** 2, ["returned 256, expected 336", "height for both sides"]),
    (lambda h, w, p: (h // p) * (w // p) + 1, ["returned 257", "no class token"]),
    (lambda h, w, p: 3 * (h // p) * (w // p), ["colour channels"]),
    (lambda h, w, p: h / p * (w / p), ["256.0, a float", "//"]),
    (lambda h, w, p: round(h / p) * round(w / p), ["height=30", "returned 12, expected 8", "rounded"]),
    (lambda h, w, p: str((h // p) * (w // p)), ["should return an int, got str"]),
    (lambda h, w, p: 256, ["height=448", "returned 256, expected 1024"]),
])
def test_num_image_tokens_names_the_mistake(wrong, phrases):
    assert_rejected(check_num_image_tokens, wrong, *phrases)


def test_a_crash_in_the_learners_code_is_one_line_naming_it():
    def crashes(height, width, patch_size):
        grid = torch.zeros(height // patch_size)
        return int((grid + torch.zeros(width // patch_size + 1)).sum())  # shapes 32 and 33 do not broadcast

    assert_rejected(check_num_image_tokens, lambda h, w, p: 256 if h == 224 else crashes(h, w, p),
                    "raised RuntimeError: The size of tensor a (32) must match", "of your code",
                    "(grid + torch.zeros(width // patch_size + 1)).sum()")


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


# ---------------------------------------------------------------- partial RoPE and checkpoint conversion (notebook 02)

def package_rope(x, position_ids, base):
    cos, sin = GemmaRotaryEmbedding(x.shape[-1], base)(x, position_ids)
    return apply_rotary_pos_emb(x, x, cos, sin)[0]


def partial_rope(x, position_ids, rotary_dim, base, kind="right"):
    """Partial RoPE from the package's pieces; `kind` makes one of the usual mistakes."""
    d = x.shape[-1]
    if kind == "whole":
        return package_rope(x, position_ids, base)
    if kind == "last":
        return torch.cat((x[..., :d - rotary_dim], package_rope(x[..., d - rotary_dim:], position_ids, base)), -1)
    if kind == "only":
        return package_rope(x[..., :rotary_dim], position_ids, base)
    rot = x[..., :rotary_dim]
    if kind == "full-width frequencies":
        inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2).float() / d)
        angles = position_ids[:, None, :, None].float() * inv_freq
        angles = torch.cat((angles, angles), -1)
        turned = rot * angles.cos() + rotate_half(rot) * angles.sin()
    elif kind == "cut tables":
        cos, sin = GemmaRotaryEmbedding(d, base)(x, position_ids)
        turned = rot * cos[:, None, :, :rotary_dim] + rotate_half(rot) * sin[:, None, :, :rotary_dim]
    else:
        turned = package_rope(rot, position_ids, base)
    return torch.cat((turned, x[..., rotary_dim:] * (2 if kind == "rest changed" else 1)), -1)


def test_partial_rope_accepts_the_package(capsys):
    check_partial_rope(partial_rope)
    assert capsys.readouterr().out.count("Correct: partial_rope") == 1


@pytest.mark.parametrize("kind, phrases", [
    ("whole", ["rotated the whole head"]),
    ("last", ["rotated the last rotary_dim channels"]),
    ("only", ["shape (2, 3, 5, 8), expected (2, 3, 5, 16)", "concatenate the unrotated rest"]),
    ("full-width frequencies", ["base^(-2i / rotary_dim)", "too slowly"]),
    ("cut tables", ["cut the head_dim-wide cos/sin tables"]),
    ("rest changed", ["pass through unchanged"]),
])
def test_partial_rope_names_the_mistake(kind, phrases):
    assert_rejected(check_partial_rope, lambda x, p, r, b: partial_rope(x, p, r, b, kind), *phrases)


def to_half_split(weight, num_heads, head_dim):
    order = torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))
    return weight.view(num_heads, head_dim, -1)[:, order].reshape(weight.shape)


def test_interleaved_to_half_split_accepts_a_per_head_permutation(capsys):
    check_interleaved_to_half_split(to_half_split)
    assert capsys.readouterr().out.count("Correct: interleaved_to_half_split") == 1


def forward_permutation(weight, num_heads, head_dim):
    order = torch.stack((torch.arange(head_dim // 2), torch.arange(head_dim // 2, head_dim)), -1).flatten()
    return weight.view(num_heads, head_dim, -1)[:, order].reshape(weight.shape)


@pytest.mark.parametrize("wrong, phrases", [
    (forward_permutation, ["the other way", "argsort"]),
    (lambda w, h, d: to_half_split(w, 1, h * d), ["as if it were one head"]),
    (lambda w, h, d: to_half_split(w.T, 1, w.shape[1]).T, ["columns"]),
    (lambda w, h, d: w.clone(), ["original order"]),
    (lambda w, h, d: w.T, ["(20, 24)", "do not transpose"]),
    (lambda w, h, d: to_half_split(w, h, d).flip(0), ["scores off by", "old channel 2i"]),
])
def test_interleaved_to_half_split_names_the_mistake(wrong, phrases):
    assert_rejected(check_interleaved_to_half_split, wrong, *phrases)
