"""``mlnb test``: each pipeline with its ci profile on a throwaway store, then its notebooks
by hand with nbval, reported per stage and notebook (and as JUnit XML).

``mlnb test`` runs twice in these tests, each time in a fixture that several
tests read: on a small project whose stage raises and whose notebook fails when
run by hand (``failing``), and on a freshly scaffolded project where everything
passes (``scaffolded``, shared with the scaffold tests).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.delivery.helpers import (
    NBVAL_SUITE,
    Outcome,
    Scaffolded,
    mlnb_test,
    scenario_project,
    write,
)

BAD = """\
    name: bad
    profiles:
      ci: {x: 7}
    stages:
      boom:
        notebook: notebooks/fails_in_cell_2.ipynb
      after:
        notebook: notebooks/add_one.ipynb
        needs: [boom]
        outputs: {out_path: out.txt}
"""

# passes as a pipeline; reads_input.ipynb fails when run by hand (its in.txt is not there)
GOOD = """\
    name: good
    profiles:
      ci: {x: 10}
    stages:
      a:
        notebook: notebooks/add_one.ipynb
        outputs: {out_path: out.txt}
      b:
        notebook: notebooks/reads_input.ipynb
        params: {in_path: "${a.outputs.out_path}"}
        outputs: {out_path: out.txt}
"""


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """``mlnb test`` on a project whose pipeline ``bad`` fails in stage ``boom``, and whose
    pipeline ``good`` passes but has a notebook that fails when run by hand."""
    root = scenario_project(tmp_path_factory.mktemp("failing") / "proj")
    write(root / "pipelines" / "bad.yaml", BAD)
    write(root / "pipelines" / "good.yaml", GOOD)
    return mlnb_test(root, "reports/junit.xml")


def test_a_failing_stage_fails_mlnb_test_naming_pipeline_stage_cell_and_exception(
    failing: Outcome,
) -> None:
    done = failing.done
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pipeline bad (profile ci, throwaway MLflow store)" in done.stdout
    headline = re.compile(r"pipeline bad: stage 'boom' failed: cell \d+ raised ValueError: boom 7")
    assert headline.search(done.stdout), done.stdout  # boom 7: the ci profile reached it
    assert re.search(r"^error: " + headline.pattern, done.stderr, re.MULTILINE), done.stderr
    assert "3 failed, 3 passed" in done.stderr
    assert "JUnit XML: reports/junit.xml" in done.stdout

    junit = failing.junit
    assert list(junit) == ["pipeline bad", "pipeline good", NBVAL_SUITE]
    boom, after = junit["pipeline bad"]
    assert (boom.name, boom.status) == ("boom", "failed")
    assert headline.match(boom.message), boom.message
    assert (after.name, after.status, after.message) == (
        "after",
        "skipped",
        "an upstream stage failed",
    )
    assert [(c.name, c.status) for c in junit["pipeline good"]] == [
        ("a", "passed"),
        ("b", "passed"),
    ]


def test_a_notebook_failing_by_hand_fails_the_nbval_part_naming_it(failing: Outcome) -> None:
    cases = {c.name: c for c in failing.junit[NBVAL_SUITE]}
    assert list(cases) == [
        "notebooks/fails_in_cell_2.ipynb",
        "notebooks/add_one.ipynb",
        "notebooks/reads_input.ipynb",
    ]
    assert cases["notebooks/add_one.ipynb"].status == "passed"
    by_hand = cases["notebooks/reads_input.ipynb"]
    assert by_hand.status == "failed"
    assert by_hand.message.startswith("notebooks/reads_input.ipynb: ")
    assert "FileNotFoundError" in by_hand.text and "'in.txt'" in by_hand.text
    assert cases["notebooks/fails_in_cell_2.ipynb"].status == "failed"
    assert "ValueError" in cases["notebooks/fails_in_cell_2.ipynb"].text
    assert "✗ notebooks/reads_input.ipynb: " in failing.done.stdout
    assert "✓ notebooks/add_one.ipynb (2 cells" in failing.done.stdout
    assert re.search(r"^error: notebooks/reads_input\.ipynb: ", failing.done.stderr, re.M)


def test_mlnb_test_leaves_the_project_store_alone_after_a_failure(failing: Outcome) -> None:
    assert not (failing.root / "mlflow.db").exists()
    assert not (failing.root / "mlartifacts").exists()
    # the passing pipeline's workspace is gone; the failed run's stays, named in the failure
    runs = failing.root / ".mlnb" / "test" / "runs"
    left = [p.name for p in runs.iterdir()] if runs.exists() else []
    assert len(left) == 1, left
    assert f"/.mlnb/test/runs/{left[0]}/boom.ipynb" in failing.done.stderr
    assert not failing.left, failing.left


def test_the_failing_cell_is_its_position_in_the_notebook_edited(failing: Outcome) -> None:
    # fails_in_cell_2.ipynb raises in its second cell, whatever parameters are injected
    assert "stage 'boom' failed: cell 2 raised ValueError: boom 7" in failing.done.stderr


def test_the_executed_notebook_a_failure_names_is_there(failing: Outcome) -> None:
    named = re.findall(r"executed notebook: (\S+)", failing.done.stderr)
    assert named, failing.done.stderr
    assert all(Path(path).is_file() for path in named), named


def test_an_nbval_failure_headline_names_the_cell_and_exception(failing: Outcome) -> None:
    by_hand = next(c for c in failing.junit[NBVAL_SUITE] if c.name.endswith("reads_input.ipynb"))
    assert "FileNotFoundError" in by_hand.message
    assert "#x1B" not in by_hand.text and "\x1b" not in by_hand.text


@pytest.mark.slow
def test_mlnb_test_reports_each_stage_and_notebook_in_junit(scaffolded: Scaffolded) -> None:
    junit = scaffolded.test.junit
    assert list(junit) == ["pipeline shop", NBVAL_SUITE]
    assert [(c.name, c.status) for c in junit["pipeline shop"]] == [
        ("prepare", "passed"),
        ("train", "passed"),
        ("evaluate", "passed"),
        ("model", "passed"),
        ("sweep", "passed"),  # the first two trials of the template's sweep
    ]
    assert [(c.name, c.status) for c in junit[NBVAL_SUITE]] == [
        ("notebooks/prepare.ipynb", "passed"),
        ("notebooks/train.ipynb", "passed"),
        ("notebooks/evaluate.ipynb", "passed"),
        ("notebooks/drift.ipynb", "passed"),  # the monitor's, which retrains with the pipeline
    ]
    root = ET.parse(scaffolded.root / "reports" / "mlnb-test.xml").getroot()
    assert [(s.get("tests"), s.get("failures")) for s in root] == [("5", "0"), ("4", "0")]
    assert "✓ model shop: v1 promoted: first champion" in scaffolded.test.done.stdout


@pytest.mark.slow
def test_mlnb_test_uses_a_throwaway_store_and_removes_the_workspace(
    scaffolded: Scaffolded,
) -> None:
    root = scaffolded.root
    assert not (root / "mlflow.db").exists()
    assert not (root / "mlartifacts").exists()
    for folder in (".mlnb/runs", ".mlnb/test/runs", ".mlnb/cache"):
        # the project's cache holds no entry naming a removed test workspace
        assert not (root / folder).exists() or not any((root / folder).iterdir()), folder
    assert not scaffolded.test.left, scaffolded.test.left


@pytest.mark.slow
def test_mlnb_test_writes_no_mlflow_artifacts_into_the_project(scaffolded: Scaffolded) -> None:
    assert not (scaffolded.root / "mlruns").exists()
