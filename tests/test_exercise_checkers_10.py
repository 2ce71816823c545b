"""Notebook 10's checkers: a right answer passes, each usual mistake is named, a stub says it is not written."""

from exercise_helpers import assert_rejected, not_written
from paligemma.exercises import check_box_to_locations, check_suffix_labels
from paligemma.nano import box_to_locations


def test_box_to_locations_checker():
    check_box_to_locations(box_to_locations)
    assert_rejected(check_box_to_locations, not_written, "not implemented yet")
    assert_rejected(check_box_to_locations, lambda b, h, w: box_to_locations((b[1], b[0], b[3], b[2]), w, h),
                    "y_min, x_min, y_max, x_max")
    assert_rejected(check_box_to_locations,
                    lambda b, h, w: "".join(f"<loc{round(e / s * 31)}>" for e, s in zip(b, (h, w, h, w))),
                    "four digits")
    assert_rejected(check_box_to_locations,
                    lambda b, h, w: "".join(f"<loc{int(e / s * 31):04d}>" for e, s in zip(b, (h, w, h, w))),
                    "round to the nearest bin")
    assert_rejected(check_box_to_locations,
                    lambda b, h, w: "".join(f"<loc{round(e / s * 31):04d}>" for e, s in zip(b, (w, h, w, h))),
                    "divided by the height")
    assert_rejected(check_box_to_locations, lambda b, h, w: [1, 2, 3, 4], "expected a string")


def test_suffix_labels_checker():
    check_suffix_labels(lambda ids, types: ids.masked_fill(types == 0, -100))
    assert_rejected(check_suffix_labels, not_written, "not implemented yet")
    assert_rejected(check_suffix_labels, lambda ids, types: ids.masked_fill(types == 1, -100), "scored the prefix")
    assert_rejected(check_suffix_labels, lambda ids, types: ids.masked_fill(types == 0, 0), "must be -100")
    assert_rejected(check_suffix_labels, lambda ids, types: ids, "wrong values")
    assert_rejected(check_suffix_labels, lambda ids, types: ids.masked_fill(types == 0, -100)[:, 1:], "shape")
