"""PaliGemma-nano: a tiny PaliGemma trained here on synthetic scenes, shipped inside the package.

    from paligemma.nano import load, make_scene
    model, processor = load()                      # the shipped checkpoint (paligemma/assets/nano)
    scene = make_scene(7)                          # scene.image, scene.objects, scene.caption
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from .evaluation import (detection_prompts, evaluate, held_out_scenes, match_counts, multi_match_scores,
                         prompt_matches)
from .scenes import COLORS, IMAGE_SIZE, SHAPES, Scene, SceneObject, make_scene
from .tasks import (CAPTION_PROMPT, COUNT_PROMPT, NUM_LOCATION_BINS, Detection, box_iou, box_to_locations,
                    detection_answer, locations_to_box, parse_detections, sample_task)
from .tokenizer import build_tokenizer
from .training import nano_config, train

__all__ = ["load", "checkpoint_path", "make_scene", "Scene", "SceneObject", "COLORS", "SHAPES", "IMAGE_SIZE",
           "CAPTION_PROMPT", "COUNT_PROMPT", "NUM_LOCATION_BINS", "Detection", "box_iou", "box_to_locations",
           "detection_answer", "locations_to_box", "parse_detections", "sample_task", "build_tokenizer",
           "nano_config", "train", "evaluate", "held_out_scenes", "detection_prompts", "prompt_matches", "match_counts",
           "multi_match_scores"]


def checkpoint_path() -> Path:
    """The folder of the shipped checkpoint: config.json, model.safetensors, tokenizer.json."""
    return Path(str(resources.files("paligemma") / "assets" / "nano"))


def load(path: str | Path | None = None, device: torch.device | str | None = None):
    """(model, processor) of the shipped nano checkpoint, or of the nano-style folder `path`."""
    from ..modeling_paligemma import PaliGemmaForConditionalGeneration
    from ..processing_paligemma import PaliGemmaProcessor

    path = checkpoint_path() if path is None else Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no nano checkpoint in {path} (config.json missing); train one with "
                                "`python -m paligemma.nano train --out DIR`")
    model = PaliGemmaForConditionalGeneration.from_pretrained(path, dtype=torch.float32, device=device)
    return model, PaliGemmaProcessor.from_pretrained(path)
