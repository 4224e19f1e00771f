"""A pool of pre-started Jupyter kernels.

papermill spends most of a short notebook's time starting and stopping its
kernel. The pool starts kernels ahead of need, in background threads, while
the pipeline imports MLflow, creates runs and executes earlier stages; it shuts
used kernels down in the background too. A kernel serves exactly one stage and
is never reused, so a stage sees a fresh interpreter as it would under plain
papermill. What a stage needs that is only known late (its MLflow run id, its
working directory) is set by a short silent cell before the notebook's first
cell (see :mod:`mlnb.engine.execute`).

Every kernel started here is stopped here, by the manager that started it, and
:meth:`KernelPool.close` stops the rest; a kernel also exits by itself when its
parent process dies (ipykernel watches ``JPY_PARENT_PID``, or the parent a
forked kernel is given on its command line), so a ``kill -9`` of mlnb leaves
no kernel behind.

A kernel learns the MLflow store from ``MLFLOW_TRACKING_URI``; a server's
user info in it is moved to ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (:func:`mlnb.store.client_env`), so the links
MLflow prints into a notebook's outputs carry no secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from queue import Empty
from typing import Any

import zmq.asyncio
from jupyter_client.kernelspec import NoSuchKernel
from jupyter_client.manager import AsyncKernelManager

from mlnb.engine.forkserver import ForkProvisioner, ForkServer
from mlnb.errors import MlnbError
from mlnb.store import URI_VAR, client_env

#: IPython keeps history in memory: concurrent kernels must not share a SQLite file.
KERNEL_ARGS = ["--HistoryManager.hist_file=:memory:"]


def kernel_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with its ``MLFLOW_TRACKING_URI``'s user info in MLflow's credential variables."""
    found = dict(env)
    uri = found.get(URI_VAR)
    if uri:
        found.update(client_env(uri))
    return found


class KernelStartError(MlnbError):
    """A kernel could not be started."""


class KernelPool:
    """Start kernels ahead of need; hand each out once; stop them all.

    Args:
        env: environment variables added to every kernel's environment (a
            tracking URI's credentials moved out of it, see :func:`kernel_env`).
        cwd: the directory kernels start in.
        log_dir: where each kernel's stderr goes (``kernel-<pid>.log``).
        startup_timeout: seconds a kernel may take to answer.
        fork: fork kernels from a server that imported ipykernel once
            (:mod:`mlnb.engine.forkserver`) instead of starting each from scratch.
        preload: modules the fork server imports as well, so every kernel
            starts with them imported.
        warmup: code each kernel runs, silently, before it is handed out:
            what cannot be done before the fork (opening a database, whose
            connections must not cross it) but costs every stage, done while
            the kernel waits for one. An error in it is the stage's to meet.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_dir: Path | None = None,
        startup_timeout: float = 60,
        fork: bool = True,
        preload: Sequence[str] = (),
        warmup: str = "",
    ) -> None:
        self._env = kernel_env({**os.environ, **(env or {})})
        self._cwd = str(cwd) if cwd else None
        self._log_dir = log_dir
        self._startup_timeout = startup_timeout
        self._warmup = warmup
        self._starter = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mlnb-kernel-start")
        self._stopper = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mlnb-kernel-stop")
        self._ready: dict[str, deque[Future[AsyncKernelManager]]] = defaultdict(deque)
        self._live: set[AsyncKernelManager] = set()
        self._lock = threading.Lock()
        self._closed = False
        # one context for all kernel managers: a manager that creates its own
        # destroys it on shutdown, which can block on sockets of other threads
        self._context = zmq.asyncio.Context()
        self._server = ForkServer(preload) if fork else None  # starts with the first kernel

    def prestart(self, kernel_name: str, count: int = 1) -> None:
        """Begin starting ``count`` more kernels of ``kernel_name`` in the background."""
        with self._lock:
            if self._closed:
                return
            for _ in range(count):
                self._ready[kernel_name].append(self._starter.submit(self._start, kernel_name))

    def acquire(self, kernel_name: str) -> AsyncKernelManager:
        """Return a started, ready kernel of ``kernel_name`` (starting one if none waits).

        Raises:
            KernelStartError: when the kernel does not start.
        """
        with self._lock:
            queue = self._ready[kernel_name]
            future = queue.popleft() if queue else None
        if future is None:
            future = self._starter.submit(self._start, kernel_name)
        return future.result()

    def release(self, km: AsyncKernelManager) -> Future[None]:
        """Stop a kernel in the background (gracefully, then by force)."""
        return self._stopper.submit(self._stop, km)

    def kill(self, km: AsyncKernelManager) -> None:
        """Kill a kernel's process at once (used for timeouts and interrupts)."""
        pid = kernel_pid(km)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def kill_all(self) -> None:
        """Kill every kernel of this pool at once (on an interrupt)."""
        with self._lock:
            live = list(self._live)
        for km in live:
            self.kill(km)

    def close(self) -> None:
        """Stop every kernel this pool started, waiting for them to exit."""
        with self._lock:
            self._closed = True
            pending = [f for queue in self._ready.values() for f in queue]
            self._ready.clear()
        for future in pending:
            with contextlib.suppress(Exception):
                self.release(future.result())
        self._starter.shutdown(wait=True)
        with self._lock:
            live = list(self._live)
        for km in live:
            self.release(km)
        self._stopper.shutdown(wait=True)
        if self._server is not None:
            self._server.stop()
        self._context.destroy(linger=0)

    def _start(self, kernel_name: str) -> AsyncKernelManager:
        km = AsyncKernelManager(kernel_name=kernel_name, context=self._context)
        km.kernel_id = str(uuid.uuid4())
        try:
            spec = km.kernel_spec
        except NoSuchKernel:
            raise KernelStartError(
                f"no Jupyter kernel named '{kernel_name}'; 'jupyter kernelspec list' shows "
                "the installed ones"
            ) from None
        provisioner = ForkProvisioner(kernel_id=km.kernel_id, kernel_spec=spec, parent=km)
        provisioner.server = self._server
        km.provisioner = provisioner
        log = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self._log_dir / f"kernel-{threading.get_ident()}.log", "ab")  # noqa: SIM115

        async def start() -> None:
            await km.start_kernel(
                extra_arguments=KERNEL_ARGS,
                env=self._env,
                cwd=self._cwd,
                stdout=subprocess.DEVNULL,
                stderr=log if log is not None else subprocess.DEVNULL,
            )
            client = km.client()
            connect(client)
            try:
                await handshake(client, self._startup_timeout)
                if self._warmup:
                    await run_silently(client, self._warmup, self._startup_timeout)
            finally:
                client.stop_channels()
                # zmq sockets belong to this thread's event loop, which ends
                # here; shutdown reconnects the control socket where it runs
                km._close_control_socket()

        try:
            asyncio.run(start())
        except Exception as exc:
            if km.has_kernel:
                self.kill(km)
            raise KernelStartError(
                f"could not start a '{kernel_name}' kernel: {exc}; check that the kernel is "
                "installed (jupyter kernelspec list)"
            ) from exc
        finally:
            if log is not None:
                log.close()
        with self._lock:
            self._live.add(km)
        return km

    def _stop(self, km: AsyncKernelManager) -> None:
        try:
            if km.has_kernel:
                km.shutdown_wait_time = 3.0

                async def shutdown() -> None:
                    await km.shutdown_kernel(now=False)

                asyncio.run(shutdown())
        except Exception:
            self.kill(km)
        finally:
            with self._lock:
                self._live.discard(km)


