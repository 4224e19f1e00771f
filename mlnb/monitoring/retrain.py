"""Retraining: the pipeline a monitor runs when a trigger fires, one at a time per model.

Design decisions:

- **One retrain at a time per model, across processes.** A retrain holds
  the lock ``.mlnb/monitor/<model>.lock`` (:func:`retrain_lock`, a
  :mod:`filelock` lock taken without waiting, with the holder's pid beside
  it); a trigger that finds it held is reported as skipped, never queued.
- **The cooldown survives a crash.** The ledger ``.mlnb/monitor/<model>.json``
  is written under the lock *before* the pipeline starts.
- **The deployed version retrains.** Once ``mlnb deploy`` has made a bundle
  live, the retrain runs the spec inside it, never the working copy.
- **The evidence travels.** The pipeline run and the model version it
  delivers are tagged with the trigger and its evidence.
- **Manual promotion is a hold on the gate.** With ``promotion: manual`` the
  pipeline registers its version without gating it; the gate then runs on
  the version as usual (its holdout, the champion's, the golden data) and
  records its decision, but never moves ``champion``: a person does, with
  ``mlnb promote`` or in the MLflow UI.
- **Online promotion holds the gate too.** With ``promotion: {online: ...}``
  the gate runs as with ``manual``, and the new version keeps the alias
  ``challenger``: a service shadowing (or canarying) the challenger now
  scores it, and the checks move ``champion`` once the live labels say it
  is better (:mod:`mlnb.monitoring.online`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlnb import tags
from mlnb._files import try_exclusive, write_atomic
from mlnb.errors import MlnbError, PipelineError
from mlnb.pipelines.locate import live_spec
from mlnb.pipelines.signals import signals_deferred
from mlnb.predictions.window import labeled_table
from mlnb.specs.monitor import Monitor, fill_placeholders, format_duration
from mlnb.tags import ModelDecision

if TYPE_CHECKING:
    import pandas as pd

    from mlnb.models.registry import Decision, Registration


class RetrainStatus(StrEnum):
    """How a retrain ended (:data:`mlnb.tags.RETRAIN` on the check run)."""

    PROMOTED = "promoted"  # the gate made the new version champion
    REJECTED = "rejected"  # the gate kept the champion
    PASSED = "passed"  # the gate passed the new version; promotion is manual
    AWAITING = "awaiting"  # the gate passed it; promotion waits for the live comparison
    FAILED = "failed"  # the pipeline failed, or delivered no model
    SKIPPED = "skipped"  # none started: another is running, the cooldown, no labels


@dataclass
class RetrainResult:
    """How a retrain ended.

    Attributes:
        status: what became of it.
        reason: the gate's sentence, the error, or why it was skipped.
        run_id: the pipeline run.
        version: the model version it delivered.
        pipeline: which spec ran (the deployed version, or the working copy).
    """

    status: RetrainStatus
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
    training_data: Path | None = None,
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
        training_data: the champion's training data (``${monitor.training_data}``).
    """
    spec = monitor.spec
    with retrain_lock(state, spec.model) as holder:
        if holder is not None:
            return RetrainResult(RetrainStatus.SKIPPED, _running(spec.model, holder))
        ledger = state / f"{spec.model}.json"
        cooling = _cooling(ledger, spec.cooldown)
        if cooling is not None:
            return RetrainResult(RetrainStatus.SKIPPED, cooling)
        folder = state / monitor.name / check_run
        folder.mkdir(parents=True, exist_ok=True)
        labeled = folder / "labeled.csv"
        table = labeled_table(window, features, target)
        wants_data = any("monitor.labeled_data" in str(v) for v in spec.retrain.params.values())
        if wants_data and table.empty:
            return RetrainResult(
                RetrainStatus.SKIPPED,
                "no labeled predictions in the window to retrain on; send labels to "
                "/feedback (or drop ${monitor.labeled_data} from retrain.params)",
            )
        table.to_csv(labeled, index=False)
        ledger_entry = {"started": time.time(), "check_run": check_run, "monitor": monitor.name}
        write_atomic(ledger, json.dumps(ledger_entry))
        params = fill_placeholders(
            spec.retrain.params,
            {
                "monitor.labeled_data": str(labeled),
                "monitor.training_data": str(training_data or ""),
                "monitor.trigger": trigger,
            },
        )
        say(f"retraining {spec.model}: {evidence}")
        return _run(monitor, uri, params, trigger, evidence, say)


