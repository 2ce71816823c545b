"""Dequantizing GGUF tensors in torch, block by block, from ggml's block layouts (ggml-common.h).

Every block-quantized type cuts a row into blocks of 32 (or "super-blocks" of 256) weights that share
a float16 scale `d` (and, for the K types with a minimum, `dmin`): each weight is w = d * q (- m).
Bytes per block / weights per block = bits per weight, e.g. Q8_0: 34 bytes / 32 = 8.5 bits.

The results equal the `gguf` library's `gguf.quants.dequantize` bit for bit (tests/test_gguf_quants.py),
and a tensor is decoded a chunk of blocks at a time straight into its output, so the peak memory is the
output tensor plus a few MB, whatever the tensor's size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .gguf_file import GGML_TYPES, GGUFError, GGUFFile

CHUNK_WEIGHTS = 1 << 20  # weights decoded per step: ~4 MB of float32 and a few times that in temporaries


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """(n, 2) uint8 holding float16 scales -> (n, 1) float32."""
    return raw.contiguous().view(torch.float16).float()


def _nibbles(raw: torch.Tensor) -> torch.Tensor:
    """(n, k) uint8 -> (n, 2, k): the low 4 bits of each byte, then the high 4 bits."""
    return torch.stack([raw & 0x0F, raw >> 4], dim=1)


def _bits(raw: torch.Tensor, count: int, step: int = 1) -> torch.Tensor:
    """(n, k) uint8 -> (n, count, k): bit planes `step * i` (width `step`) of every byte."""
    shifts = torch.arange(0, count * step, step, dtype=torch.uint8, device=raw.device).view(1, count, 1)
    return (raw.unsqueeze(1) >> shifts) & ((1 << step) - 1)


def q8_0(blocks: torch.Tensor) -> torch.Tensor:
    """34 bytes: d (f16), 32 x int8 q.  w = d * q"""
    d = _f16(blocks[:, :2])
    q = blocks[:, 2:].contiguous().view(torch.int8)
    return q.float() * d


def q4_0(blocks: torch.Tensor) -> torch.Tensor:
    """18 bytes: d, 16 bytes of 4-bit q (weight j in the low nibble of byte j, j + 16 in its high).  w = d (q - 8)"""
    d = _f16(blocks[:, :2])
    q = _nibbles(blocks[:, 2:]).flatten(1).to(torch.int16) - 8  # (n, 32)
    return d * q.float()


def q5_0(blocks: torch.Tensor) -> torch.Tensor:
    """22 bytes: d, 32 high bits (a little-endian u32), 16 bytes of low nibbles as Q4_0.  w = d (q - 16)"""
    d = _f16(blocks[:, :2])
    high = _bits(blocks[:, 2:6], 8).transpose(1, 2).flatten(1)  # (n, 32): bit j of the u32 is weight j's 5th bit
    q = (_nibbles(blocks[:, 6:]).flatten(1) | (high << 4)).to(torch.int16) - 16
    return d * q.float()


def _k_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes -> 8 six-bit scales and 8 six-bit mins (Q4_K / Q5_K). Bytes 0-3 hold scales 0-3 (low 6 bits),
    4-7 mins 0-3; bytes 8-11 hold the low 4 bits of scales / mins 4-7, whose top 2 bits sit in bytes 0-7's top bits."""
    a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat([a & 63, (c & 0x0F) | ((a >> 6) << 4)], dim=1)
    mins = torch.cat([b & 63, (c >> 4) | ((b >> 6) << 4)], dim=1)
    return scales.float(), mins.float()  # (n, 8) each


def q4_k(blocks: torch.Tensor) -> torch.Tensor:
    """144 bytes for 256 weights: d, dmin, 12 bytes of scales/mins, 128 bytes of 4-bit q. Sub-block s of 32
    weights: w = (d * scale_s) q - dmin * min_s; bytes 32i..32i+31 hold sub-block 2i (low) and 2i+1 (high)."""
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    scales, mins = _k_scales(blocks[:, 4:16])
    q = _nibbles(blocks[:, 16:].reshape(-1, 4, 32).flatten(0, 1)).reshape(-1, 8, 32)  # (n, 8 sub-blocks, 32)
    return ((d * scales).unsqueeze(-1) * q.float() - (dmin * mins).unsqueeze(-1)).flatten(1)


