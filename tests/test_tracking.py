"""mlnb.tracking on its own: the store it opens, the runs it ends, the errors it names.

Real SQLite MLflow stores in temporary folders, a real git repository, and
two real processes opening one new store at once.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import get_args
from urllib.parse import urlparse

import pytest
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from mlnb.errors import TrackingError
from mlnb.tags import EndState, RunState
from mlnb.tracking import PARAM_LIMIT, Tracker, lineage_tags, param_value
from tests.helpers import REPO


def store_of(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    """One store for the tests that only add runs and experiments of their own to it."""
    root = tmp_path_factory.mktemp("store")
    return Tracker(root, store_of(root))


def test_run_states_are_mlflows() -> None:
    mlflow_states = {RunStatus.to_string(s) for s in RunStatus.all_status()}
    ended = {s for s in mlflow_states if RunStatus.is_terminated(RunStatus.from_string(s))}

    assert set(get_args(RunState)) == mlflow_states
    assert set(get_args(EndState)) == ended
    assert ended  # FINISHED, FAILED, KILLED


def test_a_new_store_keeps_default_artifacts_beside_its_file(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    opened = Tracker(root, store_of(root))
    beside = (root / "mlartifacts").resolve().as_uri()

    client = MlflowClient(tracking_uri=store_of(root))  # as a notebook run by hand would
    default = client.get_experiment("0")
    assert default.name == "Default"
    assert default.artifact_location == f"{beside}/0"
    assert client.get_experiment(opened.experiment_id("p")).artifact_location == beside
    run_id = client.create_run("0").info.run_id
    spec = root / "spec.yaml"
    spec.write_text("name: p\n")
    client.log_artifact(run_id, str(spec), "spec")
    logged = Path(urlparse(client.get_run(run_id).info.artifact_uri).path) / "spec" / "spec.yaml"
    assert logged.is_relative_to((root / "mlartifacts").resolve())
    assert logged.read_text() == "name: p\n"
    assert not (Path.cwd() / "mlruns").exists()


def test_experiments_are_created_once(tracker: Tracker) -> None:
    first = tracker.experiment_id("once")

    assert tracker.experiment_id("once") == first
    assert Tracker(tracker.root, tracker.uri).experiment_id("once") == first
    assert tracker.experiment_id("twice") != first


@pytest.mark.parametrize("state", get_args(EndState))
def test_a_run_ends_as_told_and_reopens(tracker: Tracker, state: EndState) -> None:
    run_id = tracker.start_run(tracker.experiment_id("p"), "p", {"mlnb.kind": "pipeline"})
    tracker.log(run_id, params={"x": 1, "cfg": {"a": [1, 2]}}, tags={"t": "v"}, metrics={"m": 2})

    tracker.finish(run_id, state)
    ended = tracker.get_run(run_id)
    tracker.reopen(run_id)

    assert ended.info.status == state
    assert ended.data.params == {"x": "1", "cfg": '{"a": [1, 2]}'}
    assert ended.data.tags["t"] == "v"
    assert ended.data.tags["mlflow.runName"] == "p"
    assert ended.data.metrics == {"m": 2.0}
    assert tracker.get_run(run_id).info.status == "RUNNING"


def test_child_runs_are_the_stage_runs_of_a_parent(tracker: Tracker) -> None:
    experiment = tracker.experiment_id("p")
    parent = tracker.start_run(experiment, "p", {})
    other = tracker.start_run(experiment, "p", {})
    children = {tracker.start_run(experiment, s, {}, parent_run_id=parent) for s in "ab"}
    tracker.start_run(experiment, "c", {}, parent_run_id=other)

    found = tracker.child_runs(experiment, parent)

    assert {r.info.run_id for r in found} == children
    assert len(children) == 2


def test_store_failures_are_tracking_errors_naming_the_store(tracker: Tracker) -> None:
    uri = tracker.uri

    with pytest.raises(TrackingError, match=f"MLflow store {uri}: log failed"):
        tracker.log("0" * 32, tags={"t": "v"})
    with pytest.raises(TrackingError, match=f"no run '{'0' * 32}' in the MLflow store {uri}"):
        tracker.get_run("0" * 32)


def test_a_file_that_is_no_store_is_a_tracking_error(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").write_text("this is not a database\n" * 100)

    with pytest.raises(TrackingError, match="cannot open the MLflow store"):
        Tracker(tmp_path, store_of(tmp_path))


def test_two_processes_open_one_new_store_at_once(tmp_path: Path) -> None:
    """Both see one schema, one Default experiment, one experiment of the pipeline."""
    child = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from mlnb.tracking import Tracker

        root = Path(sys.argv[1])
        tracker = Tracker(root, f"sqlite:///{root / 'mlflow.db'}")
        experiment = tracker.experiment_id("p")
        run_id = tracker.start_run(experiment, "p", {})
        tracker.finish(run_id, "FINISHED")
        print(experiment)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", child, str(tmp_path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [proc.communicate(timeout=240) for proc in procs]

    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    assert len({out.strip() for out, _ in outs}) == 1
    client = MlflowClient(tracking_uri=store_of(tmp_path))
    names = sorted(e.name for e in client.search_experiments())
    assert names == ["Default", "p"]
    runs = client.search_runs([outs[0][0].strip()])
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]


def test_lineage_names_the_commit_and_whether_the_tree_changed(tmp_path: Path) -> None:
    spec = tmp_path / "pipelines" / "p.yaml"
    spec.parent.mkdir()
    spec.write_text("name: p\n")
    outside = lineage_tags(tmp_path, spec)

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "spec"]):
        subprocess.run([*git, *args], cwd=tmp_path, check=True, capture_output=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout.strip()
    clean = lineage_tags(tmp_path, spec)
    spec.write_text("name: p\ndescription: edited\n")
    dirty = lineage_tags(tmp_path, spec)

    assert outside == {"mlflow.source.type": "PROJECT", "mlflow.source.name": str(spec)}
    assert clean["mlflow.source.git.commit"] == commit
    assert clean["mlnb.git.dirty"] == "false"
    assert dirty["mlnb.git.dirty"] == "true"


def test_parameters_render_as_text_within_mlflows_limit() -> None:
    assert param_value("a/b.csv") == "a/b.csv"
    assert param_value(3) == "3"
    assert param_value({"k": [1, None]}) == '{"k": [1, null]}'
    long = param_value("x" * (PARAM_LIMIT + 10))
    assert len(long) == PARAM_LIMIT
    assert long.endswith("...")


def test_run_url_says_how_to_see_a_run_of_a_file_store(tracker: Tracker) -> None:
    url = tracker.run_url("1", "r")

    assert url == f"mlflow ui --backend-store-uri {tracker.uri}, then open #/experiments/1/runs/r"


def test_running_runs_are_those_still_running_with_the_tags_asked(tracker: Tracker) -> None:
    experiment = tracker.experiment_id("running")
    running = tracker.start_run(experiment, "a", {"mlnb.kind": "pipeline"})
    ended = tracker.start_run(experiment, "b", {"mlnb.kind": "pipeline"})
    tracker.finish(ended, "FAILED")
    other = tracker.start_run(experiment, "c", {"mlnb.kind": "stage"})

    found = tracker.running_runs(experiment, {"mlnb.kind": "pipeline"})

    assert [r.info.run_id for r in found] == [running]
    assert {r.info.run_id for r in tracker.running_runs(experiment, {})} == {running, other}


def test_a_servers_password_is_in_no_message(tmp_path: Path, monkeypatch) -> None:
    """A server that refuses: the error names the store as ``***@`` and never the password."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = server.server_address[1]
    try:
        with pytest.raises(TrackingError) as raised:
            Tracker(tmp_path, f"http://alice:s3cr3t@127.0.0.1:{port}")
    finally:
        server.shutdown()
        server.server_close()
    message = str(raised.value)
    assert message.startswith(f"cannot open the MLflow store http://***@127.0.0.1:{port}: ")
    assert "s3cr3t" not in message and "403" in message


def test_a_store_is_opened_in_write_ahead_log_mode(tmp_path: Path) -> None:
    import sqlite3

    new = tmp_path / "new"
    new.mkdir()
    Tracker(new, store_of(new))
    with contextlib.closing(sqlite3.connect(new / "mlflow.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    # a store made elsewhere in the default rollback-journal mode is switched once opened
    old = tmp_path / "old"
    old.mkdir()
    MlflowClient(tracking_uri=store_of(old)).search_experiments()
    with contextlib.closing(sqlite3.connect(old / "mlflow.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    tracker = Tracker(old, store_of(old))
    with contextlib.closing(sqlite3.connect(old / "mlflow.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # and MLflow, this process's or another's, reads what it wrote
    run_id = tracker.start_run(tracker.experiment_id("p"), "r", {"k": "v"})
    assert MlflowClient(tracking_uri=store_of(old)).get_run(run_id).data.tags["k"] == "v"
