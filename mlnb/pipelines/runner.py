"""Run a pipeline: a DAG of notebook stages, tracked, cached and resumable.

The scheduler runs in the calling thread and hands stages to a thread pool of
``jobs`` workers; each stage blocks on its own kernel, so threads are enough
for parallelism (the work happens in the kernels' processes). Kernels are
pre-started (see :mod:`mlnb.kernels`) for the stages that will execute, which
are known in advance for all but the stages downstream of a cache miss.

MLflow and papermill are imported only once the kernels have started
starting, so their import time overlaps with kernel start-up. The stage
run's artifacts (executed notebook and its HTML rendering) are uploaded by a
background thread, so a downstream stage starts as soon as its inputs exist;
the pipeline run ends only when every upload is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlnb import tags
from mlnb._files import hash_path, link_into
from mlnb.engine.kernels import KernelPool
from mlnb.errors import MissingOutputError, MlnbError, PipelineError, StageError
from mlnb.pipelines import cache as cachemod
from mlnb.pipelines.events import (
    EventCallback,
    RunStarted,
    StageFinished,
    StageOutput,
    StageProgress,
    StageStarted,
)
from mlnb.pipelines.locate import load_pipeline
from mlnb.pipelines.results import PipelineResult, StageResult
from mlnb.specs.pipeline import (
    Pipeline,
    Stage,
    project_path,
    project_root,
    substitute,
)
from mlnb.store import tracking_uri as default_tracking_uri

if TYPE_CHECKING:
    from mlnb.models.registry import Decision, Registration
    from mlnb.tracking import Tracker


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
        promote: with a ``model:`` section, run the gate after registering
            the model (it always becomes ``challenger``).
        trigger: why this run happens (``manual``, ``schedule``, ``drift``,
            ``performance``), recorded on the run and the model version.
        reason: the evidence behind the trigger (``drift: p=0.0003 on 3 of
            20 features``), recorded beside it.

    Returns:
        The :class:`PipelineResult` of a run whose stages all succeeded.

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
    emit = on_event or (lambda event: None)
    if spec is None:
        raise PipelineError("name the pipeline spec to run (or to resume a run of)")
    spec_path = spec.path if isinstance(spec, Pipeline) else Path(spec)
    if resume is None:
        pipeline: Pipeline | None = (
            spec if isinstance(spec, Pipeline) else load_pipeline(spec, profile, overrides)
        )
        root = pipeline.root
    else:
        if profile or overrides:
            raise PipelineError(
                "--resume runs with the parameters of the run it resumes; "
                "drop --profile and -p, or start a new run"
            )
        pipeline = None
        root = project_root(spec_path)
    runner = _Runner(
        root,
        emit,
        jobs=jobs,
        force=force,
        log_output=log_output,
        tracking_uri=tracking_uri,
        promote=promote,
        trigger=trigger,
        reason=reason,
    )
    try:
        result = runner.run(pipeline, resume, spec_path)
    finally:
        runner.close()
    result.seconds = time.perf_counter() - started
    if result.status != "FINISHED":
        failures = result.failures
        what = "; ".join(str(f) for f in failures) or "interrupted"
        raise PipelineError(
            f"pipeline '{result.pipeline}' {result.status.lower()}: {what}",
            run_id=result.run_id,
            failures=failures,
            result=result,
        )
    return result


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
    ) -> None:
        self.root = root
        self.promote = promote
        self.trigger = trigger
        self.reason = reason
        self.emit = emit
        self.jobs = jobs
        self.force = force
        self.log_output = log_output
        self.uri = tracking_uri or default_tracking_uri(root)
        self.input_hashes: dict[Path, str] = {}
        self.cache = cachemod.Cache(root)
        self.pool: KernelPool | None = None
        self.uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlnb-upload")
        self.upload_futures: list[Future[None]] = []
        self.upload_errors: list[str] = []
        self.cancelled = threading.Event()
        self.lock = threading.Lock()

    def close(self) -> None:
        self.uploads.shutdown(wait=True)
        if self.pool is not None:
            self.pool.close()

    # -- the run -----------------------------------------------------------------

    def run(self, pipeline: Pipeline | None, resume: str | None, spec_path: Path) -> PipelineResult:
        uri = self.uri
        if pipeline is not None:
            # start kernels before importing MLflow: the two overlap
            self._prestart(pipeline, self._predicted_misses(pipeline, {}))
        from mlnb import tracking

        tracker = tracking.Tracker(self.root, uri)
        self.tracker = tracker
        self.lineage = tracking.lineage_tags(self.root, spec_path.resolve())
        self.spec_sha = hashlib.sha256(spec_path.read_bytes()).hexdigest()
        results: dict[str, StageResult]
        if resume is None:
            assert pipeline is not None
            experiment_id = tracker.experiment_id(pipeline.name)
            run_id = self._start_parent(tracker, experiment_id, pipeline)
            results = {s.name: StageResult(s.name) for s in pipeline.stages}
        else:
            pipeline, experiment_id, run_id, results = self._reopen(tracker, resume, spec_path)
            self._prestart(pipeline, self._predicted_misses(pipeline, results))
        self.pipeline = pipeline
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.workspace = cachemod.workspace(pipeline.root, run_id)
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.emit(
            RunStarted(
                pipeline.name,
                run_id,
                experiment_id,
                tuple(s.name for s in pipeline.stages),
                str(self.workspace),
                uri,
                tracker.run_url(experiment_id, run_id),
                resumed=resume is not None,
            )
        )
        for res in results.values():
            if res.status == "reused":
                self.emit(StageFinished(res.name, "reused", 0.0, res.run_id))

        status = "FINISHED"
        try:
            self._schedule(pipeline, results)
        except KeyboardInterrupt:
            self.cancelled.set()
            status = "KILLED"
        for future in self.upload_futures:
            future.result()
        if status == "FINISHED" and any(r.status in ("failed", "killed") for r in results.values()):
            status = "FAILED"
        if status != "FINISHED":
            for res in results.values():
                if res.status == "pending":
                    res.status = "skipped"
                    self.emit(StageFinished(res.name, "skipped"))
        executed = sum(r.status == "succeeded" for r in results.values())
        found_tags = {}
        if self.upload_errors:  # the run's results stand; say what is missing from the store
            found_tags[tags.ERROR] = "artifacts not uploaded: " + "; ".join(self.upload_errors)
        registration = decision = None
        delivery_error: MlnbError | None = None
        # registering, gating and ending the run are not stopped halfway: a
        # signal that arrives meanwhile takes effect once the run is ended
        with signals_deferred():
            if status == "FINISHED" and pipeline.spec.model is not None:
                try:
                    registration, decision = self._deliver(pipeline, results)
                    found_tags[tags.MODEL_VERSION] = registration.version
                    if decision is not None:
                        found_tags[tags.MODEL_DECISION] = (
                            "promoted"
                            if decision.promoted
                            else "champion"
                            if decision.champion == decision.version
                            else "rejected"
                        )
                except MlnbError as exc:
                    delivery_error, status = exc, "FAILED"
                    found_tags[tags.ERROR] = str(exc)[:5000]
            tracker.log(run_id, tags=found_tags, metrics={"stages_executed": executed})
            tracker.finish(run_id, status)
        if delivery_error is not None:
            raise delivery_error
        return PipelineResult(
            pipeline.name,
            run_id,
            experiment_id,
            status,
            [results[s.name] for s in pipeline.stages],
            self.workspace,
            uri,
            tracker.run_url(experiment_id, run_id),
            registration=registration,
            decision=decision,
        )

    def _deliver(
        self, pipeline: Pipeline, results: Mapping[str, StageResult]
    ) -> tuple[Registration, Decision | None]:
        """Register the model the run delivered, then (unless told not to) gate it."""
        from mlnb import tracking
        from mlnb.models import registry
        from mlnb.specs.pipeline import holdout_reference, output_reference

        model = pipeline.spec.model
        assert model is not None
        producer = results[model.stage]
        source_run = producer.source_run_id or producer.run_id
        assert source_run is not None
        ref = holdout_reference(model)
        holdout = Path(results[ref.stage].outputs[ref.output])
        config = registry.GateConfig.from_spec(model)
        found_tags = {
            tags.PIPELINE_RUN: self.run_id,
            tags.SOURCE_RUN: source_run,
            tags.TRIGGER: self.trigger,
            tags.TRIGGER_REASON: self.reason,
            tags.SPEC_SHA: self.spec_sha,
            **registry.gate_tags(config, holdout),
            **{
                f"{tags.DATA_PREFIX}{name}.{out}": digest
                for name, res in results.items()
                for out, digest in res.hashes.items()
            },
        }
        if model.training_data is not None:
            data = output_reference(model.training_data)
            found_tags[tags.TRAINING_DATA] = results[data.stage].outputs[data.output]
        if self.lineage.get(tracking.MLFLOW_GIT_COMMIT):
            found_tags[tags.GIT_COMMIT] = self.lineage[tracking.MLFLOW_GIT_COMMIT]
        reg = registry.Registry(self.uri)
        registration = reg.register(
            model.name, source_run, self.experiment_id, model.artifact, found_tags
        )
        if not registration.created:  # the version exists: keep its lineage, note this run
            reg.tag_version(
                model.name,
                registration.version,
                {
                    tags.PIPELINE_RUN: self.run_id,
                    tags.TRIGGER: self.trigger,
                    tags.TRIGGER_REASON: self.reason,
                    **registry.gate_tags(config, holdout),
                },
            )
        if not self.promote:
            return registration, None
        decision = reg.gate(
            model.name,
            registration.version,
            config,
            holdout,
            parent_run_id=self.run_id,
            experiment_id=self.experiment_id,
        )
        return registration, decision

    def _start_parent(self, tracker: Tracker, experiment_id: str, pipeline: Pipeline) -> str:

        found_tags = {
            tags.KIND: tags.Kind.PIPELINE,
            tags.PIPELINE: pipeline.name,
            tags.SPEC: str(pipeline.path),
            tags.SPEC_SHA: self.spec_sha,
            tags.PROFILE: pipeline.profile or "",
            tags.OVERRIDES: json.dumps(dict(pipeline.overrides), default=str),
            tags.TRIGGER: self.trigger,
            tags.TRIGGER_REASON: self.reason,
            **self.lineage,
        }
        run_id = tracker.start_run(experiment_id, pipeline.name, found_tags)
        tracker.log(
            run_id,
            params=_pipeline_params(pipeline),
            tags={tags.WORKSPACE: str(cachemod.workspace(pipeline.root, run_id))},
        )
        tracker.log_artifact(run_id, pipeline.path, "spec")
        return run_id

    def _reopen(
        self, tracker: Tracker, run_id: str, spec_path: Path
    ) -> tuple[Pipeline, str, str, dict[str, StageResult]]:

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
        if Path(found_tags.get(tags.SPEC, "")) != spec_path.resolve():
            raise PipelineError(
                f"run '{run_id}' ran {found_tags.get(tags.SPEC)}, not "
                f"{spec_path.resolve()}; resume it with that spec",
                run_id=run_id,
            )
        overrides = json.loads(found_tags.get(tags.OVERRIDES) or "{}")
        pipeline = load_pipeline(spec_path, found_tags.get(tags.PROFILE) or None, overrides)
        self.root = pipeline.root
        self.cache = cachemod.Cache(pipeline.root)
        experiment_id = str(run.info.experiment_id)
        results = {s.name: StageResult(s.name) for s in pipeline.stages}
        children = sorted(
            tracker.child_runs(experiment_id, run_id), key=lambda r: r.info.start_time or 0
        )
        for child in children:  # the latest attempt of each stage wins
            name = child.data.tags.get(tags.STAGE)
            if name not in results:
                continue
            outputs = json.loads(child.data.tags.get(tags.OUTPUTS) or "{}")
            ok = child.info.status == "FINISHED" and all(Path(p).exists() for p in outputs.values())
            results[name] = StageResult(
                name,
                "reused" if ok else "pending",
                run_id=child.info.run_id,
                outputs=outputs,
                hashes={k: hash_path(Path(p)) for k, p in outputs.items()} if ok else {},
            )
        tracker.reopen(run_id)
        return pipeline, experiment_id, run_id, results

    # -- scheduling --------------------------------------------------------------

    def _predicted_misses(
        self, pipeline: Pipeline, results: Mapping[str, StageResult]
    ) -> list[Stage]:
        """Stages that will (probably) execute, in order: those not known to hit the cache."""
        known = {n: r for n, r in results.items() if r.status == "reused"}
        misses = []
        for stage in pipeline.stages:
            if stage.name in known:
                continue
            hit = None
            if not self.force and stage.cache and all(u in known for u in stage.upstream):
                key = self._key(stage, known)
                hit = self.cache.get(key)
            if hit is None:
                misses.append(stage)
            else:
                known[stage.name] = StageResult(
                    stage.name, "cached", outputs=dict(hit.outputs), hashes=dict(hit.hashes)
                )
        return misses

    def _prestart(self, pipeline: Pipeline, misses: list[Stage]) -> None:
        self.to_execute = [s.kernel for s in misses]
        if not misses:
            return
        pool = self._ensure_pool()
        for kernel in self.to_execute[: self.jobs]:
            pool.prestart(kernel)
        self.prestarted = min(self.jobs, len(self.to_execute))
        from mlnb.tracking import warm_html  # imports MLflow: after the kernels are on their way

        self.upload_futures.append(self.uploads.submit(warm_html))

    def _next_kernel(self) -> None:
        """A stage took a kernel: start the one the next stage will need."""
        with self.lock:
            if self.pool is not None and self.prestarted < len(self.to_execute):
                self.pool.prestart(self.to_execute[self.prestarted])
                self.prestarted += 1

    def _schedule(self, pipeline: Pipeline, results: dict[str, StageResult]) -> None:
        done = {n for n, r in results.items() if r.status == "reused"}
        running: dict[Future[None], str] = {}
        failed = False
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="mlnb-stage") as workers:
            try:
                while True:
                    if not failed:
                        for stage in pipeline.stages:
                            if (
                                results[stage.name].status == "pending"
                                and stage.name not in running.values()
                                and all(u in done for u in stage.upstream)
                                and len(running) < self.jobs
                            ):
                                future = workers.submit(self._run_stage, stage, results)
                                running[future] = stage.name
                    if not running:
                        break
                    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for future in finished:
                        name = running.pop(future)
                        future.result()
                        if results[name].status in ("succeeded", "cached"):
                            done.add(name)
                        else:
                            failed = True
            except KeyboardInterrupt:
                self.cancelled.set()
                if self.pool is not None:
                    self.pool.kill_all()
                wait(list(running))
                raise

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
            stage.info.fingerprint, stage.kernel, params, inputs, stage.outputs
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
            if path is not None:
                params[name] = str(path.resolve())
        params.update(outputs)
        return params

    def _run_stage(self, stage: Stage, results: dict[str, StageResult]) -> None:
        """Run one stage; whatever goes wrong ends as a failed stage, never a crash."""
        res = results[stage.name]
        try:
            self._execute(stage, results)
        except Exception as exc:
            if isinstance(exc, StageError):
                error = exc
            else:
                reason = str(exc) if isinstance(exc, MlnbError) else f"{type(exc).__name__}: {exc}"
                error = StageError(stage.name, reason)
                error.__cause__ = exc
            res.error, res.status = error, "failed"
            if res.run_id:
                with contextlib.suppress(MlnbError):
                    self.tracker.finish(res.run_id, "FAILED")
            self.emit(
                StageFinished(stage.name, "failed", res.seconds, res.run_id, error=str(error))
            )

    def _execute(self, stage: Stage, results: dict[str, StageResult]) -> None:

        res = results[stage.name]
        started = time.perf_counter()
        stage_dir = self.workspace / stage.name
        outputs = {name: str(stage_dir / rel) for name, rel in stage.outputs.items()}
        params = self._resolved_params(stage, results, outputs)
        key = self._key(stage, results) if stage.cache else ""
        hit = self.cache.get(key) if key and not self.force else None
        found_tags = {
            tags.KIND: tags.Kind.STAGE,
            tags.PIPELINE: self.pipeline.name,
            tags.STAGE: stage.name,
            tags.NOTEBOOK: str(stage.notebook),
            tags.FINGERPRINT: stage.info.fingerprint,
            tags.CACHE_KEY: key,
            tags.CACHED: str(hit is not None).lower(),
        }
        found_tags.update(self.lineage)
        tracker = self.tracker
        run_id = tracker.start_run(
            self.experiment_id, stage.name, found_tags, parent_run_id=self.run_id
        )
        res.run_id = run_id

        if hit is not None:
            for name, source in hit.outputs.items():
                link_into(Path(source), Path(outputs[name]))
            res.outputs, res.hashes = outputs, dict(hit.hashes)
            res.source_run_id = hit.run_id
            res.seconds = time.perf_counter() - started
            res.status = "cached"
            tracker.log(
                run_id,
                params=params,
                tags={
                    tags.CACHED_FROM: hit.run_id,
                    tags.OUTPUTS: json.dumps(outputs),
                },
            )
            tracker.finish(run_id, "FINISHED")
            self.emit(
                StageFinished(stage.name, "cached", res.seconds, run_id, source_run_id=hit.run_id)
            )
            return

        self._next_kernel()
        tracker.log(run_id, params=params, tags={tags.OUTPUTS: json.dumps(outputs)})
        for path in outputs.values():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        stage_dir.mkdir(parents=True, exist_ok=True)
        executed = self.workspace / f"{stage.name}.ipynb"
        self.emit(StageStarted(stage.name, run_id))
        env = {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_RUN_ID": run_id,
            "MLFLOW_EXPERIMENT_ID": self.experiment_id,
            "MLNB_STAGE": stage.name,
            "MLNB_WORKSPACE": str(self.workspace),
        }
        from mlnb.engine.execute import execute_stage

        try:
            execute_stage(
                stage.name,
                stage.notebook,
                executed,
                params,
                self._ensure_pool(),
                kernel_name=stage.kernel,
                env=env,
                timeout=stage.timeout,
                on_cell=lambda done, total: self.emit(StageProgress(stage.name, done, total)),
                on_output=(lambda text: self.emit(StageOutput(stage.name, text)))
                if self.log_output
                else None,
            )
            for name, path in outputs.items():
                if not Path(path).exists():
                    raise MissingOutputError(stage.name, name, path, executed)
            hashes = {name: hash_path(Path(path)) for name, path in outputs.items()}
        except StageError as exc:
            if self.cancelled.is_set():  # the kernel was killed on purpose
                exc = StageError(stage.name, "interrupted", exc.notebook)
            res.seconds = time.perf_counter() - started
            res.error = exc
            res.status = "killed" if self.cancelled.is_set() else "failed"
            res.notebook = str(executed) if executed.exists() else None
            tracker.log(run_id, tags={tags.ERROR: str(exc)[:5000]})
            self._upload(run_id, executed, "KILLED" if self.cancelled.is_set() else "FAILED")
            self.emit(StageFinished(stage.name, res.status, res.seconds, run_id, error=str(exc)))
            return
        res.outputs, res.hashes, res.notebook = outputs, hashes, str(executed)
        if key:
            self.cache.put(
                cachemod.CacheEntry(key, stage.name, run_id, self.run_id, outputs, hashes)
            )
        res.seconds = time.perf_counter() - started
        res.status = "succeeded"
        self._upload(run_id, executed, "FINISHED")
        self.emit(StageFinished(stage.name, "succeeded", res.seconds, run_id))

    def _ensure_pool(self) -> KernelPool:
        """The kernel pool; created here when no stage was expected to execute."""
        with self.lock:
            if self.pool is None:
                self.pool = KernelPool(env={"MLFLOW_TRACKING_URI": self.uri}, cwd=self.root)
            return self.pool

    def _upload(self, run_id: str, executed: Path, status: str) -> None:
        """Log the executed notebook and its HTML in the background, then end the run."""

        def upload() -> None:
            from mlnb import tracking

            try:
                if executed.exists():
                    self.tracker.log_artifact(run_id, executed, "notebook")
                    html = tracking.render_html(executed, executed.with_suffix(".html"))
                    self.tracker.log_artifact(run_id, html, "notebook")
            except Exception as exc:  # a notebook nbconvert cannot render, a full disk
                self.upload_errors.append(f"{executed.name}: {exc}")
            finally:
                with contextlib.suppress(MlnbError):
                    self.tracker.finish(run_id, status)

        self.upload_futures.append(self.uploads.submit(upload))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then act on them.

    Wraps what must not stop halfway (registering and gating a model). Only
    the main thread can handle signals; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda n, _f: caught.append(n))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def _pipeline_params(pipeline: Pipeline) -> dict[str, Any]:
    params: dict[str, Any] = dict(pipeline.spec.params)
    if pipeline.profile:
        params.update(pipeline.spec.profiles.get(pipeline.profile, {}))
    params.update(pipeline.overrides)
    return params
