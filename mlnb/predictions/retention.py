"""Retention for the prediction log: gzip the closed days, delete the days it does not keep.

:class:`Retention` is what a user says to keep, parsed once from text such as
``30d``, ``4w``, ``500MB``, ``2GiB`` or ``30d,2GB``. The log is filed by UTC
day (:mod:`mlnb.predictions.files`), so what it keeps, the window, is the
newest whole days, judged at ``now``:

- **An age** ``Nd`` (``Nw`` is ``7N`` days) keeps today and the ``N - 1`` days
  before it: at any time on 2025-03-31, ``30d`` keeps 2025-03-02 to 2025-03-31
  and deletes 2025-03-01 and older; ``1d`` keeps today only. There are no
  hours: a day file is kept or deleted whole.
- **A size** (``kB``, ``MB``, ``GB``, ``TB`` in powers of 1000; ``KiB``,
  ``MiB``, ``GiB``, ``TiB`` in powers of 1024; ``B``) bounds the folder: the
  newest days whose files, of every kind (predictions, feedback, shadow) and
  as they are on disk, fit in it together are kept; the first older day
  that does not fit, and every day before it, are deleted. Today (and any
  later day a skewed clock named) is always kept, whatever its size.
- **Both** keep a day only if each of them keeps it.

Nothing inside the window is ever deleted, and the window has no holes: an
old day is never kept in place of a newer one. Each file is judged by its own
day: feedback that came on 2025-03-02 for a request of 2025-02-27 is in
``feedback-2025-03-02.jsonl`` and goes with that day. A day still open
(yesterday, for the :data:`GRACE` after midnight, while a request received
before midnight may still be written into it) is neither compressed nor
deleted.

:func:`compress_closed_days` gzips each closed ``.jsonl``, streaming it, into
``NAME.jsonl.gz.tmp``: the old ``.gz`` (if any) and one more gzip member of
whole lines. The temporary is fsynced and renamed to ``NAME.jsonl.gz`` with
the ``.jsonl``'s modification time (which tells readers the ``.gz`` holds
it); only then is the ``.jsonl`` removed. A writer that still holds the
removed file open reopens the day file on its next write; what it appended
meanwhile is drained from the descriptor the compressor still holds into
further members, and a line left half-written is waited for before it is
taken as torn. A ``.jsonl`` a late writer makes beside a ``.gz`` is read
with it, and the next round appends it as a further member.

:func:`prune` deletes the days outside the window. It first records the
newest day of each kind it deletes in ``pruned.json``, so
:meth:`~mlnb.predictions.log.PredictionLog.pruned_days` can tell a request of
a pruned day from one never logged. :func:`maintain` does both, compressing
only what the age keeps (and measuring the size bound on compressed files),
under a lock file in the folder taken without waiting: of several servers,
or ``mlnb predictions prune`` beside one, one works on the files at a time
and the others skip that round.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO

from mlnb._files import try_exclusive
from mlnb.errors import ExitCode
from mlnb.predictions.files import (
    CHUNK,
    DayFile,
    Pruned,
    closed_path,
    day_at,
    day_files,
    days_before,
    merged,
    next_day,
    read_pruned,
    write_pruned,
)
from mlnb.predictions.log import PredictionLogError

#: how long after midnight (UTC) yesterday's files stay open to late writers
GRACE = timedelta(hours=1)
#: the lock that one maintaining process holds, in the log folder
LOCK_FILE = ".maintain.lock"
COMPRESS_LEVEL = 6  # zlib's default: most of level 9's ratio at a fraction of its time
EXAMPLES = "30d, 4w, 500MB, 2GiB or 30d,2GB"
#: bytes in each size unit (case does not matter)
SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_AGE = re.compile(r"(\d+)([dw])", re.IGNORECASE)
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgt]i?b|b)", re.IGNORECASE)
_HOURS = re.compile(r"\d+(?:\.\d+)?(?:h|hrs?|hours?|min|minutes?|s|secs?|seconds?)", re.IGNORECASE)
_NO_B = re.compile(r"\d+(?:\.\d+)?[kmgt]i?", re.IGNORECASE)
_SETTLE_NS = 20_000_000  # more than one tick of the clock that stamps file times
_LINE_SECONDS = 0.001  # far longer than a writer takes to finish a line it began


class RetentionError(PredictionLogError):
    """A retention setting cannot be read.

    Attributes:
        value: the text as given.
    """

    exit_code = ExitCode.INVALID

    def __init__(self, value: str, reason: str) -> None:
        self.value = value
        super().__init__(
            f"invalid retention '{value}': {reason}; give an age, a size or both, e.g. {EXAMPLES}"
        )


@dataclass(frozen=True)
class Retention:
    """What the prediction log keeps: the newest days, by age, by total size, or both.

    Attributes:
        days: keep today and the ``days - 1`` days before it (``None``: no age bound).
        max_bytes: keep the newest days that fit in this many bytes, and
            today whatever its size (``None``: no size bound).
        text: the setting as the user wrote it, for messages.
    """

    days: int | None = None
    max_bytes: int | None = None
    text: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> Retention:
        """Read ``30d``, ``4w``, ``500MB``, ``2GiB``, or an age and a size: ``30d,2GB``.

        Raises:
            RetentionError: the text is none of those; its message says why.
        """
        if not text.strip():
            raise RetentionError(text, "it is empty")
        days: int | None = None
        max_bytes: int | None = None
        parts = [part.replace(" ", "") for part in text.split(",")]
        for part in parts:
            if age := _AGE.fullmatch(part):
                if days is not None:
                    raise RetentionError(text, "it gives two ages")
                days = int(age[1]) * (7 if age[2].lower() == "w" else 1)
                if days < 1:
                    raise RetentionError(text, "an age keeps at least 1d (today)")
            elif size := _SIZE.fullmatch(part):
                if max_bytes is not None:
                    raise RetentionError(text, "it gives two sizes")
                max_bytes = int(Decimal(size[1]) * SIZE_UNITS[size[2].lower()])
                if max_bytes < 1:
                    raise RetentionError(text, "a size keeps at least 1B")
            else:
                raise RetentionError(text, _not_a_part(part))
        return cls(days, max_bytes, ",".join(parts))

    def __str__(self) -> str:
        if self.text:
            return self.text
        age = f"{self.days}d" if self.days is not None else ""
        size = f"{self.max_bytes}B" if self.max_bytes is not None else ""
        return ",".join(part for part in (age, size) if part)

    def first_kept(self, sizes: Mapping[str, int], today: str) -> str:
        """The oldest day the window holds: the days before it go (``""`` keeps every day).

        Args:
            sizes: the bytes of each day's files (the days of the log).
            today: the UTC day of now.
        """
        first = days_before(today, self.days - 1) if self.days is not None else ""
        if self.max_bytes is not None:
            total = 0
            for day in sorted(sizes, reverse=True):
                total += sizes[day]
                if day < today and total > self.max_bytes:
                    return max(first, next_day(day))
        return first


def _not_a_part(part: str) -> str:
    """Why one part of a retention setting is neither an age nor a size."""
    if not part:
        return "it has an empty part"
    if _HOURS.fullmatch(part):
        return f"'{part}' is less than a day, and the log is kept in whole UTC days (1d is today)"
    if _NO_B.fullmatch(part):
        return f"'{part}' needs a B for bytes ({part}B)"
    if part.replace(".", "").isdigit():
        return f"'{part}' has no unit (d, w, MB, GiB, ...)"
    return f"'{part}' is neither an age (Nd, Nw) nor a size (500MB, 2GiB)"


@dataclass(frozen=True)
class Compressed:
    """A day file taken into its ``.gz``.

    Attributes:
        source: the ``.jsonl``, removed (in a dry run: left as it is).
        target: its ``.jsonl.gz``.
        size: the bytes taken from the ``.jsonl``.
        packed: the bytes the ``.gz`` grew by (in a dry run: would grow by).
    """

    source: Path
    target: Path
    size: int
    packed: int

    @property
    def saved(self) -> int:
        return self.size - self.packed


@dataclass(frozen=True)
class PruneReport:
    """What pruning deleted and kept.

    Attributes:
        deleted: the files deleted (in a dry run: that would be), oldest day first.
        freed: their bytes.
        kept: the days kept, oldest first.
        kept_bytes: the bytes of the kept days' files.
        dry_run: nothing was deleted; the report says what would be.
    """

    deleted: tuple[Path, ...] = ()
    freed: int = 0
    kept: tuple[str, ...] = ()
    kept_bytes: int = 0
    dry_run: bool = False


@dataclass(frozen=True)
class Maintenance:
    """What one round of :func:`maintain` did.

    Attributes:
        compressed: the day files compressed (in a dry run: that would be).
        pruned: what pruning deleted and kept; ``None`` when the round was skipped.
        locked_by: when another process was maintaining the folder, so this
            round did nothing, that process's pid (``-1`` when it cannot be
            told); ``None`` otherwise.
        dry_run: nothing was changed; the report says what would be.
    """

    compressed: tuple[Compressed, ...] = ()
    pruned: PruneReport | None = None
    locked_by: int | None = None
    dry_run: bool = False

    @property
    def freed(self) -> int:
        """The bytes compression and pruning freed (would free, in a dry run)."""
        pruned = self.pruned.freed if self.pruned is not None else 0
        return sum(c.saved for c in self.compressed) + pruned


def maintain(
    directory: Path,
    retention: Retention,
    now: datetime,
    *,
    grace: timedelta = GRACE,
    dry_run: bool = False,
) -> Maintenance:
    """Compress the closed days the retention keeps, then prune, holding the folder's lock.

    The lock (:data:`LOCK_FILE`) is taken without waiting: when another
    process holds it, nothing is done and the report names that process.
    Blocks on disk work (compression streams whole day files): call it off
    an event loop.

    Args:
        directory: the log folder.
        retention: what to keep.
        now: the time to judge days by (aware).
        grace: how long after midnight yesterday's files stay open.
        dry_run: change nothing; say what would be done (compressed sizes are measured).

    Raises:
        PredictionLogError: ``directory`` is not a folder.
    """
    folder = _folder(directory)
    with try_exclusive(folder / LOCK_FILE) as holder:
        if holder is not None:
            return Maintenance(locked_by=holder, dry_run=dry_run)
        if not dry_run:
            _clear_temporaries(folder)
        by_age = Retention(days=retention.days).first_kept({}, day_at(now))
        compressed = _compress(folder, now, grace, by_age, dry_run)
        pending = {c.source: c.packed for c in compressed} if dry_run else {}
        pruned = _prune(folder, retention, now, grace, dry_run, pending)
    return Maintenance(tuple(compressed), pruned, None, dry_run)


def prune(
    directory: Path,
    retention: Retention,
    now: datetime,
    *,
    grace: timedelta = GRACE,
    dry_run: bool = False,
) -> PruneReport:
    """Delete the day files outside the retention window, as the module docstring says.

    Records the newest deleted day of each kind in ``pruned.json`` before
    deleting. Sizes are taken as the files are: :func:`maintain` compresses
    first. Call it under the folder's lock (as :func:`maintain` does) when
    another process may work on the folder.

    Raises:
        PredictionLogError: ``directory`` is not a folder.
    """
    return _prune(_folder(directory), retention, now, grace, dry_run, {})


def _prune(
    directory: Path,
    retention: Retention,
    now: datetime,
    grace: timedelta,
    dry_run: bool,
    pending: Mapping[Path, int],
) -> PruneReport:
    """Prune, with the sizes of the ``pending`` files taken as they will be once compressed."""
    files = day_files(directory)
    size = {f.path: pending.get(f.path, f.size) for f in files}
    sizes: dict[str, int] = {}
    for f in files:
        sizes[f.day] = sizes.get(f.day, 0) + size[f.path]
    first = min(retention.first_kept(sizes, day_at(now)), day_at(now - grace))
    doomed = [f for f in files if f.day < first]
    kept = sorted(day for day in sizes if day >= first)
    report = PruneReport(
        deleted=tuple(f.path for f in doomed),
        freed=sum(size[f.path] for f in doomed),
        kept=tuple(kept),
        kept_bytes=sum(sizes[day] for day in kept),
        dry_run=dry_run,
    )
    if doomed and not dry_run:
        _record(directory, doomed, retention)
        for f in doomed:
            f.path.unlink(missing_ok=True)
    return report


def _record(directory: Path, doomed: Sequence[DayFile], retention: Retention) -> None:
    """Add the newest day of each kind about to be deleted to ``pruned.json``."""
    newest = dict(read_pruned(directory).newest)
    for f in doomed:
        newest[f.kind] = max(newest.get(f.kind, ""), f.day)
    write_pruned(directory, Pruned(newest, str(retention)))


def compress_closed_days(
    directory: Path, now: datetime, *, grace: timedelta = GRACE
) -> list[Compressed]:
    """Gzip every ``.jsonl`` whose UTC day ended at least ``grace`` before ``now``.

    Each goes into its day's ``.jsonl.gz`` (a further gzip member when there
    is one already) and is then removed. Streams: memory stays bounded
    whatever the file's size. Call it under the folder's lock (as
    :func:`maintain` does) when another process may work on the folder.

    Raises:
        PredictionLogError: ``directory`` is not a folder.
    """
    return _compress(_folder(directory), now, grace, "", dry_run=False)


def _compress(
    directory: Path, now: datetime, grace: timedelta, first: str, dry_run: bool
) -> list[Compressed]:
    """Compress the closed ``.jsonl`` files from day ``first`` on (measure them, in a dry run)."""
    still_open = day_at(now - grace)
    done = []
    for f in day_files(directory):
        if f.closed or not first <= f.day < still_open:
            continue
        target = closed_path(directory, f.kind, f.day)
        if dry_run:
            done.append(Compressed(f.path, target, f.size, _packed_size(f.path)))
        elif (compressed := _close(f.path, target)) is not None:
            done.append(compressed)
    return done


def _close(source: Path, target: Path) -> Compressed | None:
    """Take ``source`` into ``target``, then remove it; ``None`` if it is gone already.

    The ``.jsonl`` is removed as soon as the ``.gz`` holds what it had, and
    what writers still add through descriptors opened before (they reopen
    the day file when they find it removed) is then drained into the
    ``.gz`` from the descriptor this holds.
    """
    try:
        handle = source.open("rb")
    except FileNotFoundError:
        return None
    before = target.stat().st_size if target.exists() else 0
    with handle:
        held = os.fstat(handle.fileno())
        if before and merged(held, target.stat()):  # a round that stopped before removing it
            source.unlink()
            return Compressed(source, target, held.st_size, 0)
        offset, read = _add_member(handle, 0, target, None, take_torn=False)
        _settle(read.st_mtime_ns)
        with contextlib.suppress(FileNotFoundError):
            named = os.stat(source)
            if (named.st_ino, named.st_dev) == (held.st_ino, held.st_dev):
                source.unlink()  # else another file by that name: the next round takes it
        offset = _drain(handle, offset, read, target)
    return Compressed(source, target, offset, target.stat().st_size - before)


def _drain(handle: BinaryIO, offset: int, read: os.stat_result, target: Path) -> int:
    """Take in what the removed file got after ``offset``: whole lines, then a torn one.

    A part of a line that stays as it is while a line is written takes to
    end is torn for good (a crash cut it): it goes in, ended. Returns the
    offset read to.
    """
    seen, waited = read.st_size, False
    while (size := os.fstat(handle.fileno()).st_size) > offset:
        if size == seen and not waited:  # only part of a line: give its writer time to end it
            time.sleep(_LINE_SECONDS)
            waited = True
            continue
        torn = size == seen
        offset, now = _add_member(handle, offset, target, read.st_mtime_ns, take_torn=torn)
        seen, waited = now.st_size, False
    return offset


def _add_member(
    handle: BinaryIO, offset: int, target: Path, mtime_ns: int | None, *, take_torn: bool
) -> tuple[int, os.stat_result]:
    """Replace ``target`` by itself plus a gzip member of ``handle``'s lines from ``offset`` on.

    The new ``target`` has the modification time ``mtime_ns`` (the file
    read's when ``None``), the mark that tells readers which ``.jsonl`` it
    holds. Returns the offset read to and the file read as it was there.
    """
    tmp = target.with_name(target.name + ".tmp")
    try:
        with tmp.open("wb") as out:
            if target.exists():
                with target.open("rb") as old:
                    shutil.copyfileobj(old, out, CHUNK)
            offset, held = _write_member(handle, offset, out, take_torn)
            out.flush()
            stamp = held.st_mtime_ns if mtime_ns is None else mtime_ns
            os.utime(out.fileno(), ns=(held.st_atime_ns, stamp))
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)
    return offset, held


def _write_member(
    handle: BinaryIO, offset: int, out: BinaryIO, take_torn: bool
) -> tuple[int, os.stat_result]:
    """Write one gzip member of the whole lines of ``handle`` from ``offset``, however far it grows.

    A line still being written is left for later; with ``take_torn`` it goes
    in ended by a newline, so that it cannot swallow the first line of the
    next member. Returns the offset read to and the file's stat there.
    """
    handle.seek(offset)
    rest = b""
    with gzip.GzipFile(
        filename="", mode="wb", fileobj=out, compresslevel=COMPRESS_LEVEL, mtime=0
    ) as member:
        while True:
            if chunk := handle.read(CHUNK):
                end = chunk.rfind(b"\n") + 1
                if not end:
                    rest += chunk
                    continue
                member.write(rest)
                member.write(memoryview(chunk)[:end])
                offset, rest = offset + len(rest) + end, chunk[end:]
                continue
            held = os.fstat(handle.fileno())
            if held.st_size <= offset + len(rest):
                break
        if rest and take_torn:
            member.write(rest + b"\n")
            offset += len(rest)
    return offset, held


def _settle(mtime_ns: int) -> None:
    """Wait, if need be, until a file written now gets a later time than ``mtime_ns``.

    A ``.jsonl`` that a late writer makes once the old one is removed must not
    share the ``.gz``'s time, or readers would take it as held. Only a file
    written in the last few milliseconds makes this wait.
    """
    wait = mtime_ns + _SETTLE_NS - time.time_ns()
    if wait > 0:
        time.sleep(wait / 1e9)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Counter:
    """A sink that counts the bytes written to it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing is held."""


def _packed_size(path: Path) -> int:
    """The bytes a file would take as a gzip member (0 if it is gone)."""
    counter = _Counter()
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return 0
    member = gzip.GzipFile(
        filename="", mode="wb", fileobj=counter, compresslevel=COMPRESS_LEVEL, mtime=0
    )
    with handle, member:
        while chunk := handle.read(CHUNK):
            member.write(chunk)
    return counter.size


def _clear_temporaries(folder: Path) -> None:
    """Remove the ``.gz.tmp`` files a compression stopped in the middle left."""
    for path in folder.glob("*.jsonl.gz.tmp"):
        path.unlink(missing_ok=True)


def _folder(directory: Path) -> Path:
    folder = Path(directory)
    if not folder.is_dir():
        raise PredictionLogError(
            f"no prediction log at {folder}; `mlnb serve` writes one there "
            "(or in the folder its --log-dir names)"
        )
    return folder
