"""PaliGemma-nano: scenes, tasks, tokenizer, training, the shipped checkpoint's quality, and the CLI default."""

import random

import pytest
import torch
from tokenizers import Tokenizer

from paligemma import PaliGemmaForConditionalGeneration, PaliGemmaProcessor, generate
from paligemma.__main__ import main
from paligemma.nano import (CAPTION_PROMPT, COLORS, IMAGE_SIZE, SHAPES, box_iou, box_to_locations, build_tokenizer,
                            checkpoint_path, evaluate, load, locations_to_box, make_scene, nano_config,
                            parse_detections, sample_task, train)
from paligemma.nano.training import HELD_OUT_SEEDS


def test_scenes_are_deterministic_and_well_formed():
    for seed in range(200):
        scene, again = make_scene(seed), make_scene(seed)
        assert scene.image.tobytes() == again.image.tobytes() and scene.objects == again.objects
        assert scene.image.size == (IMAGE_SIZE, IMAGE_SIZE) and 1 <= len(scene.objects) <= 3
        kinds = [(o.color, o.shape) for o in scene.objects]
        assert len(set(kinds)) == len(kinds)
        for i, obj in enumerate(scene.objects):
            y0, x0, y1, x1 = obj.box
            assert 0 <= y0 < y1 <= IMAGE_SIZE and 0 <= x0 < x1 <= IMAGE_SIZE
            assert obj.color in COLORS and obj.shape in SHAPES
            assert all(box_iou(obj.box, other.box) == 0 for other in scene.objects[i + 1:])
            # the shape's own colour is really drawn inside its box
            pixels = scene.image.crop((x0, y0, x1, y1)).convert("RGB")
            assert COLORS[obj.color] in [pixels.getpixel((x, y)) for x in range(x1 - x0) for y in range(y1 - y0)]
        names = [o.name for o in scene.objects]
        assert sorted(scene.caption.split(" and ")) == sorted(f"a {n}" for n in names)
    assert make_scene(1).image.tobytes() != make_scene(2).image.tobytes()


def test_tokenizer_round_trips_every_prompt_and_answer(tmp_path):
    tokenizer = build_tokenizer()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    reloaded = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    unk = tokenizer.token_to_id("<unk>")
    rng = random.Random(0)
    for seed in range(300):
        for text in sample_task(make_scene(seed), rng):
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            assert unk not in ids, text
            assert tokenizer.decode(ids) == text
            assert reloaded.encode(text, add_special_tokens=False).ids == ids
    for token in ("<pad>", "<eos>", "<bos>", "<image>", "<loc0000>", "<loc0031>"):
        assert tokenizer.token_to_id(token) is not None
    assert [tokenizer.token_to_id(t) for t in ("<pad>", "<eos>", "<bos>", "<image>")] == [0, 1, 2, 3]


def test_locations_round_trip_within_half_a_bin():
    for box in [(0, 0, 32, 32), (3, 10, 14, 21), (17, 5, 31, 19)]:
        back = locations_to_box(box_to_locations(box, 32, 32), 32, 32)
        assert all(abs(a - b) <= 0.5 * 32 / 31 for a, b in zip(box, back))
    assert box_to_locations((3, 10, 14, 21), 32, 32) == "<loc0003><loc0010><loc0014><loc0020>"
    found = parse_detections("<loc0003><loc0010><loc0014><loc0020> red circle ; "
                             "<loc0001><loc0022><loc0009><loc0030> blue circle", 32, 32)
    assert [d.label for d in found] == ["red circle", "blue circle"]
    assert parse_detections("", 32, 32) == []


@pytest.mark.parametrize("text, phrase", [
    ("<loc0003><loc0010><loc0014> red circle", "four <locNNNN> tokens"),
    ("red circle", "four <locNNNN> tokens"),
    ("<loc0003><loc0010><loc0014><loc0040> red circle", "outside the 32 location bins"),
    ("<loc0014><loc0010><loc0003><loc0020> red circle", "min edge after its max edge"),
    ("<loc3><loc0010><loc0014><loc0020> red circle", "four <locNNNN> tokens"),
])
def test_malformed_detections_are_rejected_clearly(text, phrase):
    with pytest.raises(ValueError, match=phrase):
        parse_detections(text, 32, 32)


def test_a_few_training_steps_reduce_the_loss_deterministically(tmp_path):
    torch.set_num_threads(1)
    _, _, losses = train(tmp_path / "run", steps=40, batch_size=8, peak_lr=3e-3, warmup=5, log=None)
    _, _, again = train(None, steps=5, batch_size=8, peak_lr=3e-3, warmup=5, log=None)
    assert again == losses[:5]  # same seed: the same scenes, tasks and warm-up steps give the same losses
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert (tmp_path / "run" / "tokenizer.json").is_file() and (tmp_path / "run" / "training_runs.json").is_file()


