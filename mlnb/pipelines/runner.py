"""Run a pipeline: a DAG of notebook stages, tracked, cached and resumable.

The scheduler runs in the calling thread and hands stages to a thread pool of
``jobs`` workers; each stage blocks on its own kernel, so threads are enough
for parallelism (the work happens in the kernels' processes). Where a notebook
executes is the executor's business (:mod:`mlnb.pipelines.executors`): by
default a kernel of this process's pool, pre-started for the stages that will
execute, which are known in advance for all but the stages downstream of a
cache miss; with ``--executor dask``, a Dask worker.

MLflow and papermill are imported only once the kernels have started
starting, so their import time overlaps with kernel start-up. The stage
run's artifacts (executed notebook and its HTML rendering) are uploaded by a
background thread, so a downstream stage starts as soon as its inputs exist;
the pipeline run ends only when every upload is done.

A run is built in two steps. :class:`_Runner` holds what exists from the
start (options, kernel pool, cache, uploads); :class:`_Execution` is the run
being executed — its pipeline, its MLflow parent run, workspace and stage
results — and exists only once that parent run has been started or reopened,
so no step ever handles a run that is not there yet. Each stage attempt is an
:class:`_Attempt` once its own MLflow run exists. Delivering the model is
:mod:`mlnb.pipelines.delivery`; it runs with interrupts held
(:mod:`mlnb.pipelines.signals`).

A run records its owner and holds its workspace's lock until it ends
(:mod:`mlnb.pipelines.owner`): a new run first ends ``KILLED`` the runs of its
experiment whose process died, and ``--resume`` refuses a run still running
elsewhere. Kernels and the MLflow client get a server's credentials as
MLflow's variables, never in the URI (:func:`mlnb.store.client_env`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlnb import tags
from mlnb._files import hash_path, link_into
from mlnb.errors import MissingOutputError, MlnbError, PipelineError, StageError
from mlnb.pipelines import cache as cachemod
from mlnb.pipelines.delivery import Delivery, Provenance, deliver
from mlnb.pipelines.events import (
    EventCallback,
    RunStarted,
    StageFinished,
    StageOutput,
    StageProgress,
    StageStarted,
)
from mlnb.pipelines.executors import Executor, LocalExecutor, StageJob
from mlnb.pipelines.locate import load_pipeline
from mlnb.pipelines.owner import Owner, claim, end_orphans, hold
from mlnb.pipelines.results import PipelineResult, StageResult, StageStatus
from mlnb.pipelines.signals import signals_deferred
from mlnb.specs.pipeline import (
    Pipeline,
    Stage,
    project_path,
    project_root,
    substitute,
)
from mlnb.store import (
    client_env,
    located,
    recorded,
    redacted,
    state_dir,
    use_credentials,
    without_userinfo,
)
from mlnb.store import tracking_uri as default_tracking_uri
from mlnb.tags import EndState

#: how often a run given an ``interrupt`` event looks at it, in seconds
INTERRUPT_POLL = 0.2

if TYPE_CHECKING:
    from mlflow.entities import Run

    from mlnb.tracking import Tracker

__all__ = ["PipelineResult", "run_pipeline"]


def run_pipeline(
    spec: Pipeline | Path | str | None = None,
    *,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    jobs: int = 1,
    resume: str | None = None,
    log_output: bool = False,
    on_event: EventCallback | None = None,
    tracking_uri: str | None = None,
    promote: bool = True,
    trigger: str = "manual",
    reason: str = "",
    executor: Executor | None = None,
    state: Path | None = None,
    register: bool = True,
    run_tags: Mapping[str, str] | None = None,
    interrupt: threading.Event | None = None,
) -> PipelineResult:
    """Execute a pipeline: every stage with papermill, tracked in MLflow.

    Args:
        spec: a loaded :class:`Pipeline` or the path of a spec file (with
            ``resume``, the spec of the run resumed).
        profile: a profile of the spec (with a path ``spec``).
        overrides: ``-p`` values (with a path ``spec``).
        force: execute every stage even when the cache holds it.
        jobs: how many independent stages may run at once.
        resume: the id of a failed pipeline run to continue in place.
        log_output: report what notebooks print, as :class:`StageOutput`.
        on_event: receives progress events.
        tracking_uri: an MLflow store other than the project's default.
        promote: with a ``model:`` section, alias the registered version
            ``challenger`` and run the gate; ``False`` registers it and
            moves no alias.
        trigger: why this run happens (``manual``, ``schedule``, ``drift``,
            ``performance``), recorded on the run and the model version.
        reason: the evidence behind the trigger (``drift: p=0.0003 on 3 of
            20 features``), recorded beside it.
        executor: where stage notebooks execute (default: kernels of this
            process, :class:`~mlnb.pipelines.executors.LocalExecutor`); the
            run closes it.
        state: the state folder for the run's workspace and the cache
            (default :func:`mlnb.store.state_dir` of the project).
        register: with a ``model:`` section, register the model of a
            finished run; ``False`` leaves that to the caller (a sweep
            registers its best trial's).
        run_tags: more tags of the pipeline run (a sweep's trial: its
            parent run, ``mlflow.parentRunId``, and its number).
        interrupt: set from another thread, it stops the run as Ctrl-C
            does (stages under way are killed, the run ends ``KILLED``).

    Returns:
        The :class:`PipelineResult` of a run whose stages all succeeded. A run
        with nothing to do — every stage in the cache, no ``model:`` section,
        started by hand (``trigger`` ``manual``, the local executor, no
        ``run_tags``) — is *up to date*: it executes nothing, records nothing
        new in MLflow (the runs that made the outputs are there) and so never
        imports MLflow; its result says ``up_to_date`` and names, per stage,
        the run that holds the outputs.

    Raises:
        SpecError: the spec is invalid.
        PipelineError: a stage failed (``failures`` says which and why, and
            ``result`` holds the whole :class:`PipelineResult`), or the run
            to resume does not exist or cannot be resumed.
        TrackingError: the MLflow store cannot be used.
    """
    if jobs < 1:
        raise PipelineError(f"--jobs must be at least 1 (got {jobs})")
    started = time.perf_counter()
    if spec is None:
        raise PipelineError("name the pipeline spec to run (or to resume a run of)")
    spec_path = spec.path if isinstance(spec, Pipeline) else Path(spec)
    plan = _plan(spec, profile, overrides, resume)
    runner = _Runner(
        plan.root if isinstance(plan, Pipeline) else project_root(spec_path),
        on_event or _ignore,
        jobs=jobs,
        force=force,
        log_output=log_output,
        tracking_uri=tracking_uri,
        promote=promote,
        trigger=trigger,
        reason=reason,
        executor=executor,
        state=state,
        register=register,
        run_tags=run_tags,
        interrupt=interrupt,
    )
    may_skip = trigger == "manual" and executor is None and register and not run_tags
    try:
        current = runner.up_to_date(plan) if isinstance(plan, Pipeline) and may_skip else None
        if current is not None:
            current.seconds = time.perf_counter() - started
            return current
        if isinstance(plan, Pipeline):
            run = runner.start(plan, spec_path)
        else:
            run = runner.reopen(plan, spec_path)
        result = runner.execute(run)
    finally:
        runner.close()
    result.seconds = time.perf_counter() - started
    if result.status != "FINISHED":
        raise _run_failed(result)
    return result


def _plan(
    spec: Pipeline | Path | str,
    profile: str | None,
    overrides: Mapping[str, Any] | None,
    resume: str | None,
) -> Pipeline | str:
    """What to run: the pipeline of a new run, or the id of the run to resume."""
    if resume is None:
        return spec if isinstance(spec, Pipeline) else load_pipeline(spec, profile, overrides)
    if profile or overrides:
        raise PipelineError(
            "--resume runs with the parameters of the run it resumes; "
            "drop --profile and -p, or start a new run"
        )
    return resume


def _run_failed(result: PipelineResult) -> PipelineError:
    """The error of a run that did not finish: its stage failures, and the run itself."""
    failures = result.failures
    what = "; ".join(str(f) for f in failures) or "interrupted"
    return PipelineError(
        f"pipeline '{result.pipeline}' {result.status.lower()}: {what}",
        run_id=result.run_id,
        failures=failures,
        result=result,
    )


def _ignore(event: object) -> None:
    """The event callback when the caller wants none."""


@dataclass(frozen=True)
class _Execution:
    """The pipeline run being executed, from the moment its MLflow parent run exists.

    Attributes:
        tracker: the MLflow store.
        pipeline: the pipeline (on resume, reloaded with the run's parameters).
        experiment_id: the pipeline's experiment.
        run_id: the parent run.
        workspace: the run's workspace folder.
        lineage: the tags that tie every run of it to its source (git, spec file).
        spec_sha: the sha256 of the spec file.
        results: each stage's result, updated as stages end.
        resumed: whether an earlier, failed run is being continued.
    """

    tracker: Tracker
    pipeline: Pipeline
    experiment_id: str
    run_id: str
    workspace: Path
    lineage: Mapping[str, str]
    spec_sha: str
    results: dict[str, StageResult]
    resumed: bool

    @property
    def url(self) -> str:
        """Where a person sees the run."""
        return self.tracker.run_url(self.experiment_id, self.run_id)


@dataclass(frozen=True)
class _Attempt:
    """One stage of an :class:`_Execution`, from the moment its MLflow run exists.

    Attributes:
        stage: the stage.
        result: its result in the execution, updated as it ends.
        run_id: its MLflow run.
        key: its cache key (``""`` when the stage is not cached).
        params: the parameters the notebook receives.
        outputs: output name → the path in this run's workspace.
        started: :func:`time.perf_counter` when the stage began.
    """

    stage: Stage
    result: StageResult
    run_id: str
    key: str
    params: dict[str, Any]
    outputs: dict[str, str]
    started: float

    @property
    def name(self) -> str:
        return self.stage.name

    def elapsed(self) -> float:
        """Seconds since the stage began."""
        return time.perf_counter() - self.started


class _Runner:
    """One pipeline run: the scheduler and what it shares with its workers."""

    def __init__(
        self,
        root: Path,
        emit: EventCallback,
        *,
        jobs: int,
        force: bool,
        log_output: bool,
        tracking_uri: str | None,
        promote: bool = True,
        trigger: str = "manual",
        reason: str = "",
        executor: Executor | None = None,
        state: Path | None = None,
        register: bool = True,
        run_tags: Mapping[str, str] | None = None,
        interrupt: threading.Event | None = None,
    ) -> None:
        self.root = root
        self.state = state or state_dir(root)
        self.promote = promote
        self.register = register
        self.run_tags = dict(run_tags or {})
        self.interrupt = interrupt
        self.trigger = trigger
        self.reason = reason
        self.emit = emit
        self.jobs = jobs
        self.force = force
        self.log_output = log_output
        #: the store as given (its messages say ``***@`` for its user info), and as MLflow gets it
        self.given = tracking_uri or default_tracking_uri(root)
        self.uri = use_credentials(self.given)
        self.input_hashes: dict[Path, str] = {}
        self.cache = cachemod.Cache(self.state)
        self.executor: Executor = executor or LocalExecutor(
            {"MLFLOW_TRACKING_URI": self.uri}, cwd=root
        )
        self.uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlnb-upload")
        self.upload_futures: list[Future[None]] = []
        self.upload_errors: list[str] = []
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        #: the run's lock, held until the run has ended and its kernels are stopped
        self.owned = contextlib.ExitStack()

    def close(self) -> None:
        try:
            self.uploads.shutdown(wait=True)
            self.executor.close()
        finally:
            self.owned.close()

    # -- the parent run: started, or reopened ------------------------------------

    def up_to_date(self, pipeline: Pipeline) -> PipelineResult | None:
        """The result of a run with nothing to do, decided before MLflow is imported; else None.

        Nothing to do: not forced, no model to deliver, every stage's entry in
        the cache (its outputs still there and unchanged).
        """
        if self.force or pipeline.spec.model is not None:
            return None
        misses, hits = self._predicted(pipeline, {})
        if misses:
            return None
        stages = []
        for stage in pipeline.stages:
            hit = hits[stage.name]
            stages.append(
                StageResult(
                    stage.name,
                    StageStatus.CACHED,
                    outputs=dict(hit.outputs),
                    hashes=dict(hit.hashes),
                    source_run_id=hit.run_id,
                )
            )
            self.emit(StageFinished(stage.name, StageStatus.CACHED, source_run_id=hit.run_id))
        last = hits[pipeline.stages[-1].name]
        return PipelineResult(
            pipeline.name,
            "",
            "",
            "FINISHED",
            stages,
            cachemod.workspace(self.state, last.parent_run_id),
            self.uri,
            "",
            up_to_date=True,
        )

    def start(self, pipeline: Pipeline, spec_path: Path) -> _Execution:
        """Start the kernels the run will need, then a new parent run for ``pipeline``."""
        self._prestart(self._predicted(pipeline, {})[0])  # before importing MLflow
        tracker = self._tracker()
        lineage, spec_sha = _source(self.root, spec_path)
        experiment_id = tracker.experiment_id(pipeline.name)
        end_orphans(tracker, experiment_id)
        run_id = self._start_parent(tracker, experiment_id, pipeline, lineage, spec_sha)
        workspace = cachemod.workspace(self.state, run_id)
        self.owned.enter_context(hold(workspace))
        return _Execution(
            tracker,
            pipeline,
            experiment_id,
            run_id,
            workspace,
            lineage,
            spec_sha,
            {s.name: StageResult(s.name) for s in pipeline.stages},
            resumed=False,
        )

    def reopen(self, run_id: str, spec_path: Path) -> _Execution:
        """Reopen failed run ``run_id``: its pipeline, and the stages it need not run again.

        Raises:
            PipelineError: the run cannot be resumed, or still runs in another process.
        """
        tracker = self._tracker()
        lineage, spec_sha = _source(self.root, spec_path)
        run = _resumable(tracker, run_id, spec_path, self.root)
        recorded_workspace = run.data.tags.get(tags.WORKSPACE)
        workspace = (
            located(recorded_workspace, self.root)
            if recorded_workspace
            else cachemod.workspace(self.state, run_id)
        )
        self.owned.enter_context(claim(tracker, run, workspace))
        found_tags = run.data.tags
        overrides = json.loads(found_tags.get(tags.OVERRIDES) or "{}")
        pipeline = load_pipeline(spec_path, found_tags.get(tags.PROFILE) or None, overrides)
        experiment_id = str(run.info.experiment_id)
        results = earlier_attempts(tracker, experiment_id, run_id, pipeline, self.root)
        tracker.log(run_id, tags=Owner.this_process().tags())
        tracker.reopen(run_id)
        self._prestart(self._predicted(pipeline, results)[0])
        return _Execution(
            tracker,
            pipeline,
            experiment_id,
            run_id,
            workspace,  # the folder whose lock was claimed
            lineage,
            spec_sha,
            results,
            resumed=True,
        )

    def _tracker(self) -> Tracker:
        """The MLflow store; importing MLflow happens here, after the kernels are on their way."""
        from mlnb.tracking import Tracker

        return Tracker(self.root, self.given)

    def _start_parent(
        self,
        tracker: Tracker,
        experiment_id: str,
        pipeline: Pipeline,
        lineage: Mapping[str, str],
        spec_sha: str,
    ) -> str:
        found_tags = {
            tags.KIND: tags.Kind.PIPELINE,
            tags.PIPELINE: pipeline.name,
            tags.SPEC: recorded(pipeline.path, self.root),
            tags.SPEC_SHA: spec_sha,
            tags.PROFILE: pipeline.profile or "",
            tags.OVERRIDES: json.dumps(dict(pipeline.overrides), default=str),
            tags.TRIGGER: self.trigger,
            tags.TRIGGER_REASON: self.reason,
            **Owner.this_process().tags(),
            **lineage,
            **self.run_tags,
        }
        run_id = tracker.start_run(experiment_id, pipeline.name, found_tags)
        tracker.log(
            run_id,
            params=_pipeline_params(pipeline),
            tags={tags.WORKSPACE: recorded(cachemod.workspace(self.state, run_id), self.root)},
        )
        tracker.log_artifact(run_id, pipeline.path, "spec")
        return run_id

    # -- the run: schedule, settle, end ------------------------------------------

    def execute(self, run: _Execution) -> PipelineResult:
        """Run the stages still to run, then end the parent run (delivering its model)."""
        run.workspace.mkdir(parents=True, exist_ok=True)
        self._announce(run)
        state = self._schedule_all(run)
        state = self._settle(run, state)
        return self._end(run, state)

    def _announce(self, run: _Execution) -> None:
        self.emit(
            RunStarted(
                run.pipeline.name,
                run.run_id,
                run.experiment_id,
                tuple(s.name for s in run.pipeline.stages),
                str(run.workspace),
                redacted(self.uri),
                run.url,
                resumed=run.resumed,
            )
        )
        for res in run.results.values():
            if res.status == StageStatus.REUSED:
                self.emit(StageFinished(res.name, StageStatus.REUSED, 0.0, res.run_id))

    def _schedule_all(self, run: _Execution) -> EndState:
        """Schedule every stage; ``KILLED`` when an interrupt stopped them."""
        try:
            self._schedule(run)
        except KeyboardInterrupt:
            self.cancelled.set()
            return "KILLED"
        return "FINISHED"

    def _settle(self, run: _Execution, state: EndState) -> EndState:
        """Wait for every upload; a failed stage fails the run, whose pending stages are skipped."""
        for future in self.upload_futures:
            future.result()
        stopped = (StageStatus.FAILED, StageStatus.KILLED)
        if state == "FINISHED" and any(r.status in stopped for r in run.results.values()):
            state = "FAILED"
        if state != "FINISHED":
            for res in run.results.values():
                if res.status == StageStatus.PENDING:
                    res.status = StageStatus.SKIPPED
                    self.emit(StageFinished(res.name, StageStatus.SKIPPED))
        return state

    def _end(self, run: _Execution, state: EndState) -> PipelineResult:
        """Deliver the model of a finished run, then end the parent run as it ended.

        Registering, gating and ending the run are not stopped halfway: a
        signal that arrives meanwhile takes effect once the run is ended.
        """
        found_tags = self._missing_artifacts()
        delivered: Delivery | None = None
        with signals_deferred():
            try:
                delivered = self._deliver(run) if state == "FINISHED" else None
            except MlnbError as exc:
                found_tags[tags.ERROR] = str(exc)[: tags.VALUE_LIMIT]
                self._close_parent(run, "FAILED", found_tags)
                raise
            if delivered is not None:
                found_tags.update(delivered.run_tags)
            self._close_parent(run, state, found_tags)
        return PipelineResult(
            run.pipeline.name,
            run.run_id,
            run.experiment_id,
            state,
            [run.results[s.name] for s in run.pipeline.stages],
            run.workspace,
            self.uri,
            run.url,
            registration=delivered.registration if delivered else None,
            decision=delivered.decision if delivered else None,
        )

    def _missing_artifacts(self) -> dict[str, str]:
        """The results stand when a background write failed; the tags say what the store lacks."""
        if not self.upload_errors:
            return {}
        return {tags.ERROR: "not recorded: " + "; ".join(self.upload_errors)}

    def _deliver(self, run: _Execution) -> Delivery | None:
        """Register (and gate) the model of a finished run with a ``model:`` section."""
        model = run.pipeline.spec.model
        if model is None or not self.register:
            return None
        from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

        provenance = Provenance(
            run.run_id,
            run.experiment_id,
            run.spec_sha,
            run.lineage.get(MLFLOW_GIT_COMMIT),
            self.trigger,
            self.reason,
        )
        return deliver(
            self.uri, model, run.results, provenance, promote=self.promote, state=self.state
        )

    def _close_parent(
        self, run: _Execution, state: EndState, found_tags: Mapping[str, str]
    ) -> None:
        executed = sum(r.status == StageStatus.SUCCEEDED for r in run.results.values())
        run.tracker.log(run.run_id, tags=found_tags, metrics={"stages_executed": executed})
        run.tracker.finish(run.run_id, state)

    # -- scheduling --------------------------------------------------------------

    def _predicted(
        self, pipeline: Pipeline, results: Mapping[str, StageResult]
    ) -> tuple[list[Stage], dict[str, cachemod.CacheEntry]]:
        """Stages that will (probably) execute, in order, and the cache entries of the others.

        A stage downstream of a predicted miss counts as a miss: its key
        depends on outputs not made yet.
        """
        known = {n: r for n, r in results.items() if r.status == StageStatus.REUSED}
        misses = []
        hits = {}
        for stage in pipeline.stages:
            if stage.name in known:
                continue
            hit = None
            if not self.force and stage.cache and all(u in known for u in stage.upstream):
                hit = self.cache.get(self._key(stage, known))
            if hit is None:
                misses.append(stage)
            else:
                hits[stage.name] = hit
                known[stage.name] = StageResult(
                    stage.name,
                    StageStatus.CACHED,
                    outputs=dict(hit.outputs),
                    hashes=dict(hit.hashes),
                )
        return misses, hits

    def _prestart(self, misses: list[Stage]) -> None:
        self.executor.plan([s.kernel for s in misses], self.jobs)
        if not misses:
            return
        from mlnb.tracking import warm_html  # imports MLflow: after the kernels are on their way

        self.upload_futures.append(self.uploads.submit(warm_html))

    def _schedule(self, run: _Execution) -> None:
        """Hand each stage to a worker once its inputs are done; none more after a failure."""
        done = {n for n, r in run.results.items() if r.status == StageStatus.REUSED}
        running: dict[Future[None], str] = {}
        failed = False
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="mlnb-stage") as workers:
            try:
                while True:
                    if self.interrupt is not None and self.interrupt.is_set():
                        raise KeyboardInterrupt  # as if Ctrl-C reached this thread
                    if not failed:
                        for stage in self._ready(run, done, running):
                            running[workers.submit(self._run_stage, run, stage)] = stage.name
                    if not running:
                        break
                    finished, _ = wait(
                        list(running),
                        timeout=None if self.interrupt is None else INTERRUPT_POLL,
                        return_when=FIRST_COMPLETED,
                    )
                    for future in finished:
                        name = running.pop(future)
                        future.result()
                        if run.results[name].status.done:
                            done.add(name)
                        else:
                            failed = True
            except KeyboardInterrupt:
                self.cancelled.set()
                self.executor.cancel()
                wait(list(running))
                raise

    def _ready(
        self, run: _Execution, done: set[str], running: Mapping[Future[None], str]
    ) -> list[Stage]:
        """The pending stages whose inputs are done, as many as there are free workers."""
        ready = [
            stage
            for stage in run.pipeline.stages
            if run.results[stage.name].status == StageStatus.PENDING
            and stage.name not in running.values()
            and all(u in done for u in stage.upstream)
        ]
        return ready[: max(self.jobs - len(running), 0)]

    # -- one stage ---------------------------------------------------------------

    def _key(self, stage: Stage, known: Mapping[str, StageResult]) -> str:
        """The cache key: parameters with paths replaced by the hashes of their contents."""
        hashed = {
            name: {o: f"sha256:{h}" for o, h in res.hashes.items()} for name, res in known.items()
        }
        params = substitute(dict(stage.params), hashed)
        inputs = {}
        for name, value in params.items():
            path = project_path(value, self.root)
            if path is not None:
                inputs[name] = self._input_hash(path)
        return cachemod.stage_key(
            stage.info.fingerprint,
            stage.kernel,
            params,
            inputs,
            stage.outputs,
            store=without_userinfo(self.uri),
        )

    def _input_hash(self, path: Path) -> str:
        """The content hash of a project file a parameter names, computed once per run."""
        with self.lock:
            known = self.input_hashes.get(path)
        if known is None:
            known = hash_path(path)
            with self.lock:
                self.input_hashes[path] = known
        return known

    def _resolved_params(
        self, stage: Stage, results: Mapping[str, StageResult], outputs: Mapping[str, str]
    ) -> dict[str, Any]:
        outputs_of = {name: res.outputs for name, res in results.items()}
        params = substitute(dict(stage.params), outputs_of)
        for name, value in params.items():
            path = project_path(value, self.root)
            if path is not None:  # a project file: where the executor's kernel finds it
                params[name] = self.executor.input_path(path, self._input_hash(path))
        params.update(outputs)
        return params

    def _recorded(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` as MLflow records them: paths relative to the project or state folder."""
        found = {}
        for name, value in values.items():
            if isinstance(value, str) and Path(value).is_absolute():
                value = recorded(value, self.root)
            found[name] = value
        return found

    def _run_stage(self, run: _Execution, stage: Stage) -> None:
        """Run one stage; whatever goes wrong ends as a failed stage, never a crash."""
        res = run.results[stage.name]
        try:
            self._execute(run, stage)
        except Exception as exc:
            error = _as_stage_error(stage.name, exc)
            res.error, res.status = error, StageStatus.FAILED
            if res.run_id:
                with contextlib.suppress(MlnbError):
                    run.tracker.finish(res.run_id, "FAILED")
            self.emit(
                StageFinished(
                    stage.name, StageStatus.FAILED, res.seconds, res.run_id, error=str(error)
                )
            )

    def _execute(self, run: _Execution, stage: Stage) -> None:
        """Start the stage's run, then take it from the cache or execute its notebook."""
        started = time.perf_counter()
        outputs = {
            name: str(run.workspace / stage.name / rel) for name, rel in stage.outputs.items()
        }
        params = self._resolved_params(stage, run.results, outputs)
        key = self._key(stage, run.results) if stage.cache else ""
        hit = self.cache.get(key) if key and not self.force else None
        res = run.results[stage.name]
        run_id = res.run_id = self._start_stage_run(run, stage, key, cached=hit is not None)
        attempt = _Attempt(stage, res, run_id, key, params, outputs, started)
        if hit is not None:
            self._take_hit(run, attempt, hit)
        else:
            self._execute_notebook(run, attempt)

    def _start_stage_run(self, run: _Execution, stage: Stage, key: str, *, cached: bool) -> str:
        found_tags = {
            tags.KIND: tags.Kind.STAGE,
            tags.PIPELINE: run.pipeline.name,
            tags.STAGE: stage.name,
            tags.NOTEBOOK: recorded(stage.notebook, self.root),
            tags.FINGERPRINT: stage.info.fingerprint,
            tags.CACHE_KEY: key,
            tags.CACHED: str(cached).lower(),
            **run.lineage,
        }
        return run.tracker.start_run(
            run.experiment_id, stage.name, found_tags, parent_run_id=run.run_id
        )

    def _take_hit(self, run: _Execution, attempt: _Attempt, hit: cachemod.CacheEntry) -> None:
        """The stage's outputs come from the cache: link them into this run's workspace."""
        res = attempt.result
        for name, source in hit.outputs.items():
            link_into(Path(source), Path(attempt.outputs[name]))
        res.outputs, res.hashes = attempt.outputs, dict(hit.hashes)
        res.source_run_id = hit.run_id
        res.seconds = attempt.elapsed()
        res.status = StageStatus.CACHED
        run.tracker.log(
            attempt.run_id,
            params=self._recorded(attempt.params),
            tags={
                tags.CACHED_FROM: hit.run_id,
                tags.OUTPUTS: json.dumps(self._recorded(attempt.outputs)),
            },
        )
        run.tracker.finish(attempt.run_id, "FINISHED")
        self.emit(
            StageFinished(
                attempt.name,
                StageStatus.CACHED,
                res.seconds,
                attempt.run_id,
                source_run_id=hit.run_id,
            )
        )

    def _execute_notebook(self, run: _Execution, attempt: _Attempt) -> None:
        """Execute the stage's notebook with the executor, then record how it ended.

        Its parameters are logged by the upload thread while the notebook runs.
        """
        params = self._recorded(attempt.params)
        outputs = json.dumps(self._recorded(attempt.outputs))

        def log() -> None:
            try:
                run.tracker.log(attempt.run_id, params=params, tags={tags.OUTPUTS: outputs})
            except MlnbError as exc:
                self.upload_errors.append(f"parameters of stage '{attempt.name}': {exc}")

        self.upload_futures.append(self.uploads.submit(log))
        for path in attempt.outputs.values():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        (run.workspace / attempt.name).mkdir(parents=True, exist_ok=True)
        executed = run.workspace / f"{attempt.name}.ipynb"
        self.emit(StageStarted(attempt.name, attempt.run_id))
        try:
            hashes = self._run_notebook(run, attempt, executed)
        except StageError as exc:
            self._record_failure(run, attempt, exc, executed)
        else:
            self._record_success(run, attempt, hashes, executed)

    def _run_notebook(self, run: _Execution, attempt: _Attempt, executed: Path) -> dict[str, str]:
        """Execute with papermill; return the hash of each declared output.

        Raises:
            StageError: the notebook failed, or left a declared output unwritten.
        """
        stage = attempt.stage
        env = {
            **client_env(self.uri),
            "MLFLOW_RUN_ID": attempt.run_id,
            "MLFLOW_EXPERIMENT_ID": run.experiment_id,
            "MLNB_STAGE": stage.name,
            "MLNB_WORKSPACE": str(run.workspace),
        }
        job = StageJob(
            stage.name,
            stage.notebook,
            executed,
            attempt.params,
            stage.kernel,
            env,
            timeout=stage.timeout,
            resources=stage.resources,
            on_cell=lambda done, total: self.emit(StageProgress(stage.name, done, total)),
            on_output=(lambda text: self.emit(StageOutput(stage.name, text)))
            if self.log_output
            else None,
        )
        worker = self.executor.run(job)
        if worker is not None:
            run.tracker.log(attempt.run_id, tags={tags.WORKER: worker})
        for name, path in attempt.outputs.items():
            if not Path(path).exists():
                raise MissingOutputError(stage.name, name, path, executed)
        return {name: hash_path(Path(path)) for name, path in attempt.outputs.items()}

    def _record_failure(
        self, run: _Execution, attempt: _Attempt, error: StageError, executed: Path
    ) -> None:
        res = attempt.result
        killed = self.cancelled.is_set()  # the kernel was killed on purpose
        if killed:
            error = StageError(attempt.name, "interrupted", error.notebook)
        res.seconds = attempt.elapsed()
        res.error = error
        res.status = StageStatus.KILLED if killed else StageStatus.FAILED
        res.notebook = str(executed) if executed.exists() else None
        run.tracker.log(attempt.run_id, tags={tags.ERROR: str(error)[: tags.VALUE_LIMIT]})
        self._upload(run, attempt.run_id, executed, "KILLED" if killed else "FAILED")
        self.emit(
            StageFinished(attempt.name, res.status, res.seconds, attempt.run_id, error=str(error))
        )

    def _record_success(
        self, run: _Execution, attempt: _Attempt, hashes: dict[str, str], executed: Path
    ) -> None:
        res = attempt.result
        res.outputs, res.hashes, res.notebook = attempt.outputs, hashes, str(executed)
        if attempt.key:
            self.cache.put(
                cachemod.CacheEntry(
                    attempt.key, attempt.name, attempt.run_id, run.run_id, attempt.outputs, hashes
                )
            )
        res.seconds = attempt.elapsed()
        res.status = StageStatus.SUCCEEDED
        self._upload(run, attempt.run_id, executed, "FINISHED")
        self.emit(StageFinished(attempt.name, StageStatus.SUCCEEDED, res.seconds, attempt.run_id))

    def _upload(self, run: _Execution, run_id: str, executed: Path, state: EndState) -> None:
        """Log the executed notebook and its HTML in the background, then end the run."""
        tracker = run.tracker

        def upload() -> None:
            from mlnb import tracking

            try:
                if executed.exists():
                    tracker.log_artifact(run_id, executed, "notebook")
                    html = tracking.render_html(executed, executed.with_suffix(".html"))
                    tracker.log_artifact(run_id, html, "notebook")
            except Exception as exc:  # a notebook nbconvert cannot render, a full disk
                self.upload_errors.append(f"{executed.name}: {exc}")
            finally:
                with contextlib.suppress(MlnbError):
                    tracker.finish(run_id, state)

        self.upload_futures.append(self.uploads.submit(upload))


def _source(root: Path, spec_path: Path) -> tuple[dict[str, str], str]:
    """What ties a run to its source: the lineage tags, and the spec file's sha256."""
    from mlnb.tracking import lineage_tags

    return lineage_tags(root, spec_path.resolve()), hashlib.sha256(
        spec_path.read_bytes()
    ).hexdigest()


def _resumable(tracker: Tracker, run_id: str, spec_path: Path, root: Path) -> Run:
    """The MLflow run ``run_id``, when it is a pipeline run of ``spec_path`` that did not finish.

    Raises:
        PipelineError: it is not a pipeline run, it finished, or it ran another spec.
        TrackingError: there is no such run.
    """
    run = tracker.get_run(run_id)
    found_tags = run.data.tags
    if found_tags.get(tags.KIND) != tags.Kind.PIPELINE:
        raise PipelineError(
            f"run '{run_id}' is not an mlnb pipeline run; pass the parent "
            "run id that 'mlnb run' printed",
            run_id=run_id,
        )
    if run.info.status == "FINISHED":
        raise PipelineError(
            f"run '{run_id}' finished successfully: there is nothing to "
            "resume; start a new run with 'mlnb run'",
            run_id=run_id,
        )
    if located(found_tags.get(tags.SPEC, ""), root).resolve() != spec_path.resolve():
        raise PipelineError(
            f"run '{run_id}' ran {found_tags.get(tags.SPEC)}, not "
            f"{spec_path.resolve()}; resume it with that spec",
            run_id=run_id,
        )
    return run


def earlier_attempts(
    tracker: Tracker, experiment_id: str, run_id: str, pipeline: Pipeline, root: Path
) -> dict[str, StageResult]:
    """Each stage's result as the run left it: reused when its latest attempt succeeded."""
    results = {s.name: StageResult(s.name) for s in pipeline.stages}
    children = sorted(
        tracker.child_runs(experiment_id, run_id), key=lambda r: r.info.start_time or 0
    )
    for child in children:  # the latest attempt of each stage wins
        name = child.data.tags.get(tags.STAGE)
        if name in results:
            results[name] = _attempt_result(name, child, root)
    return results


def _attempt_result(name: str, child: Run, root: Path) -> StageResult:
    """A stage's earlier attempt: reused if it finished and its outputs are still there."""
    recorded_outputs = json.loads(child.data.tags.get(tags.OUTPUTS) or "{}")
    outputs = {k: str(located(v, root)) for k, v in recorded_outputs.items()}
    ok = child.info.status == "FINISHED" and all(Path(p).exists() for p in outputs.values())
    return StageResult(
        name,
        StageStatus.REUSED if ok else StageStatus.PENDING,
        run_id=child.info.run_id,
        outputs=outputs,
        hashes={k: hash_path(Path(p)) for k, p in outputs.items()} if ok else {},
        source_run_id=child.data.tags.get(tags.CACHED_FROM) or None,
    )


def _as_stage_error(stage: str, exc: Exception) -> StageError:
    """Any error of a stage as a :class:`StageError` (an unexpected one chained as its cause)."""
    if isinstance(exc, StageError):
        return exc
    reason = str(exc) if isinstance(exc, MlnbError) else f"{type(exc).__name__}: {exc}"
    try:
        raise StageError(stage, reason) from exc
    except StageError as error:
        return error


def _pipeline_params(pipeline: Pipeline) -> dict[str, Any]:
    params: dict[str, Any] = dict(pipeline.spec.params)
    if pipeline.profile:
        params.update(pipeline.spec.profiles.get(pipeline.profile, {}))
    params.update(pipeline.overrides)
    return params
