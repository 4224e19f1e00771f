"""The example project in a temporary folder, and the ``mlnb`` processes tests run in it.

:class:`Example` is a copy of the repository's ``pipelines/`` and ``notebooks/``
(the breast-cancer pipeline and the example monitor): it runs the command line
as a user would, starts background processes whose output goes to a file
beside the project, writes the prediction log as ``mlnb serve`` would, and
reads the project's MLflow store back.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil
import yaml

from mlnb.predictions import log as predlog
from tests.helpers import REPO, free_port, wait_for_ping

MODEL = "cancer"
SEED = 1  # the order of the data set's rows; with it the retrained v2 beats v1 clearly on drift
BATCH = 10  # rows per request


@functools.cache
def dataset() -> tuple[pd.DataFrame, pd.Series]:
    """The breast-cancer rows (columns as prepare.ipynb names them) in a fixed order."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame = frame.sample(frac=1.0, random_state=SEED).reset_index(drop=True)
    return frame.drop(columns="target"), frame["target"]


def environment() -> dict[str, str]:
    """The processes' environment: no MLFLOW_* from outside, no telemetry, no colours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(DO_NOT_TRACK="true", MLFLOW_DISABLE_TELEMETRY="true", NO_COLOR="1", COLUMNS="200")
    return env


#: the retrained forest: the ci profile's five stumps cannot learn old and shifted rows at once
RETRAIN_FOREST = {"n_estimators": 10, "max_depth": 4}


def monitor_spec(**changes: Any) -> dict[str, Any]:
    """The example monitor spec, retraining with ``--profile ci`` (a forest a little larger).

    ``None`` drops a key.
    """
    spec = yaml.safe_load((REPO / "pipelines" / "monitor.yaml").read_text())
    spec["retrain"]["profile"] = "ci"
    spec["retrain"]["params"].update(RETRAIN_FOREST)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def processes_in(root: Path) -> list[str]:
    """Live processes working in the project folder (kernels, fork servers, servers)."""
    root_text = str(root.resolve())
    mine = {p.pid for p in [psutil.Process(), *psutil.Process().parents()]}
    left = []
    for proc in psutil.process_iter():
        try:
            cwd = proc.cwd()
            if proc.pid in mine or not (cwd == root_text or cwd.startswith(root_text + os.sep)):
                continue
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
        except psutil.Error:
            continue
    return left


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 30) -> int:
    """Signal a process by its PID and wait; SIGKILL if it lingers."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


@dataclass
class Once:
    """One finished ``mlnb monitor --once``: its exit code, what it said, its check run."""

    code: int
    output: str
    run: Any = None  # mlflow.entities.Run of the check


