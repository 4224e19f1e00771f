"""Online evaluation in a check: a real MLflow store, a real prediction log, real aliases.

The example project's ``cancer`` has two registered versions (v1 champion,
v2 challenger) logged as scikit-learn models; the checks never score them
(the monitor has no drift section, so no kernel starts): what the service
answered, shadowed and got labels for is written into the log the way
``mlnb serve`` writes it (:class:`~mlnb.predictions.log.PredictionLog`),
with its shadow and canary records. Each data set is drawn with a fixed seed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlnb.cli.monitoring import online_line
from mlnb.errors import ExitCode
from mlnb.models.registry import Registry
from mlnb.monitoring.check import CheckResult
from mlnb.monitoring.online import decide
from mlnb.monitoring.runner import MonitorRunner
from mlnb.monitoring.status import gather
from mlnb.predictions import log as predlog
from mlnb.predictions.online import OnlineComparison
from mlnb.specs.monitor import OnlineSpec, load_monitor
from mlnb.store import state_dir
from mlnb.tags import OnlineDecision
from tests.monitoring.project import (
    BATCH,
    MODEL,
    Example,
    Server,
    checked_copy,
    dataset,
    monitor_spec,
    processes_in,
    untrained,
)

ONLINE = {"online": {"metric": "accuracy", "min_labels": 200, "min_improvement": 0.01}}


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Example:
    """The example project with ``cancer`` v1 champion and v2 challenger, nothing served."""
    import mlflow
    from sklearn.dummy import DummyClassifier

    from mlnb.models._fluent import process_store

    project = untrained(tmp_path_factory.mktemp("registered") / "project")
    X, y = dataset()
    models = Registry(project.uri, state_dir(project.root))
    experiment = project.client.create_experiment("models")
    for strategy in ("most_frequent", "prior"):
        with process_store(project.uri), mlflow.start_run(experiment_id=experiment) as run:
            mlflow.sklearn.log_model(DummyClassifier(strategy=strategy).fit(X, y), name="model")
        models.register(MODEL, run.info.run_id, experiment)
    models.set_champion(MODEL, "1", "v1 promoted by hand")
    assert (project.alias("champion"), project.alias("challenger")) == ("1", "2")
    return project


@pytest.fixture
def project(registered: Example, tmp_path: Path) -> Iterator[Example]:
    """A copy of the registered project for one test; no process may be left working in it."""
    yield from checked_copy(registered, tmp_path / "project")


@dataclass
class Traffic:
    """What the log holds: the labels and each version's predictions."""

    truth: list[int]
    champion: list[int]
    challenger: list[int]


def answers(rows: int, champion: float, challenger: float, seed: int) -> Traffic:
    """The first ``rows`` labels, and predictions right with the chances given."""
    _, y = dataset()
    rng = np.random.default_rng(seed)
    truth = [int(v) for v in y.iloc[:rows]]
    return Traffic(
        truth,
        [t if r < champion else 1 - t for t, r in zip(truth, rng.random(rows), strict=True)],
        [t if r < challenger else 1 - t for t, r in zip(truth, rng.random(rows), strict=True)],
    )


def serve(
    project: Example, traffic: Traffic, start: int = 0, *, shadow: bool = False, canary: int = 0
) -> None:
    """Log requests of ``BATCH`` rows from row ``start`` as the service would, with labels.

    The champion (v1) answers each request; with ``shadow`` the challenger
    (v2) scores it too; with ``canary`` every ``canary``-th request is
    answered by v2 as the canary instead.
    """
    X, _ = dataset()
    log = predlog.PredictionLog(project.log_dir)
    try:
        for number, first in enumerate(range(start, len(traffic.truth), BATCH)):
            ms = int(time.time() * 1000)
            request_id = predlog.new_request_id(ms)
            batch = X.iloc[first : first + BATCH]
            end = first + len(batch)
            columns, inputs = list(batch.columns), batch.to_numpy().tolist()
            if canary and number % canary == 0:
                outputs = traffic.challenger[first:end]
                log.write_prediction(
                    request_id, ms, "2", columns, inputs, outputs, len(batch), arm=predlog.CANARY
                )
            else:
                outputs = traffic.champion[first:end]
                log.write_prediction(request_id, ms, "1", columns, inputs, outputs, len(batch))
                if shadow:
                    shadowed = traffic.challenger[first:end]
                    log.write_shadow(request_id, ms, "2", len(batch), 0.002, outputs=shadowed)
            log.write_feedback(request_id, traffic.truth[first:end], ms, sender="labeller")
    finally:
        log.close()


