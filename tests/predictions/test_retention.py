"""Retention of the prediction log: the window, compression, pruning, the lock, the command.

Real files in a temporary folder and fake ``now`` values; the races run in real
processes (a writer appending late records, two maintainers at once).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from mlnb.cli.main import main
from mlnb.cli.predictions import RETENTION
from mlnb.errors import ExitCode, MlnbError
from mlnb.predictions import log as predlog
from mlnb.predictions import retention as ret
from mlnb.predictions.files import PRUNED_FILE, Part, read_pruned

TODAY = "2025-03-31"
NOON = datetime(2025, 3, 31, 12, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def day(offset: int, today: str = TODAY) -> str:
    """The day ``offset`` days before ``today``."""
    return (date.fromisoformat(today) - timedelta(days=offset)).isoformat()


def ms(on: str, hour: int = 12, minute: int = 0) -> int:
    moment = datetime.fromisoformat(on).replace(hour=hour, minute=minute, tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def log_requests(log: predlog.PredictionLog, on: str, count: int = 2, rows: int = 2) -> list[str]:
    """Log ``count`` requests of ``rows`` rows on day ``on``, each labeled; their ids."""
    ids = []
    for i in range(count):
        at = ms(on) + i
        request_id = predlog.new_request_id(at)
        inputs = [[float(i), float(r)] for r in range(rows)]
        log.write_prediction(request_id, at, "1", ["a", "b"], inputs, list(range(rows)), rows)
        log.write_feedback(request_id, [f"label-{r}" for r in range(rows)], at + 5)
        ids.append(request_id)
    return ids


def sized(folder: Path, kind: str, on: str, size: int, suffix: str = ".jsonl") -> Path:
    """A day file of ``size`` bytes (pruning judges files by day and size only)."""
    path = folder / f"{kind}-{on}{suffix}"
    path.write_bytes(b"x" * size)
    return path


def names(folder: Path) -> list[str]:
    """The day files in a folder, by name."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))


def members(path: Path) -> int:
    """How many gzip members a file holds."""
    data, count = path.read_bytes(), 0
    while data:
        reader = zlib.decompressobj(31)
        reader.decompress(data)
        data, count = reader.unused_data, count + 1
    return count


# --- the setting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "days", "max_bytes"),
    [
        ("30d", 30, None),
        ("1d", 1, None),
        ("4w", 28, None),
        ("30D", 30, None),
        ("500MB", None, 500 * 10**6),
        ("2GB", None, 2 * 10**9),
        ("1.5GB", None, 1_500_000_000),
        ("800MiB", None, 800 * 2**20),
        ("64kB", None, 64_000),
        ("10B", None, 10),
        ("30d,2GB", 30, 2 * 10**9),
        ("2GiB, 4w", 28, 2 * 2**30),
    ],
)
def test_a_retention_is_an_age_a_size_or_both(
    text: str, days: int | None, max_bytes: int | None
) -> None:
    parsed = ret.Retention.parse(text)
    assert (parsed.days, parsed.max_bytes) == (days, max_bytes)
    assert str(parsed) == text.replace(" ", "")
    assert ret.Retention.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "it is empty"),
        ("12h", "'12h' is less than a day"),
        ("90min", "'90min' is less than a day"),
        ("0d", "an age keeps at least 1d"),
        ("0MB", "a size keeps at least 1B"),
        ("30", "'30' has no unit"),
        ("500M", "'500M' needs a B for bytes (500MB)"),
        ("30d,40d", "it gives two ages"),
        ("1GB,2GB", "it gives two sizes"),
        ("30d,", "it has an empty part"),
        ("forever", "'forever' is neither an age (Nd, Nw) nor a size"),
        ("-3d", "'-3d' is neither an age"),
    ],
)
def test_a_bad_retention_names_the_value_why_and_examples(text: str, why: str) -> None:
    with pytest.raises(ret.RetentionError) as raised:
        ret.Retention.parse(text)
    error = raised.value
    assert isinstance(error, MlnbError)
    assert error.exit_code == ExitCode.INVALID
    assert error.value == text
    assert str(error).startswith(f"invalid retention '{text}': ")
    assert why in str(error)
    assert str(error).endswith("e.g. 30d, 4w, 500MB, 2GiB or 30d,2GB")


