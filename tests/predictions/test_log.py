"""The prediction log: day files, UUIDv7 ids, finding requests, torn and malformed lines, labels."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlnb.predictions import log as predlog
from mlnb.predictions.window import input_columns, labeled_table

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
    assert list(empty.columns) == [*predlog.META_COLUMNS, "prediction", "label", "labeled_by"]


def test_known_requests_answers_recent_ids_from_memory_and_older_ones_from_their_day_file(
    tmp_path: Path,
) -> None:
    writer = predlog.PredictionLog(tmp_path)
    old = {rows: write(writer, JAN_31_LATE + rows, rows=rows) for rows in (1, 2, 3)}
    recent = write(writer, FEB_1_EARLY, rows=4)
    writer.close()
    (tmp_path / "predictions-2025-02-01.jsonl").unlink()  # only the writer's memory has it now
    restarted = predlog.PredictionLog(tmp_path)
    unknown = predlog.new_request_id(JAN_31_LATE)
    asked = [*old.values(), unknown, "not-a-uuid"]
    assert restarted.known_requests(asked) == {
        **{request_id: rows for rows, request_id in old.items()},
        unknown: None,
        "not-a-uuid": None,
    }
    assert writer.known_requests([recent, old[2]]) == {recent: 4, old[2]: 2}


def test_the_day_index_reads_what_was_appended_since_the_last_look_up(tmp_path: Path) -> None:
    writer, reader = predlog.PredictionLog(tmp_path), predlog.PredictionLog(tmp_path)
    first = write(writer, JAN_31_LATE, rows=2)
    later = predlog.new_request_id(JAN_31_LATE + 1)
    assert reader.known_requests([first, later]) == {first: 2, later: None}
    writer.write_prediction(later, JAN_31_LATE + 1, "1", ["a"], [[1.0]] * 5, [0] * 5, 5)
    assert reader.known_requests([first, later]) == {first: 2, later: 5}
    day = tmp_path / "predictions-2025-01-31.jsonl"
    day.write_bytes(day.read_bytes().splitlines(keepends=True)[1])  # the file cut short
    assert reader.known_requests([first, later]) == {first: None, later: 5}


def test_a_day_with_more_requests_than_the_index_holds_is_scanned_instead(tmp_path: Path) -> None:
    writer = predlog.PredictionLog(tmp_path, index_size=2)
    ids = [write(writer, JAN_31_LATE + i, rows=i + 1) for i in range(5)]
    writer.close()
    reader = predlog.PredictionLog(tmp_path, index_size=2)
    assert reader.known_requests(ids) == {request_id: i + 1 for i, request_id in enumerate(ids)}
    assert reader.known_requests(ids[:1]) == {ids[0]: 1}


def test_a_hand_written_line_in_another_key_order_is_still_found(tmp_path: Path) -> None:
    request_id = predlog.new_request_id(JAN_31_LATE)
    line = {"rows": 2, "request_id": request_id, "inputs": [[1], [2]]}
    (tmp_path / "predictions-2025-01-31.jsonl").write_text(json.dumps(line) + "\n")
    assert predlog.PredictionLog(tmp_path).known_requests([request_id]) == {request_id: 2}


def test_who_sent_a_label_is_kept_and_read_back(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    labeled, anonymous, unlabeled = (write(log, JAN_31_LATE + i) for i in range(3))
    log.write_feedback(labeled, [1], JAN_31_LATE + 10, sender="labeler")
    log.write_feedback(anonymous, [0], JAN_31_LATE + 10)
    log.close()
    record = json.loads(next(tmp_path.glob("feedback-*")).read_text().splitlines()[0])
    assert record["sender"] == "labeler"
    table = predlog.load_predictions(tmp_path).set_index("request_id")
    assert table.loc[[labeled, anonymous, unlabeled], "labeled_by"].tolist() == [
        "labeler",
        None,
        None,
    ]
    exported = tmp_path.parent / "out.parquet"
    predlog.export(tmp_path, exported)
    assert pd.read_parquet(exported)["labeled_by"].tolist() == ["labeler", None, None]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda r: {**r, "inputs": 5}, "inputs: Input should be a valid list"),
        (lambda r: {**r, "time": "yesterday"}, "time: Input should be a valid datetime"),
        (lambda r: {**r, "inputs": [[1.0]]}, "inputs: row 0 must be a list of 2 values"),
        (lambda r: {**r, "columns": "ab"}, "columns: Input should be a valid list"),
        (lambda r: {k: v for k, v in r.items() if k != "request_id"}, "request_id: Field required"),
        (lambda r: [r], "not a JSON object"),
    ],
    ids=["inputs a number", "time", "short row", "columns a string", "no id", "a list"],
)
def test_a_record_of_the_wrong_shape_is_skipped_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: Any, words: str
) -> None:
    log = predlog.PredictionLog(tmp_path)
    kept = write(log, JAN_31_LATE, rows=2)
    log.close()
    day = tmp_path / "predictions-2025-01-31.jsonl"
    good = json.loads(day.read_text())
    day.write_text(day.read_text() + json.dumps(change(good)) + "\n")
    skipped = predlog.Skipped()
    with caplog.at_level(logging.WARNING, logger="mlnb.predictions.log"):
        table = predlog.load_predictions(tmp_path, skipped=skipped)
    assert table["request_id"].tolist() == [kept, kept]
    assert [(p.file, p.location) for p in skipped.problems] == [(str(day), "line 2")]
    assert words in skipped.problems[0].message
    assert f"{day}:2: skipped a torn or malformed record: {words}" in caplog.text
    assert predlog.start_of_last_rows(tmp_path, 2) is None  # counts the valid rows only
    assert predlog.latest_prediction(tmp_path) == ("1", "2025-01-31T23:59:58Z")


def test_many_skipped_lines_are_named_up_to_a_few_then_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "predictions-2025-01-31.jsonl").write_text("{torn\n" * 25)
    with caplog.at_level(logging.WARNING, logger="mlnb.predictions.log"):
        assert len(predlog.load_predictions(tmp_path)) == 0
    named = [r for r in caplog.records if "skipped a torn or malformed record" in r.getMessage()]
    assert len(named) == predlog.WARNED_SKIPS
    assert "skipped 15 more records of the prediction log" in caplog.text


def test_a_canary_answer_is_a_prediction_record_marked_with_its_arm(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    champion = write(log, JAN_31_LATE, rows=2)
    canary = predlog.new_request_id(JAN_31_LATE + 1)
    log.write_prediction(canary, JAN_31_LATE + 1, "2", ["a", "b"], [[1.0, 2.0]], [1], 1, "canary")
    log.close()
    lines = (tmp_path / "predictions-2025-01-31.jsonl").read_bytes().splitlines()
    assert b'"arm"' not in lines[0]  # the champion's record says nothing
    assert lines[1].endswith(b',"arm":"canary"}')  # after the keys the head is read from
    assert predlog.find_requests(tmp_path, [champion, canary]) == {champion: 2, canary: 1}

    table = predlog.load_predictions(tmp_path)
    assert table["arm"].tolist() == ["champion", "champion", "canary"]
    assert table["model_version"].tolist() == ["1", "1", "2"]
    assert "arm" in predlog.META_COLUMNS
    inputs = input_columns(table)  # what drift and the retrain's training data take
    assert inputs == ["a", "b"]
    assert list(labeled_table(table, inputs, "target").columns) == ["a", "b", "target"]


def test_an_input_column_named_arm_is_kept_apart(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    log.write_prediction(
        predlog.new_request_id(JAN_31_LATE), JAN_31_LATE, "1", ["arm"], [[3]], [0], 1
    )
    log.close()
    table = predlog.load_predictions(tmp_path)
    assert (table["arm"].tolist(), table["input_arm"].tolist()) == (["champion"], [3])


def given(column: pd.Series) -> list[Any]:
    """A column's values, ``None`` where missing (``None`` or NaN, as pandas infers)."""
    return [None if pd.isna(value) else value for value in column]


