"""Bad input on the three command lines: each case is one error line naming the flag and the problem, with a
non-zero exit status, no traceback, and nothing written (checked before a model is loaded or a run starts)."""

import os
import re
import struct
import sys
import zlib

import pytest
import torch
from PIL import Image, ImageFile

from conftest import fifo_guard, make_paligemma, tiny_tokenizer
from paligemma.__main__ import build_parser, load_model, main as paligemma_main
from paligemma.benchmark import main as benchmark_main
from paligemma.cli_checks import writable_file_problem
from paligemma.nano.__main__ import main as nano_main


def error_line(main, args, capsys) -> str:
    """The one line a failing command prints (argparse's on stderr, or the SystemExit message)."""
    with pytest.raises(SystemExit) as stop:
        main(args)
    code = stop.value.code
    message = (code if isinstance(code, str) else capsys.readouterr().err).strip()
    assert code not in (0, None), message
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good tiny checkpoint, broken copies of it, and images good and bad."""
    root = tmp_path_factory.mktemp("cli")
    good = root / "good"
    make_paligemma(seed=3).save_pretrained(good)
    tiny_tokenizer().save(str(good / "tokenizer.json"))
    broken = {}
    for name, file, contents in [("bad_config", "config.json", b"{not json"),
                                 ("array_config", "config.json", b"[1, 2]"),
                                 ("cut_weights", "model.safetensors", None),
                                 ("bad_tokenizer", "tokenizer.json", b"{}")]:
        folder = root / name
        folder.mkdir()
        for part in good.iterdir():
            (folder / part.name).write_bytes(part.read_bytes())
        if contents is None:
            contents = (good / file).read_bytes()[:5000]
        (folder / file).write_bytes(contents)
        broken[name] = folder
    Image.new("RGB", (30, 20), (200, 30, 30)).save(root / "red.png")
    (root / "notes.txt").write_text("not an image")
    cut = Image.effect_noise((64, 64), 40).convert("RGB")
    cut.save(root / "cut.png")
    (root / "cut.png").write_bytes((root / "cut.png").read_bytes()[:400])
    (root / "bomb.png").write_bytes(png_header_only(30_000, 30_000))  # 900 M pixels, a few bytes on disk
    return root, good, broken


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: signature, IHDR (1-bit greyscale), IEND. Pillow checks the size at open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


GENERATE_FLAGS = [  # (arguments after "generate", words of the error line)
    (["--device", "mps"], "argument --device: 'mps': not available on this machine (available here: cpu"),
    (["--device", "meta"], "argument --device: 'meta' tensors hold no data"),
    (["--device", "garbage"], "argument --device: 'garbage' is not a device name (available here: cpu"),
    (["--device", "cuda:7"], "argument --device: 'cuda:7'"),
    (["--scene-seed", "-1"], "argument --scene-seed: must be 0 or more, got -1"),
    (["--seed", "-1"], "argument --seed: -1 is out of range: a seed is an integer from 0 to 2**64 - 1"),
    (["--seed", str(2**64)], f"argument --seed: {2**64} is out of range"),
    (["--seed", "1.5"], "argument --seed: '1.5' is not an integer"),
    (["--max-new-tokens", "0"], "argument --max-new-tokens: must be a positive integer, got 0"),
    (["--top-k", "-3"], "argument --top-k: must be a positive integer, got -3"),
    (["--temperature", "0"], "argument --temperature: must be greater than 0, got 0"),
    (["--temperature", "nan"], "argument --temperature: must be a finite number, got nan"),
    (["--top-p", "1.5"], "argument --top-p: must be in (0, 1], got 1.5"),
    (["--top-p", "0"], "argument --top-p: must be in (0, 1], got 0"),
    (["--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
]


@pytest.mark.parametrize("flags, words", GENERATE_FLAGS)
def test_generate_flags(capsys, flags, words):
    assert words in error_line(paligemma_main, ["generate", *flags], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this case is about a machine without a GPU")
def test_cuda_without_a_gpu(capsys):
    assert "argument --device: 'cuda': PyTorch sees no CUDA GPU (available here: cpu)" in \
        error_line(paligemma_main, ["generate", "--device", "cuda"], capsys)


def save_scene_cases(root):
    (root / "a_folder").mkdir(exist_ok=True)
    return [
        ([str(root / "scene.foo")], "--save-scene {root}/scene.foo: Pillow cannot write .foo"),
        ([str(root / "scene")], "Pillow cannot write files without an extension"),
        ([str(root / "scene.xbm")], "Pillow cannot write an RGB image as XBM"),
        ([str(root / "missing" / "scene.png")], "the folder {root}/missing does not exist"),
        ([str(root / "a_folder")], "--save-scene {root}/a_folder: {root}/a_folder is a folder"),
        (["/proc/scene.png"], "--save-scene /proc/scene.png: cannot write there"),
        ([str(root / "scene.png"), "--image", str(root / "red.png")], "--image was given: nothing is drawn"),
    ]


def test_save_scene_is_checked_before_anything_runs(files, capsys, tmp_path, monkeypatch):
    root, _, _ = files
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "red.png")
    for flags, words in save_scene_cases(tmp_path):
        assert words.format(root=tmp_path) in error_line(paligemma_main, ["generate", "--save-scene", *flags], capsys)
    assert sorted(os.listdir(tmp_path)) == ["a_folder", "red.png"]  # no scene, no probe file left behind


def image_cases(root):
    return [
        (root / "missing.png", "error: image file {root}/missing.png does not exist"),
        (root, "error: image file {root} is a folder"),
        (root / "notes.txt", "error: {root}/notes.txt is not an image Pillow can read"),
        (root / "cut.png", "error: {root}/cut.png is not an image Pillow can read"),
        (root / "bomb.png", "error: {root}/bomb.png is too large to decode safely"),
    ]


def test_bad_images(files, capsys):
    root, good, _ = files
    for image, words in image_cases(root):
        message = error_line(paligemma_main, ["generate", "--model", str(good), "--image", str(image)], capsys)
        assert words.format(root=root) in message


def test_images_over_pillows_warning_limit_and_out_of_memory(files, capsys, monkeypatch):
    root, good, _ = files
    args = ["generate", "--model", str(good), "--image", str(root / "red.png")]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # 30 x 20 = 600 pixels: over the limit, under twice it
    assert "red.png is too large to decode safely" in error_line(paligemma_main, args, capsys)
    monkeypatch.undo()

    def no_memory(self):
        raise MemoryError
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_memory)
    assert f"error: not enough memory to decode {root / 'red.png'}" in error_line(paligemma_main, args, capsys)


def test_a_fifo_as_image_is_refused_without_hanging(tmp_path, capsys):
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    with fifo_guard(fifo):
        message = error_line(paligemma_main, ["generate", "--image", str(fifo)], capsys)
    assert message == f"error: image file {fifo} is not a regular file (a FIFO, socket or device?)"


@pytest.mark.parametrize("name, words", [
    ("bad_config", "Expecting property name"),
    ("array_config", "JSON array|JSON list|got list"),  # the wording of whichever reader configuration uses
    ("cut_weights", "model.safetensors says its header is"),
    ("bad_tokenizer", "tokenizer.json is not one the tokenizers library can read"),
])
def test_a_broken_model_folder_fails_before_anything_is_written(files, capsys, tmp_path, monkeypatch, name, words):
    _, _, broken = files
    monkeypatch.chdir(tmp_path)
    message = error_line(paligemma_main, ["generate", "--model", str(broken[name]), "--save-scene", "scene.png"],
                         capsys)
    assert message.startswith(f"error: cannot load {broken[name]}: ") and re.search(words, message)
    assert os.listdir(tmp_path) == []  # the scene is drawn and saved only once the model has loaded


def test_default_run_writes_nothing_unless_asked(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paligemma_main(["generate", "--scene-seed", "1000000042", "--max-new-tokens", "2"]) == 0
    assert "(--scene-seed 1000000042 draws it again; --save-scene FILE saves it)" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []
    assert paligemma_main(["generate", "--scene-seed", "1000000042", "--max-new-tokens", "2",
                           "--save-scene", "s.jpg"]) == 0
    assert ", saved to s.jpg)" in capsys.readouterr().out and Image.open(tmp_path / "s.jpg").size == (32, 32)


@pytest.mark.parametrize("flags, dtype", [([], torch.float32), (["--dtype", "float16"], torch.float16),
                                          (["--dtype", "bfloat16"], torch.bfloat16)])
def test_dtype_takes_effect_on_the_default_nano_model(flags, dtype):
    model, _ = load_model(build_parser().parse_args(["generate", *flags]))
    assert {p.dtype for p in model.parameters()} == {dtype}


NANO_FLAGS = [  # (arguments, words of the error line)
    (["train", "--out", "{tmp}/o", "--steps", "0"], "argument --steps: must be a positive integer, got 0"),
    (["train", "--out", "{tmp}/o", "--batch-size", "-2"], "argument --batch-size: must be a positive integer"),
    (["train", "--out", "{tmp}/o", "--warmup", "-1"], "argument --warmup: must be 0 or more, got -1"),
    (["train", "--out", "{tmp}/o", "--threads", "0"], "argument --threads: must be a positive integer"),
    (["train", "--out", "{tmp}/o", "--seed", "-5"], "argument --seed: -5 is out of range"),
    (["train", "--out", "{tmp}/o", "--init", "{tmp}"], "--init {tmp} is not a checkpoint folder (no config.json)"),
    (["train", "--out", "{tmp}/o", "--init", "{broken[bad_config]}"], "--init {broken[bad_config]} cannot be loaded"),
    (["train", "--out", "{tmp}/o", "--init", "{broken[cut_weights]}"], "says its header is"),
    (["train", "--out", "{tmp}/o", "--init", "{broken[bad_tokenizer]}"], "not one the tokenizers library can read"),
    (["evaluate", "--model", "{broken[array_config]}"], "--model {broken[array_config]} cannot be loaded"),
    (["evaluate", "--model", "{broken[cut_weights]}"], "--model {broken[cut_weights]} cannot be loaded"),
    (["evaluate", "--model", "{tmp}/nowhere"], "--model {tmp}/nowhere is not a checkpoint folder"),
    (["evaluate", "--n", "0"], "argument --n: must be a positive integer, got 0"),
    (["evaluate", "--seed", str(2**64)], "is out of range"),
]


@pytest.mark.parametrize("arguments, words", NANO_FLAGS)
def test_nano_flags(files, capsys, tmp_path, arguments, words):
    _, _, broken = files
    arguments = [a.format(tmp=tmp_path, broken=broken) for a in arguments]
    assert words.format(tmp=tmp_path, broken=broken) in error_line(nano_main, arguments, capsys)
    assert not (tmp_path / "o").exists()  # nothing prepared for a run that cannot start


BENCHMARK_FLAGS = [
    (["--repeats", "0"], "argument --repeats: must be a positive integer, got 0"),
    (["--new-tokens", "1"], "--new-tokens must be at least 2"),
    (["--device", "meta"], "argument --device: 'meta' tensors hold no data"),
    (["--device", "mps"], "argument --device: 'mps': not available on this machine"),
    (["--json", "{tmp}/missing/report.json"],
     "--json {tmp}/missing/report.json: the folder {tmp}/missing does not exist"),
    (["--json", "{tmp}"], "--json {tmp}: {tmp} is a folder"),
    (["--json", "/proc/report.json"], "--json /proc/report.json: cannot write there"),
]


@pytest.mark.parametrize("arguments, words", BENCHMARK_FLAGS)
def test_benchmark_flags(capsys, tmp_path, arguments, words):
    arguments = ["--config", "tiny", *(a.format(tmp=tmp_path) for a in arguments)]
    assert words.format(tmp=tmp_path) in error_line(benchmark_main, arguments, capsys)


def test_benchmark_without_transformers_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails as if not installed
    message = error_line(benchmark_main, ["--config", "tiny", "--json", str(tmp_path / "r.json")], capsys)
    assert "install the dev extra (pip install -e \".[dev]\") or pass --no-transformers" in message
    assert os.listdir(tmp_path) == []


def test_the_writability_check_changes_nothing(tmp_path):
    report = tmp_path / "report.json"
    assert writable_file_problem(report) is None and os.listdir(tmp_path) == []  # the probe file is gone
    report.write_text("{\"old\": true}")
    before = os.stat(report)
    assert writable_file_problem(report) is None
    assert report.read_text() == "{\"old\": true}" and os.stat(report).st_mtime_ns == before.st_mtime_ns
