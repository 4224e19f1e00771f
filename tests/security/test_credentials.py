"""A store's password never leaks: not in output, tags, params, notebooks or their HTML.

A real ``mlflow server`` on 127.0.0.1 sits behind a real HTTP proxy that
checks Basic auth (MLflow's own ``basic-auth`` app needs Flask-WTF, which is
not installed here) and forwards what it lets through. ``mlnb run`` is given
``MLFLOW_TRACKING_URI=http://alice:<secret>@127.0.0.1:<proxy>``, as a team
member would; the stages log to the server through the proxy, and the secret
is looked for everywhere the run leaves text.
"""

from __future__ import annotations

import base64
import hmac
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import nbformat
import pytest

from mlnb.store import client_env, redacted, redacted_text, use_credentials
from tests.helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

USER = "alice"
SECRET = "s3cr3t-Pa55"  # the value looked for
SKIPPED_HEADERS = {"host", "authorization", "content-length", "connection", "transfer-encoding"}


class AuthProxy(ThreadingHTTPServer):
    """A reverse proxy on 127.0.0.1 that answers 401 to any request without ``user:password``."""

    daemon_threads = True

    def __init__(self, upstream: str, user: str, password: str) -> None:
        super().__init__(("127.0.0.1", free_port()), _Forward)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.expected = f"Basic {token}"
        self.upstream = httpx.Client(base_url=upstream, timeout=60)
        self.allowed = 0
        self.refused = 0
        self.counts = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Forward(BaseHTTPRequestHandler):
    server: AuthProxy

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def _forward(self) -> None:
        proxy = self.server
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), proxy.expected.encode()):
            with proxy.counts:
                proxy.refused += 1
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with proxy.counts:
            proxy.allowed += 1
        length = int(self.headers.get("Content-Length") or 0)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in SKIPPED_HEADERS}
        answer = proxy.upstream.request(
            self.command,
            self.path,
            content=self.rfile.read(length) if length else None,
            headers=headers,
        )
        self.send_response(answer.status_code)
        for key, value in answer.headers.items():
            if key.lower() not in {*SKIPPED_HEADERS, "content-encoding"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


@dataclass
class Server:
    """The mlflow server, where its artifacts land, and the proxy in front of it."""

    url: str
    artifacts: Path
    proxy: AuthProxy

    def uri(self, password: str = SECRET) -> str:
        return f"http://{USER}:{password}@127.0.0.1:{self.proxy.port}"


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(DO_NOT_TRACK="true", MLFLOW_DISABLE_TELEMETRY="true", NO_COLOR="1")
    # no job runner (huey consumers) beside the server: mlnb runs no MLflow jobs
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``mlflow server`` with a SQLite store and served artifacts, stopped by its PID."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'server.db'}"]
    command += ["--artifacts-destination", str(folder / "artifacts")]
    log = folder / "server.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            command, cwd=folder, env=environment(), stdout=handle, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    proxy = AuthProxy(url, USER, SECRET)
    try:
        _wait_healthy(proc, url, log)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        yield Server(url, folder / "artifacts", proxy)
    finally:
        proxy.shutdown()
        proxy.server_close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    import time

    deadline = time.monotonic() + 240  # importing MLflow's server takes a while on a busy box
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"mlflow server did not start:\n{log.read_text(errors='replace')}")


def notebook_that_starts_its_run(path: Path) -> None:
    """A stage as the example's train.ipynb writes it: ``with mlflow.start_run():``.

    Ending that run makes MLflow print a link to it, built from the tracking
    URI, into the cell's output.
    """
    parameters = nbformat.v4.new_code_cell("answer = 42")
    parameters.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        'import mlflow\nwith mlflow.start_run():\n    mlflow.log_metric("answer", answer)'
    )
    notebook = nbformat.v4.new_notebook(cells=[parameters, body])
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, path)


SPEC = """
    name: secret
    stages:
      logs:
        notebook: notebooks/starts_its_run.ipynb
      adds:
        notebook: notebooks/add_one.ipynb
        params: {x: 1}
        outputs: {out_path: out.txt}
"""


