"""The files of a prediction log folder: open and closed day files, and the record of pruning.

Each UTC day has, for each kind (:data:`PREDICTIONS`, :data:`FEEDBACK`,
:data:`SHADOW`: a shadow challenger's predictions), an open file, a closed
one, or both:

- ``predictions-2025-01-31.jsonl``, the open file: writers append to it while
  they answer requests of that day (a request's time picks its day file);
- ``predictions-2025-01-31.jsonl.gz``, the closed file: the day's lines as
  gzip members, written by :func:`mlnb.predictions.retention.compress_closed_days`.
  A ``.jsonl`` that a late writer creates beside it is read too, and appended
  as a further member by the next compression.

**Each record is read once**, whatever moment of a compression a reader meets:
the compressor gives the ``.gz`` the modification time of the ``.jsonl`` it
took in (as ``gzip`` itself does), renames it into place, and only then
removes the ``.jsonl``. So a ``.jsonl`` whose modification time equals its
``.gz``'s is one the ``.gz`` already holds (:func:`merged`), and a reader, which
opens the ``.jsonl`` before the ``.gz`` (:func:`open_day`), skips it.

A reader that comes back to a day (a monitor, check after check) follows it
with a :class:`Cursor` (:func:`follow_day`): the ``.gz`` is read once, and
again only when a compression replaced it; the ``.jsonl`` from where the
reader stopped, whole lines only.

``pruned.json`` records the newest day of each kind that retention deleted
(:func:`read_pruned`), so a reader can tell a request of a pruned day from one
that was never logged.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

import orjson

from mlnb._files import write_atomic

logger = logging.getLogger(__name__)

Kind = Literal["predictions", "feedback", "shadow"]
PREDICTIONS: Kind = "predictions"
FEEDBACK: Kind = "feedback"
SHADOW: Kind = "shadow"  # what a shadow challenger predicted for the requests it saw
KINDS: tuple[Kind, ...] = (PREDICTIONS, FEEDBACK, SHADOW)
OPEN_SUFFIX = ".jsonl"
CLOSED_SUFFIX = ".jsonl.gz"
#: the record of what retention deleted, in the log folder
PRUNED_FILE = "pruned.json"
#: what reading a damaged or cut-short gzip file raises
DAMAGED = (EOFError, gzip.BadGzipFile, zlib.error)
CHUNK = 1 << 22  # bytes read at a time when a day file is scanned
TAIL = 65536  # bytes at the end of a day file that hold its newest records
_NAME = re.compile(r"^(predictions|feedback|shadow)-(\d{4}-\d{2}-\d{2})\.jsonl(\.gz)?$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def day_of(ms: int) -> str:
    """The UTC day (``YYYY-MM-DD``) of a time in Unix milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def day_at(moment: datetime) -> str:
    """The UTC day (``YYYY-MM-DD``) of an aware datetime."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def day_start(day: str) -> datetime:
    """The first instant of a UTC day."""
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)


def days_before(day: str, count: int) -> str:
    """The day ``count`` days before ``day`` (never before year 1)."""
    ordinal = max(1, date.fromisoformat(day).toordinal() - count)
    return date.fromordinal(ordinal).isoformat()


def next_day(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def open_path(directory: Path, kind: Kind, day: str) -> Path:
    """The open file of a day: ``<kind>-<day>.jsonl``."""
    return directory / f"{kind}-{day}{OPEN_SUFFIX}"


def closed_path(directory: Path, kind: Kind, day: str) -> Path:
    """The closed file of a day: ``<kind>-<day>.jsonl.gz``."""
    return directory / f"{kind}-{day}{CLOSED_SUFFIX}"


@dataclass(frozen=True)
class DayFile:
    """One file of a log folder, as listed.

    Attributes:
        kind: predictions, feedback or shadow.
        day: its UTC day.
        path: where it is.
        closed: it is the ``.jsonl.gz`` of its day.
        size: its bytes on disk when listed.
    """

    kind: Kind
    day: str
    path: Path
    closed: bool
    size: int


def day_files(directory: Path) -> list[DayFile]:
    """Every day file of a log folder, oldest day first (a file removed meanwhile left out)."""
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match is None:
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        kind = next(k for k in KINDS if k == match[1])
        found.append(DayFile(kind, match[2], path, bool(match[3]), size))
    return sorted(found, key=lambda f: (f.day, f.kind, not f.closed))


def days(directory: Path, kind: Kind, first: str = "") -> list[str]:
    """The days from ``first`` on that have a file of ``kind``, oldest first."""
    return sorted({f.day for f in day_files(directory) if f.kind == kind and f.day >= first})


def merged(open_stat: os.stat_result, closed_stat: os.stat_result) -> bool:
    """The ``.jsonl`` of ``open_stat`` is one the ``.gz`` of ``closed_stat`` already holds."""
    return open_stat.st_mtime_ns == closed_stat.st_mtime_ns


@dataclass
class Part:
    """One readable file of a day: its records come out of ``stream``, decompressed.

    Attributes:
        path: the file, for messages.
        stream: its lines (a :class:`gzip.GzipFile` for a closed file).
        stat: the file as it was opened.
        closed: it is the day's ``.jsonl.gz``.
    """

    path: Path
    stream: io.BufferedIOBase
    stat: os.stat_result
    closed: bool


def _open(path: Path) -> io.BufferedReader | None:
    try:
        return path.open("rb")
    except (FileNotFoundError, NotADirectoryError):
        return None


@contextlib.contextmanager
def open_day(directory: Path, kind: Kind, day: str) -> Iterator[list[Part]]:
    """The files to read for one day, in order: its ``.gz``, then its ``.jsonl``.

    The ``.jsonl`` is opened first and left out when the ``.gz`` already
    holds it (:func:`merged`), so a day being compressed right now is read
    whole and once. A day with neither file has no parts.
    """
    with contextlib.ExitStack() as stack:
        plain = _open(open_path(directory, kind, day))
        if plain is not None:
            stack.enter_context(plain)
        packed = _open(closed_path(directory, kind, day))
        parts = []
        if packed is not None:
            stack.enter_context(packed)
            packed_stat = os.fstat(packed.fileno())
            stream = stack.enter_context(gzip.GzipFile(fileobj=packed, mode="rb"))
            path = closed_path(directory, kind, day)
            parts.append(Part(path, stream, packed_stat, closed=True))
        if plain is not None:
            plain_stat = os.fstat(plain.fileno())
            if packed is None or not merged(plain_stat, parts[0].stat):
                parts.append(Part(open_path(directory, kind, day), plain, plain_stat, closed=False))
        yield parts


def whole_lines(stream: io.BufferedIOBase) -> Iterator[bytes]:
    """The lines from the stream's position on that end in a newline (without it)."""
    rest = b""
    while chunk := stream.read(CHUNK):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from lines


