"""The HTTP front end to end: each scoring format, bad input, feedback, the log before answering.

Against real ``mlnb serve`` processes on 127.0.0.1 (``tests/serving/helpers.py``)
serving real registered scikit-learn models from a SQLite MLflow store.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlnb.predictions import log as predlog
from tests.serving.helpers import FORMATS, SMALL_LIMIT, Server, Store, raw, rows_of

pytestmark = pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer:UserWarning")


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


def test_mlflows_endpoints_answer_as_mlflow_and_mlnbs_own_route_has_the_details(
    server: Server,
) -> None:
    import mlflow

    for path in ("/ping", "/health"):  # MLflow's health checks: 200 and a line break
        answer = server.get(path)
        assert (answer.status_code, answer.text) == (200, "\n")
    version = server.get("/version")  # MLflow's text, which ScoringServerClient compares
    assert (version.status_code, version.text) == (200, mlflow.__version__)
    described = server.get("/openapi.json").json()
    assert described["openapi"].startswith("3.")
    assert {"/ping", "/health", "/version", "/invocations"} <= set(described["paths"])
    body = described["paths"]["/invocations"]["post"]["requestBody"]["content"]
    split = body["application/json"]["schema"]["oneOf"][0]["properties"]["dataframe_split"]
    assert len(split["properties"]["data"]["items"]["prefixItems"]) == 30  # the signature's
    assert "swagger-ui" in server.get("/docs").text
    health = server.get("/mlnb/health").json()
    assert health["status"] == "ok"
    assert (health["model"], health["alias"], health["model_version"]) == (
        "cancer",
        "champion",
        "1",
    )
    version = server.get("/mlnb/version").json()
    assert version["model_version"] == "1"
    assert version["flavor"] == "sklearn"
    assert version["mlflow_version"]


BAD_REQUEST, INVALID = "BAD_REQUEST", "INVALID_PARAMETER_VALUE"


def records_without(rows: pd.DataFrame, column: str) -> dict[str, Any]:
    return {"json": {"dataframe_records": rows.drop(columns=[column]).to_dict(orient="records")}}


def split_with(rows: pd.DataFrame, row: int, column: str, value: Any) -> dict[str, Any]:
    split = rows.to_dict(orient="split")
    split["data"][row][split["columns"].index(column)] = value
    return {"json": {"dataframe_split": split}}


#: each bad request: the body, MLflow's status and error code for it, words of the message
BAD: dict[str, tuple[Callable[[pd.DataFrame], dict[str, Any]], int, str, list[str]]] = {
    "missing column": (
        lambda r: records_without(r, "mean radius"),
        400,
        INVALID,
        ["'mean radius'"],
    ),
    "misspelt column": (
        lambda r: {
            "json": {
                "dataframe_split": r.rename(columns={"mean area": "mean aera"}).to_dict(
                    orient="split"
                )
            }
        },
        400,
        INVALID,
        ["'mean area'", "'mean aera'"],
    ),
    "string in a float column": (
        lambda r: split_with(r, 2, "mean texture", "abc"),
        400,
        BAD_REQUEST,
        ["mean texture", "'abc'"],
    ),
    "null the model cannot take": (
        lambda r: split_with(r, 1, "worst area", None),
        400,
        BAD_REQUEST,
        ["the model could not predict", "NaN"],
    ),
    "row too short": (
        lambda r: {"json": {"instances": r.to_numpy()[:, :-1].tolist()}},
        400,
        INVALID,
        ["signature"],
    ),
    "malformed JSON": (
        lambda r: raw('{"dataframe_split": {'),
        400,
        BAD_REQUEST,
        ["malformed JSON"],
    ),
    "a JSON list": (lambda r: raw("[1, 2]"), 400, BAD_REQUEST, ["dataframe_split", "list"]),
    "no format key": (
        lambda r: {"json": {"data": [[1.0]]}},
        400,
        BAD_REQUEST,
        ["exactly one of", "'data'"],
    ),
    "records not a list": (
        lambda r: {"json": {"dataframe_records": {"a": 1}}},
        400,
        BAD_REQUEST,
        ["records format must be a list of records"],
    ),
    "no rows": (
        lambda r: {"json": {"dataframe_split": {"columns": list(r.columns), "data": []}}},
        400,
        BAD_REQUEST,
        ["the model could not predict", "0 sample(s)"],
    ),
    "empty body": (lambda r: raw(b""), 400, BAD_REQUEST, ["empty"]),
    "bad CSV value": (
        lambda r: raw(r.assign(**{"mean smoothness": "abc"}).to_csv(index=False), "text/csv"),
        400,
        BAD_REQUEST,
        ["'mean smoothness'", "'abc'"],
    ),
    "oversized body": (
        lambda r: raw(b" " * (SMALL_LIMIT + 1)),
        413,
        BAD_REQUEST,
        ["exceeds", "1,048,576"],
    ),
    "oversized, chunked": (
        lambda r: {
            "content": iter([b" " * 2**18] * 5),
            "headers": {"content-type": "application/json"},
        },
        413,
        BAD_REQUEST,
        ["exceeds"],
    ),
    "unknown content type": (
        lambda r: raw("a,b", "text/plain"),
        415,
        BAD_REQUEST,
        ["text/plain", "text/csv"],
    ),
    "no content type": (lambda r: raw("{}", None), 415, BAD_REQUEST, ["Content-Type"]),
    "other charset": (
        lambda r: raw("{}", "application/json; charset=latin-1"),
        415,
        BAD_REQUEST,
        ["latin-1"],
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_a_4xx_naming_the_problem(server: Server, store: Store, case: str) -> None:
    build, status, code, words = BAD[case]
    rows = rows_of(store)
    response = server.predict(**build(rows))
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code
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


WORKER_NEVER_ENDS = """
import asyncio, threading, time
from mlnb.serving.app import Workers

async def main():
    workers = Workers(1)
    task = asyncio.ensure_future(workers.run(threading.Event().wait))  # never returns
    await asyncio.sleep(0.2)
    assert [t.name for t in threading.enumerate() if t.name == "mlnb-serve-worker"]
    task.cancel()  # what uvicorn does to requests in flight when its grace period ends
    await asyncio.gather(task, return_exceptions=True)

asyncio.run(main())
print("returned", flush=True)
"""


def test_a_worker_that_never_ends_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", WORKER_NEVER_ENDS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "returned\n"
    assert time.monotonic() - started < 30  # the import of the app, not a worker's wait


def test_workers_hand_back_results_and_errors() -> None:
    from mlnb.serving.app import Workers

    async def main() -> tuple[int, str]:
        workers = Workers(2)
        value = await workers.run(sum, [1, 2, 3])
        try:
            await workers.run(int, "x")
        except ValueError as exc:
            return value, str(exc)
        return value, ""

    assert asyncio.run(main()) == (6, "invalid literal for int() with base 10: 'x'")
