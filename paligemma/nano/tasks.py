"""PaliGemma's task prompts on nano scenes, and `<locNNNN>` location tokens to and from pixel boxes."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .scenes import COLORS, NUMBER_WORDS, SHAPES, Scene, SceneObject

NUM_LOCATION_BINS = 32  # PaliGemma uses 1024; 32 is one bin per pixel of a nano scene
CAPTION_PROMPT = "caption en"
COUNT_PROMPT = "answer en how many shapes?"
_DETECTION = re.compile(r"((?:<loc\d{4}>){4}) ?(.*)")


def box_to_locations(box, height: int, width: int, bins: int = NUM_LOCATION_BINS) -> str:
    """(y_min, x_min, y_max, x_max) pixels -> '<locYYYY><locXXXX><locYYYY><locXXXX>', each edge / side * (bins-1)."""
    sides = (height, width, height, width)
    return "".join(f"<loc{round(edge / side * (bins - 1)):04d}>" for edge, side in zip(box, sides))


def locations_to_box(locations: str, height: int, width: int, bins: int = NUM_LOCATION_BINS):
    """'<loc..>' x 4 -> (y_min, x_min, y_max, x_max) in pixels (floats); the inverse of box_to_locations."""
    values = [int(v) for v in re.findall(r"<loc(\d{4})>", locations)]
    if len(values) != 4 or "".join(f"<loc{v:04d}>" for v in values) != locations:
        raise ValueError(f"expected exactly four <locNNNN> tokens, got {locations!r}")
    for v in values:
        if v >= bins:
            raise ValueError(f"<loc{v:04d}> is outside the {bins} location bins (0..{bins - 1})")
    sides = (height, width, height, width)
    return tuple(v / (bins - 1) * side for v, side in zip(values, sides))


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # (y_min, x_min, y_max, x_max) in pixels
    label: str


def parse_detections(text: str, height: int, width: int, bins: int = NUM_LOCATION_BINS) -> list[Detection]:
    """'<loc..>x4 red circle ; <loc..>x4 blue circle' -> Detections; '' -> []. Malformed text raises ValueError."""
    text = text.strip()
    if not text:
        return []
    detections = []
    for part in text.split(";"):
        match = _DETECTION.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"cannot read a detection from {part.strip()!r}: expected four <locNNNN> tokens "
                             "(y_min, x_min, y_max, x_max) followed by a label, e.g. "
                             "'<loc0003><loc0010><loc0014><loc0021> red circle'")
        box = locations_to_box(match.group(1), height, width, bins)
        if box[0] > box[2] or box[1] > box[3]:
            raise ValueError(f"{part.strip()!r} has its min edge after its max edge: the order is "
                             "y_min, x_min, y_max, x_max")
        detections.append(Detection(box, match.group(2).strip()))
    return detections


def detection_answer(objects, height: int, width: int) -> str:
    """The suffix for a detect prompt: matches left to right, '; '-separated; '' when nothing matches."""
    ordered = sorted(objects, key=lambda o: (o.box[1], o.box[0]))
    return " ; ".join(f"{box_to_locations(o.box, height, width)} {o.name}" for o in ordered)


def count_answer(scene: Scene) -> str:
    return NUMBER_WORDS[len(scene.objects)]


def sample_task(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """One (prompt, answer) training pair: 40% captions, 10% counting, 50% detection.

    Detection: 20% (of all pairs) by shape alone, two times in three the scene's most frequent shape, so that
    several matches (' ; '-separated) are common; 8% a colour and shape that is absent (the answer is empty);
    22% one object that is there.
    """
    height, width = scene.image.height, scene.image.width
    roll = rng.random()
    if roll < 0.4:
        return CAPTION_PROMPT, scene.caption
    if roll < 0.5:
        return COUNT_PROMPT, count_answer(scene)
    kind = rng.random()
    if kind < 0.4:  # every shape of one kind, whatever its colour
        if rng.random() < 2 / 3:
            counts = {shape: sum(o.shape == shape for o in scene.objects) for shape in SHAPES}
            shape = rng.choice([s for s in SHAPES if counts[s] == max(counts.values())])
        else:
            shape = rng.choice(SHAPES)
        return f"detect {shape}", detection_answer([o for o in scene.objects if o.shape == shape], height, width)
    if kind < 0.56:  # a shape that is not there: the answer is empty
        present = {o.name for o in scene.objects}
        absent = [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in present]
        return f"detect {rng.choice(absent)}", ""
    target: SceneObject = rng.choice(scene.objects)
    return f"detect {target.name}", detection_answer([target], height, width)


def box_iou(a, b) -> float:
    """Intersection over union of two (y_min, x_min, y_max, x_max) boxes."""
    height = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    width = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = height * width
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
