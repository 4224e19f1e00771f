"""Where mlnb keeps things: the MLflow store and the project's state folder, decided
without importing MLflow.

The embedded default is a SQLite file in the project, ``<root>/mlflow.db``,
with artifacts beside it in ``<root>/mlartifacts`` (any SQLite store keeps its
artifacts beside its file); ``MLFLOW_TRACKING_URI``
points mlnb and the stage kernels at another store. Kept apart from
:mod:`mlnb.tracking` so that a run can start its kernels before it pays for
importing MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
STATE_DIR = ".mlnb"


def state_dir(root: Path) -> Path:
    """The folder where mlnb keeps a project's workspaces, cache, logs and locks."""
    return root / STATE_DIR


def tracking_uri(root: Path) -> str:
    """The store mlnb uses: ``MLFLOW_TRACKING_URI``, else ``<root>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / DB_FILE).resolve()}"


def default_artifact_location(uri: str) -> str | None:
    """Where artifacts of new experiments go: beside a SQLite store's file, else the server's say.

    Decided by the URI alone (MLflow's ``set_tracking_uri`` exports
    ``MLFLOW_TRACKING_URI``, so the environment cannot tell the default store
    from a chosen one).
    """
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        return (database.parent / ARTIFACT_DIR).resolve().as_uri()
    return None
