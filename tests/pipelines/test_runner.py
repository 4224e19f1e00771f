"""run_pipeline end to end: real kernels, the project's real SQLite MLflow store.

Each test runs whole pipelines of the scenario notebooks and checks what a
user sees: stage statuses, output files in the run's workspace, the parent
and stage runs in MLflow, the cache, failures with their cell, resume, and
parallel stages. An autouse fixture checks that no kernel a run started
outlives it.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from mlnb.errors import (
    CellError,
    KernelDiedError,
    MissingOutputError,
    PipelineError,
    StageTimeoutError,
    TrackingError,
)
from mlnb.pipelines.events import (
    RunStarted,
    StageFinished,
    StageOutput,
    StageProgress,
    StageStarted,
)
from mlnb.pipelines.runner import PipelineResult, run_pipeline
from tests.helpers import CHAIN, FAILS_FIRST

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_process_left")]


# -- helpers -------------------------------------------------------------------------


def text(path: str | Path) -> str:
    return Path(path).read_text()


def statuses(result: PipelineResult) -> dict[str, str]:
    return {s.name: s.status for s in result.stages}


def child_runs(client, parent_run_id: str) -> list:
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
    )


def failed_run(spec: Path, **kw: object) -> PipelineError:
    with pytest.raises(PipelineError) as info:
        run_pipeline(spec, **kw)  # type: ignore[arg-type]
    return info.value


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


# -- success ---------------------------------------------------------------------------


def test_chain_succeeds_tracked_with_events(project) -> None:
    git(project.root, "init", "-q")
    git(project.root, "add", "notebooks")
    git(project.root, "commit", "-q", "-m", "notebooks")
    commit = git(project.root, "rev-parse", "HEAD")
    spec = project.spec(
        CHAIN
        + """
      track:
        notebook: notebooks/logs_to_mlflow.ipynb
    """
    )
    events: list[object] = []

    result = run_pipeline(spec, log_output=True, on_event=events.append)

    assert result.status == "FINISHED"
    assert statuses(result) == {"a": "succeeded", "b": "succeeded", "track": "succeeded"}
    ws = result.workspace
    assert ws == project.root / ".mlnb" / "runs" / result.run_id
    assert result.stage("a").outputs == {"out_path": str(ws / "a" / "out.txt")}
    assert text(ws / "a" / "out.txt") == "2"
    assert text(result.stage("b").outputs["out_path"]) == "3"
    for stage in result.stages:
        assert Path(stage.notebook) == ws / f"{stage.name}.ipynb"
        assert Path(stage.notebook).exists()

    client = project.client()
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mlnb.kind"] == "pipeline"
    assert parent.data.tags["mlflow.source.git.commit"] == commit
    assert parent.data.tags["mlnb.git.dirty"] == "false"
    assert parent.data.metrics["stages_executed"] == 3
    assert [f.path for f in client.list_artifacts(result.run_id, "spec")] == ["spec/p.yaml"]

    children = {r.data.tags["mlnb.stage"]: r for r in child_runs(client, result.run_id)}
    assert sorted(children) == ["a", "b", "track"]
    for name, run in children.items():
        assert run.info.run_id == result.stage(name).run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlnb.kind"] == "stage"
        assert run.data.tags["mlnb.cached"] == "false"
        assert len(run.data.tags["mlnb.notebook.sha256"]) == 64
        assert run.data.tags["mlflow.source.git.commit"] == commit
        artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "notebook")}
        assert artifacts == {f"notebook/{name}.ipynb", f"notebook/{name}.html"}
    # MLflow records paths that mean the same on every machine: in the state folder
    recorded = f"$MLNB_STATE_DIR/runs/{result.run_id}"
    assert parent.data.tags["mlnb.workspace"] == recorded
    assert parent.data.tags["mlnb.spec"] == "pipelines/p.yaml"
    assert children["a"].data.tags["mlnb.notebook"] == "notebooks/add_one.ipynb"
    assert children["a"].data.params == {"x": "1", "out_path": f"{recorded}/a/out.txt"}
    assert children["b"].data.params == {
        "in_path": f"{recorded}/a/out.txt",
        "out_path": f"{recorded}/b/out.txt",
    }
    assert json.loads(children["b"].data.tags["mlnb.outputs"]) == {
        "out_path": f"{recorded}/b/out.txt"
    }
    # the notebook's plain mlflow.log_metric landed in its own stage run
    assert children["track"].data.metrics == {"answer": 42.0}
    assert "answer" not in parent.data.metrics

    assert isinstance(events[0], RunStarted)
    assert events[0].run_id == result.run_id
    assert events[0].stages == ("a", "track", "b")
    assert events[0].workspace == str(ws)
    started = [e.stage for e in events if isinstance(e, StageStarted)]
    assert sorted(started) == ["a", "b", "track"]
    finished = {e.stage: e for e in events if isinstance(e, StageFinished)}
    assert {n: e.status for n, e in finished.items()} == statuses(result)
    assert finished["b"].run_id == result.stage("b").run_id
    progress = [
        (e.done, e.total) for e in events if isinstance(e, StageProgress) and e.stage == "a"
    ]
    # two source cells plus papermill's injected-parameters cell
    assert progress == [(1, 3), (2, 3), (3, 3)]
    printed: dict[str, str] = {}
    for event in events:
        if isinstance(event, StageOutput):
            printed[event.stage] = printed.get(event.stage, "") + event.text
    assert "wrote 2" in printed["a"]
    # the kernel had the stage's run id, and worked in the notebook's folder
    track_run = result.stage("track").run_id
    assert f"{track_run} {project.root / 'notebooks'}\n" in printed["track"].splitlines(True)


# -- cache -----------------------------------------------------------------------------


def test_cache_hits_and_what_invalidates_it(project) -> None:
    (project.root / "data").mkdir()
    data = project.root / "data" / "in.txt"
    data.write_text("10")
    spec = project.spec(
        CHAIN
        + """
      c:
        notebook: notebooks/reads_input.ipynb
        params: {in_path: data/in.txt}
        outputs: {out_path: out.txt}
    """
    )
    first = run_pipeline(spec)
    assert statuses(first) == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    assert text(first.stage("c").outputs["out_path"]) == "11"

    # unchanged: up to date; nothing executes and nothing new is recorded
    client = project.client()
    recorded_runs = len(client.search_runs([first.experiment_id]))
    events: list[object] = []
    second = run_pipeline(spec, on_event=events.append)
    assert second.up_to_date and second.status == "FINISHED"
    assert statuses(second) == {"a": "cached", "b": "cached", "c": "cached"}
    assert not [e for e in events if isinstance(e, StageStarted)]
    assert [(e.stage, e.source_run_id) for e in events if isinstance(e, StageFinished)] == [
        (s.name, s.run_id) for s in first.stages
    ]
    assert second.run_id == "" and second.workspace == first.workspace
    assert len(client.search_runs([first.experiment_id])) == recorded_runs
    for stage in second.stages:
        assert stage.source_run_id == first.stage(stage.name).run_id
        assert stage.outputs == first.stage(stage.name).outputs
        assert stage.run_id is None and stage.notebook is None

    # a parameter: that stage and what reads its output
    third = run_pipeline(spec, overrides={"a.x": 5})
    assert statuses(third) == {"a": "succeeded", "b": "succeeded", "c": "cached"}
    assert text(third.stage("b").outputs["out_path"]) == "7"

    # the content of a project file passed by relative path
    data.write_text("20")
    fourth = run_pipeline(spec)
    assert statuses(fourth) == {"a": "cached", "b": "cached", "c": "succeeded"}
    assert text(fourth.stage("c").outputs["out_path"]) == "21"
    assert text(fourth.stage("b").outputs["out_path"]) == "3"
    # cached stages of a run that executes others are recorded, their outputs in its workspace
    expected = {"a": "2", "b": "3"}
    for name, value in expected.items():
        stage = fourth.stage(name)
        source = first.stage(name).run_id
        assert stage.source_run_id == source
        assert stage.notebook is None
        assert stage.outputs["out_path"] == str(fourth.workspace / name / "out.txt")
        assert text(stage.outputs["out_path"]) == value
        run = client.get_run(stage.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlnb.cached"] == "true"
        assert run.data.tags["mlnb.cached_from_run"] == source
        assert run.data.tags["mlflow.parentRunId"] == fourth.run_id
    assert client.get_run(fourth.run_id).data.metrics["stages_executed"] == 1

    # the source of a notebook (used by b and c)
    path = project.root / "notebooks" / "reads_input.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell('print("edited")'))
    nbformat.write(nb, path)
    fifth = run_pipeline(spec)
    assert statuses(fifth) == {"a": "cached", "b": "succeeded", "c": "succeeded"}

    sixth = run_pipeline(spec, force=True)
    assert statuses(sixth) == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    assert {s.name: text(s.outputs["out_path"]) for s in sixth.stages} == {
        "a": "2",
        "b": "3",
        "c": "21",
    }


# -- failures --------------------------------------------------------------------------


def test_cell_error_fails_the_run_and_skips_downstream(project) -> None:
    spec = project.spec(FAILS_FIRST)
    error = failed_run(spec)

    assert len(error.failures) == 1
    failure = error.failures[0]
    assert isinstance(failure, CellError)
    assert (failure.stage, failure.cell, failure.ename) == ("fail", 2, "ValueError")
    assert failure.evalue == "boom 1"
    assert "cell 2" in str(failure)
    executed = nbformat.read(failure.notebook, as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert [(o.ename, o.evalue) for o in errors] == [("ValueError", "boom 1")]

    result = error.result  # type: ignore[attr-defined]
    assert result.status == "FAILED"
    assert error.run_id == result.run_id
    assert statuses(result) == {"fail": "failed", "after": "skipped"}
    assert result.stage("fail").notebook == failure.notebook
    assert result.stage("after").run_id is None
    client = project.client()
    assert client.get_run(error.run_id).info.status == "FAILED"
    stage_run = client.get_run(result.stage("fail").run_id)
    assert stage_run.info.status == "FAILED"
    assert "boom 1" in stage_run.data.tags["mlnb.error"]
    assert {f.path for f in client.list_artifacts(stage_run.info.run_id, "notebook")} == {
        "notebook/fail.ipynb",
        "notebook/fail.html",
    }
    assert len(child_runs(client, error.run_id)) == 1


KILLED = """
    name: p
    stages:
      s:
        notebook: notebooks/kernel_dies.ipynb