def test_shadow_records_have_their_own_day_files_and_table(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    scored, failed, records = (predlog.new_request_id(JAN_31_LATE + i) for i in range(3))
    two = [{"label": "b", "p": 0.1}, {"label": "a", "p": 0.7}]
    log.write_shadow(scored, JAN_31_LATE, "2", 2, 0.004, outputs=two)
    log.write_shadow(failed, JAN_31_LATE, "2", 3, 0.1, error="ValueError: no\nsecond line")
    log.write_shadow(records, FEB_1_EARLY, "2", 1, 0.2, outputs=[{"label": "a", "p": 0.9}])
    log.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "shadow-2025-01-31.jsonl",
        "shadow-2025-02-01.jsonl",
    ]
    first, second = (json.loads(line) for line in (tmp_path / "shadow-2025-01-31.jsonl").open())
    assert first == {
        "request_id": scored,
        "time": "2025-01-31T23:59:58Z",
        "model_version": "2",
        "rows": 2,
        "outputs": two,
        "seconds": 0.004,
    }
    assert second["error"] == "ValueError: no second line" and "outputs" not in second

    table = predlog.load_shadow(tmp_path, since_ms=JAN_31_LATE)
    assert list(table.columns) == [
        "request_id",
        "row",
        "time",
        "model_version",
        "prediction_label",
        "prediction_p",
        "error",
    ]
    assert table["request_id"].tolist() == [scored] * 2 + [failed] * 3 + [records]
    assert table["row"].tolist() == [0, 1, 0, 1, 2, 0]
    assert table["prediction_label"].tolist() == ["b", "a", None, None, None, "a"]
    assert given(table["prediction_p"]) == [0.1, 0.7, None, None, None, 0.9]
    assert table["error"].tolist() == [None, None, *["ValueError: no second line"] * 3, None]
    plain = predlog.load_shadow(tmp_path, since_ms=FEB_1_EARLY - 1000)
    assert plain["request_id"].tolist() == [records]

    only_numbers = tmp_path / "numbers"
    log = predlog.PredictionLog(only_numbers)
    log.write_shadow(scored, JAN_31_LATE, "2", 2, 0.004, outputs=[1, 0])
    log.write_shadow(failed, JAN_31_LATE, "2", 1, 0.1, error="boom")
    log.close()
    numbers = predlog.load_shadow(only_numbers)
    assert given(numbers["prediction"]) == [1, 0, None]
    assert numbers["model_version"].tolist() == ["2"] * 3