def identity(stat: os.stat_result) -> tuple[int, int, int]:
    """A file as a reader last saw it: inode, size and modification time."""
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclass
class Cursor:
    """How far a reader that comes back to one day's files has read them (:func:`follow_day`).

    Attributes:
        closed: the ``.jsonl.gz`` read whole (:func:`identity`), if any.
        plain: the inode of the ``.jsonl`` followed, if any ...
        offset: ... the bytes of it read, whole lines only ...
        lines: ... and how many lines those are.
    """

    closed: tuple[int, int, int] | None = None
    plain: int | None = None
    offset: int = 0
    lines: int = 0

    def follows(self, plain: Part | None) -> bool:
        """``plain`` is the ``.jsonl`` read so far, grown or not (or none was read)."""
        if self.plain is None:
            return True
        if plain is None:
            return False
        return plain.stat.st_ino == self.plain and plain.stat.st_size >= self.offset


#: a line of a day file: the file, the line's number in it, the line without its newline
Line = tuple[Path, int, bytes]


@contextlib.contextmanager
def follow_day(
    directory: Path, kind: Kind, day: str, cursor: Cursor
) -> Iterator[tuple[bool, Iterator[Line]]]:
    """The lines of one day that ``cursor`` has not read yet; ``cursor`` moves as they are read.

    Yields ``(again, lines)``. ``again`` says that what the cursor had read no
    longer holds (a compression made a new ``.gz``, the ``.jsonl`` was replaced
    or cut short, or nothing was read yet): ``lines`` then starts at the day's
    beginning and the caller drops what it kept of the day. Otherwise
    ``lines`` are the whole lines appended to the ``.jsonl`` since, often none:
    a day that did not change is not read again. A damaged ``.gz`` is read up
    to the damage, with a warning, and not again until it changes.
    """
    with open_day(directory, kind, day) as parts:
        closed = next((part for part in parts if part.closed), None)
        plain = next((part for part in parts if not part.closed), None)
        closed_id = identity(closed.stat) if closed is not None else None
        again = cursor.closed != closed_id or not cursor.follows(plain) or cursor == Cursor()
        if again:
            cursor.closed, cursor.plain, cursor.offset, cursor.lines = None, None, 0, 0

        def lines() -> Iterator[Line]:
            if closed is not None and cursor.closed is None:
                cursor.closed = closed_id
                number = 0
                try:
                    for number, line in enumerate(whole_lines(closed.stream), 1):
                        yield closed.path, number, line
                except DAMAGED as exc:
                    logger.warning(
                        "%s: the compressed file is damaged or cut short after line %d; "
                        "the rest of it is unread: %s",
                        closed.path,
                        number,
                        exc,
                    )
            if plain is not None:
                if cursor.plain is None:
                    cursor.plain = plain.stat.st_ino
                plain.stream.seek(cursor.offset)
                for line in whole_lines(plain.stream):
                    cursor.offset += len(line) + 1
                    cursor.lines += 1
                    yield plain.path, cursor.lines, line

        yield again, lines()


