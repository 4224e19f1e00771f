"""Who runs a run, and what becomes of a run whose process died.

A pipeline run records its owner on its MLflow run (host, pid and the
process's start time: :data:`mlnb.tags.OWNER_HOST`, :data:`~mlnb.tags.OWNER_PID`,
:data:`~mlnb.tags.OWNER_STARTED`) and holds a lock in its workspace for as
long as it runs (:func:`hold`). The system releases that lock when the
process ends however it ends — ``kill -9``, a crash, a reboot — so a lock
that can be taken means the owner is gone, whatever process has its pid now.

:func:`end_orphans` ends such runs ``KILLED``, their stage runs too, with the
reason in :data:`mlnb.tags.ERROR` (``its process (pid N on HOST) died``);
``mlnb run`` calls it for the pipeline's experiment before it starts, and
``--resume`` for the run it resumes, refusing one whose owner still runs
(:func:`claim`). Monitor checks and deployments record their owner too (they
hold no workspace lock: the owner's pid and start time tell), and the next
check or deploy ends those its dead predecessors left running. Only runs of
this host are judged: on a store shared by machines, a process elsewhere
cannot be seen from here.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from mlnb import tags
from mlnb._files import try_exclusive
from mlnb.errors import PipelineError
from mlnb.store import located

if TYPE_CHECKING:
    from mlflow.entities import Run

    from mlnb.tracking import Tracker

#: the lock a running pipeline run holds, in its workspace
LOCK = ".owner.lock"
#: how far two readings of one process's start time may differ (seconds)
_SAME_START = 0.5


@dataclass(frozen=True)
class Owner:
    """The process that runs a pipeline run.

    Attributes:
        host: the machine's host name.
        pid: the process id.
        started: when the process started (Unix seconds), which tells it from
            a later process given the same pid.
    """

    host: str
    pid: int
    started: float

    @classmethod
    def this_process(cls) -> Owner:
        """The owner that this process is."""
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    @classmethod
    def of(cls, run_tags: Mapping[str, str]) -> Owner | None:
        """The owner a run's tags record, or ``None`` for a run that records none."""
        try:
            return cls(
                run_tags[tags.OWNER_HOST],
                int(run_tags[tags.OWNER_PID]),
                float(run_tags[tags.OWNER_STARTED]),
            )
        except (KeyError, ValueError):
            return None

    def tags(self) -> dict[str, str]:
        """The run tags that record this owner."""
        return {
            tags.OWNER_HOST: self.host,
            tags.OWNER_PID: str(self.pid),
            tags.OWNER_STARTED: f"{self.started:.3f}",
        }

    @property
    def local(self) -> bool:
        """Whether the owner runs on this host (only then can it be judged)."""
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """Whether this very process still runs here (not a later one with its pid)."""
        try:
            process = psutil.Process(self.pid)
            return (
                abs(process.create_time() - self.started) < _SAME_START
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


def lock_file(workspace: Path) -> Path:
    """The lock a pipeline run holds in its workspace while it runs."""
    return workspace / LOCK


@contextlib.contextmanager
def hold(workspace: Path) -> Iterator[int | None]:
    """Hold the run's lock while the block runs; yields ``None``, or the pid that holds it."""
    with try_exclusive(lock_file(workspace)) as holder:
        yield holder


def end_orphans(
    tracker: Tracker, experiment_id: str, kind: tags.Kind = tags.Kind.PIPELINE
) -> list[str]:
    """End ``KILLED`` the running runs of ``kind`` of this host whose process died; their ids.

    Their nested runs still running (a pipeline's stages, a check's drift run)
    end ``KILLED`` with them.

    Raises:
        TrackingError: the store cannot be searched or written.
    """
    found = tracker.running_runs(
        experiment_id, {tags.KIND: kind, tags.OWNER_HOST: socket.gethostname()}
    )
    ended = []
    for run in found:
        owner = Owner.of(run.data.tags)
        if owner is None or not owner.local or owner.alive():
            continue
        recorded_workspace = run.data.tags.get(tags.WORKSPACE)
        workspace = located(recorded_workspace, tracker.root) if recorded_workspace else None
        orphaned: contextlib.AbstractContextManager[bool] = (
            _orphaned(owner, workspace)
            if workspace is not None and workspace.is_dir()
            else contextlib.nullcontext(True)  # gone, and its lock with it: the process tells
        )
        with orphaned as dead:
            if dead and _end_orphan(tracker, run.info.run_id, owner):
                ended.append(run.info.run_id)
    return ended


@contextlib.contextmanager
def _orphaned(owner: Owner, workspace: Path) -> Iterator[bool]:
    """Whether a local owner is gone, its run's lock held meanwhile when it is."""
    with hold(workspace) as holder:
        yield holder is None and not owner.alive()


@contextlib.contextmanager
def claim(tracker: Tracker, run: Run, workspace: Path) -> Iterator[None]:
    """Hold the lock of run ``run`` to resume it; a run its owner left running ends ``KILLED``.

    Raises:
        PipelineError: the run is still running in another process (here, or
            on another host, which cannot be judged from here).
    """
    run_id = run.info.run_id
    owner = Owner.of(run.data.tags)
    with hold(workspace) as holder:
        if holder is not None:
            raise PipelineError(
                f"run '{run_id}' is still running (pid {holder}): wait for it to end, "
                "or stop that process, then resume it",
                run_id=run_id,
            )
        if run.info.status == "RUNNING" and owner is not None:
            if not owner.local:
                raise PipelineError(
                    f"run '{run_id}' is running on {owner.host} (pid {owner.pid}): resume "
                    "it there once it ended, or once mlnb run there saw it died",
                    run_id=run_id,
                )
            if owner.alive():
                raise PipelineError(
                    f"run '{run_id}' is still running ({owner}): wait for it to end, "
                    "or stop that process, then resume it",
                    run_id=run_id,
                )
            _end_orphan(tracker, run_id, owner)
        yield


def _end_orphan(tracker: Tracker, run_id: str, owner: Owner) -> bool:
    """End a run whose owner died ``KILLED``, and its nested runs still running; whether it was.

    Read again under the run's lock: a run that ended meanwhile is left as it ended.
    """
    run = tracker.get_run(run_id)
    if run.info.status != "RUNNING":
        return False
    reason = {tags.ERROR: f"its process ({owner}) died"}
    for child in tracker.child_runs(run.info.experiment_id, run_id):
        if child.info.status == "RUNNING":
            tracker.log(child.info.run_id, tags=reason)
            tracker.finish(child.info.run_id, "KILLED")
    tracker.log(run_id, tags=reason)
    tracker.finish(run_id, "KILLED")
    return True
