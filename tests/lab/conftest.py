"""The lab tests' project: the example project and three scenario specs, its runs made once.

``trained`` is shared by the module's tests (making it runs two pipelines):
``cancer`` (the example) run with its ci profile, ``p`` whose first stage fails
in its second cell, ``slow`` (a stage that sleeps, for Stop) never run, and
``typo`` whose spec has problems. jupyter_server's fixtures (pytest-jupyter)
serve it with the mlnb server extension enabled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

# jupyter_server's fixtures (jp_fetch, jp_serverapp, ...) and their coroutine test runner,
# for the tests in this folder only
from pytest_jupyter.jupyter_server import *  # noqa: F403

from tests.helpers import FAILS_FIRST, REPO, SCENARIOS

SLOW = """
    name: slow
    stages:
      nap:
        notebook: notebooks/sleeps.ipynb
        params: {seconds: 600}
        outputs: {out_path: out.json}
"""
TYPO = """
    name: typo
    stages:
      first:
        notebook: notebooks/add_one.ipynb
        outputs: {out_path: out.txt}
      second:
        notebook: notebooks/reads_input.ipynb
        params: {in_path: "${frist.outputs.out_path}"}
"""


def example_project(root: Path) -> Path:
    """A copy of the example project (its notebooks and pipelines) at ``root``."""
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "pipelines", root / "pipelines")
    return root


def clean_env() -> dict[str, str]:
    """This process's environment without any MLFLOW_* setting (the project's store decides)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


def mlnb(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlnb", *args],
        cwd=root,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = example_project(tmp_path_factory.mktemp("lab") / "project")
    for name in ("add_one", "reads_input", "fails_in_cell_2", "sleeps"):
        shutil.copy(SCENARIOS / f"{name}.ipynb", root / "notebooks" / f"{name}.ipynb")
    for name, text in (("p", FAILS_FIRST), ("slow", SLOW), ("typo", TYPO)):
        (root / "pipelines" / f"{name}.yaml").write_text(textwrap.dedent(text))
    ran = mlnb(root, "run", "cancer", "--profile", "ci")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    failed = mlnb(root, "run", "p")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    return root


@pytest.fixture
def jp_root_dir(trained: Path) -> Path:
    return trained


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"mlnb.lab": True}}}