class Example:
    """A copy of the example project with v1 of ``cancer`` trained."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.env = environment()  # of the processes started in the project
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def mlnb(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """Run the mlnb command line in the project, as a user would."""
        return subprocess.run(
            [sys.executable, "-m", "mlnb", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, *args: str, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        """Start an mlnb process in the background; its output goes to a file beside the project."""
        output = self.root.parent / f"{self.root.name}-{name}.log"
        with output.open("wb") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlnb", *args],
                cwd=self.root,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        return proc, output

    @property
    def log_dir(self) -> Path:
        """Where the project's ``mlnb serve`` logs predictions."""
        return predlog.default_log_dir(self.root)

    def write_monitor(self, spec: dict[str, Any]) -> str:
        path = self.root / "pipelines" / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return str(path.relative_to(self.root))

    def once(self, spec: str, timeout: float = 240) -> Once:
        """``mlnb monitor SPEC --once``, and the check run it made."""
        before = {r.info.run_id for r in self.checks()}
        done = self.mlnb("monitor", spec, "--once", timeout=timeout)
        new = [r for r in self.checks() if r.info.run_id not in before]
        assert len(new) <= 1, new
        return Once(done.returncode, done.stdout + done.stderr, new[0] if new else None)

    def checks(self, monitor: str | None = None) -> list[Any]:
        """Every check run (of one monitor), oldest first."""
        where = "tags.`mlnb.kind` = 'monitor-check'"
        if monitor is not None:
            where += f" and tags.`mlnb.monitor` = '{monitor}'"
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        return self.client.search_runs(
            experiments, filter_string=where, order_by=["attributes.start_time ASC"]
        )

    def children(self, run: Any) -> list[Any]:
        return self.client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
        )

    def versions(self) -> list[str]:
        found = self.client.search_model_versions(f"name = '{MODEL}'")
        return sorted((str(v.version) for v in found), key=int)

    def alias(self, alias: str = "champion") -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(MODEL, alias).version)
        except MlflowException:
            return None

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(MODEL, version).tags)

    def write_log(
        self,
        rows: pd.DataFrame,
        predictions: Sequence[int],
        labels: Sequence[int] | None,
        version: str = "1",
    ) -> None:
        """Append predictions (and labels) to the project's log as ``mlnb serve`` would."""
        log = predlog.PredictionLog(self.log_dir)
        try:
            for start in range(0, len(rows), BATCH):
                ms = int(time.time() * 1000)
                request_id = predlog.new_request_id(ms)
                batch = rows.iloc[start : start + BATCH]
                outputs = [int(p) for p in predictions[start : start + BATCH]]
                columns = list(batch.columns)
                log.write_prediction(
                    request_id, ms, version, columns, batch.to_numpy().tolist(), outputs, len(batch)
                )
                if labels is not None:
                    truth = [int(v) for v in labels[start : start + BATCH]]
                    log.write_feedback(request_id, truth, ms)
        finally:
            log.close()


def split(rows: pd.DataFrame) -> dict[str, Any]:
    """A scoring request in MLflow's ``dataframe_split`` format."""
    return {"dataframe_split": {"columns": list(rows.columns), "data": rows.values.tolist()}}


class Server:
    """``mlnb serve cancer`` on 127.0.0.1, in the project folder (its log goes there)."""

    def __init__(self, project: Example, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        serve = ("serve", MODEL, "--port", str(self.port), "--poll-seconds", "0.5", *options)
        self.proc, self.output = project.start(*serve, name="serve")
        try:
            wait_for_ping(self.proc, self.url, self.log, timeout=120)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> int:
        return stop(self.proc)

    def predict(self, rows: pd.DataFrame) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/invocations", json=split(rows), timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["x-model-version"] == response.json()["model_version"]
        return response.json()

    def traffic(self, rows: pd.DataFrame, labels: pd.Series) -> tuple[float, set[str]]:
        """Predict every row in batches and send the true labels; accuracy and versions seen."""
        right, versions = 0, set()
        with httpx.Client(base_url=self.url, timeout=30) as http:
            for start in range(0, len(rows), BATCH):
                batch = rows.iloc[start : start + BATCH]
                truth = [int(v) for v in labels.iloc[start : start + BATCH]]
                answer = http.post("/invocations", json=split(batch))
                assert answer.status_code == 200, answer.text
                found = answer.json()
                versions.add(str(found["model_version"]))
                right += sum(int(p) == t for p, t in zip(found["predictions"], truth, strict=True))
                sent = http.post(
                    "/feedback", json={"request_id": found["request_id"], "labels": truth}
                )
                assert sent.status_code == 200, sent.text
        return right / len(rows), versions


def copy_of(trained: Example, root: Path) -> Example:
    shutil.copytree(trained.root, root, symlinks=True)
    return Example(root)


def checked_copy(trained: Example, root: Path) -> Iterator[Example]:
    """A copy of ``trained`` for one test (a fixture's body); no process may be left in it."""
    project = copy_of(trained, root)
    yield project
    left = processes_in(project.root)
    assert not left, "processes left behind:\n" + "\n".join(left)


def untrained(root: Path) -> Example:
    """The example project's pipelines and notebooks in ``root``, nothing run yet."""
    for name in ("pipelines", "notebooks"):
        shutil.copytree(REPO / name, root / name)
    return Example(root)