def test_the_click_type_reads_a_retention_and_fails_as_a_usage_error() -> None:
    assert RETENTION.convert("30d", None, None) == ret.Retention(days=30)
    already = ret.Retention(max_bytes=5)
    assert RETENTION.convert(already, None, None) is already
    with pytest.raises(Exception, match="invalid retention '12h'") as raised:
        RETENTION.convert("12h", None, None)
    assert raised.value.exit_code == 2  # type: ignore[attr-defined]


# --- the window ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "now",
    [
        NOON,
        datetime(2025, 3, 31, 1, 0, tzinfo=UTC),  # the grace after midnight just over
        datetime(2025, 3, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
    ids=["noon", "01:00", "23:59:59.999999"],
)
def test_an_age_keeps_today_and_the_days_before_it_and_deletes_the_first_day_outside(
    tmp_path: Path, now: datetime
) -> None:
    for offset in range(32):
        sized(tmp_path, "predictions", day(offset), 10)
    report = ret.prune(tmp_path, ret.Retention.parse("30d"), now)
    assert report.kept == tuple(day(offset) for offset in range(29, -1, -1))
    assert report.kept[0] == "2025-03-02"  # the last day in the window is kept ...
    assert [p.name for p in report.deleted] == [
        "predictions-2025-02-28.jsonl",
        "predictions-2025-03-01.jsonl",  # ... the first one outside is deleted
    ]
    assert (report.freed, report.kept_bytes) == (20, 300)
    assert names(tmp_path) == [f"predictions-{d}.jsonl" for d in report.kept]


def test_1d_keeps_today_only_once_yesterday_is_closed(tmp_path: Path) -> None:
    yesterday = sized(tmp_path, "predictions", day(1), 10)
    sized(tmp_path, "predictions", TODAY, 10)
    just_after_midnight = datetime(2025, 3, 31, 0, 59, 59, tzinfo=UTC)
    report = ret.prune(tmp_path, ret.Retention.parse("1d"), just_after_midnight)
    assert report.deleted == ()  # a request of yesterday may still be written into it
    assert report.kept == (day(1), TODAY)
    report = ret.prune(
        tmp_path, ret.Retention.parse("1d"), just_after_midnight + timedelta(seconds=1)
    )
    assert report.deleted == (yesterday,)
    assert names(tmp_path) == [f"predictions-{TODAY}.jsonl"]


def test_a_size_keeps_the_newest_days_that_fit_with_no_holes(tmp_path: Path) -> None:
    for offset, size in enumerate([500, 400, 300, 20, 10]):  # today is 500 bytes
        sized(tmp_path, "predictions", day(offset), size)
    report = ret.prune(tmp_path, ret.Retention.parse("1000B"), NOON, dry_run=True)
    # 500 + 400 fit; 300 does not, so it goes, and the 20 and 10 before it that would fit
    assert report.kept == (day(1), TODAY)
    assert [p.name for p in report.deleted] == [
        f"predictions-{day(4)}.jsonl",
        f"predictions-{day(3)}.jsonl",
        f"predictions-{day(2)}.jsonl",
    ]
    assert report.dry_run and len(names(tmp_path)) == 5  # a dry run deletes nothing
    exactly = ret.prune(tmp_path, ret.Retention.parse("900B"), NOON, dry_run=True)
    assert exactly.kept == (day(1), TODAY)  # a total equal to the bound fits
    less = ret.prune(tmp_path, ret.Retention.parse("899B"), NOON, dry_run=True)
    assert less.kept == (TODAY,)


def test_today_is_kept_under_any_size_and_a_size_counts_both_kinds(tmp_path: Path) -> None:
    sized(tmp_path, "predictions", TODAY, 5000)
    sized(tmp_path, "feedback", TODAY, 5000)
    sized(tmp_path, "predictions", day(2), 1)
    report = ret.prune(tmp_path, ret.Retention.parse("1B"), NOON)
    assert report.kept == (TODAY,)
    assert report.kept_bytes == 10_000
    assert names(tmp_path) == [f"feedback-{TODAY}.jsonl", f"predictions-{TODAY}.jsonl"]

    for offset, size in [(2, 100), (3, 100)]:
        sized(tmp_path, "predictions", day(offset), size)
        sized(tmp_path, "feedback", day(offset), size)
    report = ret.prune(tmp_path, ret.Retention.parse("10.2kB"), NOON)
    assert report.kept == (day(2), TODAY)  # 10 000 + 200 fit; the 200 of the day before do not


@pytest.mark.parametrize(
    ("text", "kept"),
    [("2d,10kB", 2), ("5d,900B", 2), ("3d", 3), ("5d,100kB", 5)],
)
def test_with_an_age_and_a_size_a_day_is_kept_only_if_both_keep_it(
    tmp_path: Path, text: str, kept: int
) -> None:
    for offset in range(6):
        sized(tmp_path, "predictions", day(offset), 400)
    report = ret.prune(tmp_path, ret.Retention.parse(text), NOON)
    assert report.kept == tuple(day(offset) for offset in range(kept - 1, -1, -1))
    assert len(names(tmp_path)) == kept


def test_each_file_is_judged_by_its_own_day(tmp_path: Path) -> None:
    old = sized(tmp_path, "predictions", day(40), 10)
    sized(tmp_path, "feedback", day(1), 10)  # labels for the old request came yesterday
    report = ret.prune(tmp_path, ret.Retention.parse("30d"), NOON)
    assert report.deleted == (old,)
    assert names(tmp_path) == [f"feedback-{day(1)}.jsonl"]
    assert read_pruned(tmp_path).newest == {"predictions": day(40)}


def test_pruned_json_records_the_newest_pruned_day_of_each_kind_and_never_goes_back(
    tmp_path: Path,
) -> None:
    assert read_pruned(tmp_path).newest == {}
    for offset in (10, 9, 8):
        sized(tmp_path, "predictions", day(offset), 1)
    sized(tmp_path, "feedback", day(9), 1)
    ret.prune(tmp_path, ret.Retention.parse("9d"), NOON)  # keeps day(8) on
    pruned = read_pruned(tmp_path)
    assert pruned.newest == {"predictions": day(9), "feedback": day(9)}
    assert pruned.retention == "9d"
    assert json.loads((tmp_path / PRUNED_FILE).read_text())["predictions"] == day(9)

    ret.prune(tmp_path, ret.Retention.parse("30d"), NOON)  # deletes nothing: changes nothing
    assert read_pruned(tmp_path) == pruned
    sized(tmp_path, "predictions", day(20), 1)  # an older day file put back by hand
    ret.prune(tmp_path, ret.Retention.parse("9d"), NOON)
    assert names(tmp_path) == [f"predictions-{day(8)}.jsonl"]
    assert read_pruned(tmp_path).newest == {"predictions": day(9), "feedback": day(9)}


# --- pruned days, for the service's 404 ---------------------------------------------------


def test_pruned_days_names_the_day_of_each_request_whose_day_was_pruned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = predlog.PredictionLog(tmp_path)
    by_day = {offset: log_requests(writer, day(offset), count=2) for offset in range(5)}
    writer.close()
    reader = predlog.PredictionLog(tmp_path)
    every = [request_id for ids in by_day.values() for request_id in ids]
    assert reader.pruned_days(every) == {}  # nothing pruned yet

    ret.maintain(tmp_path, ret.Retention.parse("3d"), NOON)
    asked = [*every, "not-a-uuid", str(uuid.uuid4())]
    expected = {rid: day(offset) for offset in (3, 4) for rid in by_day[offset]}
    assert reader.pruned_days(asked) == expected
    known = reader.known_requests(asked)
    assert [rid for rid, rows in known.items() if rows is None and rid in expected] == [
        rid for rid in asked if rid in expected
    ]
    assert all(known[rid] == 2 for offset in (0, 1, 2) for rid in by_day[offset])

    (tmp_path / PRUNED_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="mlnb.predictions.files"):
        assert reader.pruned_days(asked) == {}
    assert f"{tmp_path / PRUNED_FILE}: cannot read what was pruned" in caplog.text


# --- compression ---------------------------------------------------------------------------


def test_closed_days_are_compressed_and_open_ones_left(tmp_path: Path) -> None:
    writer = predlog.PredictionLog(tmp_path)
    for offset in (2, 1, 0):
        log_requests(writer, day(offset))
    writer.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    half_past_midnight = datetime(2025, 3, 31, 0, 30, tzinfo=UTC)
    done = ret.compress_closed_days(tmp_path, half_past_midnight)
    assert sorted(c.source.name for c in done) == [
        f"feedback-{day(2)}.jsonl",
        f"predictions-{day(2)}.jsonl",
    ]
    done = ret.compress_closed_days(tmp_path, half_past_midnight + timedelta(minutes=30))
    assert sorted(c.source.name for c in done) == [
        f"feedback-{day(1)}.jsonl",
        f"predictions-{day(1)}.jsonl",
    ]
    assert names(tmp_path) == sorted(
        [
            *(
                f"{kind}-{day(offset)}.jsonl.gz"
                for kind in ("feedback", "predictions")
                for offset in (1, 2)
            ),
            f"feedback-{TODAY}.jsonl",
            f"predictions-{TODAY}.jsonl",
        ]
    )
    for name, data in before.items():
        packed = tmp_path / (name + ".gz")
        if packed.exists():
            assert gzip.decompress(packed.read_bytes()) == data
    assert not list(tmp_path.glob("*.tmp"))
    assert all(c.size == len(before[c.source.name]) and c.packed > 0 for c in done)


def test_compressed_days_read_like_uncompressed_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = predlog.PredictionLog(tmp_path)
    ids = [rid for offset in (3, 2, 1) for rid in log_requests(writer, day(offset), 3, rows=2)]
    writer.close()
    middle = tmp_path / f"predictions-{day(2)}.jsonl"
    with middle.open("ab") as handle:
        handle.write(b'{"request_id": "torn\n{"request_id": 5, "time": 1}\n')
    last = tmp_path / f"feedback-{day(1)}.jsonl"
    with last.open("ab") as handle:
        handle.write(b'{"request_id": "cut short')  # a power cut in the last line
    asked = [*ids, predlog.new_request_id(ms(day(2))), "not-a-uuid"]

    def read() -> tuple[pd.DataFrame, pd.DataFrame, list[tuple[str, str]], str, object]:
        skipped = predlog.Skipped()
        table = predlog.load_predictions(tmp_path, skipped=skipped)
        where = [(Path(p.file).name.removesuffix(".gz"), p.location) for p in skipped.problems]
        target = tmp_path.parent / f"{tmp_path.name}.csv"
        predlog.export(tmp_path, target)
        others = (
            predlog.find_requests(tmp_path, asked),
            predlog.find_request(tmp_path, ids[4]),
            predlog.PredictionLog(tmp_path).known_requests(asked),
            [predlog.start_of_last_rows(tmp_path, rows) for rows in (1, 6, 7, 12, 13, 100)],
            predlog.latest_prediction(tmp_path),
        )
        since = predlog.load_predictions(tmp_path, since_ms=ms(day(2), 0))
        return table, since, where, target.read_text(), others

    plain_table, plain_since, plain_where, plain_csv, plain_others = read()
    assert plain_where == [
        (middle.name, "line 4"),
        (middle.name, "line 5"),
        (last.name, "line 4"),
    ]
    assert plain_table["label"].notna().all() and len(plain_table) == 18
    done = ret.compress_closed_days(tmp_path, NOON)
    assert len(done) == 6 and names(tmp_path) == sorted(
        f"{kind}-{day(offset)}.jsonl.gz"
        for kind in ("feedback", "predictions")
        for offset in (1, 2, 3)
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlnb.predictions.log"):
        table, since, where, csv, others = read()
    pd.testing.assert_frame_equal(table, plain_table)
    pd.testing.assert_frame_equal(since, plain_since)
    assert len(since) == 12
    assert where == plain_where
    assert f"{middle}.gz:4: skipped a torn or malformed record" in caplog.text
    assert csv == plain_csv
    assert others == plain_others


def test_shadow_days_are_compressed_pruned_and_read_like_the_others(tmp_path: Path) -> None:
    writer = predlog.PredictionLog(tmp_path)
    for offset in (40, 2, 1, 0):
        for request_id in log_requests(writer, day(offset), count=2, rows=2):
            at = predlog.request_millis(request_id)
            assert at is not None
            writer.write_shadow(request_id, at, "2", 2, 0.01, outputs=[1, 0])
        failed = predlog.new_request_id(ms(day(offset), 13))
        writer.write_shadow(failed, ms(day(offset), 13), "2", 1, 0.5, error="RuntimeError: no")
    writer.close()
    plain = predlog.load_shadow(tmp_path)
    assert len(plain) == 4 * 5
    assert sorted(p.name for p in tmp_path.glob("shadow-*")) == [
        f"shadow-{day(offset)}.jsonl" for offset in (40, 2, 1, 0)
    ]

    done = ret.maintain(tmp_path, ret.Retention.parse("30d"), NOON)
    assert done.pruned is not None
    assert f"shadow-{day(40)}.jsonl" in [p.name for p in done.pruned.deleted]
    assert read_pruned(tmp_path).newest["shadow"] == day(40)
    assert sorted(p.name for p in tmp_path.glob("shadow-*")) == [
        f"shadow-{day(2)}.jsonl.gz",
        f"shadow-{day(1)}.jsonl.gz",
        f"shadow-{TODAY}.jsonl",
    ]
    kept = plain[plain["time"] >= pd.Timestamp(day(2), tz="UTC")].reset_index(drop=True)
    pd.testing.assert_frame_equal(predlog.load_shadow(tmp_path), kept)
    since = predlog.load_shadow(tmp_path, since_ms=ms(day(1), 0))
    assert len(since) == 2 * 5


def test_a_size_counts_shadow_files_too(tmp_path: Path) -> None:
    sized(tmp_path, "predictions", TODAY, 100)
    sized(tmp_path, "shadow", day(1), 100)
    sized(tmp_path, "predictions", day(1), 100)
    report = ret.prune(tmp_path, ret.Retention.parse("250B"), NOON)
    assert report.kept == (TODAY,)  # yesterday's 200 bytes, shadow included, do not fit
    assert names(tmp_path) == [f"predictions-{TODAY}.jsonl"]


def test_a_late_jsonl_beside_its_gz_is_read_and_then_merged_as_a_member(tmp_path: Path) -> None:
    writer = predlog.PredictionLog(tmp_path)
    early = log_requests(writer, day(2), count=2)
    writer.close()
    ret.compress_closed_days(tmp_path, NOON)
    packed = tmp_path / f"predictions-{day(2)}.jsonl.gz"
    reader = predlog.PredictionLog(tmp_path)
    assert reader.known_requests(early) == dict.fromkeys(early, 2)  # indexed from the .gz

    late = log_requests(writer, day(2), count=1, rows=3)  # a writer still answering that day
    writer.close()
    assert names(tmp_path) == [
        f"feedback-{day(2)}.jsonl",
        f"feedback-{day(2)}.jsonl.gz",
        f"predictions-{day(2)}.jsonl",
        f"predictions-{day(2)}.jsonl.gz",
    ]
    both = predlog.load_predictions(tmp_path)
    assert both["request_id"].tolist() == [*[early[0]] * 2, *[early[1]] * 2, *late * 3]
    assert both["label"].notna().all()
    assert predlog.find_requests(tmp_path, [*early, *late]) == {
        **dict.fromkeys(early, 2),
        late[0]: 3,
    }
    assert reader.known_requests([*early, *late]) == {**dict.fromkeys(early, 2), late[0]: 3}

    done = ret.compress_closed_days(tmp_path, NOON)
    assert len(done) == 2
    assert names(tmp_path) == [f"feedback-{day(2)}.jsonl.gz", f"predictions-{day(2)}.jsonl.gz"]
    assert members(packed) == 2
    with gzip.open(packed) as handle:
        assert len(handle.read().splitlines()) == 3
    pd.testing.assert_frame_equal(predlog.load_predictions(tmp_path), both)
    assert reader.known_requests([*early, *late]) == {**dict.fromkeys(early, 2), late[0]: 3}


def test_a_jsonl_its_gz_already_holds_is_read_once_and_then_removed(tmp_path: Path) -> None:
    writer = predlog.PredictionLog(tmp_path)
    ids = log_requests(writer, day(2), count=2)
    writer.close()
    plain = tmp_path / f"predictions-{day(2)}.jsonl"
    data = plain.read_bytes()
    ret.compress_closed_days(tmp_path, NOON)
    packed = plain.with_name(plain.name + ".gz")
    # as a compression that stopped between its rename and its removal leaves it
    plain.write_bytes(data)
    os.utime(plain, ns=(packed.stat().st_atime_ns, packed.stat().st_mtime_ns))
    size = packed.stat().st_size

    table = predlog.load_predictions(tmp_path)
    assert table["request_id"].tolist() == [ids[0], ids[0], ids[1], ids[1]]
    assert predlog.PredictionLog(tmp_path).known_requests(ids) == dict.fromkeys(ids, 2)
    done = ret.compress_closed_days(tmp_path, NOON)
    assert [(c.source, c.packed) for c in done] == [(plain, 0)]
    assert not plain.exists() and packed.stat().st_size == size
    pd.testing.assert_frame_equal(predlog.load_predictions(tmp_path), table)


def test_a_line_being_written_as_compression_reaches_it_is_taken_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = predlog.PredictionLog(tmp_path)
    ids = log_requests(writer, day(2), count=2)
    writer.close()
    (tmp_path / f"feedback-{day(2)}.jsonl").unlink()  # the one file compressed is the one written
    late = predlog.new_request_id(ms(day(2)) + 100)
    record = {"request_id": late, "time": f"{day(2)}T12:00:00Z", "model_version": "1", "rows": 1}
    line = json.dumps({**record, "columns": ["a", "b"], "inputs": [[1.0, 2.0]]}).encode() + b"\n"
    plain = tmp_path / f"predictions-{day(2)}.jsonl"
    fd = os.open(plain, os.O_WRONLY | os.O_APPEND)
    os.write(fd, line[:30])  # a writer halfway through its line as compression reads the file
    an_hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(plain, ns=(an_hour_ago, an_hour_ago))  # (so that only the wait for its end waits)
    finished: list[float] = []

    def sleep(seconds: float) -> None:  # the compressor waits: the writer ends its line
        if not finished:
            os.write(fd, line[30:])
        finished.append(seconds)

    monkeypatch.setattr(ret.time, "sleep", sleep)
    try:
        ret.compress_closed_days(tmp_path, NOON)
    finally:
        os.close(fd)
    assert finished
    assert names(tmp_path) == [f"predictions-{day(2)}.jsonl.gz"]
    skipped = predlog.Skipped()
    table = predlog.load_predictions(tmp_path, skipped=skipped)
    assert skipped.problems == []
    assert table["request_id"].tolist() == [ids[0], ids[0], ids[1], ids[1], late]


def test_the_day_index_reads_a_closed_day_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = predlog.PredictionLog(tmp_path)
    ids = log_requests(writer, day(2), count=3)
    writer.close()
    reader = predlog.PredictionLog(tmp_path)
    assert reader.known_requests(ids[:1]) == {ids[0]: 2}  # indexed from the .jsonl
    ret.compress_closed_days(tmp_path, NOON)
    reads: list[Path] = []
    part_lines = predlog._part_lines

    def counted(part: Part) -> Iterator[bytes]:
        reads.append(part.path)
        return part_lines(part)

    monkeypatch.setattr(predlog, "_part_lines", counted)
    for _ in range(3):
        assert reader.known_requests(ids) == dict.fromkeys(ids, 2)
    assert reads == [tmp_path / f"predictions-{day(2)}.jsonl.gz"]


def test_a_damaged_gz_is_read_up_to_the_damage_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = predlog.PredictionLog(tmp_path)
    log_requests(writer, day(2), count=200)
    kept = log_requests(writer, day(1), count=1)
    writer.close()
    ret.compress_closed_days(tmp_path, NOON)
    packed = tmp_path / f"predictions-{day(2)}.jsonl.gz"
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    skipped = predlog.Skipped()
    with caplog.at_level(logging.WARNING):
        table = predlog.load_predictions(tmp_path, skipped=skipped)
        assert predlog.find_requests(tmp_path, kept) == {kept[0]: 2}
    assert kept[0] in set(table["request_id"])
    assert [p.file for p in skipped.problems] == [str(packed)]
    assert "the compressed file is damaged or cut short" in skipped.problems[0].message
    assert str(packed) in caplog.text


def test_compression_streams_a_big_day_in_bounded_memory(tmp_path: Path) -> None:
    line = b'{"request_id":"x","rows":1,"inputs":[[' + b"1.0," * 60 + b"1.0]]}\n"
    plain = tmp_path / f"predictions-{day(3)}.jsonl"
    with plain.open("wb") as handle:
        for _ in range(100):
            handle.write(line * (250_000 // len(line) + 1))
    size = plain.stat().st_size
    assert size > 24_000_000
    tracemalloc.start()
    try:
        (done,) = ret.compress_closed_days(tmp_path, NOON)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert done.size == size
    assert peak < 10_000_000  # a chunk or two, not the file
    with gzip.open(done.target) as handle:
        assert sum(len(chunk) for chunk in iter(lambda: handle.read(1 << 20), b"")) == size


# --- maintenance in real processes --------------------------------------------------------

LATE_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mlnb.predictions import log as predlog

    folder, count, at = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    log = predlog.PredictionLog(folder)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(count):
        rows = 1 + i * 37 % 300  # lines of many lengths, some across page boundaries
        request_id = predlog.new_request_id(at + i)
        log.write_prediction(request_id, at + i, "1", ["a"], [[float(i)]] * rows, [i] * rows, rows)
    """
)

MAINTAINER = textwrap.dedent(
    """
    import json, sys
    from datetime import datetime
    from pathlib import Path
    from mlnb.predictions import retention as ret

    folder, retention, now, rounds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    print("ready", flush=True)
    sys.stdin.readline()
    done = [ret.maintain(folder, ret.Retention.parse(retention), datetime.fromisoformat(now))
            for _ in range(rounds)]
    print(json.dumps({
        "worked": sum(d.locked_by is None for d in done),
        "skipped": sum(d.locked_by is not None for d in done),
        "deleted": [p.name for d in done if d.pruned for p in d.pruned.deleted],
    }))
    """
)

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mlnb._files import try_exclusive
    from mlnb.predictions.retention import LOCK_FILE

    with try_exclusive(Path(sys.argv[1]) / LOCK_FILE) as holder:
        assert holder is None
        print("held", flush=True)
        sys.stdin.readline()
    """
)


def start(script: str, *args: object) -> subprocess.Popen[str]:
    """A Python process running ``script``, once it says it is ready."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() in ("ready", "held")
    return process


def go(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("\n")
    process.stdin.flush()


def finish(process: subprocess.Popen[str]) -> str:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    return out


def test_a_late_writer_racing_compression_loses_no_record(tmp_path: Path) -> None:
    count = 1500
    writer = start(LATE_WRITER, tmp_path, count, ms(day(2)))
    go(writer)
    rounds = 0
    while writer.poll() is None:  # compress the day over and over while it is written to
        ret.compress_closed_days(tmp_path, NOON)
        rounds += 1
    finish(writer)
    ret.compress_closed_days(tmp_path, NOON)
    assert rounds > 1
    assert names(tmp_path) == [f"predictions-{day(2)}.jsonl.gz"]
    skipped = predlog.Skipped()
    table = predlog.load_predictions(tmp_path, skipped=skipped)
    assert skipped.problems == []
    rows = table.groupby("request_id").size()  # ids sort by time: the i-th is the i-th written
    assert [rows[rid] for rid in sorted(rows.index)] == [1 + i * 37 % 300 for i in range(count)]


def test_two_processes_maintaining_at_once_lose_nothing(tmp_path: Path) -> None:
    writer = predlog.PredictionLog(tmp_path)
    by_day = {offset: log_requests(writer, day(offset), count=150) for offset in range(6)}
    writer.close()
    now = NOON.isoformat()
    maintainers = [start(MAINTAINER, tmp_path, "4d", now, 5) for _ in range(2)]
    late = start(LATE_WRITER, tmp_path, 300, ms(day(1)))
    for process in [*maintainers, late]:
        go(process)
    reports = [json.loads(finish(process)) for process in maintainers]
    finish(late)
    ret.maintain(tmp_path, ret.Retention.parse("4d"), NOON)

    assert sum(r["worked"] for r in reports) >= 1
    assert sum(r["worked"] + r["skipped"] for r in reports) == 10
    deleted = sorted(name for r in reports for name in r["deleted"])
    assert deleted == sorted(
        f"{k}-{day(o)}.jsonl" for k in ("feedback", "predictions") for o in (4, 5)
    )
    assert names(tmp_path) == sorted(
        [
            *(f"{k}-{day(o)}.jsonl.gz" for k in ("feedback", "predictions") for o in (1, 2, 3)),
            f"feedback-{TODAY}.jsonl",
            f"predictions-{TODAY}.jsonl",
        ]
    )
    assert not list(tmp_path.glob("*.tmp"))
    skipped = predlog.Skipped()
    table = predlog.load_predictions(tmp_path, skipped=skipped)
    assert skipped.problems == []
    kept = {rid for offset in range(4) for rid in by_day[offset]}
    rows = table.groupby("request_id").size()
    late = sorted(set(rows.index) - kept)
    assert [rows[rid] for rid in late] == [1 + i * 37 % 300 for i in range(300)]  # each once
    assert (rows.loc[sorted(kept)] == 2).all()  # every kept request, once
    assert table.loc[table["request_id"].isin(kept), "label"].notna().all()
    assert read_pruned(tmp_path).newest == {"predictions": day(4), "feedback": day(4)}


def test_maintenance_skips_a_round_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    for offset in (0, 2, 10):
        sized(tmp_path, "predictions", day(offset), 10)
    before = names(tmp_path)
    holder = start(HOLDER, tmp_path)
    try:
        done = ret.maintain(tmp_path, ret.Retention.parse("3d"), NOON)
        assert done.locked_by == holder.pid
        assert (done.compressed, done.pruned, done.freed) == ((), None, 0)
        assert names(tmp_path) == before
    finally:
        go(holder)
        finish(holder)
    done = ret.maintain(tmp_path, ret.Retention.parse("3d"), NOON)
    assert done.locked_by is None
    assert [c.source.name for c in done.compressed] == [f"predictions-{day(2)}.jsonl"]
    assert done.pruned is not None
    assert [p.name for p in done.pruned.deleted] == [f"predictions-{day(10)}.jsonl"]
    assert names(tmp_path) == [f"predictions-{day(2)}.jsonl.gz", f"predictions-{TODAY}.jsonl"]


def test_maintain_measures_the_size_bound_on_compressed_days_and_a_dry_run_agrees(
    tmp_path: Path,
) -> None:
    writer = predlog.PredictionLog(tmp_path)
    for offset in range(5):
        log_requests(writer, day(offset), count=100)
    writer.close()
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    bound = f"{total // 3}B"  # the plain days do not fit, three compressed ones do
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    planned = ret.maintain(tmp_path, ret.Retention.parse(bound), NOON, dry_run=True)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.name in before} == before
    assert not (tmp_path / PRUNED_FILE).exists()
    done = ret.maintain(tmp_path, ret.Retention.parse(bound), NOON)
    assert planned.dry_run and not done.dry_run
    assert planned.pruned is not None and done.pruned is not None
    assert planned.pruned.kept == done.pruned.kept
    assert len(done.pruned.kept) >= 3
    assert [p.name for p in planned.pruned.deleted] == [
        p.name.removesuffix(".gz") for p in done.pruned.deleted
    ]
    assert [c.packed for c in planned.compressed] == [c.packed for c in done.compressed]
    assert planned.freed == done.freed > 0
    on_disk = sum((tmp_path / name).stat().st_size for name in names(tmp_path))
    assert on_disk == done.pruned.kept_bytes <= total // 3


def test_maintaining_a_folder_that_is_not_there_says_so(tmp_path: Path) -> None:
    with pytest.raises(predlog.PredictionLogError, match="no prediction log at"):
        ret.maintain(tmp_path / "nowhere", ret.Retention(days=3), NOON)
    assert not (tmp_path / "nowhere").exists()


# --- the command ---------------------------------------------------------------------------


def real_day(offset: int) -> str:
    return day(offset, datetime.now(UTC).strftime("%Y-%m-%d"))


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["predictions", "prune", *args])


def test_the_prune_command_says_what_it_would_do_and_then_does_it(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    folder.mkdir()
    today = sized(folder, "predictions", real_day(0), 1000)
    closed = sized(folder, "predictions", real_day(2), 2000)
    old = sized(folder, "feedback", real_day(10), 3000)

    result = invoke("--retention", "5d", "--log-dir", str(folder), "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"would compress {closed.name} (2.0 kB -> ")
    assert lines[1] == f"would delete {old.name}"
    assert lines[2].startswith(f"would keep 2 days, {real_day(2)} to {real_day(0)} (")
    assert lines[3].startswith("would free ")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(
        [today.name, closed.name, old.name]
    )

    result = invoke("--retention", "5d", "--log-dir", str(folder))
    assert result.exit_code == 0, result.output
    assert f"delete {old.name}\n" in result.output
    assert "freed " in result.output
    assert names(folder) == [f"{closed.name}.gz", today.name]
    assert read_pruned(folder).newest == {"feedback": real_day(10)}


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--retention", "12h"], 2, "Invalid value for '--retention': invalid retention '12h'"),
        (["--retention", "lots"], 2, "e.g. 30d, 4w, 500MB, 2GiB or 30d,2GB"),
        ([], 2, "Missing option '--retention'"),
        (["--retention", "3d", "--log-dir", "nowhere"], 1, "error: no prediction log at nowhere"),
    ],
)
def test_the_prune_command_fails_in_one_clear_line(
    tmp_path: Path, args: list[str], code: int, words: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == code
    assert words in result.output
    assert "Traceback" not in result.output


def test_the_prune_command_fails_while_another_process_maintains_the_log(tmp_path: Path) -> None:
    sized(tmp_path, "predictions", real_day(10), 10)
    holder = start(HOLDER, tmp_path)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mlnb.cli",
                "predictions",
                "prune",
                "--retention",
                "1d",
                "--log-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        go(holder)
        finish(holder)
    assert done.returncode == ExitCode.FAILED
    assert done.stderr == (
        f"error: process {holder.pid} is maintaining the prediction log at {tmp_path} "
        "right now; try again\n"
    )
    assert names(tmp_path) == [f"predictions-{real_day(10)}.jsonl"]


def test_mlnb_help_lists_the_predictions_group() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert "predictions" in result.output
