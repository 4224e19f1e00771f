"""The worker side of ``--executor dask``: run one stage notebook on a Dask worker.

:func:`run_stage` is the task :class:`mlnb.pipelines.dask.DaskExecutor`
submits. A worker has no checkout of the project, so the task carries the
notebook's bytes (:class:`RemoteStage`); they are written to a scratch folder
of the worker's own ``local_directory`` (never the shared state folder), and
the notebook runs there with :func:`mlnb.engine.execute.execute_stage`, on a
kernel of the worker's warm pool (:class:`WorkerKernels`), writing the
executed notebook to the shared state folder where the runner reads it.

The pool lives as long as the worker: :class:`KernelPoolPlugin`, registered
by the executor, creates it when it attaches to a worker and closes it in its
teardown. A task returns a plain dict — the worker's address, and a failed
stage's error as :func:`error_payload` describes it — rather than raising,
because mlnb's errors do not survive pickling and a failed notebook is a
result, not a reason for Dask to retry. :func:`rebuild_error` turns it back
into the same :class:`~mlnb.errors.StageError` class on the runner's side.

An interrupt reaches a task through a :class:`distributed.Event` named by the
executor: a watcher thread waits on it and kills the task's kernel, so the
stage ends as a dead kernel, which the runner records ``KILLED``. Progress and
output go back as worker events on the executor's topic
(:meth:`distributed.Worker.log_event`), each naming its task.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from distributed import Event, Worker, WorkerPlugin, get_worker
from jupyter_client.manager import AsyncKernelManager

from mlnb.engine.kernels import KernelPool
from mlnb.errors import CellError, KernelDiedError, MlnbError, StageError, StageTimeoutError

#: the name the kernel pool's plugin is registered under on every worker
PLUGIN_NAME = "mlnb-kernel-pool"
#: the folder of the worker's ``local_directory`` where stage notebooks run
SCRATCH = "mlnb"
#: seconds between two looks at the cancel event (each look waits on the scheduler)
CANCEL_POLL = 0.5
#: what an interrupted stage says (the runner records it ``KILLED``)
INTERRUPTED = "interrupted"


class WorkerKernels(KernelPool):
    """A worker's kernel pool: ``warm`` kernels of each kernel used wait ready for the next task.

    It knows which task thread holds which kernel, so an interrupt kills
    that task's kernel only (other runs may share the worker).

    Args:
        warm: kernels of each name kept started ahead (the worker's threads).
        **kwargs: as for :class:`~mlnb.engine.kernels.KernelPool`.
    """

    def __init__(self, warm: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._warm = max(warm, 1)
        self._waiting: Counter[str] = Counter()
        self._held: dict[int, AsyncKernelManager] = {}
        self._guard = threading.Lock()

    def prestart(self, kernel_name: str, count: int = 1) -> None:
        with self._guard:
            self._waiting[kernel_name] += count
        super().prestart(kernel_name, count)

    def warm_up(self, kernel_names: Sequence[str]) -> None:
        """Start kernels of each name until ``warm`` of them wait ready."""
        for name in kernel_names:
            with self._guard:
                missing = self._warm - self._waiting[name]
            if missing > 0:
                self.prestart(name, missing)

    def acquire(self, kernel_name: str) -> AsyncKernelManager:
        with self._guard:
            if self._waiting[kernel_name] > 0:
                self._waiting[kernel_name] -= 1
        km = super().acquire(kernel_name)
        with self._guard:
            self._held[threading.get_ident()] = km
        self.warm_up([kernel_name])
        return km

    def release(self, km: AsyncKernelManager) -> Any:
        with self._guard:
            for ident in [i for i, held in self._held.items() if held is km]:
                del self._held[ident]
        return super().release(km)

    def kill_held(self, thread: int) -> bool:
        """Kill the kernel the task thread ``thread`` holds; whether it held one."""
        with self._guard:
            km = self._held.get(thread)
        if km is None:
            return False
        self.kill(km)
        return True


class KernelPoolPlugin(WorkerPlugin):
    """Gives each worker a :class:`WorkerKernels` pool and closes it with the worker.

    Registered idempotently: a later run's executor keeps the pool (and its
    warm kernels) the first one set up.
    """

    idempotent = True

    def __init__(self) -> None:
        self.pool: WorkerKernels | None = None

    def setup(self, worker: Worker) -> None:
        scratch = Path(worker.local_directory) / SCRATCH
        scratch.mkdir(parents=True, exist_ok=True)
        self.pool = WorkerKernels(worker.state.nthreads, cwd=scratch, log_dir=scratch / "logs")

    def teardown(self, worker: Worker) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()


def _pool(worker: Worker) -> WorkerKernels:
    plugin = worker.plugins.get(PLUGIN_NAME)
    pool = plugin.pool if isinstance(plugin, KernelPoolPlugin) else None
    if pool is None:
        raise MlnbError(
            f"the Dask worker {worker.address} has no mlnb kernel pool (the "
            f"'{PLUGIN_NAME}' plugin is not set up); run the pipeline again, which registers it"
        )
    return pool


def prewarm(kernel_names: Sequence[str], dask_worker: Worker) -> None:
    """Start the kernels the run's first stages need on a worker (``Client.run``)."""
    with contextlib.suppress(MlnbError):
        _pool(dask_worker).warm_up(kernel_names)