"""
TIMED_OUT = """
    name: p
    stages:
      s:
        notebook: notebooks/sleeps.ipynb
        params: {seconds: 60}
        outputs: {out_path: out.json}
        timeout: 2
"""
NOTHING_WRITTEN = """
    name: p
    stages:
      s:
        notebook: notebooks/writes_nothing.ipynb
        outputs: {out_path: out.txt}
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("spec_text", "error_type"),
    [
        (KILLED, KernelDiedError),
        (TIMED_OUT, StageTimeoutError),
        (NOTHING_WRITTEN, MissingOutputError),
    ],
    ids=["kernel-dies", "timeout", "missing-output"],
)
def test_stage_failure_kinds(project, spec_text: str, error_type: type) -> None:
    spec = project.spec(spec_text)

    started = time.monotonic()
    error = failed_run(spec)
    assert time.monotonic() - started < 15

    [failure] = error.failures
    assert type(failure) is error_type
    assert failure.stage == "s"
    result = error.result  # type: ignore[attr-defined]
    assert result.status == "FAILED"
    assert result.stage("s").status == "failed"
    assert Path(failure.notebook) == result.workspace / "s.ipynb"
    assert Path(failure.notebook).exists()
    if error_type is StageTimeoutError:
        assert failure.timeout == 2
        assert "timed out after 2 s" in str(failure)
    if error_type is MissingOutputError:
        assert failure.output == "out_path"
        assert failure.path == str(result.workspace / "s" / "out.txt")
    client = project.client()
    assert client.get_run(error.run_id).info.status == "FAILED"
    assert client.get_run(result.stage("s").run_id).info.status == "FAILED"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec_text", [KILLED, TIMED_OUT], ids=["kernel-dies", "timeout"])
