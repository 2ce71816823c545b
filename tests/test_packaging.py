"""Project hygiene: conda and pip describe the same install, and CI runs what the README says."""

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_installs_the_pyproject_dev_extra():
    """environment.yml must not keep its own dependency list: it installs `-e .[dev]` and nothing else."""
    text = (ROOT / "environment.yml").read_text()
    pip_lines = re.findall(r"^\s*-\s*(.+?)\s*$", text.split("- pip:", 1)[1], flags=re.M)
    assert pip_lines == ["-e .[dev]"], pip_lines
    conda_deps = re.findall(r"^  - (\S+)\s*$", text.split("dependencies:", 1)[1].split("- pip:", 1)[0], flags=re.M)
    assert {re.split(r"[=<>]", d)[0] for d in conda_deps} == {"python", "pip"}, conda_deps
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    python_floor = pyproject["project"]["requires-python"].removeprefix(">=")
    conda_python = next(d for d in conda_deps if d.startswith("python")).split("=")[1]
    assert tuple(map(int, conda_python.split("."))) >= tuple(map(int, python_floor.split(".")))
    assert "dev" in pyproject["project"]["optional-dependencies"]


def test_ci_runs_the_readme_test_command_after_pinned_torch():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "set -euo pipefail" in ci
    assert ci.index("torch==2.13.0") < ci.index('-e ".[dev]"')
    test_command = re.search(r"```bash\n# test\n(.+?)\n```", readme, flags=re.S).group(1).strip()
    assert ci.rstrip().endswith(test_command)


def test_runtime_dependencies_are_the_documented_ones():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=\[ ]", d)[0] for d in deps}
    assert names == {"torch", "safetensors", "pillow", "matplotlib", "tokenizers"}
    assert "torch>=2.4" in deps