@dataclass(frozen=True)
class RemoteStage:
    """What a worker needs to execute one stage notebook, without the project.

    Attributes:
        stage: the stage name.
        key: the Dask key of the task (which progress events name).
        name: the notebook's file name.
        source: the notebook's bytes.
        executed: where the executed notebook is written (in the shared state folder).
        params: the parameters papermill injects.
        kernel: the Jupyter kernel name.
        env: environment variables set in the kernel before the first cell.
        timeout: seconds the whole stage may take.
        cancel: the name of the executor's cancel :class:`distributed.Event`.
        topic: the worker-event topic of the executor.
        forward_output: whether what the notebook prints is sent back.
    """

    stage: str
    key: str
    name: str
    source: bytes
    executed: str
    params: Mapping[str, Any]
    kernel: str
    env: Mapping[str, str]
    timeout: float | None
    cancel: str
    topic: str
    forward_output: bool = False


ErrorKind = Literal["cell", "timeout", "died", "stage"]


class ErrorPayload(TypedDict):
    """A :class:`~mlnb.errors.StageError` as plain data (see :func:`error_payload`)."""

    kind: ErrorKind
    stage: str
    notebook: str | None
    reason: str
    cell: int | None
    ename: str
    evalue: str
    traceback: list[str]
    timeout: float


class StageOutcome(TypedDict):
    """What :func:`run_stage` returns: the worker that ran it, and its error if it failed."""

    worker: str
    error: ErrorPayload | None


def error_payload(error: StageError) -> ErrorPayload:
    """A stage's error as plain data that :func:`rebuild_error` turns back into it."""
    payload = ErrorPayload(
        kind="stage",
        stage=error.stage,
        notebook=error.notebook,
        reason=_reason(error),
        cell=None,
        ename="",
        evalue="",
        traceback=[],
        timeout=0.0,
    )
    if isinstance(error, CellError):
        payload["kind"], payload["cell"] = "cell", error.cell
        payload["ename"], payload["evalue"] = error.ename, error.evalue
        payload["traceback"] = list(error.traceback)
    elif isinstance(error, StageTimeoutError):
        payload["kind"], payload["cell"] = "timeout", error.cell
        payload["timeout"] = error.timeout
    elif isinstance(error, KernelDiedError):
        payload["kind"], payload["cell"] = "died", error.cell
    return payload


