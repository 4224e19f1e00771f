"""Live data for monitoring: windows of the prediction log, the live metric, labeled rows.

A :class:`~mlnb.predictions.window.WindowReader` that reads a log again and
again is checked against a read from scratch by the log's own functions
(:func:`~mlnb.predictions.log.start_of_last_rows`, then
:func:`~mlnb.predictions.log.load_predictions`), after each way a log changes
between two checks.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from mlnb.predictions import window as live
from mlnb.predictions.files import PREDICTIONS, Cursor, day_of, follow_day, open_path
from mlnb.predictions.log import (
    PredictionLog,
    load_predictions,
    new_request_id,
    start_of_last_rows,
)
from mlnb.predictions.retention import compress_closed_days

DAY_MS = 86_400_000


def write_log(folder: Path, requests: int, days: int) -> list[str]:
    """``requests`` requests of 3 rows spread over ``days`` days, labels for every other one."""
    log = PredictionLog(folder)
    start = int(time.time() * 1000) - days * DAY_MS
    ids = []
    for i in range(requests):
        ms = start + i * (days * DAY_MS // requests)
        rid = new_request_id(ms)
        log.write_prediction(rid, ms, "1", ["a", "b"], [[i, 0.5], [i, 1.5], [i, 2.5]], [1, 0, 1], 3)
        if i % 2 == 0:
            log.write_feedback(rid, [1, 1, 0], ms + 1000)
        ids.append(rid)
    log.close()
    return ids


def test_a_window_of_the_last_rows_reads_only_the_newest_days(tmp_path: Path) -> None:
    write_log(tmp_path, 60, days=6)
    everything = live.load_window(tmp_path, None, 10 * 86400)
    assert len(everything) == 180
    for last in (1, 7, 30, 90, 179, 180, 1000):
        window = live.load_window(tmp_path, last, None)
        expected = everything.tail(last).reset_index(drop=True)
        assert window[["request_id", "row"]].equals(expected[["request_id", "row"]]), last
    # 30 rows are in the newest day file or two: older files are not needed
    since = start_of_last_rows(tmp_path, 30)
    assert since is not None and since > int(time.time() * 1000) - 3 * DAY_MS
    assert start_of_last_rows(tmp_path, 10_000) is None


def test_a_missing_log_is_an_empty_window(tmp_path: Path) -> None:
    window = live.load_window(tmp_path / "nothing", 100, None)
    assert window.empty and {"request_id", "prediction", "label"} <= set(window.columns)


def test_the_live_metric_scores_the_labeled_rows(tmp_path: Path) -> None:
    write_log(tmp_path, 20, days=1)
    window = live.load_window(tmp_path, None, 2 * 86400)
    labeled = window[window["label"].notna()]
    assert len(labeled) == 30
    truth, predicted = labeled["label"].astype(int), labeled["prediction"].astype(int)

    accuracy = live.live_metric(window, "accuracy", min_labels=30)
    assert accuracy.labels == 30
    assert accuracy.value == pytest.approx(accuracy_score(truth, predicted))
    f1 = live.live_metric(window, "f1", min_labels=10)
    assert f1.value == pytest.approx(f1_score(truth, predicted))

    too_few = live.live_metric(window, "accuracy", min_labels=31)
    assert too_few.value is None and too_few.reason.startswith("30 labeled predictions")


def test_labels_sent_as_text_are_compared_as_text() -> None:
    window = pd.DataFrame(
        {"prediction": [1, 0, 1, 1], "label": ["1", "0", "0", None], "time": [0] * 4}
    )
    metric = live.live_metric(window, "accuracy", min_labels=3)
    assert metric.labels == 3 and metric.value == pytest.approx(2 / 3)


def test_roc_auc_of_one_class_is_undefined_not_a_crash() -> None:
    window = pd.DataFrame({"prediction": [1, 0, 1], "label": [1, 1, 1]})
    metric = live.live_metric(window, "roc_auc", min_labels=1)
    assert metric.value is None and "undefined" in metric.reason


def test_labeled_rows_become_training_data(tmp_path: Path) -> None:
    write_log(tmp_path, 4, days=1)
    window = live.load_window(tmp_path, None, 2 * 86400)
    table = live.labeled_table(window, ["a", "b"], "target")
    assert list(table.columns) == ["a", "b", "target"]
    assert len(table) == 6  # requests 0 and 2, three rows each
    assert table["target"].tolist() == [1, 1, 0, 1, 1, 0]
    assert live.input_columns(window) == ["a", "b"]


def test_old_check_folders_are_pruned(tmp_path: Path) -> None:
    import os

    from mlnb.monitoring.runner import prune_checks

    for i in range(8):
        folder = tmp_path / f"check{i}"
        folder.mkdir()
        (folder / "current.parquet").write_bytes(b"x")
        os.utime(folder, (1_000_000 + i, 1_000_000 + i))
    removed = prune_checks(tmp_path, keep=5)
    assert sorted(p.name for p in removed) == ["check0", "check1", "check2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"check{i}" for i in range(3, 8)]
    assert prune_checks(tmp_path / "none", keep=5) == []


# -- the window read again, incrementally ---------------------------------------------------


def from_scratch(folder: Path, last: int | None, since_seconds: float | None) -> pd.DataFrame:
    """The window as the log's own functions read it, everything parsed anew."""
    if since_seconds is not None:
        since_ms = int((time.time() - since_seconds) * 1000)
    else:
        since_ms = start_of_last_rows(folder, last) if last is not None else None
    table = load_predictions(folder, since_ms=since_ms).sort_values("time", kind="stable")
    return (table.tail(last) if last is not None else table).reset_index(drop=True)


