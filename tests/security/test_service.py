"""Attacks on the service's front door, with real sockets against real ``mlnb serve`` processes.

Tokens and scopes, label provenance, slow-loris clients, a flood of
connections, ``/ping`` while a huge request is parsed, SIGTERM during a long
parse, an unwritable prediction log, feedback for thousands of unknown ids,
labels of the wrong type, and the command line's refusals.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from mlnb.predictions import log as predlog
from mlnb.serving.auth import holder_id
from mlnb.serving.server import SHUTDOWN_SECONDS
from tests.serving.helpers import FORMATS, Server, Store, metric, wait_for

pytestmark = pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer:UserWarning")

PREDICT, FEEDBACK, BOTH = "p" * 32, "F-" * 16, "b0" * 12
TOKENS = f"predict {PREDICT} shop\nfeedback {FEEDBACK} labeler\npredict {BOTH}\nfeedback {BOTH}\n"
READ_SECONDS = 1.0
MAX_CONCURRENCY = 8
#: a header of 37,000 columns: minutes of pandas work for a quarter of a megabyte
WIDE_CSV = (",".join(f"column_{i:07d}" for i in range(37_000)) + "\n").encode()


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def guarded(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``cancer@champion`` behind a tokens file, with short read timeouts and few connections."""
    folder = tmp_path_factory.mktemp("guarded")
    (folder / "tokens").write_text(TOKENS)
    fill(folder / "predictions", store, 3_000)
    running = Server(
        folder,
        store,
        "cancer",
        tokens=str(folder / "tokens"),
        read_seconds=READ_SECONDS,
        max_concurrency=MAX_CONCURRENCY,
    )
    yield running
    running.stop()


@pytest.fixture
def own(store: Store, tmp_path: Path) -> Iterator[list[Server]]:
    """Servers of the test's own, killed when it ends."""
    started: list[Server] = []
    yield started
    for running in started:
        running.stop(signal.SIGKILL)


def fill(log_dir: Path, store: Store, count: int) -> None:
    """Today's day file with ``count`` earlier predictions (the feedback look-ups scan it)."""
    log = predlog.PredictionLog(log_dir)
    now = time.time_ns() // 1_000_000
    row = store.X.iloc[0].tolist()
    for _ in range(count):
        log.write_prediction(
            predlog.new_request_id(now), now, "1", list(store.X.columns), [row], [1], 1
        )
    log.close()


def predict(server: Server, rows: pd.DataFrame, token: str = PREDICT) -> httpx.Response:
    return server.predict(FORMATS["dataframe_split"](rows)["json"], headers=auth(token))


def feedback(server: Server, payload: Any, token: str = FEEDBACK) -> httpx.Response:
    return httpx.post(f"{server.url}/feedback", json=payload, headers=auth(token), timeout=30)


def test_each_protected_endpoint_needs_a_token_of_its_scope(guarded: Server, store: Store) -> None:
    rows = store.X.head(2)
    body = FORMATS["dataframe_split"](rows)["json"]
    missing = guarded.predict(body)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="mlnb"'
    assert missing.json()["error_code"] == "UNAUTHENTICATED"
    assert "scope 'predict'" in missing.json()["message"]
    wrong = guarded.predict(body, headers=auth("x" * 32))
    assert (wrong.status_code, wrong.headers["www-authenticate"]) == (
        401,
        'Bearer realm="mlnb", error="invalid_token"',
    )
    other_scope = predict(guarded, rows, FEEDBACK)
    assert other_scope.status_code == 403
    assert 'error="insufficient_scope", scope="predict"' in other_scope.headers["www-authenticate"]
    assert other_scope.json()["error_code"] == "PERMISSION_DENIED"
    assert "'labeler' lacks scope 'predict'" in other_scope.json()["message"]
    answered = predict(guarded, rows)
    assert answered.status_code == 200, answered.text
    assert answered.json()["predictions"] == store.predict("1", rows)
    labels = {"request_id": answered.json()["request_id"], "labels": [0, 1]}
    assert feedback(guarded, labels, PREDICT).status_code == 403
    assert httpx.post(f"{guarded.url}/feedback", json=labels).status_code == 401
    assert feedback(guarded, labels).json() == {"accepted": 1}

    for path in (
        "/ping",
        "/health",
        "/metrics",
        "/mlnb/health",
    ):  # probes and scrapers need no token
        assert guarded.get(path).status_code == 200
    assert guarded.get("/mlnb/version").status_code == 401
    version = httpx.get(f"{guarded.url}/mlnb/version", headers=auth(FEEDBACK), timeout=30)
    assert version.json()["model_version"] == "1"
    text = guarded.get("/metrics").text
    assert metric(text, "mlnb_serve_errors_total", endpoint="invocations", kind="unauthenticated")
    assert metric(text, "mlnb_serve_errors_total", endpoint="invocations", kind="forbidden") >= 1
    assert metric(text, "mlnb_serve_errors_total", endpoint="feedback", kind="forbidden") >= 1


