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
  of milliseconds.
- **A record is written whole, or not at all.** A write the disk refuses
  (full, the file or its folder removed, the folder unwritable) raises
  :class:`LogWriteError`; the bytes of the record that did reach the file are
  cut off again, and the next write reopens the day file (recreating the
  folder), so a writer recovers by itself. A file whose last line was torn by
  a crash gets the next record on a line of its own.
- **Readers skip what they cannot use, and say so.** A torn line, or a record
  whose fields have the wrong types (a hand-edited or truncated file), is
  skipped with a warning that names its file, line and key: a monitor reading
  its window goes on, and :func:`export` counts what it skipped.
- **Self-describing lines.** A prediction line carries its column names next
  to its rows, so a reader needs no other state, and versions with different
  signatures share a log.
- **A file per UTC day** (``predictions-2025-01-31.jsonl``,
  ``feedback-2025-01-31.jsonl``): retention is deleting old files, and a
  monitoring window reads only the days it needs. A closed day may be
  gzipped (``predictions-2025-01-31.jsonl.gz``, beside a ``.jsonl`` a late
  writer made): every reader here reads both, each record once
  (:mod:`mlnb.predictions.files`); :mod:`mlnb.predictions.retention` compresses
  and prunes.
- **Request ids are UUIDv7.** The time in the id names the day file that holds
  the request, so feedback for a request of last week is checked against one
  file, without an index that grows with the log. Recent requests are looked
  up in a bounded in-memory index first; the others of one look-up are found
  in one pass over each day file they name (:meth:`PredictionLog.known_requests`).
- **A challenger's answers are marked, its shadow is apart.** A canary's
  answer is an ordinary prediction record with ``"arm": "canary"`` after the
  other keys (so :data:`_HEAD` still reads the start of its line); a record
  without ``arm`` is the champion's, and :func:`load_predictions` says which
  in its ``arm`` column, a meta column (:data:`META_COLUMNS`), never an
  input. A shadow's predictions answered nobody: they go to day files of
  their own (``shadow-2025-01-31.jsonl``, compressed and pruned like the
  others), one record per request ``{"request_id", "time", "model_version",
  "rows", "outputs", "seconds"}``, or ``"error"`` (one line) in place of
  ``outputs`` when the shadow failed; :func:`load_shadow` reads them, on the
  champion's ``request_id`` and ``row``.
