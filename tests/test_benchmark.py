"""The benchmark runs end to end on the tiny config (correctness of the report only: no timing asserts)."""

import json

import pytest

from paligemma.benchmark import benchmark_config, main, make_inputs

pytest.importorskip("transformers")


def test_benchmark_cli_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["--config", "tiny", "--device", "cpu", "--new-tokens", "3", "--repeats", "1", "--no-compile",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"ours (eager)", "ours (static cache)", "no cache (ours, recompute)",
                                      "transformers (default)"}
    for row in report["results"].values():
        assert row["prefill_ms"] > 0 and row["decode_tokens_per_s"] > 0
    assert report["prompt_tokens"] == 16 + 12 and report["dtype"] == "float32"
    assert report["decoder_parameters"] == 1024 * 64 + 2 * (64 * 16 * (4 + 1 + 1 + 4) + 3 * 64 * 128 + 2 * 64) + 64
    for name in report["results"]:
        assert name in table
    assert "vs transformers" in table and "1.00x" in table  # transformers' own row is the reference


@pytest.mark.parametrize("name, tokens", [("tiny", 16 + 12), ("small", 256 + 12), ("paligemma-3b", 256 + 12)])
def test_prompts_have_the_reference_shape(name, tokens):
    config = benchmark_config(name)
    assert make_inputs(config)["input_ids"].shape == (1, tokens)


def test_bad_arguments():
    with pytest.raises(SystemExit):
        main(["--config", "huge"])
    with pytest.raises(SystemExit):
        main(["--config", "tiny", "--new-tokens", "1"])
