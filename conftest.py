"""Test-run settings for every test and notebook: a test run must leave the repository as it found it.

The notebooks (run by nbval, whose kernels inherit this environment) save their figures through
`paligemma.exercises.save_figure`, which writes to `$PALIGEMMA_FIGURES`: here a temporary folder, so
the committed PNGs are never rewritten. Under xdist the kernels get one thread each (`OMP_NUM_THREADS`),
as the tests do, so the two workers do not oversubscribe the cores. Timing cells re-measure only when `PALIGEMMA_MEASURE=1`, which a
test run never sets. At the end, the run fails if it changed any file git knows about.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _git_status() -> str | None:
    try:
        result = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (e.g. an unpacked release): nothing to compare
    return result.stdout if result.returncode == 0 else None


def pytest_configure(config):
    os.environ.pop("PALIGEMMA_MEASURE", None)
    if "PALIGEMMA_TEST_FIGURES" not in os.environ:  # set once, by the controller; xdist workers inherit it
        os.environ["PALIGEMMA_TEST_FIGURES"] = tempfile.mkdtemp(prefix="paligemma-figures-")
        config._paligemma_figures = os.environ["PALIGEMMA_TEST_FIGURES"]
    os.environ["PALIGEMMA_FIGURES"] = os.environ["PALIGEMMA_TEST_FIGURES"]
    if hasattr(config, "workerinput"):  # an xdist worker: two of them share the cores, so one thread each
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the notebook kernels nbval starts (PyTorch reads it)
    if not hasattr(config, "workerinput"):
        config._paligemma_git_status = _git_status()


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if hasattr(config, "workerinput") or getattr(config, "_paligemma_git_status", None) is None:
        return
    after = _git_status()
    if after is not None and after != config._paligemma_git_status:
        print(f"\nthe test run changed files in the repository (git status before and after differ):\n{after}")
        session.exitstatus = 1


def pytest_unconfigure(config):
    folder = getattr(config, "_paligemma_figures", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("PALIGEMMA_TEST_FIGURES", None)
