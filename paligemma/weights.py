"""Checkpoints in the Hugging Face layout: safetensors files (single or sharded with an index) + config.json.

Loading is strict (every missing, unexpected or mis-shaped key is named in the error) and builds the
model on the `meta` device first, so a checkpoint is held in memory once, not twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint folder that does not fit the model: missing, unexpected or mis-shaped tensors."""


def checkpoint_files(path: str | Path) -> dict[str, Path]:
    """Map every tensor name in a checkpoint folder to the safetensors file that holds it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    if (path / INDEX_FILE).is_file():
        weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    if (path / SINGLE_FILE).is_file():
        with safe_open(path / SINGLE_FILE, framework="pt") as f:
            return {name: path / SINGLE_FILE for name in f.keys()}
    found = sorted(p.name for p in path.iterdir())
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path} (found: {found[:10]})")


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on GPUs (what the checkpoints were trained in), float32 on the CPU (fast and exact there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _describe(names, limit: int = 8) -> str:
    names = sorted(names)
    more = f" … and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_checkpoint(model: nn.Module, path: str | Path, rename: Callable[[str], str | None],
                    optional: set[str] = frozenset(), dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> nn.Module:
    """Fill `model` (usually built on `meta`) with the tensors of a checkpoint folder.

    `rename` maps a checkpoint key to our parameter name (None = a key to skip on purpose);
    `optional` lists our names that may be absent (e.g. a tied lm_head).
    """
    device = torch.device(device or "cpu")
    dtype = dtype or default_dtype(device)
    files = checkpoint_files(path)
    ours = dict(model.named_parameters(remove_duplicate=False))
    ours.update(model.named_buffers(remove_duplicate=False))
    persistent = set(model.state_dict(keep_vars=True))
    expected = {name for name in ours if name in persistent}

    renamed: dict[str, str] = {}
    for key in files:
        name = rename(key)
        if name is not None:
            if name in renamed:
                raise CheckpointError(f"checkpoint keys {renamed[name]!r} and {key!r} both map to {name!r}")
            renamed[name] = key
    missing = expected - set(renamed) - set(optional)
    unexpected = set(renamed) - expected
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(renamed[n] for n in unexpected)}")

    by_file: dict[Path, list[str]] = {}
    for name, key in renamed.items():
        if name in expected:
            by_file.setdefault(files[key], []).append(name)
    shapes = []
    for file, names in by_file.items():
        with safe_open(file, framework="pt") as f:
            for name in names:
                shape = tuple(f.get_slice(renamed[name]).get_shape())
                if shape != tuple(ours[name].shape):
                    shapes.append(f"{renamed[name]}: checkpoint {shape}, model {tuple(ours[name].shape)}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes[:8]) + (" …" if len(shapes) > 8 else ""))
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: " + " | ".join(problems))

    for file, names in by_file.items():
        with safe_open(file, framework="pt") as f:
            for name in names:  # one tensor at a time: converted, moved, then handed to the model
                tensor = f.get_tensor(renamed[name])
                tensor = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
                _set_tensor(model, name, tensor)
    return model


def _set_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_path, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_path)
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=module._parameters[leaf].requires_grad)
    else:
        module._buffers[leaf] = tensor


def save_checkpoint(state_dict: dict[str, torch.Tensor], config: dict, path: str | Path,
                    max_shard_size: int | None = None) -> None:
    """Write config.json and the tensors, split into shards of at most `max_shard_size` bytes if given."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    for stale in [path / SINGLE_FILE, path / INDEX_FILE, *path.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_size is not None and shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], path / SINGLE_FILE, metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / file, metadata=metadata)
        weight_map.update({key: file for key in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
