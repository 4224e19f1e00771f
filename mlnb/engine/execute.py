"""Execute one stage notebook with papermill — the only module that imports it.

papermill keeps its semantics (parameters injected after the ``parameters``
cell, the executed notebook written cell by cell, errors recorded in the
notebook); mlnb plugs in an engine, registered as ``mlnb``, that runs the
notebook on a kernel from :class:`mlnb.engine.kernels.KernelPool` instead of starting
one. Before the first cell the engine runs a silent setup cell that sets
``MLFLOW_RUN_ID`` and friends and changes to the notebook's directory (as
JupyterLab does), so plain ``mlflow.log_metric`` calls land in the stage's run.

papermill writes the whole executed notebook as each cell starts and as it
ends, which for a notebook with outputs costs its size twice a cell; the
engine's :class:`_Manager` writes it at most every :data:`SAVE_EVERY` seconds
while cells run (a write it skips it makes that much later, so the file shows
a long cell running), and always at the start and the end.

A stage's ``timeout`` bounds the whole stage: a watchdog kills the kernel when
it runs out, and the dead kernel is reported as a timeout. papermill's
``cwd`` argument is never used: it changes the directory of the whole
process, which parallel stages share.

What a stage prints is kept within bounds: of each stream (stdout, stderr) of
each cell the executed notebook keeps the first and the last half of
:data:`OUTPUT_LIMIT` characters, with a note saying how much was dropped
between them, and forwards no more than it keeps. The output still queued
when a cell's reply comes is read for as long as it keeps coming (nbclient
gives it four seconds in all, and papermill then fails the cell). A cell that
fails without an error output (IPython prints a ``UsageError`` as text) is
named by the exception its reply carries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nbformat
from jupyter_core.utils import ensure_event_loop
from nbclient.client import timestamp
from nbclient.exceptions import DeadKernelError
from nbclient.util import ensure_async, run_hook, run_sync
from nbformat import NotebookNode
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines
from papermill.exceptions import PapermillExecutionError
from papermill.execute import execute_notebook

from mlnb.engine.kernels import KernelPool, connect, handshake
from mlnb.errors import CellError, KernelDiedError, StageError, StageTimeoutError
from mlnb.notebook import source_position

ENGINE = "mlnb"
#: characters of each stream a cell prints that are kept (and forwarded): the first
#: half and the last half; sizes count characters, which are bytes for ASCII text
OUTPUT_LIMIT = 10_000_000
#: what each output in a notebook costs beyond its text, counted against the limit
#: (a flood of one-character writes is many outputs)
_OUTPUT_COST = 256

#: seconds between two writes of the executed notebook while its cells run
SAVE_EVERY = 1.0

CellCallback = Callable[[int, int], None]
OutputCallback = Callable[[str], None]
#: called with a failing cell's index and its execute reply's content
ErrorCallback = Callable[[int, Mapping[str, Any]], None]

logging.getLogger("papermill").setLevel(logging.WARNING)


def _size(chars: int) -> str:
    """``812 MB``, ``40 KB``, ``12 B``: a size for a person, in decimal units."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if chars >= scale:
            return f"{chars / scale:.0f} {unit}"
    return f"{chars} B"


class _CappedStream:
    """One stream of one cell: its first half kept as it comes, its last half at the end.

    Args:
        name: ``stdout`` or ``stderr``.
        limit: characters kept in all.
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.head_room = limit // 2
        self.tail_limit = limit - limit // 2
        self.tail: deque[str] = deque()
        self.tail_size = 0
        self.printed = 0
        self.kept = 0
        #: the note between the head and the tail, once the head is full
        self.note: NotebookNode | None = None

    def take(self, text: str) -> str:
        """Count ``text`` as printed and return the part the head keeps (all, some or none)."""
        self.printed += len(text)
        if len(text) + _OUTPUT_COST <= self.head_room:
            self.head_room -= len(text) + _OUTPUT_COST
            self.kept += len(text)
            return text
        head = text[: max(0, self.head_room - _OUTPUT_COST)]
        self.head_room = 0
        self.kept += len(head)
        self._keep_last(text[len(head) :])
        return head

    def _keep_last(self, text: str) -> None:
        self.tail.append(text)
        self.tail_size += len(text)
        while self.tail_size - len(self.tail[0]) >= self.tail_limit:
            self.tail_size -= len(self.tail.popleft())

    def tail_text(self) -> str:
        """The last characters printed, at most the tail's half of the limit."""
        return "".join(self.tail)[-self.tail_limit :]

    def dropping(self) -> str:
        """The note shown while the middle is being dropped."""
        return (
            f"\n[mlnb: the cell printed more than {_size(self.limit // 2)} to {self.name}; "
            f"what follows is dropped, but for the last {_size(self.tail_limit)}]\n"
        )

    def dropped(self, tail: str) -> str:
        """The note that stays once the cell has ended and ``tail`` is kept ("" if none is due)."""
        dropped = self.printed - self.kept - len(tail)
        if not dropped:
            return ""
        return (
            f"\n[mlnb: {_size(dropped)} of {self.name} dropped; the cell printed "
            f"{_size(self.printed)}, more than the {_size(self.limit)} kept: "
            f"its first {_size(self.kept)} above, its last {_size(len(tail))} below]\n"
        )


