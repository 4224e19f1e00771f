"""Online evaluation: a shadow scored beside the champion, a canary answering its share.

The tests own the registered model ``online``: version 1 and 2 are the
``cancer`` pipelines (fitted on labels and on flipped labels, so a prediction
tells which made it), version 3 a pyfunc model whose predict raises, version
4 one whose predict sleeps 2 s. Servers are real ``mlnb serve`` processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd
import pytest
from click.testing import CliRunner

from mlnb.cli.main import main
from mlnb.predictions import log as predlog
from mlnb.serving.challenger import CANARY, SHADOW, Challenger, Follower, Shadow, in_canary
from tests.serving.helpers import Server, Store, metric, wait_for

MODEL = "online"
SLEEP = 2.0  # seconds the slow shadow's predict takes
PYFUNC = """
import time
import mlflow


class Model(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        {body}


mlflow.models.set_model(Model())
"""
CRASH = "raise RuntimeError('the shadow crashed on purpose')"
SLOW = f"time.sleep({SLEEP})\n        return [0] * len(model_input)"


@pytest.fixture(scope="module")
def online(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """``online`` versions 1 to 4 registered in the session's store."""
    import mlflow

    root = tmp_path_factory.mktemp("online")
    store.client.create_registered_model(MODEL)
    for version in "12":
        store.client.create_model_version(MODEL, source=store.sources[version])
    for name, body in (("crash", CRASH), ("slow", SLOW)):
        code = root / f"{name}.py"
        code.write_text(PYFUNC.format(body=body))
        saved = root / name
        with warnings.catch_warnings():  # no type hints on predict: MLflow validates nothing
            warnings.filterwarnings("ignore", ".*Add type hints", UserWarning)
            mlflow.pyfunc.save_model(saved, python_model=str(code), pip_requirements=["mlflow"])
        store.client.create_model_version(MODEL, source=str(saved))
    return store


def aliases(store: Store, champion: str, challenger: str | None) -> None:
    store.client.set_registered_model_alias(MODEL, "champion", champion)
    if challenger is None:
        with contextlib.suppress(Exception):  # not set
            store.client.delete_registered_model_alias(MODEL, "challenger")
    else:
        store.client.set_registered_model_alias(MODEL, "challenger", challenger)


def split(rows: pd.DataFrame) -> dict[str, object]:
    return {"dataframe_split": rows.to_dict(orient="split")}


def shadow_of(server: Server, request_ids: list[str]) -> pd.DataFrame:
    """The shadow's rows of ``request_ids``, once each of them has its record."""

    def logged() -> bool:
        if not any(server.log_dir.glob("shadow-*.jsonl")):
            return False
        done = set(predlog.load_shadow(server.log_dir)["request_id"])
        return set(request_ids) <= done

    wait_for(logged, timeout=60)
    table = predlog.load_shadow(server.log_dir)
    return table[table["request_id"].isin(request_ids)]


def test_shadow_logs_both_predictions_under_one_request_id(
    start: Callable[..., Server], online: Store
) -> None:
    aliases(online, "1", "2")
    server = start(MODEL, shadow="challenger")
    rows = online.X.iloc[[0, 19, 20, 50, 100]]
    assert online.predict("1", rows) != online.predict("2", rows)
    ids = []
    for _ in range(5):
        answer = server.predict(split(rows))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["model_version"], body["predictions"]) == ("1", online.predict("1", rows))
        assert answer.headers["x-model-version"] == "1"
        ids.append(body["request_id"])

    shadow = shadow_of(server, ids)
    champion = predlog.load_predictions(server.log_dir)
    assert len(shadow) == len(ids) * len(rows)
    assert set(shadow["model_version"]) == {"2"}
    assert shadow["error"].isna().all()
    joined = champion.merge(shadow, on=["request_id", "row"], suffixes=("", "_shadow"))
    assert len(joined) == len(ids) * len(rows)
    assert set(joined["model_version"]) == {"1"} and set(joined["arm"]) == {"champion"}
    for request_id in ids:
        one = joined[joined["request_id"] == request_id].sort_values("row")
        assert one["prediction"].tolist() == online.predict("1", rows)
        assert one["prediction_shadow"].tolist() == online.predict("2", rows)

    health = server.get("/mlnb/health").json()
    assert health["status"] == "ok"
    assert health["shadow"] == {"alias": "challenger", "model_version": "2", "alias_version": "2"}
    assert "shadow" in server.get("/mlnb/version").json()
    metrics = server.get("/metrics").text
    assert metric(metrics, "mlnb_serve_shadow_scored_total") == len(ids)
    assert metric(metrics, "mlnb_serve_shadow_failed_total") == 0
    assert metric(metrics, "mlnb_serve_challenger_version", mode="shadow", version="2") == 1


