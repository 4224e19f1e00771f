"""What ``mlnb serve`` takes beside a model name: a pinned version, workers, a timeout, retention.

Each test starts real ``mlnb serve`` processes on the session's store
(:class:`~tests.serving.helpers.Store`) and stops them by their PIDs.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from mlnb.predictions.log import PredictionLog, new_request_id
from tests.helpers import free_port
from tests.serving.helpers import FORMATS, Server, Store, raw, rows_of, wait_for

pytestmark = pytest.mark.slow


def test_a_pinned_version_is_served_and_the_alias_is_not_followed(start: Any, store: Store) -> None:
    rows = rows_of(store)
    pinned = start("models:/cancer/2")
    answer = pinned.predict(**FORMATS["dataframe_split"](rows))
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == store.predict("2", rows)  # not champion's version 1
    health = pinned.get("/mlnb/health").json()
    assert (health["alias"], health["model_version"]) == (None, "2")
    assert "alias 'champion'" not in pinned.log() and "pinned" in pinned.log()


@pytest.mark.parametrize(
    ("model", "code", "words"),
    [
        ("models:/cancer/99", 1, ["no version 99", "versions: 2, 1"]),
        ("models:/cancer@nowhere", 1, ["no version of 'cancer' has alias 'nowhere'"]),
        ("models:/cancer/Production", 2, ["not a version number", "models:/cancer@ALIAS"]),
        ("runs:/abc/model", 2, ["mlnb serves models:/NAME@ALIAS"]),
    ],
    ids=["no such version", "no such alias", "a stage", "not a registered model"],
)
def test_a_model_uri_that_names_nothing_servable_is_one_clear_error(
    tmp_path: Path, store: Store, model: str, code: int, words: list[str]
) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=store.uri, MLFLOW_DISABLE_TELEMETRY="true")
    done = subprocess.run(
        [sys.executable, "-m", "mlnb.cli", "serve", "-m", model, "-p", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == code, done.stdout + done.stderr
    for word in words:
        assert word in done.stderr
    assert "Traceback" not in done.stderr


def workers_of(server: Server) -> list[psutil.Process]:
    return psutil.Process(server.proc.pid).children()


def test_workers_share_the_port_and_one_log_and_a_killed_one_is_replaced(
    start: Any, store: Store
) -> None:
    rows = rows_of(store)
    server = start("cancer", workers=2)
    first = workers_of(server)
    assert len(first) == 2
    body = FORMATS["dataframe_records"](rows)
    answered = []
    for _ in range(40):  # a connection each: the kernel hands them to either worker
        answer = httpx.post(f"{server.url}/invocations", timeout=30, **body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == store.predict("1", rows)
        answered.append(answer.json()["request_id"])
    lines = b"".join(p.read_bytes() for p in server.log_dir.glob("predictions-*.jsonl"))
    logged = [json.loads(line)["request_id"] for line in lines.splitlines()]
    assert sorted(logged) == sorted(answered)  # one whole record per answer, none interleaved
    labels = [int(x) for x in store.predict("1", rows)]
    for request_id in answered[:10]:  # either worker finds what the other logged
        assert server.feedback({"request_id": request_id, "labels": labels}).status_code == 200
    os.kill(first[0].pid, signal.SIGKILL)
    wait_for(lambda: len(workers_of(server)) == 2 and first[0] not in workers_of(server), 60)
    wait_for(lambda: server.predict(**body).status_code == 200, 60)
    children = workers_of(server)
    assert server.stop() == 0
    assert not any(child.is_running() and child.status() != "zombie" for child in children)


def test_a_request_longer_than_the_timeout_is_a_504_and_the_service_goes_on(
    start: Any, store: Store
) -> None:
    server = start("cancer", timeout=0.001)
    rows = store.X.sample(5_000, replace=True, random_state=1)  # a CSV of 5,000 rows
    slow = server.predict(**raw(rows.to_csv(index=False), "text/csv"))
    assert slow.status_code == 504, slow.text
    assert slow.json()["error_code"] == "DEADLINE_EXCEEDED"
    assert "timeout of 0.001 s" in slow.json()["message"]
    small = server.predict(**FORMATS["dataframe_split"](rows_of(store)))  # the fast path
    assert small.status_code == 200


def test_retention_prunes_at_start_and_labels_for_pruned_predictions_are_a_404(
    start: Any, store: Store, tmp_path: Path
) -> None:
    folder = tmp_path / "log"
    old = int(datetime(2020, 1, 1, 12, tzinfo=UTC).timestamp() * 1000)
    log = PredictionLog(folder)
    request_id = new_request_id(old)
    log.write_prediction(request_id, old, "1", ["x"], [[1.0]], [0], 1)
    log.close()
    assert (folder / "predictions-2020-01-01.jsonl").is_file()
    server = start("cancer", log_dir=str(folder), log_retention="30d")
    wait_for(lambda: not (folder / "predictions-2020-01-01.jsonl").exists(), 60)
    assert not list(folder.glob("predictions-2020-01-01*"))
    refused = server.feedback({"request_id": request_id, "labels": [1]})
    assert refused.status_code == 404, refused.text
    message = refused.json()["message"]
    assert "predicted on 2020-01-01" in message and "retention 30d" in message
    fresh = server.predict(**FORMATS["dataframe_split"](rows_of(store)))
    assert fresh.status_code == 200  # today's file is kept
    assert list(folder.glob(f"predictions-{datetime.now(UTC):%Y-%m-%d}.jsonl"))
