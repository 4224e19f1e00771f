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

Design decisions:

- **One retrain at a time per model, across processes.** A retrain holds an
  exclusive ``flock`` on ``.mlnb/monitor/<model>.lock``; a trigger that finds
  it held is reported as skipped, never queued. The cooldown is kept in
  ``.mlnb/monitor/<model>.json``, written under the same lock before the
  retrain starts, so a crashed retrain still counts.
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
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlnb import live
from mlnb.cache import state_dir
from mlnb.deploy import live_spec
from mlnb.errors import MlnbError, PipelineError, StageError
from mlnb.kernels import KernelPool
from mlnb.monitorspec import Monitor, fill_placeholders
from mlnb.notebook import imported_modules
from mlnb.store import tracking_uri as default_tracking_uri

if TYPE_CHECKING:
    import pandas as pd

    from mlnb.tracking import Tracker

#: ``mlnb monitor --once`` exit codes
EXIT_NOTHING = 0  # no trigger fired
EXIT_FAILED = 1  # the check or the retrain failed
EXIT_REJECTED = 3  # retrained; the gate kept the champion
EXIT_PROMOTED = 4  # retrained; the new version is champion
EXIT_SKIPPED = 5  # a trigger fired but no retrain started (cooldown, one running, no data)

KIND_CHECK = "monitor-check"
KIND_DRIFT = "drift"
TAG_MONITOR = "mlnb.monitor"
TAG_MODEL = "mlnb.model"
TAG_MODEL_VERSION = "mlnb.model.version"
TAG_DECISION = "mlnb.monitor.decision"
TAG_TRIGGERS = "mlnb.monitor.triggers"
TAG_EVIDENCE = "mlnb.monitor.evidence"
TAG_RETRAIN = "mlnb.monitor.retrain"
TAG_RETRAIN_REASON = "mlnb.monitor.retrain_reason"
TAG_RETRAIN_RUN = "mlnb.monitor.retrain_run_id"
TAG_RETRAIN_VERSION = "mlnb.monitor.retrain_version"
TAG_RETRAIN_PIPELINE = "mlnb.monitor.retrain_pipeline"  # the deployed version, or the working copy
TAG_DRIFT_STATUS = "mlnb.drift.status"
TAG_DRIFT_REASON = "mlnb.drift.reason"
#: what fork servers may not preload (matplotlib may: see mlnb._zygote)
_NO_PRELOAD: tuple[str, ...] = ()
#: what a kernel's first MLflow call imports when the store is a database (SQLAlchemy,
#: alembic, MLflow's ORM models): 1.5-2 s of every check, paid once by the fork server
_DB_STORE_MODULES = ("mlflow.store.tracking.sqlalchemy_store",)
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


@dataclass(frozen=True)
class Trigger:
    """A reason to retrain: its kind (drift, performance, schedule) and the evidence."""

    kind: str
    evidence: str


