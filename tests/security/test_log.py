"""Attacks on the prediction log with real files: torn lines, a log that cannot be written,
hand-edited records on export, and thousands of unknown request ids.

The disk is made full by a day file that is a link to ``/dev/full`` (every
write fails with ENOSPC, as on a full disk), a write is cut short by a file
size limit (``RLIMIT_FSIZE``: the kernel writes part of the record, then
fails), and files and folders are removed or replaced under a writer that
holds them open.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from mlnb.predictions import log as predlog

DAY_MS = 86_400_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def log_one(log: predlog.PredictionLog, ms: int, value: float = 1.0) -> str:
    request_id = predlog.new_request_id(ms)
    log.write_prediction(request_id, ms, "1", ["a"], [[value]], [0], 1)
    return request_id


def day_file(folder: Path, ms: int) -> Path:
    return folder / f"predictions-{predlog._day(ms)}.jsonl"


def export(folder: Path, target: Path) -> subprocess.CompletedProcess[str]:
    """``mlnb export-predictions`` as a user runs it."""
    command = ["export-predictions", str(target), "--log-dir", str(folder)]
    return subprocess.run(
        [sys.executable, "-m", "mlnb.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    folder, ms = tmp_path / "log", now_ms()
    first = log_one(predlog.PredictionLog(folder), ms)
    with day_file(folder, ms).open("ab") as handle:
        handle.write(b'{"request_id":"0190')  # the crash, mid-write
    restarted = predlog.PredictionLog(folder)
    second = log_one(restarted, ms + 1, 2.0)
    third = log_one(restarted, ms + 2, 3.0)
    restarted.close()

    lines = day_file(folder, ms).read_bytes().splitlines()
    assert lines[1] == b'{"request_id":"0190'  # the torn piece stays alone on its line
    assert second in lines[2].decode() and third in lines[3].decode()
    answer = export(folder, tmp_path / "out.csv")
    assert answer.returncode == 0, answer.stderr
    assert pd.read_csv(tmp_path / "out.csv")["request_id"].tolist() == [first, second, third]
    assert (
        "predictions-" in answer.stderr
        and ":2: skipped a torn or malformed record" in answer.stderr
    )
    assert "1 records of" in answer.stderr
    assert predlog.PredictionLog(folder).known_requests([second, third]) == {second: 1, third: 1}


def test_a_full_disk_is_a_log_write_error_and_the_writer_recovers(tmp_path: Path) -> None:
    folder, ms = tmp_path / "log", now_ms()
    folder.mkdir()
    day_file(folder, ms).symlink_to("/dev/full")
    log = predlog.PredictionLog(folder)
    with pytest.raises(predlog.LogWriteError, match="No space left on device") as failed:
        log_one(log, ms)
    assert failed.value.path == str(day_file(folder, ms))
    assert isinstance(failed.value, predlog.PredictionLogError)
    day_file(folder, ms).unlink()  # space again
    kept = log_one(log, ms + 1)
    assert json.loads(day_file(folder, ms).read_text())["request_id"] == kept


def test_a_removed_file_or_folder_is_recreated_and_nothing_is_lost(tmp_path: Path) -> None:
    folder, ms = tmp_path / "log", now_ms()
    log = predlog.PredictionLog(folder)
    log_one(log, ms)
    day_file(folder, ms).unlink()  # a clean-up while the service runs
    after_unlink = log_one(log, ms + 1)
    assert logged(day_file(folder, ms)) == [after_unlink]
    shutil.rmtree(folder)
    after_rmtree = log_one(log, ms + 2)
    assert logged(day_file(folder, ms)) == [after_rmtree]


def logged(path: Path) -> list[str]:
    return [json.loads(line)["request_id"] for line in path.open()]


def test_a_folder_that_cannot_be_made_fails_each_write_until_it_can(tmp_path: Path) -> None:
    folder, ms = tmp_path / "log", now_ms()
    log = predlog.PredictionLog(folder)
    shutil.rmtree(folder)
    folder.write_text("a file where the folder was")
    for i in range(2):
        with pytest.raises(predlog.LogWriteError, match=r"cannot write the prediction log .*log"):
            log.write_feedback(predlog.new_request_id(ms), [1], ms + i, sender="labeler")
    folder.unlink()
    log.write_feedback(predlog.new_request_id(ms), [1], ms + 2, sender="labeler")
    assert json.loads(next(folder.glob("feedback-*")).read_text())["sender"] == "labeler"


def test_a_record_cut_short_by_the_kernel_is_taken_back(tmp_path: Path) -> None:
    """The kernel writes part of a record and fails (a file size limit): the part is cut off."""
    folder = tmp_path / "log"
    script = textwrap.dedent(
        f"""
        import json, os, resource, signal, time
        from mlnb.predictions import log as predlog
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        folder, ms = {str(folder)!r}, time.time_ns() // 1_000_000
        log = predlog.PredictionLog(folder)
        first = predlog.new_request_id(ms)
        log.write_prediction(first, ms, "1", ["a"], [[1.0]], [0], 1)
        path = next(os.scandir(folder)).path
        size = os.path.getsize(path)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))
        try:
            big = predlog.new_request_id(ms)
            log.write_prediction(big, ms, "1", ["a"], [[2.0]] * 50, [0] * 50, 50)
        except predlog.LogWriteError as exc:
            failed = str(exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        after = os.path.getsize(path)
        third = predlog.new_request_id(ms + 1)
        log.write_prediction(third, ms + 1, "1", ["a"], [[3.0]], [0], 1)
        print(json.dumps({{"failed": failed, "size": size, "after": after, "ids": [first, third]}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    report = json.loads(done.stdout)
    assert "File too large" in report["failed"]
    assert report["after"] == report["size"]  # the part that was written is gone again
    assert logged(next(folder.iterdir())) == report["ids"]


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda r: {**r, "inputs": 5}, "inputs"),
        (lambda r: {**r, "time": "yesterday"}, "time"),
        (lambda r: {**r, "inputs": [[1.0, 2.0]]}, "inputs: row 0"),
        (lambda r: {**r, "model_version": None}, "model_version"),
    ],
    ids=["inputs a number", "time not a time", "row wider than columns", "version null"],
)
def test_export_of_a_hand_edited_record_skips_it_naming_file_line_and_key(
    tmp_path: Path, edit, key: str
) -> None:
    folder, ms = tmp_path / "log", now_ms()
    log = predlog.PredictionLog(folder)
    kept = [log_one(log, ms), log_one(log, ms + 1)]
    log.close()
    path = day_file(folder, ms)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], json.dumps(edit(json.loads(lines[1]))), lines[1]]) + "\n")

    answer = export(folder, tmp_path / "out.parquet")
    assert answer.returncode == 0, answer.stderr
    assert "Traceback" not in answer.stderr
    assert f"{path}:2: skipped a torn or malformed record: {key}" in answer.stderr
    assert f"1 records of {folder} could not be read" in answer.stderr
    assert answer.stdout.strip() == f"2 predictions written to {tmp_path / 'out.parquet'}"
    assert pd.read_parquet(tmp_path / "out.parquet")["request_id"].tolist() == kept


