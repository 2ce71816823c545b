"""The benchmark's report as text: which machine, and a table of rates with ratios to transformers."""

from __future__ import annotations

import platform

import torch


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({platform.processor() or platform.machine()}, {threads} thread{'s' if threads != 1 else ''})"


def format_table(report: dict) -> str:
    """The report as a text table; a decode rate lost in the timing noise reads "unmeasurable"."""
    results = report["results"]
    reference = results.get("transformers (default)", {}).get("decode_tokens_per_s")
    lines = [f"{report['config']} on {report['device']}, {report['dtype']}, prompt {report['prompt_tokens']} tokens, "
             f"{report['new_tokens']} new tokens",
             f"{'implementation':34} {'prefill ms':>11} {'decode tok/s':>13} {'vs transformers':>16}"]
    for name, r in results.items():
        rate = r["decode_tokens_per_s"]
        ratio = f"{rate / reference:.2f}x" if rate and reference else "-"
        memory = f"  peak {r['peak_memory_gb']:.2f} GB" if "peak_memory_gb" in r else ""
        shown = f"{rate:13.1f}" if rate else f"{'unmeasurable':>13}"
        lines.append(f"{name:34} {r['prefill_ms']:11.1f} {shown} {ratio:>16}{memory}")
    if "bandwidth_gb_per_s" in report:
        bound = report["bandwidth_bound_tokens_per_s"]
        ours = [r["decode_tokens_per_s"] for n, r in results.items() if n.startswith("ours")]
        ours = [rate for rate in ours if rate]
        best = f"; best ours = {max(ours) / bound:.0%} of it" if ours else ""
        lines.append(f"memory bandwidth {report['bandwidth_gb_per_s']:.0f} GB/s -> bound {bound:.0f} tok/s{best}")
    if any(r["decode_tokens_per_s"] is None for r in results.values()):
        lines.append("unmeasurable: generating the other tokens took no longer than the timing noise of the first; "
                     "use more --new-tokens or --repeats")
    return "\n".join(lines)


def format_real_table(report: dict) -> str:
    """A real model's report: rate, ratios to transformers' and llama.cpp's rows, and each row's bandwidth bound."""
    results = report["results"]
    reference = {name.split()[-1]: row["decode_tokens_per_s"] for name, row in results.items()
                 if name.startswith("transformers")}
    llama = (results.get("llama.cpp") or {}).get("decode_tokens_per_s")
    cpu = f" ({report['cpu']})" if report.get("cpu") else ""  # (older reports do not say)
    lines = [f"{report['model']} on {report['device']}{cpu}, prompt {report['prompt_tokens']} tokens, "
             f"{report['new_tokens']} greedy tokens, memory bandwidth {report['bandwidth_gb_per_s']:.1f} GB/s"
             + (f" (the fastest of {len(report['bandwidth_readings_gb_per_s'])} readings, from "
                f"{min(report['bandwidth_readings_gb_per_s']):.1f})" if report.get("bandwidth_readings_gb_per_s")
                else ""),
             f"{'implementation':30} {'prefill ms':>10} {'decode tok/s':>13} {'vs transformers':>16} "
             f"{'vs llama.cpp':>13} {'GB/token':>9} {'of bound':>9} {'memory GB':>10}"]
    for name, row in results.items():
        rate = row["decode_tokens_per_s"]
        same_dtype = reference.get("bfloat16" if "float32" not in name else "float32")
        versus = f"{rate / same_dtype:.2f}x" if rate and same_dtype and not name.startswith("llama") else "-"
        versus_llama = f"{rate / llama:.2f}x" if rate and llama else "-"
        bound = f"{row['fraction_of_bound']:.0%}" if row.get("fraction_of_bound") else "-"
        shown = f"{rate:13.1f}" if rate else f"{'unmeasurable':>13}"
        memory = f"{row['memory_gb']:10.2f}" if row.get("memory_gb") is not None else f"{'-':>10}"
        lines.append(f"{name:30} {row['prefill_ms']:10.1f} {shown} {versus:>16} {versus_llama:>13} "
                     f"{row['bytes_per_token'] / 1e9:9.3f} {bound:>9} {memory}")
    lines.append("vs transformers: against its row of the same dtype (bfloat16 for the quantized modes); "
                 "of bound: decode rate / (bandwidth / bytes read per token); memory: resident memory its "
                 "loading added")
    if report.get("peak_resident_gb"):
        lines.append(f"peak resident memory of the whole run (every candidate loaded at once): "
                     f"{report['peak_resident_gb']:.2f} GB")
    for key, value in report.get("ratios", {}).items():
        lines.append(f"  {key}: {value:.2f}" if isinstance(value, float) else f"  {key}: {value}")
    if report.get("quality"):
        lines.append("quality: perplexity on a fixed English paragraph, in one call and token by token (the decode "
                     "path); greedy tokens equal to float32's before the first difference, per prompt")
        for mode, q in report["quality"].items():
            native = q.get("greedy_tokens_equal_to_float32_native_step")
            lines.append(f"  {mode:18} perplexity {q['perplexity']:7.3f} / {q['perplexity_token_by_token']:7.3f}"
                         f"   equal tokens {q['greedy_tokens_equal_to_float32']}"
                         + (f", native step {native}" if native is not None else ""))
    return "\n".join(lines)
