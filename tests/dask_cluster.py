"""A real Dask cluster for tests and benchmarks: a scheduler and workers as separate processes.

Each process is started with ``dask scheduler`` / ``dask worker`` from this
environment, works in its own folder (no checkout of the project), and is
stopped by its PID. Workers run without a nanny, so killing a worker's PID
kills the worker (its kernels go with the pool it tears down, or are reaped
by :meth:`DaskCluster.stop`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from tests.helpers import free_port

DASK = str(Path(sys.executable).with_name("dask"))


class DaskCluster:
    """``workers`` Dask workers of ``threads`` threads each around one scheduler.

    Args:
        folder: where the processes work and log (``scheduler.log``, ``worker-N.log``).
        workers: how many workers.
        threads: threads (so concurrent stages) per worker.
        resources: ``--resources`` per worker index (``{0: "GPU=1"}``).
        env: extra environment of every process.
    """

    def __init__(
        self,
        folder: Path,
        workers: int = 2,
        threads: int = 1,
        resources: dict[int, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "DO_NOT_TRACK": "true", **(env or {})}
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._threads = threads
        self._resources = resources or {}
        self._count = workers

    def __enter__(self) -> DaskCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self.scheduler = self._spawn(
            "scheduler",
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-dashboard", "--no-show"],
        )  # fmt: skip
        for index in range(self._count):
            self.add_worker(index)
        self.wait_for_workers(self._count)

    def add_worker(self, index: int) -> subprocess.Popen[bytes]:
        args = [
            DASK, "worker", self.address, "--no-nanny", "--nthreads", str(self._threads),
            "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{index}",
            "--local-directory", str(self.folder / f"worker-{index}"),
        ]  # fmt: skip
        if index in self._resources:
            args += ["--resources", self._resources[index]]
        worker = self._spawn(f"worker-{index}", args)
        self.workers.append(worker)
        return worker

    def wait_for_workers(self, count: int, timeout: float = 60) -> list[str]:
        """The workers' addresses once ``count`` of them are connected."""
        from distributed import Client

        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=timeout, set_as_default=False) as client:
            while True:
                workers = list(client.scheduler_info(n_workers=-1)["workers"])
                if len(workers) >= count:
                    return workers
                if time.monotonic() > deadline:
                    came = f"{len(workers)} of {count} Dask workers came up"
                    raise AssertionError(f"{came}:\n{self.logs()}")
                time.sleep(0.2)

    def kill_worker(self, index: int) -> None:
        """Kill worker ``index`` for real (SIGKILL), and every kernel it started."""
        _kill_tree(self.workers[index].pid)
        self.workers[index].wait(10)

    def stop(self) -> None:
        for worker in self.workers:
            _stop(worker)
        if self.scheduler is not None:
            _stop(self.scheduler)

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted(self.folder.glob("*.log"))
        )

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - kept for the process's life
        cwd = self.folder / name
        cwd.mkdir(exist_ok=True)
        return subprocess.Popen(args, cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``proc`` (a worker tears its kernel pool down), then kill what is left."""
    if proc.poll() is None:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()


def _kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.Error:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