class _PooledClient(PapermillNotebookClient):
    """papermill's client, on a pre-started kernel, with a silent setup cell.

    It keeps what each cell prints within ``output_limit`` characters a stream
    (see :class:`_CappedStream`), and waits for a cell's remaining output for as
    long as it keeps coming.
    """

    def __init__(
        self, nb_man: Any, setup_code: str = "", output_limit: int = OUTPUT_LIMIT, **kw: Any
    ) -> None:
        super().__init__(nb_man, **kw)
        self.setup_code = setup_code
        self.output_limit = output_limit
        self._streams: dict[str, _CappedStream] = {}
        self._messages = 0

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

    async def async_execute_cell(
        self,
        cell: NotebookNode,
        cell_index: int,
        execution_count: int | None = None,
        store_history: bool = True,
    ) -> NotebookNode:
        self._streams = {}
        try:
            return await super().async_execute_cell(
                cell, cell_index, execution_count, store_history
            )
        finally:
            for stream in self._streams.values():
                self._settle(cell, stream)

    execute_cell = run_sync(async_execute_cell)

    def process_message(
        self, msg: dict[str, Any], cell: NotebookNode, cell_index: int
    ) -> NotebookNode | None:
        self._messages += 1
        return super().process_message(msg, cell, cell_index)

    def output(
        self,
        outs: list[NotebookNode],
        msg: dict[str, Any],
        display_id: str | None,
        cell_index: int,
    ) -> NotebookNode | None:
        content = msg["content"]
        hooked = self.output_hook_stack[msg["parent_header"].get("msg_id")]
        if msg["msg_type"] != "stream" or hooked:
            return super().output(outs, msg, display_id, cell_index)
        name, text = content["name"], content["text"]
        stream = self._streams.setdefault(name, _CappedStream(name, self.output_limit))
        head = stream.take(text)
        if head == text and stream.note is None:
            return super().output(outs, msg, display_id, cell_index)
        # papermill forwards what this returns after it returns: add and forward here, in order
        if head:
            self._add(outs, msg, head, cell_index)
        if stream.note is None:
            stream.note = self._add(outs, msg, stream.dropping(), cell_index)
        return None

    def _add(
        self, outs: list[NotebookNode], msg: dict[str, Any], text: str, cell_index: int
    ) -> NotebookNode | None:
        """Append a stream output of ``text`` to the cell and forward it."""
        content = {"name": msg["content"]["name"], "text": text}
        out = super().output(outs, {**msg, "content": content}, None, cell_index)
        if out is not None:
            self.log_output_message(out)
        return out

    def _settle(self, cell: NotebookNode, stream: _CappedStream) -> None:
        """Put the last of a stream after its note, and say in the note what was dropped."""
        note = stream.note
        if note is None:
            return
        tail = nbformat.v4.new_output("stream", name=stream.name, text=stream.tail_text())
        note["text"] = stream.dropped(tail["text"])
        outputs = cell.outputs
        at = next((i for i, out in enumerate(outputs) if out is note), None)
        if at is None:  # the cell cleared its outputs meanwhile
            at = len(outputs)
            outputs.append(note)
        kept = [note, tail] if note["text"] else [tail]
        outputs[at : at + 1] = kept
        for out in kept:
            self.log_output_message(out)

    async def _async_poll_for_reply(
        self,
        msg_id: str,
        cell: NotebookNode,
        timeout: int | None,
        task_poll_output_msg: asyncio.Future[Any],
        task_poll_kernel_alive: asyncio.Future[Any],
    ) -> dict[str, Any]:
        if timeout is not None:  # mlnb's watchdog bounds a stage, not nbclient
            return await super()._async_poll_for_reply(
                msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive
            )
        assert self.kc is not None
        while True:
            msg: dict[str, Any] = await ensure_async(self.kc.shell_channel.get_msg(timeout=None))
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        if self.record_timing:
            cell["metadata"]["execution"]["shell.execute_reply"] = timestamp(msg)
        await self._drain(task_poll_output_msg)
        task_poll_kernel_alive.cancel()
        return msg

    async def _drain(self, output: asyncio.Future[Any]) -> None:
        """Wait for the rest of a cell's output after its reply, while it keeps coming.

        Only ``iopub_timeout`` seconds with no message at all end the wait
        (the kernel's idle status was lost); the output read so far is kept.
        """
        while True:
            seen = self._messages
            done, _ = await asyncio.wait({output}, timeout=self.iopub_timeout)
            if done:
                output.result()
                return
            if self._messages == seen:
                output.cancel()
                self.log.warning("no output for %s s after the cell's reply", self.iopub_timeout)
                return


