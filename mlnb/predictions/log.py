"""The prediction log: every prediction and every label, appended durably, read back as a table.

``mlnb serve`` writes one record per answered request; ``mlnb monitor`` (or a
notebook) reads the log back with :func:`load_predictions`, one row per
predicted input row with the ground-truth label joined when feedback came.

Design decisions:

- **One JSON line, one** ``os.write``. Each record is serialized whole and
  appended with a single unbuffered ``os.write`` on an ``O_APPEND`` file
  descriptor. Nothing is buffered in the process, so a record is in the
  kernel's page cache before the response leaves: a restart or a SIGKILL of
  the server loses nothing it answered, and concurrent writers (two servers on
  one project) never interleave inside a line. There is no ``fsync``: a power
  cut may cost the last seconds, the price of microseconds per record instead
  of milliseconds. A torn last line is skipped by the reader, with a warning.
- **Self-describing lines.** A prediction line carries its column names next
  to its rows, so a reader needs no other state, and versions with different
  signatures share a log.
- **A file per UTC day** (``predictions-2025-01-31.jsonl``,
  ``feedback-2025-01-31.jsonl``): retention is deleting old files, and a
  monitoring window reads only the days it needs.
- **Request ids are UUIDv7.** The time in the id names the day file that holds
  the request, so feedback for a request of last week is checked against one
  file, without an index that grows with the log. Recent requests are looked
  up in a bounded in-memory index first.
- **Feedback is a log too.** Labels are appended, never updated in place; when
  a request gets labels twice, the later record wins.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from mlnb.errors import MlnbError
from mlnb.store import state_dir

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
INDEX_SIZE = 100_000  # request ids kept in memory for feedback look-ups (~20 MB)
META_COLUMNS = ("request_id", "row", "time", "model_version")
_DAY_MS = 86_400_000
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
_FILE_NAME = re.compile(r"^(predictions|feedback)-(\d{4}-\d{2}-\d{2})\.jsonl$")


class PredictionLogError(MlnbError):
    """The prediction log cannot be read or exported as asked."""


def default_log_dir(root: Path) -> Path:
    """Where a project keeps its prediction log: ``<root>/.mlnb/predictions``."""
    return state_dir(root) / "predictions"


def new_request_id(now_ms: int) -> str:
    """A UUIDv7 (RFC 9562) for a request received at ``now_ms`` (Unix milliseconds)."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (now_ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 62 & 0xFFF) << 64
        | 0b10 << 62
        | rand & ((1 << 62) - 1)
    )
    return str(uuid.UUID(int=value))


def request_millis(request_id: str) -> int | None:
    """The Unix milliseconds a UUIDv7 request id was made at; ``None`` if it is no UUIDv7."""
    try:
        parsed = uuid.UUID(request_id)
    except (ValueError, TypeError, AttributeError):
        return None
    if parsed.version != 7:
        return None
    return parsed.int >> 80


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def _default(value: Any) -> Any:
    """Serialize what orjson does not know: NumPy scalars, bytes, anything else as text."""
    tolist = getattr(value, "tolist", None)  # NumPy arrays and scalars
    if callable(tolist):
        return tolist()
    if isinstance(value, bytes):
        import base64

        return base64.b64encode(value).decode()
    return str(value)


def _append(fd: int, data: bytes) -> None:
    """Write ``data`` whole; a regular file takes it in one call unless the disk is full."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _DayFile:
    """An ``O_APPEND`` descriptor on the current day's file of one kind, reopened at midnight."""

    def __init__(self, directory: Path, kind: str) -> None:
        self.directory = directory
        self.kind = kind
        self.day = -1
        self.fd = -1

    def write(self, ms: int, line: bytes) -> None:
        day = ms // _DAY_MS
        if day != self.day:
            self.close()
            path = self.directory / f"{self.kind}-{_day(ms)}.jsonl"
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self.day = day
        _append(self.fd, line)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.day = -1, -1


