"""``mlnb status``: for each model, what serves, its figures, the last checks and retrains.

Everything comes from the project's MLflow store (aliases, version tags, the
monitor's check runs) and the prediction log (the version that answered
last); nothing is kept anywhere else.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from mlnb import tags
from mlnb.models import registry
from mlnb.predictions.log import default_log_dir, latest_prediction
from mlnb.store import state_dir, tracking_uri
from mlnb.tracking import Tracker


@dataclass
class CheckLine:
    """One monitor check as status shows it."""

    run_id: str
    time: str
    monitor: str
    version: str
    drift: str
    decision: str
    metrics: dict[str, float] = field(default_factory=dict)
    labels: str = "-"  # plausible, suspicious, untested (LabelStatus), or - when not looked at


@dataclass
class RetrainLine:
    """The last retrain a monitor started."""

    time: str
    status: str
    reason: str
    evidence: str
    run_id: str
    version: str


@dataclass
class OnlineLine:
    """The newest live comparison of challenger and champion (a check's ``online_*`` figures)."""

    time: str
    mode: str  # shadow or canary
    metric: str
    champion: str
    challenger: str
    decision: str  # OnlineDecision
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)

    def figure(self, name: str) -> float | None:
        """One of the check's ``online_*`` metrics (``champion_accuracy``, ``ci_low``, ...)."""
        return self.metrics.get(f"online_{name}")


@dataclass
class ModelStatus:
    """One registered model."""

    name: str
    champion: str | None
    challenger: str | None
    champion_metric: str | None = None
    champion_score: float | None = None
    champion_trigger: str | None = None
    champion_reason: str | None = None
    challenger_decision: str | None = None  # what the gate made of it (ModelDecision)
    challenger_reason: str | None = None
    challenger_online: str | None = None  # what the live comparison made of it (OnlineDecision)
    challenger_online_reason: str | None = None
    served_version: str | None = None
    served_at: str | None = None
    checks: list[CheckLine] = field(default_factory=list)
    retrain: RetrainLine | None = None
    online: OnlineLine | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def gather(root: Path, models: list[str], checks: int = 3) -> list[ModelStatus]:
    """The status of ``models`` (every registered model when empty) on the project's store.

    Raises:
        RegistryError: a model named is not registered.
        TrackingError: the store cannot be opened.
    """
    uri = tracking_uri(root)
    tracker = Tracker(root, uri)
    reg = registry.Registry(uri, state_dir(root))
    client = tracker.client
    if models:
        for name in models:
            reg.require(name)
    else:
        models = sorted(m.name for m in client.search_registered_models(max_results=1000))
    experiments = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    served = latest_prediction(default_log_dir(root))
    found = []
    for name in models:
        status = _champion(reg, name)
        if served is not None:
            status.served_version, status.served_at = served
        if experiments:
            status.checks = _checks(client, experiments, name, checks)
            status.retrain = _retrain(client, experiments, name)
            status.online = _online(client, experiments, name)
        found.append(status)
    return found


def _champion(reg: registry.Registry, name: str) -> ModelStatus:
    """A model's aliases, and the figures and trigger its champion was promoted with."""
    status = ModelStatus(
        name, reg.alias(name, registry.CHAMPION), reg.alias(name, registry.CHALLENGER)
    )
    if status.challenger is not None and status.challenger != status.champion:
        challenger_tags = reg.version(name, status.challenger).tags
        status.challenger_decision = challenger_tags.get(tags.GATE_DECISION)
        status.challenger_reason = challenger_tags.get(tags.GATE_REASON)
        status.challenger_online = challenger_tags.get(tags.ONLINE_DECISION)
        status.challenger_online_reason = challenger_tags.get(tags.ONLINE_REASON)
    if status.champion is None:
        return status
    found_tags = reg.version(name, status.champion).tags
    config = json.loads(found_tags.get(tags.GATE_CONFIG) or "{}")
    status.champion_metric = config.get("metric")
    score = found_tags.get(tags.GATE_SCORE)
    status.champion_score = float(score) if score else None
    status.champion_trigger = found_tags.get(tags.TRIGGER)
    status.champion_reason = found_tags.get(tags.TRIGGER_REASON) or None
    return status


def _search(client: Any, experiments: list[str], where: str, count: int) -> list[Any]:
    try:
        return list(
            client.search_runs(
                experiments, filter_string=where, max_results=count, order_by=["start_time DESC"]
            )
        )
    except MlflowException:
        return []


def _when(run: Any) -> str:
    ms = run.info.start_time or 0
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _of_model(name: str) -> str:
    """The search filter of a model's check runs."""
    return f"tags.`{tags.KIND}` = '{tags.Kind.CHECK}' and tags.`{tags.MODEL}` = '{name}'"


def _checks(client: Any, experiments: list[str], name: str, count: int) -> list[CheckLine]:
    where = _of_model(name)
    lines = []
    for run in _search(client, experiments, where, count):
        found_tags = run.data.tags
        keep = ("labels", "window_rows", "drift.features_drifted", "drift.p_value_min")
        kept = ("live.", "labels.")
        lines.append(
            CheckLine(
                run.info.run_id,
                _when(run),
                found_tags.get(tags.MONITOR, ""),
                found_tags.get(tags.MODEL_VERSION, ""),
                found_tags.get(tags.DRIFT_STATUS, "-"),
                found_tags.get(tags.CHECK_DECISION, run.info.status.lower()),
                {k: v for k, v in run.data.metrics.items() if k in keep or k.startswith(kept)},
                found_tags.get(tags.CHECK_LABELS, "-"),
            )
        )
    return lines


def _retrain(client: Any, experiments: list[str], name: str) -> RetrainLine | None:
    where = f"{_of_model(name)} and tags.`{tags.RETRAIN}` LIKE '%'"
    runs = _search(client, experiments, where, 1)
    if not runs:
        return None
    found_tags = runs[0].data.tags
    return RetrainLine(
        _when(runs[0]),
        found_tags.get(tags.RETRAIN, ""),
        found_tags.get(tags.RETRAIN_REASON, ""),
        found_tags.get(tags.CHECK_EVIDENCE, ""),
        found_tags.get(tags.RETRAIN_RUN, ""),
        found_tags.get(tags.RETRAIN_VERSION, ""),
    )


def _online(client: Any, experiments: list[str], name: str) -> OnlineLine | None:
    """The newest check that compared a challenger with the champion on live labels."""
    where = f"{_of_model(name)} and tags.`{tags.ONLINE_MODE}` LIKE '%'"
    runs = _search(client, experiments, where, 1)
    if not runs:
        return None
    found_tags = runs[0].data.tags
    return OnlineLine(
        _when(runs[0]),
        found_tags.get(tags.ONLINE_MODE, ""),
        found_tags.get(tags.ONLINE_METRIC, ""),
        found_tags.get(tags.ONLINE_CHAMPION, ""),
        found_tags.get(tags.ONLINE_CHALLENGER, ""),
        found_tags.get(tags.ONLINE_DECISION, ""),
        found_tags.get(tags.ONLINE_REASON, ""),
        {k: v for k, v in runs[0].data.metrics.items() if k.startswith("online_")},
    )
