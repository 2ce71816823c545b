"""Peak memory of loading a checkpoint, measured in a fresh process, relative to the checkpoint's size."""

from __future__ import annotations

import subprocess
import sys
import tempfile

import torch

from ..configuration import PaliGemmaConfig
from ..modeling_gemma import GemmaForCausalLM
from ..modeling_paligemma import PaliGemmaForConditionalGeneration
from .speed import DTYPES, benchmark_config

LOAD_PROBE = """
import resource, sys, torch
from paligemma import {cls}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = {cls}.from_pretrained(sys.argv[1], dtype=torch.{dtype}, device=sys.argv[2])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
print((after - before) * 1024, cuda)
"""


def load_peak_memory(config_name: str, device_name: str, dtype_name: str = "bfloat16") -> dict:
    """Save a checkpoint of the config, load it in a fresh process, and compare its peak memory to the file size.

    Host memory is the growth of the process's peak resident set while `from_pretrained` runs; on a
    GPU, the most device memory allocated. Weights are left uninitialised: only their size matters.
    """
    config, dtype = benchmark_config(config_name), DTYPES[dtype_name]
    model_class = PaliGemmaForConditionalGeneration if isinstance(config, PaliGemmaConfig) else GemmaForCausalLM
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device="cpu")
    if isinstance(model, PaliGemmaForConditionalGeneration):
        model.language_model.tie_weights()
    else:
        model.tie_weights()
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        del model
        probe = LOAD_PROBE.format(cls=model_class.__name__, dtype=dtype_name)
        out = subprocess.run([sys.executable, "-c", probe, folder, device_name], capture_output=True, text=True,
                             check=True).stdout.split()
    host, device = int(out[0]), int(out[1])
    report = {"checkpoint_gb": size / 1e9, "host_peak_gb": host / 1e9, "host_peak_ratio": host / size}
    if device:
        report.update(device_peak_gb=device / 1e9, device_peak_ratio=device / size)
    return report
