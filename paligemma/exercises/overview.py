"""Checkers for notebook 00 (the overview): how many image tokens an image makes, and PaliGemma's parameter count."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from ..configuration import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from ..modeling_paligemma import PaliGemmaForConditionalGeneration
from .checking import ExerciseError, passed, run_candidate

__all__ = ["check_num_image_tokens", "check_parameter_count"]

# (height, width, patch_size): PaliGemma's three resolutions, then images whose sides are not multiples of the patch.
IMAGE_TOKEN_CASES = ((224, 224, 14), (448, 448, 14), (896, 896, 14), (230, 300, 14), (30, 20, 7))


def _token_mistakes(height: int, width: int, patch: int) -> dict[int, str]:
    """What the usual wrong counts give, with the diagnosis of each."""
    rows, columns = height // patch, width // patch
    ceil = -(-height // patch) * -(-width // patch)
    return {
        rows * columns + 1: "SigLIP in PaliGemma has no class token: every image token is one patch",
        3 * rows * columns: "the colour channels do not make extra tokens: each patch's 3 x p x p numbers become "
                            "one token",
        ceil: "you counted the partial patches at the right and bottom edges; a stride-p convolution only visits "
              "whole patches, so the leftover pixels are dropped: floor division, height // patch_size",
        height * width // (patch * patch): "you divided the image's area by a patch's area; that counts the leftover "
                                           "pixels as if they formed whole patches. Count whole patches per side, "
                                           "then multiply",
        round(height / patch) * round(width / patch): "you rounded to the nearest number of patches; the convolution "
                                                      "drops a partial patch however large it is: floor division //",
        rows * rows: "you used the height for both sides: the grid is (height // p) rows by (width // p) columns",
        columns * columns: "you used the width for both sides: the grid is (height // p) rows by (width // p) columns",
        rows + columns: "add the rows and columns and you get the border, not the grid: multiply them",
        height * width: "that is one token per pixel; a token is a whole patch_size x patch_size patch",
    }


def _conv_patches(height: int, width: int, patch: int) -> int:
    """How many positions SigLIP's patch embedding (a stride-p convolution) outputs, on meta tensors."""
    with torch.device("meta"):
        conv = torch.nn.Conv2d(3, 1, kernel_size=patch, stride=patch)
        return conv(torch.empty(1, 3, height, width)).shape[-2:].numel()


def check_num_image_tokens(num_image_tokens_fn: Callable) -> None:
    """`num_image_tokens_fn(height, width, patch_size)` -> int: the patches SigLIP's convolution makes of an image."""
    for height, width, patch_size in IMAGE_TOKEN_CASES:
        expected = _conv_patches(height, width, patch_size)
        got = run_candidate(num_image_tokens_fn, height, width, patch_size)
        call = f"num_image_tokens(height={height}, width={width}, patch_size={patch_size})"
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, float) and got == int(got):
            raise ExerciseError(f"{call} returned {got!r}, a float: a count is an int (use integer division //)")
        if not isinstance(got, numbers.Integral):
            raise ExerciseError(f"{call} should return an int, got {type(got).__name__}")
        if got == expected:
            continue
        hint = _token_mistakes(height, width, patch_size).get(
            got, "the convolution cuts a grid of (height // patch_size) x (width // patch_size) whole patches")
        raise ExerciseError(f"{call} returned {got}, expected {expected}: {hint}")
    passed("num_image_tokens", "SigLIP's patch convolution")


def _count(config: PaliGemmaConfig) -> int:
    """The package's answer: build the model without memory (meta device) and count its distinct parameters."""
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def _mistakes(config: PaliGemmaConfig) -> dict[str, int]:
    """How far off each usual counting mistake lands, in parameters (got - expected)."""
    text, vision = config.text_config, config.vision_config
    d, v, layers, head = text.hidden_size, text.vocab_size, text.num_hidden_layers, text.head_dim
    dv, iv, vision_layers, p = vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, vision.patch_size
    vision_biases = dv + vision_layers * (4 * dv + iv + dv)  # patch conv; q, k, v, out; fc1; fc2
    return {
        "you counted lm_head separately, but it is tied to embed_tokens: the same matrix, stored once": v * d,
        "you gave every query head its own key and value heads: Gemma's k_proj and v_proj have only "
        "num_key_value_heads heads": 2 * layers * d * (text.num_attention_heads - text.num_key_value_heads) * head,
        "you counted two matrices in each Gemma MLP; it is gated: gate_proj, up_proj and down_proj":
            -layers * d * text.intermediate_size,
        "you forgot the RMSNorm weights (two per decoder layer and a final one, hidden_size each)":
            -(2 * layers + 1) * d,
        "you forgot SigLIP's LayerNorms (weight and bias: two per layer and post_layernorm)":
            -(2 * vision_layers + 1) * 2 * dv,
        "you forgot the biases of SigLIP's linear layers and patch convolution (Gemma has none, SigLIP has them)":
            -vision_biases,
        "you forgot SigLIP's learned position embeddings (one hidden_size vector per patch)": -vision.num_patches * dv,
        "you forgot the projector's bias": -d,
        "you forgot the multi-modal projector (a Linear from the SigLIP width to the Gemma width, with bias)":
            -(dv * d + d),
        "you forgot the patch embedding (a Conv2d, 3 x patch x patch -> SigLIP width, with bias)":
            -(3 * p * p * dv + dv),
    }


def _configs() -> tuple[PaliGemmaConfig, ...]:
    small = PaliGemmaConfig(
        text_config=GemmaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=16),
        vision_config=SiglipVisionConfig(hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=16, patch_size=4),
        image_token_index=96, projection_dim=32)
    return small, PaliGemmaConfig()  # ... and the real paligemma-3b-pt-224


def check_parameter_count(count_fn: Callable) -> None:
    """`count_fn(config)` -> int: PaliGemma's number of parameters, computed from a `PaliGemmaConfig` alone."""
    for config in _configs():
        expected = _count(config)
        got = run_candidate(count_fn, config)
        size = "the real paligemma-3b-pt-224 config" if config.text_config.vocab_size == 257216 else "a tiny config"
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, float) and got == int(got):
            got = int(got)
        if not isinstance(got, numbers.Integral):
            raise ExerciseError(f"your count for {size} should be an int, got {type(got).__name__}")
        if got == expected:
            continue
        diagnoses = [message for message, delta in _mistakes(config).items() if delta and got - expected == delta]
        hint = diagnoses[0] if diagnoses else ("go through the modules one by one: SigLIP (patch embedding, position "
                                               "embeddings, layers, post_layernorm), the projector, Gemma (embedding, "
                                               "layers, final norm)")
        raise ExerciseError(f"your count for {size} is {got:,}, expected {expected:,} (off by {got - expected:+,}): "
                            f"{hint}")
    passed("parameter count")