def retrain_lock(state: Path, model: str) -> AbstractContextManager[int | None]:
    """Hold the retrain lock of ``model`` if it is free; yields ``None``.

    When another process retrains it, yields that process's pid (``-1`` when
    it cannot be told) and holds nothing: see :func:`mlnb._files.try_exclusive`.
    """
    return try_exclusive(state / f"{model}.lock")


def _running(model: str, holder: int) -> str:
    """Why a retrain of ``model`` did not start: process ``holder`` retrains it."""
    which = f"pid {holder}" if holder > 0 else "its pid is unknown"
    return f"another retrain of '{model}' is running ({which})"


def _cooling(ledger: Path, cooldown: float) -> str | None:
    """Why the cooldown keeps a retrain from starting, or ``None`` when it does not."""
    last = _read_json(ledger).get("started")
    if not cooldown or not isinstance(last, int | float):
        return None
    ago = time.time() - last
    if ago >= cooldown:
        return None
    return (
        f"cooldown: the last retrain started {format_duration(ago)} ago "
        f"(cooldown {format_duration(cooldown)})"
    )


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
    manual = not monitor.gate_moves_champion
    held = " (promotion is online)" if monitor.online else " (promotion is manual)"
    say(f"retraining with {which}" + (held if manual else ""))
    try:
        outcome = run_pipeline(
            path,
            profile=monitor.spec.retrain.profile,
            overrides=params,
            tracking_uri=uri,
            promote=not manual,
            trigger=trigger,
            reason=evidence,
        )
        registration = outcome.registration
        decision = outcome.decision
        if manual and registration is not None:
            alias = monitor.online.alias if monitor.online else None
            decision = _gate_held(uri, registration, outcome.run_id, outcome.experiment_id, alias)
    except PipelineError as exc:
        return RetrainResult(RetrainStatus.FAILED, str(exc), exc.run_id, pipeline=which)
    except MlnbError as exc:
        return RetrainResult(RetrainStatus.FAILED, str(exc), pipeline=which)
    if decision is None or registration is None:
        return RetrainResult(
            RetrainStatus.FAILED, "the pipeline delivered no model", outcome.run_id, pipeline=which
        )
    status = _status(decision.outcome)
    if status == RetrainStatus.PASSED and monitor.online is not None:
        status = RetrainStatus.AWAITING
        _awaiting(uri, registration, monitor.online.alias)
    return RetrainResult(status, decision.reason, outcome.run_id, registration.version, which)


#: who moves ``champion`` after a retrain whose promotion is online, as the gate says it
ONLINE_MOVER = "promotion is online: champion moves once it wins on labeled live traffic"


def _gate_held(
    uri: str,
    registration: Registration,
    run_id: str,
    experiment_id: str,
    alias: str | None = None,
) -> Decision:
    """Gate a registered version without moving ``champion`` (manual or online promotion).

    The version gets the alias ``challenger`` (and ``alias`` too, when
    online promotion names another), so a service shadowing it scores it.

    Interrupts wait until the decision is recorded, as they do in a pipeline's delivery.

    Raises:
        RegistryError: the gate cannot run.
    """
    from mlnb.models.registry import CHALLENGER, Registry

    with signals_deferred():
        held = Registry(uri)
        for name in dict.fromkeys((CHALLENGER, alias or CHALLENGER)):
            held.client.set_registered_model_alias(registration.name, name, registration.version)
        return held.gate(
            registration.name,
            registration.version,
            parent_run_id=run_id,
            experiment_id=experiment_id,
            hold=ONLINE_MOVER if alias is not None else True,
        )


def _awaiting(uri: str, registration: Registration, alias: str) -> None:
    """Say on a version that passed the gate that it waits for the live comparison."""
    from mlnb.models.registry import Registry

    reason = (
        f"challenger registered (gated offline) and awaiting online confirmation: a service "
        f"shadowing or canarying {alias} gives the checks the labels to decide"
    )
    Registry(uri).tag_version(
        registration.name,
        registration.version,
        {tags.ONLINE_DECISION: tags.OnlineDecision.WAITING, tags.ONLINE_REASON: reason},
    )


def _status(outcome: ModelDecision) -> RetrainStatus:
    """How a retrain ended, from what the gate made of its version."""
    if outcome == ModelDecision.PROMOTED:
        return RetrainStatus.PROMOTED
    if outcome == ModelDecision.PASSED:
        return RetrainStatus.PASSED
    return RetrainStatus.REJECTED


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