def check(project: Example, name: str, **changes: Any) -> tuple[CheckResult, list[str]]:
    """One check of a monitor that only compares (no drift, a performance bar never crossed)."""
    spec = monitor_spec(
        name=name,
        drift=None,
        triggers=["performance"],
        performance={"metric": "accuracy", "threshold": 0.5, "min_labels": 50},
        window={"last": 5000},
        **changes,
    )
    path = project.write_monitor(spec)
    said: list[str] = []
    runner = MonitorRunner(load_monitor(project.root / path), say=said.append)
    try:
        result = runner.check()
    finally:
        runner.close()
    assert result.error is None, result.error
    return result, said


def run_of(project: Example, result: CheckResult) -> Any:
    return project.client.get_run(result.run_id)


def test_a_better_shadow_waits_for_its_labels_then_becomes_champion(project: Example) -> None:
    traffic = answers(500, champion=0.8, challenger=0.97, seed=1)
    truncated = Traffic(traffic.truth[:100], traffic.champion[:100], traffic.challenger[:100])
    serve(project, truncated, shadow=True)

    early, _ = check(project, "online", promotion=ONLINE)

    assert early.online is not None
    assert early.online.decision == OnlineDecision.WAITING
    assert early.online.reason == "waiting: 100 of 200 labels"
    assert early.exit_code == ExitCode.OK
    assert project.alias("champion") == "1"
    waiting = run_of(project, early)
    assert waiting.data.tags["mlnb.online.decision"] == "waiting"
    assert (
        waiting.data.tags["mlnb.monitor.decision"]
        == "no trigger; online: waiting: 100 of 200 labels"
    )
    assert waiting.data.metrics["online_labels"] == 100

    serve(project, traffic, start=100, shadow=True)
    later, said = check(project, "online", promotion=ONLINE)

    assert later.online is not None and later.online.decision == OnlineDecision.PROMOTED
    assert later.exit_code == ExitCode.PROMOTED
    assert project.alias("champion") == "2"
    comparison = later.online.comparison
    assert (comparison.mode, comparison.labels) == ("shadow", 500)
    assert comparison.champion_value == pytest.approx(
        np.mean(np.array(traffic.champion) == np.array(traffic.truth))
    )
    assert comparison.ci_low is not None and comparison.ci_low > 0
    run = run_of(project, later)
    metrics, found = run.data.metrics, run.data.tags
    assert metrics["online_labels"] == 500
    assert metrics["online_challenger_accuracy"] > metrics["online_champion_accuracy"]
    assert metrics["online_ci_low"] > 0 and metrics["online_p_value"] < 0.001
    assert metrics["online_difference"] == pytest.approx(comparison.difference)
    assert found["mlnb.online.mode"] == "shadow"
    assert (found["mlnb.online.champion_version"], found["mlnb.online.challenger_version"]) == (
        "1",
        "2",
    )
    assert found["mlnb.online.decision"] == "promoted"
    assert found["mlnb.monitor.decision"].startswith(
        "online: v2 promoted on live evidence over v1: accuracy +0."
    )
    version = project.tags("2")
    assert version["mlnb.online.decision"] == "promoted"
    assert version["mlnb.online.reason"].startswith("v2 promoted on live evidence over v1")
    assert version["mlnb.online.check_run_id"] == later.run_id
    assert version["mlnb.gate.decision"] == "promoted"
    assert any(line.startswith("v2 promoted on live evidence") for line in said)
    assert "  online: shadow v2 against champion v1 on 500 paired labels: accuracy 0.9" in said[-1]

    [status] = gather(project.root, [MODEL])
    assert status.online is not None
    assert (status.online.mode, status.online.decision) == ("shadow", "promoted")
    line = online_line(status.online)
    assert line.startswith("online (shadow, ")
    assert "challenger v2 accuracy 0.9" in line and "against champion v1 0.8" in line
    assert "on 500 paired labels — promoted: v2 promoted on live evidence" in line

    back = Registry(project.uri, state_dir(project.root)).rollback(MODEL)  # the history is kept
    assert back.version == "1" and project.alias("champion") == "1"


def test_a_worse_shadow_is_never_promoted_and_loses_its_alias(project: Example) -> None:
    serve(project, answers(400, champion=0.92, challenger=0.7, seed=2), shadow=True)

    result, said = check(project, "online", promotion=ONLINE)

    assert result.online is not None and result.online.decision == OnlineDecision.REMOVED
    assert project.alias("champion") == "1" and project.alias("challenger") is None
    reason = result.online.reason
    assert reason.startswith("v2 is worse than champion v1 on live labels: accuracy -0.")
    assert reason.endswith("its alias challenger is removed")
    assert project.tags("2")["mlnb.online.decision"] == "removed"
    assert project.tags("2")["mlnb.online.reason"] == reason
    assert run_of(project, result).data.metrics["online_ci_high"] < 0
    assert reason in said

    again, _ = check(project, "online", promotion=ONLINE)  # no challenger: nothing compared
    assert again.online is None and project.alias("champion") == "1"


