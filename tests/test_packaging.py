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


def readme_block(title: str) -> list[str]:
    """The command lines of the README's ```bash block that starts with `# title`."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(rf"```bash\n# {re.escape(title)}.*?\n(.+?)\n```", readme, flags=re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readme_set_up_command_then_its_test_command():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    (set_up,) = readme_block("set up")
    assert set_up == "bash scripts/setup.sh && source .venv/bin/activate"
    assert ci[0] == "set -euo pipefail" and not any("pip install" in line for line in ci)  # only the script installs
    steps = ["bash scripts/setup.sh .ci-venv", "source .ci-venv/bin/activate", *readme_block("test")]
    assert [line for line in ci if line in steps] == steps and ci[-1] == steps[-1]


def test_setup_script_pins_torch_before_and_with_the_project():
    script = (ROOT / "scripts" / "setup.sh").read_text()
    assert "set -euo pipefail" in script and 'torch_pin="torch==2.13.0"' in script
    torch_first = script.index('pip install --quiet "$torch_pin"')
    project = script.index('pip install --quiet -e ".[dev]" "$torch_pin"')
    assert torch_first < project < script.index("ipykernel install --sys-prefix --name python3")


def test_license_file_and_metadata_agree():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"  # the SPDX string, not the deprecated table
    assert pyproject["build-system"]["requires"] == ["setuptools>=77"]  # the first to read that form
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) == 201


def test_runtime_dependencies_are_the_documented_ones():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=\[ ]", d)[0] for d in deps}
    assert names == {"torch", "safetensors", "pillow", "matplotlib", "tokenizers"}
    assert "torch>=2.4" in deps
