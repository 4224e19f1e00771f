"""``mlnb sweep``: a pipeline's parameter sets tried as trials, the best one delivered.

A sweep is one MLflow run (kind ``sweep``) in the pipeline's experiment; each
trial is a pipeline run nested under it, holding its parameters (the swept
ones among them) and the sweep's metric, so MLflow's run comparison and its
parallel-coordinates chart show the sweep as they are. Design decisions:

- **Trials are pipeline runs.** Each is :func:`~mlnb.pipelines.runner.run_pipeline`
  with the trial's values as ``-p`` overrides, so the cache, the executor
  (local or Dask), timeouts and failures behave as in ``mlnb run``. With
  ``--jobs N`` the first trial runs alone and the others ``N`` at a time:
  the stages upstream of every swept parameter execute once, in the first
  trial, and every later trial takes them from the cache.
- **Kernels stay warm.** Each of the ``jobs`` trial slots keeps its executor
  (a local kernel pool, or a Dask client) from one trial to the next, so a
  trial pays for no kernel-server start and no client connection.
- **Optuna picks the trials of a search.** A ``search:`` section is an Optuna
  study in memory (``random`` or ``tpe`` sampler, seeded), driven by
  ask-and-tell from this thread; a grid needs no Optuna.
- **A failing trial is one row of the result**, with its stage, cell and
  exception; the others go on. Ctrl-C (or :attr:`interrupt`) stops the trials
  under way as it stops a run, and the sweep run ends ``KILLED``.
- **The sweep ends in CD.** The best finished trial (by ``metric`` and
  ``goal``) has its model registered with the trial's lineage, the sweep's
  run id and the trial's parameters, then gated like any version; with
  ``promote=False`` it is registered and no alias moves.
- **Resume** (``resume=SWEEP_RUN``) runs again the trials that did not
  finish (a grid's missing combinations; a search's failed trials with their
  parameters, then new ones up to ``trials``), then delivers the best of all.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlnb import tags
from mlnb.errors import MlnbError, PipelineError, UsageError
from mlnb.pipelines.delivery import Delivery, Provenance, deliver
from mlnb.pipelines.executors import Executor, LocalExecutor, StageJob
from mlnb.pipelines.locate import load_pipeline
from mlnb.pipelines.owner import Owner, end_orphans
from mlnb.pipelines.results import PipelineResult
from mlnb.pipelines.runner import earlier_attempts, run_pipeline
from mlnb.specs.pipeline import Pipeline, project_root
from mlnb.specs.sweep import SweepSpec
from mlnb.store import recorded, use_credentials
from mlnb.store import tracking_uri as default_tracking_uri
from mlnb.tags import EndState

if TYPE_CHECKING:
    from mlnb.models.registry import Decision, Registration
    from mlnb.tracking import Tracker

TrialStatus = Literal["pending", "running", "finished", "failed", "killed"]


@dataclass
class Trial:
    """One parameter set of a sweep and how its pipeline run went.

    Attributes:
        number: its place in the sweep, from 0.
        params: the swept parameters' values (``key`` or ``stage.key``).
        status: ``pending``, ``running``, ``finished``, ``failed`` or ``killed``.
        run_id: its pipeline run, once started.
        value: the sweep metric, once finished.
        error: why it failed (stage, cell, exception).
        seconds: how long it ran.
    """

    number: int
    params: dict[str, Any]
    status: TrialStatus = "pending"
    run_id: str | None = None
    value: float | None = None
    error: str | None = None
    seconds: float = 0.0
    result: PipelineResult | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SweepStarted:
    """The sweep run exists; ``trials`` are the ones known so far (a search adds more)."""

    pipeline: str
    run_id: str
    url: str
    metric: str
    goal: str
    total: int
    keys: tuple[str, ...]
    trials: tuple[Trial, ...]
    resumed: bool


@dataclass(frozen=True)
class TrialChanged:
    """A trial started or ended (a copy of it as it is now)."""

    trial: Trial


SweepEvent = SweepStarted | TrialChanged


@dataclass
class SweepResult:
    """A sweep as it ended: its trials, the best one and what became of its model."""

    pipeline: str
    run_id: str
    url: str
    metric: str
    goal: str
    status: EndState
    trials: list[Trial]
    best: Trial | None = None
    registration: Registration | None = None
    decision: Decision | None = None
    seconds: float = 0.0

    def ranking(self) -> list[Trial]:
        """The finished trials, best first."""
        done = [t for t in self.trials if t.status == "finished" and t.value is not None]
        return sorted(done, key=lambda t: t.value or 0.0, reverse=self.goal == "maximize")

    @property
    def failed(self) -> list[Trial]:
        return [t for t in self.trials if t.status == "failed"]


def run_sweep(
    spec: Path | str,
    *,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    jobs: int = 1,
    resume: str | None = None,
    promote: bool = True,
    max_trials: int | None = None,
    executor: Callable[[], Executor] | None = None,
    on_event: Callable[[SweepEvent], None] | None = None,
    tracking_uri: str | None = None,
    state: Path | None = None,
    interrupt: threading.Event | None = None,
) -> SweepResult:
    """Run the sweep of the pipeline at ``spec``; register and gate its best trial's model.

    Args:
        spec: the pipeline spec, with a ``sweep:`` section.
        profile: a profile applied to every trial (e.g. ``ci``).
        overrides: ``-p`` values for every trial; a swept key cannot be one.
        jobs: trials at once (each trial runs its stages one at a time).
        resume: the id of a sweep run that did not finish, to finish.
        promote: gate the best trial's version (it becomes ``challenger``);
            ``False`` registers it and moves no alias.
        max_trials: run at most this many trials (a smoke test's two).
        executor: makes an executor (default: this process's kernels); one
            per trial running at once, each reused by the trials after it.
        on_event: receives :class:`SweepStarted` and each :class:`TrialChanged`.
        tracking_uri: an MLflow store other than the project's default.
        state: the state folder (default that of the project).
        interrupt: set from another thread, it stops the sweep as Ctrl-C does.

    Raises:
        UsageError: the pipeline has no sweep, or ``-p`` sets a swept key.
        PipelineError: the sweep cannot be resumed, no trial finished, or it
            was interrupted (``run_id`` is the sweep's).
        TrackingError: the MLflow store cannot be used.
    """
    if jobs < 1:
        raise PipelineError(f"--jobs must be at least 1 (got {jobs})")
    started = time.perf_counter()
    path = Path(spec)
    root = project_root(path)
    given = tracking_uri or default_tracking_uri(root)
    from mlnb.tracking import Tracker

    tracker = Tracker(root, given)
    if resume is not None:
        if profile or overrides:
            raise PipelineError(
                "--resume runs with the parameters of the sweep it resumes; "
                "drop --profile and -p, or start a new sweep"
            )
        sweep_run = _resumable(tracker, resume)
        profile = sweep_run.data.tags.get(tags.PROFILE) or None
        overrides = json.loads(sweep_run.data.tags.get(tags.OVERRIDES) or "{}")
    pipeline = load_pipeline(path, profile, overrides)
    sweep = _sweep_of(pipeline, overrides or {})
    sweeper = _Sweeper(
        tracker,
        pipeline,
        sweep,
        path,
        jobs=jobs,
        promote=promote,
        executor=executor,
        emit=on_event or (lambda event: None),
        uri=given,
        state=state,
        interrupt=interrupt or threading.Event(),
    )
    try:
        if resume is None:
            sweeper.start(profile, dict(overrides or {}))
        else:
            sweeper.reopen(resume)
        result = sweeper.execute(max_trials)
    finally:
        sweeper.close()
    result.seconds = time.perf_counter() - started
    return result


def _sweep_of(pipeline: Pipeline, overrides: Mapping[str, Any]) -> SweepSpec:
    sweep = pipeline.spec.sweep
    if sweep is None:
        raise UsageError(
            f"pipeline '{pipeline.name}' ({pipeline.path}) has no sweep: section; add one "
            "(sweep: {params: {KEY: [VALUES]}, metric: STAGE.METRIC}) or use mlnb run"
        )
    clash = [key for key in sweep.keys if key in overrides]
    if clash:
        raise UsageError(
            f"-p {clash[0]} sets a parameter the sweep varies; drop it, or take it out of sweep"
        )
    return sweep


def _resumable(tracker: Tracker, run_id: str) -> Any:
    run = tracker.get_run(run_id)
    found = run.data.tags
    if found.get(tags.KIND) != tags.Kind.SWEEP:
        raise PipelineError(f"run {run_id} is not a sweep (mlnb.kind is {found.get(tags.KIND)!r})")
    if run.info.status == "FINISHED":
        raise PipelineError(f"sweep {run_id} finished: nothing to resume")
    owner = Owner.of(found)
    if run.info.status == "RUNNING" and owner is not None and owner.local and owner.alive():
        raise PipelineError(
            f"sweep {run_id} is still running (pid {owner.pid}); wait for it or stop it first"
        )
    return run


class _Sweeper:
    """One sweep: its MLflow run, its trials, the best one's delivery."""

    def __init__(
        self,
        tracker: Tracker,
        pipeline: Pipeline,
        sweep: SweepSpec,
        path: Path,
        *,
        jobs: int,
        promote: bool,
        executor: Callable[[], Executor] | None,
        emit: Callable[[SweepEvent], None],
        uri: str,
        state: Path | None,
        interrupt: threading.Event,
    ) -> None:
        self.tracker = tracker
        self.pipeline = pipeline
        self.sweep = sweep
        self.path = path
        self.jobs = jobs
        self.promote = promote
        self.executor = executor
        self.emit = emit
        self.uri = uri
        self.state = state
        self.interrupt = interrupt
        self.experiment_id = tracker.experiment_id(pipeline.name)
        self.run_id = ""
        self.trials: list[Trial] = []
        self.source: _Source  # where trials come from: set by start() or reopen()
        self.resumed = False
        #: executors of finished trials, for the next: their kernel pools stay warm
        self._spare: queue.SimpleQueue[_Borrowed] = queue.SimpleQueue()
        self._made: list[Executor] = []

    # -- the sweep run -------------------------------------------------------------

    def start(self, profile: str | None, overrides: dict[str, Any]) -> None:
        end_orphans(self.tracker, self.experiment_id, tags.Kind.SWEEP)
        sweep = self.sweep
        found_tags = {
            tags.KIND: tags.Kind.SWEEP,
            tags.PIPELINE: self.pipeline.name,
            tags.SPEC: recorded(self.pipeline.path, self.pipeline.root),
            tags.PROFILE: profile or "",
            tags.OVERRIDES: json.dumps(overrides, default=str),
            tags.SWEEP_METRIC: sweep.metric,
            tags.SWEEP_GOAL: sweep.goal,
            **Owner.this_process().tags(),
        }
        self.run_id = self.tracker.start_run(
            self.experiment_id, f"{self.pipeline.name} sweep", found_tags
        )
        method = "grid" if sweep.search is None else sweep.search.method
        self.tracker.log(self.run_id, params={"method": method, "trials": sweep.trials})
        self.tracker.log_artifact(self.run_id, self.pipeline.path, "spec")
        self.source = _source(sweep, [])

    def reopen(self, run_id: str) -> None:
        self.run_id, self.resumed = run_id, True
        self.tracker.log(run_id, tags=Owner.this_process().tags())
        self.tracker.reopen(run_id)
        earlier = self._earlier_trials()
        self.trials = [t for t in earlier if t.status == "finished"]
        self.source = _source(self.sweep, earlier)

    def _earlier_trials(self) -> list[Trial]:
        """The trials of the sweep run so far, the latest attempt of each number."""
        client = self.tracker.client
        found = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{tags.SWEEP_RUN}` = '{self.run_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=5000,
        )
        latest: dict[int, Trial] = {}
        for run in found:
            number = int(run.data.tags.get(tags.SWEEP_TRIAL, "-1"))
            value = run.data.metrics.get(self.sweep.metric)
            status: TrialStatus = (
                "finished" if run.info.status == "FINISHED" and value is not None else "failed"
            )
            latest[number] = Trial(
                number,
                json.loads(run.data.tags.get(tags.SWEEP_PARAMS) or "{}"),
                status,
                run.info.run_id,
                value,
                run.data.tags.get(tags.ERROR),
            )
        return [latest[n] for n in sorted(latest) if n >= 0]

    # -- the trials ----------------------------------------------------------------

    def execute(self, max_trials: int | None) -> SweepResult:
        total = self.sweep.trials if max_trials is None else min(max_trials, self.sweep.trials)
        self.emit(
            SweepStarted(
                self.pipeline.name,
                self.run_id,
                self.tracker.run_url(self.experiment_id, self.run_id),
                self.sweep.metric,
                self.sweep.goal,
                total,
                tuple(self.sweep.keys),
                tuple(replace(t) for t in self.trials),
                self.resumed,
            )
        )
        state: EndState = "FINISHED"
        try:
            self._run_trials(total)
        except KeyboardInterrupt:
            state = "KILLED"
        return self._end(state)

    def _run_trials(self, total: int) -> None:
        running: dict[Future[None], Trial] = {}
        first = not any(t.status == "finished" for t in self.trials)
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="mlnb-trial") as pool:
            try:
                while True:
                    if self.interrupt.is_set():
                        raise KeyboardInterrupt
                    # the first trial alone: it fills the cache for the stages all trials share
                    room = 1 if first and self.jobs > 1 else self.jobs
                    while len(running) < room and len(self.trials) < total:
                        trial = self.source.next()
                        if trial is None:
                            break
                        self.trials.append(trial)
                        running[pool.submit(self._trial, trial)] = trial
                    if not running:
                        break
                    finished, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in finished:
                        trial = running.pop(future)
                        future.result()
                        self.source.tell(trial)
                        first = first and trial.status != "finished"
            except KeyboardInterrupt:
                self.interrupt.set()
                wait(list(running))
                for trial in running.values():
                    self.source.tell(trial)
                raise

    def _trial(self, trial: Trial) -> None:
        """Run one trial's pipeline; whatever goes wrong ends as a failed trial."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        trial.status = "running"
        self.emit(TrialChanged(replace(trial)))
        params = json.dumps(trial.params, default=str)
        started = time.perf_counter()
        executor = self._borrow()
        try:
            result = run_pipeline(
                self.path,
                profile=self.pipeline.profile,
                overrides={**self.pipeline.overrides, **trial.params},
                promote=False,
                register=False,
                tracking_uri=self.uri,
                state=self.state,
                executor=executor,
                interrupt=self.interrupt,
                run_tags={
                    MLFLOW_PARENT_RUN_ID: self.run_id,
                    tags.SWEEP_RUN: self.run_id,
                    tags.SWEEP_TRIAL: str(trial.number),
                    tags.SWEEP_PARAMS: params,
                },
            )
        except PipelineError as error:
            trial.run_id = error.run_id
            ended = error.result.status if error.result is not None else "FAILED"
            trial.status = "killed" if self.interrupt.is_set() and ended == "KILLED" else "failed"
            trial.error = str(error)
        except MlnbError as error:
            trial.status, trial.error = "failed", str(error)
        else:
            trial.run_id, trial.result = result.run_id, result
            self._score(trial, result)
        finally:
            self._spare.put(executor)
        trial.seconds = time.perf_counter() - started
        self.emit(TrialChanged(replace(trial)))

    def _score(self, trial: Trial, result: PipelineResult) -> None:
        """The trial's metric from the sweep's stage; logged on the trial's run."""
        sweep = self.sweep
        stage = result.stage(sweep.stage)
        source = stage.source_run_id or stage.run_id
        metrics = self.tracker.get_run(source).data.metrics if source else {}
        value = metrics.get(sweep.metric_name)
        if value is None:
            trial.status = "failed"
            logged = ", ".join(sorted(metrics)) or "none"
            trial.error = (
                f"stage '{sweep.stage}' logged no metric '{sweep.metric_name}' (it logged: "
                f"{logged}); log it with mlflow.log_metric, or fix sweep.metric"
            )
            self.tracker.log(result.run_id, tags={tags.ERROR: trial.error[: tags.VALUE_LIMIT]})
            return
        trial.value, trial.status = float(value), "finished"
        self.tracker.log(result.run_id, metrics={sweep.metric: float(value)})

    def _borrow(self) -> _Borrowed:
        """An executor no running trial uses: a spare one, or a new one (at most ``jobs``)."""
        try:
            return self._spare.get_nowait()
        except queue.Empty:
            pass
        made = (
            self.executor()
            if self.executor is not None
            else LocalExecutor(
                {"MLFLOW_TRACKING_URI": use_credentials(self.uri)}, cwd=self.pipeline.root
            )
        )
        self._made.append(made)
        return _Borrowed(made)

    def close(self) -> None:
        """Close every executor the trials used."""
        for made in self._made:
            with contextlib.suppress(Exception):
                made.close()

    # -- the end -------------------------------------------------------------------

    def _end(self, state: EndState) -> SweepResult:
        result = SweepResult(
            self.pipeline.name,
            self.run_id,
            self.tracker.run_url(self.experiment_id, self.run_id),
            self.sweep.metric,
            self.sweep.goal,
            state,
            sorted(self.trials, key=lambda t: t.number),
        )
        ranking = result.ranking()
        found_tags: dict[str, str] = {}
        metrics: dict[str, float] = {
            "trials_finished": float(len(ranking)),
            "trials_failed": float(len(result.failed)),
        }
        if ranking:
            result.best = ranking[0]
            found_tags[tags.SWEEP_BEST] = result.best.run_id or ""
            metrics[f"best.{self.sweep.metric}"] = result.best.value or 0.0
        if state == "FINISHED" and result.failed:
            state = result.status = "FAILED"
        try:
            if state != "KILLED" and result.best is not None:
                delivered = self._deliver(result.best)
                if delivered is not None:
                    result.registration, result.decision = (
                        delivered.registration,
                        delivered.decision,
                    )
                    found_tags[tags.MODEL_VERSION] = delivered.registration.version
                    if delivered.decision is not None:
                        found_tags[tags.MODEL_DECISION] = delivered.decision.outcome
        except MlnbError as exc:
            found_tags[tags.ERROR] = str(exc)[: tags.VALUE_LIMIT]
            self._close(found_tags, metrics, "FAILED")
            raise
        if result.best is None:
            state = result.status = "KILLED" if state == "KILLED" else "FAILED"
        self._close(found_tags, metrics, state)
        if result.best is None and state != "KILLED":
            raise PipelineError(
                f"sweep of '{self.pipeline.name}': no trial finished; "
                + "; ".join(f"trial {t.number}: {t.error}" for t in result.failed),
                run_id=self.run_id,
            )
        return result

    def _close(
        self, found_tags: Mapping[str, str], metrics: Mapping[str, float], state: EndState
    ) -> None:
        self.tracker.log(self.run_id, tags=found_tags, metrics=metrics)
        self.tracker.finish(self.run_id, state)

    def _deliver(self, best: Trial) -> Delivery | None:
        """Register (and gate) the best trial's model, with the sweep in its lineage."""
        model = self.pipeline.spec.model
        if model is None or best.run_id is None:
            return None
        run = self.tracker.get_run(best.run_id)
        if best.result is not None:
            results = {s.name: s for s in best.result.stages}
        else:  # a trial of an earlier attempt of the sweep: its stages as MLflow has them
            results = earlier_attempts(
                self.tracker, self.experiment_id, best.run_id, self.pipeline, self.pipeline.root
            )
        from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

        provenance = Provenance(
            best.run_id,
            self.experiment_id,
            run.data.tags.get(tags.SPEC_SHA, ""),
            run.data.tags.get(MLFLOW_GIT_COMMIT),
            "sweep",
            f"best of {len(self.trials)} trials by {self.sweep.metric} ({self.sweep.goal})",
            {
                tags.SWEEP_RUN: self.run_id,
                tags.SWEEP_PARAMS: json.dumps(best.params, default=str),
            },
        )
        return deliver(
            use_credentials(self.uri),
            model,
            results,
            provenance,
            promote=self.promote,
            state=self.state,
        )


class _Borrowed:
    """An executor lent to one trial at a time: the trial's run does not close it."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner

    def plan(self, kernels: Sequence[str], jobs: int) -> None:
        self.inner.plan(kernels, jobs)

    def input_path(self, path: Path, digest: str) -> str:
        return self.inner.input_path(path, digest)

    def run(self, job: StageJob) -> str | None:
        return self.inner.run(job)

    def cancel(self) -> None:
        self.inner.cancel()

    def close(self) -> None:
        """Kept open for the next trial; :meth:`_Sweeper.close` closes it."""


# -- where trials come from ------------------------------------------------------------


class _Source:
    """The next trial to run, and what became of each."""

    def next(self) -> Trial | None:
        raise NotImplementedError

    def tell(self, trial: Trial) -> None:
        """A trial ended (finished, failed or killed)."""


class _Grid(_Source):
    """Every combination of a grid not finished yet, in order."""

    def __init__(self, sweep: SweepSpec, earlier: list[Trial] | None = None) -> None:
        done = {t.number for t in earlier or [] if t.status == "finished"}
        combinations = sweep.grid() if sweep.search is None else []
        self._todo: Iterator[tuple[int, dict[str, Any]]] = (
            (n, params) for n, params in enumerate(combinations) if n not in done
        )

    def next(self) -> Trial | None:
        found = next(self._todo, None)
        return None if found is None else Trial(found[0], found[1])


class _Search(_Source):
    """Trials an Optuna sampler draws from the space, told each result (ask and tell)."""

    def __init__(self, sweep: SweepSpec, earlier: list[Trial]) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        search = sweep.search
        assert search is not None
        sampler: optuna.samplers.BaseSampler = (
            optuna.samplers.RandomSampler(seed=search.seed)
            if search.method == "random"
            else optuna.samplers.TPESampler(seed=search.seed)
        )
        self._optuna = optuna
        self._study = optuna.create_study(direction=sweep.goal, sampler=sampler)
        self._space = {name: _distribution(optuna, d) for name, d in search.space.items()}
        self._asked: dict[int, Any] = {}
        self._next_number = max((t.number for t in earlier), default=-1) + 1
        self._again: list[Trial] = []
        for trial in earlier:
            if trial.status == "finished" and trial.value is not None:
                self._study.add_trial(
                    optuna.trial.create_trial(
                        params=trial.params, distributions=self._space, value=trial.value
                    )
                )
            else:  # failed or killed: the same parameters again, under its number
                self._again.append(Trial(trial.number, dict(trial.params)))

    def next(self) -> Trial | None:
        if self._again:
            return self._again.pop(0)
        asked = self._study.ask(self._space)
        number = self._next_number
        self._next_number += 1
        self._asked[number] = asked
        return Trial(number, dict(asked.params))

    def tell(self, trial: Trial) -> None:
        asked = self._asked.pop(trial.number, None)
        if asked is None:
            return
        state = self._optuna.trial.TrialState
        if trial.status == "finished" and trial.value is not None:
            self._study.tell(asked, trial.value)
        else:
            self._study.tell(asked, state=state.FAIL)


def _source(sweep: SweepSpec, earlier: list[Trial]) -> _Source:
    return _Grid(sweep, earlier) if sweep.search is None else _Search(sweep, earlier)


def _distribution(optuna: Any, dimension: Any) -> Any:
    """The Optuna distribution of one dimension of the space."""
    dists = optuna.distributions
    if dimension.choices is not None:
        return dists.CategoricalDistribution(dimension.choices)
    if dimension.integer:
        return dists.IntDistribution(
            int(dimension.low),
            int(dimension.high),
            log=dimension.log,
            step=int(dimension.step or 1),
        )
    return dists.FloatDistribution(
        float(dimension.low), float(dimension.high), log=dimension.log, step=dimension.step
    )
