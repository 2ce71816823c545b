"""The benchmark runs end to end on the tiny config (correctness of the report only: no timing asserts)."""

import json
from pathlib import Path

import pytest
import torch

from conftest import make_causal_lm, tiny_tokenizer
from paligemma import cpu_kernels
from paligemma.benchmark import benchmark_config, decode_rate, device_description, format_table, main, make_inputs

pytest.importorskip("transformers")


def test_benchmark_cli_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["--config", "tiny", "--device", "cpu", "--new-tokens", "3", "--repeats", "1", "--no-compile",
                 "--json", str(out)]) == 0
    captured = capsys.readouterr()
    table = captured.out
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"ours (eager)", "ours (static cache)", "no cache (ours, recompute)",
                                      "transformers (default)"}
    for row in report["results"].values():  # one repeat of 3 tokens: a rate may be lost in the noise (None)
        assert row["prefill_ms"] > 0 and (row["decode_tokens_per_s"] is None or row["decode_tokens_per_s"] > 0)
    assert report["prompt_tokens"] == 16 + 12 and report["dtype"] == "float32"
    assert report["decoder_parameters"] == 1024 * 64 + 2 * (64 * 16 * (4 + 1 + 1 + 4) + 3 * 64 * 128 + 2 * 64) + 64
    for name in report["results"]:
        assert name in table
    assert "vs transformers" in table
    if report["results"]["transformers (default)"]["decode_tokens_per_s"]:
        assert "1.00x" in table  # transformers' own row is the reference
    assert "Loading weights" not in captured.err


def test_the_cpu_description_counts_threads_in_words():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert device_description(torch.device("cpu")).endswith(", 1 thread)")
        torch.set_num_threads(2)
        assert device_description(torch.device("cpu")).endswith(", 2 threads)")
    finally:
        torch.set_num_threads(before)


def test_a_decode_rate_lost_in_the_noise_is_unmeasurable():
    assert decode_rate([0.010], full=0.030, n=5) == pytest.approx(4 / 0.020)
    assert decode_rate([0.010], full=0.009, n=5) is None  # the longer run was faster: no rate, not 1e9 tok/s
    assert decode_rate([0.010], full=0.010, n=5) is None
    assert decode_rate([0.008, 0.012], full=0.0115, n=5) is None  # 1.5 ms added, within the 2 ms spread / 2
    assert decode_rate([0.008, 0.012], full=0.0125, n=5) == pytest.approx(4 / 0.0025)


def test_the_table_says_unmeasurable_instead_of_a_number():
    report = {"config": "tiny", "device": "CPU (x86_64, 1 thread)", "dtype": "float32", "prompt_tokens": 28,
              "new_tokens": 2, "results": {"ours (eager)": {"prefill_ms": 1.5, "decode_tokens_per_s": None},
                                           "transformers (default)": {"prefill_ms": 4.0, "decode_tokens_per_s": 500.0}}}
    table = format_table(report)
    row = next(line for line in table.splitlines() if line.startswith("ours (eager)"))
    assert row.split()[2:] == ["1.5", "unmeasurable", "-"]
    assert "use more --new-tokens or --repeats" in table


@pytest.mark.parametrize("name, tokens", [("tiny", 16 + 12), ("small", 256 + 12), ("paligemma-3b", 256 + 12)])
def test_prompts_have_the_reference_shape(name, tokens):
    config = benchmark_config(name)
    assert make_inputs(config)["input_ids"].shape == (1, tokens)


def test_bad_arguments():
    with pytest.raises(SystemExit):
        main(["--config", "huge"])
    with pytest.raises(SystemExit):
        main(["--config", "tiny", "--new-tokens", "1"])


def tiny_gguf_with_tokenizer(folder):
    """A tiny Gemma 3 GGUF whose metadata also holds a SentencePiece tokenizer (scores in file order)."""
    from gguf_helpers import TINY, V, tiny_gemma_file, tiny_tokens

    n = TINY["vocab"]
    tokenizer = {"tokenizer.ggml.model": ("llama", V.STRING),
                 "tokenizer.ggml.scores": ([0.0] * 4 + [-float(i) for i in range(n - 4)], V.ARRAY, V.FLOAT32),
                 "tokenizer.ggml.token_type": ([3, 3, 3, 2] + [1] * (n - 4), V.ARRAY, V.INT32),
                 "tokenizer.ggml.unknown_token_id": (3, V.UINT32)}
    assert len(tiny_tokens(n)) == n
    return tiny_gemma_file(folder / "tiny.gguf", "gemma3", metadata=tokenizer)


