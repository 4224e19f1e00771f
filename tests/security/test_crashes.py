"""A crash leaves no process and no run that claims to be running.

Real ``mlnb run`` and ``mlnb monitor`` processes are killed with SIGKILL in
the middle of their work: their kernels (forked by the fork server) must go
too, and the pipeline run they left ``RUNNING`` is ended ``KILLED``, with the
reason, the next time mlnb looks at its experiment. A ``--resume`` of a run
that still runs is refused while the run carries on to ``FINISHED``.

The stage waits for a file the test writes (or up to ``seconds``), so no test
sleeps longer than the machine needs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import psutil
import pytest

from tests.monitoring.project import environment, untrained

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SPEC = """
    name: p
    stages:
      waits:
        notebook: notebooks/waits.ipynb
        cache: false
"""
#: how long the kernels of a SIGKILLed process may take to notice (ipykernel polls each second)
GONE_WITHIN = 10.0
STARTUP = 240.0  # a stage's start on a busy machine: imports, kernels, the store


def waiting_notebook(folder: Path) -> None:
    """A stage that marks ``started`` beside itself, then waits for ``release`` (or ``seconds``)."""
    parameters = nbformat.v4.new_code_cell("seconds = 120.0")
    parameters.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import pathlib, time\n"
        'pathlib.Path("started").touch()\n'
        "deadline = time.monotonic() + seconds\n"
        'while time.monotonic() < deadline and not pathlib.Path("release").exists():\n'
        "    time.sleep(0.05)"
    )
    notebook = nbformat.v4.new_notebook(cells=[parameters, body])
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, folder / "waits.ipynb")


class Tree:
    """A process's descendants as first seen: (pid, start time), so a reused pid is not them."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.root = proc.pid
        self.seen: dict[tuple[int, float], str] = {}

    def look(self) -> None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.root).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    self.seen[(child.pid, child.create_time())] = " ".join(child.cmdline())

    def kernels(self) -> int:
        """How many descendants are not the root's own children (forked by the fork server)."""
        count = 0
        for pid, _ in self.seen:
            with contextlib.suppress(psutil.Error):
                count += psutil.Process(pid).ppid() != self.root
        return count

    def alive(self) -> list[str]:
        left = []
        for (pid, created), command in self.seen.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid} ({proc.memory_info().rss >> 20} MB): {command}")
        return left

    def kill_left(self) -> None:
        for pid, created in self.seen:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created:
                    proc.kill()


def kill_and_wait_gone(proc: subprocess.Popen[str], tree: Tree) -> float:
    """SIGKILL ``proc``; the seconds until none of its descendants lives (fails past the limit)."""
    tree.look()
    assert tree.seen, "it started no process"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    killed = time.monotonic()
    while tree.alive():
        assert time.monotonic() - killed < GONE_WITHIN, "outlived mlnb:\n" + "\n".join(tree.alive())
        time.sleep(0.1)
    return time.monotonic() - killed


