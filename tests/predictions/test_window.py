"""Live data for monitoring: windows of the prediction log, the live metric, labeled rows."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from mlnb.predictions import window as live
from mlnb.predictions.log import PredictionLog, new_request_id, start_of_last_rows

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
