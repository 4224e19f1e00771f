"""Starting a service: every error before serving says what to do, and a taken port fails first."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mlnb.serving.server import ServeError, _loopback, create_app, serve
from tests.helpers import free_port
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


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True),
     ("0.0.0.0", False), ("::", False), ("no-such-host.invalid", False)],
)  # fmt: skip
def test_only_loopback_addresses_may_serve_without_tokens(host: str, loopback: bool) -> None:
    assert _loopback(host) is loopback


def test_a_port_beyond_65535_is_a_serve_error(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ServeError, match=r"cannot listen on 127\.0\.0\.1:70000: .*--port"):
        serve("cancer", port=70000, tracking_uri=store.uri, log_dir=tmp_path)


def test_the_store_password_never_appears_in_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://alice:s3cret-pw@127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ServeError) as failed:
        create_app("cancer", tracking_uri=uri, log_dir=tmp_path)
    message = str(failed.value)
    assert f"MLflow store http://***@127.0.0.1:{uri.rsplit(':', 1)[1]}" in message
    assert "s3cret-pw" not in message and "alice" not in message
    assert "s3cret-pw" not in failed.value.tracking_uri
