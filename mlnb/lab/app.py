"""``mlnb lab``: JupyterLab on the project, with the project's store in its environment.

JupyterLab runs as a child process (``python -m jupyterlab``) in the project
folder, with ``MLFLOW_TRACKING_URI`` (and a server's credentials, as
:func:`mlnb.store.client_env` hands them on) set to the store the command
line resolves, so a notebook run by hand in it logs where a stage does. The
child is stopped by its PID: Ctrl-C and SIGTERM reach it and are waited for.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mlnb.errors import UsageError
from mlnb.store import client_env, tracking_uri

#: how to get what ``mlnb lab`` needs
INSTALL = 'pip install "mlnb[lab]"'
#: seconds JupyterLab has to exit after SIGTERM before it is killed
STOP_WAIT = 30.0


def lab_command(root: Path, port: int | None, browser: bool, extra: Sequence[str]) -> list[str]:
    """The command line of JupyterLab on ``root``.

    Raises:
        UsageError: JupyterLab is not installed, naming the extra that brings it.
    """
    if importlib.util.find_spec("jupyterlab") is None:
        raise UsageError(f"mlnb lab needs JupyterLab, which is not installed: {INSTALL}")
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}"]
    if port is not None:
        command.append(f"--port={port}")
    if not browser:
        command.append("--no-browser")
    return command + list(extra)


def lab_env(root: Path) -> dict[str, str]:
    """This process's environment with the project's store in it."""
    return {**os.environ, **client_env(tracking_uri(root))}


def run_lab(root: Path, port: int | None, browser: bool, extra: Sequence[str] = ()) -> int:
    """Run JupyterLab on ``root`` until it exits; its exit code.

    Ctrl-C or SIGTERM stops it: the child is sent SIGTERM (on which JupyterLab
    shuts down its kernels and the mlnb runs it started, without asking for a
    confirmation), waited for (killed after :data:`STOP_WAIT` seconds), and
    :class:`KeyboardInterrupt` is raised.
    """
    process = subprocess.Popen(lab_command(root, port, browser, extra), cwd=root, env=lab_env(root))

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        return process.wait()
    except KeyboardInterrupt:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            # its kernels and extensions are shut down by then; what is left is a worker
            # thread of the contents manager (anyio) that keeps the process from exiting
            process.kill()
            process.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
