"""The project's own files stay true to each other."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import yaml

from tests.helpers import REPO

CONDA_NAMES = {
    "jupyter-client": "jupyter-client",
    "uvicorn-standard": "uvicorn",
    "prometheus-client": "prometheus-client",
}


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(.*)$", requirement.strip())
    assert match, requirement
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def test_environment_yml_has_the_bounds_of_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = dict(_split(r) for r in project["dependencies"])
    for extra in ("lab", "team"):
        pins.update(_split(r) for r in project["optional-dependencies"][extra])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda: dict[str, str] = {}
    pip: list[str] = []
    for item in env["dependencies"]:
        if isinstance(item, dict):
            pip += item["pip"]
        else:
            name, bound = _split(item)
            conda[CONDA_NAMES.get(name, name)] = bound
    conda.update(_split(r) for r in pip if not r.startswith("-"))
    assert conda.pop("python") == project["requires-python"].replace(" ", "")
    assert conda.pop("pip") == ""
    assert conda == pins
    assert '-e ".[dev,team]"' in pip


def test_help_is_fast_and_does_not_import_mlflow() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mlnb", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "run" in result.stdout and "check" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert not {m for m in imported if m.split(".")[0] in ("mlflow", "papermill", "pandas")}