def connect(client: Any) -> None:
    """Open a client's shell, IOPub, stdin and control channels, without a heartbeat.

    A client made by its kernel manager learns whether the kernel lives from
    the manager (here: whether the forked process runs), never from the
    heartbeat. jupyter_client's heartbeat thread also races its own stop: a
    channel stopped before its thread first ran sets ``_running`` again and
    beats forever, so ``stop_channels`` waits on it for good (or the thread
    dies with a traceback on a socket closed under it). Pooled kernels are
    connected and disconnected within milliseconds, which is when it happens.
    """
    client.start_channels(hb=False)


async def handshake(client: Any, timeout: float) -> None:
    """Wait until a kernel answers on shell and its IOPub reaches ``client``.

    jupyter_client's ``wait_for_ready`` does the same and then waits for 0.2 s
    of IOPub silence; execution ignores messages of other requests, so that
    wait is pure latency on every stage.

    Raises:
        RuntimeError: the kernel died or did not answer within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        msg_id = client.kernel_info()
        try:
            while True:
                reply = await client._async_get_shell_msg(timeout=1)
                if reply.get("parent_header", {}).get("msg_id") == msg_id:
                    break
            await client._async_get_iopub_msg(timeout=0.1)
            return
        except Empty:
            pass
        if not await client._async_is_alive():
            raise RuntimeError("the kernel died while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the kernel did not answer within {timeout:g} s")


async def run_silently(client: Any, code: str, timeout: float) -> None:
    """Run ``code`` in a kernel without recording it, and wait for its reply (not its outcome).

    Raises:
        RuntimeError: the kernel did not answer within ``timeout``.
    """
    msg_id = client.execute(code, silent=True, store_history=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = await client._async_get_shell_msg(timeout=1)
        except Empty:
            continue
        if reply.get("parent_header", {}).get("msg_id") == msg_id:
            return
    raise RuntimeError(f"the kernel did not answer within {timeout:g} s")


def kernel_pid(km: AsyncKernelManager) -> int | None:
    """Return the process id of a kernel, if it has one."""
    provisioner = getattr(km, "provisioner", None)
    pid = getattr(provisioner, "pid", None)
    return int(pid) if pid else None
