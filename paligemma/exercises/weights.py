"""Checkers for notebook 09 (real weights): writing a safetensors file by hand, mapping checkpoint keys to ours."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..modeling_paligemma import checkpoint_key_to_ours
from ..weights import DTYPES, file_header
from .checking import ExerciseError, LearnerCrash, passed, run_candidate

__all__ = ["check_write_safetensors", "check_checkpoint_key_to_ours"]

LAYOUT = ("8 bytes with the header's length N (unsigned 64-bit little-endian, struct.pack('<Q', N)), then N bytes "
          "of JSON, then the tensors' bytes one after the other")


def _tensors(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Three dtypes, a scalar-free mix of shapes, and a transposed (non-contiguous) matrix."""
    return {"embed.weight": torch.randn(5, 3, generator=generator),
            "norm.weight": torch.randn(4, generator=generator).to(torch.bfloat16),
            "proj.weight": torch.randn(3, 2, generator=generator).T,  # a view: its memory is in the other order
            "steps": torch.arange(6).reshape(2, 3)}


def _raw_header(path: Path) -> tuple[int, int, bytes]:
    raw = path.read_bytes()
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[:8], "big"), raw


def _diagnose_unreadable(path: Path, error: Exception) -> str:
    """Why the safetensors library refused the file, in the file's own terms."""
    if not path.is_file():
        return "no file was written at `path`"
    little, big, raw = _raw_header(path)
    if len(raw) < 8:
        return f"the file has {len(raw)} bytes; it must start with {LAYOUT}"
    if little > len(raw) and big <= len(raw) - 8:
        return "the header length is big-endian; safetensors stores it little-endian: struct.pack('<Q', N)"
    try:
        header = json.loads(raw[8:8 + little])
    except ValueError:
        return f"the {little} bytes after the length are not JSON; the file must be {LAYOUT}"
    entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
    names = {entry.get("dtype") for entry in entries.values() if isinstance(entry, dict)}
    if not names <= set(DTYPES):
        return (f"dtype names must be safetensors' own ({', '.join(sorted(DTYPES))}), not {sorted(map(str, names))}")
    starts = sorted(entry["data_offsets"][0] for entry in entries.values() if "data_offsets" in entry)
    if starts and starts[0] != 0:
        return ("data_offsets count from the first byte after the header: the first tensor starts at 0, not at "
                f"{starts[0]} (they are not positions in the file)")
    return f"the safetensors library cannot read it ({type(error).__name__}: {error}); the file must be {LAYOUT}"


def check_write_safetensors(write_fn: Callable) -> None:
    """`write_fn(tensors, path)` writes {name: tensor} as a .safetensors file that the safetensors library reads back."""
    tensors = _tensors(torch.Generator().manual_seed(0))
    originals = {name: tensor.clone() for name, tensor in tensors.items()}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        try:
            run_candidate(write_fn, dict(tensors), path)
        except LearnerCrash as crash:
            if "BFloat16" in crash.reason:  # numpy has no bfloat16
                raise ExerciseError(f"{crash}: numpy has no bfloat16, so take the raw bytes instead: "
                                    "tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()") from None
            raise
        try:
            loaded = load_file(path)
        except Exception as error:  # the library's own error types differ between versions
            raise ExerciseError(f"write_safetensors wrote a file that does not load: "
                                f"{_diagnose_unreadable(path, error)}") from None
        header = file_header(path)
    if set(loaded) != set(tensors):
        raise ExerciseError(f"the file holds the tensors {sorted(loaded)}, expected {sorted(tensors)}")
    for name, original in originals.items():
        got = loaded[name]
        if got.dtype != original.dtype or got.shape != original.shape:
            raise ExerciseError(f"{name!r} comes back as {got.dtype} {tuple(got.shape)}, it was {original.dtype} "
                                f"{tuple(original.shape)}: the header's dtype and shape must describe the tensor")
        if not torch.equal(got, original):
            if got.numel() == original.numel() and torch.equal(got.flatten(), original.T.flatten()):
                raise ExerciseError(f"{name!r} comes back transposed: it is a view whose memory is in the other "
                                    "order; write tensor.contiguous()'s bytes (or .numpy().tobytes())")
            raise ExerciseError(f"{name!r} comes back with other values: the bytes at its data_offsets must be "
                                "the tensor's own, in order")
    ends = sorted(entry["data_offsets"] for entry in header.values())
    if any(first[1] != second[0] for first, second in zip(ends, ends[1:])):
        raise ExerciseError("the tensors' byte ranges have gaps or overlap: each starts where the previous ends")
    passed("write_safetensors", "the safetensors library")


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

