"""Malformed checkpoint files: each is a CheckpointError naming the file and the problem, never a hang or a
traceback from deep inside json, struct or torch. The same bad files are refused by the safetensors library."""

import json
import os
import shutil
import struct

import pytest
import torch
from safetensors import safe_open

from conftest import fifo_guard, make_gemma, make_paligemma, tiny_tokenizer
from paligemma import GemmaForCausalLM, PaliGemmaProcessor
from paligemma.files import CheckpointError, read_json_object
from paligemma.weights import file_header, save_checkpoint

F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def safetensors_bytes(header, data=b"\0" * 8, length=None) -> bytes:
    header = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(header) if length is None else length) + header + data


BAD_SAFETENSORS = [  # (file contents, words of the message)
    (b"", "0 bytes long: too short"),
    (b"\x10\0\0", "3 bytes long: too short"),
    (safetensors_bytes({"w": F32}, length=1000), "header is 1,000 bytes long but the file holds"),
    (safetensors_bytes(b"not json at all"), "header is not valid JSON"),
    (safetensors_bytes(b"\xff\xfe{}"), "header is not valid JSON"),
    (safetensors_bytes([F32]), "header is a JSON array, expected an object"),
    (safetensors_bytes({"__metadata__": [1], "w": F32}), "__metadata__ must be an object of strings"),
    (safetensors_bytes({"__metadata__": {"format": 1}, "w": F32}), "__metadata__ must be an object of strings"),
    (safetensors_bytes({"w": "F32"}), "tensor 'w' must be an object with dtype, shape and data_offsets"),
    (safetensors_bytes({"w": {"dtype": "F32", "shape": [2]}}), "must be an object with dtype, shape and data_offsets"),
    (safetensors_bytes({"w": {**F32, "dtype": "F99"}}), "tensor 'w' has dtype 'F99'; supported: F64"),
    (safetensors_bytes({"w": {**F32, "dtype": 4}}), "tensor 'w' has dtype 4"),
    (safetensors_bytes({"w": {**F32, "shape": "2"}}), "has shape '2', expected a list of non-negative integers"),
    (safetensors_bytes({"w": {**F32, "shape": [-2]}}), "has shape [-2]"),
    (safetensors_bytes({"w": {**F32, "shape": [2.0]}}), "has shape [2.0]"),
    (safetensors_bytes({"w": {**F32, "shape": [True, 2]}}), "has shape [True, 2]"),
    (safetensors_bytes({"w": {**F32, "data_offsets": [0]}}), "has data_offsets [0], expected [start, end]"),
    (safetensors_bytes({"w": {**F32, "data_offsets": [8, 0]}}), "has data_offsets [8, 0]"),
    (safetensors_bytes({"w": {**F32, "data_offsets": [-8, 0]}}), "has data_offsets [-8, 0]"),
    (safetensors_bytes({"w": {**F32, "data_offsets": ["0", "8"]}}), "has data_offsets ['0', '8']"),
    (safetensors_bytes({"w": {**F32, "data_offsets": [0, 800]}}), "ends at byte 800 of the data, past its end"),
    (safetensors_bytes({"w": {**F32, "shape": [3]}}), "holds 8 bytes, but shape [3] of F32 needs 12"),
    (safetensors_bytes({"w": F32, "v": F32}), "tensors 'v' and 'w' overlap"),
    (safetensors_bytes({"w": {**F32, "shape": [1], "data_offsets": [4, 8]}}), "data bytes 0-4 belong to no tensor"),
    (safetensors_bytes({"w": {**F32, "shape": [1], "data_offsets": [0, 4]}}), "the last 4 data bytes belong to no"),
]


@pytest.mark.parametrize("contents, words", BAD_SAFETENSORS)
def test_malformed_safetensors_file(tmp_path, contents, words):
    path = tmp_path / "model.safetensors"
    path.write_bytes(contents)
    with pytest.raises(CheckpointError, match="^" + str(path)) as error:
        file_header(path)
    assert words in str(error.value)
    with pytest.raises(Exception):  # the reference parser refuses it too: we are not stricter than the format
        safe_open(str(path), "pt")


@pytest.fixture
def gemma_folder(tmp_path):
    folder = tmp_path / "gemma"
    make_gemma().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("contents, words", BAD_SAFETENSORS[:4])
def test_from_pretrained_names_the_malformed_file(gemma_folder, contents, words):
    (gemma_folder / "model.safetensors").write_bytes(contents)
    with pytest.raises(CheckpointError, match=str(gemma_folder / "model.safetensors")) as error:
        GemmaForCausalLM.from_pretrained(gemma_folder)
    assert words in str(error.value)