def test_a_small_difference_is_no_significant_difference_yet(project: Example) -> None:
    serve(project, answers(300, champion=0.85, challenger=0.85, seed=3), shadow=True)

    result, _ = check(project, "online", promotion=ONLINE)

    assert result.online is not None and result.online.decision == OnlineDecision.UNDECIDED
    assert result.online.reason.startswith("no significant difference yet: accuracy ")
    assert (project.alias("champion"), project.alias("challenger")) == ("1", "2")


def test_a_canary_is_compared_on_its_own_share(project: Example) -> None:
    serve(project, answers(500, champion=0.8, challenger=0.97, seed=4), canary=5)

    result, _ = check(project, "canary", promotion=ONLINE)

    assert result.online is not None
    comparison = result.online.comparison
    assert comparison.mode == "canary"
    assert (comparison.champion_labels, comparison.challenger_labels) == (400, 100)
    assert result.online.decision == OnlineDecision.WAITING
    assert result.online.reason == "waiting: 100 of 200 labels"
    run = run_of(project, result)
    assert run.data.tags["mlnb.online.mode"] == "canary"
    assert run.data.metrics["online_champion_labels"] == 400
    assert run.data.metrics["online_challenger_labels"] == 100
    assert run.data.metrics["online_labels"] == 500
    assert project.alias("champion") == "1"
    assert result.performance is not None and result.performance.labels == 400  # v1's only


def test_without_online_promotion_the_comparison_is_only_recorded(project: Example) -> None:
    serve(project, answers(500, champion=0.8, challenger=0.97, seed=5), shadow=True)

    result, _ = check(project, "auto")

    assert result.online is not None and result.online.decision == OnlineDecision.COMPARED
    assert project.alias("champion") == "1" and project.alias("challenger") == "2"
    assert run_of(project, result).data.metrics["online_ci_low"] > 0
    assert "online_challenger_accuracy" in run_of(project, result).data.metrics


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_retrain_with_online_promotion_awaits_the_live_labels(tmp_path: Path) -> None:
    project = untrained(tmp_path / "project")
    done = project.mlnb("run", "pipelines/cancer.yaml", "--profile", "ci")
    assert done.returncode == 0, done.stdout + done.stderr
    spec = project.write_monitor(monitor_spec(name="online", promotion=ONLINE))
    X, y = dataset()
    shifted, truth = X.iloc[250:] * 1.5, y.iloc[250:].tolist()  # drift, as the runner tests shift
    project.write_log(shifted, predictions=truth, labels=truth)

    once = project.once(spec)

    assert once.code == ExitCode.REJECTED, once.output  # retrained; the champion stays
    found = once.run.data.tags
    assert found["mlnb.monitor.retrain"] == "awaiting"
    assert found["mlnb.monitor.decision"].endswith(
        ": v2 challenger registered (gated offline) and awaiting online confirmation"
    )
    assert project.alias("champion") == "1" and project.alias("challenger") == "2"
    assert project.tags("2")["mlnb.gate.decision"] == "passed"
    assert project.tags("2")["mlnb.gate.reason"].endswith(
        "; promotion is online: champion moves once it wins on labeled live traffic"
    )
    assert "retraining with pipelines/cancer.yaml (working copy) (promotion is online)" in (
        once.output
    )
    assert "mlnb.online.mode" not in found  # v1 was its own challenger: nothing to compare
    assert project.tags("2")["mlnb.online.decision"] == "waiting"
    status = project.mlnb("status", timeout=120)
    assert status.returncode == 0, status.stderr
    assert "online: challenger registered (gated offline) and awaiting online confirmation" in (
        " ".join(status.stdout.split())
    )
    assert "awaiting a person" not in status.stdout
    left = processes_in(project.root)
    assert not left, "processes left behind:\n" + "\n".join(left)


def figures(low: float, difference: float, high: float, labels: int = 500) -> OnlineComparison:
    """A shadow comparison of accuracy with these figures."""
    return OnlineComparison(
        mode="shadow",
        metric="accuracy",
        champion_version="1",
        challenger_version="2",
        labels=labels,
        champion_labels=labels,
        challenger_labels=labels,
        champion_value=0.8,
        challenger_value=0.8 + difference,
        difference=difference,
        ci_low=low,
        ci_high=high,
        p_value=0.01,
        test="McNemar's exact test",
    )


