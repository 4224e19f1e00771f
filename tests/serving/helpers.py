"""What the serving tests share: a store of registered models, a server process, request shapes.

:class:`Store` is a SQLite MLflow store with the registered models the tests
use: ``cancer`` (version 1, a scikit-learn pipeline; version 2, the same
pipeline fitted on flipped labels, so every prediction tells which version
made it), and the names the alias-moving tests own (``swap``, ``fragile``).
:class:`Server` is an ``mlnb serve`` process (``python -c "...serve(...)"``)
on 127.0.0.1 and a free port, stopped by its PID.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port, wait_for_ping

SERVE = """
import json, sys
from mlnb.predictions.retention import Retention
from mlnb.serving.server import serve
arguments = json.loads(sys.argv[1])
retention = arguments.pop("log_retention", None)
serve(**arguments, log_retention=Retention.parse(retention) if retention else None)
"""
POLL = 0.2
SMALL_LIMIT = 2**20  # the shared server's body limit, so the oversized case stays cheap


class Store:
    """A SQLite MLflow store with the registered models of this module."""

    def __init__(self, root: Path) -> None:
        import mlflow
        from mlflow import MlflowClient
        from sklearn.datasets import load_breast_cancer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.X, y = load_breast_cancer(return_X_y=True, as_frame=True)
        self.models = {
            "1": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(self.X, y),
            "2": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
                self.X, 1 - y
            ),
        }
        self.client = MlflowClient(self.uri)
        experiment = self.client.create_experiment(
            "serve", artifact_location=(root / "artifacts").as_uri()
        )
        outside = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)  # log_model works on the fluent store only
        try:
            for model in self.models.values():
                with mlflow.start_run(experiment_id=experiment):
                    mlflow.sklearn.log_model(
                        model,
                        name="model",
                        input_example=self.X.head(3),
                        pip_requirements=["scikit-learn"],
                        registered_model_name="cancer",
                    )
        finally:
            mlflow.set_tracking_uri(None)
            if outside is not None:
                os.environ["MLFLOW_TRACKING_URI"] = outside
        self.client.set_registered_model_alias("cancer", "champion", "1")
        self.sources = {v: self.client.get_model_version_download_uri("cancer", v) for v in "12"}
        for name in ("swap", "fragile"):
            self.client.create_registered_model(name)
            for version in "12":
                self.client.create_model_version(name, source=self.sources[version])

    def register_broken(self, name: str) -> str:
        """A new version of ``name`` whose model file is garbage; returns the version."""
        broken = self.root / f"broken-{name}"
        shutil.copytree(urlparse(self.sources["1"]).path, broken)  # a file: URI
        for path in broken.glob("model.*"):
            path.write_bytes(b"not a model")
        return str(self.client.create_model_version(name, source=str(broken)).version)

    def predict(self, version: str, rows: pd.DataFrame) -> list[int]:
        return self.models[version].predict(rows).tolist()


class Server:
    """An ``mlnb serve`` process on 127.0.0.1."""

    def __init__(self, folder: Path, store: Store, model: str, **options: Any) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = Path(options.pop("log_dir", folder / "predictions"))
        arguments = {
            "model": model,
            "host": "127.0.0.1",
            "port": self.port,
            "tracking_uri": store.uri,
            "log_dir": str(self.log_dir),
            "poll_seconds": POLL,
            **options,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"  # stay on 127.0.0.1
        self.output = folder / f"server-{self.port}.log"
        with self.output.open("wb") as output:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVE, json.dumps(arguments)],
                cwd=folder,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_ping(self.proc, self.url, self.log, timeout=90)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the server by its PID and wait for it; SIGKILL if it lingers."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def predict(self, payload: Any = None, **kwargs: Any) -> httpx.Response:
        if payload is not None:
            kwargs["json"] = payload
        return httpx.post(f"{self.url}/invocations", timeout=30, **kwargs)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30)

    def feedback(self, payload: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/feedback", json=payload, timeout=30)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def raw(content: bytes | str, media: str | None = "application/json") -> dict[str, Any]:
    return {"content": content, "headers": {"content-type": media} if media else {}}


def rows_of(store: Store) -> pd.DataFrame:
    rows = store.X.iloc[[0, 19, 20, 50, 100, 150, 200, 300]]
    assert set(store.predict("1", rows)) == {0, 1}  # both classes: a meaningful comparison
    return rows


def parquet(rows: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    rows.to_parquet(buffer, index=False)
    return buffer.getvalue()


FORMATS: dict[str, Callable[[pd.DataFrame], dict[str, Any]]] = {
    "dataframe_split": lambda r: {"json": {"dataframe_split": r.to_dict(orient="split")}},
    "dataframe_records": lambda r: {"json": {"dataframe_records": r.to_dict(orient="records")}},
    "instances": lambda r: {"json": {"instances": r.to_dict(orient="records")}},
    "inputs": lambda r: {"json": {"inputs": r.to_dict(orient="list")}},
    "split, columns shuffled, an extra one": lambda r: {
        "json": {
            "dataframe_split": r.assign(id="x")[["id", *reversed(r.columns)]].to_dict(
                orient="split"
            )
        }
    },
    "csv": lambda r: {"content": r.to_csv(index=False), "headers": {"content-type": "text/csv"}},
    "parquet": lambda r: {
        "content": parquet(r),
        "headers": {"content-type": "application/vnd.apache.parquet"},
    },
}
