"""Shared fixtures: every test gets its own project folder and MLflow store.

The ``project`` fixture lays out a throwaway project (``notebooks/`` with the
scenario notebooks of ``tests/notebooks``, ``pipelines/``) in a temporary
folder; mlnb's default store for it is ``<project>/mlflow.db``, a SQLite file
in that folder. No ``MLFLOW_*`` variable leaks in from the environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import SCENARIOS

# MLflow's telemetry would reach out of this machine; tests talk to 127.0.0.1 only
os.environ["DO_NOT_TRACK"] = "true"
# The Ctrl-C tests send SIGINT to the processes they start. A shell starts a background job
# with SIGINT ignored, and an ignored signal stays ignored across exec; a handler does not.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


class Project:
    """A temporary mlnb project."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "notebooks").mkdir(parents=True)
        (root / "pipelines").mkdir()
        for notebook in SCENARIOS.glob("*.ipynb"):
            shutil.copy(notebook, root / "notebooks" / notebook.name)

    def spec(self, text: str, name: str = "p.yaml") -> Path:
        """Write a pipeline spec (dedented) into pipelines/ and return its path."""
        path = self.root / "pipelines" / name
        path.write_text(textwrap.dedent(text))
        return path

    @property
    def store(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.store)

    def mlnb(
        self, *args: str, timeout: float = 300, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``mlnb`` command line in the project, as a user would."""
        return subprocess.run(
            [sys.executable, "-m", "mlnb.cli", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,  # type: ignore[arg-type]
        )


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist (``make test``), a file's tests run in one worker, in their order.

    A file's module fixtures (a trained project, a fleet of servers) are then
    built once, not once per worker. The team tests are one unit across their
    files: they share PostgreSQL, S3 and ``mlflow server`` (started once per
    worker), and each builds on what the one before left in the store.
    """
    from xdist.scheduler import LoadScopeScheduling

    # in the order collected (see below), not xdist's default of the files with most tests first
    config.option.loadscopereorder = False

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/team" if path.startswith("tests/team/") else path

    return ByFile(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the files of whole pipelines first, so no long file starts last."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # set in xdist's workers only
        return
    team = Path(__file__).parent / "team"
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: not (item.path in slow or item.path.is_relative_to(team)))


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No MLFLOW_* variable from outside; work in a temporary folder."""
    for key in list(os.environ):
        if key.startswith("MLFLOW_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A fresh project with the scenario notebooks in notebooks/."""
    return Project(tmp_path / "proj")


def leftover_processes(root: Path) -> list[str]:
    """Live processes a run started: this process's descendants, or anything in the project.

    Kernels are forked from mlnb's fork server, so their command line does not
    say ``ipykernel_launcher``; every kernel works in the project folder (or
    below it), and in-process runs leave their kernels and server as children.
    """
    root_text = str(root.resolve())
    candidates = {p.pid: p for p in psutil.Process().children(recursive=True)}
    for proc in psutil.process_iter():
        try:
            cwd = proc.cwd()
        except psutil.Error:
            continue
        if cwd == root_text or cwd.startswith(root_text + os.sep):
            candidates[proc.pid] = proc
    me = psutil.Process()
    for proc in [me, *me.parents()]:
        candidates.pop(proc.pid, None)
    left = []
    for pid, proc in sorted(candidates.items()):
        try:
            left.append(f"{pid} ({proc.status()}): {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            continue
    return left


@pytest.fixture
def no_process_left(project: Project) -> Iterator[None]:
    """After the test, no kernel (or kernel server) a run started is still there."""
    yield
    left = leftover_processes(project.root)
    assert not left, "processes left behind:\n" + "\n".join(left)
