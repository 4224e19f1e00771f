"""Live data for monitoring: the window of recent predictions, its labels and its metric.

Everything here is a pure function of the prediction log (see
:mod:`mlnb.predictions.log`): :func:`load_window` picks the rows a check looks at,
:func:`live_metric` scores the rows that got labels through ``/feedback``,
and :func:`labeled_table` turns them into training data for a retrain.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlnb.predictions.log import LABELED_BY, META_COLUMNS, load_predictions, start_of_last_rows

if TYPE_CHECKING:
    import pandas as pd

#: columns of the window that are not model inputs
NOT_INPUTS = frozenset({*META_COLUMNS, "label", LABELED_BY})


@dataclass(frozen=True)
class LiveMetric:
    """The live metric of a window.

    Attributes:
        metric: its name.
        value: the metric, or ``None`` when it could not be computed.
        labels: how many predictions in the window have labels.
        reason: why there is no value (too few labels, one class only).
    """

    metric: str
    value: float | None
    labels: int
    reason: str = ""


def load_window(
    log_dir: Path, last: int | None, since_seconds: float | None, now: float | None = None
) -> pd.DataFrame:
    """The newest ``last`` prediction rows of the log, of the last ``since_seconds``, or both.

    A missing log folder is an empty window (the service has answered nothing yet).
    """
    import pandas as pd

    if not Path(log_dir).is_dir():
        return pd.DataFrame(
            {name: [] for name in [*META_COLUMNS, "prediction", "label", LABELED_BY]}
        )
    since_ms = None
    if since_seconds is not None:
        since_ms = int(((now if now is not None else time.time()) - since_seconds) * 1000)
    elif last is not None:  # read only the newest day files that hold enough rows
        since_ms = start_of_last_rows(Path(log_dir), last)
    table = load_predictions(Path(log_dir), since_ms=since_ms)
    table = table.sort_values("time", kind="stable")
    if last is not None:
        table = table.tail(last)
    return table.reset_index(drop=True)


def input_columns(window: pd.DataFrame) -> list[str]:
    """The model-input columns of a window (not metadata, predictions or labels)."""
    return [
        c for c in window.columns if c not in NOT_INPUTS and not str(c).startswith("prediction")
    ]


def live_metric(window: pd.DataFrame, metric: str, min_labels: int) -> LiveMetric:
    """Score the window's labeled predictions with ``metric`` (a key of LIVE_METRICS)."""
    labeled = window[window["label"].notna()] if "label" in window else window.iloc[:0]
    count = len(labeled)
    if count < min_labels:
        return LiveMetric(
            metric, None, count, f"{count} labeled predictions, fewer than min_labels {min_labels}"
        )
    if "prediction" not in labeled:
        return LiveMetric(metric, None, count, "the model answers records, not one prediction")
    truth, predicted = _aligned(labeled["label"], labeled["prediction"])
    try:
        value = _score(metric, truth, predicted)
    except ValueError as exc:
        return LiveMetric(metric, None, count, f"{metric} cannot be computed: {exc}")
    if value is None or math.isnan(value):
        return LiveMetric(metric, None, count, f"{metric} is undefined on these labels")
    return LiveMetric(metric, float(value), count)


def _aligned(truth: pd.Series, predicted: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Labels and predictions of one type (labels sent as text for numeric classes, say)."""
    import pandas as pd

    truth = truth.infer_objects()
    predicted = predicted.infer_objects()
    numeric = pd.api.types.is_numeric_dtype
    if numeric(truth) and numeric(predicted):
        return truth, predicted
    return truth.astype(str), predicted.astype(str)


def _score(metric: str, truth: pd.Series, predicted: pd.Series) -> float | None:
    from sklearn import metrics as m

    classes = set(truth.unique()) | set(predicted.unique())
    average = "binary" if classes <= {0, 1} else "macro"
    if metric == "accuracy":
        return m.accuracy_score(truth, predicted)
    if metric == "balanced_accuracy":
        return m.balanced_accuracy_score(truth, predicted)
    if metric in ("f1", "precision", "recall"):
        scorer = {"f1": m.f1_score, "precision": m.precision_score, "recall": m.recall_score}
        return scorer[metric](truth, predicted, average=average, zero_division=0)
    if metric == "roc_auc":
        if truth.nunique() < 2:
            return None
        return m.roc_auc_score(truth, predicted)
    if metric == "mean_absolute_error":
        return m.mean_absolute_error(truth, predicted)
    if metric == "mean_squared_error":
        return m.mean_squared_error(truth, predicted)
    if metric == "root_mean_squared_error":
        return math.sqrt(m.mean_squared_error(truth, predicted))
    if metric == "r2_score":
        return m.r2_score(truth, predicted)
    raise ValueError(f"unknown live metric '{metric}'")


def labeled_table(window: pd.DataFrame, features: Sequence[str], target: str) -> pd.DataFrame:
    """The window's labeled rows as training data: ``features`` and the ``target`` column."""
    labeled = window[window["label"].notna()] if "label" in window else window.iloc[:0]
    present = [f for f in features if f in labeled.columns]
    table = labeled[present].copy()
    table[target] = labeled["label"].infer_objects().to_numpy()
    return table.reset_index(drop=True)


def feature_table(window: pd.DataFrame, features: Sequence[str] | None = None) -> pd.DataFrame:
    """The window's model inputs (all input columns, or those of ``features`` it has)."""
    columns = input_columns(window) if features is None else features
    return window[[c for c in columns if c in window.columns]].reset_index(drop=True)
