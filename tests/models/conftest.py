"""Fixtures of the model tests: a template store with models of known quality."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import pytest

from tests.models.helpers import HOLDOUT, KINDS, Models

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator


def _estimator(kind: str) -> BaseEstimator:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind in ("strong", "strong_copy"):  # every feature
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    feature = {"medium": "mean_radius", "weak": "mean_fractal_dimension"}[kind]
    return make_pipeline(
        ColumnTransformer([("one", "passthrough", [feature])]), LogisticRegression()
    )


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Log the models of :data:`KINDS` (and a run with none) once, with their holdout scores."""
    import mlflow
    import mlflow.sklearn
    from sklearn.datasets import load_breast_cancer
    from sklearn.metrics import log_loss, roc_auc_score
    from sklearn.model_selection import train_test_split

    folder = tmp_path_factory.mktemp("models")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    train, test = train_test_split(frame, test_size=0.25, random_state=0, stratify=frame["target"])
    test.to_csv(folder / HOLDOUT, index=False)
    X, y = train.drop(columns=["target"]), train["target"]
    X_test, y_test = test.drop(columns=["target"]), test["target"]

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment(
        "models", artifact_location=(folder / "mlartifacts").as_uri()
    )
    runs, scores = {}, {}
    for kind in KINDS:
        model = _estimator(kind).fit(X, y)
        proba = model.predict_proba(X_test)[:, 1]
        scores[kind] = {
            "roc_auc": roc_auc_score(y_test, proba),
            "log_loss": log_loss(y_test, proba),
        }
        with mlflow.start_run(experiment_id=experiment_id) as run, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # schema hints about integer predictions
            mlflow.sklearn.log_model(
                model, name="model", input_example=X.head(3), pip_requirements=["scikit-learn"]
            )
        runs[kind] = run.info.run_id
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("nothing", 1.0)
    runs["no_model"] = run.info.run_id
    mlflow.set_tracking_uri(None)
    assert scores["strong"]["roc_auc"] > 0.99
    assert 0.9 < scores["medium"]["roc_auc"] < scores["strong"]["roc_auc"] - 0.05
    assert scores["strong"]["roc_auc"] - scores["medium"]["roc_auc"] < 0.1  # min_improvement
    assert scores["strong"] == scores["strong_copy"]
    assert scores["weak"]["roc_auc"] < 0.9
    return Models(folder, experiment_id, runs, scores)
