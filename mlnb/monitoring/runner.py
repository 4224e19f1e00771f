"""The monitor loop: checks on a schedule, until a signal stops it.

:class:`MonitorRunner` keeps what outlives one check (the kernel pool of the
drift notebook, the state folder) and runs the checks of
:mod:`mlnb.monitoring.check`, either every ``schedule.every`` or at the times
of ``schedule.cron`` (UTC, through croniter). :func:`watch` is ``mlnb
monitor``: the loop with its signal handling, or a single check.

Design decisions:

- **A check never dies of an error** (:func:`mlnb.monitoring.check.run_check`),
  so a scheduled monitor goes on checking after a failed one.
- **Stopping never leaves a model half-registered.** The loop only checks a
  flag between checks; a second signal aborts the stages of a running
  retrain, and registration and gating hold signals until they are done
  (:func:`mlnb.pipelines.signals.signals_deferred`).
- **Warm kernels.** The monitor keeps a kernel pool whose fork server has
  imported what the drift notebook imports (alibi-detect takes seconds), and
  starts the next check's kernel as soon as one check ends. The first kernel
  starts before this process imports MLflow or the rest of a check, so the
  two import side by side (``mlnb monitor --once`` waits for the slower).
- **The window is read incrementally.** The runner keeps its
  :class:`~mlnb.predictions.window.WindowReader`, so a check parses only the
  predictions logged since the last one.
- **The disk stays bounded.** Only the newest :data:`KEEP_CHECKS` check
  folders stay under ``.mlnb/monitor/<monitor>``.
"""

from __future__ import annotations

import gc
import shutil
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mlnb.engine.kernels import KernelPool
from mlnb.errors import ExitCode
from mlnb.monitoring.drift import preload_modules, warmup_code
from mlnb.predictions.window import WindowReader
from mlnb.specs.monitor import Monitor
from mlnb.store import state_dir
from mlnb.store import tracking_uri as default_tracking_uri

if TYPE_CHECKING:
    from mlnb.monitoring.check import CheckResult

#: check folders kept on disk (the window's inputs, the executed notebook, labeled rows);
#: the executed notebook and every figure stay in MLflow
KEEP_CHECKS = 50


class MonitorRunner:
    """Runs the checks of one monitor spec against one MLflow store.

    Args:
        monitor: the validated spec.
        tracking_uri: an MLflow store other than the project's default.
        say: receives one line per thing worth telling a person.
    """

    def __init__(
        self,
        monitor: Monitor,
        tracking_uri: str | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.monitor = monitor
        self.uri = tracking_uri or default_tracking_uri(monitor.root)
        self.say = say or (lambda line: None)
        self.state = state_dir(monitor.root) / "monitor"
        self.pool: KernelPool | None = None
        if monitor.drift_notebook is not None:
            preload = preload_modules(monitor.drift_notebook, self.uri)
            self.pool = KernelPool(
                env={"MLFLOW_TRACKING_URI": self.uri},
                cwd=monitor.root,
                preload=preload,
                warmup=warmup_code(monitor.drift_notebook),
            )
            self.pool.prestart(monitor.drift_kernel)
        self.reader = WindowReader(monitor.log_dir)

    def close(self) -> None:
        """Stop the kernels this runner started."""
        if self.pool is not None:
            self.pool.close()

    def run(self, stop: threading.Event) -> None:
        """Check on the schedule until ``stop`` is set (it is looked at between checks)."""
        due = self._due(started=None, ended=time.time())
        while not stop.is_set():
            if time.time() < due:
                self.say(f"next check at {_clock(due)}")
                if stop.wait(max(0.0, due - time.time())):
                    break
            started = time.time()
            self.check()
            due = self._due(started=started, ended=time.time())

    def _due(self, *, started: float | None, ended: float) -> float:
        """When the next check is due after one that ran from ``started`` to ``ended``.

        ``every`` counts from the start of the last check (the first is due at
        once); ``cron`` names the next matching time after the last one ended.
        """
        schedule = self.monitor.spec.schedule
        if schedule.every is not None:
            return ended if started is None else started + schedule.every
        assert schedule.cron is not None  # the spec gives one or the other
        return next_cron(schedule.cron, ended)

    def check(self, warm_next: bool = True) -> CheckResult:
        """Run one check (and the retrain it calls for).

        Whatever goes wrong ends as a failed check (``error``), never an
        exception, so a monitor keeps checking; only an interrupt passes.

        Args:
            warm_next: start the next check's kernel once this one is done.
        """
        from mlnb.monitoring.check import run_check  # MLflow: after the kernel is on its way

        monitor = self.monitor
        try:
            result = run_check(
                monitor,
                uri=self.uri,
                state=self.state,
                pool=self.pool,
                say=self.say,
                reader=self.reader,
            )
        finally:
            prune_checks(self.state / monitor.name, KEEP_CHECKS)
        if self.pool is not None and warm_next:
            self.pool.prestart(monitor.drift_kernel)  # the next check's kernel
        return result

    def pipeline_spec(self) -> tuple[Path, str]:
        """The spec a retrain runs: the live deployment's, else the working copy's; and which."""
        from mlnb.monitoring.retrain import pipeline_spec

        return pipeline_spec(self.monitor)


def prune_checks(folder: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest check folders under ``folder``; the removed ones.

    A monitor checking every few minutes would otherwise fill the disk with
    copies of its window.
    """
    if not folder.is_dir():
        return []
    checks = sorted(
        (p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
    )
    removed = checks[keep:]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def next_cron(cron: str, after: float) -> float:
    """The first time after ``after`` (a Unix time) that ``cron`` names, in UTC."""
    from croniter import croniter

    start = datetime.fromtimestamp(after, UTC)
    return float(croniter(cron, start).get_next(float))


def _clock(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def watch(monitor: Monitor, *, once: bool = False, say: Callable[[str], None]) -> ExitCode:
    """What ``mlnb monitor`` does: check on the schedule until a signal, or check once.

    On the schedule, SIGINT or SIGTERM stops the loop after the current check
    (a second one aborts it with :class:`KeyboardInterrupt`). With ``once``, a
    SIGTERM interrupts like Ctrl-C; a model is never left half-registered
    either way (:func:`mlnb.pipelines.signals.signals_deferred`). The runner's
    kernels are stopped before this returns or raises.

    Returns:
        With ``once``, the check's :attr:`CheckResult.exit_code`; else :data:`ExitCode.OK`.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        say("stopping after the current check (signal again to abort it)")

    def abort(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    runner = MonitorRunner(monitor, say=say)
    try:
        if once:
            signal.signal(signal.SIGTERM, abort)  # like Ctrl-C: registration still completes
            return runner.check(warm_next=False).exit_code
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        what = ", ".join(monitor.spec.triggers)
        say(f"monitoring {monitor.spec.model}@{monitor.spec.alias} ({what}); Ctrl-C stops")
        runner.run(stop)
        return ExitCode.OK
    finally:
        runner.close()
        # mlnb monitor ends when this returns: its heap (MLflow, SQLAlchemy, pandas) would
        # cost the interpreter's teardown 1-3 s of garbage collection; frozen, it is let be
        gc.freeze()
