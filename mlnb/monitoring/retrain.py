"""Retraining: the pipeline a monitor runs when a trigger fires, one at a time per model.

Design decisions:

- **One retrain at a time per model, across processes.** A retrain holds an
  exclusive ``flock`` on ``.mlnb/monitor/<model>.lock``, taken without
  waiting; a trigger that finds it held is reported as skipped, never queued.
- **The cooldown survives a crash.** The ledger ``.mlnb/monitor/<model>.json``
  is written under the lock *before* the pipeline starts.
- **The deployed version retrains.** Once ``mlnb deploy`` has made a bundle
  live, the retrain runs the spec inside it, never the working copy.
- **The evidence travels.** The pipeline run and the model version it
  delivers are tagged with the trigger and its evidence.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlnb._files import write_atomic
from mlnb.errors import MlnbError, PipelineError
from mlnb.pipelines.locate import live_spec
from mlnb.predictions import window as live
from mlnb.specs.monitor import Monitor, fill_placeholders, format_duration

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class RetrainResult:
    """How a retrain ended.

    Attributes:
        status: ``promoted``, ``rejected``, ``failed`` or ``skipped``.
        reason: the gate's sentence, the error, or why it was skipped.
        run_id: the pipeline run.
        version: the model version it delivered.
        pipeline: which spec ran (the deployed version, or the working copy).
    """

    status: str
    reason: str
    run_id: str | None = None
    version: str | None = None
    pipeline: str = ""


def pipeline_spec(monitor: Monitor) -> tuple[Path, str]:
    """The spec a retrain runs: the live deployment's, else the working copy's; and which."""
    name = monitor.pipeline_spec.name
    deployed = live_spec(monitor.root, name)
    if deployed is not None:
        version, spec = deployed
        return spec, f"deployed {name} {version}"
    return monitor.pipeline, f"{monitor.spec.retrain.pipeline} (working copy)"


def retrain(
    monitor: Monitor,
    uri: str,
    state: Path,
    *,
    check_run: str,
    trigger: str,
    evidence: str,
    window: pd.DataFrame,
    features: list[str],
    target: str,
    say: Callable[[str], None],
) -> RetrainResult:
    """Retrain the monitor's model with the window's labeled rows, unless one may not start.

    Args:
        monitor: the validated spec.
        uri: the MLflow store.
        state: the monitor state folder (``.mlnb/monitor``).
        check_run: the check that fired.
        trigger: the first trigger that fired (``drift``, ``performance``, ``schedule``).
        evidence: every fired trigger's evidence, in one sentence.
        window: the predictions the check looked at.
        features: the model's input columns.
        target: the label column the pipeline trains on.
        say: receives a line per thing worth telling a person.
    """
    spec = monitor.spec
    state.mkdir(parents=True, exist_ok=True)
    with retrain_lock(state / f"{spec.model}.lock") as holder:
        if holder is not None:
            return RetrainResult(
                "skipped", f"another retrain of '{spec.model}' is running (pid {holder})"
            )
        ledger = state / f"{spec.model}.json"
        last = _read_json(ledger).get("started")
        if spec.cooldown and isinstance(last, int | float):
            ago = time.time() - last
            if ago < spec.cooldown:
                return RetrainResult(
                    "skipped",
                    f"cooldown: the last retrain started {format_duration(ago)} ago "
                    f"(cooldown {format_duration(spec.cooldown)})",
                )
        folder = state / monitor.name / check_run
        folder.mkdir(parents=True, exist_ok=True)
        labeled = folder / "labeled.csv"
        table = live.labeled_table(window, features, target)
        wants_data = any("monitor.labeled_data" in str(v) for v in spec.retrain.params.values())
        if wants_data and table.empty:
            return RetrainResult(
                "skipped",
                "no labeled predictions in the window to retrain on; send labels to "
                "/feedback (or drop ${monitor.labeled_data} from retrain.params)",
            )
        table.to_csv(labeled, index=False)
        ledger_entry = {"started": time.time(), "check_run": check_run, "monitor": monitor.name}
        write_atomic(ledger, json.dumps(ledger_entry))
        params = fill_placeholders(
            spec.retrain.params, {"monitor.labeled_data": str(labeled), "monitor.trigger": trigger}
        )
        say(f"retraining {spec.model}: {evidence}")
        return _run(monitor, uri, params, trigger, evidence, say)


def _run(
    monitor: Monitor,
    uri: str,
    params: dict[str, Any],
    trigger: str,
    evidence: str,
    say: Callable[[str], None],
) -> RetrainResult:
    from mlnb.pipelines.runner import run_pipeline

    path, which = pipeline_spec(monitor)
    say(f"retraining with {which}")
    try:
        outcome = run_pipeline(
            path,
            profile=monitor.spec.retrain.profile,
            overrides=params,
            tracking_uri=uri,
            trigger=trigger,
            reason=evidence,
        )
    except PipelineError as exc:
        return RetrainResult("failed", str(exc), exc.run_id, pipeline=which)
    except MlnbError as exc:
        return RetrainResult("failed", str(exc), pipeline=which)
    decision, registration = outcome.decision, outcome.registration
    if decision is None or registration is None:
        return RetrainResult(
            "failed", "the pipeline delivered no model", outcome.run_id, pipeline=which
        )
    return RetrainResult(
        "promoted" if decision.promoted else "rejected",
        decision.reason,
        outcome.run_id,
        registration.version,
        which,
    )


@contextlib.contextmanager
def retrain_lock(path: Path) -> Iterator[int | None]:
    """Hold the retrain lock of a model; yields ``None``, or the pid holding it already."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            yield int(holder) if holder.isdigit() else -1
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield None
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
