"""Live data for monitoring: the window of recent predictions, its labels and its metric.

Everything here is a function of the prediction log (see
:mod:`mlnb.predictions.log`): :class:`WindowReader` and :func:`load_window` pick
the rows a check looks at, :func:`live_metric` scores the rows that got labels
through ``/feedback``, and :func:`labeled_table` turns them into training data
for a retrain.

Design decisions:

- **A monitor reads its window incrementally.** Check after check, a monitor
  reads the same day files while a service appends to the newest one. A
  :class:`WindowReader` keeps the rows and labels of the days it read, each
  day with a :class:`mlnb.predictions.files.Cursor`: a day file is parsed
  once, then only the lines appended to it; a day whose files did not change
  is not parsed again, and a compressed day is read once more, whole; when
  nothing changed, the last window is handed out again (a copy). What it
  returns is what :func:`load_window` (one read, from scratch) returns. It
  holds the window's days, and the last window, in memory.
- **Each record is validated once**, by the prediction log's own record
  models, and a skipped line is named once, when it is first read.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ValidationError

from mlnb.predictions.files import (
    FEEDBACK,
    PREDICTIONS,
    Cursor,
    Line,
    day_of,
    day_start,
    days,
    follow_day,
)
from mlnb.predictions.log import (
    LABELED_BY,
    META_COLUMNS,
    Skipped,
    _Feedback,
    _Group,
    _invalid,
    _join_labels,
    _Prediction,
)

if TYPE_CHECKING:
    import pandas as pd

#: columns of the window that are not model inputs
NOT_INPUTS = frozenset({*META_COLUMNS, "label", LABELED_BY})
#: a label and who sent it, by request id and row
Labels = dict[tuple[str, int], tuple[Any, str | None]]


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

    One read from scratch (:meth:`WindowReader.read` on a new reader). A
    missing log folder is an empty window (the service has answered nothing yet).
    """
    return WindowReader(log_dir).read(last, since_seconds, now)


@dataclass
class _Rows:
    """One day of predictions as read so far."""

    cursor: Cursor = field(default_factory=Cursor)
    table: pd.DataFrame | None = None


@dataclass
class _Labels:
    """One day of feedback as read so far."""

    cursor: Cursor = field(default_factory=Cursor)
    labels: Labels = field(default_factory=dict)