def test_dead_kernel_names_the_running_cell(project, spec_text: str) -> None:
    events: list[object] = []
    error = failed_run(project.spec(spec_text), on_event=events.append)

    [failure] = error.failures
    progress = [(e.done, e.total) for e in events if isinstance(e, StageProgress)]
    assert progress
    assert all(done < total for done, total in progress)  # the last cell never finished
    assert failure.cell == 2
    assert "cell 2" in str(failure)


def test_clean_run_logs_no_errors(project, caplog: pytest.LogCaptureFixture) -> None:
    spec = project.spec(
        """
        name: p
        stages:
          a:
            notebook: notebooks/add_one.ipynb
            outputs: {out_path: out.txt}
        """
    )
    with caplog.at_level(logging.WARNING):
        result = run_pipeline(spec)

    assert result.status == "FINISHED"
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


# -- resume ----------------------------------------------------------------------------


#: stage b fails (in cell 2) until its notebook is fixed
FLAKY = """
    name: p
    stages:
      a:
        notebook: notebooks/add_one.ipynb
        outputs: {out_path: out.txt}
      b:
        notebook: notebooks/flaky.ipynb
        needs: [a]
    """


def flaky_notebook(root: Path) -> tuple[nbformat.NotebookNode, Path]:
    """notebooks/flaky.ipynb, failing in cell 2, and its path; fix it by editing cell 2."""
    flaky = root / "notebooks" / "flaky.ipynb"
    nb = nbformat.read(root / "notebooks" / "fails_in_cell_2.ipynb", as_version=4)
    nbformat.write(nb, flaky)
    return nb, flaky


