"""Poisoned labels cannot change the served model; genuine drift still retrains and promotes.

Side by side, each in its own copy of the example project with ``cancer`` v1
trained (``--profile ci``), a real ``mlnb serve`` on 127.0.0.1 (no tokens:
loopback), real ``mlnb monitor --once`` checks and the project's SQLite store:

- ``genuine``: 250 rows of today's traffic with their true labels, then 319
  rows whose every feature reads ×1.5, with their true labels: the check sees
  drift, retrains, the gate promotes v2 and the service answers with it;
- ``poisoned``: 200 rows of today's traffic, every label sent to ``/feedback``
  inverted: the check reports suspicious labels and starts no retrain; a
  monitor forced to retrain anyway (label tests off, the window's labels
  alone, as the loop trained before) delivers v2, and the gate refuses it
  because it collapses on v1's own holdout. The service answers with v1 all along.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pytest

from tests.monitoring.project import (
    BATCH,
    Example,
    Once,
    Server,
    copy_of,
    dataset,
    monitor_spec,
    processes_in,
    untrained,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

SHIFT = 1.5  # a recalibrated instrument reads every measurement 50 % higher
NORMAL = 250
POISONED = 200
SWAP_WITHIN = 30.0


@dataclass
class Genuine:
    project: Example
    server: Server
    drifted: Once
    served_after: str | None  # the version answering within SWAP_WITHIN of the check


@dataclass
class Poisoned:
    project: Example
    server: Server
    check: Once  # the example monitor on the inverted labels
    forced: Once  # a monitor with the label tests off and the window's labels alone
    served: list[str]  # the versions that answered after each check
    holdout_accuracy: float  # the served model on v1's own holdout, at the end


def served_version(server: Server, rows: pd.DataFrame) -> str:
    return str(server.predict(rows)["model_version"])


def accuracy_on(server: Server, table: pd.DataFrame, target: str = "target") -> float:
    answer = server.predict(table.drop(columns=[target]))
    right = sum(int(p) == int(t) for p, t in zip(answer["predictions"], table[target], strict=True))
    return right / len(table)


def genuine_drift(project: Example, servers: list[Server]) -> Genuine:
    spec = project.write_monitor(monitor_spec())
    X, y = dataset()
    server = Server(project)
    servers.append(server)
    server.traffic(X.iloc[:NORMAL], y.iloc[:NORMAL])
    server.traffic(X.iloc[NORMAL:] * SHIFT, y.iloc[NORMAL:])
    drifted = project.once(spec, timeout=600)
    probe = X.iloc[NORMAL : NORMAL + BATCH] * SHIFT
    deadline = time.monotonic() + SWAP_WITHIN
    version = served_version(server, probe)
    while version != project.alias() and time.monotonic() < deadline:
        time.sleep(0.1)
        version = served_version(server, probe)
    return Genuine(project, server, drifted, version)


def poison(project: Example, servers: list[Server]) -> Poisoned:
    spec = project.write_monitor(monitor_spec())
    X, y = dataset()
    server = Server(project)
    servers.append(server)
    server.traffic(X.iloc[:POISONED], 1 - y.iloc[:POISONED])
    check = project.once(spec, timeout=600)
    probe = X.iloc[:BATCH]
    time.sleep(1.0)  # two alias polls of the service
    served = [served_version(server, probe)]
    forced_spec = monitor_spec(name="forced", labels={"below_constant": None, "max_shift": None})
    del forced_spec["retrain"]["params"]["base_path"]
    forced = project.once(project.write_monitor(forced_spec), timeout=600)
    time.sleep(1.0)
    served.append(served_version(server, probe))
    from mlnb.models.registry import Registry

    v1 = project.tags("1")  # its holdout is an artifact of its run, read back from the store
    stored = Registry(project.uri, project.root / ".mlnb")
    holdout = pd.read_csv(stored.data(v1["mlnb.holdout"], v1["mlnb.holdout.sha256"]))
    return Poisoned(project, server, check, forced, served, accuracy_on(server, holdout))


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Any]]]:
    trained = untrained(tmp_path_factory.mktemp("trained") / "project")
    done = trained.mlnb("run", "pipelines/cancer.yaml", "--profile", "ci")
    assert done.returncode == 0, done.stdout + done.stderr
    folder = tmp_path_factory.mktemp("poisoning")
    projects = {name: copy_of(trained, folder / name) for name in ("genuine", "poisoned")}
    servers: list[Server] = []
    with ThreadPoolExecutor(max_workers=2) as workers:
        futures = {
            "genuine": workers.submit(genuine_drift, projects["genuine"], servers),
            "poisoned": workers.submit(poison, projects["poisoned"], servers),
        }
        try:
            yield futures
        finally:
            wait(futures.values())
            for server in servers:
                server.stop()
    for project in projects.values():
        left = processes_in(project.root)
        assert not left, "processes left behind:\n" + "\n".join(left)


def test_genuine_drift_still_retrains_and_promotes(scenarios: dict[str, Future[Any]]) -> None:
    told: Genuine = scenarios["genuine"].result()
    drifted, project = told.drifted, told.project
    assert drifted.code == 4, drifted.output
    found = drifted.run.data.tags
    assert found["mlnb.drift.status"] == "drift"
    assert found["mlnb.monitor.labels"] == "plausible"
    assert found["mlnb.monitor.decision"] == "retrained (drift, performance): v2 promoted"
    assert project.alias() == "2"
    version = project.tags("2")
    assert version["mlnb.gate.decision"] == "promoted"
    assert version["mlnb.gate.evidence.champion_holdout.passed"] == "True"
    own = float(version["mlnb.gate.score"])
    on_v1 = float(version["mlnb.gate.evidence.champion_holdout.score"])
    v1 = float(version["mlnb.gate.evidence.champion_holdout.champion_score"])
    assert v1 - on_v1 <= 0.05  # it kept what v1 knew, within the example's tolerance
    assert own > float(version["mlnb.gate.champion_score"])  # and beat v1 on the new data
    assert told.served_after == "2", told.server.log()


def test_inverted_labels_do_not_change_the_served_model(
    scenarios: dict[str, Future[Any]],
) -> None:
    told: Poisoned = scenarios["poisoned"].result()
    check, project = told.check, told.project
    assert check.code == 5, check.output
    found, metrics = check.run.data.tags, check.run.data.metrics
    assert metrics["live.accuracy"] < 0.1  # every label contradicts a right prediction
    assert found["mlnb.monitor.labels"] == "suspicious"
    assert found["mlnb.monitor.triggers"] == "performance"
    assert "mlnb.monitor.retrain" not in found
    assert found["mlnb.monitor.decision"].startswith(
        "suspicious labels; performance fired, no retrain: the champion's live accuracy "
    )
    assert metrics["labels.constant_accuracy"] > 0.5
    assert "suspicious labels; performance fired, no retrain" in check.output
    assert "Traceback" not in check.output

    forced = told.forced  # a retrain anyway, on the poisoned window alone
    assert forced.code == 3, forced.output
    assert forced.run.data.tags["mlnb.monitor.retrain"] == "rejected"
    assert project.versions() == ["1", "2"]
    version = project.tags("2")
    assert version["mlnb.gate.decision"] == "rejected"
    reason = version["mlnb.gate.reason"]
    figures = re.fullmatch(
        r"v2 not promoted: accuracy_score (\S+) on its holdout but (\S+) on champion v1's "
        r"holdout \(v1: (\S+); tolerance 0\.05\)",
        reason,
    )
    assert figures, reason
    own, on_v1, v1 = map(float, figures.groups())
    assert own > 0.9 and on_v1 < 0.5 < v1  # it won on its poisoned split, and collapses on v1's
    assert float(version["mlnb.gate.evidence.champion_holdout.score"]) == pytest.approx(
        on_v1, abs=1e-4
    )

    assert project.alias() == "1"
    assert told.served == ["1", "1"], told.server.log()
    assert told.holdout_accuracy > 0.9