@dataclass
class DriftResult:
    """What the drift notebook decided.

    Attributes:
        status: ``drift``, ``no_drift``, ``untestable`` or ``failed``.
        reason: one sentence (the notebook's, or why it could not run).
        run_id: the notebook's MLflow run.
        metrics: the figures it logged.
    """

    status: str
    reason: str
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RetrainResult:
    """How a retrain ended: ``promoted``, ``rejected``, ``failed`` or ``skipped``."""

    status: str
    reason: str
    run_id: str | None = None
    version: str | None = None
    pipeline: str = ""


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
    def exit_code(self) -> int:
        if self.error is not None:
            return EXIT_FAILED
        if self.retrain is None:
            return EXIT_NOTHING
        return {
            "promoted": EXIT_PROMOTED,
            "rejected": EXIT_REJECTED,
            "skipped": EXIT_SKIPPED,
        }.get(self.retrain.status, EXIT_FAILED)

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
            preload = [
                m
                for m in imported_modules(monitor.drift_notebook)
                if m.split(".")[0] not in _NO_PRELOAD
            ]
            scheme = self.uri.split(":", 1)[0].split("+", 1)[0]
            if scheme in _DB_SCHEMES and any(m.split(".")[0] == "mlflow" for m in preload):
                preload += _DB_STORE_MODULES
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
        from mlnb import registry, tracking

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
                tracking.TAG_KIND: KIND_CHECK,
                TAG_MONITOR: monitor.name,
                TAG_MODEL: monitor.spec.model,
                TAG_MODEL_VERSION: result.champion or "",
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
                    tags={TAG_DECISION: result.decision[:5000]},
                    metrics={"check_seconds": result.seconds},
                )
                tracker.finish(result.run_id, status)
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
            drift = self._drift(tracker, experiment, result.run_id, version, window, features)
            result.drift = drift
            metrics.update({f"drift.{k}": v for k, v in drift.metrics.items()})
            tracker.log(
                result.run_id,
                tags={TAG_DRIFT_STATUS: drift.status, TAG_DRIFT_REASON: drift.reason[:5000]},
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
                        f"schedule: champion v{result.champion} is {_span(age)} old "
                        f"(retrain every {_span(spec.retrain.every)})",
                    )
                )

        tags = {}
        if result.triggers:
            tags[TAG_TRIGGERS] = ",".join(t.kind for t in result.triggers)
            tags[TAG_EVIDENCE] = "; ".join(t.evidence for t in result.triggers)[:5000]
        tracker.log(result.run_id, metrics=metrics, tags=tags)
        if result.triggers:
            result.retrain = self._retrain(result, window, features)
            retrain = result.retrain
            tracker.log(
                result.run_id,
                tags={
                    TAG_RETRAIN: retrain.status,
                    TAG_RETRAIN_REASON: retrain.reason[:5000],
                    TAG_RETRAIN_RUN: retrain.run_id or "",
                    TAG_RETRAIN_VERSION: retrain.version or "",
                    TAG_RETRAIN_PIPELINE: retrain.pipeline,
                },
            )
            if retrain.status == "failed":
                result.error = f"retrain failed: {retrain.reason}"

    def _features(self, version: Any, window: pd.DataFrame) -> list[str]:
        """The model's input columns: the training data's, or else the window's."""
        reference = self._reference(version)
        target = self._target()
        if reference is not None and reference.is_file():
            try:
                columns = _columns(reference)
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
        from mlnb.registry import TAG_TRAINING_DATA

        value = version.tags.get(TAG_TRAINING_DATA)
        return Path(value) if value else None

    # -- drift -------------------------------------------------------------------

    def _drift(
        self,
        tracker: Tracker,
        experiment: str,
        check_run: str,
        version: Any,
        window: pd.DataFrame,
        features: list[str],
    ) -> DriftResult:
        monitor = self.monitor
        assert monitor.drift_notebook is not None and self.pool is not None
        reference = self._reference(version)
        pipeline = monitor.spec.retrain.pipeline
        if reference is None:
            return DriftResult(
                "untestable",
                f"champion v{version.version} carries no training-data lineage (version tag "
                f"mlnb.training_data); add training_data: ${{stage.outputs.name}} to the "
                f"model: section of {pipeline} and retrain",
            )
        if not reference.is_file():
            return DriftResult(
                "untestable",
                f"the training data of champion v{version.version} is gone: {reference} "
                "(was the run's workspace under .mlnb/runs deleted?)",
            )
        from mlnb import tracking
        from mlnb.stage import execute_stage

        folder = self.state / monitor.name / check_run
        folder.mkdir(parents=True, exist_ok=True)
        current = folder / "current.parquet"
        _write_table(live.feature_table(window, features), current)
        params: dict[str, Any] = {
            **monitor.drift_params,
            "reference_path": str(reference),
            "current_path": str(current),
        }
        if "features" in monitor.drift_declares:
            params["features"] = list(features)
        if "target" in monitor.drift_declares:
            params["target"] = self._target()
        run_id = tracker.start_run(
            experiment,
            "drift",
            {
                tracking.TAG_KIND: KIND_DRIFT,
                TAG_MONITOR: monitor.name,
                tracking.TAG_NOTEBOOK: str(monitor.drift_notebook),
            },
            parent_run_id=check_run,
        )
        executed = folder / "drift.ipynb"
        env = {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_RUN_ID": run_id,
            "MLFLOW_EXPERIMENT_ID": experiment,
            "MLNB_MONITOR": monitor.name,
        }
        spec = monitor.spec.drift
        assert spec is not None
        status = "FINISHED"
        try:
            execute_stage(
                "drift",
                monitor.drift_notebook,
                executed,
                params,
                self.pool,
                kernel_name=monitor.drift_kernel,
                env=env,
                timeout=spec.timeout,
            )
        except StageError as exc:
            status = "FAILED"
            tracker.log(run_id, tags={tracking.TAG_ERROR: str(exc)[:5000]})
            return DriftResult("failed", str(exc), run_id)
        finally:
            with contextlib.suppress(MlnbError):
                if executed.exists():
                    tracker.log_artifact(run_id, executed, "notebook")
                tracker.finish(run_id, status)
        run = tracker.get_run(run_id)
        tags, figures = run.data.tags, dict(run.data.metrics)
        decided = tags.get(TAG_DRIFT_STATUS)
        if decided not in ("drift", "no_drift", "untestable"):
            return DriftResult(
                "failed",
                f"{monitor.drift_notebook.name} logged no decision: it must set the run tag "
                f"{TAG_DRIFT_STATUS} to drift, no_drift or untestable",
                run_id,
                figures,
            )
        return DriftResult(decided, tags.get(TAG_DRIFT_REASON, decided), run_id, figures)

    # -- retraining --------------------------------------------------------------

    def _retrain(
        self, result: CheckResult, window: pd.DataFrame, features: list[str]
    ) -> RetrainResult:
        monitor, spec = self.monitor, self.monitor.spec
        evidence = "; ".join(t.evidence for t in result.triggers)
        trigger = result.triggers[0].kind
        self.state.mkdir(parents=True, exist_ok=True)
        with retrain_lock(self.state / f"{spec.model}.lock") as holder:
            if holder is not None:
                return RetrainResult(
                    "skipped", f"another retrain of '{spec.model}' is running (pid {holder})"
                )
            ledger = self.state / f"{spec.model}.json"
            last = _read_json(ledger).get("started")
            if spec.cooldown and isinstance(last, int | float):
                ago = time.time() - last
                if ago < spec.cooldown:
                    return RetrainResult(
                        "skipped",
                        f"cooldown: the last retrain started {_span(ago)} ago "
                        f"(cooldown {_span(spec.cooldown)})",
                    )
            folder = self.state / monitor.name / result.run_id
            folder.mkdir(parents=True, exist_ok=True)
            labeled = folder / "labeled.csv"
            table = live.labeled_table(window, features, self._target())
            wants_data = any("monitor.labeled_data" in str(v) for v in spec.retrain.params.values())
            if wants_data and table.empty:
                return RetrainResult(
                    "skipped",
                    "no labeled predictions in the window to retrain on; send labels to "
                    "/feedback (or drop ${monitor.labeled_data} from retrain.params)",
                )
            table.to_csv(labeled, index=False)
            _write_json(
                ledger,
                {"started": time.time(), "check_run": result.run_id, "monitor": monitor.name},
            )
            params = fill_placeholders(
                spec.retrain.params,
                {"monitor.labeled_data": str(labeled), "monitor.trigger": trigger},
            )
            self.say(f"retraining {spec.model}: {evidence}")
            return self._run_pipeline(params, trigger, evidence)

    def pipeline_spec(self) -> tuple[Path, str]:
        """The spec a retrain runs: the live deployment's, else the working copy's; and which."""
        name = self.monitor.pipeline_spec.name
        deployed = live_spec(self.monitor.root, name)
        if deployed is not None:
            version, spec = deployed
            return spec, f"deployed {name} {version}"
        return self.monitor.pipeline, f"{self.monitor.spec.retrain.pipeline} (working copy)"

    def _run_pipeline(self, params: dict[str, Any], trigger: str, evidence: str) -> RetrainResult:
        from mlnb.pipeline import run_pipeline

        spec = self.monitor.spec
        path, which = self.pipeline_spec()
        self.say(f"retraining with {which}")
        try:
            outcome = run_pipeline(
                path,
                profile=spec.retrain.profile,
                overrides=params,
                tracking_uri=self.uri,
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


def _columns(path: Path) -> list[str]:
    import pandas as pd

    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return [str(c) for c in pd.read_csv(path, nrows=0).columns]


def _write_table(table: pd.DataFrame, path: Path) -> None:
    table.columns = [str(c) for c in table.columns]
    try:
        table.to_parquet(path, index=False)
    except Exception:  # mixed-type object columns: Parquet wants one type per column
        table.astype({c: str for c in table.columns if table[c].dtype == object}).to_parquet(
            path, index=False
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_json(path: Path, value: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value))
    os.replace(partial, path)


def _describe(error: Exception) -> str:
    """An error for a person: mlnb's own messages as they are, others with their type."""
    return str(error) if isinstance(error, MlnbError) else f"{type(error).__name__}: {error}"


def _span(seconds: float) -> str:
    """A duration a person reads: 45 s, 12 min, 3.5 h, 31 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


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
