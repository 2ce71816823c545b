"""Checkers for notebook 10 (PaliGemma-nano): boxes as `<loc>` tokens, and labels that score only the answer."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ..modeling_paligemma import IGNORE_INDEX
from ..nano.tasks import NUM_LOCATION_BINS, box_to_locations
from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_box_to_locations", "check_suffix_labels"]

# (box as (y_min, x_min, y_max, x_max) pixels, image height, image width)
BOX_CASES = (((3, 10, 14, 21), 32, 32), ((0, 0, 32, 32), 32, 32), ((5, 40, 20, 64), 32, 64), ((7, 7, 9, 9), 16, 16))


def check_box_to_locations(box_to_locations_fn: Callable) -> None:
    """`box_to_locations_fn(box, height, width)` -> '<locYYYY><locXXXX><locYYYY><locXXXX>' with 32 bins."""
    for box, height, width in BOX_CASES:
        expected = box_to_locations(box, height, width)
        got = run_candidate(box_to_locations_fn, box, height, width)
        call = f"box_to_locations({box}, height={height}, width={width})"
        if not isinstance(got, str):
            raise ExerciseError(f"{call} returned a {type(got).__name__}, expected a string like {expected!r}")
        if got == expected:
            continue
        swapped = box_to_locations((box[1], box[0], box[3], box[2]), width, height)
        no_pad = re.sub(r"<loc0*(?=\d)", "<loc", expected)  # '<loc0003>' -> '<loc3>'
        hints = {
            swapped: "the coordinates are in x, y order: PaliGemma writes y_min, x_min, y_max, x_max",
            no_pad: "location numbers are written with four digits, e.g. <loc0007>",
            box_to_locations(box, width, height): "y is divided by the height and x by the width, not the reverse",
        }
        floor = "".join(f"<loc{int(e / s * (NUM_LOCATION_BINS - 1)):04d}>"
                        for e, s in zip(box, (height, width, height, width)))
        hints.setdefault(floor, "round to the nearest bin (round(...)) rather than truncating with int(...)")
        raise ExerciseError(f"{call} returned {got!r}, expected {expected!r}"
                            + (f": {hints[got]}" if got in hints else
                               f": each edge becomes round(edge / side * {NUM_LOCATION_BINS - 1})"))
    passed("box_to_locations")


def _labels(input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
    return input_ids.masked_fill(token_type_ids == 0, IGNORE_INDEX)


def check_suffix_labels(suffix_labels_fn: Callable) -> None:
    """`suffix_labels_fn(input_ids, token_type_ids)` -> labels: the token where token_type_ids is 1, else -100."""
    input_ids = torch.tensor([[0, 0, 3, 3, 2, 40, 41, 5, 60, 61, 1], [3, 3, 2, 40, 42, 43, 5, 60, 62, 63, 1]])
    token_type_ids = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]])
    expected = _labels(input_ids, token_type_ids)
    got = run_candidate(suffix_labels_fn, input_ids.clone(), token_type_ids.clone())
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.equal(got, expected):
        if torch.equal(got, input_ids.masked_fill(token_type_ids == 1, IGNORE_INDEX)):
            raise ExerciseError("you scored the prefix and hid the answer: labels keep the tokens where "
                                "token_type_ids == 1 (the suffix) and are -100 everywhere else")
        if torch.equal(got, input_ids.masked_fill(token_type_ids == 0, 0)):
            raise ExerciseError("hidden positions must be -100 (the value cross_entropy's ignore_index skips), not 0: "
                                "0 is the <pad> token and would be scored")
        if torch.equal(got[:, :-1], expected[:, 1:]):
            raise ExerciseError("the labels are shifted by one: keep labels aligned with input_ids; the loss "
                                "shifts them itself (position t predicts token t+1)")
    check_close(got, expected, "labels", value_hint="labels = input_ids where token_type_ids == 1, -100 elsewhere")
    passed("suffix_labels")
