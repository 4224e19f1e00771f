"""One monitor check: what it sees, what fires, and the retrain it calls for.

A check is an MLflow run ``check`` in the monitor's experiment, made of named
steps (:class:`Check`), each writing what it saw onto the check result:

1. :meth:`Check.window`: the window of recent predictions from the prediction log
   (a log folder that does not exist ends the check there, naming the folder);
2. :meth:`Check.drift`: the drift notebook run with papermill, nested under the
   check run, on the champion's training data (found through the version's
   lineage tag ``mlnb.training_data``) against the window's inputs; its
   decision (``mlnb.drift.status``, ``mlnb.drift.reason``) and figures are
   copied onto the check run;
3. :meth:`Check.performance`: the live metric on the predictions that got labels;
4. :meth:`Check.labels`: whether those labels are plausible on their face
   (:mod:`mlnb.monitoring.labels`);
5. :meth:`Check.schedule`: whether the champion is older than ``retrain.every``;
6. :meth:`Check.log_triggers`: what fired, with its evidence, on the check run;
7. :meth:`Check.online`: when a service shadows or canaries the challenger,
   the live comparison of challenger and champion on the window's labels
   (:mod:`mlnb.monitoring.online`), logged on the check run; with
   ``promotion: {online: ...}`` it promotes the challenger, or removes its
   alias, on that evidence;
8. :meth:`Check.retrain`: when a trigger that is on fires and the labels are
   not suspicious (and no promotion on live evidence just moved the
   champion), the pipeline the spec names, with the window's labeled
   rows, through registration, gate and promotion (or, with ``promotion:
   manual`` or ``online``, a decision a person or the live labels act on).

The drift notebook's contract lives in :mod:`mlnb.monitoring.drift`; the
retrain (its lock, cooldown and pipeline) in :mod:`mlnb.monitoring.retrain`;
the loop that runs checks on a schedule in :mod:`mlnb.monitoring.runner`.

Design decisions:

- **A check never dies of an error.** :func:`run_check` turns whatever goes
  wrong, from opening the store and starting the check run to the retrain,
  into a failed check with the reason (:attr:`CheckResult.error`); only an
  interrupt passes, and it ends the check run ``KILLED``.
- **A step returns what it fires.** Each of drift, performance and
  schedule returns its :class:`Trigger` or ``None``; what a trigger the spec
  does not turn on sees is still logged, and never retrains.
- **Suspicious labels hold the retrain.** Labels are training data: when
  they are implausible on their face, the triggers are still logged but no
  retrain starts, whatever fired; a person looks at the feed.
- **What the steps find is logged in batches.** Their figures and tags
  gather on the check (:attr:`Check.metrics`, :attr:`Check.run_tags`) and go
  to the check run in one call before the online step and a retrain (which
  may take minutes), and in one more as the check ends, whether it failed or
  not (:meth:`Check.finish`): a store call costs milliseconds each.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlnb import tags
from mlnb.engine.kernels import KernelPool
from mlnb.errors import ExitCode, MlnbError, StageError
from mlnb.monitoring.drift import DriftResult, DriftStatus, reference_columns, run_drift
from mlnb.monitoring.labels import LabelCheck, Labeled, LabelStatus, check_labels
from mlnb.monitoring.online import OnlineResult, act, compare, decide, the_alias
from mlnb.monitoring.retrain import RetrainResult, RetrainStatus, retrain
from mlnb.pipelines.owner import Owner, end_orphans
from mlnb.predictions.online import champion_answers
from mlnb.predictions.window import LiveMetric, WindowReader, input_columns, live_metric
from mlnb.specs.monitor import Monitor, format_duration
from mlnb.store import state_dir
from mlnb.tags import OnlineDecision

if TYPE_CHECKING:
    import pandas as pd

    from mlnb.models.registry import Registry
    from mlnb.tracking import Tracker


class TriggerKind(StrEnum):
    """What can make a monitor retrain: the names its spec's ``triggers:`` lists."""

    DRIFT = "drift"
    PERFORMANCE = "performance"
    SCHEDULE = "schedule"


@dataclass(frozen=True)
class Trigger:
    """A reason to retrain: what fired, and the evidence in one sentence."""

    kind: TriggerKind
    evidence: str


#: what ``mlnb monitor --once`` exits with after a retrain (a failed one fails the check)
_RETRAIN_EXIT = {
    RetrainStatus.PROMOTED: ExitCode.PROMOTED,
    RetrainStatus.REJECTED: ExitCode.REJECTED,
    RetrainStatus.PASSED: ExitCode.REJECTED,  # the champion stays until a person moves it
    RetrainStatus.AWAITING: ExitCode.REJECTED,  # the champion stays until live labels move it
    RetrainStatus.SKIPPED: ExitCode.SKIPPED,
}
#: how many labels the label tests need without a performance section
_MIN_LABELS = 50


