"""``mlnb serve`` against ``mlflow models serve``: the same requests, the same answers.

Every model of :mod:`.models` is served twice from one SQLite store, by
``mlflow models serve -m models:/NAME@champion --env-manager local`` and by
``mlnb serve``; every request of :mod:`.cases` goes to both. Where MLflow
answers 200, mlnb answers 200 with the same body (parsed JSON compared
exactly: types, float digits, ``NaN``; mlnb's own ``model_version`` and
``request_id`` fields left out); where MLflow answers 4xx, mlnb answers 4xx
with the same ``error_code`` when both bodies are JSON. A 5xx from MLflow is
a bug of its own and asks nothing of mlnb. Both answers are recorded as test
properties (``--junitxml`` keeps them). ``/version``, ``/ping`` and
``/health``, and MLflow's own client, are compared too.

All fourteen servers start at once, and only those of the models the
selected tests use; the tests of a model whose servers did not start fail
with why, the others run. Each process is stopped by its PID (and its
children's).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil
import pytest

from tests.helpers import free_port, wait_for_ping
from tests.serving.compat.cases import Request, requests
from tests.serving.compat.models import ALIAS, MODELS, build_store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: ``mlnb serve -m models:/NAME@ALIAS``, as ``mlflow models serve`` takes it; False:
#: ``mlnb serve NAME --alias ALIAS``, the form of mlnb before ``-m``
MLNB_TAKES_MODEL_URI = True
HOST = "127.0.0.1"
BIN = Path(sys.executable).parent  # this virtual environment's commands
START_SECONDS = 300  # fourteen servers loading at once on two cores
STOP_SECONDS = 20
#: what mlnb adds to an answer of MLflow's protocol
MLNB_FIELDS = ("model_version", "request_id")
REQUESTS = {(model, name): request for model, name, request in requests()}


def mlnb_command(name: str, port: int) -> list[str]:
    """``mlnb serve`` of ``NAME@champion`` on ``port``: the one place that spells it."""
    model = ["-m", f"models:/{name}@{ALIAS}"] if MLNB_TAKES_MODEL_URI else [name, "--alias", ALIAS]
    return [str(BIN / "mlnb"), "serve", *model, "--host", HOST, "--port", str(port)]


def mlflow_command(name: str, port: int) -> list[str]:
    serve = ["serve", "-m", f"models:/{name}@{ALIAS}", "--env-manager", "local"]
    return [str(BIN / "mlflow"), "models", *serve, "-p", str(port), "-h", HOST]


def server_env(store: str) -> dict[str, str]:
    """This environment without MLflow's variables, the store's, and no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = store
    env["DO_NOT_TRACK"] = "true"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])  # MLflow runs `uvicorn`
    return env


class Server:
    """A server process on 127.0.0.1, its output in a file of ``folder``."""

    def __init__(self, command: list[str], port: int, folder: Path, env: dict[str, str]) -> None:
        folder.mkdir(parents=True)
        self.command = command
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.output = folder / "server.log"
        with self.output.open("wb") as output:
            self.proc = subprocess.Popen(
                command, cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def family(self) -> list[psutil.Process]:
        """The process and its descendants (``mlflow models serve`` runs uvicorn as a child)."""
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


def stop(servers: list[Server]) -> None:
    """SIGTERM to every server process by its PID, then SIGKILL to those still there."""
    family = [p for server in servers for p in server.family()]
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):  # it ended on its own meanwhile
            proc.terminate()
    _, alive = psutil.wait_procs(family, timeout=STOP_SECONDS)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=STOP_SECONDS)
    for server in servers:
        server.proc.wait(STOP_SECONDS)


@dataclass(frozen=True)
class Pair:
    """The two servers of one model."""

    mlflow: Server
    mlnb: Server


@dataclass
class Fleet:
    """The pairs of servers by model, and why those that did not start did not."""

    pairs: dict[str, Pair]
    failures: dict[str, str]

    def __getitem__(self, model: str) -> Pair:
        """The model's pair; a test of a model whose servers did not start fails with why."""
        if model in self.failures:
            pytest.fail(self.failures[model], pytrace=False)
        return self.pairs[model]

    def wait(self, timeout: float) -> None:
        """Wait for every server's ``/ping``; note the failure of those that do not answer."""
        deadline = time.monotonic() + timeout
        for name, pair in self.pairs.items():
            for server in (pair.mlflow, pair.mlnb):
                left = max(deadline - time.monotonic(), 1)
                try:
                    wait_for_ping(server.proc, server.url, server.log, left)
                except AssertionError as error:
                    self.failures[name] = f"{Path(server.command[0]).name} of {name}: {error}"


