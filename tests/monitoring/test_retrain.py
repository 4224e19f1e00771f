"""The retrain lock across real processes, and the retrain a held lock turns away.

Each holder or probe is a ``python -c`` process of its own: the lock is an OS
lock (:mod:`filelock`), so what one process holds only another process can
meet.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from mlnb.monitoring.retrain import RetrainResult, RetrainStatus, retrain
from mlnb.specs.monitor import load_monitor
from tests.monitoring.project import MODEL, monitor_spec, untrained

#: holds the retrain lock of a model until its stdin closes
HOLD = """
import sys
from pathlib import Path
from mlnb.monitoring.retrain import retrain_lock

with retrain_lock(Path(sys.argv[1]), sys.argv[2]) as holder:
    print("held" if holder is None else f"taken by {holder}", flush=True)
    sys.stdin.readline()
"""
#: holds the lock file the way a process that leaves no pid beside it would
HOLD_WITHOUT_PID = """
import sys
from pathlib import Path
from filelock import FileLock

with FileLock(Path(sys.argv[1]) / f"{sys.argv[2]}.lock", timeout=0):
    print("held", flush=True)
    sys.stdin.readline()
"""
#: tries the lock once and prints what it met: None (it was free), or the holder's pid
PROBE = """
import sys
from pathlib import Path
from mlnb.monitoring.retrain import retrain_lock

with retrain_lock(Path(sys.argv[1]), sys.argv[2]) as holder:
    print(holder)
"""


@contextlib.contextmanager
def holding(state: Path, model: str, script: str = HOLD) -> Iterator[subprocess.Popen[str]]:
    """A process that holds the lock of ``model`` until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(state), model],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)


def probe(state: Path, model: str) -> str:
    """What another process meets when it tries the lock of ``model``."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(state), model],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_held_lock_names_its_holder_and_is_free_after_release(tmp_path: Path) -> None:
    state = tmp_path / "monitor"
    with holding(state, MODEL) as holder:
        assert probe(state, MODEL) == str(holder.pid)
        assert probe(state, "another-model") == "None"  # one lock per model
    assert holder.returncode == 0
    assert probe(state, MODEL) == "None"
    assert not (state / f"{MODEL}.lock.pid").exists()  # the holder took its pid along


def test_a_crashed_holder_leaves_the_lock_free(tmp_path: Path) -> None:
    state = tmp_path / "monitor"
    with holding(state, MODEL) as holder:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
        assert probe(state, MODEL) == "None"


@pytest.mark.parametrize(
    ("script", "which"),
    [(HOLD, "pid {pid}"), (HOLD_WITHOUT_PID, "its pid is unknown")],
    ids=["holder-known", "holder-unknown"],
)
def test_a_retrain_that_finds_the_lock_held_is_skipped(
    tmp_path: Path, script: str, which: str
) -> None:
    project = untrained(tmp_path / "project")
    monitor = load_monitor(project.root / project.write_monitor(monitor_spec()))
    state = tmp_path / "monitor"
    said: list[str] = []
    with holding(state, MODEL, script) as holder:
        result = retrain(
            monitor,
            project.uri,
            state,
            check_run="0123abcd",
            trigger="performance",
            evidence="performance: accuracy 0.5000 is below the threshold 0.9",
            window=pd.DataFrame(),
            features=[],
            target="target",
            say=said.append,
        )
    reason = f"another retrain of '{MODEL}' is running ({which.format(pid=holder.pid)})"
    assert result == RetrainResult(RetrainStatus.SKIPPED, reason)
    assert said == []  # nothing started, so nothing to tell
    assert not (state / f"{MODEL}.json").exists()  # the ledger is the running retrain's
    assert not (state / monitor.name).exists()
