"""The GGUF container (llama.cpp's model file), read strictly and fast, without reading the tensor data.

A GGUF file, all little-endian (ggml's docs/gguf.md):

    "GGUF" | version u32 (2 or 3) | tensor_count u64 | kv_count u64
    kv_count  x  key: string | value_type u32 | value          (string = u64 length + UTF-8 bytes)
    tensor_count x  name: string | n_dims u32 | dims u64[n_dims] | ggml_type u32 | offset u64
    padding to `general.alignment` (default 32) | the tensor data, each tensor at data_start + offset

Dims are listed fastest-moving first (ggml's ne[0] is a row's length), so torch's shape is the reverse.
A tensor of a block-quantized type stores ne[0] / block_elements blocks of block_bytes bytes per row.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # version 1 counted with u32s and is long gone
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # ggml tensors have at most four dimensions

# ggml type id -> (name, elements per block, bytes per block); facts from ggml.h / gguf-py's constants.
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}

# metadata value type id -> struct format of one value (8 = string and 9 = array are read apart)
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


class GGUFError(ValueError):
    """A file that is not a well-formed GGUF, or holds something this package cannot read."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are and how to read them. `shape` is in torch order (GGUF dims reversed)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    type_name: str
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class GGUFFile:
    """A parsed GGUF header: metadata, the tensor table, and the file it came from."""

    path: Path
    version: int
    metadata: dict
    tensors: dict[str, TensorInfo]
    alignment: int
    data_start: int
    file_size: int = field(repr=False)

    def error(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {problem}")

    def tensor(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise self.error(f"no tensor named {name!r}")
        return self.tensors[name]

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 memory map: pages are read from disk only when touched."""
        info = self.tensor(name)
        if info.nbytes == 0:
            return np.empty(0, dtype=np.uint8)
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=info.offset, shape=(info.nbytes,))


class _Cursor:
    """Reads values one after another out of a buffer, and names the file and the part when it runs out."""

    def __init__(self, buffer, path: Path):
        self.buffer, self.path, self.pos, self.size = buffer, path, 0, len(buffer)

    def fail(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {problem}")

    def need(self, nbytes: int, what: str) -> None:
        if self.pos + nbytes > self.size:
            raise self.fail(f"file is truncated: it ends inside {what} (byte {self.pos}, {nbytes} more needed)")

    def scalar(self, fmt: str, what: str):
        width = struct.calcsize(fmt)
        self.need(width, what)
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += width
        return value

    def string(self, what: str) -> str:
        length = self.scalar("<Q", what)
        self.need(length, what)
        raw = self.buffer[self.pos:self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise self.fail(f"{what} is not valid UTF-8 ({err.reason} at byte {err.start})") from None

    def strings(self, count: int, what: str) -> list[str]:
        """Many strings in a row (a vocabulary of 262144 tokens): the loop kept tight on purpose."""
        buffer, pos, size, out = self.buffer, self.pos, self.size, []
        unpack = struct.Struct("<Q").unpack_from
        for index in range(count):
            if pos + 8 > size or pos + 8 + (length := unpack(buffer, pos)[0]) > size:
                self.pos = pos
                raise self.fail(f"file is truncated: it ends inside {what}, element {index}")
            try:
                out.append(buffer[pos + 8:pos + 8 + length].decode("utf-8"))
            except UnicodeDecodeError:
                raise self.fail(f"{what}, element {index} is not valid UTF-8") from None
            pos += 8 + length
        self.pos = pos
        return out

    def value(self, value_type: int, what: str):
        if value_type in SCALAR_FORMATS:
            return self.scalar(SCALAR_FORMATS[value_type], what)
        if value_type == STRING:
            return self.string(what)
        if value_type == ARRAY:
            element_type, count = self.scalar("<I", what), self.scalar("<Q", what)
            if element_type in SCALAR_FORMATS:  # fixed width: one numpy read, not count struct calls
                dtype = np.dtype(SCALAR_FORMATS[element_type])
                self.need(count * dtype.itemsize, what)
                values = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.pos).tolist()
                self.pos += count * dtype.itemsize
                return values
            if element_type == STRING:
                return self.strings(count, what)
            if element_type == ARRAY:
                return [self.value(ARRAY, f"{what}[{i}]") for i in range(count)]
            raise self.fail(f"{what} is an array of unknown value type {element_type}")
        raise self.fail(f"{what} has unknown value type {value_type}")


def _tensor_info(cursor: _Cursor, index: int) -> tuple[str, tuple[int, ...], int, int]:
    name = cursor.string(f"the name of tensor {index}")
    what = f"the tensor table entry of {name!r}"
    n_dims = cursor.scalar("<I", what)
    if not 1 <= n_dims <= MAX_DIMS:
        raise cursor.fail(f"tensor {name!r} has {n_dims} dimensions (ggml allows 1 to {MAX_DIMS})")
    dims = [cursor.scalar("<Q", what) for _ in range(n_dims)]
    ggml_type, offset = cursor.scalar("<I", what), cursor.scalar("<Q", what)
    return name, tuple(reversed(dims)), ggml_type, offset


def _byte_size(path: Path, name: str, shape: tuple[int, ...], ggml_type: int) -> tuple[str, int]:
    if ggml_type not in GGML_TYPES:
        raise GGUFError(f"{path}: tensor {name!r} has unknown ggml type {ggml_type}")
    type_name, block_elements, block_bytes = GGML_TYPES[ggml_type]
    row = shape[-1]  # ggml's ne[0]: blocks never straddle two rows
    if row % block_elements:
        raise GGUFError(f"{path}: tensor {name!r} of type {type_name} has rows of {row} elements, "
                        f"not a multiple of its block size {block_elements}")
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    return type_name, rows * (row // block_elements) * block_bytes


def _parse(buffer, path: Path, file_size: int) -> GGUFFile:
    cursor = _Cursor(buffer, path)
    cursor.need(4, "the magic number")
    magic = bytes(buffer[:4])
    if magic != MAGIC:
        raise cursor.fail(f"not a GGUF file: it starts with {magic!r}, not {MAGIC!r}")
    cursor.pos = 4
    version = cursor.scalar("<I", "the header")
    if version not in SUPPORTED_VERSIONS:
        hint = " (a big-endian file?)" if version >= 1 << 16 else ""
        raise cursor.fail(f"unsupported GGUF version {version}{hint}; this reader handles versions 2 and 3")
    tensor_count, kv_count = cursor.scalar("<Q", "the header"), cursor.scalar("<Q", "the header")

    metadata: dict = {}
    for index in range(kv_count):
        key = cursor.string(f"metadata key {index}")
        if key in metadata:
            raise cursor.fail(f"metadata key {key!r} appears twice")
        metadata[key] = cursor.value(cursor.scalar("<I", f"metadata {key!r}"), f"metadata {key!r}")

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment & (alignment - 1):
        raise cursor.fail(f"general.alignment must be a positive power of two, not {alignment!r}")

    entries = [_tensor_info(cursor, index) for index in range(tensor_count)]
    data_start = -(-cursor.pos // alignment) * alignment  # round up to the alignment
    tensors: dict[str, TensorInfo] = {}
    for name, shape, ggml_type, offset in entries:
        if name in tensors:
            raise cursor.fail(f"tensor {name!r} appears twice in the tensor table")
        type_name, nbytes = _byte_size(path, name, shape, ggml_type)
        if offset % alignment:
            raise cursor.fail(f"tensor {name!r} starts at data offset {offset}, not a multiple of {alignment}")
        start = data_start + offset
        if start + nbytes > file_size:
            raise cursor.fail(f"tensor {name!r} ({type_name}, {nbytes} bytes at byte {start}) runs past the end "
                              f"of the file ({file_size} bytes): the file is truncated")
        tensors[name] = TensorInfo(name, shape, ggml_type, type_name, start, nbytes)
    return GGUFFile(path, version, metadata, tensors, alignment, data_start, file_size)


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header (metadata and tensor table); the tensor data stays on disk."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    with open(path, "rb") as file:
        file_size = path.stat().st_size
        if file_size == 0:
            raise GGUFError(f"{path}: file is empty, not a GGUF file")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            return _parse(buffer, path, file_size)