def test_resume_continues_the_failed_run(project) -> None:
    nb, flaky = flaky_notebook(project.root)
    spec = project.spec(FLAKY)
    error = failed_run(spec)
    run_id = error.run_id
    assert statuses(error.result) == {"a": "succeeded", "b": "failed"}  # type: ignore[attr-defined]
    a_notebook = Path(error.result.stage("a").notebook)  # type: ignore[attr-defined]
    a_mtime = a_notebook.stat().st_mtime_ns

    nb.cells[1].source = 'print("fixed")'
    nbformat.write(nb, flaky)
    result = run_pipeline(spec, resume=run_id)

    assert result.run_id == run_id
    assert result.status == "FINISHED"
    assert statuses(result) == {"a": "reused", "b": "succeeded"}
    assert result.stage("a").run_id == error.result.stage("a").run_id  # type: ignore[attr-defined]
    assert a_notebook.stat().st_mtime_ns == a_mtime
    assert text(result.stage("a").outputs["out_path"]) == "2"
    client = project.client()
    assert client.get_run(run_id).info.status == "FINISHED"
    runs = child_runs(client, run_id)
    by_stage = sorted((r.data.tags["mlnb.stage"], r.info.status) for r in runs)
    assert by_stage == [("a", "FINISHED"), ("b", "FAILED"), ("b", "FINISHED")]

    with pytest.raises(PipelineError, match="nothing to resume"):
        run_pipeline(spec, resume=run_id)


def test_a_teammate_resumes_a_failed_run_from_another_folder(
    project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared-state"  # MLNB_STATE_DIR, mounted on both machines
    monkeypatch.setenv("MLNB_STATE_DIR", str(shared))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.store)
    nb, _ = flaky_notebook(project.root)
    error = failed_run(project.spec(FLAKY))
    assert Path(error.result.stage("a").notebook).is_relative_to(shared)  # type: ignore[attr-defined]

    # B has the project from version control, with the fix; nothing of A's folder
    other = tmp_path / "member-b"
    shutil.copytree(project.root / "notebooks", other / "notebooks")
    (other / "pipelines").mkdir()
    (other / "pipelines" / "p.yaml").write_text(textwrap.dedent(FLAKY))
    nb.cells[1].source = 'print("fixed")'
    nbformat.write(nb, other / "notebooks" / "flaky.ipynb")
    for left in project.root.iterdir():  # A's machine keeps only the store's files
        if not left.name.startswith("mlflow.db"):  # the database, its write-ahead log
            shutil.rmtree(left) if left.is_dir() else left.unlink()

    result = run_pipeline(other / "pipelines" / "p.yaml", resume=error.run_id)

    assert result.status == "FINISHED"
    assert statuses(result) == {"a": "reused", "b": "succeeded"}
    assert text(result.stage("a").outputs["out_path"]) == "2"  # A's output, from the shared folder
    assert not (other / ".mlnb").exists()


@pytest.mark.parametrize(
    ("kw", "error_type", "message"),
    [
        ({"resume": "0" * 32}, TrackingError, "no run"),
        ({"resume": "0" * 32, "overrides": {"x": 5}}, PipelineError, "drop --profile and -p"),
    ],
    ids=["unknown-run", "with-overrides"],
)
def test_resume_refuses(project, kw: dict, error_type: type, message: str) -> None:
    spec = project.spec(CHAIN)
    with pytest.raises(error_type, match=message):
        run_pipeline(spec, **kw)


# -- parallel stages ---------------------------------------------------------------------


@pytest.mark.parametrize("jobs", [2, 1])
def test_independent_stages_run_in_parallel(project, jobs: int) -> None:
    spec = project.spec(
        """
        name: p
        stages:
          s1:
            notebook: notebooks/sleeps.ipynb
            params: {seconds: 3}
            outputs: {out_path: one.json}
          s2:
            notebook: notebooks/sleeps.ipynb
            params: {seconds: 3}
            outputs: {out_path: two.json}
        """
    )
    result = run_pipeline(spec, jobs=jobs)

    assert statuses(result) == {"s1": "succeeded", "s2": "succeeded"}
    one, two = (json.loads(text(s.outputs["out_path"])) for s in result.stages)
    assert one["pid"] != two["pid"]
    overlap = min(one["end"], two["end"]) - max(one["start"], two["start"])
    span = max(one["end"], two["end"]) - min(one["start"], two["start"])
    if jobs == 2:
        assert overlap > 2
        assert span < 4.5
    else:
        assert overlap < 0
        assert span >= 6
