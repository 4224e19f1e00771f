"""Runs started from the panel: ``mlnb run`` processes of this server, stopped as Ctrl-C does.

Each launch is one ``python -m mlnb run`` child in the project folder, with
this server's environment (so the project's store, as the command line
resolves it). Its output goes to a file in the state folder, whose last lines
the panel shows. Stop sends SIGTERM, which ``mlnb run`` takes as Ctrl-C (and
which, unlike SIGINT, a server started in the background by a shell still
delivers): the stage under way is killed and the run ends KILLED. When the server stops,
every launch still running is stopped the same way, and killed if it has not
ended within :data:`STOP_WAIT` seconds.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlnb import tags
from mlnb.errors import NotFoundError, UsageError
from mlnb.store import state_dir
from mlnb.tracking import Tracker

#: launches running at once
MAX_RUNNING = 4
#: parameter overrides of one launch, and the length of each key and value
MAX_OVERRIDES = 32
MAX_KEY = 128
MAX_VALUE = 1000
#: the most output a launch shows (its last characters)
TAIL = 4000
#: seconds a launch has to end after SIGTERM when the server stops
STOP_WAIT = 20.0
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

LaunchState = Literal["running", "stopping", "exited"]


@dataclass
class Launch:
    """One ``mlnb run`` started from the panel."""

    id: str
    pipeline: str
    profile: str | None
    params: dict[str, str]
    pid: int
    started: float
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    stopping: bool = False
    run_id: str | None = None

    @property
    def state(self) -> LaunchState:
        if self.process.poll() is not None:
            return "exited"
        return "stopping" if self.stopping else "running"

    def as_dict(self) -> dict[str, Any]:
        try:
            with self.log.open("rb") as f:
                f.seek(max(0, self.log.stat().st_size - TAIL))
                output = f.read().decode("utf-8", "replace")
        except OSError:
            output = ""
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "profile": self.profile,
            "params": self.params,
            "pid": self.pid,
            "started": self.started,
            "state": self.state,
            "returncode": self.process.returncode,
            "run_id": self.run_id,
            "output": output,
        }


def overrides(given: Any) -> dict[str, str]:
    """Parameter overrides from a request body, each as ``mlnb run -p KEY=VALUE`` takes it.

    Raises:
        UsageError: not an object of short keys and scalar values, or too many.
    """
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise UsageError("'params' must be an object of KEY: VALUE (KEY or STAGE.KEY)")
    if len(given) > MAX_OVERRIDES:
        raise UsageError(f"'params' has {len(given)} overrides; at most {MAX_OVERRIDES}")
    found: dict[str, str] = {}
    for key, value in given.items():
        if len(key) > MAX_KEY or not _KEY.match(key):
            raise UsageError(
                f"parameter '{key[:MAX_KEY]}' is not a name: KEY or STAGE.KEY "
                f"(letters, digits, '_'; at most {MAX_KEY} characters)"
            )
        if isinstance(value, bool):
            value = str(value).lower()
        if not isinstance(value, str | int | float):
            raise UsageError(f"parameter '{key}' must be a string, number or boolean")
        text = str(value)
        if len(text) > MAX_VALUE or "\n" in text or "\0" in text:
            raise UsageError(
                f"parameter '{key}' must be one line of at most {MAX_VALUE} characters"
            )
        found[key] = text
    return found


class Launcher:
    """The ``mlnb run`` processes this server started, by launch id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.launches: dict[str, Launch] = {}
        self.lock = threading.Lock()
        self._ids = itertools.count(1)

    def running(self) -> list[Launch]:
        return [launch for launch in self.launches.values() if launch.state != "exited"]

    def start(
        self, pipeline: str, spec: Path, profile: str | None, params: dict[str, str]
    ) -> Launch:
        """Start ``mlnb run`` on ``spec`` (already checked with the same profile and params).

        Raises:
            UsageError: :data:`MAX_RUNNING` launches are running already.
        """
        with self.lock:
            if len(self.running()) >= MAX_RUNNING:
                raise UsageError(
                    f"{MAX_RUNNING} runs started here are still running; stop one first"
                )
            launch_id = f"{os.getpid()}-{next(self._ids)}"
            folder = state_dir(self.root) / "lab"
            folder.mkdir(parents=True, exist_ok=True)
            log = folder / f"launch-{launch_id}.log"
            command = [sys.executable, "-m", "mlnb", "run", str(spec)]
            if profile:
                command += ["--profile", profile]
            for key, value in params.items():
                command += ["-p", f"{key}={value}"]
            with log.open("wb") as out:
                process = subprocess.Popen(
                    command,
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            launch = Launch(
                launch_id, pipeline, profile, params, process.pid, time.time(), log, process
            )
            self.launches[launch_id] = launch
            return launch

    def get(self, launch_id: str) -> Launch:
        """Raises: NotFoundError: no launch of that id on this server."""
        launch = self.launches.get(launch_id)
        if launch is None:
            raise NotFoundError(f"no run '{launch_id}' was started from this server")
        return launch

    def find_run(self, tracker: Tracker, launch: Launch) -> str | None:
        """The MLflow pipeline run of a launch: the one whose owner is its process."""
        if launch.run_id is None:
            experiment = tracker.client.get_experiment_by_name(launch.pipeline)
            if experiment is not None:
                found = tracker.client.search_runs(
                    [experiment.experiment_id],
                    filter_string=(
                        f"tags.`{tags.KIND}` = '{tags.Kind.PIPELINE}' and "
                        f"tags.`{tags.OWNER_PID}` = '{launch.pid}' and "
                        f"attributes.start_time >= {int(launch.started * 1000) - 1000}"
                    ),
                    max_results=1,
                )
                launch.run_id = found[0].info.run_id if found else None
        return launch.run_id

    def stop(self, launch_id: str) -> Launch:
        """Interrupt a launch as Ctrl-C does (SIGTERM); it ends its run KILLED."""
        launch = self.get(launch_id)
        if launch.state == "running":
            launch.stopping = True
            launch.process.send_signal(signal.SIGTERM)
        return launch

    def close(self) -> None:
        """Stop every launch still running; kill those that do not end in time."""
        for launch in self.running():
            launch.stopping = True
            launch.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        for launch in list(self.launches.values()):
            try:
                launch.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                launch.process.kill()
                launch.process.wait()