class WindowReader:
    """The window of one prediction log, read again at each check, parsing only what is new.

    Args:
        log_dir: the log folder (it need not exist yet).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self._rows: dict[str, _Rows] = {}
        self._labels: dict[str, _Labels] = {}
        self._changes = 0  # counts what the reader read or dropped since it began
        self._last: tuple[tuple[Any, ...], pd.DataFrame] | None = None  # a read and its window

    def read(
        self, last: int | None, since_seconds: float | None, now: float | None = None
    ) -> pd.DataFrame:
        """The newest ``last`` rows of the log, of the last ``since_seconds``, or both.

        Columns as :func:`mlnb.predictions.log.load_predictions` has them, rows
        oldest first. ``last`` alone reads only the newest days that hold that
        many rows. A missing log folder is an empty window.

        Args:
            last: how many of the newest rows (``None``: no limit).
            since_seconds: how far back from ``now`` (``None``: no limit).
            now: the time the window ends (a Unix time; default: now).
        """
        import pandas as pd

        if not self.log_dir.is_dir():
            self._rows.clear()
            self._labels.clear()
            self._last = None
            return pd.DataFrame(
                {name: [] for name in [*META_COLUMNS, "prediction", "label", LABELED_BY]}
            )
        skipped = Skipped()
        since_ms = None
        if since_seconds is not None:
            since_ms = int(((now if now is not None else time.time()) - since_seconds) * 1000)
        tables, since_ms = self._days(last, since_ms, skipped)
        first = day_of(since_ms) if since_ms is not None else ""
        labels = self._labels_from(first, skipped)
        skipped.report()
        read = (last, since_ms, self._changes)
        if self._last is not None and self._last[0] == read:
            return self._last[1].copy()  # nothing changed since the last read
        table = _concat(tables)
        if since_ms is not None:
            table = table[table["time"] >= pd.Timestamp(since_ms, unit="ms", tz="UTC")]
        table = table.reset_index(drop=True)  # a new frame: the days kept stay as they are
        _join_labels(table, labels)  # before the tail: a label's type is the days' (as read)
        table = table.sort_values("time", kind="stable")
        if last is not None:
            table = table.tail(last)
        table = table.reset_index(drop=True)
        self._last = (read, table.copy())
        return table

    def _days(
        self, last: int | None, since_ms: int | None, skipped: Skipped
    ) -> tuple[list[pd.DataFrame], int | None]:
        """The day tables the window needs, oldest first, and the time its rows start.

        With ``since_ms``, the days from its day on. Else the newest days that
        hold ``last`` rows, and the start of the oldest of them (``None`` when
        every day is needed). Days no longer needed are dropped.
        """
        held = days(self.log_dir, PREDICTIONS)
        tables: dict[str, pd.DataFrame] = {}
        if since_ms is not None:
            first = day_of(since_ms)
            tables = {day: self._day(day, skipped) for day in held if day >= first}
        else:
            rows = 0
            for day in reversed(held):
                tables[day] = self._day(day, skipped)
                rows += len(tables[day])
                if last is not None and rows >= last:
                    break
            oldest = min(tables, default=None)
            if oldest is not None and oldest != held[0]:
                since_ms = int(day_start(oldest).timestamp() * 1000)
        for day in set(self._rows) - set(tables):
            del self._rows[day]
            self._changes += 1
        return [tables[day] for day in sorted(tables)], since_ms

    def _day(self, day: str, skipped: Skipped) -> pd.DataFrame:
        """One day's rows: what was kept, and what was appended to its files since."""
        import pandas as pd

        kept = self._rows.setdefault(day, _Rows())
        try:
            with follow_day(self.log_dir, PREDICTIONS, day, kept.cursor) as (again, lines):
                records = _records(lines, _Prediction, skipped)
                first = next(records, None)
                new = _table(itertools.chain([first], records)) if first is not None else None
        except BaseException:
            del self._rows[day]  # its cursor moved past lines that were not kept
            self._changes += 1
            raise
        if again or kept.table is None:
            kept.table = new if new is not None else _table([])
            self._changes += 1
        elif new is not None:
            kept.table = pd.concat([kept.table, new], ignore_index=True)
            self._changes += 1
        return kept.table

    def _labels_from(self, first: str, skipped: Skipped) -> Labels:
        """The latest label of each request row, from the feedback days from ``first`` on."""
        needed = days(self.log_dir, FEEDBACK, first)
        labels: Labels = {}
        for day in needed:
            labels.update(self._day_labels(day, skipped))
        for day in set(self._labels) - set(needed):
            del self._labels[day]
            self._changes += 1
        return labels

    def _day_labels(self, day: str, skipped: Skipped) -> Labels:
        """One day's labels: what was kept, and what was appended to its files since."""
        kept = self._labels.setdefault(day, _Labels())
        try:
            with follow_day(self.log_dir, FEEDBACK, day, kept.cursor) as (again, lines):
                if again:
                    kept.labels = {}
                    self._changes += 1
                for record in _records(lines, _Feedback, skipped):
                    for row, value in enumerate(record.labels):
                        kept.labels[(record.request_id, row)] = (value, record.sender)
                    self._changes += 1
        except BaseException:
            del self._labels[day]  # its cursor moved past lines that were not kept
            self._changes += 1
            raise
        return kept.labels


def _records(lines: Iterator[Line], model: type[BaseModel], skipped: Skipped) -> Iterator[Any]:
    """The valid records among ``lines``; a torn or malformed line goes to ``skipped``."""
    for path, number, line in lines:
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            skipped.add(path, number, "not a whole JSON line")
            continue
        if not isinstance(record, dict):
            skipped.add(path, number, "not a JSON object")
            continue
        try:
            yield model.model_validate(record)
        except ValidationError as exc:
            skipped.add(path, number, _invalid(exc))


def _table(records: Iterable[_Prediction]) -> pd.DataFrame:
    """Prediction records as rows, typed as :func:`~mlnb.predictions.log.load_predictions` does."""
    import pandas as pd

    groups: dict[tuple[str, ...], _Group] = {}
    for record in records:
        groups.setdefault(tuple(record.columns), _Group()).add(record)
    frames = [group.frame(columns) for columns, group in groups.items()]
    if frames:
        table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    else:
        table = pd.DataFrame({name: [] for name in [*META_COLUMNS, "prediction"]})
    table["time"] = pd.to_datetime(table["time"], utc=True)
    table["row"] = table["row"].astype("int64")
    table["model_version"] = table["model_version"].astype(object)
    table["arm"] = table["arm"].astype(object)
    return table


def _concat(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The day tables as one (a day without rows adds nothing, unless all are without)."""
    import pandas as pd

    full = [table for table in tables if len(table)]
    if not full:
        return tables[0] if tables else _table([])
    return pd.concat(full, ignore_index=True) if len(full) > 1 else full[0]


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