def test_shadow_follows_its_alias_and_waits_for_one(
    start: Callable[..., Server], online: Store
) -> None:
    aliases(online, "1", None)  # no challenger yet: not an error
    server = start(MODEL, shadow="challenger")
    rows = online.X.iloc[[0, 19]]
    health = server.get("/mlnb/health").json()
    assert health["status"] == "ok"
    assert health["shadow"]["model_version"] is None
    first = server.predict(split(rows)).json()["request_id"]

    online.client.set_registered_model_alias(MODEL, "challenger", "2")
    wait_for(lambda: server.get("/mlnb/health").json()["shadow"]["model_version"] == "2")
    second = server.predict(split(rows)).json()["request_id"]
    assert set(shadow_of(server, [second])["model_version"]) == {"2"}

    online.client.set_registered_model_alias(MODEL, "challenger", "1")  # the alias moves
    wait_for(lambda: server.get("/mlnb/health").json()["shadow"]["model_version"] == "1")
    third = server.predict(split(rows)).json()["request_id"]
    assert set(shadow_of(server, [third])["model_version"]) == {"1"}

    online.client.delete_registered_model_alias(MODEL, "challenger")  # the shadow stops
    wait_for(lambda: server.get("/mlnb/health").json()["shadow"]["model_version"] is None)
    fourth = server.predict(split(rows)).json()["request_id"]
    fifth = server.predict(split(rows)).json()["request_id"]
    logged = set(predlog.load_shadow(server.log_dir)["request_id"])
    assert {second, third} <= logged
    assert not {first, fourth, fifth} & logged
    assert server.get("/mlnb/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("version", "error"),
    [("3", "the shadow crashed on purpose"), ("4", "longer than the service's timeout")],
    ids=["crashing", "slow"],
)
def test_a_failing_shadow_leaves_the_answers_alone(
    start: Callable[..., Server], online: Store, version: str, error: str
) -> None:
    aliases(online, "1", version)
    server = start(MODEL, shadow="challenger", timeout=1.0)
    rows = online.X.iloc[[0, 19, 20]]
    expected = online.predict("1", rows)
    ids = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for _ in range(4):
            sent = time.monotonic()
            answer = http.post("/invocations", json=split(rows))
            took = time.monotonic() - sent
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"] == expected
            assert took < SLEEP / 2, f"an answer took {took:.2f} s"
            ids.append(answer.json()["request_id"])

    shadow = shadow_of(server, ids)
    assert len(shadow) == len(ids) * len(rows)
    assert set(shadow["model_version"]) == {version}
    assert shadow["prediction"].isna().all()
    assert all(error in text for text in shadow["error"])
    health = server.get("/mlnb/health").json()
    assert (health["status"], health["model_version"]) == ("ok", "1")
    metrics = server.get("/metrics").text
    assert metric(metrics, "mlnb_serve_shadow_failed_total") == len(ids)
    assert metric(metrics, "mlnb_serve_shadow_scored_total") == 0


