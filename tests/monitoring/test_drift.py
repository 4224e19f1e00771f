"""The drift notebook's contract around it: the reference it reads, the modules its kernels preload.

A CSV reference is handed to the notebook as a Parquet copy only when the
copy reads back as the CSV reads; the preloaded modules are imported here for
real, as the kernels' fork server imports them.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlnb.monitoring import drift
from tests.helpers import REPO


def training_table(rows: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "x": rng.normal(size=rows),
            "n": rng.integers(0, 9, rows),
            "flag": rng.integers(0, 2, rows).astype(bool),
            "color": rng.choice(["red", "blue"], rows),
            "target": rng.integers(0, 2, rows),
        }
    )


def test_a_csv_reference_is_read_as_a_parquet_copy_made_once(tmp_path: Path) -> None:
    csv = tmp_path / "train.csv"
    training_table().to_csv(csv, index=False)
    folder = tmp_path / "monitor"

    copy = drift.reference_table(csv, folder)

    assert copy.parent == folder and copy.suffix == ".parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(copy), pd.read_csv(csv), check_exact=True)
    made = copy.stat().st_mtime_ns
    assert drift.reference_table(csv, folder) == copy
    assert copy.stat().st_mtime_ns == made  # not written again
    assert [p.name for p in folder.iterdir()] == [copy.name]  # no scratch file left


def test_a_changed_reference_gets_a_new_copy_and_old_ones_go(tmp_path: Path) -> None:
    csv = tmp_path / "train.csv"
    folder = tmp_path / "monitor"
    copies = []
    for rows in range(20, 20 + drift.KEEP_REFERENCES + 2):
        training_table(rows).to_csv(csv, index=False)
        os.utime(csv, ns=(rows * 10**9, rows * 10**9))  # a new version of the file
        copies.append(drift.reference_table(csv, folder))
        assert len(pd.read_parquet(copies[-1])) == rows
    assert len(set(copies)) == len(copies)
    kept = sorted(folder.glob("reference-*.parquet"))
    assert kept == sorted(copies[-drift.KEEP_REFERENCES - 1 :])  # the newest, and a few before


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("a,b\nx,1\n,2\n", "a text column with a missing value: Parquet gives None for NaN"),
        ("", "an empty file: no table, the notebook says so"),
    ],
)
def test_a_reference_parquet_would_change_is_handed_over_as_it_is(
    tmp_path: Path, content: str, why: str
) -> None:
    csv = tmp_path / "train.csv"
    csv.write_text(content)
    folder = tmp_path / "monitor"
    assert drift.reference_table(csv, folder) == csv, why
    assert drift.reference_table(csv, folder) == csv, why  # asked again: the same answer
    assert not list(folder.glob("*reference-*")), why


def test_a_parquet_reference_is_read_as_it_is(tmp_path: Path) -> None:
    table = tmp_path / "train.parquet"
    training_table().to_parquet(table)
    assert drift.reference_table(table, tmp_path / "monitor") == table
    assert not (tmp_path / "monitor").exists()


@pytest.mark.parametrize(
    ("uri", "dialect"),
    [("sqlite:////tmp/mlflow.db", "sqlite"), ("postgresql+psycopg2://db/mlflow", "postgresql")],
)
def test_kernels_preload_what_a_drift_check_imports(uri: str, dialect: str) -> None:
    notebook = REPO / "notebooks" / "drift.ipynb"
    preload = drift.preload_modules(notebook, uri)
    assert {"mlflow", "pandas", "matplotlib.pyplot", "alibi_detect.cd"} <= set(preload)
    assert f"sqlalchemy.dialects.{dialect}" in preload
    assert {"mlflow.store.tracking.sqlalchemy_store", "pyarrow.parquet"} <= set(preload)
    assert "matplotlib.backends.backend_agg" in preload
    for module in preload:  # the fork server would skip a name that does not import
        importlib.import_module(module)


def test_a_server_store_preloads_no_sql_store() -> None:
    preload = drift.preload_modules(REPO / "notebooks" / "drift.ipynb", "http://127.0.0.1:5000")
    assert "mlflow" in preload
    assert not [m for m in preload if m.startswith(("sqlalchemy", "mlflow.store", "alembic"))]