def test_trained_folder_loads_in_ours_and_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    model, processor, _ = train(tmp_path, steps=2, batch_size=4, log=None)
    ours = PaliGemmaForConditionalGeneration.from_pretrained(tmp_path)
    theirs = transformers.PaliGemmaForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager")
    theirs.eval()
    scene = make_scene(HELD_OUT_SEEDS + 5)
    inputs = PaliGemmaProcessor.from_pretrained(tmp_path)(text=[CAPTION_PROMPT], images=[scene.image])
    positions = inputs["attention_mask"].cumsum(-1)  # PaliGemma counts positions from 1
    with torch.no_grad():
        expected = theirs(**inputs, token_type_ids=torch.zeros_like(inputs["input_ids"]), position_ids=positions).logits
        got = ours(**inputs)["logits"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_shipped_checkpoint_loads_and_matches_its_config():
    model, processor = load()
    assert model.config.to_dict() == nano_config(build_tokenizer().get_vocab_size()).to_dict()
    assert processor.tokenizer.get_vocab() == build_tokenizer().get_vocab()
    size = sum(f.stat().st_size for f in checkpoint_path().iterdir())
    assert size < 5 * 2**20  # a few MB at most


def test_shipped_checkpoint_reaches_the_quality_bar_on_held_out_scenes():
    model, processor = load()
    scores = evaluate(model, processor, n=40, seed=7)  # a held-out set the README's figures did not use either
    assert scores["caption_exact"] >= 0.95, scores
    assert scores["detect_iou50"] >= 0.90, scores
    assert 0 <= scores["count_exact"] <= 1 and scores["scenes"] == 40


def test_evaluate_rejects_an_empty_sample():
    model, processor = load()
    with pytest.raises(ValueError, match="at least 1"):
        evaluate(model, processor, n=0)


def test_load_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no nano checkpoint"):
        load(tmp_path)


@pytest.mark.parametrize("prompt", ["caption en", "detect red circle"])
def test_cli_default_draws_a_scene_and_answers_with_nano(tmp_path, capsys, prompt):
    png = tmp_path / "scene.png"
    seed = HELD_OUT_SEEDS + 11
    assert main(["generate", "--scene-seed", str(seed), "--save-scene", str(png), "--prompt", prompt]) == 0
    printed = capsys.readouterr().out
    assert png.is_file()
    scene = make_scene(seed)
    model, processor = load()
    answer = generate(model, processor, [scene.image], [prompt])[0]
    assert f"drew scene {seed}" in printed and scene.caption in printed
    assert printed.endswith(f"prompt: {prompt}\nanswer: {answer}\n")
    if prompt.startswith("detect"):
        parse_detections(answer, IMAGE_SIZE, IMAGE_SIZE)  # a detection answer is well formed (or empty)


def run_nano_cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "paligemma.nano", *args], capture_output=True, text=True)


def test_train_refuses_a_folder_that_holds_files_and_keeps_them(tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "model-00001-of-00002.safetensors").write_bytes(b"precious")
    (out / "config.json").write_text("{}")
    for extra in ([], ["--init", str(checkpoint_path())]):
        result = run_nano_cli("train", "--out", str(out), "--steps", "1", "--batch-size", "2", *extra)
        assert result.returncode == 2 and "already holds files" in result.stderr and "--force" in result.stderr
        assert "Traceback" not in result.stderr
    assert (out / "model-00001-of-00002.safetensors").read_bytes() == b"precious"


def test_train_checks_the_output_folder_is_writable_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = run_nano_cli("train", "--out", str(blocker / "sub"), "--steps", "1")
    assert result.returncode == 2 and "--out" in result.stderr and "Traceback" not in result.stderr
    result = run_nano_cli("train", "--out", str(blocker), "--steps", "1")
    assert result.returncode == 2 and "not a folder" in result.stderr


@pytest.mark.parametrize("lr", ["-1e-3", "nan", "inf", "0"])
def test_train_rejects_impossible_learning_rates_up_front(tmp_path, lr):
    result = run_nano_cli("train", "--out", str(tmp_path / "o"), f"--lr={lr}")
    assert result.returncode == 2 and "--lr must be a positive, finite number" in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_diverging_run_stops_with_a_clear_error_and_saves_nothing(tmp_path):
    out = tmp_path / "o"
    result = run_nano_cli("train", "--out", str(out), "--lr", "1e30", "--steps", "5", "--batch-size", "2",
                          "--warmup", "0", "--threads", "1")
    assert result.returncode == 1, result.stderr
    assert "loss became nan" in result.stderr.lower() and "Traceback" not in result.stderr
    assert not (out / "model.safetensors").exists()
