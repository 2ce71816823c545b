"""Checkpoints in the Hugging Face layout: safetensors files (single or sharded with an index) + config.json.

Loading is strict (every missing, unexpected or mis-shaped key is named in the error) and builds the
model on the `meta` device first, then reads one tensor at a time straight from the file into its
own memory (no memory map), so a checkpoint is held in memory once, not twice. Every file is parsed
strictly (`safetensors_format.py`, `files.py`): a malformed one raises a `CheckpointError` naming it. A
tensor holding NaN or inf (or whose values overflow the dtype asked for) is refused: such a model only
ever outputs NaN, and a training run that diverged should not pass for a checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path, PurePath

import torch
from safetensors.torch import save_file
from torch import nn

from .files import CheckpointError, read_json_object, regular_file
from .safetensors_format import DTYPES, file_header, read_header, read_tensor

__all__ = ["CheckpointError", "file_header", "load_checkpoint", "save_checkpoint", "checkpoint_files"]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
FINITE_CHECK_CHUNK = 1 << 24  # elements per isfinite() pass: a bounded temporary, even for a 500M-entry table


def checkpoint_files(path: str | Path) -> dict[str, Path]:
    """Map every tensor name in a checkpoint folder to the safetensors file that holds it."""
    return checkpoint_headers(path)[0]


def checkpoint_headers(path: str | Path) -> tuple[dict[str, Path], dict[Path, dict]]:
    """({tensor name: its file}, {file: its checked header}) of a folder with model.safetensors or an index + shards."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    if (path / INDEX_FILE).exists():
        files = index_files(path / INDEX_FILE)
        headers = {file: file_header(file) for file in sorted(set(files.values()))}
        for key, file in files.items():
            if key not in headers[file]:
                raise CheckpointError(f"{path / INDEX_FILE} places tensor {key!r} in {file.name}, "
                                      "which does not hold it")
        return files, headers
    if (path / SINGLE_FILE).exists():
        header = file_header(path / SINGLE_FILE)
        return {key: path / SINGLE_FILE for key in header}, {path / SINGLE_FILE: header}
    found = sorted(p.name for p in path.iterdir())
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path} (found: {found[:10]})")


def index_files(index_path: Path) -> dict[str, Path]:
    """The index's weight_map as {tensor name: shard path}; shard names must be plain files of the folder."""
    weight_map = read_json_object(index_path, "safetensors index").get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path} has no \"weight_map\" object {{tensor name: shard file}}")
    files: dict[str, Path] = {}
    for key, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index_path}: the shard of {key!r} is {shard!r}, expected a file name")
        parts = PurePath(shard).parts
        if PurePath(shard).is_absolute() or ".." in parts or not parts:
            raise CheckpointError(f"{index_path}: shard name {shard!r} (for {key!r}) must be a file name inside "
                                  "the checkpoint folder, not an absolute path or one with '..'")
        files[key] = index_path.parent / shard
    for file in sorted(set(files.values())):
        try:
            regular_file(file, "shard")
        except FileNotFoundError:
            raise CheckpointError(f"{index_path} names the shard {file.name}, which is not in "
                                  f"{index_path.parent}") from None
        except CheckpointError as error:
            raise CheckpointError(f"{index_path}: {error}") from None
    return files


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
    `optional` lists our names that may be absent (e.g. a tied lm_head). Tensors holding NaN or inf are refused.
    """
    device = torch.device(device or "cpu")
    dtype = dtype or default_dtype(device)
    files, headers = checkpoint_headers(path)
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
    shapes, kinds = [], []
    for file, names in by_file.items():
        for name in names:
            entry = headers[file][renamed[name]]
            if tuple(entry["shape"]) != tuple(ours[name].shape):
                shapes.append(f"{renamed[name]}: checkpoint {tuple(entry['shape'])}, model {tuple(ours[name].shape)}")
            if DTYPES[entry["dtype"]].is_floating_point != ours[name].is_floating_point():
                kinds.append(f"{renamed[name]}: checkpoint {entry['dtype']}, model {ours[name].dtype}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes[:8]) + (" …" if len(shapes) > 8 else ""))
    if kinds:
        problems.append("dtype mismatches (floating-point tensors need floating-point data): " + "; ".join(kinds[:8])
                        + (" …" if len(kinds) > 8 else ""))
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: " + " | ".join(problems))

    for file, names in by_file.items():
        with open(file, "rb") as f:
            header, data_start = read_header(f, file)
            for name in names:  # one tensor at a time: read, converted, moved, then handed to the model
                source = read_tensor(f, header[renamed[name]], data_start, file)
                tensor = source.to(device=device, dtype=dtype if source.is_floating_point() else source.dtype)
                if tensor.is_floating_point() and not all_finite(tensor):
                    reason = (f"has values too large for {dtype} (they overflow to inf)" if all_finite(source)
                              else "holds NaN or inf values")
                    raise CheckpointError(f"{file}: tensor {renamed[name]!r} {reason}; a model with such weights "
                                          "outputs only NaN, so the checkpoint is refused")
                _set_tensor(model, name, tensor)
    return model


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN and no inf, checked in chunks so the temporary stays small."""
    return all(bool(torch.isfinite(chunk).all()) for chunk in tensor.reshape(-1).split(FINITE_CHECK_CHUNK))


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
