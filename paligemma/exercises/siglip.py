"""Checkers for notebook 06 (the SigLIP vision encoder): cutting an image into patches with reshape/permute."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..configuration import SiglipVisionConfig
from ..modeling_siglip import SiglipVisionEmbeddings
from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_patchify"]

# (batch, image_size, patch_size): several patches per side so a wrong patch order shows; PaliGemma's 14 px.
PATCHIFY_CASES = ((2, 8, 4), (1, 12, 4), (1, 28, 14))


def _patch_mistakes(pixels: torch.Tensor, patch: int) -> dict[str, torch.Tensor]:
    """What the usual wrong patchify functions return, with the diagnosis of each."""
    batch, channels, size, _ = pixels.shape
    grid = size // patch
    split = pixels.reshape(batch, channels, grid, patch, grid, patch)  # (B, C, h, p, w, p)
    merged = (batch, grid * grid, channels * patch * patch)
    return {
        "each patch is flattened channels-last (row, column, channel); the convolution's weight is flattened "
        "(channel, row, column), so put the channel axis first inside each patch: permute to "
        "(B, h, w, C, p, p) before the final reshape": split.permute(0, 2, 4, 3, 5, 1).reshape(merged),
        "the patches come out column by column; they must go row by row like text (left to right, then top "
        "to bottom): the grid-row axis h comes before the grid-column axis w": split.permute(0, 4, 2, 1, 3, 5)
        .reshape(merged),
        "a plain reshape mixes pixels of different patches: split H into (h, p) and W into (w, p), then permute "
        "so that the two grid axes come first and each patch's (C, p, p) pixels sit together":
            pixels.reshape(merged),
        "a reshape after moving the channels last still mixes pixels of different patches: split H into "
        "(h, p) and W into (w, p), then permute (B, C, h, p, w, p) -> (B, h, w, C, p, p)":
            pixels.permute(0, 2, 3, 1).reshape(merged),
    }


def check_patchify(patchify_fn: Callable) -> None:
    """`patchify_fn(pixel_values, patch_size)`: (B, C, H, W) -> (B, N, C * p * p), patches in row-major order."""
    generator = torch.Generator().manual_seed(0)
    for batch, size, patch in PATCHIFY_CASES:
        pixels = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
        original = pixels.clone()
        grid, per_patch = size // patch, 3 * patch * patch
        expected = F.unfold(pixels, kernel_size=patch, stride=patch).transpose(1, 2)  # (B, N, C*p*p)
        got = run_candidate(patchify_fn, pixels, patch)
        call = f"patchify(pixels of shape {tuple(pixels.shape)}, patch_size={patch})"
        hints = {
            (batch, per_patch, grid * grid): "one row per patch: transpose to (B, num_patches, C * p * p)",
            (batch, grid, grid, per_patch): "merge the two grid axes into one patch axis of h * w patches",
            (batch, grid, grid, 3, patch, patch): "merge the grid axes into one patch axis and each patch's "
                                                  "(C, p, p) pixels into one vector",
            (batch * grid * grid, per_patch): "keep the batch axis: (B, num_patches, C * p * p)",
        }
        if not torch.equal(pixels, original):
            raise ExerciseError(f"{call} changed its input in place: return a new tensor and leave the pixels alone")
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.equal(got, expected):
            for message, wrong in _patch_mistakes(pixels, patch).items():
                if torch.equal(got, wrong):
                    raise ExerciseError(f"{call}: {message}")
        check_close(got, expected, what=f"the result of {call}", shape_hints=hints,
                    value_hint="each row should hold the pixels of one patch, (channel, row, column) order")

    # The reason for that order: a linear map of these vectors is exactly SigLIP's convolutional patch embedding.
    config = SiglipVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    embeddings = SiglipVisionEmbeddings(config)
    pixels = torch.rand(1, 3, 28, 28, generator=generator)
    conv = embeddings.patch_embedding
    with torch.no_grad():
        expected = conv(pixels).flatten(2).transpose(1, 2)  # (B, N, D)
        got = run_candidate(patchify_fn, pixels, 14) @ conv.weight.flatten(1).T + conv.bias
    check_close(got, expected, what="your patches times the flattened convolution weight",
                value_hint="they should equal SigLIP's convolutional patch embedding")
    passed("patchify")
