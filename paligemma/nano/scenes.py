"""Synthetic scenes: 1-3 coloured shapes on a lightly noisy background, with their boxes and a caption."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32  # pixels per side; the nano model reads 4x4-pixel patches, an 8x8 grid of image tokens
COLORS = {"red": (215, 35, 35), "green": (30, 160, 55), "blue": (35, 75, 215), "yellow": (225, 190, 20)}
SHAPES = ("circle", "square", "triangle")
MIN_SIZE, MAX_SIZE = 9, 14  # side of a shape's bounding square, in pixels
MAX_OBJECTS = 3
NUMBER_WORDS = ("zero", "one", "two", "three")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    box: tuple[int, int, int, int]  # (y_min, x_min, y_max, x_max) in pixels, max edges exclusive

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    objects: tuple[SceneObject, ...]

    @property
    def caption(self) -> str:
        """'a red circle and a blue square': circles first, then squares, then triangles; colours in COLORS order."""
        return " and ".join(f"a {obj.name}" for obj in sorted(self.objects, key=caption_order))


def caption_order(obj: SceneObject) -> tuple[int, int]:
    return SHAPES.index(obj.shape), list(COLORS).index(obj.color)


def _overlaps(box, others, gap: int = 1) -> bool:
    y0, x0, y1, x1 = box
    return any(y0 < b[2] + gap and b[0] < y1 + gap and x0 < b[3] + gap and b[1] < x1 + gap for b in others)


def _draw(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    y0, x0, y1, x1 = box
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
    else:  # an upright triangle filling its box
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)


def make_scene(seed: int) -> Scene:
    """The same seed always draws the same scene: 1-3 distinct (colour, shape) pairs that do not touch."""
    rng = random.Random(seed)
    kinds = [(color, shape) for color in COLORS for shape in SHAPES]
    wanted = rng.randint(1, MAX_OBJECTS)
    objects: list[SceneObject] = []
    for color, shape in rng.sample(kinds, wanted):
        for _ in range(50):  # rejection sampling: try places until the shape touches nothing
            size = rng.randint(MIN_SIZE, MAX_SIZE)
            y, x = rng.randint(0, IMAGE_SIZE - size), rng.randint(0, IMAGE_SIZE - size)
            box = (y, x, y + size, x + size)
            if not _overlaps(box, [o.box for o in objects]):
                objects.append(SceneObject(shape, color, box))
                break

    noise = np.random.default_rng(seed).integers(-12, 13, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    background = np.clip(235 + noise, 0, 255).astype(np.uint8)  # light grey with a little noise
    image = Image.fromarray(background, mode="RGB")
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw(draw, obj.shape, obj.box, COLORS[obj.color])
    return Scene(image=image, objects=tuple(objects))