@dataclass
class CheckResult:
    """One check: what it saw, what fired, what the retrain did."""

    monitor: str
    run_id: str = ""
    url: str = ""
    champion: str | None = None
    rows: int = 0
    drift: DriftResult | None = None
    performance: LiveMetric | None = None
    labels: LabelCheck | None = None
    triggers: list[Trigger] = field(default_factory=list)
    retrain: RetrainResult | None = None
    online: OnlineResult | None = None
    error: str | None = None
    seconds: float = 0.0
    no_log: Path | None = None  # the prediction-log folder, when it does not exist

    @property
    def suspicious(self) -> bool:
        """Whether the window's labels are suspicious (and so no retrain starts)."""
        return self.labels is not None and self.labels.status == LabelStatus.SUSPICIOUS

    @property
    def exit_code(self) -> ExitCode:
        """What ``mlnb monitor --once`` exits with after this check."""
        if self.error is not None:
            return ExitCode.FAILED
        if self.promoted_online:
            return ExitCode.PROMOTED
        if self.suspicious and self.triggers:
            return ExitCode.SKIPPED
        if self.retrain is None:
            return ExitCode.OK
        return _RETRAIN_EXIT.get(self.retrain.status, ExitCode.FAILED)

    @property
    def promoted_online(self) -> bool:
        """Whether the live comparison made the challenger champion."""
        return self.online is not None and self.online.decision == OnlineDecision.PROMOTED

    @property
    def decision(self) -> str:
        """The outcome in a few words, as tagged on the check run."""
        decided = self._decision()
        if self.online is None or self.error is not None:
            return decided
        if self.promoted_online and self.triggers and self.retrain is None:
            decided = f"{', '.join(t.kind for t in self.triggers)} fired; no retrain"
        elif self.promoted_online and self.retrain is None:
            return f"online: {self.online.reason}"
        return f"{decided}; online: {self.online.reason}"

    def _decision(self) -> str:
        if self.error is not None:
            return f"failed: {self.error}"
        if self.champion is None:
            return "nothing to watch: the model has no champion yet"
        if self.no_log is not None:
            return (
                f"no prediction log: the folder {self.no_log} does not exist (nothing served "
                "yet, or the service logs elsewhere: set log_dir in the monitor spec)"
            )
        kinds = ", ".join(t.kind for t in self.triggers)
        if self.suspicious and self.labels is not None:
            held = f"; {kinds} fired, no retrain" if kinds else ""
            return f"suspicious labels{held}: {self.labels.reason}"
        if self.retrain is None:
            return "no trigger"
        version = f"v{self.retrain.version}"
        if self.retrain.status == RetrainStatus.PROMOTED:
            return f"retrained ({kinds}): {version} promoted"
        if self.retrain.status == RetrainStatus.REJECTED:
            return f"retrained ({kinds}): {version} not promoted"
        if self.retrain.status == RetrainStatus.PASSED:
            return f"retrained ({kinds}): {version} passed the gate; promotion is manual"
        if self.retrain.status == RetrainStatus.AWAITING:
            return (
                f"retrained ({kinds}): {version} challenger registered (gated offline) and "
                "awaiting online confirmation"
            )
        return f"{kinds} fired; retrain {self.retrain.status}: {self.retrain.reason}"


def run_check(
    monitor: Monitor,
    *,
    uri: str,
    state: Path,
    pool: KernelPool | None,
    say: Callable[[str], None],
    reader: WindowReader | None = None,
) -> CheckResult:
    """Run one check (and the retrain it calls for); tell ``say`` how it went.

    Whatever goes wrong ends as a failed check (``error``), never an
    exception, so a monitor keeps checking; only an interrupt passes.

    Args:
        monitor: the validated spec.
        uri: the MLflow store.
        state: the monitor state folder (``.mlnb/monitor``).
        pool: the kernels of the drift notebook (``None`` without drift checks).
        say: receives a line per thing worth telling a person.
        reader: the monitor's prediction log as read at earlier checks (a
            fresh reader reads it from scratch).
    """
    started = time.perf_counter()
    result = CheckResult(monitor.name)
    reader = reader if reader is not None else WindowReader(monitor.log_dir)
    try:
        check = Check.start(monitor, uri, state, pool, say, reader, result)
    except Exception as exc:  # MlnbError, or the store failing in MLflow's own way
        result.error = _describe(exc)
        result.seconds = time.perf_counter() - started
        say(f"check failed: {result.error}")
        return result
    status: tags.EndState = "FINISHED"
    try:
        check.run()
    except Exception as exc:  # a broken log file, a store hiccup: report, keep going
        result.error = _describe(exc)
    except KeyboardInterrupt:
        result.error = "interrupted"
        status = "KILLED"
        raise
    finally:
        if result.error is not None and status == "FINISHED":
            status = "FAILED"
        result.seconds = time.perf_counter() - started
        check.finish(status)
        say(_summary(result))
    return result