def rebuild_error(payload: ErrorPayload) -> StageError:
    """The :class:`~mlnb.errors.StageError` (of the same class) that ``payload`` describes."""
    stage, notebook = payload["stage"], payload["notebook"]
    kind = payload["kind"]
    if kind == "cell":
        return CellError(
            stage,
            payload["cell"] or 0,
            payload["ename"],
            payload["evalue"],
            notebook,
            payload["traceback"],
        )
    if kind == "timeout":
        return StageTimeoutError(stage, payload["timeout"], payload["cell"], notebook)
    if kind == "died":
        return KernelDiedError(stage, payload["cell"], notebook)
    return StageError(stage, payload["reason"], notebook)


def _reason(error: StageError) -> str:
    """What a :class:`StageError` says beyond its stage and notebook (its constructor's message)."""
    text = error.message.removeprefix(f"stage '{error.stage}' failed: ")
    if error.notebook:
        text = text.removesuffix(f"\n  executed notebook: {error.notebook}")
    return text


def run_stage(job: RemoteStage) -> StageOutcome:
    """Execute ``job`` on this worker (the task of :class:`~mlnb.pipelines.dask.DaskExecutor`).

    Returns:
        The worker's address, and the stage's error as :func:`error_payload`
        describes it when the notebook failed, timed out, lost its kernel or
        was interrupted (``None`` when it ran).
    """
    worker = get_worker()
    cancel = Event(job.cancel, worker.client)
    if cancel.wait(timeout=0):  # interrupted while waiting for a worker
        return StageOutcome(worker=worker.address, error=_failed(job, INTERRUPTED))
    scratch = Path(worker.local_directory) / SCRATCH / uuid.uuid4().hex
    done = threading.Event()
    try:
        pool = _pool(worker)
        scratch.mkdir(parents=True)
        notebook = scratch / job.name
        notebook.write_bytes(job.source)
        _watch(cancel, pool, threading.get_ident(), done)
        _execute(job, notebook, pool, worker)
    except StageError as exc:
        return StageOutcome(worker=worker.address, error=error_payload(exc))
    except MlnbError as exc:  # a kernel that does not start
        return StageOutcome(worker=worker.address, error=_failed(job, str(exc)))
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc} (on the Dask worker {worker.address})"
        return StageOutcome(worker=worker.address, error=_failed(job, reason))
    finally:
        done.set()
        shutil.rmtree(scratch, ignore_errors=True)
    return StageOutcome(worker=worker.address, error=None)


def _execute(job: RemoteStage, notebook: Path, pool: WorkerKernels, worker: Worker) -> None:
    """Run the notebook with papermill; its progress and output go out as worker events."""
    from mlnb.engine.execute import execute_stage  # papermill: only once a stage executes

    def on_cell(done: int, total: int) -> None:
        worker.log_event(job.topic, {"key": job.key, "cell": [done, total]})

    def on_output(text: str) -> None:
        worker.log_event(job.topic, {"key": job.key, "output": text})

    execute_stage(
        job.stage,
        notebook,
        Path(job.executed),
        job.params,
        pool,
        kernel_name=job.kernel,
        env=job.env,
        timeout=job.timeout,
        on_cell=on_cell,
        on_output=on_output if job.forward_output else None,
    )


def _failed(job: RemoteStage, reason: str) -> ErrorPayload:
    return error_payload(StageError(job.stage, reason))


def _watch(cancel: Event, pool: WorkerKernels, thread: int, done: threading.Event) -> None:
    """Kill the kernel of task thread ``thread`` once ``cancel`` is set, until ``done``."""

    def watch() -> None:
        try:
            while not done.is_set():
                if cancel.wait(timeout=CANCEL_POLL):
                    while not done.is_set():  # the kernel may still be on its way
                        pool.kill_held(thread)
                        done.wait(0.1)
        except Exception:  # the worker is closing: its pool goes with it
            return

    threading.Thread(target=watch, name="mlnb-cancel-watch", daemon=True).start()
