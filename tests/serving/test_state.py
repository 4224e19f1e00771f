"""Following the alias: a swap under load fails no request; a version that fails to load shows.

Each test owns its registered model (``swap``, ``fragile``) and its server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from mlnb.predictions.log import PredictionLog
from mlnb.serving.scoring import load_version
from mlnb.serving.state import Service, label_problem, outputs_kind, signature_kind
from tests.serving.helpers import FORMATS, POLL, Server, Store, metric, wait_for


def test_alias_moved_under_load_swaps_without_a_failed_request(
    start: Callable[..., Server], store: Store
) -> None:
    store.client.set_registered_model_alias("swap", "champion", "1")
    server = start("swap")
    rows = store.X.iloc[[0, 19, 20, 50, 100]]
    expected = {v: store.predict(v, rows) for v in "12"}
    assert expected["1"] != expected["2"]
    body = json.dumps({"dataframe_split": rows.to_dict(orient="split")}).encode()
    answers: list[list[tuple[float, float, str]]] = [[] for _ in range(4)]
    failures: list[str] = []
    moved_at = [float("inf")]
    end_at = time.monotonic() + 5.0

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while (sent := time.monotonic()) < end_at:
                try:
                    response = http.post(
                        "/invocations", content=body, headers={"content-type": "application/json"}
                    )
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                got = time.monotonic()
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                    continue
                answer = response.json()
                version = answer["model_version"]
                if response.headers["x-model-version"] != version:
                    failures.append(f"header {response.headers['x-model-version']} != {version}")
                if answer["predictions"] != expected[version]:
                    failures.append(f"version {version} answered with another's predictions")
                answers[i].append((sent, got, version))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    moved_at[0] = time.monotonic()
    store.client.set_registered_model_alias("swap", "champion", "2")
    for thread in threads:
        thread.join()

    assert not failures, failures[:5]
    every = sorted(a for per in answers for a in per)
    assert len(every) > 40
    for per in answers:  # each client sees 1 ... 1 2 ... 2
        versions = [v for _, _, v in per]
        assert versions == sorted(versions), versions
        assert versions[-1] == "2"
    assert all(v == "1" for sent, _, v in every if sent < moved_at[0])
    first_new = min(got for _, got, v in every if v == "2")
    assert first_new - moved_at[0] < 10 * POLL  # a few polls and one load
    assert all(v == "2" for sent, _, v in every if sent > first_new)  # never back to 1
    health = server.get("/mlnb/health").json()
    assert (health["status"], health["model_version"]) == ("ok", "2")
    text = server.get("/metrics").text
    assert metric(text, "mlnb_serve_model_swaps_total") == 1
    assert metric(text, "mlnb_serve_model_version", version="2") == 1
    assert metric(text, "mlnb_serve_model_version", version="1") == 0
    assert "now serving version 2 of 'swap'" in server.log()


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(
    start: Callable[..., Server], store: Store
) -> None:
    store.client.set_registered_model_alias("fragile", "champion", "1")
    broken = store.register_broken("fragile")
    server = start("fragile")
    store.client.set_registered_model_alias("fragile", "champion", broken)
    wait_for(lambda: server.get("/mlnb/health").json()["status"] == "degraded")

    health = server.get("/mlnb/health").json()
    assert health["model_version"] == "1"
    assert health["alias_version"] == broken
    assert health["load_error"]["version"] == broken
    assert f"version {broken} failed to load" in health["load_error"]["message"]
    assert "Traceback" not in json.dumps(health)
    assert server.get("/mlnb/version").json()["load_error"]["version"] == broken
    rows = store.X.head(4)
    response = server.predict(FORMATS["dataframe_split"](rows)["json"])
    assert response.status_code == 200
    assert response.json()["model_version"] == "1"
    assert response.json()["predictions"] == store.predict("1", rows)
    text = server.get("/metrics").text
    assert metric(text, "mlnb_serve_model_load_failures_total") >= 1
    assert metric(text, "mlnb_serve_model_load_failing") == 1
    assert metric(text, "mlnb_serve_model_version", version="1") == 1
    assert f"version {broken} of 'fragile' failed to load; still serving version 1" in server.log()

    store.client.set_registered_model_alias("fragile", "champion", "1")  # back: healthy again
    wait_for(lambda: server.get("/mlnb/health").json()["status"] == "ok")
    assert metric(server.get("/metrics").text, "mlnb_serve_model_load_failing") == 0


def test_what_the_service_shows_has_the_store_password_redacted(
    store: Store, tmp_path: Path
) -> None:
    first = load_version(store.client, "cancer", "1", store.uri)
    uri = "http://alice:s3cret@mlflow.example:5000"
    service = Service(
        store.client, uri, "cancer", "champion", first, PredictionLog(tmp_path), 1, 10
    )
    shown = json.dumps([service.version_info(), service.health()])
    assert service.version_info()["tracking_uri"] == "http://***@mlflow.example:5000"
    assert "s3cret" not in shown and "alice" not in shown
    said = service.safe(f"API request to {uri}/api failed; alice:s3cret@mlflow.example refused")
    assert said == (
        "API request to http://***@mlflow.example:5000/api failed; ***@mlflow.example refused"
    )


def test_a_label_must_have_the_type_the_model_predicts(store: Store, tmp_path: Path) -> None:
    first = load_version(store.client, "cancer", "1", store.uri)
    assert signature_kind(first.source) == "number"  # the signature's int64 output
    assert signature_kind(str(tmp_path / "no-model")) is None
    service = Service(
        store.client, store.uri, "cancer", "champion", first, PredictionLog(tmp_path), 1, 10
    )
    assert service.label_kind() == "number"
    assert outputs_kind(np.array([0, 1])) == "number"
    assert outputs_kind(np.array([True, False])) == "boolean"
    assert outputs_kind(["a", "b"]) == "string"
    assert outputs_kind([{"a": 1}]) is None
    assert outputs_kind(np.zeros((2, 2))) is None
    assert label_problem("number", 1) is None
    assert label_problem("number", 0.5) is None
    assert label_problem("number", None) is None  # that row has no label
    assert (
        label_problem("number", "1")
        == "got '1'; the model predicts a number, so each label must be one"
    )
    assert label_problem("number", True) is not None
    assert label_problem("boolean", 1) is not None
    assert label_problem("string", ["a"]) == (
        "got list; the model predicts a string, so each label must be one"
    )
