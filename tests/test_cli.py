"""The command line, end to end on a tiny checkpoint + tokenizer.json created here, and its error messages."""

import re
import subprocess
import sys

import pytest
from PIL import Image

from conftest import make_paligemma, tiny_tokenizer
from paligemma import PaliGemmaForConditionalGeneration, PaliGemmaProcessor, generate
from paligemma.__main__ import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    make_paligemma(seed=51).save_pretrained(folder)
    tiny_tokenizer().save(str(folder / "tokenizer.json"))
    image = folder / "image.png"
    Image.new("RGB", (30, 20), (200, 30, 30)).save(image)
    return folder, image


def expected_answer(folder, image, prompt, max_new_tokens):
    model = PaliGemmaForConditionalGeneration.from_pretrained(folder)
    processor = PaliGemmaProcessor.from_pretrained(folder)
    return generate(model, processor, [Image.open(image)], [prompt], max_new_tokens=max_new_tokens)[0]


def test_generate_streams_the_same_answer_as_the_api(checkpoint, capsys):
    folder, image = checkpoint
    assert main(["generate", "--model", str(folder), "--image", str(image), "--prompt", "caption en",
                 "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out
    answer = expected_answer(folder, image, "caption en", 6)
    assert printed == answer + "\n"
    assert len(answer.split()) >= 1


def test_streamed_pieces_add_up_to_the_answer(checkpoint):
    folder, image = checkpoint
    model = PaliGemmaForConditionalGeneration.from_pretrained(folder)
    processor = PaliGemmaProcessor.from_pretrained(folder)
    pieces = []
    answers = generate(model, processor, [Image.open(image)] * 2, ["caption en", "en"], max_new_tokens=5,
                       on_token=pieces.append)
    assert len(pieces) >= 1 and all(len(p) == 2 for p in pieces)
    assert ["".join(p[row] for p in pieces) for row in range(2)] == answers


def test_sampling_flags_are_reproducible_with_a_seed(checkpoint, capsys):
    folder, image = checkpoint
    args = ["generate", "--model", str(folder), "--image", str(image), "--temperature", "1.5", "--top-p", "0.9",
            "--seed", "3", "--max-new-tokens", "8"]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("make_args, words", [
    (lambda f, i: ["--model", str(f / "nowhere"), "--image", str(i)], "does not exist"),
    (lambda f, i: ["--model", str(f), "--image", str(f / "config.json")], "not an image"),
    (lambda f, i: ["--model", str(f), "--image", str(f / "missing.png")], "does not exist"),
    (lambda f, i: ["--model", str(f), "--image", str(i), "--top-p", "2"], r"--top-p: must be in \(0, 1\]"),
])
def test_clear_errors(checkpoint, capsys, make_args, words):
    folder, image = checkpoint
    with pytest.raises(SystemExit) as stop:
        main(["generate", *make_args(folder, image)])
    message = stop.value.code if isinstance(stop.value.code, str) else capsys.readouterr().err
    assert re.search(words, message), message


def test_missing_tokenizer(checkpoint, tmp_path):
    folder, image = checkpoint
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(SystemExit, match="no tokenizer.json"):
        main(["generate", "--model", str(tmp_path), "--image", str(image)])


def test_help_and_demo_run_as_a_new_user_would():
    help_text = subprocess.run([sys.executable, "-m", "paligemma", "generate", "--help"], capture_output=True,
                               text=True, check=True).stdout
    for flag in ("--model", "--image", "--prompt", "--max-new-tokens", "--temperature", "--top-p", "--device",
                 "--dtype"):
        assert flag in help_text
    demo = subprocess.run([sys.executable, "-m", "paligemma"], capture_output=True, text=True, check=True).stdout
    assert "2,508,662,784 parameters" in demo and "logits (1, 5, 128)" in demo


def test_a_text_only_gguf_continues_the_prompt_streamed(tmp_path, capsys):
    """--model FILE.gguf: no image, the prompt printed, then its continuation; --quantize works on it too."""
    from test_benchmark import tiny_gguf_with_tokenizer

    from paligemma import GemmaForCausalLM
    from paligemma.gguf_tokenizer import gguf_tokenizer
    from paligemma.text_generation import generate_text

    path = tiny_gguf_with_tokenizer(tmp_path)
    prompt = "▁w1 ▁w2"
    expected = generate_text(GemmaForCausalLM.from_pretrained(path), gguf_tokenizer(path), prompt, max_new_tokens=6)
    assert main(["generate", "--model", str(path), "--prompt", prompt, "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == prompt + expected[0] + "\n"
    for mode in ("int8", "int8-dynamic", "int4"):
        assert main(["generate", "--model", str(path), "--prompt", prompt, "--max-new-tokens", "6",
                     "--quantize", mode]) == 0
        assert capsys.readouterr().out.startswith(prompt), mode


@pytest.mark.parametrize("extra, words", [
    ([], "is a text model: give it a --prompt"),
    (["--prompt", "x", "--image", "photo.png"], "--image is for image models"),
    (["--prompt", "x", "--quantize", "int8", "--dtype", "float32"], "--quantize sets the activations' dtype"),
])
def test_text_model_flag_errors_are_one_line(tmp_path, capsys, extra, words):
    from test_benchmark import tiny_gguf_with_tokenizer

    path = tiny_gguf_with_tokenizer(tmp_path)
    with pytest.raises(SystemExit, match=words):
        main(["generate", "--model", str(path), *extra])
