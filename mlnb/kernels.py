"""A pool of pre-started Jupyter kernels.

papermill spends most of a short notebook's time starting and stopping its
kernel. The pool starts kernels ahead of need, in background threads, while
the pipeline imports MLflow, creates runs and executes earlier stages; it shuts
used kernels down in the background too. A kernel serves exactly one stage and
is never reused, so a stage sees a fresh interpreter as it would under plain
papermill. What a stage needs that is only known late (its MLflow run id, its
working directory) is set by a short silent cell before the notebook's first
cell (see :mod:`mlnb.stage`).

Every kernel started here is stopped here, by the manager that started it, and
:meth:`KernelPool.close` stops the rest; a kernel also exits by itself when its
parent process dies (ipykernel watches ``JPY_PARENT_PID``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from collections import defaultdict, deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import zmq.asyncio
from jupyter_client.manager import AsyncKernelManager

from mlnb.errors import MlnbError

#: IPython keeps history in memory: concurrent kernels must not share a SQLite file.
KERNEL_ARGS = ["--HistoryManager.hist_file=:memory:"]


class KernelStartError(MlnbError):
    """A kernel could not be started."""


class KernelPool:
    """Start kernels ahead of need; hand each out once; stop them all.

    Args:
        env: environment variables added to every kernel's environment.
        cwd: the directory kernels start in.
        log_dir: where each kernel's stderr goes (``kernel-<pid>.log``).
        startup_timeout: seconds a kernel may take to answer.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_dir: Path | None = None,
        startup_timeout: float = 60,
    ) -> None:
        self._env = {**os.environ, **(env or {})}
        self._cwd = str(cwd) if cwd else None
        self._log_dir = log_dir
        self._startup_timeout = startup_timeout
        self._starter = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mlnb-kernel-start")
        self._stopper = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mlnb-kernel-stop")
        self._ready: dict[str, deque[Future[AsyncKernelManager]]] = defaultdict(deque)
        self._live: set[AsyncKernelManager] = set()
        self._lock = threading.Lock()
        self._closed = False
        # one context for all kernel managers: a manager that creates its own
        # destroys it on shutdown, which can block on sockets of other threads
        self._context = zmq.asyncio.Context()

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
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

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
            try:
                self.release(future.result())
            except Exception:  # noqa: BLE001 - a kernel that failed to start has nothing to stop
                pass
        self._starter.shutdown(wait=True)
        with self._lock:
            live = list(self._live)
        for km in live:
            self.release(km)
        self._stopper.shutdown(wait=True)
        self._context.destroy(linger=0)

    def _start(self, kernel_name: str) -> AsyncKernelManager:
        km = AsyncKernelManager(kernel_name=kernel_name, context=self._context)
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
            client.start_channels()
            try:
                await client.wait_for_ready(timeout=self._startup_timeout)
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
                asyncio.run(km.shutdown_kernel(now=False))
        except Exception:  # noqa: BLE001 - fall back to the signal
            self.kill(km)
        finally:
            with self._lock:
                self._live.discard(km)


def kernel_pid(km: AsyncKernelManager) -> int | None:
    """Return the process id of a kernel, if it has one."""
    provisioner = getattr(km, "provisioner", None)
    pid = getattr(provisioner, "pid", None)
    return int(pid) if pid else None