def q5_k(blocks: torch.Tensor) -> torch.Tensor:
    """176 bytes: as Q4_K, plus 32 bytes whose bit s of byte l is the 5th bit of weight l of sub-block s."""
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    scales, mins = _k_scales(blocks[:, 4:16])
    high = _bits(blocks[:, 16:48], 8)  # (n, 8, 32)
    low = _nibbles(blocks[:, 48:].reshape(-1, 4, 32).flatten(0, 1)).reshape(-1, 8, 32)
    q = (low | (high << 4)).float()
    return ((d * scales).unsqueeze(-1) * q - (dmin * mins).unsqueeze(-1)).flatten(1)


def q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """210 bytes for 256 weights: 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 scales, d.
    Each half of 128 weights: quarter k (32 weights) takes nibbles of ql[0:32] / ql[32:64] and bits 2k of qh.
    w = d * scale_g * (q - 32), one scale per 16 weights."""
    n = blocks.shape[0]
    ql = blocks[:, :128].reshape(n * 2, 64)
    low = _nibbles(ql).reshape(n, 2, 4, 32)  # quarters: low(0:32), low(32:64), high(0:32), high(32:64)
    high = _bits(blocks[:, 128:192].reshape(n * 2, 32), 4, step=2).reshape(n, 2, 4, 32)
    q = ((low | (high << 4)).to(torch.int16) - 32).float().reshape(n, 16, 16)
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()
    d = _f16(blocks[:, 208:210])
    return ((d * scales).unsqueeze(-1) * q).flatten(1)


def _plain(dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda raw: raw.contiguous().view(dtype).float()


DEQUANTIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "F32": _plain(torch.float32), "F16": _plain(torch.float16), "BF16": _plain(torch.bfloat16),
    "Q8_0": q8_0, "Q4_0": q4_0, "Q5_0": q5_0, "Q4_K": q4_k, "Q5_K": q5_k, "Q6_K": q6_k,
}


def bits_per_weight(type_name: str) -> float:
    """Storage cost of one weight of a ggml type, scales included (e.g. Q4_K: 144 * 8 / 256 = 4.5)."""
    for name, block_weights, block_bytes in GGML_TYPES.values():
        if name == type_name:
            return block_bytes * 8 / block_weights
    raise ValueError(f"unknown ggml type {type_name!r}")


def dequantize(gguf: GGUFFile, name: str, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
    """One tensor of the file as a `dtype` tensor on `device`, in torch order (the GGUF dims reversed)."""
    info = gguf.tensor(name)
    if info.type_name not in DEQUANTIZERS:
        raise gguf.error(f"tensor {name!r} has ggml type {info.type_name}, which this package cannot dequantize "
                         f"(supported: {', '.join(DEQUANTIZERS)})")
    decode = DEQUANTIZERS[info.type_name]
    _, block_weights, block_bytes = GGML_TYPES[info.ggml_type]
    raw = gguf.raw(name)
    out = torch.empty(info.n_elements, dtype=dtype, device=device)
    step = max(1, CHUNK_WEIGHTS // block_weights)  # blocks per chunk
    n_blocks = info.nbytes // block_bytes
    for first in range(0, n_blocks, step):
        last = min(first + step, n_blocks)
        chunk = torch.from_numpy(np.array(raw[first * block_bytes:last * block_bytes]))  # a copy of a few MB
        blocks = chunk.to(out.device).view(last - first, block_bytes)
        values = decode(blocks)  # (blocks, weights per block), float32
        if not torch.isfinite(values).all():
            raise gguf.error(f"tensor {name!r} ({info.type_name}) holds non-finite values in blocks {first}-{last - 1}")
        out[first * block_weights:last * block_weights] = values.flatten()
    return out.view(info.shape)
