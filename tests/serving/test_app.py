"""``mlnb serve`` end to end: real SQLite stores, real registered models, real server processes.

One store per module holds the registered models: ``cancer`` (version 1, a
scikit-learn pipeline; version 2, the same pipeline fitted on flipped labels,
so every prediction tells which version made it), and the names the
alias-moving tests own (``swap``, ``fragile``). Each server is a
``python -c "...serve(...)"`` process on 127.0.0.1 and a free port, stopped by
its PID when its test ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlnb.predictions import log as predlog
from mlnb.serving.app import ServeError, create_app
from tests.helpers import free_port, wait_for_ping

pytestmark = pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer:UserWarning")

SERVE = "import json, sys; from mlnb.serving.app import serve; serve(**json.loads(sys.argv[1]))"
POLL = 0.2
SMALL_LIMIT = 2**20  # the shared server's body limit, so the oversized case stays cheap


class Store:
    """A SQLite MLflow store with the registered models of this module."""

    def __init__(self, root: Path) -> None:
        import mlflow
        from mlflow import MlflowClient
        from sklearn.datasets import load_breast_cancer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.X, y = load_breast_cancer(return_X_y=True, as_frame=True)
        self.models = {
            "1": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(self.X, y),
            "2": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
                self.X, 1 - y
            ),
        }
        self.client = MlflowClient(self.uri)
        experiment = self.client.create_experiment(
            "serve", artifact_location=(root / "artifacts").as_uri()
        )
        outside = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)  # log_model works on the fluent store only
        try:
            for model in self.models.values():
                with mlflow.start_run(experiment_id=experiment):
                    mlflow.sklearn.log_model(
                        model,
                        name="model",
                        input_example=self.X.head(3),
                        pip_requirements=["scikit-learn"],
                        registered_model_name="cancer",
                    )
        finally:
            mlflow.set_tracking_uri(None)
            if outside is not None:
                os.environ["MLFLOW_TRACKING_URI"] = outside
        self.client.set_registered_model_alias("cancer", "champion", "1")
        self.sources = {v: self.client.get_model_version_download_uri("cancer", v) for v in "12"}
        for name in ("swap", "fragile"):
            self.client.create_registered_model(name)
            for version in "12":
                self.client.create_model_version(name, source=self.sources[version])

    def register_broken(self, name: str) -> str:
        """A new version of ``name`` whose model file is garbage; returns the version."""
        broken = self.root / f"broken-{name}"
        shutil.copytree(urlparse(self.sources["1"]).path, broken)  # a file: URI
        for path in broken.glob("model.*"):
            path.write_bytes(b"not a model")
        return str(self.client.create_model_version(name, source=str(broken)).version)

    def predict(self, version: str, rows: pd.DataFrame) -> list[int]:
        return self.models[version].predict(rows).tolist()


class Server:
    """An ``mlnb serve`` process on 127.0.0.1."""

    def __init__(self, folder: Path, store: Store, model: str, **options: Any) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = Path(options.pop("log_dir", folder / "predictions"))
        arguments = {
            "model": model,
            "host": "127.0.0.1",
            "port": self.port,
            "tracking_uri": store.uri,
            "log_dir": str(self.log_dir),
            "poll_seconds": POLL,
            **options,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"  # stay on 127.0.0.1
        self.output = folder / f"server-{self.port}.log"
        with self.output.open("wb") as output:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVE, json.dumps(arguments)],
                cwd=folder,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_ping(self.proc, self.url, self.log, timeout=90)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the server by its PID and wait for it; SIGKILL if it lingers."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def predict(self, payload: Any = None, **kwargs: Any) -> httpx.Response:
        if payload is not None:
            kwargs["json"] = payload
        return httpx.post(f"{self.url}/invocations", timeout=30, **kwargs)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30)

    def feedback(self, payload: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/feedback", json=payload, timeout=30)


@pytest.fixture(scope="module", autouse=True)
def no_telemetry() -> Iterator[None]:
    """MLflow calls in this process send no usage events: nothing leaves 127.0.0.1."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DO_NOT_TRACK", "true")
        yield