def tail(part: Part, size: int = TAIL) -> bytes:
    """About the last ``size`` bytes of a part (a closed one is decompressed to get there)."""
    if not part.closed:
        end = part.stream.seek(0, os.SEEK_END)
        part.stream.seek(max(0, end - size))
        return part.stream.read()
    kept = b""
    try:
        while chunk := part.stream.read(CHUNK):
            kept = (kept + chunk)[-size:]
    except DAMAGED as exc:
        logger.warning("%s: the compressed file is damaged or cut short: %s", part.path, exc)
    return kept


@dataclass(frozen=True)
class Pruned:
    """What retention deleted from a log folder, as ``pruned.json`` records it.

    Attributes:
        newest: the newest deleted day of each kind (a kind never pruned is absent).
        retention: the retention setting of the last pruning, as written (``30d,2GB``).
    """

    newest: dict[Kind, str] = field(default_factory=dict)
    retention: str = ""


def read_pruned(directory: Path) -> Pruned:
    """What was pruned from a log folder; nothing if no record (or an unreadable one) says so."""
    path = Path(directory) / PRUNED_FILE
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return Pruned()
    except (OSError, orjson.JSONDecodeError) as exc:
        logger.warning("%s: cannot read what was pruned (%s); taken as nothing", path, exc)
        return Pruned()
    if not isinstance(raw, dict):
        logger.warning("%s: not a JSON object; taken as nothing pruned", path)
        return Pruned()
    newest: dict[Kind, str] = {}
    for kind in KINDS:
        value = raw.get(kind)
        if isinstance(value, str) and _DAY.match(value):
            newest[kind] = value
        elif value is not None:
            logger.warning("%s: %s: not a day (YYYY-MM-DD); ignored", path, kind)
    retention = raw.get("retention")
    return Pruned(newest, retention if isinstance(retention, str) else "")


def write_pruned(directory: Path, pruned: Pruned) -> None:
    """Record what was pruned, whole or not at all."""
    record: dict[str, str] = {kind: day for kind, day in pruned.newest.items()}
    record["retention"] = pruned.retention
    write_atomic(Path(directory) / PRUNED_FILE, orjson.dumps(record, option=orjson.OPT_INDENT_2))
