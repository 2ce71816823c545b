"""GGUF container parsing: equal to the `gguf` library's GGUFReader on files its writer made, and a clear
GGUFError (file and problem named) for every kind of malformed file."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from gguf_helpers import Q, gguf, gguf_string, kv_bytes, raw_gguf, tensor_info_bytes, write_gguf
from paligemma.gguf_file import GGUFError, read_gguf

V = gguf.GGUFValueType

EVERY_VALUE_TYPE = {
    "test.u8": (200, V.UINT8), "test.i8": (-100, V.INT8), "test.u16": (60000, V.UINT16), "test.i16": (-30000, V.INT16),
    "test.u32": (4_000_000_000, V.UINT32), "test.i32": (-2_000_000_000, V.INT32), "test.f32": (0.1, V.FLOAT32),
    "test.bool": (True, V.BOOL), "test.false": (False, V.BOOL), "test.string": ("héllo ▁ 東京 😀", V.STRING),
    "test.u64": (2**63 + 5, V.UINT64), "test.i64": (-(2**62), V.INT64), "test.f64": (1e-300, V.FLOAT64),
    "test.empty_string": ("", V.STRING),
    "test.strings": (["a", "", "  ", "\n", "<0x0A>", "▁the", "😀"], V.ARRAY, V.STRING),
    "test.floats": ([-1000.0, 0.0, 0.5], V.ARRAY, V.FLOAT32),
    "test.ints": ([1, -2, 3], V.ARRAY, V.INT32),
    "test.u8s": ([0, 255], V.ARRAY, V.UINT8),
    "test.bools": ([True, False, True], V.ARRAY, V.BOOL),
    "test.f64s": ([1.5, -2.25], V.ARRAY, V.FLOAT64),
}


@pytest.fixture(scope="module")
def library_written(tmp_path_factory):
    rng = np.random.default_rng(0)
    tensors = {"a.weight": (rng.standard_normal((3, 64)), Q.Q8_0), "b.weight": (rng.standard_normal(7), Q.F32),
               "c.weight": (rng.standard_normal((2, 3, 256)), Q.Q4_K), "d.weight": (rng.standard_normal((5, 4)), Q.F16)}
    return write_gguf(tmp_path_factory.mktemp("gguf") / "every_type.gguf", "gemma3", EVERY_VALUE_TYPE, tensors)


def test_metadata_equals_gguf_reader(library_written):
    ours = read_gguf(library_written)
    reader = gguf.GGUFReader(str(library_written))
    theirs = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    assert ours.metadata == theirs
    assert ours.metadata["general.architecture"] == "gemma3"
    assert ours.metadata["test.strings"] == ["a", "", "  ", "\n", "<0x0A>", "▁the", "😀"]
    assert ours.metadata["test.f32"] == pytest.approx(0.1) and ours.metadata["test.u64"] == 2**63 + 5
    assert ours.version == reader.fields["GGUF.version"].contents() == 3


def test_tensor_table_equals_gguf_reader(library_written):
    ours = read_gguf(library_written)
    reader = gguf.GGUFReader(str(library_written))
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    for tensor in reader.tensors:
        info = ours.tensors[tensor.name]
        assert info.shape == tuple(reversed(tensor.shape.tolist()))  # GGUF lists dims fastest first
        assert (info.ggml_type, info.type_name) == (int(tensor.tensor_type), tensor.tensor_type.name)
        assert (info.offset, info.nbytes, info.n_elements) == (tensor.data_offset, tensor.n_bytes, tensor.n_elements)
        assert np.array_equal(np.asarray(ours.raw(tensor.name)), tensor.data.reshape(-1).view(np.uint8))
    assert ours.data_start == reader.data_offset and ours.alignment == 32


def test_raw_is_a_memory_map_of_the_file(library_written):
    raw = read_gguf(library_written).raw("c.weight")
    assert isinstance(raw, np.memmap) and raw.dtype == np.uint8 and not raw.flags.writeable
    assert raw.shape == (2 * 3 * 144,)


def test_version_2_and_custom_alignment(tmp_path):
    kvs = [kv_bytes("general.architecture", 8, gguf_string("gemma")),
           kv_bytes("general.alignment", 4, struct.pack("<I", 64))]
    data = np.arange(4, dtype=np.float32).tobytes()
    path = raw_gguf(tmp_path / "v2.gguf", kvs, [tensor_info_bytes("w", (4,), 0, 0)], data, version=2, alignment=64)
    parsed = read_gguf(path)
    assert parsed.version == 2 and parsed.alignment == 64 and parsed.data_start % 64 == 0
    assert np.frombuffer(parsed.raw("w").tobytes(), dtype=np.float32).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_nested_arrays(tmp_path):
    inner = struct.pack("<IQ", 4, 2) + struct.pack("<2I", 7, 8)
    kvs = [kv_bytes("x.nested", 9, struct.pack("<IQ", 9, 2) + inner + inner)]
    assert read_gguf(raw_gguf(tmp_path / "nested.gguf", kvs, [])).metadata["x.nested"] == [[7, 8], [7, 8]]


def test_parsing_the_vocabulary_is_fast(tmp_path):
    """262144 token strings, as in the real file, in well under the 17 s GGUFReader takes on it."""
    import time

    tokens = [f"▁token{i}" for i in range(262144)]
    count = struct.pack("<IQ", 8, len(tokens))
    kvs = [kv_bytes("tokenizer.ggml.tokens", 9, count + b"".join(gguf_string(t) for t in tokens))]
    path = raw_gguf(tmp_path / "vocab.gguf", kvs, [])
    start = time.perf_counter()
    assert read_gguf(path).metadata["tokenizer.ggml.tokens"] == tokens
    assert time.perf_counter() - start < 5  # ~0.3 s on a quiet core; generous for a busy CI machine


# ---- malformed files: each a GGUFError naming the file and the problem ----------------------------------------

def _one_tensor_file(tmp_path, **overrides):
    parts = dict(kvs=[kv_bytes("general.architecture", 8, gguf_string("gemma"))],
                 infos=[tensor_info_bytes("w.weight", (2, 32), 8, 0)], data=bytes(2 * 34))
    parts.update(overrides)
    return raw_gguf(tmp_path / "bad.gguf", **parts)


def _assert_error(path, *fragments):
    with pytest.raises(GGUFError) as caught:
        read_gguf(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_well_formed_baseline_parses(tmp_path):
    assert read_gguf(_one_tensor_file(tmp_path)).tensors["w.weight"].type_name == "Q8_0"


def test_corrupt_magic(tmp_path):
    _assert_error(_one_tensor_file(tmp_path, magic=b"GGML"), "not a GGUF file", "b'GGML'")


def test_empty_file(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    _assert_error(tmp_path / "empty.gguf", "file is empty")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_gguf(tmp_path / "nope.gguf")


@pytest.mark.parametrize("version", [1, 4, 3 << 24])
def test_unsupported_version(tmp_path, version):
    message = _assert_error(_one_tensor_file(tmp_path, version=version), f"unsupported GGUF version {version}")
    assert ("big-endian" in message) == (version > 1 << 16)


# byte offsets in _one_tensor_file: header 0-24, key 24-52, value type 52-56, value 56-69, tensor name 69-85,
# n_dims, dims, type and offset 85-117
@pytest.mark.parametrize("cut, part", [(10, "the header"), (30, "metadata key 0"),
                                       (54, "metadata 'general.architecture'"),
                                       (60, "metadata 'general.architecture'"), (75, "the name of tensor 0"),
                                       (90, "the tensor table entry of 'w.weight'"),
                                       (110, "the tensor table entry of 'w.weight'")])
def test_truncated_header(tmp_path, cut, part):
    path = _one_tensor_file(tmp_path)
    path.write_bytes(path.read_bytes()[:cut])
    _assert_error(path, "file is truncated", part)


def test_tensor_data_past_the_end_of_the_file(tmp_path):
    path = _one_tensor_file(tmp_path, data=bytes(2 * 34 - 1))
    _assert_error(path, "tensor 'w.weight'", "runs past the end of the file", "truncated")


def test_duplicate_tensor_names(tmp_path):
    infos = [tensor_info_bytes("w.weight", (32,), 0, 0), tensor_info_bytes("w.weight", (32,), 0, 128)]
    _assert_error(_one_tensor_file(tmp_path, infos=infos, data=bytes(256)), "'w.weight' appears twice")


def test_duplicate_metadata_keys(tmp_path):
    kv = kv_bytes("general.architecture", 8, gguf_string("gemma"))
    _assert_error(_one_tensor_file(tmp_path, kvs=[kv, kv]), "'general.architecture' appears twice")


def test_unknown_value_type(tmp_path):
    kvs = [kv_bytes("x.odd", 13, b"\0" * 8)]
    _assert_error(_one_tensor_file(tmp_path, kvs=kvs), "metadata 'x.odd' has unknown value type 13")


def test_unknown_array_element_type(tmp_path):
    kvs = [kv_bytes("x.odd", 9, struct.pack("<IQ", 42, 1))]
    _assert_error(_one_tensor_file(tmp_path, kvs=kvs), "array of unknown value type 42")


def test_unknown_ggml_type(tmp_path):
    infos = [tensor_info_bytes("w.weight", (2, 32), 99, 0)]
    _assert_error(_one_tensor_file(tmp_path, infos=infos), "tensor 'w.weight' has unknown ggml type 99")


def test_row_not_a_whole_number_of_blocks(tmp_path):
    infos = [tensor_info_bytes("w.weight", (2, 40), int(Q.Q8_0), 0)]
    _assert_error(_one_tensor_file(tmp_path, infos=infos), "'w.weight' of type Q8_0 has rows of 40", "block size 32")


def test_misaligned_tensor_offset(tmp_path):
    infos = [tensor_info_bytes("w.weight", (2, 32), 8, 4)]
    _assert_error(_one_tensor_file(tmp_path, infos=infos, data=bytes(128)), "data offset 4, not a multiple of 32")


def test_too_many_dimensions(tmp_path):
    infos = [tensor_info_bytes("w.weight", (1, 1, 1, 1, 32), 0, 0)]
    _assert_error(_one_tensor_file(tmp_path, infos=infos), "'w.weight' has 5 dimensions")


def test_bad_alignment(tmp_path):
    kvs = [kv_bytes("general.alignment", 4, struct.pack("<I", 48))]
    _assert_error(_one_tensor_file(tmp_path, kvs=kvs), "general.alignment must be a positive power of two, not 48")


def test_invalid_utf8(tmp_path):
    kvs = [kv_bytes("x.name", 8, gguf_string(b"\xff\xfe"))]
    _assert_error(_one_tensor_file(tmp_path, kvs=kvs), "metadata 'x.name' is not valid UTF-8")


def test_tensor_count_larger_than_the_table(tmp_path):
    path = _one_tensor_file(tmp_path, tensor_count=2)
    path.write_bytes(path.read_bytes()[:117])  # the header and one table entry, nothing after
    _assert_error(path, "file is truncated", "the name of tensor 1")


def test_unknown_tensor_name_is_named(tmp_path):
    parsed = read_gguf(_one_tensor_file(tmp_path))
    with pytest.raises(GGUFError, match="no tensor named 'nope'"):
        parsed.raw("nope")
