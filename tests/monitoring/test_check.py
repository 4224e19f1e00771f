"""One monitor check: a store that refuses its run, and the vocabulary of its outcome.

The store is a real SQLite MLflow store that opens and reads but refuses new
runs (a trigger in the database aborts every insert into ``runs``): the
first thing a check writes is its run, so the store fails exactly where a
check starts it. The monitor has no drift section, so no kernel starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from mlnb.errors import ExitCode
from mlnb.monitoring.check import CheckResult, Trigger, TriggerKind
from mlnb.monitoring.labels import LabelCheck, LabelStatus
from mlnb.monitoring.retrain import RetrainResult, RetrainStatus
from mlnb.monitoring.runner import MonitorRunner
from mlnb.specs.monitor import TRIGGERS, load_monitor
from tests.monitoring.project import Example, monitor_spec, stop, untrained

REFUSAL = "this store takes no new runs"
MONITOR = "refused"
SPEC = f"pipelines/{MONITOR}.yaml"


@pytest.fixture
def refusing(tmp_path: Path) -> Example:
    """The example project on a store that opens, reads, and refuses every new run.

    The monitor's experiment exists beforehand, so opening the store, finding
    the experiment and asking for the champion only read.
    """
    from mlnb.tracking import Tracker

    project = untrained(tmp_path / "project")
    project.write_monitor(
        monitor_spec(name=MONITOR, drift=None, triggers=["performance"], schedule={"every": "1s"})
    )
    Tracker(project.root).experiment_id(MONITOR)
    with contextlib.closing(sqlite3.connect(project.root / "mlflow.db")) as db:
        db.execute(
            "CREATE TRIGGER refuse_runs BEFORE INSERT ON runs "
            f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
        )
        db.commit()
    return project


def test_a_store_refusing_the_check_run_fails_the_check(refusing: Example) -> None:
    said: list[str] = []
    runner = MonitorRunner(load_monitor(refusing.root / SPEC), say=said.append)
    try:
        results = [runner.check(), runner.check()]  # the runner goes on after a failed check
    finally:
        runner.close()
    for result in results:
        assert result.error is not None and REFUSAL in result.error
        assert result.error.startswith("cannot create an MLflow run on sqlite:///")
        assert result.exit_code == ExitCode.FAILED
        assert result.run_id == "" and result.champion is None
    assert said == [f"check failed: {result.error}" for result in results]
    assert refusing.checks(MONITOR) == []


def test_mlnb_monitor_once_on_a_refusing_store_is_a_failed_check(refusing: Example) -> None:
    done = refusing.mlnb("monitor", SPEC, "--once")
    output = done.stdout + done.stderr
    assert done.returncode == ExitCode.FAILED, output
    assert "check failed: cannot create an MLflow run on sqlite:///" in output
    assert REFUSAL in output
    assert "Traceback" not in output
    assert "error:" not in output  # a failed check, not a failed command


def test_the_loop_goes_on_checking_on_a_refusing_store(refusing: Example) -> None:
    proc, output = refusing.start("monitor", SPEC, name="refused")
    try:
        deadline = time.monotonic() + 120
        while output.read_text(errors="replace").count("check failed:") < 2:
            assert proc.poll() is None, output.read_text(errors="replace")
            assert time.monotonic() < deadline, output.read_text(errors="replace")
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(60)
    finally:
        stop(proc)
    text = output.read_text(errors="replace")
    assert code == ExitCode.OK, text
    assert "stopping after the current check" in text
    assert "Traceback" not in text
    assert refusing.checks(MONITOR) == []


def test_the_trigger_kinds_are_the_spec_s() -> None:
    assert [kind.value for kind in TriggerKind] == list(TRIGGERS)


@pytest.mark.parametrize(
    ("status", "code", "decision"),
    [
        (RetrainStatus.PROMOTED, ExitCode.PROMOTED, "retrained (performance): v2 promoted"),
        (RetrainStatus.REJECTED, ExitCode.REJECTED, "retrained (performance): v2 not promoted"),
        (
            RetrainStatus.PASSED,
            ExitCode.REJECTED,
            "retrained (performance): v2 passed the gate; promotion is manual",
        ),
        (
            RetrainStatus.AWAITING,
            ExitCode.REJECTED,
            "retrained (performance): v2 challenger registered (gated offline) and awaiting "
            "online confirmation",
        ),
        (RetrainStatus.SKIPPED, ExitCode.SKIPPED, "performance fired; retrain skipped: why"),
        (RetrainStatus.FAILED, ExitCode.FAILED, "performance fired; retrain failed: why"),
    ],
)
def test_a_retrain_decides_the_exit_code_and_the_decision(
    status: RetrainStatus, code: ExitCode, decision: str
) -> None:
    result = CheckResult(
        "m",
        champion="1",
        triggers=[Trigger(TriggerKind.PERFORMANCE, "performance: accuracy 0.5")],
        retrain=RetrainResult(status, "why", version="2"),
    )
    assert result.exit_code == code
    assert result.decision == decision


@pytest.mark.parametrize("fired", [True, False], ids=["trigger-fired", "no-trigger"])
def test_suspicious_labels_hold_the_retrain_and_say_why(fired: bool) -> None:
    triggers = [Trigger(TriggerKind.PERFORMANCE, "performance: accuracy 0.02")] if fired else []
    result = CheckResult(
        "m",
        champion="1",
        triggers=triggers,
        labels=LabelCheck(LabelStatus.SUSPICIOUS, "far worse than a constant"),
    )

    assert result.suspicious
    assert result.exit_code == (ExitCode.SKIPPED if fired else ExitCode.OK)
    held = "; performance fired, no retrain" if fired else ""
    assert result.decision == f"suspicious labels{held}: far worse than a constant"


def test_a_missing_log_folder_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "nowhere"
    result = CheckResult("m", champion="1", no_log=folder)

    assert result.exit_code == ExitCode.OK
    assert result.decision.startswith(f"no prediction log: the folder {folder} does not exist")
