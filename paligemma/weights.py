"""Checkpoints in the Hugging Face layout: safetensors files (single or sharded with an index) + config.json.

Loading is strict (every missing, unexpected or mis-shaped key is named in the error) and builds the
model on the `meta` device first, then reads one tensor at a time straight from the file into its
own memory (no memory map), so a checkpoint is held in memory once, not twice.

A .safetensors file is: 8 bytes (little-endian u64) giving the header's length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {...}}, then the raw bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors.torch import save_file
from torch import nn

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def read_header(file: BinaryIO) -> tuple[dict, int]:
    """The JSON header of a .safetensors file, without metadata, and where the tensor bytes start."""
    (length,) = struct.unpack("<Q", file.read(8))
    header = json.loads(file.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


def read_tensor(file: BinaryIO, entry: dict, data_start: int) -> torch.Tensor:
    """Read one tensor's bytes from the file directly into a new tensor's memory."""
    if entry["dtype"] not in DTYPES:
        raise ValueError(f"unsupported safetensors dtype {entry['dtype']}")
    tensor = torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]])
    start, end = entry["data_offsets"]
    if end - start != tensor.numel() * tensor.element_size():
        raise ValueError(f"corrupt safetensors entry: {end - start} bytes for shape {entry['shape']} {entry['dtype']}")
    file.seek(data_start + start)
    if file.readinto(tensor.reshape(-1).view(torch.uint8).numpy()) != end - start:
        raise ValueError("safetensors file ends before the tensor's last byte")
    return tensor


def file_header(path: Path) -> dict:
    with open(path, "rb") as file:
        return read_header(file)[0]


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
        return {name: path / SINGLE_FILE for name in file_header(path / SINGLE_FILE)}
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
    shapes, headers = [], {file: file_header(file) for file in by_file}
    for file, names in by_file.items():
        for name in names:
            shape = tuple(headers[file][renamed[name]]["shape"])
            if shape != tuple(ours[name].shape):
                shapes.append(f"{renamed[name]}: checkpoint {shape}, model {tuple(ours[name].shape)}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes[:8]) + (" …" if len(shapes) > 8 else ""))
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: " + " | ".join(problems))

    for file, names in by_file.items():
        with open(file, "rb") as f:
            header, data_start = read_header(f)
            for name in names:  # one tensor at a time: read, converted, moved, then handed to the model
                tensor = read_tensor(f, header[renamed[name]], data_start)
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
