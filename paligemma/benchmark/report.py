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
