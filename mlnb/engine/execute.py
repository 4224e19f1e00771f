"""Execute one stage notebook with papermill — the only module that imports it.

papermill keeps its semantics (parameters injected after the ``parameters``
cell, the executed notebook written cell by cell, errors recorded in the
notebook); mlnb plugs in an engine, registered as ``mlnb``, that runs the
notebook on a kernel from :class:`mlnb.engine.kernels.KernelPool` instead of starting
one. Before the first cell the engine runs a silent setup cell that sets
``MLFLOW_RUN_ID`` and friends and changes to the notebook's directory (as
JupyterLab does), so plain ``mlflow.log_metric`` calls land in the stage's run.

A stage's ``timeout`` bounds the whole stage: a watchdog kills the kernel when
it runs out, and the dead kernel is reported as a timeout. papermill's
``cwd`` argument is never used: it changes the directory of the whole
process, which parallel stages share.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nbformat
from nbclient.exceptions import DeadKernelError
from nbclient.util import run_hook, run_sync
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.exceptions import PapermillExecutionError
from papermill.execute import execute_notebook

from mlnb.engine.kernels import KernelPool, connect, handshake
from mlnb.errors import CellError, KernelDiedError, StageError, StageTimeoutError
from mlnb.notebook import source_position

ENGINE = "mlnb"

CellCallback = Callable[[int, int], None]
OutputCallback = Callable[[str], None]

logging.getLogger("papermill").setLevel(logging.WARNING)


class _PooledClient(PapermillNotebookClient):
    """papermill's client, on a pre-started kernel, with a silent setup cell."""

    def __init__(self, nb_man: Any, setup_code: str = "", **kw: Any) -> None:
        super().__init__(nb_man, **kw)
        self.setup_code = setup_code

    async def async_start_new_kernel_client(self) -> Any:
        # the pool handed over a kernel that already answered: connect, check
        # that IOPub flows, and skip wait_for_ready's trailing 0.2 s of silence
        assert self.km is not None
        kc = self.kc = self.km.client()
        connect(kc)
        try:
            await handshake(kc, self.startup_timeout)
        except Exception:
            await self._async_cleanup_kernel()
            raise
        kc.allow_stdin = False
        await run_hook(self.on_notebook_start, notebook=self.nb)
        if self.setup_code:
            msg_id = kc.execute(self.setup_code, silent=True, store_history=False)
            reply = await self.async_wait_for_reply(msg_id)
            if reply and reply["content"].get("status") != "ok":
                raise RuntimeError(f"kernel setup failed: {reply['content'].get('evalue')}")
        return kc

    start_new_kernel_client = run_sync(async_start_new_kernel_client)


class MlnbEngine(NBClientEngine):
    """papermill engine that executes on a kernel handed over by mlnb.

    Extra keyword arguments (through ``papermill.execute_notebook``):
    ``mlnb_kernel`` (a started kernel manager), ``mlnb_setup`` (code run
    silently first), ``mlnb_on_start`` (called with a cell's index as it
    starts), ``mlnb_on_cell`` (called with ``(code cells done, in total)`` after
    each cell).
    """

    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str,
        log_output: bool = False,
        stdout_file: Any = None,
        stderr_file: Any = None,
        start_timeout: float = 60,
        execution_timeout: float | None = None,
        mlnb_kernel: Any = None,
        mlnb_setup: str = "",
        mlnb_on_cell: CellCallback | None = None,
        mlnb_on_start: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        # progress counts the code cells that run; nbclient skips the others
        total = sum(1 for c in nb_man.nb.cells if c.cell_type == "code" and c.source.strip())
        done = 0

        def on_cell_start(cell: Any, cell_index: int) -> None:
            if mlnb_on_start is not None:
                mlnb_on_start(cell_index)

        def on_cell_executed(cell: Any, cell_index: int, **_: Any) -> None:
            nonlocal done
            done += 1
            if mlnb_on_cell is not None:
                mlnb_on_cell(done, total)

        client = _PooledClient(
            nb_man,
            setup_code=mlnb_setup,
            km=mlnb_kernel,
            kernel_name=kernel_name,
            timeout=execution_timeout,
            startup_timeout=start_timeout,
            log_output=log_output,
            stdout_file=stdout_file,
            stderr_file=stderr_file,
            on_cell_start=on_cell_start,
            on_cell_executed=on_cell_executed,
        )
        try:
            return client.execute()
        finally:
            if client.kc is not None:
                client.kc.stop_channels()