def test_real_model_benchmark_runs_end_to_end_on_a_tiny_gguf(tmp_path, capsys):
    """Every row of ours (and transformers on the same file) is timed and reported; no timing is asserted."""
    path = tiny_gguf_with_tokenizer(tmp_path)
    out = tmp_path / "real.json"
    assert main(["--model", str(path), "--new-tokens", "3", "--repeats", "1", "--no-compile", "--no-llama-cpp",
                 "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    expected = {"ours float32", "ours bfloat16", "ours int8", "ours int8-dynamic", "ours int4",
                "transformers float32", "transformers bfloat16"}
    if cpu_kernels.available():  # ours bfloat16 runs on our kernels; torch's are timed beside them; and the
        expected.add("ours bfloat16, torch's kernels")  # quantized modes through our C decode step too
        expected |= {"ours int8, native step", "ours int8-dynamic, native step", "ours int4, native step"}
    assert set(report["results"]) == expected
    for name, row in report["results"].items():
        assert row["prefill_ms"] > 0 and row["bytes_per_token"] > 0 and row["bound_tokens_per_s"] > 0, name
        if Path("/proc/self/statm").exists():  # Linux says how much memory each candidate's loading added
            assert row["memory_gb"] is not None and row["memory_gb"] >= 0, name
    weights = {name: row["bytes_per_token"] for name, row in report["results"].items()}
    assert weights["ours float32"] == weights["transformers float32"] == 2 * weights["ours bfloat16"]
    assert weights.get("ours bfloat16, torch's kernels", weights["ours bfloat16"]) == weights["ours bfloat16"]
    assert weights["ours int4"] < weights["ours int8"] < weights["ours bfloat16"]
    assert set(report["quality"]) == {"float32", "bfloat16", "int8", "int8-dynamic", "int4"}
    assert report["quality"]["float32"]["greedy_tokens_equal_to_float32"] == [64, 64, 64]
    for mode in ("int8", "int8-dynamic", "int4"):  # the native step's own agreement, where it ran
        agreement = report["quality"][mode].get("greedy_tokens_equal_to_float32_native_step")
        assert (agreement is not None) == cpu_kernels.available()
        assert agreement is None or (len(agreement) == 3 and all(0 <= n <= 64 for n in agreement))
    f32 = report["quality"]["float32"]  # the cached decode path scores the text as one long call does
    assert f32["perplexity_token_by_token"] == pytest.approx(f32["perplexity"], rel=1e-4)
    assert report["bandwidth_gb_per_s"] > 0 and report["threads"] == 1
    readings = report["bandwidth_readings_gb_per_s"]  # before, between the rounds (one here), after
    assert len(readings) == 3 and report["bandwidth_gb_per_s"] == max(readings)
    kernels = ("AVX2 + AVX-512 VNNI" if cpu_kernels.has_vnni() else "AVX2") if cpu_kernels.available() else "none"
    assert report["cpu"] == f"torch {torch.backends.cpu.get_cpu_capability()}, our kernels {kernels}"
    assert cpu_kernels.kernel_build() == (None if kernels == "none" else kernels)
    table = capsys.readouterr().out
    assert f"({report['cpu']})" in table
    assert "ours int8" in table and "of bound" in table and "perplexity" in table and "memory GB" in table
    assert ("native step [" in table) == cpu_kernels.available()


def test_real_model_benchmark_refuses_a_missing_file_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "nope.gguf"), "--no-transformers"])
    err = capsys.readouterr().err
    assert "--model" in err and "Traceback" not in err


def test_real_model_benchmark_runs_on_a_checkpoint_folder(tmp_path, capsys):
    """A Hugging Face folder (config.json, safetensors, tokenizer.json): ours and transformers on it; llama.cpp
    reads GGUF files only, so it is skipped with a line saying why."""
    folder = tmp_path / "checkpoint"
    make_causal_lm("gemma3", seed=3, vocab_size=97).save_pretrained(folder)
    tiny_tokenizer().save(str(folder / "tokenizer.json"))
    out = tmp_path / "folder.json"
    assert main(["--model", str(folder), "--new-tokens", "2", "--repeats", "1", "--no-compile", "--no-quality",
                 "--modes", "float32", "int8", "--threads", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert {"ours float32", "ours int8", "transformers float32", "transformers bfloat16"} <= set(results)
    assert results["ours float32"]["bytes_per_token"] == results["transformers float32"]["bytes_per_token"]
    err = capsys.readouterr().err
    assert "llama.cpp: reads GGUF files only" in err and "GGUF loader" not in err


@pytest.mark.parametrize("layout, words", [("missing", "does not exist"), ("empty", "no config.json found"),
                                           ("no tokenizer", "has no tokenizer.json")])
def test_real_model_benchmark_refuses_a_broken_folder_in_one_line(tmp_path, capsys, layout, words):
    folder = tmp_path / "checkpoint"
    if layout != "missing":
        folder.mkdir()
    if layout == "no tokenizer":
        make_causal_lm("gemma3", vocab_size=97).save_pretrained(folder)
    with pytest.raises(SystemExit):
        main(["--model", str(folder), "--no-transformers"])
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