class Runs:
    """``mlnb run`` processes in a project with the waiting stage."""

    def __init__(self, project) -> None:
        self.project = project
        waiting_notebook(project.root / "notebooks")
        project.spec(SPEC)
        self.started = project.root / "notebooks" / "started"
        self.release = project.root / "notebooks" / "release"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}

    def start(self, *args: str) -> subprocess.Popen[str]:
        self.started.unlink(missing_ok=True)
        return subprocess.Popen(
            [sys.executable, "-m", "mlnb.cli", "run", "pipelines/p.yaml", *args],
            cwd=self.project.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_started(self, proc: subprocess.Popen[str], tree: Tree | None = None) -> None:
        deadline = time.monotonic() + STARTUP
        while not self.started.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the stage did not start"
            if tree is not None:
                tree.look()
            time.sleep(0.1)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.project.mlnb("run", "pipelines/p.yaml", *args, env=self.env)

    def pipeline_run(self) -> object:
        """The one pipeline run of the project."""
        client = self.project.client()
        [run] = client.search_runs(
            [client.get_experiment_by_name("p").experiment_id],
            filter_string="tags.`mlnb.kind` = 'pipeline'",
        )
        return run

    def stages_of(self, run_id: str) -> list:
        client = self.project.client()
        return client.search_runs(
            [client.get_experiment_by_name("p").experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'",
        )


@pytest.fixture
def runs(project) -> Iterator[Runs]:
    yield Runs(project)


def killed_mid_stage(runs: Runs) -> tuple[str, int]:
    """An ``mlnb run`` SIGKILLed while its stage runs: its run id and pid; no kernel left."""
    proc = runs.start()
    tree = Tree(proc)
    try:
        runs.wait_started(proc, tree)
        assert tree.kernels() >= 1, tree.seen
        kill_and_wait_gone(proc, tree)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tree.kill_left()
    run = runs.pipeline_run()
    assert run.info.status == "RUNNING"  # nothing ended it: the process had no chance
    return run.info.run_id, proc.pid


def test_kill_9_of_mlnb_run_leaves_no_kernel_and_the_next_run_ends_it_killed(
    runs: Runs,
) -> None:
    run_id, pid = killed_mid_stage(runs)

    again = runs.run("-p", "seconds=0")

    assert again.returncode == 0, again.stderr
    client = runs.project.client()
    dead = client.get_run(run_id)
    reason = f"its process (pid {pid} on {socket.gethostname()}) died"
    assert dead.info.status == "KILLED"
    assert dead.data.tags["mlnb.error"] == reason
    [stage] = runs.stages_of(run_id)
    assert stage.info.status == "KILLED"
    assert stage.data.tags["mlnb.error"] == reason


def test_resume_of_a_run_whose_process_died_ends_the_old_attempt_and_finishes(
    runs: Runs,
) -> None:
    run_id, pid = killed_mid_stage(runs)
    runs.release.touch()

    resumed = runs.run("--resume", run_id)

    assert resumed.returncode == 0, resumed.stderr
    client = runs.project.client()
    assert client.get_run(run_id).info.status == "FINISHED"
    attempts = sorted(runs.stages_of(run_id), key=lambda r: r.info.start_time)
    assert [a.info.status for a in attempts] == ["KILLED", "FINISHED"]
    assert attempts[0].data.tags["mlnb.error"].startswith(f"its process (pid {pid} on ")


def test_resume_of_a_live_run_is_refused_and_the_run_finishes(runs: Runs) -> None:
    first = runs.start()
    try:
        runs.wait_started(first)
        run_id = runs.pipeline_run().info.run_id

        second = runs.run("--resume", run_id)

        runs.release.touch()
        _, err = first.communicate(timeout=STARTUP)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode != 0
    assert "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines() == [
        f"error: run '{run_id}' is still running (pid {first.pid}): wait for it to end, "
        "or stop that process, then resume it"
    ]
    assert first.returncode == 0, err
    assert runs.project.client().get_run(run_id).info.status == "FINISHED"
    [stage] = runs.stages_of(run_id)  # the refused resume started nothing
    assert stage.info.status == "FINISHED"


def test_kill_9_of_mlnb_monitor_leaves_no_kernel(tmp_path: Path) -> None:
    """The monitor keeps a warm kernel between checks, forked by a server that preloaded
    alibi-detect (hundreds of MB each): none outlives the monitor."""
    example = untrained(tmp_path / "project")
    log = tmp_path / "monitor.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlnb", "monitor", "pipelines/monitor.yaml"],
            cwd=example.root,
            env=environment(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )
    tree = Tree(proc)
    try:
        deadline = time.monotonic() + STARTUP
        while "next check at" not in log.read_text(errors="replace") or not tree.kernels():
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            tree.look()
            time.sleep(0.2)
        kill_and_wait_gone(proc, tree)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tree.kill_left()


def test_a_check_whose_monitor_died_is_ended_killed_by_the_next_check(tmp_path: Path) -> None:
    """A check run is left RUNNING by a monitor killed mid-check; the next check ends it."""
    from mlnb.pipelines.owner import Owner
    from mlnb.tracking import Tracker

    example = untrained(tmp_path / "project")
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        owner = Owner(socket.gethostname(), victim.pid, psutil.Process(victim.pid).create_time())
        tracker = Tracker(example.root, example.uri)
        experiment = tracker.experiment_id("cancer-monitor")
        left = tracker.start_run(
            experiment, "check", {"mlnb.kind": "monitor-check", **owner.tags()}
        )
        drift = tracker.start_run(experiment, "drift", {"mlnb.kind": "drift"}, parent_run_id=left)
    finally:
        victim.kill()
        victim.wait()

    done = subprocess.run(
        [sys.executable, "-m", "mlnb", "monitor", "pipelines/monitor.yaml", "--once"],
        cwd=example.root,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=STARTUP,
    )

    assert "Traceback" not in done.stderr, done.stderr
    client = example.client
    for run_id in (left, drift):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED", (run_id, done.stdout, done.stderr)
        assert run.data.tags["mlnb.error"] == f"its process ({owner}) died"
    assert tracker.running_runs(experiment, {"mlnb.kind": "monitor-check"}) == []


def test_sigterm_stops_mlnb_run_as_ctrl_c_does(runs: Runs) -> None:
    """A CI cancelling a job sends SIGTERM: the run ends KILLED, resumable, no kernel left."""
    proc = runs.start()
    tree = Tree(proc)
    try:
        runs.wait_started(proc, tree)
        tree.look()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        ended = time.monotonic()
        while tree.alive() and time.monotonic() - ended < GONE_WITHIN:
            time.sleep(0.1)
        left = tree.alive()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tree.kill_left()
    assert proc.returncode == 130, out + err
    assert not left, "outlived mlnb:\n" + "\n".join(left)
    run = runs.pipeline_run()
    assert run.info.status == "KILLED", out + err
    assert f"resume it with: mlnb run pipelines/p.yaml --resume {run.info.run_id}" in err
    [stage] = runs.stages_of(run.info.run_id)
    assert stage.info.status == "KILLED"
