"""The benchmark runs end to end on the tiny config (correctness of the report only: no timing asserts)."""

import json

import pytest
import torch

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
