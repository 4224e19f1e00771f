"""``mlnb run`` as a user runs it: a subprocess in the project folder.

What is checked is what a person reads (the run id, the store, the failing
stage and cell, the ``--resume`` hint) and the exit code, plus what lands in
the project: the run's workspace and its MLflow runs.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import CHAIN, FAILS_FIRST

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_process_left")]

RUN_ID = re.compile(r"^run id:\s+([0-9a-f]{32})$", re.MULTILINE)


def run_id_of(stdout: str) -> str:
    match = RUN_ID.search(stdout)
    assert match, stdout
    return match.group(1)


@pytest.mark.parametrize(
    ("args", "x"),
    [(["--log-output"], 1), (["-p", "x=5"], 5), (["--profile", "ci"], 10)],
    ids=["defaults", "param", "profile"],
)
def test_run_prints_the_run_and_its_store(project, args: list[str], x: int) -> None:
    project.spec(CHAIN)

    done = project.mlnb("run", "pipelines/p.yaml", *args)

    assert done.returncode == 0, done.stderr
    run_id = run_id_of(done.stdout)
    root = project.root.resolve()
    assert f"store:     sqlite:///{root / 'mlflow.db'}\n" in done.stdout
    workspace = root / ".mlnb" / "runs" / run_id
    assert f"workspace: {workspace}\n" in done.stdout
    assert "pipeline 'p' finished" in done.stdout
    assert (workspace / "a" / "out.txt").read_text() == str(x + 1)
    assert (workspace / "b" / "out.txt").read_text() == str(x + 2)
    # what the notebook printed shows with --log-output only
    assert ("[a] wrote " in done.stderr) == ("--log-output" in args)
    if "--log-output" in args:
        assert f"[a] wrote {x + 1}" in done.stderr

    run = project.client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlnb.profile"] == ("ci" if "--profile" in args else "")


def test_failing_stage_names_cell_notebook_and_resume(project) -> None:
    project.spec(FAILS_FIRST)

    done = project.mlnb("run", "pipelines/p.yaml")

    assert done.returncode == 1, done.stderr
    run_id = run_id_of(done.stdout)
    notebook = project.root.resolve() / ".mlnb" / "runs" / run_id / "fail.ipynb"
    assert notebook.exists()
    err = done.stderr
    assert "stage 'fail' failed: cell 2 raised ValueError: boom 1" in err
    assert f"executed notebook: {notebook}" in err
    assert f"mlnb run pipelines/p.yaml --resume {run_id}" in err
    assert "Traceback" not in err
    assert "1 failed, 1 skipped" in done.stdout


def test_spec_error_exits_2_naming_file_and_key(project) -> None:
    project.spec(
        """
        name: p
        stages:
          a:
            notebook: notebooks/add_one.ipynb
            params: {xx: 1}
        """
    )

    done = project.mlnb("run", "pipelines/p.yaml")

    assert done.returncode == 2, done.stderr
    assert "pipelines/p.yaml" in done.stderr
    assert "stages.a.params.xx" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (project.root / "mlflow.db").exists()
    assert not (project.root / ".mlnb").exists()


def test_help_does_not_import_mlflow(project) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mlnb.cli", "--help"],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout
    assert "import time:" in done.stderr
    assert "mlflow" not in done.stderr


def test_an_up_to_date_run_records_nothing_and_never_imports_mlflow(project) -> None:
    project.spec(CHAIN)
    first = project.mlnb("run", "pipelines/p.yaml")
    assert first.returncode == 0, first.stderr
    run_id = run_id_of(first.stdout)
    client = project.client()
    experiment = client.get_run(run_id).info.experiment_id
    children = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'"
    )
    sources = {run.data.tags["mlnb.stage"]: run.info.run_id for run in children}

    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mlnb.cli", "run", "pipelines/p.yaml"],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert (
        "pipeline 'p' is up to date (2 cached): nothing executed, nothing recorded" in done.stdout
    )
    workspace = project.root.resolve() / ".mlnb" / "runs" / run_id
    assert f"workspace: {workspace}\n" in done.stdout
    assert f"[a] cached from run {sources['a']}" in done.stderr
    assert f"[b] cached from run {sources['b']}" in done.stderr
    imported = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert imported and not [line for line in imported if "mlflow" in line]
    assert len(client.search_runs([experiment])) == 1 + len(sources)

    forced = project.mlnb("run", "pipelines/p.yaml", "--force")
    assert forced.returncode == 0, forced.stderr
    assert run_id_of(forced.stdout) != run_id


def run_together(project, count: int = 2) -> list[tuple[int, str, str]]:
    """Start ``mlnb run --force`` ``count`` times at once; return (exit code, stdout, stderr)."""
    command = [sys.executable, "-m", "mlnb.cli", "run", "pipelines/p.yaml", "--force"]
    procs = [
        subprocess.Popen(
            command, cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    outs = [proc.communicate(timeout=200) for proc in procs]
    return [(proc.returncode, out, err) for proc, (out, err) in zip(procs, outs, strict=True)]


def assert_finished_apart(project, runs: list[tuple[int, str, str]]) -> None:
    for code, _, err in runs:
        assert code == 0, err
    run_ids = [run_id_of(out) for _, out, _ in runs]
    assert len(set(run_ids)) == len(run_ids)
    client = project.client()
    for run_id in run_ids:
        workspace = project.root / ".mlnb" / "runs" / run_id
        assert (workspace / "a" / "out.txt").read_text() == "2"
        assert (workspace / "b" / "out.txt").read_text() == "3"
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlnb.workspace"] == f"$MLNB_STATE_DIR/runs/{run_id}"
        stages = client.search_runs(
            [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'"
        )
        assert sorted(r.data.tags["mlnb.stage"] for r in stages) == ["a", "b"]
        assert {r.data.tags["mlnb.cached"] for r in stages} == {"false"}
        assert {r.info.status for r in stages} == {"FINISHED"}


@pytest.mark.timeout(240)
def test_concurrent_runs_keep_their_own_workspaces(project) -> None:
    project.spec(CHAIN)
    project.client().search_experiments()  # the store exists, as after any earlier run

    assert_finished_apart(project, run_together(project))


@pytest.mark.timeout(240)
def test_concurrent_first_runs_share_a_new_store(project) -> None:
    project.spec(CHAIN)

    runs = run_together(project)

    for _, _, err in runs:
        assert "Traceback" not in err
    assert_finished_apart(project, runs)
