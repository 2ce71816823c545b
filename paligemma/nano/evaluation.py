"""Held-out evaluation: captions, single-target and multi-match detection at IoU >= 0.5, and counting."""

from __future__ import annotations

import itertools
import random

from ..generation import generate
from .scenes import COLORS, SHAPES, make_scene
from .tasks import CAPTION_PROMPT, COUNT_PROMPT, box_iou, count_answer, parse_detections
from .training import HELD_OUT_SEEDS

IOU_THRESHOLD = 0.5


def held_out_scenes(n: int, seed: int = 0):
    """n scenes whose seeds training never draws (training stays below HELD_OUT_SEEDS)."""
    return [make_scene(HELD_OUT_SEEDS + seed * 1_000_000 + i) for i in range(n)]


def detection_prompts() -> list[str]:
    """Every detect prompt a nano scene can be asked: 'detect <shape>' (3), then 'detect <colour> <shape>' (12)."""
    return [f"detect {shape}" for shape in SHAPES] + [f"detect {color} {shape}" for color in COLORS for shape in SHAPES]


def prompt_matches(prompt: str, scene) -> list:
    """The objects of `scene` that a detect prompt asks for (none when the prompt names something absent)."""
    wanted = prompt.removeprefix("detect ")
    return [obj for obj in scene.objects if wanted in (obj.shape, obj.name)]


def seed_of_a_scene_holding(prompt: str, rng: random.Random) -> tuple[int, int]:
    """(seed, scenes drawn): the first random held-out scene that holds what `detect <shape>` or
    `detect <colour> <shape>` names (about one scene in six holds a given colour and shape)."""
    if prompt not in detection_prompts():
        raise ValueError(f"{prompt!r} is not one of the nano detect prompts, e.g. 'detect red circle'")
    for drawn in itertools.count(1):
        seed = HELD_OUT_SEEDS + rng.randrange(10**9)
        if prompt_matches(prompt, make_scene(seed)):
            return seed, drawn


def scene_seed_for(prompt: str, scene_seed: int | None = None, rng: random.Random | None = None) -> tuple[int, str]:
    """(seed, note) of the scene to show a prompt: `scene_seed` if given, else a random held-out one; a detect
    prompt gets the first random scene that holds what it names. The note says so, or that the answer should
    be empty because the chosen scene holds no such object ('' when there is nothing to say)."""
    rng = rng or random.SystemRandom()
    wanted = prompt.removeprefix("detect ") if prompt in detection_prompts() else None
    if scene_seed is not None:
        absent = wanted is not None and not prompt_matches(prompt, make_scene(scene_seed))
        return scene_seed, f"it holds no {wanted}: the right answer is empty" if absent else ""
    if wanted is None:
        return HELD_OUT_SEEDS + rng.randrange(10**9), ""
    seed, drawn = seed_of_a_scene_holding(prompt, rng)
    return seed, f"(drew {drawn} random held-out scene{'s' * (drawn > 1)} to find one that holds a {wanted})"


def match_counts(answer: str, truths, height: int, width: int) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one detect answer against the objects it should find.

    Pairs are formed greedily, highest IoU first, each box and object used once; a pair counts only if its
    label is the object's name and IoU >= 0.5. An unreadable answer finds nothing and counts one false positive.
    """
    try:
        found = parse_detections(answer, height, width)
    except ValueError:
        return 0, 1, len(truths)
    pairs = sorted(((box_iou(d.box, t.box), i, j) for i, d in enumerate(found) for j, t in enumerate(truths)
                    if d.label == t.name), reverse=True)
    used_found, used_truths = set(), set()
    for iou, i, j in pairs:
        if iou >= IOU_THRESHOLD and i not in used_found and j not in used_truths:
            used_found.add(i), used_truths.add(j)
    hits = len(used_found)
    return hits, len(found) - hits, len(truths) - hits


def multi_match_scores(answers: list[str], truths: list[list], height: int, width: int) -> dict:
    """Micro-averaged precision, recall and F1 over detect answers, and the share of exactly right answers.

    precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2PR / (P + R); an empty answer to a prompt with
    no match is exactly right and adds nothing to TP, FP or FN (so all-empty answers score 0, not 1).
    """
    if len(answers) != len(truths):
        raise ValueError(f"{len(answers)} answers for {len(truths)} prompts")
    totals, exact = [0, 0, 0], 0
    for answer, objects in zip(answers, truths):
        counts = match_counts(answer, objects, height, width)
        totals = [a + b for a, b in zip(totals, counts)]
        exact += counts[1:] == (0, 0)
    tp, fp, fn = totals
    precision = tp / (tp + fp) if tp + fp else 1.0  # nothing claimed: nothing claimed wrongly
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "answers_exact": exact / max(1, len(answers)),
            "true_positives": tp, "false_positives": fp, "false_negatives": fn}


def _answers(model, processor, images, prompts, batch_size: int) -> list[str]:
    answers = []
    for start in range(0, len(prompts), batch_size):
        answers += generate(model, processor, images[start:start + batch_size], prompts[start:start + batch_size],
                            max_new_tokens=32)
    return answers


def evaluate(model, processor, n: int = 200, seed: int = 0, batch_size: int = 100) -> dict:
    """Greedy answers on n held-out scenes -> caption, detection and counting scores (fractions) and counts.

    detect_iou50: share of objects whose "detect <colour> <shape>" answer starts with the right label and a box
    with IoU >= 0.5 (an unreadable answer is a miss). multi_*: every detect prompt of every scene (3 shapes +
    12 colour-shape pairs, absent ones included), scored by multi_match_scores: every matching object must be
    found, extra boxes are false positives, and a prompt for something absent expects an empty answer.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    scenes = held_out_scenes(n, seed)
    images = [s.image for s in scenes]
    height, width = images[0].height, images[0].width
    captions = _answers(model, processor, images, [CAPTION_PROMPT] * n, batch_size)
    counts = _answers(model, processor, images, [COUNT_PROMPT] * n, batch_size)
    asked = [(scene, prompt) for prompt in detection_prompts() for scene in scenes]  # prompts of one length together
    answers = _answers(model, processor, [scene.image for scene, _ in asked], [p for _, p in asked], batch_size)
    truths = [prompt_matches(prompt, scene) for scene, prompt in asked]
    multi = multi_match_scores(answers, truths, height, width)

    single = [(answer, objects[0]) for (scene, prompt), answer, objects in zip(asked, answers, truths)
              if prompt.count(" ") == 2 and objects]  # "detect <colour> <shape>" of an object in the scene
    hits = 0
    for answer, obj in single:
        try:
            found = parse_detections(answer, height, width)
        except ValueError:
            continue
        hits += bool(found) and found[0].label == obj.name and box_iou(found[0].box, obj.box) >= IOU_THRESHOLD
    return {
        "caption_exact": sum(a == s.caption for a, s in zip(captions, scenes)) / n,
        "detect_iou50": hits / len(single),
        "multi_precision": multi["precision"],
        "multi_recall": multi["recall"],
        "multi_f1": multi["f1"],
        "count_exact": sum(a == count_answer(s) for a, s in zip(counts, scenes)) / n,
        "scenes": n,
        "objects": len(single),
        "detect_prompts": len(asked),
    }