@pytest.fixture(scope="module")
def store(no_telemetry: None, tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def server(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server of ``cancer@champion`` (version 1), for tests that move no alias."""
    running = Server(tmp_path_factory.mktemp("shared"), store, "cancer", max_body_bytes=SMALL_LIMIT)
    yield running
    running.stop()


@pytest.fixture
def start(store: Store, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers of the test's own; every one is stopped when the test ends."""
    started: list[Server] = []

    def run(model: str, **options: Any) -> Server:
        started.append(Server(tmp_path / f"server{len(started)}", store, model, **options))
        return started[-1]

    yield run
    for running in started:
        running.stop(signal.SIGKILL)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


# --- the scoring protocol -------------------------------------------------------------------------


def rows_of(store: Store) -> pd.DataFrame:
    rows = store.X.iloc[[0, 19, 20, 50, 100, 150, 200, 300]]
    assert set(store.predict("1", rows)) == {0, 1}  # both classes: a meaningful comparison
    return rows


def parquet(rows: pd.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    rows.to_parquet(buffer, index=False)
    return buffer.getvalue()


FORMATS: dict[str, Callable[[pd.DataFrame], dict[str, Any]]] = {
    "dataframe_split": lambda r: {"json": {"dataframe_split": r.to_dict(orient="split")}},
    "dataframe_records": lambda r: {"json": {"dataframe_records": r.to_dict(orient="records")}},
    "instances": lambda r: {"json": {"instances": r.to_dict(orient="records")}},
    "instances as rows": lambda r: {"json": {"instances": r.to_numpy().tolist()}},
    "inputs": lambda r: {"json": {"inputs": r.to_dict(orient="list")}},
    "split, columns shuffled, an extra one": lambda r: {
        "json": {
            "dataframe_split": r.assign(id="x")[["id", *reversed(r.columns)]].to_dict(
                orient="split"
            )
        }
    },
    "csv": lambda r: {"content": r.to_csv(index=False), "headers": {"content-type": "text/csv"}},
    "parquet": lambda r: {
        "content": parquet(r),
        "headers": {"content-type": "application/vnd.apache.parquet"},
    },
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_input_format_predicts_as_the_model(server: Server, store: Store, fmt: str) -> None:
    rows = rows_of(store)
    response = server.predict(**FORMATS[fmt](rows))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["predictions"] == store.predict("1", rows)
    assert body["model_version"] == response.headers["x-model-version"] == "1"
    assert body["request_id"] == response.headers["x-request-id"]
    assert predlog.request_millis(body["request_id"]) is not None


def test_a_batch_above_the_inline_limit_is_predicted_whole(server: Server, store: Store) -> None:
    rows = pd.concat([store.X] * 3, ignore_index=True)
    body = json.dumps({"dataframe_split": rows.to_dict(orient="split")}).encode()
    assert 256 * 2**10 < len(body) < SMALL_LIMIT  # scored on a worker thread, not rejected
    response = server.predict(content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == store.predict("1", rows)


def test_ping_health_version(server: Server) -> None:
    ping = server.get("/ping")
    assert ping.status_code == 200
    health = server.get("/health").json()
    assert health["status"] == "ok"
    assert (health["model"], health["alias"], health["model_version"]) == (
        "cancer",
        "champion",
        "1",
    )
    version = server.get("/version").json()
    assert version["model_version"] == "1"
    assert version["flavor"] == "sklearn"
    assert version["mlflow_version"]


def records_without(rows: pd.DataFrame, column: str) -> dict[str, Any]:
    return {"json": {"dataframe_records": rows.drop(columns=[column]).to_dict(orient="records")}}


def split_with(rows: pd.DataFrame, row: int, column: str, value: Any) -> dict[str, Any]:
    split = rows.to_dict(orient="split")
    split["data"][row][split["columns"].index(column)] = value
    return {"json": {"dataframe_split": split}}


def raw(content: bytes | str, media: str | None = "application/json") -> dict[str, Any]:
    return {"content": content, "headers": {"content-type": media} if media else {}}


BAD: dict[str, tuple[Callable[[pd.DataFrame], dict[str, Any]], int, list[str]]] = {
    "missing column": (lambda r: records_without(r, "mean radius"), 400, ["'mean radius'"]),
    "misspelt column": (
        lambda r: {
            "json": {
                "dataframe_split": r.rename(columns={"mean area": "mean aera"}).to_dict(
                    orient="split"
                )
            }
        },
        400,
        ["'mean area'", "'mean aera'"],
    ),
    "string in a float column": (
        lambda r: split_with(r, 2, "mean texture", "abc"),
        400,
        ["'mean texture'", "row 2", '"abc"'],
    ),
    "null in a required column": (
        lambda r: split_with(r, 1, "worst area", None),
        400,
        ["'worst area'", "row 1", "no value"],
    ),
    "boolean in a float column": (
        lambda r: split_with(r, 0, "mean radius", True),
        400,
        ["'mean radius'", "true"],
    ),
    "row too short": (
        lambda r: {"json": {"instances": r.to_numpy()[:, :-1].tolist()}},
        400,
        ["29 values", "30 columns"],
    ),
    "malformed JSON": (lambda r: raw('{"dataframe_split": {'), 400, ["malformed JSON"]),
    "a JSON list": (lambda r: raw("[1, 2]"), 400, ["dataframe_split", "list"]),
    "no format key": (lambda r: {"json": {"data": [[1.0]]}}, 400, ["exactly one of", "'data'"]),
    "records not a list": (
        lambda r: {"json": {"dataframe_records": {"a": 1}}},
        400,
        ["dataframe_records", "list of objects"],
    ),
    "no rows": (
        lambda r: {"json": {"dataframe_split": {"columns": list(r.columns), "data": []}}},
        400,
        ["no rows"],
    ),
    "empty body": (lambda r: raw(b""), 400, ["empty"]),
    "bad CSV value": (
        lambda r: raw(r.assign(**{"mean smoothness": "abc"}).to_csv(index=False), "text/csv"),
        400,
        ["'mean smoothness'", '"abc"'],
    ),
    "oversized body": (lambda r: raw(b" " * (SMALL_LIMIT + 1)), 413, ["exceeds", "1,048,576"]),
    "oversized, chunked": (
        lambda r: {
            "content": iter([b" " * 2**18] * 5),
            "headers": {"content-type": "application/json"},
        },
        413,
        ["exceeds"],
    ),
    "unknown content type": (lambda r: raw("a,b", "text/plain"), 415, ["text/plain", "text/csv"]),
    "no content type": (lambda r: raw("{}", None), 415, ["Content-Type"]),
    "other charset": (
        lambda r: raw("{}", "application/json; charset=latin-1"),
        415,
        ["latin-1"],
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_a_4xx_naming_the_problem(server: Server, store: Store, case: str) -> None:
    build, status, words = BAD[case]
    rows = rows_of(store)
    response = server.predict(**build(rows))
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == "BAD_REQUEST"
    for word in words:
        assert word in body["message"]
    assert "Traceback" not in response.text
    assert response.headers["x-model-version"] == "1"
    again = server.predict(**FORMATS["dataframe_split"](rows))  # and the server goes on
    assert again.status_code == 200
    assert again.json()["predictions"] == store.predict("1", rows)


def test_unknown_routes_and_methods_get_json_errors(server: Server) -> None:
    missing = server.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    wrong = server.get("/invocations")
    assert wrong.status_code == 405
    assert "GET /invocations" in wrong.json()["message"]


def test_feedback_for_an_unknown_request_is_404(server: Server, store: Store) -> None:
    unknown = server.feedback(
        {"request_id": predlog.new_request_id(1_700_000_000_000), "labels": [1]}
    )
    assert unknown.status_code == 404
    assert unknown.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "unknown request id" in unknown.json()["message"]
    assert server.feedback({"request_id": "not-a-uuid", "labels": [1]}).status_code == 404

    rows = store.X.head(2)
    request_id = server.predict(FORMATS["dataframe_split"](rows)["json"]).json()["request_id"]
    miscounted = server.feedback({"request_id": request_id, "labels": [1]})
    assert miscounted.status_code == 400
    assert "predicted 2 rows; got 1 label" in miscounted.json()["message"]
    malformed = server.feedback({"request_id": request_id, "labels": "1"})
    assert malformed.status_code == 400
    both = [{"request_id": request_id, "labels": [0, 1]}, {"request_id": "nope", "labels": []}]
    assert server.feedback(both).status_code == 404  # nothing is written when one is unknown
    accepted = server.feedback({"request_id": request_id, "labels": [0, 1]})
    assert accepted.json() == {"accepted": 1}


def test_metrics_count_requests_errors_and_the_version(server: Server, store: Store) -> None:
    assert server.predict(FORMATS["dataframe_split"](store.X.head(3))["json"]).status_code == 200
    assert server.predict(**raw(b"{")).status_code == 400
    response = server.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    ok = metric(text, "mlnb_serve_requests_total", endpoint="invocations", code="200")
    assert ok >= 1
    assert metric(text, "mlnb_serve_requests_total", endpoint="invocations", code="400") >= 1
    assert metric(text, "mlnb_serve_errors_total", endpoint="invocations", kind="bad_request") >= 1
    assert metric(text, "mlnb_serve_request_duration_seconds_count", endpoint="invocations") >= ok
    assert metric(text, "mlnb_serve_predicted_rows_total") >= 3
    assert metric(text, "mlnb_serve_model_version", model="cancer", version="1") == 1
    assert metric(text, "mlnb_serve_model_swaps_total") == 0
    assert metric(text, "mlnb_serve_model_load_failures_total") == 0


# --- following the alias --------------------------------------------------------------------------


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
    health = server.get("/health").json()
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
    wait_for(lambda: server.get("/health").json()["status"] == "degraded")

    health = server.get("/health").json()
    assert health["model_version"] == "1"
    assert health["alias_version"] == broken
    assert health["load_error"]["version"] == broken
    assert f"version {broken} failed to load" in health["load_error"]["message"]
    assert "Traceback" not in json.dumps(health)
    assert server.get("/version").json()["load_error"]["version"] == broken
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
    wait_for(lambda: server.get("/health").json()["status"] == "ok")
    assert metric(server.get("/metrics").text, "mlnb_serve_model_load_failing") == 0


# --- the prediction log ---------------------------------------------------------------------------


def test_the_log_survives_a_restart_and_a_sigkill_with_feedback_joined(
    start: Callable[..., Server], store: Store, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    first = start("cancer", log_dir=log_dir)
    batches = [store.X.iloc[[5]], store.X.iloc[[19, 20, 21]], store.X.iloc[[100, 101]]]
    ids = []
    for rows in batches:
        ids.append(first.predict(FORMATS["dataframe_split"](rows)["json"]).json()["request_id"])
    assert first.feedback({"request_id": ids[0], "labels": [1]}).status_code == 200
    assert first.feedback({"request_id": ids[1], "labels": [0, 1, 1]}).status_code == 200
    assert first.stop(signal.SIGTERM) == 0  # a clean shutdown: serve() returns

    second = start("cancer", log_dir=log_dir)
    batches.append(store.X.iloc[[200, 201]])
    ids.append(
        second.predict(FORMATS["dataframe_records"](batches[3])["json"]).json()["request_id"]
    )
    older = second.feedback({"request_id": ids[2], "labels": [1, 0]})  # from the first server
    assert older.status_code == 200, older.text
    late = [{"request_id": ids[1], "labels": [1, 1, 1]}, {"request_id": ids[3], "labels": [0, 0]}]
    assert second.feedback(late).json() == {"accepted": 2}
    assert second.stop(signal.SIGKILL) == -signal.SIGKILL

    table = predlog.load_predictions(log_dir)
    assert len(table) == sum(len(rows) for rows in batches)
    assert list(table.columns[:4]) == ["request_id", "row", "time", "model_version"]
    assert {"mean radius", "prediction", "label"} <= set(table.columns)
    assert str(table["time"].dt.tz) == "UTC"
    labels = {ids[0]: [1], ids[1]: [1, 1, 1], ids[2]: [1, 0], ids[3]: [0, 0]}  # later wins
    for request_id, rows in zip(ids, batches, strict=True):
        mine = table[table["request_id"] == request_id].sort_values("row")
        assert mine["row"].tolist() == list(range(len(rows)))
        assert set(mine["model_version"]) == {"1"}
        assert mine["prediction"].tolist() == store.predict("1", rows)
        assert mine["mean radius"].tolist() == rows["mean radius"].tolist()
        assert mine["label"].tolist() == labels[request_id]

    for suffix in (".csv", ".parquet"):
        path = tmp_path / f"export{suffix}"
        assert predlog.export(log_dir, path) == len(table)
        back = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        assert back.shape == table.shape
    with pytest.raises(predlog.PredictionLogError, match=r"\.xlsx"):
        predlog.export(log_dir, tmp_path / "export.xlsx")


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    ms = int(time.time() * 1000)
    request_id = predlog.new_request_id(ms)
    log.write_prediction(request_id, ms, "3", ["a", "b"], [[1.0, 2.0]], [7], 1)
    log.write_feedback(request_id, ["yes"], ms)
    log.close()
    day = next(tmp_path.glob("predictions-*.jsonl"))
    with day.open("ab") as handle:
        handle.write(b'{"request_id": "01')  # a power cut mid-write
    table = predlog.load_predictions(tmp_path)
    assert table[["a", "b", "prediction", "label"]].values.tolist() == [[1.0, 2.0, 7, "yes"]]
    assert predlog.find_request(tmp_path, request_id) == 1
    assert predlog.request_millis(request_id) == ms


# --- errors before serving ------------------------------------------------------------------------


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
