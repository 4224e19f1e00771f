"""What the model tests share besides fixtures: the template store, and registering in a copy.

The ``models`` fixture (``conftest.py``) logs small scikit-learn models of known
quality once per session in a template store; :func:`store_of` gives a test its
own copy of that SQLite store, so each test registers, gates and promotes on a
store of its own without paying for logging models again.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlnb import tags
from mlnb.models.gate import GATE_EXPERIMENT, GateConfig
from mlnb.models.registry import CHALLENGER, Registry
from mlnb.specs.pipeline import ModelSpec

if TYPE_CHECKING:
    from tests.conftest import Project

HOLDOUT = "holdout.csv"
#: models logged in the template store; their holdout scores (sklearn, for reference):
#: strong ≈ 0.995 roc_auc / 0.09 log_loss, medium ≈ 0.92 / 0.33, weak ≈ 0.52 / 0.66
KINDS = ("strong", "strong_copy", "medium", "weak")


@dataclass(frozen=True)
class Models:
    """The template store: where it is, the runs that logged each model, their scores."""

    folder: Path
    experiment_id: str
    runs: dict[str, str]  # kind → run id ("no_model" logged none)
    scores: dict[str, dict[str, float]]  # kind → metric → score on the holdout data


def store_of(project: Project, models: Models) -> tuple[Registry, Path]:
    """A copy of the template store in the project, and its holdout file.

    The copy is SQLite's backup: it holds what is still in the store's write-ahead log.
    """
    with (
        contextlib.closing(sqlite3.connect(models.folder / "mlflow.db")) as source,
        contextlib.closing(sqlite3.connect(project.root / "mlflow.db")) as target,
    ):
        source.backup(target)
    holdout = project.root / HOLDOUT
    shutil.copy(models.folder / HOLDOUT, holdout)
    return Registry(project.store), holdout


def register(reg: Registry, models: Models, *kinds: str, name: str = "m") -> list[str]:
    """Register a version per model kind, in order; each becomes the challenger."""
    versions = []
    for kind in kinds:
        registration = reg.register(name, models.runs[kind], models.experiment_id)
        assert registration.created
        assert reg.alias(name, CHALLENGER) == registration.version
        versions.append(registration.version)
    return versions


def config(
    metric: str = "roc_auc", threshold: float | None = 0.9, min_improvement: float = 0.0
) -> GateConfig:
    """Gate settings as a ``model:`` section would give them."""
    spec = ModelSpec(
        name="m",
        stage="train",
        holdout="${prepare.outputs.test_path}",
        target="target",
        metric=metric,
        threshold=threshold,
        min_improvement=min_improvement,
    )
    return GateConfig.from_spec(spec)


def history(reg: Registry, name: str = "m") -> list[str]:
    """The champion history the registered model keeps for rollback."""
    found: list[str] = json.loads(
        reg.client.get_registered_model(name).tags.get(tags.CHAMPION_HISTORY, "[]")
    )
    return found


def gate_runs(reg: Registry) -> list:
    """The gate runs in the gate's own experiment (none when it does not exist yet)."""
    experiment = reg.client.get_experiment_by_name(GATE_EXPERIMENT)
    if experiment is None:
        return []
    return list(
        reg.client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{tags.KIND}` = 'gate'"
        )
    )
