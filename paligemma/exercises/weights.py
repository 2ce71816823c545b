"""Checkers for notebook 09 (real weights): reading a safetensors header, mapping checkpoint keys to ours."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..modeling_paligemma import checkpoint_key_to_ours
from ..weights import file_header
from .checking import ExerciseError, passed, run_candidate

__all__ = ["check_read_safetensors_header", "check_checkpoint_key_to_ours"]

HEADER_HINT = ("a .safetensors file starts with 8 bytes holding the header's length N as an unsigned 64-bit "
               "little-endian integer (struct.unpack('<Q', ...) or int.from_bytes(..., 'little')), followed by N "
               "bytes of JSON (json.loads)")


def check_read_safetensors_header(read_header_fn: Callable) -> None:
    """`read_header_fn(path)` -> {tensor name: {"dtype", "shape", "data_offsets"}}, without "__metadata__"."""
    tensors = {"embed.weight": torch.zeros(5, 3), "norm.weight": torch.ones(3, dtype=torch.bfloat16),
               "proj.bias": torch.arange(4)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_file(tensors, path, metadata={"format": "pt"})
        expected = file_header(path)
        try:
            got = run_candidate(read_header_fn, path)
        except ExerciseError:
            raise
        except Exception as error:  # a wrong length or offset makes the JSON unreadable
            raise ExerciseError(f"read_header raised {type(error).__name__}: {error}. Check the layout: "
                                f"{HEADER_HINT}") from None
    if isinstance(got, (bytes, str)):
        raise ExerciseError(f"read_header returned the header as {type(got).__name__}: parse it with json.loads")
    if not isinstance(got, dict):
        raise ExerciseError(f"read_header should return a dict, got {type(got).__name__}")
    if "__metadata__" in got:
        raise ExerciseError("the header still holds its '__metadata__' entry (here {'format': 'pt'}): it describes "
                            "the file, not a tensor, so remove it (header.pop('__metadata__', None))")
    if set(got) != set(expected):
        raise ExerciseError(f"read_header returned the names {sorted(got)}, the file holds {sorted(expected)}")
    for name, entry in expected.items():
        if got[name] != entry:
            raise ExerciseError(f"the entry for {name!r} is {got[name]!r}, the file says {entry!r}: return the "
                                "parsed JSON entries unchanged")
    passed("read_safetensors_header")


# (checkpoint key, layout) for every layout listed in DESIGN.md.
KEY_CASES = (
    ("language_model.model.layers.0.self_attn.q_proj.weight", "hub files"),
    ("language_model.model.embed_tokens.weight", "hub files"),
    ("vision_tower.vision_model.encoder.layers.3.mlp.fc1.weight", "hub files"),
    ("vision_tower.vision_model.embeddings.patch_embedding.weight", "hub files"),
    ("multi_modal_projector.linear.weight", "hub files"),
    ("vision_tower.post_layernorm.bias", "a transformers 5 save"),
    ("vision_tower.encoder.layers.0.self_attn.out_proj.bias", "a transformers 5 save"),
    ("model.language_model.layers.17.mlp.down_proj.weight", "a transformers 5 state_dict"),
    ("model.language_model.norm.weight", "a transformers 5 state_dict"),
    ("model.vision_tower.encoder.layers.0.layer_norm1.weight", "a transformers 5 state_dict"),
    ("model.multi_modal_projector.linear.bias", "a transformers 5 state_dict"),
    ("lm_head.weight", "a transformers 5 state_dict"),
)


def _key_hint(key: str, got: str) -> str:
    """The usual reason a key came out wrong, in words."""
    if key == "lm_head.weight":
        return "the output layer lives inside our language model: lm_head.weight -> language_model.lm_head.weight"
    if key.startswith("language_model.model.") and got != key:
        return ("hub keys language_model.model.* already equal ours: leave them alone (replacing 'model.' anywhere "
                "in a key also hits the 'model.' inside 'language_model.model.'; only strip a leading prefix)")
    if ".vision_model." in got or got.startswith("vision_model."):
        return "our vision tower has no vision_model level: vision_tower.vision_model.X -> vision_tower.X"
    if key.startswith("model.language_model."):
        return "transformers 5 state_dict keys model.language_model.X are our language_model.model.X"
    if key.startswith("model."):
        return "transformers 5 state_dict keys start with 'model.': strip it for the vision tower and the projector"
    return "keys already in our layout must come back unchanged"


def check_checkpoint_key_to_ours(key_to_ours_fn: Callable) -> None:
    """`key_to_ours_fn(key)` -> our parameter name, for keys in every checkpoint layout."""
    for key, layout in KEY_CASES:
        expected = checkpoint_key_to_ours(key)
        got = run_candidate(key_to_ours_fn, key)
        if not isinstance(got, str):
            raise ExerciseError(f"key_to_ours({key!r}) should return a str, got {type(got).__name__}")
        if got != expected:
            raise ExerciseError(f"key_to_ours({key!r}) (from {layout}) returned {got!r}, expected {expected!r}: "
                                f"{_key_hint(key, got)}")
    passed("checkpoint_key_to_ours")