@pytest.fixture(scope="module")
def store(no_telemetry: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URI of a SQLite store with :data:`~.models.MODELS` registered."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's advice on pickles and type hints
        return build_store(tmp_path_factory.mktemp("compat-store"))


@pytest.fixture(scope="module")
def servers(
    request: pytest.FixtureRequest, store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """Both servers of each model the selected tests of this module use, started at once."""
    names = {
        item.callspec.params["model"]
        for item in request.session.items
        if item.getparent(pytest.Module) is request.node and hasattr(item, "callspec")
    }
    root = tmp_path_factory.mktemp("compat-servers")
    env = server_env(store)
    ports: set[int] = set()
    started: list[Server] = []

    def start(command: Callable[[str, int], list[str]], name: str, label: str) -> Server:
        while (port := free_port()) in ports:  # fourteen free ports, all different
            pass
        ports.add(port)
        started.append(Server(command(name, port), port, root / f"{name}-{label}", env))
        return started[-1]

    try:
        pairs = {
            name: Pair(start(mlflow_command, name, "mlflow"), start(mlnb_command, name, "mlnb"))
            for name in sorted(names)
        }
        fleet = Fleet(pairs, failures={})
        fleet.wait(START_SECONDS)
        yield fleet
    finally:
        stop(started)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60, trust_env=False) as client:
        yield client


@dataclass(frozen=True)
class Answer:
    """A server's answer: its status, its text, and its body parsed (``None``: not JSON)."""

    status: int
    text: str
    body: Any

    @classmethod
    def of(cls, response: httpx.Response) -> Answer:
        try:
            body = json.loads(response.text)  # Python's json reads NaN and Infinity tokens
        except ValueError:
            body = None
        return cls(response.status_code, response.text, body)

    def error_code(self) -> str | None:
        return self.body.get("error_code") if isinstance(self.body, dict) else None

    def summary(self, width: int = 160) -> str:
        """The status and the start of the message, on one line."""
        if isinstance(self.body, dict) and "message" in self.body:
            text = f"{self.body.get('error_code')}: {self.body['message']}"
        else:
            text = self.text
        return f"{self.status} {' '.join(text.split())[:width]}"


def without_mlnb_fields(body: Any, reference: Any) -> Any:
    """mlnb's answer without the fields it adds to MLflow's (those ``reference`` lacks)."""
    if not isinstance(body, dict) or not isinstance(reference, dict):
        return body
    return {k: v for k, v in body.items() if k not in MLNB_FIELDS or k in reference}


def difference(expected: Any, actual: Any, path: str = "body") -> str | None:
    """Where two parsed JSON values first differ; types and float digits count, NaN is NaN."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if list(expected) != list(actual):
            return f"{path} keys {list(expected)} vs {list(actual)}"
        for key in expected:
            if found := difference(expected[key], actual[key], f"{path}.{key}"):
                return found
        return None
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return f"{path} has {len(expected)} items vs {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            if found := difference(e, a, f"{path}[{i}]"):
                return found
        return None
    if type(expected) is type(actual) and repr(expected) == repr(actual):
        return None
    return f"{path}: {expected!r} vs {actual!r}"


#: where mlnb takes, on purpose, what MLflow refuses: the case, and why
LENIENT = {
    "media-type-upper-case": "media types are case-insensitive (RFC 9110, 8.3.1); MLflow "
    "compares them exactly",
}


def check(mlflow: Answer, mlnb: Answer) -> None:
    """What mlnb must answer, given MLflow's answer."""
    versus = f"mlflow {mlflow.status} vs mlnb {mlnb.status}"
    if mlflow.status == 200:
        assert mlnb.status == 200, f"{versus}: mlnb says {mlnb.summary()}"
        found = difference(mlflow.body, without_mlnb_fields(mlnb.body, mlflow.body))
        assert found is None, f"{versus}, other answers: {found}"
    elif 400 <= mlflow.status < 500:
        assert 400 <= mlnb.status < 500, f"{versus}: mlnb says {mlnb.summary()}"
        if mlflow.error_code() is not None and mlnb.error_code() is not None:
            assert mlnb.error_code() == mlflow.error_code(), (
                f"{versus}, error_code {mlflow.error_code()} vs {mlnb.error_code()}:"
                f" mlnb says {mlnb.summary()}"
            )


def post(http: httpx.Client, server: Server, request: Request) -> Answer:
    """``POST /invocations``; sent again on a connection the server closed without saying.

    uvicorn closes the connection after an application's exception (MLflow's
    500 when no Content-Type is sent) without ``Connection: close``, so the
    next request on it meets a reset.
    """

    def send() -> httpx.Response:
        url = f"{server.url}/invocations"
        return http.post(url, content=request.body, headers=request.headers())

    try:
        return Answer.of(send())
    except (httpx.ReadError, httpx.RemoteProtocolError):
        return Answer.of(send())


@pytest.mark.parametrize(("model", "case"), list(REQUESTS))
def test_invocations(
    model: str, case: str, servers: Fleet, http: httpx.Client, request: Any
) -> None:
    sent = REQUESTS[model, case]
    pair = servers[model]
    mlflow, mlnb = (post(http, s, sent) for s in (pair.mlflow, pair.mlnb))
    if case in LENIENT and 400 <= mlflow.status < 500 and mlnb.status == 200:
        return  # a deliberate difference (LENIENT says why)
    # both answers in the report: --junitxml writes them (record_property warns under xunit2)
    request.node.user_properties += [("mlflow", mlflow.summary(1000)), ("mlnb", mlnb.summary(1000))]
    check(mlflow, mlnb)


SERVED = list(MODELS)


@pytest.mark.parametrize("path", ["/ping", "/health"])
@pytest.mark.parametrize("model", SERVED)
def test_health(model: str, path: str, servers: Fleet, http: httpx.Client) -> None:
    pair = servers[model]
    statuses = [http.get(f"{s.url}{path}").status_code for s in (pair.mlflow, pair.mlnb)]
    assert statuses == [200, 200], f"mlflow {statuses[0]} vs mlnb {statuses[1]}"


@pytest.mark.parametrize("model", SERVED)
def test_version(model: str, servers: Fleet, http: httpx.Client) -> None:
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    pair = servers[model]
    mlflow, mlnb = (Answer.of(http.get(f"{s.url}/version")) for s in (pair.mlflow, pair.mlnb))
    assert (mlflow.status, mlflow.text) == (mlnb.status, mlnb.text), (
        f"mlflow {mlflow.status} {mlflow.text!r} vs mlnb {mlnb.summary()}"
    )
    clients = [ScoringServerClient(HOST, s.port) for s in (pair.mlflow, pair.mlnb)]
    assert clients[0].get_version() == clients[1].get_version()


def invoke(server: Server, data: Any) -> tuple[bool, Any]:
    """MLflow's client's ``invoke``: (True, its ``PredictionsResponse``) or (False, its error)."""
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    try:
        return True, ScoringServerClient(HOST, server.port).invoke(data)
    except Exception as error:  # the client raises a bare Exception for a status other than 200
        return False, str(error)


def client_data(model: str, nan: bool) -> Any:
    """What a Python client sends the model: a DataFrame (NaN in a double), or an array."""
    spec = MODELS[model]
    frame = spec.sample()
    if nan:
        frame.loc[1, spec.columns_of("f")[0]] = float("nan")
    return frame.to_numpy() if spec.kind == "tensor" else frame


@pytest.mark.parametrize("nan", [False, True], ids=["rows", "rows-with-nan"])
@pytest.mark.parametrize("model", [m.name for m in MODELS.values() if m.kind != "chat"])
def test_scoring_server_client(model: str, nan: bool, servers: Fleet) -> None:
    data = client_data(model, nan)
    pair = servers[model]
    (mlflow_ok, mlflow), (mlnb_ok, mlnb) = (invoke(s, data) for s in (pair.mlflow, pair.mlnb))
    if not mlflow_ok:
        assert not mlnb_ok, f"mlflow failed ({mlflow[:200]}), mlnb answered {mlnb}"
        return
    assert mlnb_ok, f"mlflow answered, mlnb failed: {mlnb[:300]}"
    found = difference(dict(mlflow), without_mlnb_fields(dict(mlnb), dict(mlflow)))
    assert found is None, f"other answers: {found}"
    pd.testing.assert_frame_equal(mlnb.get_predictions(), mlflow.get_predictions())
