"""Where the notebooks save their figures and keep their measured data, from any folder they run in.

- Figures go to `$PALIGEMMA_FIGURES` when it is set (the test suite points it at a temporary folder,
  so a test run never rewrites the committed PNGs), else to the repository's `figures/` when the
  notebook runs from `notebooks/`, else to a `figures/` folder beside the notebook (created): a
  notebook handed out alone, or in nbgrader's folders, still runs.
- Timings are machine-dependent, so a notebook draws its timing figures from numbers measured once
  and stored as JSON in the repository's `figures/`. `measured(name, measure)` returns them, and
  only re-measures (and rewrites the file) when `PALIGEMMA_MEASURE=1` asks for it; without the file
  (a notebook on its own) it measures on the spot and writes nothing.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

FIGURES_VARIABLE, MEASURE_VARIABLE = "PALIGEMMA_FIGURES", "PALIGEMMA_MEASURE"


def repository_figures() -> Path | None:
    """The repository's figures/ folder when the notebook runs from notebooks/ beside it, else None."""
    folder = Path.cwd().parent / "figures"
    return folder if Path.cwd().name == "notebooks" and folder.is_dir() else None


def figures_folder() -> Path:
    """The folder figures are written to (created if needed)."""
    chosen = os.environ.get(FIGURES_VARIABLE)
    folder = Path(chosen) if chosen else repository_figures() or Path.cwd() / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_figure(fig, name: str, **savefig_options) -> Path:
    """Save a matplotlib figure as `name` (e.g. '03_masks.png') in `figures_folder()`; dpi 100 unless given."""
    path = figures_folder() / name
    fig.savefig(path, **{"dpi": 100, **savefig_options})
    return path


def _processor() -> str:
    """The CPU's model name where the system says it (Linux), else what Python's platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> dict:
    return {"machine": platform.machine(), "processor": _processor(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat()}


def measured(name: str, measure: Callable[[], dict]) -> dict:
    """The stored measurement `name` (figures/NAME.json), measured now if asked to or if none is stored.

    `measure()` returns a JSON-able dict; the stored file adds where and when it was measured under "machine".
    """
    folder = repository_figures()
    path = folder / f"{name}.json" if folder else None
    asked = os.environ.get(MEASURE_VARIABLE) == "1"
    if path is not None and path.is_file() and not asked:
        return json.loads(path.read_text())
    data = {**measure(), "machine": _machine()}
    if asked and path is not None:
        path.write_text(json.dumps(data, indent=1) + "\n")
    return data
