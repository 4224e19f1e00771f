"""Several server processes on one port: ``mlnb serve --workers N``.

The supervisor (the ``mlnb serve`` process) binds the socket, starts N
worker processes (``python -m mlnb.serving.workers``) that inherit it, and
waits. Each worker loads the version itself, follows the alias itself and
appends to the one prediction log (each record one ``O_APPEND`` write, so
records of several processes never interleave; :mod:`mlnb.predictions.log`).
The kernel hands each new connection to one of the processes accepting on
the socket.

Design decisions:

- **Ready, or the service does not start.** A worker reports on a pipe of
  its own once its version is loaded (``ready``) or why it could not load
  it; the supervisor returns with that :class:`~mlnb.serving.server.ServeError`
  (and stops the other workers) if any fails to start, as a single process
  would.
- **A worker that dies is replaced.** After the start, a worker that exits
  (killed, out of memory) is started again, at most once per
  :data:`RESTART_SECONDS`; the others serve meanwhile.
- **Nothing outlives the supervisor.** SIGINT or SIGTERM to the supervisor
  is passed to every worker (each shuts down gracefully), and workers still
  there after :data:`STOP_SECONDS` are killed, by PID. A worker also watches
  a pipe from the supervisor: when the supervisor dies (SIGKILL), the pipe
  closes and the worker shuts down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlnb.errors import MlnbError
from mlnb.serving.server import SHUTDOWN_SECONDS, ServeError, Settings

logger = logging.getLogger(__name__)

START_SECONDS = 600.0  # a worker has this long to load its version
RESTART_SECONDS = 1.0  # a worker that died is started again no sooner than this
STOP_SECONDS = SHUTDOWN_SECONDS + 5.0  # after SIGTERM, then SIGKILL
_READY = b"ready\n"


@dataclass
class _Worker:
    """One worker process, the read end of its report pipe and the write end of its lifeline."""

    number: int
    process: subprocess.Popen[bytes]
    report: int  # the worker writes "ready" or its error here
    lifeline: int  # closed by the supervisor's death; the worker then stops
    started: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        for fd in (self.report, self.lifeline):
            with contextlib.suppress(OSError):
                os.close(fd)


def _start(number: int, sock: socket.socket, settings: Settings) -> _Worker:
    """A worker process serving on ``sock``, with its report pipe and lifeline."""
    report_r, report_w = os.pipe()
    life_r, life_w = os.pipe()
    os.set_inheritable(report_w, True)
    os.set_inheritable(life_r, True)
    fds = (sock.fileno(), report_w, life_r)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlnb.serving.workers", settings.to_json(), *map(str, fds)],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
        )
    finally:
        os.close(report_w)
        os.close(life_r)
    return _Worker(number, process, report_r, life_w)


def _await_ready(worker: _Worker, deadline: float) -> str | None:
    """``None`` once the worker reports ready; its error (or how it ended) otherwise."""
    received = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([worker.report], [], [], 0.5)
        if ready:
            chunk = os.read(worker.report, 65_536)
            if not chunk:  # the worker ended without a word
                code = worker.process.wait()
                return received.decode(errors="replace").strip() or f"it exited with code {code}"
            received += chunk
            if received == _READY:
                return None
            if received.endswith(b"\n") and not _READY.startswith(received):
                return received.decode(errors="replace").strip()
        elif worker.process.poll() is not None:
            return f"it exited with code {worker.process.returncode}"
    return f"it did not load its version within {START_SECONDS:g} s"


def _stop(workers: list[_Worker]) -> None:
    """SIGTERM every worker, and SIGKILL those still there after :data:`STOP_SECONDS`."""
    for worker in workers:
        if worker.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for worker in workers:
        try:
            worker.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning(
                "worker %d (pid %d) did not stop: killed", worker.number, worker.process.pid
            )
            worker.process.kill()
            worker.process.wait()
        worker.close()


@contextlib.contextmanager
def _stopping() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the supervisor waits."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def supervise(
    sock: socket.socket, count: int, settings: Settings, fail: Callable[..., ServeError]
) -> None:
    """Serve with ``count`` worker processes on ``sock`` until SIGINT or SIGTERM.

    Raises:
        ServeError: a worker could not start (the others are stopped first).
    """
    workers: list[_Worker] = []
    with _stopping() as stop:
        try:
            workers = [_start(number, sock, settings) for number in range(count)]
            deadline = time.monotonic() + START_SECONDS
            for worker in workers:
                problem = _await_ready(worker, deadline)
                if problem is not None:
                    raise fail(f"worker {worker.number} could not start: {problem}")
            logger.info(
                "%d workers serving (pids %s)",
                count,
                ", ".join(str(w.process.pid) for w in workers),
            )
            _watch(workers, sock, settings, stop)
        finally:
            _stop(workers)


def _watch(
    workers: list[_Worker], sock: socket.socket, settings: Settings, stop: threading.Event
) -> None:
    """Replace each worker that ends, until ``stop`` is set."""
    while not stop.wait(0.2):
        for index, worker in enumerate(workers):
            code = worker.process.poll()
            if code is None or time.monotonic() - worker.started < RESTART_SECONDS:
                continue
            logger.warning(
                "worker %d (pid %d) ended with code %d; starting it again",
                worker.number,
                worker.process.pid,
                code,
            )
            worker.close()
            workers[index] = _start(worker.number, sock, settings)


# -- the worker process ----------------------------------------------------------------------


def _follow_lifeline(fd: int) -> None:
    """SIGTERM this process once the supervisor's end of the lifeline closes (it died)."""

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 1):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="mlnb-serve-lifeline", daemon=True).start()


def main(argv: list[str]) -> int:
    """A worker: serve ``settings`` on the inherited socket; report on the report pipe."""
    import logging.config

    from mlnb.serving.auth import read_tokens
    from mlnb.serving.server import _log_config, serve_on

    settings = Settings.from_json(argv[0])
    sock_fd, report, lifeline = map(int, argv[1:4])
    logging.config.dictConfig(_log_config(settings.log_level))
    _follow_lifeline(lifeline)
    sock = socket.socket(fileno=sock_fd)

    def ready() -> None:
        os.write(report, _READY)
        os.close(report)

    try:
        tokens = read_tokens(Path(settings.tokens)) if settings.tokens is not None else None
        serve_on(sock, settings, tokens, ready)
    except MlnbError as exc:
        with contextlib.suppress(OSError):
            os.write(report, str(exc).replace("\n", " ").encode() + b"\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
