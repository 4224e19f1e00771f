"""`mlnb lab`: JupyterLab on the project with its store, or an error naming the extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlnb.lab.app import lab_command, lab_env


def test_jupyterlab_gets_the_projects_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = lab_env(tmp_path)
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@store:5000")
    env = lab_env(tmp_path)
    assert env["MLFLOW_TRACKING_URI"] == "http://store:5000"
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("user", "secret")
    command = lab_command(tmp_path, 8899, browser=False, extra=["--ServerApp.ip=127.0.0.1"])
    assert command[1:] == [
        "-m",
        "jupyterlab",
        f"--ServerApp.root_dir={tmp_path}",
        "--port=8899",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
    ]


def test_without_jupyterlab_the_error_names_the_extra(tmp_path: Path) -> None:
    without = (
        "import sys; sys.modules['jupyterlab'] = None; from mlnb.cli import main; "
        "sys.argv = ['mlnb', 'lab', '--no-browser']; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", without], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert 'needs JupyterLab, which is not installed: pip install "mlnb[lab]"' in result.stderr