@pytest.mark.parametrize(
    ("comparison", "gate", "decision", "reason"),
    [
        (figures(0.01, 0.03, 0.05), "passed", OnlineDecision.PROMOTED, "v2 promoted on live"),
        (figures(0.001, 0.005, 0.01), None, OnlineDecision.UNDECIDED, "better by less than"),
        (figures(-0.01, 0.01, 0.03), None, OnlineDecision.UNDECIDED, "no significant difference"),
        (figures(-0.05, -0.03, -0.01), None, OnlineDecision.REMOVED, "v2 is worse than champion"),
        (figures(0.01, 0.03, 0.05), "rejected", OnlineDecision.REFUSED, "v2 is better on live"),
        (figures(-0.05, -0.03, -0.01, 150), None, OnlineDecision.WAITING, "waiting: 150 of 200"),
    ],
)
def test_what_the_comparison_decides(
    comparison: OnlineComparison, gate: str | None, decision: OnlineDecision, reason: str
) -> None:
    spec = OnlineSpec(metric="accuracy", min_labels=200, min_improvement=0.01)
    found = decide(comparison, spec, gate)

    assert found.decision == decision
    assert found.reason.startswith(reason), found.reason
    assert decide(comparison, None, gate).decision == OnlineDecision.COMPARED


@pytest.fixture(scope="module")
def contenders(tmp_path_factory: pytest.TempPathFactory) -> Example:
    """``cancer`` v1 a scaled logistic regression, v2 a constant (the majority class)."""
    import mlflow
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mlnb.models._fluent import process_store

    project = untrained(tmp_path_factory.mktemp("contenders") / "project")
    X, y = dataset()
    train = X.iloc[300:], y.iloc[300:]  # the service is sent rows 0-299
    models = Registry(project.uri, state_dir(project.root))
    experiment = project.client.create_experiment("models")
    fitted = [
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(*train),
        DummyClassifier(strategy="most_frequent").fit(*train),
    ]
    for model in fitted:
        with process_store(project.uri), mlflow.start_run(experiment_id=experiment) as run:
            mlflow.sklearn.log_model(model, name="model", input_example=X.head(3))
        models.register(MODEL, run.info.run_id, experiment)
    return project


@pytest.fixture
def contender(contenders: Example, tmp_path: Path) -> Iterator[Example]:
    """A copy of ``contenders`` for one test; no process may be left working in it."""
    yield from checked_copy(contenders, tmp_path / "project")


@pytest.mark.parametrize(
    ("champion", "challenger", "decision"),
    [("2", "1", OnlineDecision.PROMOTED), ("1", "2", OnlineDecision.REMOVED)],
    ids=["better", "worse"],
)
def test_a_real_service_shadows_the_challenger_and_its_labels_decide(
    contender: Example, champion: str, challenger: str, decision: OnlineDecision
) -> None:
    """``mlnb serve --shadow challenger``, labels on /feedback, then ``mlnb monitor --once``."""
    project = contender
    models = Registry(project.uri, state_dir(project.root))
    models.set_champion(MODEL, champion, f"v{champion} by hand")
    project.client.set_registered_model_alias(MODEL, "challenger", challenger)
    X, y = dataset()
    server = Server(project, "--shadow", "challenger")
    try:
        _, versions = server.traffic(X.iloc[:300], y.iloc[:300])
        assert versions == {champion}  # the shadow never answers
        deadline = time.monotonic() + 60
        while len(predlog.load_shadow(project.log_dir)) < 300:  # the shadow is off the path
            assert time.monotonic() < deadline, "the shadow did not score the traffic"
            time.sleep(0.2)
        spec = project.write_monitor(
            monitor_spec(
                name="online",
                drift=None,
                triggers=["performance"],
                performance={"metric": "accuracy", "threshold": 0.5, "min_labels": 50},
                window={"last": 5000},
                promotion=ONLINE,
            )
        )
        once = project.once(spec)
        after = server.predict(X.iloc[:BATCH]) if decision == OnlineDecision.PROMOTED else None
        if after is not None:  # the service follows champion to the version that won
            deadline = time.monotonic() + 60
            while after["model_version"] != challenger and time.monotonic() < deadline:
                time.sleep(0.2)
                after = server.predict(X.iloc[:BATCH])
    finally:
        server.stop()
    assert once.run is not None, once.output
    found = once.run.data.tags
    assert found["mlnb.online.mode"] == "shadow", once.output
    assert found["mlnb.online.decision"] == decision.value, once.output
    assert once.run.data.metrics["online_labels"] == 300
    if decision == OnlineDecision.PROMOTED:
        assert once.code == ExitCode.PROMOTED, once.output
        assert once.run.data.metrics["online_ci_low"] > 0
        assert project.alias("champion") == challenger
        assert after is not None and after["model_version"] == challenger
    else:
        assert once.code == ExitCode.OK, once.output
        assert once.run.data.metrics["online_ci_high"] < 0
        assert project.alias("champion") == champion and project.alias("challenger") is None
