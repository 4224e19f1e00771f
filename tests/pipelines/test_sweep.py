"""``mlnb sweep``: trials as nested pipeline runs, the shared stages once, the best delivered.

The scenario pipeline: stage ``a`` (add_one) feeds stage ``score``, a notebook
that logs its parameter ``answer`` as the metric ``answer`` and refuses the
values its ``refused`` list names. The sweep varies ``score.answer`` only, so
``a`` is upstream of every swept parameter and must execute once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from mlflow import MlflowClient

from mlnb import tags
from mlnb.errors import PipelineError, UsageError
from mlnb.pipelines.sweep import run_sweep
from tests.conftest import leftover_processes
from tests.helpers import REPO

pytestmark = pytest.mark.slow


def score_notebook(path: Path, refused: list[int]) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    notebook.metadata["language_info"] = {"name": "python"}
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "in_path = 'out.txt'\nanswer = 1", metadata={"tags": ["parameters"]}
        ),
        nbformat.v4.new_code_cell(f"assert answer not in {refused!r}, f'{{answer}} is refused'"),
        nbformat.v4.new_code_cell("import mlflow\nmlflow.log_metric('answer', answer)"),
    ]
    nbformat.write(notebook, path)


def spec_text(sweep: str) -> str:
    return (
        """
        name: s
        stages:
          a:
            notebook: notebooks/add_one.ipynb
            outputs: {out_path: out.txt}
          score:
            notebook: notebooks/score.ipynb
            params: {in_path: "${a.outputs.out_path}"}
        """
        + sweep
    )


GRID = """
        sweep:
          params:
            score.answer: [4, 9, 3]
          metric: score.answer
          goal: maximize
"""


def stage_runs(project, stage: str) -> list:
    client = project.client()
    experiment = client.get_experiment_by_name("s")
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlnb.stage` = '{stage}'"
    )


def test_a_grid_runs_each_trial_nested_and_the_shared_stage_once(project) -> None:
    score_notebook(project.root / "notebooks" / "score.ipynb", refused=[])
    spec = project.spec(spec_text(GRID), "s.yaml")

    result = run_sweep(spec, jobs=2)

    assert result.status == "FINISHED"
    assert [(t.number, t.params, t.status) for t in result.trials] == [
        (0, {"score.answer": 4}, "finished"),
        (1, {"score.answer": 9}, "finished"),
        (2, {"score.answer": 3}, "finished"),
    ]
    assert [t.value for t in result.ranking()] == [9.0, 4.0, 3.0]
    assert result.best is not None and result.best.number == 1
    executed = [r for r in stage_runs(project, "a") if r.data.tags[tags.CACHED] == "false"]
    assert len(executed) == 1  # upstream of every swept parameter: once, then the cache
    assert len(stage_runs(project, "a")) == 3
    client = project.client()
    sweep_run = client.get_run(result.run_id)
    assert sweep_run.data.tags[tags.KIND] == "sweep"
    assert sweep_run.data.tags[tags.SWEEP_BEST] == result.best.run_id
    assert sweep_run.data.metrics["best.score.answer"] == 9.0
    for trial in result.trials:
        run = client.get_run(trial.run_id)
        assert run.data.tags["mlflow.parentRunId"] == result.run_id  # nested in the UI
        assert run.data.params["score.answer"] == str(trial.params["score.answer"])
        assert run.data.metrics["score.answer"] == trial.value
        assert json.loads(run.data.tags[tags.SWEEP_PARAMS]) == trial.params


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_a_search_draws_the_same_trials_from_the_same_seed(project, method: str) -> None:
    score_notebook(project.root / "notebooks" / "score.ipynb", refused=[])
    search = f"""
        sweep:
          search:
            method: {method}
            trials: 3
            seed: 7
            space:
              score.answer: {{low: 1, high: 50}}
          metric: score.answer
          goal: minimize