class PredictionLog:
    """The writer's side of a prediction log folder.

    Not thread-safe: a server writes from its event loop only.

    Args:
        directory: the log folder, created if missing.
        index_size: how many recent request ids :meth:`recent_rows` answers from memory.
    """

    def __init__(self, directory: Path, index_size: int = INDEX_SIZE) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._predictions = _DayFile(self.directory, PREDICTIONS)
        self._feedback = _DayFile(self.directory, FEEDBACK)
        self._index: OrderedDict[str, int] = OrderedDict()
        self._index_size = index_size

    def write_prediction(
        self,
        request_id: str,
        ms: int,
        model_version: str,
        columns: Sequence[str],
        inputs: Any,
        outputs: Any,
        rows: int,
    ) -> None:
        """Append one answered request.

        Args:
            request_id: the request's UUIDv7 (its time picks the day file).
            ms: when the request arrived, Unix milliseconds.
            model_version: the registry version that answered.
            columns: the input column names, in the order of each row of ``inputs``.
            inputs: the rows as the model saw them (a 2-D array or a list of rows).
            outputs: the predictions, one per row.
            rows: how many input rows the request had.
        """
        record = {
            "request_id": request_id,
            "time": datetime.fromtimestamp(ms / 1000, UTC),
            "model_version": model_version,
            "rows": rows,
            "columns": columns,
            "inputs": inputs,
            "outputs": outputs,
        }
        line = orjson.dumps(record, default=_default, option=_DUMP_OPTIONS) + b"\n"
        self._predictions.write(ms, line)
        self._index[request_id] = rows
        if len(self._index) > self._index_size:
            self._index.popitem(last=False)

    def write_feedback(self, request_id: str, labels: Sequence[Any], ms: int) -> None:
        """Append the ground-truth labels of a request's rows, received at ``ms``."""
        record = {
            "request_id": request_id,
            "time": datetime.fromtimestamp(ms / 1000, UTC),
            "labels": labels,
        }
        line = orjson.dumps(record, default=_default, option=_DUMP_OPTIONS) + b"\n"
        self._feedback.write(ms, line)

    def recent_rows(self, request_id: str) -> int | None:
        """The row count of a request this writer logged recently; ``None`` if not indexed.

        An older request is found in its day file by :func:`find_request` (a
        scan at memory speed: call it off the event loop).
        """
        return self._index.get(request_id)

    def close(self) -> None:
        """Close the open descriptors; later writes reopen them."""
        self._predictions.close()
        self._feedback.close()