def test_a_request_without_a_token_is_refused_before_its_body_is_read(guarded: Server) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nhost: x\r\ncontent-type: text/csv\r\n"
            b"content-length: 9000000\r\n\r\n" + b"a" * 1000
        )
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 401")
        assert b"connection: close" in answer.lower()
        sock.settimeout(5)
        while sock.recv(65536):  # the server closes without waiting for the other 8.99 MB
            pass


def test_the_log_names_who_sent_each_label_never_the_token(guarded: Server, store: Store) -> None:
    ids = [predict(guarded, store.X.iloc[[i]]).json()["request_id"] for i in (3, 4)]
    assert feedback(guarded, {"request_id": ids[0], "labels": [1]}).status_code == 200
    both = feedback(guarded, {"request_id": ids[1], "labels": [0]}, BOTH)
    assert both.status_code == 200, both.text

    table = predlog.load_predictions(guarded.log_dir).set_index("request_id")
    assert table.loc[ids[0], "labeled_by"] == "labeler"
    assert table.loc[ids[1], "labeled_by"] == holder_id(BOTH)
    written = b"".join(path.read_bytes() for path in guarded.log_dir.iterdir())
    written += guarded.output.read_bytes()
    assert b"labeler" in written
    for token in (PREDICT, FEEDBACK, BOTH):
        assert token.encode() not in written


def test_labels_of_the_wrong_type_are_refused_naming_request_and_position(
    guarded: Server, store: Store
) -> None:
    request_id = predict(guarded, store.X.iloc[[0, 1, 2]]).json()["request_id"]
    for bad, shown in (("abc", "'abc'"), (True, "True")):
        refused = feedback(guarded, {"request_id": request_id, "labels": [1, bad, 0]})
        assert refused.status_code == 422, refused.text
        message = refused.json()["message"]
        assert f"request '{request_id}' label 1: got {shown}" in message
        assert "the model predicts a number" in message
    assert (
        feedback(guarded, {"request_id": request_id, "labels": [1, 0.0, None]}).status_code == 200
    )


def test_feedback_for_3000_unknown_ids_is_answered_in_well_under_a_second(
    guarded: Server,
) -> None:
    assert sum(1 for _ in next(guarded.log_dir.glob("predictions-*")).open()) >= 3_000
    now = time.time_ns() // 1_000_000  # ids of today: their day file is the one to look in
    items = [{"request_id": predlog.new_request_id(now), "labels": [1]} for _ in range(3_000)]
    started = time.perf_counter()
    answer = feedback(guarded, items)
    took = time.perf_counter() - started
    assert answer.status_code == 404
    assert "and 2,995 more" in answer.json()["message"]
    assert took < 1.0, f"{took:.2f} s"


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(0.2)
    answer = b""
    while time.monotonic() - started < limit:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        if not chunk:
            break
        answer += chunk
    return answer, time.monotonic() - started


@pytest.mark.parametrize(
    "opening",
    [
        b"",
        b"POST /invocations HTTP/1.1\r\nhost: x\r\nx-slow: ",
        b"POST /invocations HTTP/1.1\r\nhost: x\r\ncontent-type: text/csv\r\n"
        b"content-length: 5000\r\nauthorization: Bearer " + PREDICT.encode() + b"\r\n\r\na,b\n",
    ],
    ids=["silent", "head never ends", "body never ends"],
)
def test_a_slow_loris_client_is_disconnected_within_the_read_timeout(
    guarded: Server, opening: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(opening)
        answer, open_for = read_until_closed(sock, 10 * READ_SECONDS)
    assert open_for < READ_SECONDS + 2, f"still open after {open_for:.1f} s"
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive within 1 s" in answer
    assert guarded.get("/ping").status_code == 200


def test_a_head_too_large_is_refused(guarded: Server) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\n" + b"x-big: " + b"a" * 100_000)
        answer, _ = read_until_closed(sock, 5)
    assert answer.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), answer[:200]


def test_a_flood_of_connections_gets_503_and_the_service_recovers(guarded: Server) -> None:
    flood = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(MAX_CONCURRENCY)]
    try:
        with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
            sock.sendall(b"GET /ping HTTP/1.1\r\nhost: x\r\n\r\n")
            answer, _ = read_until_closed(sock, 5)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    finally:
        for sock in flood:
            sock.close()
    wait_for(lambda: guarded.get("/ping").status_code == 200, timeout=10)


def csv_rows(store: Store, megabytes: float) -> bytes:
    rows = store.X.sample(frac=1.0, replace=False, random_state=0)
    block = rows.to_csv(index=False, header=False).encode()
    repeats = int(megabytes * 2**20 / len(block))
    return ",".join(store.X.columns).encode() + b"\n" + block * repeats


