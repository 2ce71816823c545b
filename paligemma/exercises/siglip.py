"""Checkers for notebook 06 (the SigLIP vision encoder): a position table stretched to a larger patch grid.

SigLIP learns one position vector per patch slot of a 16 x 16 grid; a 448 px image has a 32 x 32 grid. Fine-tuning
at a higher resolution starts from the old table resized like an image: its rows are the grid's slots in
reading order, so they must be laid out as a grid first. The reference is PyTorch's own bilinear resize.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_resize_position_embeddings"]

# (old grid side, new grid side, width): a grown grid, a shrunk one, PaliGemma's 16 -> 32 with a small width
RESIZE_CASES = ((4, 6, 8), (6, 4, 5), (16, 32, 3))


def _resize(table: torch.Tensor, side: int, new_side: int, **options) -> torch.Tensor:
    """(side^2, D) rows in reading order -> (new_side^2, D), resized as a D-channel image."""
    grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, h, w)
    resized = F.interpolate(grid, size=(new_side, new_side), **{"mode": "bilinear", "align_corners": False,
                                                                **options})
    return resized.permute(0, 2, 3, 1).reshape(new_side * new_side, -1)  # (h' w', D)


def _mistakes(table: torch.Tensor, side: int, new_side: int) -> dict[str, torch.Tensor]:
    width = table.shape[-1]
    flat = F.interpolate(table.T[None], size=new_side * new_side, mode="linear", align_corners=False)[0].T
    no_permute = F.interpolate(table.reshape(1, width, side, side), size=(new_side, new_side), mode="bilinear",
                               align_corners=False).reshape(new_side * new_side, width)
    columns_first = _resize(table.reshape(side, side, width).transpose(0, 1).reshape(-1, width), side, new_side)
    return {
        "you stretched the rows as one long sequence; they are a 2-D grid of patches in reading order, so reshape "
        "them to (side, side, D) and resize both axes": flat,
        "you reshaped the (N, D) table straight to (1, D, side, side), which mixes the features of different "
        "patches: reshape to (1, side, side, D) first, then permute the features to the channel axis": no_permute,
        "align_corners=True stretches the grid so that its corner patches stay put; resize with "
        "align_corners=False, which treats each patch as a cell of the image, as the exercise asks":
            _resize(table, side, new_side, align_corners=True),
        "use bilinear interpolation (mode='bilinear'): it blends the four nearest slots":
            _resize(table, side, new_side, mode="nearest", align_corners=None),
        "bilinear, not bicubic, interpolation": _resize(table, side, new_side, mode="bicubic"),
        "your grid came out transposed (read column by column): the rows are the grid in reading order, row after "
        "row, and the result must keep that order": columns_first,
    }


def check_resize_position_embeddings(resize_fn: Callable) -> None:
    """`resize_fn(table, new_side)`: (side^2, D) position rows -> (new_side^2, D), bilinear, align_corners=False."""
    generator = torch.Generator().manual_seed(0)
    for side, new_side, width in RESIZE_CASES:
        table = torch.randn(side * side, width, generator=generator)
        original = table.clone()
        expected = _resize(table, side, new_side)
        got = run_candidate(resize_fn, table, new_side)
        call = f"resize_position_embeddings(table of shape {tuple(table.shape)}, new_side={new_side})"
        if not torch.equal(table, original):
            raise ExerciseError(f"{call} changed the table in place: return a new tensor")
        hints = {(new_side, new_side, width): "merge the grid back into one row per patch: (new_side * new_side, D)",
                 (1, width, new_side, new_side): "turn the resized image back into rows: permute the features last, "
                                                 "then reshape to (new_side * new_side, D)",
                 (width, new_side * new_side): "return one row per patch slot, (new_side * new_side, D)"}
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.allclose(got, expected,
                                                                                               atol=1e-5):
            for message, wrong in _mistakes(table, side, new_side).items():
                if torch.allclose(got, wrong, atol=1e-5) and not torch.allclose(wrong, expected, atol=1e-5):
                    raise ExerciseError(f"{call}: {message}")
        check_close(got, expected, what=f"the result of {call}", shape_hints=hints,
                    value_hint="resize the (D, side, side) grid with F.interpolate(..., mode='bilinear', "
                               "align_corners=False)")
    passed("resize_position_embeddings", "PyTorch's bilinear resize")
