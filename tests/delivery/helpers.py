"""What the CI/CD tests share besides fixtures: the command line, a tiny project, readers.

Real kernels, real SQLite MLflow stores in temporary folders and the real
command line: a subprocess (``python -m mlnb``) where the process boundary
matters, click's CliRunner where it does not.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
from click.testing import CliRunner, Result

import mlnb
from mlnb import __version__
from mlnb.cli import main
from tests.helpers import SCENARIOS

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

NBVAL_SUITE = "notebooks (nbval --nbval-lax)"
WHEEL = f"mlnb-{__version__}-py3-none-any.whl"
DIST_INFO = f"mlnb-{__version__}.dist-info"
#: the wheel's folder of files installed outside the package (the JupyterLab extension)
DATA = f"mlnb-{__version__}.data/data"
#: the package mlnb runs from here: its source tree (installed editable)
PACKAGE = Path(mlnb.__file__).resolve().parent


def mlnb_cli(
    cwd: Path, *args: str, timeout: float = 280, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m mlnb ARGS`` in ``cwd``, as a person (or CI) runs it; no MLFLOW_* leaks in."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    clean["DO_NOT_TRACK"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "mlnb", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def invoke(cwd: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    """The command line in this process (click's CliRunner), from ``cwd``."""
    monkeypatch.chdir(cwd)
    return CliRunner().invoke(main, list(args))


def scenario_project(root: Path) -> Path:
    """A project folder with the scenario notebooks in notebooks/."""
    (root / "notebooks").mkdir(parents=True)
    (root / "pipelines").mkdir()
    for notebook in SCENARIOS.glob("*.ipynb"):
        shutil.copy(notebook, root / "notebooks" / notebook.name)
    return root


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@dataclass(frozen=True)
class Case:
    name: str
    status: str  # passed, failed, skipped: as JUnit XML says it
    message: str  # the failure's message attribute (its headline)
    text: str  # the failure's full text


def read_junit(path: Path) -> dict[str, list[Case]]:
    """JUnit XML as suite name → its cases, in order."""
    suites: dict[str, list[Case]] = {}
    for suite in ET.parse(path).getroot().iter("testsuite"):
        cases = suites.setdefault(suite.get("name", ""), [])
        for item in suite.iter("testcase"):
            failure, skipped = item.find("failure"), item.find("skipped")
            name = item.get("name", "")
            if failure is not None:
                case = Case(name, "failed", failure.get("message", ""), failure.text or "")
            elif skipped is not None:
                case = Case(name, "skipped", skipped.get("message", ""), "")
            else:
                case = Case(name, "passed", "", "")
            cases.append(case)
    return suites


def processes_in(root: Path) -> list[str]:
    """Live processes working in ``root`` or below (kernels a run left behind)."""
    text = str(root.resolve())
    found = []
    for proc in psutil.process_iter():
        try:
            cwd = proc.cwd()
            if cwd == text or cwd.startswith(text + os.sep):
                found.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
        except psutil.Error:
            continue
    return found


@dataclass(frozen=True)
class Outcome:
    """One ``mlnb test`` in a project: the project, what it printed, its JUnit XML, the
    processes left working in it."""

    root: Path
    done: subprocess.CompletedProcess[str]
    junit: dict[str, list[Case]]
    left: list[str]


def mlnb_test(root: Path, report: str) -> Outcome:
    """``mlnb test --junit-xml REPORT`` in ``root``, as CI runs it."""
    done = mlnb_cli(root, "test", "--junit-xml", report)
    path = root / report
    return Outcome(root, done, read_junit(path) if path.exists() else {}, processes_in(root))


@dataclass(frozen=True)
class Scaffolded:
    """``mlnb init shop``, then what its CI workflow runs: check, test, build."""

    root: Path
    init: subprocess.CompletedProcess[str]
    check: subprocess.CompletedProcess[str]
    test: Outcome
    build: subprocess.CompletedProcess[str]


def bundle_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {
            info.name: tar.extractfile(info).read()  # type: ignore[union-attr]
            for info in tar.getmembers()
            if info.isfile()
        }


def manifest_of(path: Path) -> dict[str, Any]:
    return json.loads(bundle_members(path)["manifest.json"])


def listing(output: str) -> list[tuple[bool, str, str, str]]:
    """``mlnb deploy --list`` lines as (live, pipeline, version, action)."""
    rows = []
    for line in output.splitlines():
        if line[:2] in ("* ", "  "):
            pipeline, version, action = line[2:].split()[:3]
            rows.append((line.startswith("*"), pipeline, version, action))
    return rows


def store(root: Path) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def live(root: Path, pipeline: str = "tiny") -> str:
    return (root / ".mlnb" / "deployments" / pipeline / "LIVE").read_text()


# -- a tiny project for build, deploy and the monitor ------------------------------

TINY = """\
    name: tiny
    params: {x: 1}
    profiles:
      ci: {x: 10}
    stages:
      a:
        notebook: notebooks/add_one.ipynb
        outputs: {out_path: out.txt}
      show:
        notebook: notebooks/with_outputs.ipynb
      read:
        notebook: notebooks/reads_input.ipynb
        params: {in_path: data/in.txt}
        outputs: {out_path: out.txt}
    model:
      name: tiny
      stage: a
      holdout: ${a.outputs.out_path}
      target: target
      metric: accuracy_score
"""

MONITOR = """\
    name: tiny-monitor
    model: tiny
    schedule: {every: 10m}
    window: {last: 100}
    performance: {metric: accuracy, threshold: 0.9}
    retrain:
      pipeline: pipelines/tiny.yaml
    triggers: [performance]
"""

#: what the tiny pipeline's bundle holds from the project (the rest is mlnb's wheel)
TINY_FILES = {
    "data/in.txt",
    "notebooks/add_one.ipynb",
    "notebooks/reads_input.ipynb",
    "notebooks/with_outputs.ipynb",
    "pipelines/monitor.yaml",
    "pipelines/tiny.yaml",
    "requirements.lock",
}


# -- mlnb's wheel ---------------------------------------------------------------------


def wheel_entries(data: bytes) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        return {info.filename: info for info in wheel.infolist()}


def wheel_files(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        return {info.filename: wheel.read(info) for info in wheel.infolist()}


def package_files() -> dict[str, bytes]:
    """mlnb's package in its source tree, as a wheel names its files."""
    return {
        f"mlnb/{path.relative_to(PACKAGE).as_posix()}": path.read_bytes()
        for path in sorted(PACKAGE.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def data_files() -> dict[str, bytes]:
    """What ``[tool.setuptools.data-files]`` installs, as a wheel names the files."""
    source = PACKAGE.parent
    table = tomllib.loads((source / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {
        f"{DATA}/{target}/{path.name}": path.read_bytes()
        for target, globs in table["data-files"].items()
        for pattern in globs
        for path in sorted(source.glob(pattern))
        if path.is_file()
    }


def from_the_wheel(site: Path) -> dict[str, str]:
    """The environment of a process whose mlnb is the one installed in ``site``."""
    return {"PYTHONPATH": str(site)}
