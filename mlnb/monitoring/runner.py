"""Continuous training: checks on a schedule, and a retrain when one of them says so.

One *check* (an MLflow run ``check`` in the monitor's experiment):

1. reads the window of recent predictions from the prediction log;
2. runs the drift notebook with papermill, nested under the check run, on the
   champion's training data (found through the version's lineage tag
   ``mlnb.training_data``) against the window's inputs, and reads the
   decision the notebook logged (``mlnb.drift.status``, ``mlnb.drift.reason``
   and its metrics), copying the figures onto the check run;
3. computes the live metric on the predictions that got labels;
4. asks whether the champion is older than ``retrain.every``;
5. when a trigger that is on fires, retrains: the pipeline the spec names,
   with the window's labeled rows, through registration, gate and promotion.

The drift notebook's contract lives in :mod:`mlnb.drift`; the retrain (its
lock, cooldown and pipeline) in :mod:`mlnb.retrain`.

Design decisions:

- **A check never dies of an error.** Whatever goes wrong ends as a failed
  check run with the reason, and a scheduled monitor goes on checking.
- **Stopping never leaves a model half-registered.** The loop only checks a
  flag between checks; a second signal aborts the stages of a running
  retrain, and registration and gating hold signals until they are done
  (:func:`mlnb.pipeline.signals_deferred`).
- **Warm kernels.** The monitor keeps a kernel pool whose fork server has
  imported what the drift notebook imports (alibi-detect takes seconds), and
  starts the next check's kernel as soon as one check ends.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlnb import tags
from mlnb.engine.kernels import KernelPool
from mlnb.errors import ExitCode, MlnbError, StageError
from mlnb.monitoring.drift import (
    DriftResult,
    preload_modules,
    reference_columns,
    run_drift,
)
from mlnb.monitoring.retrain import RetrainResult, pipeline_spec, retrain
from mlnb.predictions import window as live
from mlnb.specs.monitor import Monitor, format_duration
from mlnb.store import state_dir
from mlnb.store import tracking_uri as default_tracking_uri

if TYPE_CHECKING:
    import pandas as pd

    from mlnb.tracking import Tracker


#: check folders kept on disk (the window's inputs, the executed notebook, labeled rows);
#: the executed notebook and every figure stay in MLflow
KEEP_CHECKS = 50


@dataclass(frozen=True)
class Trigger:
    """A reason to retrain: its kind (drift, performance, schedule) and the evidence."""

    kind: str
    evidence: str


@dataclass
class CheckResult:
    """One check: what it saw, what fired, what the retrain did."""

    monitor: str
    run_id: str = ""
    url: str = ""
    champion: str | None = None
    rows: int = 0
    drift: DriftResult | None = None
    performance: live.LiveMetric | None = None
    triggers: list[Trigger] = field(default_factory=list)
    retrain: RetrainResult | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> ExitCode:
        """What ``mlnb monitor --once`` exits with after this check."""
        if self.error is not None:
            return ExitCode.FAILED
        if self.retrain is None:
            return ExitCode.OK
        return {
            "promoted": ExitCode.PROMOTED,
            "rejected": ExitCode.REJECTED,
            "skipped": ExitCode.SKIPPED,
        }.get(self.retrain.status, ExitCode.FAILED)

    @property
    def decision(self) -> str:
        """The outcome in a few words, as tagged on the check run."""
        if self.error is not None:
            return f"failed: {self.error}"
        if self.champion is None:
            return "nothing to watch: the model has no champion yet"
        if self.retrain is None:
            return "no trigger"
        kinds = ", ".join(t.kind for t in self.triggers)
        if self.retrain.status == "promoted":
            return f"retrained ({kinds}): v{self.retrain.version} promoted"
        if self.retrain.status == "rejected":
            return f"retrained ({kinds}): v{self.retrain.version} not promoted"
        return f"{kinds} fired; retrain {self.retrain.status}: {self.retrain.reason}"


class MonitorRunner:
    """Runs the checks of one monitor spec against one MLflow store.

    Args:
        monitor: the validated spec.
        tracking_uri: an MLflow store other than the project's default.
        say: receives one line per thing worth telling a person.
    """

    def __init__(
        self,
        monitor: Monitor,
        tracking_uri: str | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.monitor = monitor
        self.uri = tracking_uri or default_tracking_uri(monitor.root)
        self.say = say or (lambda line: None)
        self.state = state_dir(monitor.root) / "monitor"
        self.pool: KernelPool | None = None
        if monitor.drift_notebook is not None:
            preload = preload_modules(monitor.drift_notebook, self.uri)
            self.pool = KernelPool(
                env={"MLFLOW_TRACKING_URI": self.uri}, cwd=monitor.root, preload=preload
            )
            self.pool.prestart(monitor.drift_kernel)

    def close(self) -> None:
        """Stop the kernels this runner started."""
        if self.pool is not None:
            self.pool.close()

    # -- the loop ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Check on the schedule until ``stop`` is set."""
        schedule = self.monitor.spec.schedule
        due = time.time() if schedule.every is not None else self._next_cron(time.time())
        while not stop.is_set():
            if time.time() < due:
                self.say(f"next check at {_clock(due)}")
                if stop.wait(max(0.0, due - time.time())):
                    break
            started = time.time()
            self.check()
            if schedule.every is not None:
                due = started + schedule.every
            else:
                due = self._next_cron(time.time())

    def _next_cron(self, after: float) -> float:
        from croniter import croniter

        cron = self.monitor.spec.schedule.cron
        assert cron is not None
        start = datetime.fromtimestamp(after, UTC)
        return float(croniter(cron, start).get_next(float))

    # -- one check ---------------------------------------------------------------

    def check(self, warm_next: bool = True) -> CheckResult:
        """Run one check (and the retrain it calls for).

        Whatever goes wrong ends as a failed check (``error``), never an
        exception, so a monitor keeps checking; only an interrupt passes.

        Args:
            warm_next: start the next check's kernel once this one is done.
        """
        started = time.perf_counter()
        monitor = self.monitor
        result = CheckResult(monitor.name)
        from mlnb import tracking
        from mlnb.models import registry

        try:
            tracker = tracking.Tracker(monitor.root, self.uri)
            experiment = tracker.experiment_id(monitor.name)
            reg = registry.Registry(self.uri)
            result.champion = reg.alias(monitor.spec.model, monitor.spec.alias)
        except Exception as exc:  # MlnbError, or the store failing in MLflow's own way
            result.error = _describe(exc)
            self.say(f"check failed: {result.error}")
            return result
        result.run_id = tracker.start_run(
            experiment,
            "check",
            {
                tags.KIND: tags.Kind.CHECK,
                tags.MONITOR: monitor.name,
                tags.MODEL: monitor.spec.model,
                tags.MODEL_VERSION: result.champion or "",
            },
        )
        result.url = tracker.run_url(experiment, result.run_id)
        status = "FINISHED"
        try:
            self._check(tracker, experiment, reg, result)
        except MlnbError as exc:
            result.error = str(exc)
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
            with contextlib.suppress(MlnbError):
                tracker.log(
                    result.run_id,
                    tags={tags.CHECK_DECISION: result.decision[:5000]},
                    metrics={"check_seconds": result.seconds},
                )
                tracker.finish(result.run_id, status)
            prune_checks(self.state / monitor.name, KEEP_CHECKS)
            self.say(_summary(result))
            if self.pool is not None and warm_next and status != "KILLED":
                self.pool.prestart(monitor.drift_kernel)  # the next check's kernel
        return result

    def _check(self, tracker: Tracker, experiment: str, reg: Any, result: CheckResult) -> None:
        monitor, spec = self.monitor, self.monitor.spec
        window = live.load_window(monitor.log_dir, spec.window.last, spec.window.since)
        result.rows = len(window)
        metrics: dict[str, float] = {"window_rows": len(window)}
        if result.champion is None:
            tracker.log(result.run_id, metrics=metrics)
            return
        version = reg.version(spec.model, result.champion)
        features = self._features(version, window)

        if monitor.drift_notebook is not None:
            assert self.pool is not None
            drift = run_drift(
                monitor,
                self.pool,
                tracker,
                experiment=experiment,
                parent_run=result.run_id,
                run_tags={tags.MONITOR: monitor.name},
                champion=result.champion,
                reference=self._reference(version),
                window=window,
                features=features,
                target=self._target(),
                folder=self.state / monitor.name / result.run_id,
            )
            result.drift = drift
            metrics.update({f"drift.{k}": v for k, v in drift.metrics.items()})
            tracker.log(
                result.run_id,
                tags={tags.DRIFT_STATUS: drift.status, tags.DRIFT_REASON: drift.reason[:5000]},
            )
            if drift.status == "failed":
                raise StageError("drift", drift.reason)
            if drift.status == "drift" and "drift" in monitor.triggers:
                result.triggers.append(Trigger("drift", drift.reason))

        if spec.performance is not None:
            perf = live.live_metric(window, spec.performance.metric, spec.performance.min_labels)
            result.performance = perf
            metrics["labels"] = perf.labels
            if perf.value is not None:
                metrics[f"live.{perf.metric}"] = perf.value
                bar = spec.performance.threshold
                worse = perf.value < bar if monitor.greater_is_better else perf.value > bar
                if worse and "performance" in monitor.triggers:
                    side = "below" if monitor.greater_is_better else "above"
                    result.triggers.append(
                        Trigger(
                            "performance",
                            f"performance: {perf.metric} {perf.value:.4f} is {side} the "
                            f"threshold {bar:g} on {perf.labels} labeled predictions",
                        )
                    )

        if "schedule" in monitor.triggers and spec.retrain.every is not None:
            age = time.time() - version.creation_timestamp / 1000
            metrics["champion_age_days"] = age / 86400
            if age >= spec.retrain.every:
                result.triggers.append(
                    Trigger(
                        "schedule",
                        f"schedule: champion v{result.champion} is {format_duration(age)} old "
                        f"(retrain every {format_duration(spec.retrain.every)})",
                    )
                )

        found_tags = {}
        if result.triggers:
            found_tags[tags.CHECK_TRIGGERS] = ",".join(t.kind for t in result.triggers)
            found_tags[tags.CHECK_EVIDENCE] = "; ".join(t.evidence for t in result.triggers)[:5000]
        tracker.log(result.run_id, metrics=metrics, tags=found_tags)
        if result.triggers:
            outcome = retrain(
                monitor,
                self.uri,
                self.state,
                check_run=result.run_id,
                trigger=result.triggers[0].kind,
                evidence="; ".join(t.evidence for t in result.triggers),
                window=window,
                features=features,
                target=self._target(),
                say=self.say,
            )
            result.retrain = outcome
            tracker.log(
                result.run_id,
                tags={
                    tags.RETRAIN: outcome.status,
                    tags.RETRAIN_REASON: outcome.reason[:5000],
                    tags.RETRAIN_RUN: outcome.run_id or "",
                    tags.RETRAIN_VERSION: outcome.version or "",
                    tags.RETRAIN_PIPELINE: outcome.pipeline,
                },
            )
            if outcome.status == "failed":
                result.error = f"retrain failed: {outcome.reason}"

    def _features(self, version: Any, window: pd.DataFrame) -> list[str]:
        """The model's input columns: the training data's, or else the window's."""
        reference = self._reference(version)
        target = self._target()
        if reference is not None and reference.is_file():
            try:
                columns = reference_columns(reference)
            except Exception:
                columns = []
            if columns:
                return [c for c in columns if c != target]
        return live.input_columns(window)

    def _target(self) -> str:
        model = self.monitor.pipeline_spec.model
        assert model is not None  # the spec check makes sure
        return model.target

    def _reference(self, version: Any) -> Path | None:
        from mlnb import tags

        value = version.tags.get(tags.TRAINING_DATA)
        return Path(value) if value else None

    def pipeline_spec(self) -> tuple[Path, str]:
        """The spec a retrain runs: the live deployment's, else the working copy's; and which."""
        return pipeline_spec(self.monitor)


