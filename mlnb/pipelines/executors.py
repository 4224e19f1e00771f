"""Where a stage's notebook executes: a kernel of this process's pool, or a Dask worker.

The runner decides everything about a run — the DAG order, the cache, the
MLflow runs, ``--jobs`` — and hands an executor one :class:`StageJob` at a
time, from one of its ``jobs`` threads; :meth:`Executor.run` blocks until the
notebook has run (or raises the stage's :class:`~mlnb.errors.StageError`).

- :class:`LocalExecutor` (the default) runs the notebook on a kernel of a
  :class:`~mlnb.engine.kernels.KernelPool`, started ahead for the stages the
  run expects to execute.
- :class:`mlnb.pipelines.dask.DaskExecutor` submits it to a Dask cluster
  (``--executor dask``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mlnb.engine.execute import CellCallback, OutputCallback
    from mlnb.engine.kernels import KernelPool

#: kernels started beyond the ``jobs`` that run at once: a short stage's successor then
#: finds its kernel ready instead of waiting for it to start
AHEAD = 2
#: the executors ``mlnb run --executor`` takes
EXECUTORS = ("local", "dask")


@dataclass(frozen=True)
class StageJob:
    """One stage notebook to execute.

    Attributes:
        stage: the stage name.
        notebook: the source notebook.
        executed: where the executed notebook is written (in the run's workspace).
        params: the parameters papermill injects.
        kernel: the Jupyter kernel name.
        env: environment variables set in the kernel before the first cell.
        timeout: seconds the whole stage may take.
        resources: abstract resources the stage needs (``{"GPU": 1}``).
        on_cell: receives ``(cells done, cells in total)``.
        on_output: receives what the notebook prints.
    """

    stage: str
    notebook: Path
    executed: Path
    params: Mapping[str, Any]
    kernel: str
    env: Mapping[str, str]
    timeout: float | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    on_cell: CellCallback | None = None
    on_output: OutputCallback | None = None


class Executor(Protocol):
    """What the runner needs of a place to execute stages."""

    def plan(self, kernels: Sequence[str], jobs: int) -> None:
        """The kernels of the stages the run expects to execute, in order (may start them)."""

    def input_path(self, path: Path, digest: str) -> str:
        """The path a stage receives for project file ``path`` (content hash ``digest``)."""
        ...

    def run(self, job: StageJob) -> str | None:
        """Execute one notebook; the address of the worker that ran it (``None`` here).

        Raises:
            StageError: the notebook failed, timed out or its kernel died.
        """
        ...

    def cancel(self) -> None:
        """Stop every notebook running (Ctrl-C); their :meth:`run` calls raise."""

    def close(self) -> None:
        """Release kernels, connections and threads."""


class LocalExecutor:
    """Stages on kernels of this process's pool, started ahead in the order they will run.

    Args:
        env: environment of every kernel (the store, as MLflow's variables).
        cwd: the directory kernels start in (the project root).
    """

    def __init__(self, env: Mapping[str, str], cwd: Path) -> None:
        self._env = dict(env)
        self._cwd = cwd
        self._pool: KernelPool | None = None
        self._lock = threading.Lock()
        #: kernels of the stages expected to execute, in order, and how many were started
        self._planned: list[str] = []
        self._started = 0

    def plan(self, kernels: Sequence[str], jobs: int) -> None:
        self._planned = list(kernels)
        if not kernels:
            return
        pool = self._ensure_pool()
        ahead = jobs + AHEAD
        for kernel in self._planned[:ahead]:
            pool.prestart(kernel)
        self._started = min(ahead, len(self._planned))

    def input_path(self, path: Path, digest: str) -> str:
        return str(path.resolve())

    def run(self, job: StageJob) -> str | None:
        from mlnb.engine.execute import execute_stage  # papermill: only once a stage executes

        self._next_kernel()
        execute_stage(
            job.stage,
            job.notebook,
            job.executed,
            job.params,
            self._ensure_pool(),
            kernel_name=job.kernel,
            env=job.env,
            timeout=job.timeout,
            on_cell=job.on_cell,
            on_output=job.on_output,
        )
        return None

    def cancel(self) -> None:
        if self._pool is not None:
            self._pool.kill_all()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def _ensure_pool(self) -> KernelPool:
        """The kernel pool; created here when no stage was expected to execute."""
        with self._lock:
            if self._pool is None:
                from mlnb.engine.kernels import KernelPool  # jupyter_client: once a stage executes

                self._pool = KernelPool(env=self._env, cwd=self._cwd)
            return self._pool

    def _next_kernel(self) -> None:
        """A stage takes a kernel: start the one the next stage will need."""
        with self._lock:
            if self._pool is not None and self._started < len(self._planned):
                self._pool.prestart(self._planned[self._started])
                self._started += 1


def dask_executor(scheduler: str | None, state: Path) -> Executor:
    """The :class:`~mlnb.pipelines.dask.DaskExecutor` for ``scheduler`` (else ``MLNB_SCHEDULER``).

    Raises:
        MlnbError: no scheduler is named, Dask distributed is not installed
            (the ``team`` extra), or the scheduler cannot be reached.
    """
    import os

    from mlnb.errors import MlnbError

    address = scheduler or os.environ.get("MLNB_SCHEDULER", "").strip()
    if not address:
        raise MlnbError(
            "--executor dask needs the scheduler's address: pass --scheduler tcp://HOST:PORT "
            "or set MLNB_SCHEDULER"
        )
    try:
        from mlnb.pipelines.dask import DaskExecutor
    except ImportError as exc:
        raise MlnbError(
            f"--executor dask needs Dask distributed, which is not installed ({exc}); "
            "install it with: pip install 'mlnb[team]'"
        ) from exc
    return DaskExecutor(address, state)