"""
    spec = project.spec(spec_text(search), "s.yaml")

    first = run_sweep(spec)
    again = run_sweep(spec)

    drawn = [t.params["score.answer"] for t in first.trials]
    assert len(drawn) == 3 and all(isinstance(v, int) and 1 <= v <= 50 for v in drawn)
    assert [t.params["score.answer"] for t in again.trials] == drawn
    assert first.best is not None and first.best.value == min(drawn)  # minimize
    assert len(stage_runs(project, "score")) == 6


def test_a_failing_trial_is_reported_the_others_go_on_and_resume_finishes_it(project) -> None:
    notebook = project.root / "notebooks" / "score.ipynb"
    score_notebook(notebook, refused=[9])
    spec = project.spec(spec_text(GRID), "s.yaml")

    done = subprocess.run(
        [sys.executable, "-m", "mlnb", "sweep", "s", "--jobs", "2"],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "error: trial 1 score.answer=9: pipeline 's' failed: stage 'score'" in done.stderr
    assert "cell 2 raised AssertionError: 9 is refused" in done.stderr
    assert "2 of 3 trials finished" in done.stdout
    assert "1. trial 0   score.answer = 4" in done.stdout
    sweep_id = done.stdout.split("sweep run: ")[1].split()[0]
    assert f"mlnb sweep s --resume {sweep_id}" in done.stderr
    assert project.client().get_run(sweep_id).info.status == "FAILED"

    score_notebook(notebook, refused=[])  # the fix
    resumed = run_sweep(spec, resume=sweep_id)

    assert resumed.status == "FINISHED"
    assert sorted(t.number for t in resumed.trials) == [0, 1, 2]
    assert resumed.best is not None and resumed.best.number == 1
    assert len(stage_runs(project, "score")) == 4  # the two that finished ran once
    with pytest.raises(PipelineError, match="nothing to resume"):
        run_sweep(spec, resume=sweep_id)


def test_a_swept_key_set_with_p_is_refused(project) -> None:
    score_notebook(project.root / "notebooks" / "score.ipynb", refused=[])
    spec = project.spec(spec_text(GRID), "s.yaml")
    with pytest.raises(UsageError) as refused:
        run_sweep(spec, overrides={"score.answer": 2})
    assert str(refused.value).startswith("-p score.answer sets a parameter the sweep varies")


def example(root: Path, sweep: dict) -> Path:
    """The example project in ``root`` with ``sweep`` as its cancer pipeline's sweep."""
    for name in ("pipelines", "notebooks"):
        shutil.copytree(REPO / name, root / name)
    spec = root / "pipelines" / "cancer.yaml"
    text = yaml.safe_load(spec.read_text())
    text["sweep"] = sweep
    spec.write_text(yaml.safe_dump(text, sort_keys=False))
    return spec


@pytest.mark.timeout(600)
def test_the_best_trial_is_registered_and_gated_and_a_worse_best_is_not_promoted(
    tmp_path: Path,
) -> None:
    metric = {"metric": "train.cv_accuracy", "goal": "maximize"}
    spec = example(tmp_path / "cancer", {"params": {"max_depth": [1, 4]}, **metric})

    first = run_sweep(spec, profile="ci", jobs=2)

    assert first.best is not None and first.best.params == {"max_depth": 4}, first.trials
    assert first.registration is not None and first.decision is not None
    assert first.decision.promoted, first.decision.reason
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'cancer' / 'mlflow.db'}")
    version = client.get_model_version("cancer", first.registration.version)
    assert version.tags[tags.SWEEP_RUN] == first.run_id
    assert json.loads(version.tags[tags.SWEEP_PARAMS]) == {"max_depth": 4}
    assert version.tags[tags.PIPELINE_RUN] == first.best.run_id  # the trial's lineage
    assert version.tags[tags.TRIGGER] == "sweep"
    assert client.get_model_version_by_alias("cancer", "champion").version == version.version
    assert len(client.search_model_versions("name = 'cancer'")) == 1  # the best one only

    # a sweep whose best is a single stump: registered, gated, and the champion stays
    text = yaml.safe_load(spec.read_text())
    text["sweep"] = {"params": {"max_depth": [1], "n_estimators": [1, 2]}, **metric}
    spec.write_text(yaml.safe_dump(text, sort_keys=False))
    second = run_sweep(spec, profile="ci")

    assert second.registration is not None and second.decision is not None
    assert not second.decision.promoted, second.decision.reason
    assert client.get_model_version_by_alias("cancer", "champion").version == version.version
    challenger = client.get_model_version_by_alias("cancer", "challenger")
    assert str(challenger.version) == second.registration.version


def test_ctrl_c_stops_the_trials_under_way_and_ends_the_sweep_killed(project) -> None:
    project.spec(
        """
        name: s
        stages:
          nap:
            notebook: notebooks/sleeps.ipynb
            outputs: {out_path: out.json}
        sweep:
          params:
            seconds: [60, 61, 62]
          metric: nap.seconds
        """,
        "s.yaml",
    )
    log = project.root.parent / "sweep.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlnb", "sweep", "s", "--jobs", "2"],
            cwd=project.root,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "trial 0 running" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        time.sleep(3)  # its kernel is asleep in the cell
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = log.read_text()
    assert code == 130, said
    assert time.monotonic() - sent < 30, said  # not the 60 s the cell sleeps
    assert "interrupted — finish it with: mlnb sweep s --resume" in said
    client = project.client()
    sweep_id = said.split("sweep run: ")[1].split()[0]
    assert client.get_run(sweep_id).info.status == "KILLED"
    trials = client.search_runs(
        [client.get_experiment_by_name("s").experiment_id],
        filter_string=f"tags.`{tags.SWEEP_RUN}` = '{sweep_id}'",
    )
    assert [t.info.status for t in trials] == ["KILLED"]  # the one under way; no other began
    left = leftover_processes(project.root)
    assert not left, left