def prune_checks(folder: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest check folders under ``folder``; the removed ones.

    A monitor checking every few minutes would otherwise fill the disk with
    copies of its window.
    """
    if not folder.is_dir():
        return []
    checks = sorted(
        (p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
    )
    removed = checks[keep:]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _describe(error: Exception) -> str:
    """An error for a person: mlnb's own messages as they are, others with their type."""
    return str(error) if isinstance(error, MlnbError) else f"{type(error).__name__}: {error}"


def _clock(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


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
    lines = [head + (": " + "; ".join(parts) if parts else "")]
    lines.append(f"  → {result.decision} ({result.seconds:.1f} s)")
    if result.retrain is not None and result.retrain.run_id:
        lines.append(f"  retrain run {result.retrain.run_id}: {result.retrain.reason}")
    return "\n".join(lines)


def watch(monitor: Monitor, *, once: bool = False, say: Callable[[str], None]) -> ExitCode:
    """What ``mlnb monitor`` does: check on the schedule until a signal, or check once.

    On the schedule, SIGINT or SIGTERM stops the loop after the current check
    (a second one aborts it with :class:`KeyboardInterrupt`). With ``once``, a
    SIGTERM interrupts like Ctrl-C; a model is never left half-registered
    either way (:func:`mlnb.pipelines.signals.signals_deferred`). The runner's
    kernels are stopped before this returns or raises.

    Returns:
        With ``once``, the check's :attr:`CheckResult.exit_code`; else :data:`ExitCode.OK`.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        say("stopping after the current check (signal again to abort it)")

    def abort(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    runner = MonitorRunner(monitor, say=say)
    try:
        if once:
            signal.signal(signal.SIGTERM, abort)  # like Ctrl-C: registration still completes
            return runner.check(warm_next=False).exit_code
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        what = ", ".join(monitor.spec.triggers)
        say(f"monitoring {monitor.spec.model}@{monitor.spec.alias} ({what}); Ctrl-C stops")
        runner.run(stop)
        return ExitCode.OK
    finally:
        runner.close()