def test_3000_unknown_ids_are_looked_up_in_well_under_a_second(tmp_path: Path) -> None:
    """Each id used to cost a scan of its whole day file (102 s for 3,000 ids)."""
    folder, ms = tmp_path / "log", now_ms()
    writer = predlog.PredictionLog(folder)
    row = [[0.123456789] * 30]
    columns = [f"c{i}" for i in range(30)]
    logged = []
    for _ in range(20_000):
        request_id = predlog.new_request_id(ms)
        writer.write_prediction(request_id, ms, "1", columns, row, [1], 1)
        logged.append(request_id)
    writer.close()
    assert day_file(folder, ms).stat().st_size > 10 * 2**20
    restarted = predlog.PredictionLog(folder)  # nothing in memory
    asked = [predlog.new_request_id(ms) for _ in range(2_990)] + logged[::2_000]
    started = time.perf_counter()
    known = restarted.known_requests(asked)
    first = time.perf_counter() - started
    assert sum(rows is not None for rows in known.values()) == 10
    assert all(known[request_id] == 1 for request_id in logged[::2_000])
    asked_again = [predlog.new_request_id(ms) for _ in range(3_000)]
    started = time.perf_counter()
    assert set(restarted.known_requests(asked_again).values()) == {None}
    again = time.perf_counter() - started
    assert first < 1.0, f"{first:.2f} s"
    assert again < 0.2, f"{again:.3f} s"
