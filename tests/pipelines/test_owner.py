"""Who owns a pipeline run, and which runs are ended KILLED because their process died.

Real SQLite stores, real processes (one that has exited, one that holds a run's
lock), real file locks in real workspaces.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from mlnb import tags
from mlnb.errors import PipelineError
from mlnb.pipelines.owner import Owner, claim, end_orphans, hold, lock_file
from mlnb.tracking import Tracker


@pytest.fixture
def tracker(tmp_path: Path) -> Tracker:
    return Tracker(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")


def exited_owner() -> Owner:
    """The owner a process that has ended was: same host, its pid and start time."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    started = psutil.Process(proc.pid).create_time()
    proc.communicate(b"")
    return Owner(socket.gethostname(), proc.pid, started)


def pipeline_run(tracker: Tracker, tmp_path: Path, owner: Owner, name: str = "p") -> str:
    experiment = tracker.experiment_id("owned")
    workspace = tmp_path / "runs" / name
    workspace.mkdir(parents=True)
    found_tags = {tags.KIND: tags.Kind.PIPELINE, tags.WORKSPACE: str(workspace), **owner.tags()}
    run_id = tracker.start_run(experiment, name, found_tags)
    tracker.start_run(experiment, "stage", {tags.KIND: tags.Kind.STAGE}, parent_run_id=run_id)
    return run_id


def test_an_owner_reads_back_from_its_tags() -> None:
    me = Owner.this_process()
    again = Owner.of(me.tags())
    assert again is not None and again.pid == os.getpid() and again.alive()
    assert Owner.of({}) is None
    assert not Owner(me.host, me.pid, me.started - 60).alive()  # another process with my pid


def test_runs_whose_process_died_end_killed_with_their_stages(
    tracker: Tracker, tmp_path: Path
) -> None:
    gone = exited_owner()
    dead = pipeline_run(tracker, tmp_path, gone, "dead")
    alive = pipeline_run(tracker, tmp_path, Owner.this_process(), "alive")
    elsewhere = pipeline_run(tracker, tmp_path, Owner("another-host", gone.pid, gone.started), "x")
    experiment = tracker.experiment_id("owned")

    assert end_orphans(tracker, experiment) == [dead]

    reason = f"its process (pid {gone.pid} on {gone.host}) died"
    run = tracker.get_run(dead)
    assert run.info.status == "KILLED" and run.data.tags[tags.ERROR] == reason
    [stage] = tracker.child_runs(experiment, dead)
    assert stage.info.status == "KILLED" and stage.data.tags[tags.ERROR] == reason
    for kept in (alive, elsewhere):
        assert tracker.get_run(kept).info.status == "RUNNING"


def test_a_held_lock_keeps_a_run_alive(tracker: Tracker, tmp_path: Path) -> None:
    """Another process holds the run's lock: its owner is running, whatever its pid says."""
    run_id = pipeline_run(tracker, tmp_path, exited_owner())
    lock = lock_file(tmp_path / "runs" / "p")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from mlnb.pipelines.owner import hold\n"
            f"with hold(Path({str(lock.parent)!r})):\n"
            "    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert end_orphans(tracker, tracker.experiment_id("owned")) == []
        refused = pytest.raises(PipelineError, match=f"is still running \\(pid {holder.pid}\\)")
        with refused, claim(tracker, tracker.get_run(run_id), lock.parent):
            pass
    finally:
        holder.communicate("")
    assert tracker.get_run(run_id).info.status == "RUNNING"


def test_claim_refuses_a_run_of_another_host_and_ends_a_dead_one(
    tracker: Tracker, tmp_path: Path
) -> None:
    gone = exited_owner()
    other = pipeline_run(tracker, tmp_path, Owner("another-host", 1, 0.0), "other")
    refused = pytest.raises(PipelineError, match="is running on another-host \\(pid 1\\)")
    with refused, claim(tracker, tracker.get_run(other), tmp_path / "runs" / "other"):
        pass
    dead = pipeline_run(tracker, tmp_path, gone, "dead")
    with claim(tracker, tracker.get_run(dead), tmp_path / "runs" / "dead"):
        with hold(tmp_path / "runs" / "dead") as holder:
            assert holder == os.getpid()  # held for the resumed run's lifetime
        assert tracker.get_run(dead).info.status == "KILLED"