def test_an_empty_shadow_table_has_its_columns(tmp_path: Path) -> None:
    table = predlog.load_shadow(tmp_path)
    assert list(table.columns) == [*predlog.SHADOW_COLUMNS, "prediction", "error"]
    assert len(table) == 0
    with pytest.raises(predlog.PredictionLogError, match="no prediction log"):
        predlog.load_shadow(tmp_path / "none")


def test_a_torn_or_malformed_shadow_line_is_skipped_and_named(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    kept = predlog.new_request_id(JAN_31_LATE)
    log.write_shadow(kept, JAN_31_LATE, "2", 1, 0.01, outputs=[1])
    log.close()
    day = tmp_path / "shadow-2025-01-31.jsonl"
    with day.open("a") as handle:
        handle.write(json.dumps({"request_id": "x", "time": "2025-01-31T00:00:00Z"}) + "\n")
        handle.write(
            json.dumps({"request_id": "y", "time": "2025-01-31T00:00:00Z", "model_version": "2"})[
                :-1
            ]
            + ', "rows": 1}\n'
        )
        handle.write('{"request_id": "torn')
    skipped = predlog.Skipped()
    table = predlog.load_shadow(tmp_path, skipped=skipped)
    assert table["request_id"].tolist() == [kept]
    assert [(p.location, p.message.split(":")[0]) for p in skipped.problems] == [
        ("line 2", "model_version"),
        ("line 3", "outputs"),
        ("line 4", "not a whole JSON line"),
    ]
