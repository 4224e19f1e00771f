"""The prediction log: day files, UUIDv7 ids, finding a request, torn lines, reading it back."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlnb.predictions import log as predlog

JAN_31_LATE = int(datetime(2025, 1, 31, 23, 59, 58, tzinfo=UTC).timestamp() * 1000)
FEB_1_EARLY = int(datetime(2025, 2, 1, 0, 0, 2, tzinfo=UTC).timestamp() * 1000)


def write(log: predlog.PredictionLog, ms: int, rows: int = 1, version: str = "1") -> str:
    """Log one request of ``rows`` rows of columns a, b at ``ms``; its id."""
    request_id = predlog.new_request_id(ms)
    inputs = [[float(i), float(i) + 0.5] for i in range(rows)]
    log.write_prediction(request_id, ms, version, ["a", "b"], inputs, list(range(rows)), rows)
    return request_id


def test_request_ids_are_uuidv7_that_carry_their_time() -> None:
    ids = [predlog.new_request_id(JAN_31_LATE) for _ in range(50)]
    assert len(set(ids)) == 50  # the random part differs within one millisecond
    for request_id in ids:
        parsed = uuid.UUID(request_id)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert predlog.request_millis(request_id) == JAN_31_LATE
    later = predlog.new_request_id(JAN_31_LATE + 1)
    assert max(ids) < later  # ids sort by time, as their text
    assert predlog.request_millis(str(uuid.uuid4())) is None
    assert predlog.request_millis("not-a-uuid") is None


def test_each_utc_day_has_its_own_files(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    before = write(log, JAN_31_LATE)
    after = write(log, FEB_1_EARLY, rows=2)  # the same writer, past midnight
    log.write_feedback(before, ["yes"], FEB_1_EARLY)  # feedback is filed by when it came
    log.close()

    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == [
        "feedback-2025-02-01.jsonl",
        "predictions-2025-01-31.jsonl",
        "predictions-2025-02-01.jsonl",
    ]
    assert before in (tmp_path / "predictions-2025-01-31.jsonl").read_text()
    assert after in (tmp_path / "predictions-2025-02-01.jsonl").read_text()
    assert after not in (tmp_path / "predictions-2025-01-31.jsonl").read_text()
    table = predlog.load_predictions(tmp_path)
    assert table["request_id"].tolist() == [before, after, after]
    assert table["label"].tolist() == ["yes", None, None]


def test_a_window_from_a_day_on_reads_no_earlier_day_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = predlog.PredictionLog(tmp_path)
    write(log, JAN_31_LATE)
    newer = write(log, FEB_1_EARLY)
    log.close()
    with (tmp_path / "predictions-2025-01-31.jsonl").open("ab") as handle:
        handle.write(b'{"request_id": "torn')  # only a reader of this file would see it

    with caplog.at_level(logging.WARNING, logger="mlnb.predictions.log"):
        table = predlog.load_predictions(tmp_path, since_ms=FEB_1_EARLY - 1000)
    assert table["request_id"].tolist() == [newer]
    assert "torn or malformed" not in caplog.text

    with caplog.at_level(logging.WARNING, logger="mlnb.predictions.log"):
        assert len(predlog.load_predictions(tmp_path)) == 2
    assert "predictions-2025-01-31.jsonl:2: skipped a torn or malformed record" in caplog.text


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    ms = int(time.time() * 1000)
    request_id = predlog.new_request_id(ms)
    log.write_prediction(request_id, ms, "3", ["a", "b"], [[1.0, 2.0]], [7], 1)
    log.write_feedback(request_id, ["yes"], ms)
    log.close()
    day = next(tmp_path.glob("predictions-*.jsonl"))
    with day.open("ab") as handle:
        handle.write(b'{"request_id": "01')  # a power cut mid-write
    table = predlog.load_predictions(tmp_path)
    assert table[["a", "b", "prediction", "label"]].values.tolist() == [[1.0, 2.0, 7, "yes"]]
    assert predlog.find_request(tmp_path, request_id) == 1
    assert predlog.request_millis(request_id) == ms


def test_find_request_reads_the_day_file_its_id_names(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    ids = {rows: write(log, JAN_31_LATE + rows, rows=rows) for rows in (1, 3, 2)}
    log.close()
    for rows, request_id in ids.items():
        assert predlog.find_request(tmp_path, request_id) == rows
    assert predlog.find_request(tmp_path, predlog.new_request_id(JAN_31_LATE)) is None
    assert predlog.find_request(tmp_path, predlog.new_request_id(FEB_1_EARLY)) is None  # no file
    assert predlog.find_request(tmp_path, "not-a-uuid") is None
    (tmp_path / "predictions-2025-02-01.jsonl").touch()  # an empty day file
    assert predlog.find_request(tmp_path, predlog.new_request_id(FEB_1_EARLY)) is None


def test_the_recent_index_is_bounded(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path, index_size=2)
    first, second, third = (write(log, JAN_31_LATE + i, rows=i + 1) for i in range(3))
    log.close()
    assert log.recent_rows(first) is None  # dropped from memory ...
    assert predlog.find_request(tmp_path, first) == 1  # ... and still in its day file
    assert (log.recent_rows(second), log.recent_rows(third)) == (2, 3)


def test_the_later_feedback_wins_and_taken_names_get_a_prefix(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    request_id = predlog.new_request_id(JAN_31_LATE)
    log.write_prediction(request_id, JAN_31_LATE, "4", ["label", "x"], [[9, 1.0]], ["p"], 1)
    log.write_feedback(request_id, ["first"], JAN_31_LATE + 10)
    log.write_feedback(request_id, ["second"], JAN_31_LATE + 20)
    log.close()
    table = predlog.load_predictions(tmp_path)
    assert table[["input_label", "x", "prediction", "label"]].values.tolist() == [
        [9, 1.0, "p", "second"]
    ]
    assert predlog.latest_prediction(tmp_path) == ("4", "2025-01-31T23:59:58Z")


def test_reading_a_log_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(predlog.PredictionLogError, match="no prediction log at"):
        predlog.load_predictions(tmp_path / "none")
    assert predlog.latest_prediction(tmp_path / "none") is None
    empty = predlog.load_predictions(tmp_path)
    assert len(empty) == 0
    assert list(empty.columns) == [*predlog.META_COLUMNS, "prediction", "label"]