class _Manager(NotebookExecutionManager):
    """papermill's execution manager, writing the executed notebook at most every SAVE_EVERY s.

    A write that comes too soon is made when the time is up, from the event
    loop the cells run on (callbacks run between the loop's steps, never in
    the middle of nbclient changing the notebook); the notebook's end is
    always written, and no write is left pending after it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._written = float("-inf")
        self._later: asyncio.TimerHandle | None = None

    def save(self, **kwargs: Any) -> None:
        wait = self._written + SAVE_EVERY - time.monotonic()
        if wait <= 0:
            self._write(**kwargs)
        elif self._later is None:
            self._later = ensure_event_loop().call_later(wait, self._write)

    def _write(self, **kwargs: Any) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None
        super().save(**kwargs)
        self._written = time.monotonic()

    def notebook_complete(self, **kwargs: Any) -> None:
        self._written = float("-inf")  # the last write always happens
        super().notebook_complete(**kwargs)


class MlnbEngine(NBClientEngine):
    """papermill engine that executes on a kernel handed over by mlnb.

    Extra keyword arguments (through ``papermill.execute_notebook``):
    ``mlnb_kernel`` (a started kernel manager), ``mlnb_setup`` (code run
    silently first), ``mlnb_on_start`` (called with a cell's index as it
    starts), ``mlnb_on_cell`` (called with ``(code cells done, in total)`` after
    each cell), ``mlnb_on_error`` (called with a failing cell's index and its
    reply), ``mlnb_output_limit`` (characters kept of each stream of a cell).
    """

    @classmethod
    def execute_notebook(
        cls,
        nb: NotebookNode,
        kernel_name: str,
        output_path: str | None = None,
        progress_bar: bool = True,
        log_output: bool = False,
        autosave_cell_every: int = 30,
        **kwargs: Any,
    ) -> NotebookNode:
        # papermill's Engine.execute_notebook, with the manager that writes less often
        nb_man = _Manager(
            nb,
            output_path=output_path,
            progress_bar=progress_bar,
            log_output=log_output,
            autosave_cell_every=autosave_cell_every,
        )
        nb_man.notebook_start()
        try:
            cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
        finally:
            nb_man.cleanup_pbar()
            nb_man.notebook_complete()
        return nb_man.nb

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
        mlnb_on_error: ErrorCallback | None = None,
        mlnb_output_limit: int = OUTPUT_LIMIT,
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

        def on_cell_error(cell: Any, cell_index: int, execute_reply: Any, **_: Any) -> None:
            if mlnb_on_error is not None:
                mlnb_on_error(cell_index, execute_reply["content"])

        client = _PooledClient(
            nb_man,
            setup_code=mlnb_setup,
            output_limit=mlnb_output_limit,
            km=mlnb_kernel,
            kernel_name=kernel_name,
            timeout=execution_timeout,
            startup_timeout=start_timeout,
            log_output=log_output,
            stdout_file=stdout_file,
            stderr_file=stderr_file,
            on_cell_start=on_cell_start,
            on_cell_executed=on_cell_executed,
            on_cell_error=on_cell_error,
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
    output_limit: int = OUTPUT_LIMIT,
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
        on_output: called with each piece of stdout/stderr the notebook prints,
            as much of it as the executed notebook keeps.
        output_limit: characters of each stream of a cell kept in the executed
            notebook (its first and last half, a note between them).

    Raises:
        CellError: a cell raised; carries the cell position and exception.
        StageTimeoutError: the stage ran past ``timeout``.
        KernelDiedError: the kernel died.
        StageError: anything else that stopped execution.
    """
    km = pool.acquire(kernel_name)
    progress = {"cell": 0}
    replies: dict[int, Mapping[str, Any]] = {}
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
            mlnb_on_error=replies.__setitem__,
            mlnb_output_limit=output_limit,
        )
        ok = True
    except PapermillExecutionError as exc:
        raise _cell_error(stage, exc, replies.get(exc.cell_index, {}), output_notebook) from None
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


def _cell_error(
    stage: str,
    exc: PapermillExecutionError,
    reply: Mapping[str, Any],
    output_notebook: Path,
) -> CellError:
    """The failing cell, named by its error output or, when it has none, by its reply.

    IPython prints some errors (a ``UsageError`` of an unknown magic) as text
    without an error output, and papermill then names them ``CellExecutionError``
    with no message; the execute reply still carries the exception.
    """
    ename, evalue, traceback = exc.ename, exc.evalue, exc.traceback
    if ename == "CellExecutionError" and not evalue and reply.get("ename"):
        ename, evalue = str(reply["ename"]), str(reply.get("evalue", ""))
        traceback = traceback or list(reply.get("traceback") or [])
    nb = nbformat.read(str(output_notebook), as_version=4)
    return CellError(
        stage,
        cell=source_position(nb, exc.cell_index),
        ename=ename,
        evalue=evalue,
        notebook=output_notebook,
        traceback=traceback,
    )


def _running_cell(output_notebook: Path, index: int) -> int | None:
    """1-based source position of the cell that was running when the kernel went away."""
    try:
        nb = nbformat.read(str(output_notebook), as_version=4)
    except (OSError, ValueError):
        return None
    if index >= len(nb.cells):
        return None
    return source_position(nb, index)
