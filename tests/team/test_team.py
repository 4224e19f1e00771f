"""A team on one ``mlflow server``: members on their own machines, monitors, workers, an outage.

Three project folders stand for three machines. A and C share a state folder
(``MLNB_STATE_DIR`` on a disk both mount); B has one of its own and sees
nothing of A's or C's files. All three talk to the session's ``mlflow server``
(PostgreSQL behind it, artifacts proxied to moto's S3) and hold no S3 keys.
The tests run in order, each on what the ones before left in the store:

1. A trains ``cancer`` v1 through the server; its holdout and training data
   land in the bucket.
2. C runs the same pipeline: every stage is in the shared cache, no new version.
3. A registers v2 without promoting it; B gates it and drift-checks the
   champion from its own folder, with everything it needs from the store.
4. Monitors on A and C see the shared prediction log at once: one retrain.
5. B runs the pipeline on Dask workers (processes in folders of their own).
6. The server goes down under B's ``mlnb serve``: it keeps answering with the
   version it loaded and says ``degraded`` within seconds; ``mlnb run`` fails
   with a clear error in bounded time; the server comes back and so does ``ok``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from mlnb import tags
from tests.dask_cluster import DaskCluster
from tests.monitoring.project import MODEL, Server, dataset, monitor_spec, processes_in, stop
from tests.team.conftest import S3, MlflowServer, service_env
from tests.team.member import Member

pytestmark = [pytest.mark.team, pytest.mark.slow, pytest.mark.timeout(600)]

DEGRADED_WITHIN = 30.0  # seconds from the server going down to /health saying so


@dataclass
class Team:
    a: Member
    b: Member
    c: Member
    s3: S3
    server: MlflowServer


@pytest.fixture(scope="module")
def team(
    mlflow_server: MlflowServer, s3: S3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Team]:
    folder = tmp_path_factory.mktemp("members")
    shared, own = folder / "shared-state", folder / "b-state"
    for state in (shared, own):
        state.mkdir()
    members = {
        name: Member(folder / name, mlflow_server.uri, state)
        for name, state in (("a", shared), ("b", own), ("c", shared))
    }
    yield Team(**members, s3=s3, server=mlflow_server)
    for member in members.values():
        left = processes_in(member.root)
        assert not left, "processes left behind:\n" + "\n".join(left)


def test_a_member_trains_through_the_server(team: Team) -> None:
    said = team.a.run()

    assert team.a.versions() == ["1"] and team.a.alias() == "1", said
    version = team.a.tags("1")
    sha = version[tags.HOLDOUT_SHA]
    # the version's data is in the bucket, under its content hash: nothing of A's folder
    keys = team.s3.keys("artifacts/")
    assert any(k.endswith(f"/mlnb/data/{sha}/test.csv") for k in keys), keys
    assert any(k.endswith(f"/mlnb/data/{version[tags.TRAINING_DATA_SHA]}/train.csv") for k in keys)
    assert str(team.a.root) not in json.dumps(version)


def test_a_teammate_on_the_shared_state_folder_finds_the_stages_cached(team: Team) -> None:
    before = len(team.a.runs())

    said = team.c.run()

    assert "cached" in said and "succeeded" not in said, said
    assert team.c.versions() == ["1"]  # no duplicate version of the same stages
    assert team.c.alias() == "1"
    assert len(team.c.runs()) == before + 3  # three stage runs, each marked cached


def test_a_teammate_gates_and_drift_checks_another_members_version(team: Team) -> None:
    challenger = team.a.alias("challenger")
    said = team.a.run("-p", "n_estimators=3", "--no-promote")
    assert team.a.versions() == ["1", "2"], said
    assert team.a.alias("challenger") == challenger and team.a.alias() == "1"  # none moved

    # B gates A's v2 from its own folder: both holdouts come from the store
    gated = team.b.mlnb("promote", MODEL, "--version", "2")
    said = gated.stdout + gated.stderr
    assert "is gone" not in said and "Traceback" not in said, said
    decision = team.b.tags("2")[tags.GATE_DECISION]
    assert (gated.returncode, decision) in {(0, "promoted"), (3, "rejected")}, said
    assert team.b.alias() == ("2" if decision == "promoted" else "1")
    downloaded = sorted(p.name for p in (team.b.state / "data").glob("*/*"))
    assert downloaded == ["test.csv"], downloaded  # one content, one download

    # B's service logged today's traffic, shifted: B's drift check compares it with the
    # champion's training data, which it has only from the store
    X, _ = dataset()
    rows = X.iloc[:200] * 1.5
    team.b.write_log(rows, predictions=[1] * len(rows), labels=None, version=team.b.alias())
    spec = team.b.write_monitor(monitor_spec(name="drift-b", triggers=["performance"]))
    once = team.b.once(spec)
    assert once.code == 0, once.output  # drift is not one of its triggers: no retrain
    checked = once.run.data.tags
    assert checked["mlnb.drift.status"] == "drift", checked
    assert checked["mlnb.model.version"] == team.b.alias()
    assert sorted(p.name for p in (team.b.state / "data").glob("*/*")) == ["test.csv", "train.csv"]


def test_two_monitors_on_two_machines_retrain_once(team: Team) -> None:
    a, c = team.a, team.c
    versions = a.versions()
    spec = monitor_spec(name="race", drift=None, triggers=["performance"], cooldown="1h")
    for member in (a, c):
        member.write_monitor(spec)
    X, y = dataset()
    rows = X.iloc[:240]
    noise = np.random.default_rng(0).integers(0, 2, len(rows)).tolist()
    a.write_log(rows, predictions=y.iloc[:240].tolist(), labels=noise)  # C reads it too

    started = [m.start("monitor", "pipelines/race.yaml", "--once", name="race") for m in (a, c)]
    try:
        codes = [proc.wait(400) for proc, _ in started]
    finally:
        for proc, _ in started:
            stop(proc)
    outputs = [output.read_text(errors="replace") for _, output in started]

    assert sorted(codes) == [3, 5], outputs  # one retrained (and its version was rejected)
    assert len(a.versions()) == len(versions) + 1, outputs  # exactly one new version
    loser = outputs[codes.index(5)]
    winner_pid = started[codes.index(3)][0].pid
    assert (
        f"another retrain of 'cancer' is running (pid {winner_pid})" in loser
        or "cooldown: the last retrain started" in loser
    ), loser
    ledger = json.loads((a.state / "monitor" / "cancer.json").read_text())
    assert ledger["check_run"]

    # the cooldown the winner started holds on the other machine too
    again = c.once("pipelines/race.yaml")
    assert again.code == 5, again.output
    reason = again.run.data.tags["mlnb.monitor.retrain_reason"]
    assert reason.startswith("cooldown: the last retrain started"), reason
    assert len(c.versions()) == len(versions) + 1


def test_a_pipeline_runs_on_dask_workers_against_the_server(
    team: Team, tmp_path_factory: pytest.TempPathFactory
) -> None:
    b = team.b
    versions, champion = b.versions(), b.alias()
    env = {k: v for k, v in service_env().items() if not k.startswith("AWS_")}
    with DaskCluster(tmp_path_factory.mktemp("dask"), workers=2, env=env) as cluster:
        addresses = cluster.wait_for_workers(2)
        before = {r.info.run_id for r in b.runs()}
        said = b.run(
            "--force", "--no-promote", "--executor", "dask", "--scheduler", cluster.address
        )

    new = [r for r in b.runs() if r.info.run_id not in before]
    assert sorted(r.data.tags["mlnb.stage"] for r in new) == ["evaluate", "prepare", "train"], said
    for run in new:
        assert run.info.status == "FINISHED"
        assert run.data.tags[tags.WORKER] in addresses
    assert len(b.versions()) == len(versions) + 1  # the model a worker logged is registered
    assert b.alias() == champion


def test_the_service_keeps_serving_while_the_server_is_down(team: Team) -> None:
    b, server = team.b, team.server
    X, _ = dataset()
    rows = X.iloc[:10]
    service = Server(b)
    try:
        served = service.predict(rows)["model_version"]
        assert httpx.get(f"{service.url}/mlnb/health", timeout=10).json()["status"] == "ok"

        server.stop()
        down_at = time.monotonic()
        degraded_after, answered = None, 0
        try:
            while time.monotonic() - down_at < DEGRADED_WITHIN + 5:
                assert service.predict(rows)["model_version"] == served  # the loaded version
                answered += 1
                health = httpx.get(f"{service.url}/mlnb/health", timeout=10).json()
                if health["status"] == "degraded":
                    degraded_after = time.monotonic() - down_at
                    break
                time.sleep(0.5)
            assert degraded_after is not None and degraded_after < DEGRADED_WITHIN, health
            assert "cannot look up the alias" in json.dumps(health), health

            # a run meanwhile is a clear error, soon
            started = time.monotonic()
            failed = team.a.mlnb("run", "pipelines/cancer.yaml", "--profile", "ci", timeout=120)
            took = time.monotonic() - started
            assert failed.returncode != 0
            assert f"error: cannot open the MLflow store {server.uri}" in failed.stderr, failed
            assert "Traceback" not in failed.stderr
            assert took < 45, f"took {took:.0f} s to fail"
        finally:
            server.start()

        back_at, recovered = time.monotonic(), None
        while time.monotonic() - back_at < 30:
            if httpx.get(f"{service.url}/mlnb/health", timeout=10).json()["status"] == "ok":
                recovered = time.monotonic() - back_at
                break
            time.sleep(0.5)
        assert recovered is not None, service.log()
        assert service.predict(rows)["model_version"] == served
        print(
            f"store down: {answered} requests answered, degraded after {degraded_after:.1f} s, "
            f"ok {recovered:.1f} s after the server was back; a run failed in {took:.1f} s"
        )
    finally:
        assert service.stop() == 0, service.log()