- **Feedback is a log too.** Labels are appended, never updated in place; when
  a request gets labels twice, the later record wins. Each label record names
  who sent it (the token holder's name), kept as ``labeled_by`` when read back.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    NonNegativeFloat,
    NonNegativeInt,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from mlnb.errors import MlnbError, Problem
from mlnb.predictions.files import (
    DAMAGED,
    FEEDBACK,
    PREDICTIONS,
    SHADOW,
    Kind,
    Part,
    day_start,
    days,
    open_day,
    read_pruned,
    tail,
    whole_lines,
)
from mlnb.predictions.files import day_of as _day
from mlnb.store import prediction_log_dir

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

INDEX_SIZE = 100_000  # request ids kept in memory for feedback look-ups (~20 MB)
META_COLUMNS = ("request_id", "row", "time", "model_version", "arm")
#: which version answered a request: the champion, or a canary challenger
Arm = Literal["champion", "canary"]
CHAMPION: Arm = "champion"
CANARY: Arm = "canary"
#: the columns of :func:`load_shadow` besides the predictions
SHADOW_COLUMNS = ("request_id", "row", "time", "model_version")
#: who sent a row's label (the name of the token that sent the feedback)
LABELED_BY = "labeled_by"
DAY_INDEXES = 3  # day files whose request ids are kept in memory for feedback look-ups
WARNED_SKIPS = 10  # skipped lines named one by one in the warnings of one read
_DAY_MS = 86_400_000
_DUMP_OPTIONS = (
    orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS
)
#: the start of a prediction line as the writer serializes it: its request id and row count
_HEAD = re.compile(
    rb'\{"request_id":"([^"\\]{1,100})","time":"[^"\\]{0,40}",'
    rb'"model_version":(?:"(?:[^"\\]|\\.){0,200}"|-?\d{1,20}),"rows":(\d{1,12})[,}]'
)


class PredictionLogError(MlnbError):
    """The prediction log cannot be read or exported as asked."""


class LogWriteError(PredictionLogError):
    """A record could not be written durably; nothing of it stays in the file.

    The next write tries again (it reopens the day file, and recreates the
    folder if it was removed).

    Attributes:
        path: the file (or folder) that could not be written.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = str(path)
        super().__init__(
            f"cannot write the prediction log {self.path}: {reason}; free disk space or "
            "make the folder writable (the next record tries again)"
        )


def default_log_dir(root: Path) -> Path:
    """Where a project keeps its prediction log: ``predictions/`` in its state folder."""
    return prediction_log_dir(root)


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


def _default(value: Any) -> Any:
    """Serialize what orjson does not know: NumPy scalars, bytes, anything else as text."""
    tolist = getattr(value, "tolist", None)  # NumPy arrays and scalars
    if callable(tolist):
        return tolist()
    if isinstance(value, bytes):
        import base64

        return base64.b64encode(value).decode()
    return str(value)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class _DayFile:
    """An ``O_APPEND`` descriptor on the current day's file of one kind.

    Reopened at midnight, after a failed write, and when the file was removed
    under it (its link count fell to 0), so no record goes to a file nobody
    can read.
    """

    def __init__(self, directory: Path, kind: Kind) -> None:
        self.directory = directory
        self.kind = kind
        self.day = -1
        self.fd = -1
        self.path = directory
        self.torn = False  # the file ends inside a line: start the next record on a new one

    def write(self, ms: int, line: bytes) -> None:
        """Append ``line`` whole, or raise :class:`LogWriteError` with nothing of it left."""
        day = ms // _DAY_MS
        if day != self.day or self._removed():
            self._open(day, ms)
        data = b"\n" + line if self.torn else line
        written = 0
        try:
            while written < len(data):
                count = os.write(self.fd, memoryview(data)[written:])
                if not count:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += count
        except OSError as exc:
            self._take_back(data, written)
            self.close()
            raise LogWriteError(self.path, _reason(exc)) from None
        self.torn = False

    def _removed(self) -> bool:
        try:
            return os.fstat(self.fd).st_nlink == 0
        except OSError:
            return True

    def _open(self, day: int, ms: int) -> None:
        """Open (or reopen) the day file, creating the folder if it is gone."""
        self.close()
        self.path = self.directory / f"{self.kind}-{_day(ms)}.jsonl"
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise LogWriteError(self.path, _reason(exc)) from None
        self.fd, self.day, self.torn = fd, day, not _ends_a_line(fd)

    def _take_back(self, data: bytes, written: int) -> None:
        """Cut off the ``written`` bytes of a failed record, if they are still the file's end."""
        if not written:
            return
        try:
            size = os.fstat(self.fd).st_size
            if os.pread(self.fd, written, size - written) == data[:written]:
                os.ftruncate(self.fd, size - written)
        except OSError:
            pass  # the next open finds the torn line and starts on a new one

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.day = -1, -1


def _ends_a_line(fd: int) -> bool:
    """The file is empty or its last byte is a newline."""
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


class PredictionLog:
    """The writer's side of a prediction log folder.

    A server writes from its event loop; :meth:`known_requests` may run on a
    worker thread beside it.

    Args:
        directory: the log folder, created if missing.
        index_size: how many recent request ids are answered from memory.
    """

    def __init__(self, directory: Path, index_size: int = INDEX_SIZE) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._predictions = _DayFile(self.directory, PREDICTIONS)
        self._feedback = _DayFile(self.directory, FEEDBACK)
        self._shadow = _DayFile(self.directory, SHADOW)
        self._index: OrderedDict[str, int] = OrderedDict()
        self._index_size = index_size
        self._days: OrderedDict[str, _DayIndex] = OrderedDict()
        self._days_lock = threading.Lock()

    def write_prediction(
        self,
        request_id: str,
        ms: int,
        model_version: str,
        columns: Sequence[str],
        inputs: Any,
        outputs: Any,
        rows: int,
        arm: Arm = CHAMPION,
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
            arm: who answered; a canary's record says ``"arm": "canary"``
                after the other keys, the champion's says nothing.

        Raises:
            LogWriteError: the record could not be serialized or written whole.
        """
        record: dict[str, Any] = {
            "request_id": request_id,
            "time": datetime.fromtimestamp(ms / 1000, UTC),
            "model_version": model_version,
            "rows": rows,
            "columns": columns,
            "inputs": inputs,
            "outputs": outputs,
        }
        if arm != CHAMPION:
            record["arm"] = arm
        self._predictions.write(ms, self._line(record, self._predictions))
        self._index[request_id] = rows
        if len(self._index) > self._index_size:
            self._index.popitem(last=False)

    def write_feedback(
        self, request_id: str, labels: Sequence[Any], ms: int, sender: str | None = None
    ) -> None:
        """Append the ground-truth labels of a request's rows, received at ``ms``.

        Args:
            request_id: the request the labels are for.
            labels: one label per predicted row.
            ms: when the labels came, Unix milliseconds (picks the day file).
            sender: who sent them (a token holder's name, never the token).

        Raises:
            LogWriteError: the record could not be serialized or written whole.
        """
        record: dict[str, Any] = {
            "request_id": request_id,
            "time": datetime.fromtimestamp(ms / 1000, UTC),
            "labels": labels,
        }
        if sender is not None:
            record["sender"] = sender
        self._feedback.write(ms, self._line(record, self._feedback))

    def write_shadow(
        self,
        request_id: str,
        ms: int,
        model_version: str,
        rows: int,
        seconds: float,
        outputs: Any = None,
        error: str | None = None,
    ) -> None:
        """Append what a shadow challenger predicted for a request, or why it could not.

        Written from the shadow's one worker thread (this kind's day file is
        nobody else's), whole or not at all as every record.

        Args:
            request_id: the request the champion answered (and logged).
            ms: when the request arrived, Unix milliseconds (picks the day file).
            model_version: the shadow's registry version.
            rows: how many input rows the request had.
            seconds: how long the shadow took.
            outputs: its predictions, one per row; ``None`` with ``error``.
            error: why it has none, on one line.

        Raises:
            LogWriteError: the record could not be serialized or written whole.
        """
        record: dict[str, Any] = {
            "request_id": request_id,
            "time": datetime.fromtimestamp(ms / 1000, UTC),
            "model_version": model_version,
            "rows": rows,
        }
        if error is not None:
            record["error"] = " ".join(error.split())[:2000]
        else:
            record["outputs"] = outputs
        record["seconds"] = round(seconds, 6)
        self._shadow.write(ms, self._line(record, self._shadow))

    @staticmethod
    def _line(record: dict[str, Any], day_file: _DayFile) -> bytes:
        try:
            return orjson.dumps(record, default=_default, option=_DUMP_OPTIONS) + b"\n"
        except orjson.JSONEncodeError as exc:
            raise LogWriteError(day_file.directory, f"the record is not JSON ({exc})") from None

    def recent_rows(self, request_id: str) -> int | None:
        """The row count of a request this writer logged recently; ``None`` if not indexed."""
        return self._index.get(request_id)

    def known_requests(self, request_ids: Sequence[str]) -> dict[str, int | None]:
        """The row count of each request id; ``None`` for an id the log does not hold.

        Recent ids of this writer come from memory; the others from an index
        of the day files their ids name (the :data:`DAY_INDEXES` days asked
        about last), which reads each file once and then only what was
        appended to it (a closed ``.gz`` once). Reads the disk: call it off
        the event loop. :meth:`pruned_days` tells which of the ``None`` ids
        were of a day that retention deleted.
        """
        known: dict[str, int | None] = {rid: self._index.get(rid) for rid in request_ids}
        missing = [rid for rid, rows in known.items() if rows is None]
        with self._days_lock:
            for day, wanted in _by_day(missing).items():
                known.update(self._day_index(day).look_up(wanted))
        return known

    def _day_index(self, day: str) -> _DayIndex:
        """The index of one day file, kept among the last :data:`DAY_INDEXES` used."""
        index = self._days.pop(day, None) or _DayIndex(self.directory, day, self._index_size)
        self._days[day] = index
        if len(self._days) > DAY_INDEXES:
            self._days.popitem(last=False)
        return index

    def pruned_days(self, request_ids: Iterable[str]) -> dict[str, str]:
        """The UTC day of each request id whose day retention deleted from the log.

        An id's day counts as pruned when it is no later than the newest day
        of predictions that ``pruned.json`` records
        (:func:`mlnb.predictions.files.read_pruned`, which also holds the
        retention that pruned it). Says nothing about whether an id was ever
        logged: ask about the ids :meth:`known_requests` did not find. Ids
        that are no UUIDv7 are left out. Reads a small file: call it off the
        event loop.
        """
        newest = read_pruned(self.directory).newest.get(PREDICTIONS)
        if newest is None:
            return {}
        return {
            request_id: day
            for day, wanted in _by_day(request_ids).items()
            if day <= newest
            for request_id in sorted(wanted)
        }

    def close(self) -> None:
        """Close the open descriptors; later writes reopen them."""
        self._predictions.close()
        self._feedback.close()
        self._shadow.close()


def _by_day(request_ids: Iterable[str]) -> dict[str, set[str]]:
    """Request ids grouped by the day their UUIDv7 time names; other ids are left out."""
    by_day: dict[str, set[str]] = defaultdict(set)
    for request_id in request_ids:
        ms = request_millis(request_id)
        if ms is not None:
            by_day[_day(ms)].add(request_id)
    return by_day


def find_requests(directory: Path, request_ids: Iterable[str]) -> dict[str, int | None]:
    """The row count of each request id in a log folder (``None``: not there).

    Each id's time names its day file; each day file is read once for all its ids.
    """
    ids = list(request_ids)
    found: dict[str, int | None] = dict.fromkeys(ids)
    for day, wanted in _by_day(ids).items():
        found.update(_rows_of(Path(directory), day, wanted))
    return found


def find_request(directory: Path, request_id: str) -> int | None:
    """The row count of ``request_id`` in a log folder, or ``None`` if it is not there."""
    return find_requests(directory, [request_id])[request_id]


def _head(line: bytes) -> tuple[str, int] | None:
    """The request id and row count of a prediction line; ``None`` for any other line."""
    head = _HEAD.match(line)
    if head is not None:
        return head[1].decode(), int(head[2])
    try:  # a line not in the writer's key order (written by hand), or not a record
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    request_id, rows = record.get("request_id"), record.get("rows")
    if not isinstance(request_id, str) or type(rows) is not int:
        return None
    return request_id, rows


def _part_lines(part: Part) -> Iterator[bytes]:
    """The whole lines of one file of a day; a damaged ``.gz`` ends them, with a warning."""
    try:
        yield from whole_lines(part.stream)
    except DAMAGED as exc:
        logger.warning(
            "%s: the compressed file is damaged or cut short; the rest of it is unread: %s",
            part.path,
            exc,
        )


def _rows_of(directory: Path, day: str, wanted: set[str]) -> dict[str, int]:
    """The row counts of the ``wanted`` requests that one day's files hold."""
    found: dict[str, int] = {}
    with open_day(directory, PREDICTIONS, day) as parts:
        for part in parts:
            for line in _part_lines(part):
                head = _head(line)
                if head is not None and head[0] in wanted:
                    found[head[0]] = head[1]
    return found


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class _DayIndex:
    """The request ids and row counts of one day: read once, then only what was appended.

    The day's ``.gz`` is closed: it is indexed once, and again only when a
    compression replaced it. Its ``.jsonl`` is followed by offset. Holds at
    most ``limit`` ids; a day with more is scanned on each look-up instead.
    """

    def __init__(self, directory: Path, day: str, limit: int) -> None:
        self.directory, self.day, self.limit = directory, day, limit
        self.rows: dict[str, int] | None = {}
        self.closed: tuple[int, int, int] | None = None  # the .gz indexed
        self.open: int | None = None  # the inode of the .jsonl indexed ...
        self.offset = 0  # ... and how far

    def look_up(self, wanted: set[str]) -> dict[str, int]:
        """The row counts of the ``wanted`` requests the day's files hold now."""
        if self.rows is not None:
            with open_day(self.directory, PREDICTIONS, self.day) as parts:
                self._catch_up(parts)
        if self.rows is None:
            return _rows_of(self.directory, self.day, wanted)
        rows = self.rows
        return {request_id: rows[request_id] for request_id in wanted if request_id in rows}

    def _catch_up(self, parts: list[Part]) -> None:
        """Index what changed since the last look-up: a new ``.gz``, lines added to a ``.jsonl``."""
        closed = next((part for part in parts if part.closed), None)
        plain = next((part for part in parts if not part.closed), None)
        closed_id = _identity(closed.stat) if closed is not None else None
        if closed_id != self.closed or not self._follows(plain):  # compressed, replaced, cut short
            self.rows, self.closed, self.open, self.offset = {}, None, None, 0
        if closed is not None and self.closed is None:
            for line in _part_lines(closed):
                self._add(line)
            self.closed = closed_id
        if plain is not None:
            if self.open is None:
                self.open, self.offset = plain.stat.st_ino, 0
            plain.stream.seek(self.offset)
            for line in whole_lines(plain.stream):
                self.offset += len(line) + 1
                self._add(line)

    def _follows(self, plain: Part | None) -> bool:
        """The ``.jsonl`` is the one indexed so far, grown or not (or there was none)."""
        if self.open is None:
            return True
        if plain is None:
            return False
        return plain.stat.st_ino == self.open and plain.stat.st_size >= self.offset

    def _add(self, line: bytes) -> None:
        head = _head(line)
        if head is None or self.rows is None:
            return
        self.rows[head[0]] = head[1]
        if len(self.rows) > self.limit:
            self.rows = None  # too many to keep: scan on each look-up


class _Prediction(BaseModel):
    """A prediction record as a reader takes it; anything else on a line is skipped."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request_id: StrictStr
    time: AwareDatetime
    model_version: StrictStr | StrictInt
    columns: list[StrictStr] = []
    inputs: list[Any]
    outputs: Any = None
    arm: Arm = CHAMPION

    @model_validator(mode="after")
    def _rows_fit_the_columns(self) -> _Prediction:
        width = len(self.columns)
        if width:
            for number, row in enumerate(self.inputs):
                if not isinstance(row, list) or len(row) != width:
                    raise ValueError(
                        f"inputs: row {number} must be a list of {width} values, one per column"
                    )
        return self


class _Shadow(BaseModel):
    """A shadow record as a reader takes it: predictions, or the error in their place."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request_id: StrictStr
    time: AwareDatetime
    model_version: StrictStr | StrictInt
    rows: NonNegativeInt
    outputs: Any = None
    error: StrictStr | None = None
    seconds: NonNegativeFloat | None = None

    @model_validator(mode="after")
    def _outputs_or_error(self) -> _Shadow:
        if self.error is None and self.outputs is None:
            raise ValueError("outputs: a shadow record holds its outputs, or an error")
        return self


class _Feedback(BaseModel):
    """A feedback record as a reader takes it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request_id: StrictStr
    labels: list[Any]
    sender: StrictStr | None = None


def _invalid(error: ValidationError) -> str:
    """The first problem of a record: its key and what is wrong."""
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


class Skipped:
    """The lines a read skipped: named one by one in warnings (the first few), then counted.

    Attributes:
        problems: each skipped line, with its file, line number and what is wrong.
    """

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: Path, number: int, message: str) -> None:
        self.problems.append(Problem(str(path), f"line {number}", message))
        if len(self.problems) <= WARNED_SKIPS:
            logger.warning("%s:%d: skipped a torn or malformed record: %s", path, number, message)

    def report(self) -> None:
        """Warn once about the lines not named one by one."""
        hidden = len(self.problems) - WARNED_SKIPS
        if hidden > 0:
            logger.warning("skipped %d more records of the prediction log", hidden)


def _part_records(part: Part, model: type[BaseModel], skipped: Skipped) -> Iterator[Any]:
    """The valid records of one file of a day; a torn or malformed line goes to ``skipped``.

    A damaged or cut-short ``.gz`` is read up to the damage, which is skipped as its next line.
    """
    number = 0
    try:
        for number, line in enumerate(part.stream, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                skipped.add(part.path, number, "not a whole JSON line")
                continue
            if not isinstance(record, dict):
                skipped.add(part.path, number, "not a JSON object")
                continue
            try:
                yield model.model_validate(record)
            except ValidationError as exc:
                skipped.add(part.path, number, _invalid(exc))
    except DAMAGED as exc:
        skipped.add(
            part.path, number + 1, f"the compressed file is damaged or cut short here ({exc})"
        )


def _day_records(
    directory: Path, model: type[BaseModel], kind: Kind, day: str, skipped: Skipped
) -> Iterator[Any]:
    """The valid records of one day: its ``.gz``, then its ``.jsonl``."""
    with open_day(directory, kind, day) as parts:
        for part in parts:
            yield from _part_records(part, model, skipped)


def _records(
    directory: Path, model: type[BaseModel], kind: Kind, since_ms: int | None, skipped: Skipped
) -> Iterator[Any]:
    """Every valid record of one kind, oldest day first; day files before ``since_ms`` unread."""
    first = _day(since_ms) if since_ms is not None else ""
    for day in days(directory, kind, first):
        yield from _day_records(directory, model, kind, day, skipped)


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

    def add(self, record: _Prediction) -> None:
        inputs = record.inputs
        rows = len(inputs)
        outputs = record.outputs
        if not isinstance(outputs, list) or len(outputs) != rows:
            outputs = [outputs] * rows  # not one per row: every row gets the whole answer
        self.meta["request_id"] += [record.request_id] * rows
        self.meta["row"] += range(rows)
        self.meta["time"] += [record.time] * rows
        self.meta["model_version"] += [str(record.model_version)] * rows
        self.meta["arm"] += [record.arm] * rows
        self.inputs += inputs
        self.outputs += outputs

    def frame(self, columns: tuple[str, ...]) -> pd.DataFrame:
        import pandas as pd

        taken = {*META_COLUMNS, "label", LABELED_BY, "prediction"}
        names = [f"input_{c}" if c in taken or c.startswith("prediction_") else c for c in columns]
        return pd.concat(
            [
                pd.DataFrame(self.meta),
                pd.DataFrame(self.inputs, columns=names or None),
                pd.DataFrame(_output_columns(self.outputs)),
            ],
            axis=1,
        )


def load_predictions(
    log_dir: Path, since_ms: int | None = None, skipped: Skipped | None = None
) -> pd.DataFrame:
    """Read a prediction log as a table: one row per predicted input row.

    Columns: ``request_id``, ``row`` (the row's index in its request),
    ``time`` (UTC), ``model_version``, ``arm`` (``champion``, or ``canary``
    for a canary challenger's answers), the input columns, ``prediction`` (or
    ``prediction_<key>`` for models answering with records), ``label`` (the
    latest feedback for that row; missing where none came) and ``labeled_by``
    (who sent that label). An input column whose name is taken by one of those
    gets the prefix ``input_``. Requests with different input columns
    (versions with different signatures) share the table; a column a request
    lacks is missing there. Torn and malformed lines are skipped with a warning.

    Args:
        log_dir: the log folder (``<project>/.mlnb/predictions`` by default).
        since_ms: only requests from this time on (Unix milliseconds); the
            day files before it are not read.
        skipped: gathers the lines skipped (a fresh one when not given).

    Raises:
        PredictionLogError: the folder does not exist.
    """
    import pandas as pd

    directory = _existing_log(log_dir)
    skipped = skipped if skipped is not None else Skipped()
    groups: dict[tuple[str, ...], _Group] = {}
    for record in _records(directory, _Prediction, PREDICTIONS, since_ms, skipped):
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
    if since_ms is not None:
        start = pd.Timestamp(since_ms, unit="ms", tz="UTC")
        table = table[table["time"] >= start].reset_index(drop=True)
    _join_labels(table, _labels(directory, since_ms, skipped))
    skipped.report()
    return table


def load_shadow(
    log_dir: Path, since_ms: int | None = None, skipped: Skipped | None = None
) -> pd.DataFrame:
    """Read what shadow challengers predicted as a table: one row per request row.

    Columns: ``request_id``, ``row`` (as :func:`load_predictions` has them,
    so the two tables join on both), ``time`` (UTC, the request's),
    ``model_version`` (the shadow's), ``prediction`` (or ``prediction_<key>``
    for records), and ``error`` (``None``, or why the shadow has no
    prediction for that request: each of its rows then has ``None``
    predictions). Torn and malformed lines are skipped with a warning.

    Args:
        log_dir: the log folder.
        since_ms: only requests from this time on (Unix milliseconds).
        skipped: gathers the lines skipped (a fresh one when not given).

    Raises:
        PredictionLogError: the folder does not exist.
    """
    import pandas as pd

    directory = _existing_log(log_dir)
    skipped = skipped if skipped is not None else Skipped()
    meta: dict[str, list[Any]] = {name: [] for name in SHADOW_COLUMNS}
    outputs: list[Any] = []
    errors: list[str | None] = []
    for record in _records(directory, _Shadow, SHADOW, since_ms, skipped):
        rows = record.rows
        given = record.outputs if record.error is None else [None] * rows
        if not isinstance(given, list) or len(given) != rows:
            given = [given] * rows  # not one per row: every row gets the whole answer
        meta["request_id"] += [record.request_id] * rows
        meta["row"] += range(rows)
        meta["time"] += [record.time] * rows
        meta["model_version"] += [str(record.model_version)] * rows
        outputs += given
        errors += [record.error] * rows
    table = pd.concat(
        [
            pd.DataFrame(meta),
            pd.DataFrame(
                {
                    name: pd.Series(values, dtype=object).infer_objects()  # None stays None
                    for name, values in _shadow_outputs(outputs).items()
                },
                index=range(len(outputs)),
            ),
            pd.DataFrame({"error": pd.Series(errors, dtype=object)}),
        ],
        axis=1,
    )
    table["time"] = pd.to_datetime(table["time"], utc=True)
    table["row"] = table["row"].astype("int64")
    table["model_version"] = table["model_version"].astype(object)
    if since_ms is not None:
        start = pd.Timestamp(since_ms, unit="ms", tz="UTC")
        table = table[table["time"] >= start].reset_index(drop=True)
    skipped.report()
    return table


def _shadow_outputs(outputs: list[Any]) -> dict[str, list[Any]]:
    """:func:`_output_columns`, the rows of failed requests (``None``) left out of the choice."""
    given = [o for o in outputs if o is not None]
    if given and all(isinstance(o, dict) for o in given):
        keys = list(dict.fromkeys(k for o in given for k in o))
        return {
            f"prediction_{k}": [o.get(k) if o is not None else None for o in outputs] for k in keys
        }
    return {"prediction": outputs}


def _existing_log(log_dir: Path) -> Path:
    """``log_dir`` as a folder; a :class:`PredictionLogError` if there is none."""
    directory = Path(log_dir)
    if not directory.is_dir():
        raise PredictionLogError(
            f"no prediction log at {directory}; `mlnb serve` writes one there "
            "(or in the folder its log_dir names)"
        )
    return directory


def _labels(
    directory: Path, since_ms: int | None, skipped: Skipped
) -> dict[tuple[str, int], tuple[Any, str | None]]:
    """The latest label of each ``(request id, row)`` and who sent it."""
    labels: dict[tuple[str, int], tuple[Any, str | None]] = {}
    for record in _records(directory, _Feedback, FEEDBACK, since_ms, skipped):
        for row, value in enumerate(record.labels):
            labels[(record.request_id, row)] = (value, record.sender)
    return labels


def _join_labels(
    table: pd.DataFrame, labels: dict[tuple[str, int], tuple[Any, str | None]]
) -> None:
    """Add the ``label`` and ``labeled_by`` columns to a table of predictions."""
    import pandas as pd

    keys = zip(table["request_id"], table["row"], strict=True)
    joined = [labels.get(key, (None, None)) for key in keys]
    label = pd.Series([value for value, _ in joined], index=table.index, dtype=object)
    table["label"] = label.infer_objects()
    table[LABELED_BY] = pd.Series([sender for _, sender in joined], index=table.index, dtype=object)


def export(log_dir: Path, path: Path) -> int:
    """Write the table of :func:`load_predictions` to ``path``: CSV or Parquet, by suffix.

    Lines that cannot be read (torn, or with fields of the wrong types) are
    skipped: each of the first few is named in a warning, and a last warning
    says how many were left out of the file.

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
    skipped = Skipped()
    table = load_predictions(log_dir, skipped=skipped)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        table.to_csv(target, index=False)
    else:
        table.to_parquet(target, index=False)
    if skipped.problems:
        logger.warning(
            "%d records of %s could not be read and are not in %s (see the warnings above)",
            len(skipped.problems),
            log_dir,
            target,
        )
    return len(table)


def start_of_last_rows(log_dir: Path, rows: int) -> int | None:
    """The start (Unix ms) of the oldest day file needed to hold the newest ``rows`` rows.

    ``None`` when every day file is needed. Lets a window of the last rows
    read a few day files instead of the whole log.
    """
    directory = Path(log_dir)
    held = days(directory, PREDICTIONS)
    skipped, seen = Skipped(), 0
    for index in range(len(held) - 1, -1, -1):
        records = _day_records(directory, _Prediction, PREDICTIONS, held[index], skipped)
        seen += sum(len(record.inputs) for record in records)
        if seen >= rows:
            if index == 0:
                return None
            return int(day_start(held[index]).timestamp() * 1000)
    return None


def latest_prediction(log_dir: Path) -> tuple[str, str] | None:
    """The model version and time of the newest logged prediction, or ``None``.

    Reads only the tail of the newest day that has any: of its ``.jsonl``,
    else of its ``.gz`` (decompressed to its end, keeping only the tail).
    """
    directory = Path(log_dir)
    if not directory.is_dir():
        return None
    for day in reversed(days(directory, PREDICTIONS)):
        with open_day(directory, PREDICTIONS, day) as parts:
            if not any(part.stat.st_size for part in parts):
                continue
            for part in reversed(parts):
                found = _latest_in(tail(part).splitlines())
                if found is not None:
                    return found
        return None
    return None


def _latest_in(lines: list[bytes]) -> tuple[str, str] | None:
    """The model version and time of the last valid prediction among ``lines``."""
    for line in reversed(lines):
        try:
            record = orjson.loads(line)
            valid = _Prediction.model_validate(record)
        except (orjson.JSONDecodeError, ValidationError):
            continue
        return str(valid.model_version), str(record["time"])
    return None
