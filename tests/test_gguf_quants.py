"""Dequantization of every supported ggml type equals the `gguf` library's, on files its writer made."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gguf_helpers import Q, library_dequantize, write_gguf
from paligemma import gguf_quants
from paligemma.gguf_file import GGUFError, read_gguf
from paligemma.gguf_quants import bits_per_weight, dequantize

SUPPORTED = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]


@pytest.fixture(scope="module")
def every_type(tmp_path_factory):
    """One (6, 512) tensor of each supported type and a 3-D one; values spread like real weights, with outliers."""
    rng = np.random.default_rng(1)
    values = rng.standard_normal((6, 512)) * 0.05
    values[0, :7] = [3.0, -2.5, 0.0, 1e-4, -1e-4, 0.5, 65000.0 / 1e4]
    tensors = {f"w.{q.name}": (values, q) for q in SUPPORTED}
    tensors["w.3d"] = (rng.standard_normal((2, 3, 256)), Q.Q4_K)
    return write_gguf(tmp_path_factory.mktemp("quants") / "types.gguf", "gemma", {}, tensors)


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda q: q.name)
def test_equals_the_library(every_type, qtype):
    name = f"w.{qtype.name}"
    ours = dequantize(read_gguf(every_type), name)
    theirs = torch.from_numpy(library_dequantize(every_type, name))
    assert ours.dtype == torch.float32 and ours.shape == (6, 512) == theirs.shape
    assert torch.equal(ours, theirs)  # bit for bit: the same float32 operations in the same order


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q6_K, Q.F16], ids=lambda q: q.name)
def test_chunked_decoding_equals_one_pass(every_type, qtype, monkeypatch):
    name = f"w.{qtype.name}"
    whole = dequantize(read_gguf(every_type), name)
    monkeypatch.setattr(gguf_quants, "CHUNK_WEIGHTS", 700)  # 700 weights: chunks that end mid-row
    assert torch.equal(dequantize(read_gguf(every_type), name), whole)


def test_three_dimensional_tensor_is_in_torch_order(every_type):
    ours = dequantize(read_gguf(every_type), "w.3d")
    assert ours.shape == (2, 3, 256)
    assert torch.equal(ours, torch.from_numpy(library_dequantize(every_type, "w.3d")))


def test_requested_dtype_is_the_rounded_float32(every_type):
    gguf = read_gguf(every_type)
    ours = dequantize(gguf, "w.Q4_K", dtype=torch.bfloat16, device="cpu")
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, dequantize(gguf, "w.Q4_K").to(torch.bfloat16))


def test_float32_values_survive_exactly(every_type):
    rng = np.random.default_rng(1)
    values = rng.standard_normal((6, 512)) * 0.05
    values[0, :7] = [3.0, -2.5, 0.0, 1e-4, -1e-4, 0.5, 65000.0 / 1e4]
    assert torch.equal(dequantize(read_gguf(every_type), "w.F32"), torch.from_numpy(values.astype(np.float32)))


def test_quantization_error_is_small_for_the_library_quantized_types(every_type):
    """Sanity of the round trip: every weight within one quantization step d = block max / 127, 16 or 8."""
    rng = np.random.default_rng(1)
    values = torch.from_numpy(rng.standard_normal((6, 512)) * 0.05).float()[1:]  # row 0 holds outliers
    gguf = read_gguf(every_type)
    for qtype, bound in [(Q.Q8_0, 1 / 127), (Q.Q5_0, 1 / 16), (Q.Q4_0, 1 / 8)]:
        error = (dequantize(gguf, f"w.{qtype.name}")[1:] - values).abs().max() / values.abs().max()
        assert 0 < error < bound, (qtype.name, error)


def test_unsupported_type_names_the_tensor_and_type(tmp_path):
    path = write_gguf(tmp_path / "q4_1.gguf", "gemma", {}, {"blk.0.attn_q.weight": (np.ones((2, 32)), Q.Q4_1)})
    with pytest.raises(GGUFError, match=r"tensor 'blk.0.attn_q.weight' has ggml type Q4_1, which this package "
                                        r"cannot dequantize \(supported: F32, F16, BF16, Q8_0"):
        dequantize(read_gguf(path), "blk.0.attn_q.weight")


def test_non_finite_scale_is_an_error(tmp_path):
    path = write_gguf(tmp_path / "nan.gguf", "gemma", {}, {"w": (np.ones((1, 32)), Q.Q8_0)})
    data = bytearray(path.read_bytes())
    start = read_gguf(path).tensors["w"].offset
    data[start:start + 2] = np.float16(np.inf).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="tensor 'w' .Q8_0. holds non-finite values"):
        dequantize(read_gguf(path), "w")


@pytest.mark.parametrize("type_name, bits", [("Q8_0", 8.5), ("Q4_0", 4.5), ("Q5_0", 5.5), ("Q4_K", 4.5),
                                             ("Q5_K", 5.5), ("Q6_K", 6.5625), ("F16", 16), ("F32", 32)])
def test_bits_per_weight(type_name, bits):
    assert bits_per_weight(type_name) == bits