def test_header_length_above_the_format_limit(tmp_path):
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as file:  # a sparse 200 MB file: nothing is written but the length
        file.write(struct.pack("<Q", 150_000_000))
        file.truncate(200_000_000)
    with pytest.raises(CheckpointError, match="150,000,000-byte header, more than the format allows"):
        file_header(path)


def test_files_the_safetensors_library_writes_still_parse(tmp_path):
    from safetensors.torch import save_file
    tensors = {"empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5), "ids": torch.arange(5),
               "mask": torch.tensor([True, False]), "half": torch.ones(3, 2, dtype=torch.bfloat16)}
    save_file(tensors, tmp_path / "t.safetensors", metadata={"format": "pt"})
    header = file_header(tmp_path / "t.safetensors")
    with safe_open(str(tmp_path / "t.safetensors"), "pt") as reference:
        assert set(header) == set(reference.keys())
        for key in header:
            assert header[key]["shape"] == list(reference.get_slice(key).get_shape())


@pytest.fixture
def sharded_folder(tmp_path):
    folder = tmp_path / "sharded"
    make_gemma().save_pretrained(folder, max_shard_size=10_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    (folder / "a_folder").mkdir()
    return folder, index


def write_index(folder, index):
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def first_shard(index):
    return sorted(index["weight_map"].values())[0]


def with_shard(index, shard):
    key = sorted(index["weight_map"])[0]
    return {**index, "weight_map": {**index["weight_map"], key: shard}}


BAD_INDEXES = [  # (index contents: a function of the good index, or bytes; words of the message)
    (b"{not json", "is not valid JSON (Expecting property name"),
    (b"[]", "holds a JSON array, expected an object"),
    (b"\x89PNG\r\n", "is not UTF-8 text"),
    (lambda index: {"metadata": index["metadata"]}, 'has no "weight_map" object'),
    (lambda index: {"weight_map": list(index["weight_map"])}, 'has no "weight_map" object'),
    (lambda index: with_shard(index, 7), "expected a file name"),
    (lambda index: with_shard(index, "/etc/passwd"), "'/etc/passwd'"),
    (lambda index: with_shard(index, "../gemma/model.safetensors"), "not an absolute path or one with '..'"),
    (lambda index: with_shard(index, "sub/../../x.safetensors"), "not an absolute path or one with '..'"),
    (lambda index: with_shard(index, ""), "must be a file name inside the checkpoint folder"),
    (lambda index: with_shard(index, "model-99999-of-99999.safetensors"), "names the shard model-99999-of-99999"),
    (lambda index: with_shard(index, "."), "must be a file name inside the checkpoint folder"),
    (lambda index: with_shard(index, "a_folder"), "shard {folder}/a_folder is a folder"),
    (lambda index: {**index, "weight_map": {**index["weight_map"], "model.extra.weight": first_shard(index)}},
     "places tensor 'model.extra.weight' in {first}, which does not hold it"),
]


@pytest.mark.parametrize("make_index, words", BAD_INDEXES)
def test_malformed_index(sharded_folder, make_index, words):
    folder, index = sharded_folder
    if isinstance(make_index, bytes):
        (folder / "model.safetensors.index.json").write_bytes(make_index)
    else:
        write_index(folder, make_index(index))
    with pytest.raises(CheckpointError, match="model.safetensors.index.json") as error:
        GemmaForCausalLM.from_pretrained(folder)
    assert words.format(folder=folder, first=first_shard(index)) in str(error.value)


def test_shard_in_a_subfolder_and_symlinked_shards_load(sharded_folder, tmp_path):
    """Hub caches link every file to a blob elsewhere: a link to a regular file is fine."""
    folder, index = sharded_folder
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for shard in set(index["weight_map"].values()):
        shutil.move(folder / shard, blobs / shard)
        (folder / shard).symlink_to(blobs / shard)
    first = first_shard(index)
    (folder / "sub").mkdir()
    shutil.copy(blobs / first, folder / "sub" / first)
    write_index(folder, {**index, "weight_map": {k: f"sub/{v}" if v == first else v
                                                 for k, v in index["weight_map"].items()}})
    loaded = GemmaForCausalLM.from_pretrained(folder)
    torch.testing.assert_close(loaded.state_dict(), make_gemma().state_dict())


@pytest.mark.parametrize("name", ["model.safetensors", "shard", "model.safetensors.index.json", "config.json",
                                  "tokenizer.json"])
def test_fifo_instead_of_a_file_is_refused_without_hanging(sharded_folder, gemma_folder, name):
    folder, index = sharded_folder if name in ("shard", "model.safetensors.index.json") else (gemma_folder, None)
    target = folder / (first_shard(index) if name == "shard" else name)
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    with fifo_guard(target), pytest.raises(CheckpointError, match=f"{target} is not a regular file"):
        if name == "tokenizer.json":
            PaliGemmaProcessor.from_pretrained(folder)
        elif name == "config.json":
            read_json_object(target, "config file")
        else:
            GemmaForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("contents, words", [
    (b"{\"vocab_size\": 97,", "config file {path} is not valid JSON (Expecting property name"),
    (b"[1, 2]", "config file {path} holds a JSON array, expected an object"),
    (b"\"gemma\"", "config file {path} holds a JSON string"),
    (b"null", "config file {path} holds a JSON null"),
    (b"\xff\xff\xff", "config file {path} is not UTF-8 text"),
    (b"[" * 100_000, "config file {path} is not usable JSON (nested too deeply)"),
])
def test_read_json_object_names_the_file(tmp_path, contents, words):
    path = tmp_path / "config.json"
    path.write_bytes(contents)
    with pytest.raises(CheckpointError) as error:
        read_json_object(path, "config file")
    assert words.format(path=path) in str(error.value)
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(CheckpointError, match="folder.json is a folder"):
        read_json_object(tmp_path / "folder.json", "config file")
    with pytest.raises(FileNotFoundError, match="config file .*missing.json does not exist"):
        read_json_object(tmp_path / "missing.json", "config file")


@pytest.fixture
def paligemma_folder(tmp_path):
    folder = tmp_path / "paligemma"
    make_paligemma().save_pretrained(folder)
    tiny_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize("contents, words", [
    (b"", "not one the tokenizers library can read"),
    (b"{}", "not one the tokenizers library can read"),
    (b'{"model": {"type": "Nonsense"}}', "not one the tokenizers library can read"),
])
def test_processor_refuses_a_broken_tokenizer_json(paligemma_folder, contents, words):
    (paligemma_folder / "tokenizer.json").write_bytes(contents)
    with pytest.raises(CheckpointError, match=f"tokenizer file {paligemma_folder / 'tokenizer.json'} is {words}"):
        PaliGemmaProcessor.from_pretrained(paligemma_folder)


def test_processor_names_a_broken_config_json(paligemma_folder):
    (paligemma_folder / "config.json").write_text("[]")
    with pytest.raises(CheckpointError, match=f"config file {paligemma_folder / 'config.json'} holds a JSON array"):
        PaliGemmaProcessor.from_pretrained(paligemma_folder)


def saved_gemma_with(folder, key, tensor):
    model = make_gemma()
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state[key] = tensor
    save_checkpoint(state, model.config.to_hf_dict(), folder)


def test_integer_tensor_where_a_float_parameter_belongs(tmp_path):
    saved_gemma_with(tmp_path, "model.norm.weight", torch.zeros(32, dtype=torch.int64))
    with pytest.raises(CheckpointError, match=r"dtype mismatches \(floating-point tensors need floating-point "
                                              r"data\): model\.norm\.weight: checkpoint I64, model torch\.float32"):
        GemmaForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(tmp_path, bad_value):
    weight = make_gemma().model.layers[1].mlp.up_proj.weight.detach().clone()
    weight[3, 4] = bad_value
    saved_gemma_with(tmp_path, "model.layers.1.mlp.up_proj.weight", weight)
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.1\.mlp\.up_proj\.weight' holds NaN or inf "
                                              "values; a model with such weights outputs only NaN"):
        GemmaForCausalLM.from_pretrained(tmp_path)


def test_values_that_overflow_the_requested_dtype_are_refused(tmp_path):
    weight = make_gemma().model.norm.weight.detach().clone()
    weight[0] = 1e6  # fine in float32, inf in float16 (largest 65504)
    saved_gemma_with(tmp_path, "model.norm.weight", weight)
    assert GemmaForCausalLM.from_pretrained(tmp_path).model.norm.weight[0] == 1e6
    with pytest.raises(CheckpointError, match=r"has values too large for torch\.float16 \(they overflow to inf\)"):
        GemmaForCausalLM.from_pretrained(tmp_path, dtype=torch.float16)
