"""Starting a service: every error before serving says what to do, and a taken port fails first."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mlnb.serving.server import ServeError, create_app
from tests.serving.helpers import SERVE, Store


def test_errors_before_serving_say_what_to_do(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ServeError, match=r"no registered model 'cancr'.*did you mean 'cancer'"):
        create_app("cancr", tracking_uri=store.uri, log_dir=tmp_path)
    with pytest.raises(ServeError) as alias:
        create_app("cancer", alias="gold", tracking_uri=store.uri, log_dir=tmp_path)
    assert str(alias.value).startswith(
        "no version of 'cancer' has alias 'gold'; promote one with `mlnb promote cancer`"
    )
    assert "@champion → version 1" in str(alias.value)
    assert (alias.value.model, alias.value.alias) == ("cancer", "gold")
    missing = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    with pytest.raises(ServeError, match="no MLflow store at"):
        create_app("cancer", tracking_uri=missing, log_dir=tmp_path)
    assert not (tmp_path / "none").exists()


def test_a_taken_port_fails_before_loading(store: Store, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        arguments = {"model": "cancer", "port": port, "tracking_uri": store.uri}
        done = subprocess.run(
            [sys.executable, "-c", SERVE, json.dumps(arguments)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert f"ServeError: cannot listen on 127.0.0.1:{port}" in done.stderr