def files_holding(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_a_run_on_a_password_protected_server_shows_the_password_nowhere(
    project, server: Server
) -> None:
    notebook_that_starts_its_run(project.root / "notebooks" / "starts_its_run.ipynb")
    project.spec(SPEC)
    env = {**environment(), "MLFLOW_TRACKING_URI": server.uri()}
    done = subprocess.run(
        [sys.executable, "-m", "mlnb.cli", "run", "pipelines/p.yaml"],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert f"store:     http://127.0.0.1:{server.proxy.port}\n" in done.stdout
    # every request came with the credentials: the parent's client and the kernels'
    assert server.proxy.allowed > 0 and server.proxy.refused == 0

    from mlflow import MlflowClient

    upstream = MlflowClient(tracking_uri=server.url)
    [experiment] = [e for e in upstream.search_experiments() if e.name == "secret"]
    runs = upstream.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["adds", "logs", "secret"]
    assert all(r.info.status == "FINISHED" for r in runs)
    [logs] = [r for r in runs if r.info.run_name == "logs"]
    assert logs.data.metrics["answer"] == 42  # the kernel logged through the proxy
    values = [v for r in runs for v in (*r.data.tags.values(), *r.data.params.values())]
    assert values and not [v for v in values if SECRET in v]

    uploaded = [p for p in server.artifacts.rglob("*") if p.suffix in (".ipynb", ".html")]
    assert len(uploaded) == 4, uploaded  # each stage's executed notebook and its HTML
    assert not files_holding(server.artifacts, SECRET)
    # the notebook kept MLflow's link to the run, without the user info
    [executed] = [p for p in uploaded if p.name == "logs.ipynb"]
    assert f"View run logs at: http://127.0.0.1:{server.proxy.port}/" in executed.read_text()
    assert not files_holding(project.root, SECRET)


def test_a_wrong_password_is_one_error_line_without_it(project, server: Server) -> None:
    project.spec(SPEC.replace("notebooks/starts_its_run.ipynb", "notebooks/add_one.ipynb"))
    wrong = "not-the-password-42"
    env = {**environment(), "MLFLOW_TRACKING_URI": server.uri(wrong)}
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", "mlnb.cli", "run", "pipelines/p.yaml"],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode != 0
    assert wrong not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
    assert f"http://***@127.0.0.1:{server.proxy.port}" in line, done.stderr
    assert "401" in line or "Unauthorized" in line or "credentials" in line.lower(), line


@pytest.mark.parametrize(
    ("uri", "env"),
    [
        (
            "http://alice:s3cr3t@store.example:5000",
            {
                "MLFLOW_TRACKING_URI": "http://store.example:5000",
                "MLFLOW_TRACKING_USERNAME": "alice",
                "MLFLOW_TRACKING_PASSWORD": "s3cr3t",
            },
        ),
        (
            "https://al%20ice:p%40ss%3Aw@store.example/mlflow",
            {
                "MLFLOW_TRACKING_URI": "https://store.example/mlflow",
                "MLFLOW_TRACKING_USERNAME": "al ice",
                "MLFLOW_TRACKING_PASSWORD": "p@ss:w",
            },
        ),
        ("http://store.example:5000", {"MLFLOW_TRACKING_URI": "http://store.example:5000"}),
        # a database driver reads its own password: the URI stays whole
        ("postgresql://u:pw@db/mlflow", {"MLFLOW_TRACKING_URI": "postgresql://u:pw@db/mlflow"}),
        ("sqlite:////tmp/mlflow.db", {"MLFLOW_TRACKING_URI": "sqlite:////tmp/mlflow.db"}),
    ],
    ids=["basic", "percent-encoded", "no-user-info", "database", "sqlite"],
)
def test_client_env_moves_user_info_into_mlflows_variables(uri: str, env: dict) -> None:
    assert client_env(uri) == env


def test_use_credentials_exports_them_for_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)

    assert use_credentials("http://bob:pw%21@h:1") == "http://h:1"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "bob"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "pw!"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "API request to http://alice:s3@cr3t@127.0.0.1:5/api/2.0/x failed",
            "API request to http://***@127.0.0.1:5/api/2.0/x failed",
        ),
        ("see https://token@host/a?mail=a@b.c", "see https://***@host/a?mail=a@b.c"),
        ("db postgresql://u:pw@db/x and mail a@b.c", "db postgresql://***@db/x and mail a@b.c"),
        ("nothing secret in http://host/x", "nothing secret in http://host/x"),
    ],
)
def test_redacted_text_hides_the_user_info_of_every_uri(text: str, shown: str) -> None:
    assert redacted_text(text) == shown


def test_redacted_and_redacted_text_agree_on_a_uri() -> None:
    uri = "http://alice:s3cr3t@store.example:5000/path"
    assert redacted(uri) == redacted_text(uri) == "http://***@store.example:5000/path"