def test_a_full_shadow_queue_drops_the_job_without_waiting(online: Store, tmp_path: Path) -> None:
    from mlnb.serving.metrics import Metrics

    aliases(online, "1", "4")  # the slow one
    metrics = Metrics(MODEL, "champion")
    follower = Follower(online.client, online.uri, MODEL, Challenger(SHADOW, "challenger"), metrics)
    follower.poll()
    assert follower.current is not None and follower.current.version == "4"
    log = predlog.PredictionLog(tmp_path)
    shadow = Shadow(follower, log, metrics, jobs=1)
    shadow.start()
    body = json.dumps(split(online.X.iloc[[0, 1]])).encode()
    ids = [predlog.new_request_id(time.time_ns() // 1_000_000) for _ in range(3)]
    try:
        sent = time.monotonic()
        for request_id in ids:
            shadow.submit(request_id, time.time_ns() // 1_000_000, "application/json", body, 2)
        assert time.monotonic() - sent < SLEEP / 2  # never waited for the shadow
        count = metrics.registry.get_sample_value
        assert count("mlnb_serve_shadow_dropped_total") == 2
        wait_for(lambda: count("mlnb_serve_shadow_scored_total") == 1, timeout=60)
    finally:
        shadow.stop()
        log.close()
    table = predlog.load_shadow(tmp_path)
    assert table["request_id"].tolist() == [ids[0]] * 2
    assert table["prediction"].tolist() == [0, 0] and table["error"].isna().all()


def test_a_shadow_that_does_not_load_is_listed_not_degrading(
    start: Callable[..., Server], online: Store
) -> None:
    broken = online.register_broken(MODEL)
    aliases(online, "1", broken)
    server = start(MODEL, shadow="challenger")
    rows = online.X.iloc[[0]]
    assert server.predict(split(rows)).json()["predictions"] == online.predict("1", rows)
    health = server.get("/mlnb/health").json()
    assert health["status"] == "ok"
    assert health["shadow"]["model_version"] is None
    assert f"shadow version {broken} failed to load" in health["shadow"]["load_error"]["message"]


def test_canary_answers_its_share_by_a_stable_key(
    start: Callable[..., Server], online: Store
) -> None:
    aliases(online, "1", "2")
    server = start(MODEL, canary="challenger:10%")
    rows = online.X.iloc[[0, 19]]
    predictions = {v: online.predict(v, rows) for v in "12"}
    body = json.dumps(split(rows)).encode()
    keys = [f"user-{i}" for i in range(2000)]
    seen: dict[str, str] = {}
    with httpx.Client(base_url=server.url, timeout=30) as http:

        def ask(key: str) -> str:
            headers = {"content-type": "application/json", "x-request-key": key}
            answer = http.post("/invocations", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
            got = answer.json()
            assert answer.headers["x-model-version"] == got["model_version"]
            assert got["predictions"] == predictions[got["model_version"]]
            return str(got["model_version"])

        for key in keys:
            seen[key] = ask(key)
        again = {key: ask(key) for key in keys[:100]}
        bad = json.dumps(split(rows.drop(columns=rows.columns[0]))).encode()
        for version in "12":  # an error names the version that gave it too
            key = next(k for k, v in seen.items() if v == version)
            headers = {"content-type": "application/json", "x-request-key": key}
            refused = http.post("/invocations", content=bad, headers=headers)
            assert refused.status_code == 400, refused.text
            assert refused.headers["x-model-version"] == version
    assert again == {key: seen[key] for key in keys[:100]}  # one key, one version
    canaried = sum(version == "2" for version in seen.values())
    n, p = len(keys), 0.10
    assert abs(canaried - n * p) < 4 * math.sqrt(n * p * (1 - p)), canaried

    table = predlog.load_predictions(server.log_dir)
    by_request = table.drop_duplicates("request_id")
    assert set(by_request["arm"]) == {"champion", "canary"}
    assert (by_request["arm"] == "canary").sum() == canaried + sum(v == "2" for v in again.values())
    assert set(by_request[by_request["arm"] == "canary"]["model_version"]) == {"2"}
    assert set(by_request[by_request["arm"] == "champion"]["model_version"]) == {"1"}
    health = server.get("/mlnb/health").json()
    assert health["canary"] == {
        "alias": "challenger",
        "model_version": "2",
        "alias_version": "2",
        "percent": 10.0,
    }
    assert metric(server.get("/metrics").text, "mlnb_serve_canary_answers_total") == (
        (by_request["arm"] == "canary").sum()
    )


def test_canary_without_a_key_splits_by_request_id() -> None:
    ids = [predlog.new_request_id(1_700_000_000_000 + i) for i in range(4000)]
    share = sum(in_canary(rid.encode(), 25) for rid in ids)
    assert abs(share - 1000) < 4 * math.sqrt(4000 * 0.25 * 0.75)
    assert not any(in_canary(rid.encode(), 0) for rid in ids[:100])
    assert all(in_canary(rid.encode(), 100) for rid in ids[:100])


@pytest.mark.parametrize(
    ("mode", "text", "expected"),
    [
        (SHADOW, "challenger", Challenger(SHADOW, "challenger")),
        (SHADOW, "3", Challenger(SHADOW, None, "3")),
        (CANARY, "challenger:10%", Challenger(CANARY, "challenger", None, 10.0)),
        (CANARY, "2:0.5%", Challenger(CANARY, None, "2", 0.5)),
        (CANARY, "challenger:100", Challenger(CANARY, "challenger", None, 100.0)),
    ],
)
def test_challenger_forms(mode: str, text: str, expected: Challenger) -> None:
    parsed = Challenger.parse(SHADOW if mode == SHADOW else CANARY, text)
    assert parsed == expected
    assert Challenger.parse(parsed.mode, str(parsed)) == parsed


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--shadow", "challenger", "--canary", "challenger:10%"], "not both"),
        (["--canary", "challenger:150%"], "above 0 and at most 100"),
        (["--canary", "challenger"], "challenger:10%"),
        (["--canary", ":10%"], "no alias or version"),
        (["--canary", "challenger:ten%"], "not a share"),
        (["--shadow", "models:/cancer@challenger"], "not an alias or a version number"),
    ],
)
def test_bad_challenger_options_are_usage_errors(args: list[str], says: str) -> None:
    result = CliRunner().invoke(main, ["serve", "cancer", *args], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert says in result.output
    option = "--canary" if "--canary" in args else "--shadow"
    assert option in result.output or "not both" in says