@dataclass
class Check:
    """A check under way: its store, its run, and the figures its steps gather.

    Attributes:
        monitor: the validated spec.
        uri: the MLflow store.
        state: the monitor state folder (``.mlnb/monitor``).
        pool: the kernels of the drift notebook.
        say: receives a line per thing worth telling a person.
        reader: the prediction log, as read at earlier checks.
        tracker: the store's runs.
        experiment: the monitor's experiment.
        registry: the store's models.
        result: what the steps saw, fired and did, filled in as they go.
        metrics: the figures the steps found, not logged yet.
        run_tags: the tags the steps found, not logged yet.
    """

    monitor: Monitor
    uri: str
    state: Path
    pool: KernelPool | None
    say: Callable[[str], None]
    reader: WindowReader
    tracker: Tracker
    experiment: str
    registry: Registry
    result: CheckResult
    metrics: dict[str, float] = field(default_factory=dict)
    run_tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        monitor: Monitor,
        uri: str,
        state: Path,
        pool: KernelPool | None,
        say: Callable[[str], None],
        reader: WindowReader,
        result: CheckResult,
    ) -> Check:
        """Open the store, find the champion and start the check run.

        Raises:
            TrackingError: the store cannot be opened, or refuses the run.
            MlflowException: the store failed in a way MLflow does not name.
        """
        from mlnb import tracking
        from mlnb.models import registry

        tracker = tracking.Tracker(monitor.root, uri)
        experiment = tracker.experiment_id(monitor.name)
        models = registry.Registry(uri, state_dir(monitor.root))
        result.champion = models.alias(monitor.spec.model, monitor.spec.alias)
        end_orphans(tracker, experiment, tags.Kind.CHECK)  # checks of a monitor that died
        result.run_id = tracker.start_run(
            experiment,
            "check",
            {
                tags.KIND: tags.Kind.CHECK,
                tags.MONITOR: monitor.name,
                tags.MODEL: monitor.spec.model,
                tags.MODEL_VERSION: result.champion or "",
                **Owner.this_process().tags(),
            },
        )
        result.url = tracker.run_url(experiment, result.run_id)
        return cls(monitor, uri, state, pool, say, reader, tracker, experiment, models, result)

    def run(self) -> None:
        """The steps, in order: what is seen decides what fires, and what fires retrains."""
        window = self.window()
        champion = self.result.champion
        if champion is None or self.result.no_log is not None:
            return  # what the window saw is logged as the check finishes
        version = self.registry.version(self.monitor.spec.model, champion)
        target = model_target(self.monitor)
        features = model_features(training_data(version, self.registry), window, target)
        fired = [
            self.drift(window, version, features, target),
            self.performance(window),
            self.schedule(version),
        ]
        self.labels(window, version, target)
        self.result.triggers = [trigger for trigger in fired if trigger is not None]
        self.log_triggers()
        self.online(window, champion)
        if self.result.promoted_online:  # the triggers were the old champion's
            return
        if self.result.triggers and not self.result.suspicious:
            self.retrain(window, features, target, training_data(version, self.registry))

    def finish(self, status: tags.EndState) -> None:
        """End the check run with what is not logged yet, its decision and duration.

        A store failing now is let be.
        """
        self.run_tags[tags.CHECK_DECISION] = self.result.decision[: tags.VALUE_LIMIT]
        self.metrics["check_seconds"] = self.result.seconds
        with contextlib.suppress(MlnbError):
            self.flush()
            self.tracker.finish(self.result.run_id, status)

    def flush(self) -> None:
        """Log the figures and tags the steps found so far on the check run, in one batch."""
        self.tracker.log(self.result.run_id, metrics=self.metrics, tags=self.run_tags)
        self.metrics, self.run_tags = {}, {}

    def window(self) -> pd.DataFrame:
        """The recent predictions the spec's ``window:`` names."""
        spec = self.monitor.spec.window
        if not self.monitor.log_dir.is_dir():
            self.result.no_log = self.monitor.log_dir
        window = self.reader.read(spec.last, spec.since)
        self.result.rows = len(window)
        self.metrics["window_rows"] = len(window)
        return window

    def drift(
        self, window: pd.DataFrame, version: Any, features: list[str], target: str
    ) -> Trigger | None:
        """The drift notebook's decision on the window against the champion's training data.

        Raises:
            StageError: the notebook failed, or logged no decision.
        """
        monitor, result = self.monitor, self.result
        if monitor.drift_notebook is None:
            return None
        assert self.pool is not None and result.champion is not None  # the runner made both
        drift = run_drift(
            monitor,
            self.pool,
            self.tracker,
            experiment=self.experiment,
            parent_run=result.run_id,
            run_tags={tags.MONITOR: monitor.name},
            champion=result.champion,
            reference=training_data(version, self.registry),
            window=window,
            features=features,
            target=target,
            folder=self.state / monitor.name / result.run_id,
            references=self.state / monitor.name,
        )
        result.drift = drift
        self.metrics.update({f"drift.{k}": v for k, v in drift.metrics.items()})
        self.run_tags[tags.DRIFT_STATUS] = drift.status
        self.run_tags[tags.DRIFT_REASON] = drift.reason[: tags.VALUE_LIMIT]
        if drift.status == DriftStatus.FAILED:
            raise StageError("drift", drift.reason)
        if drift.status == DriftStatus.DRIFT and TriggerKind.DRIFT in monitor.triggers:
            return Trigger(TriggerKind.DRIFT, drift.reason)
        return None

    def performance(self, window: pd.DataFrame) -> Trigger | None:
        """The live metric on the window's labeled predictions, against its threshold.

        A canary's answers are the challenger's, not the champion's: they are
        left out (the online comparison scores them).
        """
        monitor, spec = self.monitor, self.monitor.spec.performance
        if spec is None:
            return None
        perf = live_metric(champion_answers(window), spec.metric, spec.min_labels)
        self.result.performance = perf
        self.metrics["labels"] = perf.labels
        if perf.value is None:
            return None
        self.metrics[f"live.{perf.metric}"] = perf.value
        bar = spec.threshold
        worse = perf.value < bar if monitor.greater_is_better else perf.value > bar
        if not worse or TriggerKind.PERFORMANCE not in monitor.triggers:
            return None
        side = "below" if monitor.greater_is_better else "above"
        return Trigger(
            TriggerKind.PERFORMANCE,
            f"performance: {perf.metric} {perf.value:.4f} is {side} the "
            f"threshold {bar:g} on {perf.labels} labeled predictions",
        )

    def labels(self, window: pd.DataFrame, version: Any, target: str) -> None:
        """Whether the window's labels are plausible on their face; on the check run."""
        monitor = self.monitor
        spec = monitor.spec.performance
        model = monitor.pipeline_spec.model
        assert model is not None  # the spec check makes sure
        labels = window["label"].dropna() if "label" in window else window.iloc[:0, 0]
        labeled = Labeled(
            labels,
            self.result.performance,
            monitor.greater_is_better,
            model.type,
            training_data(version, self.registry),
            target,
        )
        found = check_labels(labeled, monitor.spec.labels, spec.min_labels if spec else _MIN_LABELS)
        self.result.labels = found
        self.metrics.update(found.metrics)
        self.run_tags[tags.CHECK_LABELS] = found.status
        self.run_tags[tags.CHECK_LABELS_REASON] = found.reason[: tags.VALUE_LIMIT]

    def schedule(self, version: Any) -> Trigger | None:
        """The champion's age, against ``retrain.every``, when the schedule trigger is on."""
        every = self.monitor.spec.retrain.every
        if TriggerKind.SCHEDULE not in self.monitor.triggers or every is None:
            return None
        age = time.time() - version.creation_timestamp / 1000
        self.metrics["champion_age_days"] = age / 86400
        if age < every:
            return None
        return Trigger(
            TriggerKind.SCHEDULE,
            f"schedule: champion v{self.result.champion} is {format_duration(age)} old "
            f"(retrain every {format_duration(every)})",
        )

    def log_triggers(self) -> None:
        """What the steps found, and what fired with its evidence, on the check run (before
        a retrain that may take minutes)."""
        triggers = self.result.triggers
        if triggers:
            self.run_tags[tags.CHECK_TRIGGERS] = ",".join(t.kind for t in triggers)
            self.run_tags[tags.CHECK_EVIDENCE] = _evidence(triggers)[: tags.VALUE_LIMIT]
        self.flush()

    def online(self, window: pd.DataFrame, champion: str) -> None:
        """The live comparison with the challenger, and what it decides, on the check run."""
        monitor, model = self.monitor, self.monitor.spec.model
        alias = the_alias(monitor)
        challenger = self.registry.alias(model, alias)
        if challenger is None:
            return
        comparison = compare(monitor, window, champion, challenger)
        if comparison is None:
            return
        gate = self.registry.version(model, challenger).tags.get(tags.GATE_DECISION)
        found = decide(comparison, monitor.online, gate)
        found = act(found, self.registry, model, alias, self.result.run_id)
        self.result.online = found
        self.tracker.log(self.result.run_id, metrics=found.metrics(), tags=found.tags())
        if found.decision in (OnlineDecision.PROMOTED, OnlineDecision.REMOVED):
            self.say(found.reason)

    def retrain(
        self, window: pd.DataFrame, features: list[str], target: str, reference: Path | None
    ) -> None:
        """Retrain for the triggers that fired; what became of it, on the check run.

        A retrain that fails fails the check.
        """
        result = self.result
        outcome = retrain(
            self.monitor,
            self.uri,
            self.state,
            check_run=result.run_id,
            trigger=result.triggers[0].kind.value,
            evidence=_evidence(result.triggers),
            window=window,
            features=features,
            target=target,
            say=self.say,
            training_data=reference,
        )
        result.retrain = outcome
        self.tracker.log(
            result.run_id,
            tags={
                tags.RETRAIN: outcome.status,
                tags.RETRAIN_REASON: outcome.reason[: tags.VALUE_LIMIT],
                tags.RETRAIN_RUN: outcome.run_id or "",
                tags.RETRAIN_VERSION: outcome.version or "",
                tags.RETRAIN_PIPELINE: outcome.pipeline,
            },
        )
        if outcome.status == RetrainStatus.FAILED:
            result.error = f"retrain failed: {outcome.reason}"