def find_request(directory: Path, request_id: str) -> int | None:
    """The row count of ``request_id`` in a log folder, or ``None`` if it is not there."""
    ms = request_millis(request_id)
    if ms is None:
        return None
    path = Path(directory) / f"{PREDICTIONS}-{_day(ms)}.jsonl"
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
            start = m.find(b'{"request_id":"' + request_id.encode() + b'"')
            if start < 0:
                return None
            end = m.find(b"\n", start)
            line = m[start : end if end >= 0 else len(m)]
    except (FileNotFoundError, ValueError):  # ValueError: mmap of an empty file
        return None
    try:
        return int(orjson.loads(line)["rows"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _records(directory: Path, kind: str, since_ms: int | None = None) -> Iterator[dict[str, Any]]:
    """Every well-formed record of one kind, oldest day first; torn lines are skipped.

    With ``since_ms``, day files before that day are not read.
    """
    first = _day(since_ms) if since_ms is not None else ""
    paths = sorted(
        p
        for p in directory.iterdir()
        if (m := _FILE_NAME.match(p.name)) and m[1] == kind and m[2] >= first
    )
    for path in paths:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    logger.warning("%s:%d: skipped a torn or malformed record", path, number)
                    continue
                if isinstance(record, dict) and "request_id" in record:
                    yield record


def _output_columns(outputs: list[Any]) -> dict[str, list[Any]]:
    """Output values as columns: ``prediction``, or ``prediction_<key>`` for record outputs."""
    if outputs and all(isinstance(o, dict) for o in outputs):
        keys = list(dict.fromkeys(k for o in outputs for k in o))
        return {f"prediction_{k}": [o.get(k) for o in outputs] for k in keys}
    return {"prediction": outputs}


class _Group:
    """The rows of every request that had the same input columns, gathered as lists."""

    def __init__(self) -> None:
        self.meta: dict[str, list[Any]] = {name: [] for name in META_COLUMNS}
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []

    def add(self, record: dict[str, Any]) -> None:
        inputs = record.get("inputs") or []
        rows = len(inputs)
        outputs = record.get("outputs")
        if not isinstance(outputs, list) or len(outputs) != rows:
            outputs = [outputs] * rows  # not one per row: every row gets the whole answer
        self.meta["request_id"] += [record["request_id"]] * rows
        self.meta["row"] += range(rows)
        self.meta["time"] += [record.get("time")] * rows
        self.meta["model_version"] += [str(record.get("model_version"))] * rows
        self.inputs += inputs
        self.outputs += outputs

    def frame(self, columns: tuple[str, ...]) -> pd.DataFrame:
        import pandas as pd

        taken = {*META_COLUMNS, "label", "prediction"}
        names = [f"input_{c}" if c in taken or c.startswith("prediction_") else c for c in columns]
        return pd.concat(
            [
                pd.DataFrame(self.meta),
                pd.DataFrame(self.inputs, columns=names or None),
                pd.DataFrame(_output_columns(self.outputs)),
            ],
            axis=1,
        )


def load_predictions(log_dir: Path, since_ms: int | None = None) -> pd.DataFrame:
    """Read a prediction log as a table: one row per predicted input row.

    Columns: ``request_id``, ``row`` (the row's index in its request),
    ``time`` (UTC), ``model_version``, the input columns, ``prediction`` (or
    ``prediction_<key>`` for models answering with records) and ``label``
    (the latest feedback for that row; missing where none came). An input
    column whose name is taken by one of those gets the prefix ``input_``.
    Requests with different input columns (versions with different
    signatures) share the table; a column a request lacks is missing there.

    Args:
        log_dir: the log folder (``<project>/.mlnb/predictions`` by default).
        since_ms: only requests from this time on (Unix milliseconds); the
            day files before it are not read.

    Raises:
        PredictionLogError: the folder does not exist.
    """
    import pandas as pd

    directory = Path(log_dir)
    if not directory.is_dir():
        raise PredictionLogError(
            f"no prediction log at {directory}; `mlnb serve` writes one there "
            "(or in the folder its log_dir names)"
        )
    groups: dict[tuple[str, ...], _Group] = {}
    for record in _records(directory, PREDICTIONS, since_ms):
        columns = tuple(str(c) for c in record.get("columns") or ())
        groups.setdefault(columns, _Group()).add(record)
    frames = [group.frame(columns) for columns, group in groups.items()]
    if frames:
        table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    else:
        table = pd.DataFrame({name: [] for name in [*META_COLUMNS, "prediction"]})
    table["time"] = pd.to_datetime(table["time"], utc=True, format="ISO8601")
    table["row"] = table["row"].astype("int64")
    table["model_version"] = table["model_version"].astype(object)
    if since_ms is not None:
        start = pd.Timestamp(since_ms, unit="ms", tz="UTC")
        table = table[table["time"] >= start].reset_index(drop=True)

    labels: dict[tuple[str, int], Any] = {}
    for record in _records(directory, FEEDBACK, since_ms):
        values = record.get("labels")
        if isinstance(values, list):
            for row, value in enumerate(values):
                labels[(record["request_id"], row)] = value
    keys = zip(table["request_id"], table["row"], strict=True)
    label = pd.Series([labels.get(key) for key in keys], index=table.index, dtype=object)
    table["label"] = label.infer_objects()
    return table


def export(log_dir: Path, path: Path) -> int:
    """Write the table of :func:`load_predictions` to ``path``: CSV or Parquet, by suffix.

    Returns:
        The number of rows written.

    Raises:
        PredictionLogError: no log at ``log_dir``, or a suffix other than
            ``.csv``, ``.parquet`` or ``.pq``.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise PredictionLogError(
            f"cannot export the prediction log as '{suffix or target.name}'; "
            "name a .csv or .parquet file"
        )
    table = load_predictions(log_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        table.to_csv(target, index=False)
    else:
        table.to_parquet(target, index=False)
    return len(table)


def start_of_last_rows(log_dir: Path, rows: int) -> int | None:
    """The start (Unix ms) of the oldest day file needed to hold the newest ``rows`` rows.

    ``None`` when every day file is needed. Lets a window of the last rows
    read a few day files instead of the whole log.
    """
    directory = Path(log_dir)
    days = sorted(
        (m[2], p)
        for p in directory.iterdir()
        if (m := _FILE_NAME.match(p.name)) and m[1] == PREDICTIONS
    )
    seen = 0
    for index in range(len(days) - 1, -1, -1):
        day, path = days[index]
        with path.open("rb") as handle:
            for line in handle:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    seen += len(record.get("inputs") or ())
        if seen >= rows:
            if index == 0:
                return None
            start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
            return int(start.timestamp() * 1000)
    return None


def latest_prediction(log_dir: Path) -> tuple[str, str] | None:
    """The model version and time of the newest logged prediction, or ``None``.

    Reads only the tail of the newest day file.
    """
    directory = Path(log_dir)
    if not directory.is_dir():
        return None
    days = sorted(
        p
        for p in directory.iterdir()
        if (m := _FILE_NAME.match(p.name)) and m[1] == PREDICTIONS and p.stat().st_size
    )
    if not days:
        return None
    with days[-1].open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 65536))
        lines = handle.read().splitlines()
    for line in reversed(lines):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and "model_version" in record:
            return str(record["model_version"]), str(record.get("time", ""))
    return None
