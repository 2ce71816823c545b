#!/usr/bin/env bash
# The one set-up command (README and CI): a virtual environment holding PyTorch 2.13.0 (the CPU build where
# the package index has it), the project with its dev extra, and the Jupyter kernel the notebooks name.
#
#   bash scripts/setup.sh [VENV]          VENV defaults to .venv
#   TORCH_INDEX_URL=URL bash scripts/setup.sh   take torch from that index, e.g. https://download.pytorch.org/whl/cpu
#
# torch is installed first and pinned, and pinned again with the project: left to itself, pip resolves the
# project's `torch>=2.4` to the newest torch the index serves, which on Linux is the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${1:-.venv}"
torch_pin="torch==2.13.0"
"${PYTHON:-python3}" -m venv "$venv"
python="$venv/bin/python"
"$python" -m pip install --quiet --upgrade pip
"$python" -m pip install --quiet "$torch_pin" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
"$python" -m pip install --quiet -e ".[dev]" "$torch_pin"
"$python" -m ipykernel install --sys-prefix --name python3 >/dev/null
"$python" - <<'PY'
import torch
build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
print(f"set up: torch {torch.__version__} ({build}), GPU visible: {torch.cuda.is_available()}")
if torch.version.cuda and not torch.cuda.is_available():
    print("note: this is a CUDA build but no GPU is visible; for the small CPU build run again with "
          "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu")
PY
echo "activate it with: source $venv/bin/activate"