papermill_engines.register(ENGINE, MlnbEngine)


class _Forward:
    """A file-like object that forwards each write to a callback."""

    def __init__(self, callback: OutputCallback) -> None:
        self._callback = callback

    def write(self, text: str) -> int:
        if text:
            self._callback(text)
        return len(text)

    def flush(self) -> None:
        pass


def setup_code(env: Mapping[str, str], cwd: Path) -> str:
    """Code run silently in a fresh kernel before the notebook's first cell."""
    return (
        "import os as _mlnb_os\n"
        f"_mlnb_os.environ.update({json.dumps(dict(env))})\n"
        f"_mlnb_os.chdir({json.dumps(str(cwd))})\n"
        "del _mlnb_os\n"
    )


def execute_stage(
    stage: str,
    notebook: Path,
    output_notebook: Path,
    params: Mapping[str, Any],
    pool: KernelPool,
    kernel_name: str = "python3",
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    on_cell: CellCallback | None = None,
    on_output: OutputCallback | None = None,
) -> None:
    """Run one stage notebook with papermill on a pooled kernel.

    Args:
        stage: the stage name, for errors.
        notebook: the source notebook.
        output_notebook: where the executed notebook is written.
        params: parameters injected after the ``parameters`` cell.
        pool: where the kernel comes from; it is released afterwards.
        kernel_name: the Jupyter kernel to use.
        env: environment variables set in the kernel before the first cell.
        timeout: seconds the whole stage may take.
        on_cell: called with ``(cells done, cells in total)``.
        on_output: called with each piece of stdout/stderr the notebook prints.

    Raises:
        CellError: a cell raised; carries the cell position and exception.
        StageTimeoutError: the stage ran past ``timeout``.
        KernelDiedError: the kernel died.
        StageError: anything else that stopped execution.
    """
    km = pool.acquire(kernel_name)
    progress = {"cell": 0}
    timed_out = threading.Event()

    def cell_started(index: int) -> None:
        progress["cell"] = index

    def expire() -> None:
        timed_out.set()
        pool.kill(km)

    watchdog = threading.Timer(timeout, expire) if timeout else None
    if watchdog is not None:
        watchdog.daemon = True
        watchdog.start()
    forward = _Forward(on_output) if on_output else None
    ok = False
    try:
        execute_notebook(
            str(notebook),
            str(output_notebook),
            parameters=dict(params),
            engine_name=ENGINE,
            kernel_name=kernel_name,
            progress_bar=False,
            stdout_file=forward,
            stderr_file=forward,
            mlnb_kernel=km,
            mlnb_setup=setup_code(env or {}, notebook.parent),
            mlnb_on_cell=on_cell,
            mlnb_on_start=cell_started,
        )
        ok = True
    except PapermillExecutionError as exc:
        nb = nbformat.read(str(output_notebook), as_version=4)
        raise CellError(
            stage,
            cell=source_position(nb, exc.cell_index),
            ename=exc.ename,
            evalue=exc.evalue,
            notebook=output_notebook,
            traceback=exc.traceback,
        ) from None
    except DeadKernelError:
        running = _running_cell(output_notebook, progress["cell"])
        if timed_out.is_set():
            raise StageTimeoutError(stage, timeout or 0, running, output_notebook) from None
        raise KernelDiedError(stage, running, output_notebook) from None
    except Exception as exc:
        if timed_out.is_set():
            running = _running_cell(output_notebook, progress["cell"])
            raise StageTimeoutError(stage, timeout or 0, running, output_notebook) from None
        raise StageError(stage, f"{type(exc).__name__}: {exc}", output_notebook) from exc
    finally:
        if watchdog is not None:
            watchdog.cancel()
        stopping = pool.release(km)
        if not ok:
            # the kernel's own atexit (mlflow.end_run) must not mark the run
            # FINISHED after the caller marks it FAILED: wait for it to exit
            stopping.result()


def _running_cell(output_notebook: Path, index: int) -> int | None:
    """1-based source position of the cell that was running when the kernel went away."""
    try:
        nb = nbformat.read(str(output_notebook), as_version=4)
    except (OSError, ValueError):
        return None
    if index >= len(nb.cells):
        return None
    return source_position(nb, index)
