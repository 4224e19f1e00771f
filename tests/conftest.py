"""Shared fixtures: every test gets its own project folder and MLflow store.

The ``project`` fixture lays out a throwaway project (``notebooks/`` with the
scenario notebooks of ``tests/notebooks``, ``pipelines/``) in a temporary
folder; mlnb's default store for it is ``<project>/mlflow.db``, a SQLite file
in that folder. No ``MLFLOW_*`` variable leaks in from the environment.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

# MLflow's telemetry would reach out of this machine; tests talk to 127.0.0.1 only
os.environ["DO_NOT_TRACK"] = "true"

HERE = Path(__file__).parent
SCENARIOS = HERE / "notebooks"
REPO = HERE.parent

#: two scenario stages, a → b (a writes x + 1, b reads it), with a ci profile;
#: tests append stages to it
CHAIN = """
    name: p
    profiles:
      ci: {x: 10}
    stages:
      a:
        notebook: notebooks/add_one.ipynb
        params: {x: 1}
        outputs: {out_path: out.txt}
      b:
        notebook: notebooks/reads_input.ipynb
        params: {in_path: "${a.outputs.out_path}"}
        outputs: {out_path: out.txt}
"""
#: a stage that raises in its second cell, and one that needs it
FAILS_FIRST = """
    name: p
    stages:
      fail:
        notebook: notebooks/fails_in_cell_2.ipynb
      after:
        notebook: notebooks/add_one.ipynb
        needs: [fail]
        outputs: {out_path: out.txt}
"""


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_ping(
    proc: subprocess.Popen[bytes], url: str, log: Callable[[], str], timeout: float
) -> None:
    """Wait until the server process at ``url`` answers ``/ping``; fail with its log if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}):\n{log()}")
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server did not answer /ping within {timeout:.0f} s:\n{log()}")