def model_target(monitor: Monitor) -> str:
    """The label column the retraining pipeline's model learns."""
    model = monitor.pipeline_spec.model
    assert model is not None  # the spec check makes sure
    return model.target


def training_data(version: Any, models: Registry) -> Path | None:
    """The champion's training data, from its lineage tag; ``None`` without lineage.

    A version records it as an artifact in the store: it is downloaded once to
    the state folder. A path recorded by an older version is used as it is.

    Raises:
        RegistryError: the artifact cannot be downloaded.
    """
    value = version.tags.get(tags.TRAINING_DATA)
    return models.data(value, version.tags.get(tags.TRAINING_DATA_SHA)) if value else None


def model_features(reference: Path | None, window: pd.DataFrame, target: str) -> list[str]:
    """The model's input columns: the training data's, or else the window's."""
    if reference is not None and reference.is_file():
        try:
            columns = reference_columns(reference)
        except Exception:  # an unreadable table: the window still tells
            columns = []
        if columns:
            return [c for c in columns if c != target]
    return input_columns(window)


def _evidence(triggers: list[Trigger]) -> str:
    """Every fired trigger's evidence, in one sentence."""
    return "; ".join(t.evidence for t in triggers)


def _describe(error: Exception) -> str:
    """An error for a person: mlnb's own messages as they are, others with their type."""
    return str(error) if isinstance(error, MlnbError) else f"{type(error).__name__}: {error}"


def _summary(result: CheckResult) -> str:
    """A check in a line or three."""
    head = f"check {result.run_id[:8]}"
    if result.champion is not None:
        head += f" of {result.monitor} (champion v{result.champion}, {result.rows} rows)"
    parts = []
    if result.drift is not None:
        parts.append(f"drift {result.drift.status}: {result.drift.reason}")
    if result.performance is not None:
        perf = result.performance
        if perf.value is not None:
            parts.append(f"{perf.metric} {perf.value:.4f} on {perf.labels} labels")
        else:
            parts.append(f"{perf.metric}: {perf.reason}")
    if result.labels is not None and result.labels.status == LabelStatus.SUSPICIOUS:
        parts.append("labels suspicious")
    lines = [head + (": " + "; ".join(parts) if parts else "")]
    if result.online is not None:
        lines.append(f"  online: {result.online.comparison.sentence()}")
    lines.append(f"  → {result.decision} ({result.seconds:.1f} s)")
    if result.retrain is not None and result.retrain.run_id:
        lines.append(f"  retrain run {result.retrain.run_id}: {result.retrain.reason}")
    return "\n".join(lines)
