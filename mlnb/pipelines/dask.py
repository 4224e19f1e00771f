"""``--executor dask``: each stage notebook runs on a worker of a Dask cluster.

The runner stays where it is — the DAG order, the cache, the MLflow runs and
``--jobs`` are decided in this process — and :class:`DaskExecutor` submits
one task per stage (:func:`mlnb.engine.distributed.run_stage`). Dask does the
placement, moves a task off a worker that was lost, and honours a stage's
``resources`` (``{GPU: 1}`` reaches only workers started with
``--resources GPU=1``). mlnb adds no scheduling of its own.

A worker needs mlnb's environment, the store and the shared state folder
(``MLNB_STATE_DIR``, at the same path), not a checkout of the project: the
task carries the notebook's bytes, and a project file a parameter names is
copied once, by content hash, to ``<state>/inputs/<sha>/<name>``. Executed
notebooks and declared outputs are written to the state folder, where the
runner reads them as it does locally.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlnb.engine.distributed import (
    INTERRUPTED,
    PLUGIN_NAME,
    KernelPoolPlugin,
    RemoteStage,
    StageOutcome,
    prewarm,
    rebuild_error,
    run_stage,
)
from mlnb.errors import MlnbError, StageError
from mlnb.pipelines.executors import StageJob

if TYPE_CHECKING:
    from distributed import Client, Event, Future

#: the setting that names the scheduler when ``--scheduler`` is not given
SCHEDULER_ENV = "MLNB_SCHEDULER"
#: seconds to wait for the scheduler to answer before saying it cannot be reached
CONNECT_TIMEOUT = 10.0
#: seconds an interrupted task may take to report its killed kernel before it is dropped
CANCEL_GRACE = 10.0
#: seconds beyond a stage's own timeout that its task may take to report (a lost worker)
RESULT_GRACE = 60.0
#: how often a waiting stage looks whether the run was interrupted
POLL = 0.25


class DaskExecutor:
    """Stages as tasks on the Dask cluster whose scheduler is at ``scheduler``.

    Args:
        scheduler: the scheduler's address (``tcp://HOST:PORT``).
        state: the shared state folder (the same path on every worker).
        connect_timeout: seconds to wait for the scheduler.

    Raises:
        MlnbError: the scheduler does not answer within ``connect_timeout``.
    """

    def __init__(
        self, scheduler: str, state: Path, connect_timeout: float = CONNECT_TIMEOUT
    ) -> None:
        from distributed import Client, Event

        self.scheduler = scheduler
        self._state = state
        try:
            self._client: Client = Client(scheduler, timeout=connect_timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise MlnbError(
                f"cannot reach the Dask scheduler at {scheduler} within {connect_timeout:g} s "
                f"({exc}); start one with 'dask scheduler' and workers with 'dask worker "
                f"{scheduler}', or point --scheduler / {SCHEDULER_ENV} at the running one"
            ) from exc
        self._token = uuid.uuid4().hex[:12]
        self._cancel: Event = Event(f"mlnb-cancel-{self._token}", self._client)
        self._topic = f"mlnb-{self._token}"
        self._jobs: dict[str, StageJob] = {}
        self._guard = threading.Lock()
        self._cancelled = threading.Event()
        self._client.register_plugin(KernelPoolPlugin(), name=PLUGIN_NAME)
        self._client.subscribe_topic(self._topic, self._on_event)

    def plan(self, kernels: Sequence[str], jobs: int) -> None:
        if kernels:  # every worker's pool starts the first stages' kernels ahead
            self._client.run(prewarm, list(dict.fromkeys(kernels)))

    def input_path(self, path: Path, digest: str) -> str:
        """A copy of project file ``path`` in the shared folder, stored once per content."""
        target = self._state / "inputs" / digest / path.name
        if not target.exists():
            partial = target.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.partial"
            partial.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, partial)
            else:
                shutil.copyfile(path, partial)
            try:
                partial.rename(target)
            except OSError:  # another run put the same content there first
                shutil.rmtree(partial, ignore_errors=True)
                partial.unlink(missing_ok=True)
        return str(target)

    def run(self, job: StageJob) -> str | None:
        if self._cancelled.is_set():
            raise StageError(job.stage, INTERRUPTED)
        self._check_resources(job)
        key = f"mlnb-{job.stage}-{uuid.uuid4().hex[:12]}"
        remote = RemoteStage(
            stage=job.stage,
            key=key,
            name=job.notebook.name,
            source=job.notebook.read_bytes(),
            executed=str(job.executed),
            params=dict(job.params),
            kernel=job.kernel,
            env=dict(job.env),
            timeout=job.timeout,
            cancel=self._cancel.name,
            topic=self._topic,
            forward_output=job.on_output is not None,
        )
        with self._guard:
            self._jobs[key] = job
        try:
            future = self._client.submit(
                run_stage, remote, key=key, pure=False, resources=dict(job.resources) or None
            )
            outcome = self._wait(job, future)
        finally:
            with self._guard:
                self._jobs.pop(key, None)
        if outcome["error"] is not None:
            raise rebuild_error(outcome["error"])
        return outcome["worker"]

    def cancel(self) -> None:
        self._cancelled.set()
        try:
            self._cancel.set()
        except Exception:  # the scheduler is gone: the waits below give up on their own
            return

    def close(self) -> None:
        try:
            self._client.unsubscribe_topic(self._topic)
            if self._cancelled.is_set():
                self._cancel.clear()
        except Exception:
            pass
        finally:
            self._client.close()

    # -- helpers -------------------------------------------------------------------

    def _wait(self, job: StageJob, future: Future) -> StageOutcome:
        """The task's outcome; a lost scheduler or worker ends as the stage's error."""
        limit = None if job.timeout is None else time.monotonic() + job.timeout + RESULT_GRACE
        cancelled_at: float | None = None
        while True:
            try:
                outcome: StageOutcome = future.result(timeout=POLL)
                return outcome
            except FutureTimeout:
                pass
            except Exception as exc:  # a lost worker or scheduler, a dropped task
                raise StageError(job.stage, self._lost(exc)) from None
            now = time.monotonic()
            if self._cancelled.is_set():
                cancelled_at = cancelled_at or now
                if now - cancelled_at > CANCEL_GRACE:
                    future.cancel()
                    raise StageError(job.stage, INTERRUPTED)
            if limit is not None and now > limit:
                future.cancel()
                raise StageError(
                    job.stage,
                    f"no Dask worker reported the stage within its timeout of {job.timeout:g} s "
                    f"(+{RESULT_GRACE:g} s); check the workers of {self.scheduler}",
                )

    def _lost(self, exc: BaseException) -> str:
        if type(exc).__name__ == "KilledWorker":
            return (
                f"the Dask workers that ran it died (it was moved and lost again: {exc}); "
                "look at the workers' logs for why (memory limit, a crash)"
            )
        if isinstance(exc, CancelledError) and not self._cancelled.is_set():
            return f"the Dask scheduler at {self.scheduler} dropped the task (connection lost?)"
        if isinstance(exc, CancelledError):
            return INTERRUPTED
        return f"its Dask task failed on {self.scheduler}: {type(exc).__name__}: {exc}"

    def _check_resources(self, job: StageJob) -> None:
        """A stage whose resources no worker offers would wait forever: say so now."""
        if not job.resources:
            return
        try:  # distributed >= 2025.1 lists only the first five workers unless asked for all
            info = self._client.scheduler_info(n_workers=-1)
        except TypeError:  # older: always all of them
            info = self._client.scheduler_info()
        workers = info.get("workers", {}).values()
        for name, amount in job.resources.items():
            if not any(w.get("resources", {}).get(name, 0) >= amount for w in workers):
                raise StageError(
                    job.stage,
                    f"needs resource {name}={amount:g}, which no worker of {self.scheduler} "
                    f"offers; start one with 'dask worker {self.scheduler} --resources "
                    f"{name}={amount:g}' or change the stage's 'resources'",
                )

    def _on_event(self, event: tuple[float, Any]) -> None:
        """A worker's progress or output: to the stage's callbacks."""
        msg = event[1]
        if not isinstance(msg, dict):
            return
        with self._guard:
            job = self._jobs.get(str(msg.get("key")))
        if job is None:
            return
        if "cell" in msg and job.on_cell is not None:
            done, total = msg["cell"]
            job.on_cell(int(done), int(total))
        elif "output" in msg and job.on_output is not None:
            job.on_output(str(msg["output"]))
