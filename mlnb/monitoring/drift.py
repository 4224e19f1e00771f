"""The drift check: a drift notebook run on the champion's training data against the window.

The statistics live in a plain notebook a data scientist can open and run by
hand; this module is the contract around it. Two parameters go in
(``reference_path``, ``current_path``; ``features`` and ``target`` too when
the notebook declares them) and two run tags come out (``mlnb.drift.status``:
``drift``, ``no_drift`` or ``untestable``, the :data:`DECISIONS`;
``mlnb.drift.reason``: a sentence), next to whatever figures the notebook logs.

Design decisions:

- **Warm kernels.** :func:`preload_modules` lists what the notebook imports,
  plus MLflow's SQL store when the store is a database, for the fork server of
  a monitor's kernel pool: alibi-detect and MLflow take seconds to import,
  paid once per monitor instead of once per check.
- **The reference is parsed once per champion.** Every check compares with
  the same training data: a CSV is handed to the notebook as a Parquet copy
  of what ``pandas.read_csv`` reads from it (:func:`reference_table`, made at
  the first check of a champion), which reads in a tenth of the time. The
  drift run's tag ``mlnb.training_data`` names the file it came from.
- **No decision, no trigger.** A notebook that fails, or ends without the
  status tag, fails the check; missing lineage or deleted training data is
  ``untestable``. Only a notebook that says ``drift`` can trigger a retrain.
- **An interrupt leaves no run claiming to have finished.** The drift run
  of a check that Ctrl-C or a second SIGTERM aborts ends ``KILLED``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlnb import tags
from mlnb.engine.kernels import KernelPool
from mlnb.errors import MlnbError, StageError
from mlnb.notebook import imported_modules
from mlnb.predictions.window import feature_table
from mlnb.store import client_env

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run

    from mlnb.specs.monitor import Monitor
    from mlnb.tracking import Tracker


class DriftStatus(StrEnum):
    """What a drift check found (:data:`mlnb.tags.DRIFT_STATUS` on the check run)."""

    DRIFT = "drift"
    NO_DRIFT = "no_drift"
    UNTESTABLE = "untestable"  # too few rows, a missing column, no training data
    FAILED = "failed"  # the notebook failed, or logged no decision: never a notebook's own


#: what the notebook may decide: the values of its :data:`mlnb.tags.DRIFT_STATUS` tag
DECISIONS = frozenset({DriftStatus.DRIFT, DriftStatus.NO_DRIFT, DriftStatus.UNTESTABLE})
#: what a kernel's first MLflow call imports when the store is a database (SQLAlchemy,
#: alembic, MLflow's ORM models; then the scheme's dialect): 1.5-2 s of every check,
#: paid once by the fork server
_DB_STORE_MODULES = (
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.tracking.sqlalchemy_workspace_store",
    "alembic.config",
    "alembic.command",
)
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
#: what pandas imports to read the Parquet tables mlnb hands a notebook (the window)
_PARQUET_MODULES = (
    "pyarrow.parquet",
    "pyarrow.dataset",
    "pyarrow.pandas_compat",
    "pandas.core.arrays.arrow.extension_types",
)
#: what matplotlib imports to save a figure as PNG: its Agg canvas, Pillow's plugins
_PNG_MODULES = (
    "matplotlib.backends.backend_agg",
    "PIL.PngImagePlugin",
    "PIL.BmpImagePlugin",
    "PIL.GifImagePlugin",
    "PIL.JpegImagePlugin",
    "PIL.PpmImagePlugin",
)
#: Parquet copies of references kept in a monitor's folder (the champion's, and a few
#: before it that a check of another process may still read)
KEEP_REFERENCES = 3
#: the references (by :func:`reference_table`'s key) found not to convert, in this process
_AS_IS: set[str] = set()


@dataclass
class DriftResult:
    """What the drift notebook decided.

    Attributes:
        status: the notebook's decision, or :attr:`DriftStatus.FAILED`.
        reason: one sentence (the notebook's, or why it could not run).
        run_id: the notebook's MLflow run.
        metrics: the figures it logged.
    """

    status: DriftStatus
    reason: str
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def preload_modules(notebook: Path, uri: str) -> list[str]:
    """The modules a fork server should import for kernels that run ``notebook``.

    What the notebook imports, and what those import on first use in a drift
    check: MLflow's SQL store when the store is a database, pandas' Parquet
    reader, matplotlib's PNG writer. Each is imported again by every check's
    kernel otherwise (a fresh process), 30-50 ms apart from MLflow's store.
    """
    preload = imported_modules(notebook)
    imported = {module.split(".")[0] for module in preload}
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if scheme in _DB_SCHEMES and "mlflow" in imported:
        preload += [*_DB_STORE_MODULES, f"sqlalchemy.dialects.{scheme}"]
    if "pandas" in imported:
        preload += _PARQUET_MODULES
    if "matplotlib" in imported:
        preload += _PNG_MODULES
    return preload


def reference_columns(path: Path) -> list[str]:
    """The column names of a CSV or Parquet table, without reading its rows."""
    import pandas as pd

    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return [str(c) for c in pd.read_csv(path, nrows=0).columns]


#: what a drift kernel does while it waits for a check: open the store its MLflow
#: calls use (MLflow keeps one store per URI), which costs the notebook's first
#: ``mlflow.start_run`` about 0.1 s and cannot be done before the fork
_WARMUP = "import mlflow as _m\n_m.MlflowClient().search_experiments(max_results=1)\ndel _m\n"


def warmup_code(notebook: Path) -> str:
    """The code a kernel for ``notebook`` runs before it is handed out: opening the store."""
    imported = {module.split(".")[0] for module in imported_modules(notebook)}
    return _WARMUP if "mlflow" in imported else ""


def run_drift(
    monitor: Monitor,
    pool: KernelPool,
    tracker: Tracker,
    *,
    experiment: str,
    parent_run: str,
    run_tags: Mapping[str, str],
    champion: str,
    reference: Path | None,
    window: pd.DataFrame,
    features: Sequence[str],
    target: str,
    folder: Path,
    references: Path,
) -> DriftResult:
    """Run the monitor's drift notebook, nested under ``parent_run``; read its decision.

    Args:
        monitor: the validated spec (its drift notebook, params and kernel).
        pool: where the notebook's kernel comes from.
        tracker: the MLflow store.
        experiment: the monitor's experiment.
        parent_run: the check run.
        run_tags: tags of the drift run.
        champion: the champion version, for messages.
        reference: the champion's training data (``None`` without lineage).
        window: the predictions compared.
        features: the model's input columns.
        target: the label column of the training data.
        folder: where the window's inputs and the executed notebook are written.
        references: where Parquet copies of CSV references are kept.
    """
    untestable = _without_reference(monitor, champion, reference)
    if untestable is not None:
        return untestable
    assert reference is not None  # _without_reference said so
    folder.mkdir(parents=True, exist_ok=True)
    current = folder / "current.parquet"
    _write_table(feature_table(window, features), current)
    notebook = monitor.drift_notebook
    assert notebook is not None  # a monitor without a drift section runs no drift check
    run_id = tracker.start_run(
        experiment,
        "drift",
        {
            tags.KIND: tags.Kind.DRIFT,
            tags.NOTEBOOK: str(notebook),
            tags.TRAINING_DATA: str(reference),
            **run_tags,
        },
        parent_run_id=parent_run,
    )
    table = reference_table(reference, references)
    params = _params(monitor, table, current, features, target)
    failed = _execute(monitor, pool, tracker, experiment, run_id, params, folder / "drift.ipynb")
    if failed is not None:
        return failed
    run = tracker.get_run(run_id)
    if run.info.status == "RUNNING":  # the notebook left its run open (the example ends it)
        tracker.finish(run_id, "FINISHED")
    return _decision(run, notebook)


def reference_table(reference: Path, folder: Path) -> Path:
    """The reference as the notebook reads it quickest: a CSV's Parquet copy, else itself.

    The copy holds what ``pandas.read_csv(reference)`` reads, written once
    per version of the file (its path, size and modification time name it) to
    ``folder``; of the older copies there, the :data:`KEEP_REFERENCES` newest
    stay. A CSV that Parquet would not give back as read (a text column with
    missing values comes back with ``None`` for ``NaN``), or that cannot be
    read at all, is handed over as it is: the notebook then reads, or says
    what is wrong with, the CSV itself.
    """
    import pandas as pd

    if reference.suffix.lower() != ".csv":
        return reference
    stat = reference.stat()
    key = f"{reference.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    target = folder / f"reference-{hashlib.sha256(key.encode()).hexdigest()[:16]}.parquet"
    if key in _AS_IS:
        return reference
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=".reference-", suffix=".parquet", dir=folder)
    os.close(handle)
    scratch = Path(name)
    try:
        table = pd.read_csv(reference)
        if table.select_dtypes("object").isna().any().any():
            raise ValueError("missing text values would come back as None")
        _write_table(table, scratch)
        if not pd.read_parquet(scratch).equals(table):
            raise ValueError("Parquet gives another table back")
        os.replace(scratch, target)  # whole or not at all: checks of other processes read it
    except Exception:  # not a table pandas reads, or Parquet holds as read: the notebook tells
        _AS_IS.add(key)
        return reference
    finally:
        scratch.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # another process tidying up meanwhile
        older = sorted(folder.glob("reference-*.parquet"), key=lambda p: p.stat().st_mtime)
        for stale in [p for p in older if p != target][:-KEEP_REFERENCES]:
            stale.unlink(missing_ok=True)
    return target


def _without_reference(
    monitor: Monitor, champion: str, reference: Path | None
) -> DriftResult | None:
    """The untestable result when the champion's training data cannot be had, else ``None``."""
    if reference is None:
        return DriftResult(
            DriftStatus.UNTESTABLE,
            f"champion v{champion} carries no training-data lineage (version tag "
            f"{tags.TRAINING_DATA}); add training_data: ${{stage.outputs.name}} to the "
            f"model: section of {monitor.spec.retrain.pipeline} and retrain",
        )
    if not reference.is_file():
        return DriftResult(
            DriftStatus.UNTESTABLE,
            f"the training data of champion v{champion} is gone: {reference} "
            "(was the run's workspace under .mlnb/runs deleted?)",
        )
    return None


def _params(
    monitor: Monitor, reference: Path, current: Path, features: Sequence[str], target: str
) -> dict[str, Any]:
    """The notebook's parameters: the spec's, the two tables, and what else it declares."""
    params: dict[str, Any] = {
        **monitor.drift_params,
        "reference_path": str(reference),
        "current_path": str(current),
    }
    if "features" in monitor.drift_declares:
        params["features"] = list(features)
    if "target" in monitor.drift_declares:
        params["target"] = target
    return params


def _execute(
    monitor: Monitor,
    pool: KernelPool,
    tracker: Tracker,
    experiment: str,
    run_id: str,
    params: dict[str, Any],
    executed: Path,
) -> DriftResult | None:
    """Execute the notebook in its run; the failed result, or ``None``.

    The run ends ``FAILED`` when the notebook fails and ``KILLED`` when an
    interrupt stops it (a notebook that ran through ends its run itself, or
    :func:`run_drift` does); the executed notebook is its artifact either way.
    """
    from mlnb.engine.execute import execute_stage

    notebook, spec = monitor.drift_notebook, monitor.spec.drift
    assert notebook is not None and spec is not None
    env = {
        **client_env(tracker.uri),  # a server's credentials as MLflow's variables, not in the URI
        "MLFLOW_RUN_ID": run_id,
        "MLFLOW_EXPERIMENT_ID": experiment,
        "MLNB_MONITOR": monitor.name,
    }
    status: tags.EndState = "FINISHED"
    try:
        execute_stage(
            "drift",
            notebook,
            executed,
            params,
            pool,
            kernel_name=monitor.drift_kernel,
            env=env,
            timeout=spec.timeout,
        )
    except StageError as exc:
        status = "FAILED"
        tracker.log(run_id, tags={tags.ERROR: str(exc)[: tags.VALUE_LIMIT]})
        return DriftResult(DriftStatus.FAILED, str(exc), run_id)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        with contextlib.suppress(MlnbError):
            if executed.exists():
                tracker.log_artifact(run_id, executed, "notebook")
            if status != "FINISHED":
                tracker.finish(run_id, status)
    return None


def _decision(run: Run, notebook: Path) -> DriftResult:
    """What the notebook decided, as its run's tags say; failed when they say nothing valid."""
    run_id = run.info.run_id
    found_tags, figures = run.data.tags, dict(run.data.metrics)
    decided = found_tags.get(tags.DRIFT_STATUS)
    if decided not in DECISIONS:
        return DriftResult(
            DriftStatus.FAILED,
            f"{notebook.name} logged no decision: it must set the run tag "
            f"{tags.DRIFT_STATUS} to drift, no_drift or untestable",
            run_id,
            figures,
        )
    status = DriftStatus(decided)
    return DriftResult(status, found_tags.get(tags.DRIFT_REASON, status.value), run_id, figures)


def _write_table(table: pd.DataFrame, path: Path) -> None:
    table.columns = [str(c) for c in table.columns]
    try:
        table.to_parquet(path, index=False)
    except Exception:  # mixed-type object columns: Parquet wants one type per column
        table.astype({c: str for c in table.columns if table[c].dtype == object}).to_parquet(
            path, index=False
        )