def post_csv(server: Server, body: bytes, results: list[Any]) -> None:
    try:
        response = server.predict(
            content=body, headers={"content-type": "text/csv", **auth(PREDICT)}
        )
        results.append(response.status_code)
    except httpx.HTTPError as exc:
        results.append(repr(exc))


def test_ping_answers_while_huge_requests_are_parsed(guarded: Server, store: Store) -> None:
    results: list[Any] = []
    posts = [
        threading.Thread(target=post_csv, args=(guarded, body, results))
        for body in (WIDE_CSV, *[csv_rows(store, 9)] * 2)
    ]
    for post in posts:
        post.start()
    pings: list[float] = []
    began = time.perf_counter()
    while any(post.is_alive() for post in posts):
        started = time.perf_counter()
        assert guarded.get("/ping").status_code == 200
        if any(post.is_alive() for post in posts):  # answered while a huge request was in work
            pings.append(time.perf_counter() - started)
        time.sleep(0.02)
    for post in posts:
        post.join()
    assert len(results) == 3
    window = time.perf_counter() - began
    assert len(pings) >= 3, pings
    # a loop blocked by a parse answers one ping only after it: in about the whole window
    assert max(pings) < window / 3, (
        f"/ping took {max(pings):.2f} s while requests were parsed for {window:.2f} s"
    )


def test_sigterm_during_a_long_parse_ends_the_process_within_seconds(
    store: Store, tmp_path: Path, own: list[Server]
) -> None:
    own.append(Server(tmp_path, store, "cancer"))
    server = own[0]
    results: list[Any] = []
    for body in (WIDE_CSV, csv_rows(store, 9)):
        threading.Thread(target=post_csv, args=(server, body, results), daemon=True).start()
    time.sleep(0.5)
    started = time.monotonic()
    os.kill(server.proc.pid, signal.SIGTERM)
    server.proc.wait(60)
    took = time.monotonic() - started
    assert server.proc.returncode == 0
    assert took < SHUTDOWN_SECONDS + 3, f"exited {took:.1f} s after SIGTERM"


def test_an_unwritable_log_answers_503_and_the_service_recovers(
    guarded: Server, store: Store
) -> None:
    rows = store.X.head(1)
    assert predict(guarded, rows).status_code == 200
    shutil.rmtree(guarded.log_dir)
    guarded.log_dir.write_text("not a folder")  # even root cannot write a record in there
    try:
        refused = predict(guarded, rows)
        assert refused.status_code == 503
        assert refused.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert "the prediction is not answered" in refused.json()["message"]
        assert "predictions" not in refused.json()
        health = guarded.get("/mlnb/health").json()
        assert health["status"] == "degraded"
        assert "cannot write the prediction log" in health["log_error"]["message"]
        text = guarded.get("/metrics").text
        assert metric(text, "mlnb_serve_prediction_log_failing") == 1
        assert metric(text, "mlnb_serve_prediction_log_failures_total") >= 1
        assert metric(text, "mlnb_serve_errors_total", endpoint="invocations", kind="log") >= 1
        labels = {"request_id": refused.headers.get("x-request-id", ""), "labels": [1]}
        assert feedback(guarded, labels).status_code == 404  # it was never answered
    finally:
        guarded.log_dir.unlink()
    answered = predict(guarded, rows)  # the writer recreates its folder
    assert answered.status_code == 200
    assert guarded.get("/mlnb/health").json()["status"] == "ok"
    assert metric(guarded.get("/metrics").text, "mlnb_serve_prediction_log_failing") == 0
    logged = predlog.load_predictions(guarded.log_dir)["request_id"].tolist()
    assert logged == [answered.json()["request_id"]]


def mlnb(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlnb.cli", "serve", "cancer", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_serving_beyond_loopback_without_tokens_is_refused(tmp_path: Path) -> None:
    refused = mlnb("--host", "0.0.0.0", cwd=tmp_path)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith("error: refusing to serve on 0.0.0.0 without tokens")
    assert "--tokens FILE" in lines[0] and "--insecure" in lines[0]


def test_a_malformed_tokens_file_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"predict {PREDICT}\nscore {FEEDBACK}\n")
    refused = mlnb("--host", "0.0.0.0", cwd=tmp_path, MLNB_SERVE_TOKENS=str(tokens))
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: {tokens}:2: unknown scope 'score'; use 'predict' or 'feedback'"
    )


@pytest.mark.parametrize("port", ["0", "70000", "abc"])
def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path, port: str) -> None:
    refused = mlnb("--port", port, cwd=tmp_path)
    assert refused.returncode == 2
    assert "Invalid value for '-p' / '--port'" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_port_in_use_is_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = mlnb("--port", str(port), cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another --port"
    ]
