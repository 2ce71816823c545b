"""Held-out evaluation: caption exact match, detection IoU >= 0.5 per object, and counting."""

from __future__ import annotations

from ..generation import generate
from .scenes import make_scene
from .tasks import CAPTION_PROMPT, COUNT_PROMPT, box_iou, count_answer, parse_detections
from .training import HELD_OUT_SEEDS


def held_out_scenes(n: int, seed: int = 0):
    """n scenes whose seeds training never draws (training stays below HELD_OUT_SEEDS)."""
    return [make_scene(HELD_OUT_SEEDS + seed * 1_000_000 + i) for i in range(n)]


def _answers(model, processor, images, prompts, batch_size: int) -> list[str]:
    answers = []
    for start in range(0, len(prompts), batch_size):
        answers += generate(model, processor, images[start:start + batch_size], prompts[start:start + batch_size],
                            max_new_tokens=32)
    return answers


def evaluate(model, processor, n: int = 200, seed: int = 0, batch_size: int = 100) -> dict:
    """Greedy answers on n held-out scenes -> {"caption_exact", "detect_iou50", "count_exact", counts}.

    detect_iou50 is the share of objects for which "detect <color> <shape>" returns a readable box with
    IoU >= 0.5 against the true box (an unreadable answer counts as a miss).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    scenes = held_out_scenes(n, seed)
    images = [s.image for s in scenes]
    captions = _answers(model, processor, images, [CAPTION_PROMPT] * n, batch_size)
    counts = _answers(model, processor, images, [COUNT_PROMPT] * n, batch_size)
    targets = [(scene, obj) for scene in scenes for obj in scene.objects]
    detections = _answers(model, processor, [scene.image for scene, _ in targets],
                          [f"detect {obj.name}" for _, obj in targets], batch_size)
    hits = 0
    for (scene, obj), answer in zip(targets, detections):
        try:
            found = parse_detections(answer, scene.image.height, scene.image.width)
        except ValueError:
            continue
        hits += bool(found) and found[0].label == obj.name and box_iou(found[0].box, obj.box) >= 0.5
    return {
        "caption_exact": sum(a == s.caption for a, s in zip(captions, scenes)) / n,
        "detect_iou50": hits / len(targets),
        "count_exact": sum(a == count_answer(s) for a, s in zip(counts, scenes)) / n,
        "scenes": n,
        "objects": len(targets),
    }
