"""The example project: its notebooks run standalone (nbval) and as a pipeline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlnb.pipelines.runner import run_pipeline
from tests.helpers import REPO

ORDER = ["prepare.ipynb", "train.ipynb", "evaluate.ipynb"]


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the example project (notebooks and pipelines) in a temp folder."""
    root = tmp_path / "example"
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "pipelines", root / "pipelines")
    return root


def test_notebooks_run_standalone_with_their_defaults(example: Path) -> None:
    # in the order a person runs them in JupyterLab; nbval --nbval-lax checks
    # that every cell runs, without comparing outputs
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", *ORDER],
        cwd=example / "notebooks",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout and "failed" not in result.stdout
    data = example / "data"
    assert {p.name for p in data.iterdir()} >= {
        "train.csv",
        "test.csv",
        "model.joblib",
        "metrics.json",
    }
    metrics = json.loads((data / "metrics.json").read_text())
    assert metrics["roc_auc"] > 0.9
    # runs by hand are tracked in the project's own store
    assert (example / "mlflow.db").exists()


def test_example_pipeline_with_ci_profile(example: Path) -> None:
    from mlflow.tracking import MlflowClient

    result = run_pipeline(example / "pipelines" / "cancer.yaml", profile="ci")
    assert [s.status for s in result.stages] == ["succeeded"] * 3
    metrics = json.loads(Path(result.stage("evaluate").outputs["metrics_path"]).read_text())
    assert 0.8 < metrics["accuracy"] <= 1.0

    client = MlflowClient(tracking_uri=f"sqlite:///{example / 'mlflow.db'}")
    train = client.get_run(result.stage("train").run_id)
    assert train.data.params["n_estimators"] == "5"  # the ci profile reached the stage
    assert train.data.params["max_depth"] == "2"
    assert 0.8 < train.data.metrics["cv_accuracy"] <= 1.0
    evaluate = client.get_run(result.stage("evaluate").run_id)
    assert evaluate.data.metrics["test_roc_auc"] > 0.9
    models = client.search_logged_models(experiment_ids=[result.experiment_id])
    assert [m.source_run_id for m in models] == [train.info.run_id]
    # the model section: registered as version 1, and the gate made it champion
    assert result.registration is not None and result.registration.version == "1"
    assert result.decision is not None and result.decision.promoted
    assert str(client.get_model_version_by_alias("cancer", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("cancer", "challenger").version) == "1"
