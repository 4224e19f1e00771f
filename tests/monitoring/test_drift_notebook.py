"""The drift notebook (notebooks/drift.ipynb), executed against a real MLflow store.

Each case executes the notebook once with papermill in a real kernel, attached
to a run made here beforehand (``MLFLOW_RUN_ID``), as ``mlnb monitor`` does.
The executions are module-scoped and share one fork server that imported the
notebook's modules: a fresh kernel and the alibi-detect import cost seconds each.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mlnb.engine.execute import execute_stage
from mlnb.engine.kernels import KernelPool
from mlnb.notebook import imported_modules
from tests.helpers import REPO

NOTEBOOK = REPO / "notebooks" / "drift.ipynb"


def table(
    rows: int, seed: int, shift: float = 0.0, colors: tuple[float, ...] = (0.6, 0.3, 0.1)
) -> pd.DataFrame:
    """Synthetic rows: three numeric columns, one categorical column of strings, a target.

    ``width(cm)`` is there for its name: its metric keys must be sanitized.
    """
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x1": rng.normal(shift, 1.0, rows),
            "x2": rng.normal(5.0, 2.0, rows),
            "width(cm)": rng.uniform(0.0, 3.0, rows),
            "color": rng.choice(["red", "green", "blue"], rows, p=list(colors)),
            "target": rng.integers(0, 2, rows),
        }
    )


@dataclass
class Case:
    run: Any  # mlflow.entities.Run, read back after the execution
    artifacts: Path  # the run's artifact folder


def currents() -> dict[str, pd.DataFrame]:
    same = table(300, seed=2)
    same.loc[:2, "x2"] = np.nan  # three rows with a missing value are left out
    return {
        "same": same,
        "shifted": table(300, seed=3, shift=1.0, colors=(0.1, 0.3, 0.6)),
        "few_rows": table(20, seed=4),
        "missing_column": table(300, seed=5).drop(columns=["x2"]),
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    """Execute the notebook once per case, as the monitor does; read each run back.

    Like ``mlnb monitor``, kernels fork from a server that imported the
    notebook's modules once, and the kernel's environment names the store and
    the run; the cases run two at a time.
    """
    root = tmp_path_factory.mktemp("drift")
    store = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("drift", artifact_location=(root / "artifacts").as_uri())
    reference = root / "reference.parquet"
    table(300, seed=1).to_parquet(reference)

    def execute(name: str, current: pd.DataFrame) -> Case:
        current_path = root / f"{name}.csv"
        current.to_csv(current_path, index=False)
        run_id = client.create_run(experiment).info.run_id
        execute_stage(
            name,
            NOTEBOOK,
            root / f"{name}.ipynb",
            params={"reference_path": str(reference), "current_path": str(current_path)},
            pool=pool,
            env={"MLFLOW_RUN_ID": run_id},
            timeout=120,
        )
        return Case(client.get_run(run_id), root / "artifacts" / run_id / "artifacts")

    with pytest.MonkeyPatch.context() as env:
        # module scope: the autouse isolation is not in force yet
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            env.delenv(key)
        pool = KernelPool(
            env={"MLFLOW_TRACKING_URI": store}, cwd=root, preload=imported_modules(NOTEBOOK)
        )
        try:
            with ThreadPoolExecutor(max_workers=2) as workers:
                futures = {name: workers.submit(execute, name, c) for name, c in currents().items()}
                return {name: future.result() for name, future in futures.items()}
        finally:
            pool.close()


def test_same_distribution_is_no_drift(cases: dict[str, Case]) -> None:
    run = cases["same"].run
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["mlnb.drift.status"] == "no_drift"
    assert tags["mlnb.drift.reason"].startswith("no drift: smallest p=")
    assert "over 4 features (bonferroni-corrected threshold 0.013)" in tags["mlnb.drift.reason"]
    assert "3 current rows with missing values left out" in tags["mlnb.drift.reason"]
    assert metrics["drift"] == 0.0
    assert metrics["features_tested"] == 4 and metrics["features_drifted"] == 0
    assert metrics["threshold"] == pytest.approx(0.05 / 4)
    assert metrics["rows_reference"] == 300 and metrics["rows_current"] == 300
    assert metrics["rows_dropped_current"] == 3
    p_values = {f: metrics[f"p_value.{f}"] for f in ["x1", "x2", "width_cm_", "color"]}
    assert all(p > metrics["threshold"] for p in p_values.values()), p_values
    assert metrics["p_value_min"] == pytest.approx(min(p_values.values()))
    assert {f"stat.{f}" for f in p_values} <= set(metrics)
    params = run.data.params
    assert params["test"] == "TabularDrift" and params["correction"] == "bonferroni"
    assert params["p_val"] == "0.05" and params["min_rows"] == "50"
    assert params["categorical_columns"] == "['color']"  # inferred: the one column of strings


def test_shifted_columns_are_drift(cases: dict[str, Case]) -> None:
    case = cases["shifted"]
    tags, metrics = case.run.data.tags, case.run.data.metrics
    assert tags["mlnb.drift.status"] == "drift"
    assert metrics["drift"] == 1.0
    assert metrics["features_drifted"] == 2 and metrics["features_tested"] == 4
    reason = tags["mlnb.drift.reason"]
    assert reason.startswith(("drift: p=", "drift: p<")) and "on 2 of 4 features (worst: " in reason
    assert "worst: x1)" in reason or "worst: color)" in reason
    assert metrics["p_value.x1"] < metrics["threshold"]
    assert metrics["p_value.color"] < metrics["threshold"]
    assert metrics["p_value.x2"] > metrics["threshold"]
    features = json.loads((case.artifacts / "drift" / "features.json").read_text())
    assert [(f["feature"], f["kind"], f["drift"]) for f in features] == [
        ("x1", "numeric", True),
        ("x2", "numeric", False),
        ("width(cm)", "numeric", False),
        ("color", "categorical", True),
    ]
    assert features[0]["stat"] == pytest.approx(metrics["stat.x1"], rel=1e-6)
    chart = case.artifacts / "drift" / "p_values.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("few_rows", "untestable: the current data has 20 rows, fewer than min_rows=50"),
        ("missing_column", "untestable: the current data has no column x2"),
    ],
)
def test_untestable_data_is_reported_not_drift(
    cases: dict[str, Case], name: str, message: str
) -> None:
    case = cases[name]
    tags, metrics = case.run.data.tags, case.run.data.metrics
    assert tags["mlnb.drift.status"] == "untestable"
    assert tags["mlnb.drift.reason"] == message
    assert metrics["drift"] == 0.0 and metrics["features_tested"] == 0
    assert "p_value_min" not in metrics and "p_value.x1" not in metrics
    # the notebook ran to its end: the run holds what the last cell logs, without a chart
    assert json.loads((case.artifacts / "drift" / "features.json").read_text()) == []
    assert not (case.artifacts / "drift" / "p_values.png").exists()