def append(folder: Path, requests: int, ago_ms: int = 0, labels: bool = True) -> None:
    """More requests of 3 rows, ``ago_ms`` ago, the even ones labeled; as a service appends."""
    log = PredictionLog(folder)
    now = int(time.time() * 1000) - ago_ms
    for i in range(requests):
        ms = now + i
        rid = new_request_id(ms)
        log.write_prediction(rid, ms, "2", ["a", "b"], [[i, 0.5], [i, 1.5], [i, 2.5]], [0, 1, 0], 3)
        if labels and i % 2 == 0:
            log.write_feedback(rid, [0, 0, 1], ms + 500, sender="alice")
    log.close()


def compress(folder: Path) -> None:
    """What retention does to the days that ended: each ``.jsonl`` into its ``.jsonl.gz``."""
    assert compress_closed_days(folder, datetime.now(UTC), grace=timedelta(0))


def late_writer(folder: Path) -> None:
    """A request of a compressed day logged late: a ``.jsonl`` again beside its ``.gz``."""
    compress(folder)
    append(folder, 2, ago_ms=3 * DAY_MS)


def prune_oldest(folder: Path) -> None:
    """Retention deleting the oldest day's predictions and feedback."""
    oldest = min(p.name.split("-", 1)[1] for p in folder.glob("predictions-*"))
    for path in folder.glob(f"*-{oldest}"):
        path.unlink()


def torn(folder: Path) -> None:
    """A writer that died mid-line (the next record starts a line of its own), then a record."""
    day = day_of(int(time.time() * 1000))
    with open_path(folder, PREDICTIONS, day).open("ab") as handle:
        handle.write(b'{"request_id": "cut sh')
    append(folder, 1)


CHANGES: dict[str, Callable[[Path], None]] = {
    "nothing": lambda folder: None,
    "predictions appended": lambda folder: append(folder, 5),
    "unlabeled predictions appended": lambda folder: append(folder, 4, labels=False),
    "a new day": lambda folder: append(folder, 3, ago_ms=-DAY_MS),
    "closed days compressed": compress,
    "a late writer beside a compressed day": late_writer,
    "the oldest day pruned": prune_oldest,
    "a torn line": torn,
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize(
    ("last", "since"), [(30, None), (1000, None), (None, 10 * 86400), (7, 2 * 86400)]
)
def test_a_reader_reads_what_a_read_from_scratch_reads(
    tmp_path: Path, change: str, last: int | None, since: float | None
) -> None:
    write_log(tmp_path, 40, days=5)
    reader = live.WindowReader(tmp_path)
    before = reader.read(last, since)
    pd.testing.assert_frame_equal(before, from_scratch(tmp_path, last, since))
    assert len(before)

    CHANGES[change](tmp_path)
    after = reader.read(last, since)

    pd.testing.assert_frame_equal(after, from_scratch(tmp_path, last, since))
    if change == "predictions appended":
        assert set(after["model_version"]) >= {"2"}
        assert after["labeled_by"].eq("alice").any()


def test_a_day_is_followed_from_where_its_reader_stopped(tmp_path: Path) -> None:
    append(tmp_path, 3, labels=False)
    day = day_of(int(time.time() * 1000))
    cursor = Cursor()

    def lines() -> tuple[bool, list[int]]:
        with follow_day(tmp_path, PREDICTIONS, day, cursor) as (again, found):
            return again, [number for _, number, _ in found]

    assert lines() == (True, [1, 2, 3])  # read from the start
    assert lines() == (False, [])  # nothing new: nothing read
    append(tmp_path, 2, labels=False)
    assert lines() == (False, [4, 5])  # only what was appended
    with open_path(tmp_path, PREDICTIONS, day).open("ab") as handle:
        handle.write(b'{"request_id": "half a rec')
    assert lines() == (False, [])  # a line still being written waits for its end
    with open_path(tmp_path, PREDICTIONS, day).open("ab") as handle:
        handle.write(b'ord"}\n')
    assert lines() == (False, [6])
    shutil.copy(open_path(tmp_path, PREDICTIONS, day), tmp_path / "copy")
    (tmp_path / "copy").replace(open_path(tmp_path, PREDICTIONS, day))  # a new file
    assert lines() == (True, [1, 2, 3, 4, 5, 6])
    open_path(tmp_path, PREDICTIONS, day).unlink()
    assert lines() == (True, [])


def test_a_malformed_line_is_named_once_and_left_out_each_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    append(tmp_path, 3)
    torn(tmp_path)
    reader = live.WindowReader(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mlnb.predictions.log"):
        first = reader.read(100, None)
        append(tmp_path, 1)
        second = reader.read(100, None)
    assert caplog.text.count("skipped a torn or malformed record") == 1, caplog.text
    assert (len(first), len(second)) == (12, 15)  # the torn line's rows are in neither


def test_a_window_handed_out_is_the_caller_s(tmp_path: Path) -> None:
    append(tmp_path, 4)
    reader = live.WindowReader(tmp_path)
    window = reader.read(None, None)
    expected = window.copy()
    window.loc[:, "prediction"] = 99
    window.drop(columns=["label"], inplace=True)
    pd.testing.assert_frame_equal(reader.read(None, None), expected)


def test_a_log_folder_removed_under_a_reader_is_an_empty_window(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    append(folder, 4)
    reader = live.WindowReader(folder)
    assert len(reader.read(None, None)) == 12
    shutil.rmtree(folder)
    assert reader.read(None, None).empty
    append(folder, 1)
    assert len(reader.read(None, None)) == 3
