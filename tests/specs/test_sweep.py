"""The ``sweep:`` section: a grid or a search, checked against the stages' parameters."""

from __future__ import annotations

import pytest

from mlnb.specs.pipeline import load_pipeline
from mlnb.specs.sweep import MAX_TRIALS
from tests.specs.test_pipeline import at, only, problems_of

STAGES = """
name: p
stages:
  a:
    notebook: notebooks/add_one.ipynb
    outputs: {out_path: out.txt}
  b:
    notebook: notebooks/reads_input.ipynb
    params: {in_path: "${a.outputs.out_path}"}
    outputs: {out_path: out.txt}
"""


def test_a_grid_lists_every_combination_in_order(project) -> None:
    spec = project.spec(
        STAGES
        + """
sweep:
  params:
    x: [1, 2]
    a.x: [3, 4, 5]
  metric: b.rows
  goal: minimize
"""
    )
    sweep = load_pipeline(spec).spec.sweep
    assert sweep is not None
    assert sweep.trials == 6 and sweep.keys == ["x", "a.x"]
    assert sweep.grid()[:4] == [
        {"x": 1, "a.x": 3},
        {"x": 1, "a.x": 4},
        {"x": 1, "a.x": 5},
        {"x": 2, "a.x": 3},
    ]
    assert (sweep.stage, sweep.metric_name) == ("b", "rows")
    assert sweep.better(1.0, 2.0) and not sweep.better(2.0, 1.0)


def test_a_search_space_reads(project) -> None:
    spec = project.spec(
        STAGES
        + """
sweep:
  search:
    method: random
    trials: 7
    seed: 3
    space:
      x: {low: 1, high: 9}
      a.x: {low: 0.01, high: 10, log: true}
      b.in_path: {choices: [p.txt, q.txt]}
  metric: a.score
"""
    )
    sweep = load_pipeline(spec).spec.sweep
    assert sweep is not None and sweep.search is not None
    assert sweep.trials == 7 and sweep.goal == "maximize"
    space = sweep.search.space
    assert space["x"].integer and not space["a.x"].integer
    assert space["b.in_path"].choices == ["p.txt", "q.txt"]


def test_every_problem_of_a_sweep_at_once(project) -> None:
    spec = project.spec(
        STAGES
        + """
sweep:
  params:
    xx: [1, 2]
    c.x: [1]
    a.z: [1]
    out_path: [a.txt]
  metric: evaluat.accuracy
"""
    )
    problems = problems_of(spec)
    assert len(problems) == 5, "\n".join(map(str, problems))
    assert at(problems, "line 14: sweep.params.xx").message == (
        "no stage's parameters cell declares 'xx'; did you mean 'x'?"
    )
    assert at(problems, "line 15: sweep.params.c.x").message == "unknown stage 'c'"
    assert at(problems, "line 16: sweep.params.a.z").message.startswith(
        "stage 'a' does not declare 'z'"
    )
    assert at(problems, "line 17: sweep.params.out_path").message == (
        "'out_path' is an output of every stage declaring it; outputs are set by mlnb"
    )
    assert at(problems, "line 18: sweep.metric").message == (
        "unknown stage 'evaluat'; the metric is written <stage>.<metric its notebook logs>"
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        pytest.param(
            "  metric: a.score\n",
            "give either params (a grid of values to try) or search (a space to sample)",
            id="neither",
        ),
        pytest.param(
            "  params: {x: [1]}\n  search: {trials: 2, space: {x: {low: 1, high: 2}}}\n"
            "  metric: a.score\n",
            "give either params (a grid of values to try) or search (a space to sample)",
            id="both",
        ),
        pytest.param(
            "  params: {x: []}\n  metric: a.score\n",
            "params.x lists no value to try",
            id="empty-values",
        ),
        pytest.param(
            "  params: {x: [1]}\n  metric: score\n",
            "'score' does not name a stage: write <stage>.<metric its notebook logs>",
            id="metric-without-stage",
        ),
        pytest.param(
            "  params:\n"
            + "".join(f"    a.x{i}: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" for i in range(3))
            + "    x: [1, 2]\n  metric: a.score\n",
            f"the grid has 2,000 combinations, more than the {MAX_TRIALS:,} a sweep runs",
            id="grid-too-large",
        ),
    ],
)
def test_a_sweep_of_the_wrong_shape_is_refused(project, section: str, message: str) -> None:
    problem = only(problems_of(project.spec(STAGES + "sweep:\n" + section)))
    assert ": sweep" in problem.location, problem
    assert message in problem.message, problem.message


@pytest.mark.parametrize(
    ("dimension", "message"),
    [
        ("{low: 5, high: 1}", "low (5) must be below high (1), both finite"),
        ("{low: 0, high: 1, log: true}", "a log range needs low above 0 (got 0)"),
        ("{low: 1}", "a range needs both low and high (or give choices)"),
        ("{choices: [1], low: 1, high: 2}", "give either choices or low/high"),
        ("{choices: []}", "choices needs at least one value"),
        ("{low: 1, high: 9, stpe: 2}", "unknown key 'stpe'; did you mean 'step'?"),
    ],
)
def test_a_search_dimension_of_the_wrong_shape_is_refused(
    project, dimension: str, message: str
) -> None:
    section = f"  search:\n    trials: 3\n    space:\n      x: {dimension}\n  metric: a.score\n"
    problem = only(problems_of(project.spec(STAGES + "sweep:\n" + section)))
    assert "sweep.search.space.x" in problem.location, problem
    assert message in problem.message, problem.message
