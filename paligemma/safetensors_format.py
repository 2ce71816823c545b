"""The .safetensors file format, parsed as strictly as the safetensors library parses it.

A .safetensors file is: 8 bytes (little-endian u64) giving the header's length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {...}}, then the raw bytes,
which the entries tile exactly (no overlaps, no holes). A short file, a header that is not a JSON object,
an entry without dtype / shape / data_offsets (or of the wrong type), offsets outside the data, overlapping
or leaving holes: each raises a `CheckpointError` naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import BinaryIO

import torch

from .files import CheckpointError, json_type, regular_file

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses larger headers too


def read_header(file: BinaryIO, name: str | Path = "safetensors file") -> tuple[dict, int]:
    """The checked JSON header of a .safetensors file, without metadata, and where the tensor bytes start."""
    size = os.fstat(file.fileno()).st_size
    prefix = file.read(8)
    if len(prefix) < 8:
        raise CheckpointError(f"{name} is {size} bytes long: too short for a safetensors file, which starts "
                              "with an 8-byte header length")
    (length,) = struct.unpack("<Q", prefix)
    if length > size - 8:
        raise CheckpointError(f"{name} says its header is {length:,} bytes long but the file holds {size:,} bytes: "
                              "truncated, or not a safetensors file")
    if length > MAX_HEADER_BYTES:
        raise CheckpointError(f"{name} has a {length:,}-byte header, more than the format allows "
                              f"({MAX_HEADER_BYTES:,}): not a safetensors file")
    try:
        header = json.loads(file.read(length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{name}: the header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name}: the header is a JSON {json_type(header)}, expected an object "
                              "{tensor name: {dtype, shape, data_offsets}}")
    metadata = header.pop("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(f"{name}: the header's __metadata__ must be an object of strings, got {metadata!r:.80}")
    check_entries(header, size - 8 - length, name)
    return header, 8 + length


def check_entries(header: dict, data_size: int, name: str | Path) -> None:
    """Every entry well formed, its byte count that of its shape and dtype, and the entries tiling the data exactly."""
    spans = []
    for key, entry in header.items():
        where = f"{name}: tensor {key!r}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise CheckpointError(f"{where} must be an object with dtype, shape and data_offsets, got {entry!r:.80}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise CheckpointError(f"{where} has dtype {dtype!r}; supported: {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
            raise CheckpointError(f"{where} has shape {shape!r:.80}, expected a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)
                and offsets[0] <= offsets[1]):
            raise CheckpointError(f"{where} has data_offsets {offsets!r:.80}, expected [start, end] with "
                                  "0 <= start <= end")
        start, end = offsets
        if end > data_size:
            raise CheckpointError(f"{where} ends at byte {end:,} of the data, past its end ({data_size:,} bytes): "
                                  "the file is truncated or its header is wrong")
        numel = 1
        for n in shape:
            numel *= n
        nbytes = numel * DTYPES[dtype].itemsize
        if end - start != nbytes:
            raise CheckpointError(f"{where} holds {end - start:,} bytes, but shape {shape} of {dtype} needs {nbytes:,}")
        spans.append((start, end, key))
    position, previous = 0, None
    for start, end, key in sorted(spans):
        if start < position:
            raise CheckpointError(f"{name}: tensors {previous!r} and {key!r} overlap (bytes {start:,}-{position:,})")
        if start > position:
            raise CheckpointError(f"{name}: data bytes {position:,}-{start:,} belong to no tensor "
                                  "(safetensors data has no holes)")
        position, previous = end, key
    if position != data_size:
        raise CheckpointError(f"{name}: the last {data_size - position:,} data bytes belong to no tensor")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_tensor(file: BinaryIO, entry: dict, data_start: int, name: str | Path = "safetensors file") -> torch.Tensor:
    """Read one (already checked) entry's bytes from the file directly into a new tensor's memory."""
    tensor = torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]])
    start, end = entry["data_offsets"]
    file.seek(data_start + start)
    if end > start and file.readinto(tensor.reshape(-1).view(torch.uint8).numpy()) != end - start:
        raise CheckpointError(f"{name} ends before the last byte of a tensor (was it truncated while loading?)")
    return tensor


def file_header(path: str | Path) -> dict:
    """The checked header of one .safetensors file: {tensor name: {"dtype", "shape", "data_offsets"}}."""
    regular_file(path, "safetensors file")
    with open(path, "rb") as file:
        return read_header(file, path)[0]
