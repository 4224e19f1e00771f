"""Monitor specs: the example loads; each mistake is named with its file, line and key.

Every case edits a copy of the example ``pipelines/monitor.yaml`` (beside
copies of the example pipeline and notebooks), so the line numbers asserted
are those of a real file. Nothing here starts a kernel or opens a store.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mlnb.delivery.lint import check_paths, spec_kind
from mlnb.errors import SpecError
from mlnb.specs.monitor import fill_placeholders, load_monitor, parse_duration
from tests.helpers import REPO

EXAMPLE = (REPO / "pipelines" / "monitor.yaml").read_text()
DRIFT_SECTION = EXAMPLE[EXAMPLE.index("drift:\n") : EXAMPLE.index("performance:\n")]
PERFORMANCE_SECTION = EXAMPLE[EXAMPLE.index("performance:\n") : EXAMPLE.index("retrain:\n")]


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the example project (pipelines/ and notebooks/)."""
    root = tmp_path / "example"
    for name in ("pipelines", "notebooks"):
        shutil.copytree(REPO / name, root / name)
    return root


def write(root: Path, text: str, name: str = "bad.yaml") -> Path:
    path = root / "pipelines" / name
    path.write_text(text)
    return path


def edited(*replacements: tuple[str, str]) -> str:
    """The example spec with each ``old`` replaced by ``new`` (each must be there)."""
    text = EXAMPLE
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def line_of(text: str, needle: str) -> int:
    """The 1-based number of the first line holding ``needle``."""
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} is not in the spec")


def problems_of(path: Path) -> tuple[list[str], str]:
    with pytest.raises(SpecError) as raised:
        load_monitor(path)
    return [str(p) for p in raised.value.problems], str(raised.value)


def mlnb(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "mlnb", *args],
        cwd=root,
        env={**env, "DO_NOT_TRACK": "true", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- what loads ----------------------------------------------------------------------------


def test_the_example_loads(example: Path) -> None:
    root = example.resolve()
    monitor = load_monitor(example / "pipelines" / "monitor.yaml")
    assert monitor.name == "cancer-monitor"
    assert monitor.path == root / "pipelines" / "monitor.yaml"
    assert monitor.root == root
    spec = monitor.spec
    assert (spec.model, spec.alias) == ("cancer", "champion")
    assert (spec.schedule.every, spec.schedule.cron) == (600, None)
    assert (spec.window.last, spec.window.since) == (300, None)
    assert spec.cooldown == 3600
    assert spec.retrain.every == 30 * 86400
    assert spec.retrain.params == {
        "data_path": "${monitor.labeled_data}",
        "base_path": "${monitor.training_data}",
    }
    assert (spec.labels.below_constant, spec.labels.max_shift) == (0.2, 0.2)
    assert spec.promotion == "auto"
    assert spec.performance is not None
    assert (spec.performance.metric, spec.performance.threshold) == ("accuracy", 0.9)
    assert spec.performance.min_labels == 100
    assert monitor.triggers == {"drift", "performance", "schedule"}
    assert monitor.drift_notebook == root / "notebooks" / "drift.ipynb"
    assert monitor.drift_params == {"p_val": 0.05, "correction": "bonferroni", "min_rows": 100}
    assert {"reference_path", "current_path", "features", "target"} <= monitor.drift_declares
    assert monitor.drift_kernel == "python3"
    assert monitor.pipeline == root / "pipelines" / "cancer.yaml"
    assert monitor.pipeline_spec.model is not None
    assert monitor.pipeline_spec.model.name == "cancer"
    assert monitor.log_dir == root / ".mlnb" / "predictions"  # the state folder's
    assert monitor.greater_is_better is True


def test_variations_load(example: Path) -> None:
    text = edited(
        ("every: 10m", 'cron: "*/15 * * * *"'),
        ("  last: 300", "  since: 1d"),
        ("metric: accuracy", "metric: mean_absolute_error"),
        ("threshold: 0.9", "threshold: 3"),
        ("triggers: [drift, performance, schedule]", "triggers: [performance]"),
        ("cooldown: 1h", "cooldown: 0"),
    )
    text = text.replace(DRIFT_SECTION, "")  # no drift section, no drift trigger
    monitor = load_monitor(write(example, text, "variations.yaml"))
    assert monitor.spec.schedule.cron == "*/15 * * * *" and monitor.spec.schedule.every is None
    assert monitor.spec.window.since == 86400 and monitor.spec.window.last is None
    assert monitor.spec.cooldown == 0
    assert monitor.triggers == {"performance"}
    assert monitor.drift_notebook is None and monitor.drift_params == {}
    assert monitor.greater_is_better is False  # an error: lower is better


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90),
        ("90", 90),
        ("30s", 30),
        ("10m", 600),
        ("1.5h", 5400),
        ("7d", 604800),
        ("2w", 1209600),
        (" 5 m ", 300),
        (0.5, 0.5),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["10 minutes", "1y", "-5", "m", "", 0, "0s", True])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_placeholders_are_filled() -> None:
    params = {"data_path": "${monitor.labeled_data}", "note": "by ${ monitor.trigger }", "n": 5}
    filled = fill_placeholders(
        params, {"monitor.labeled_data": "/x.csv", "monitor.trigger": "drift"}
    )
    assert filled == {"data_path": "/x.csv", "note": "by drift", "n": 5}


# -- what is refused, and how it is said ----------------------------------------------------

# (id, replacements, the line's needle or None when the key is not in the file, key, message)
BAD = [
    (
        "unknown-key",
        [("cooldown: 1h", "cooldwn: 1h")],
        "cooldwn:",
        "cooldwn",
        "unknown key 'cooldwn'; did you mean 'cooldown'?",
    ),
    (
        "unknown-key-in-a-section",
        [("  last: 300", "  lats: 300")],
        "lats:",
        "window.lats",
        "unknown key 'lats'; did you mean 'last'?",
    ),
    (
        "bad-duration",
        [("every: 10m", "every: 10 minutes")],
        "every: 10 minutes",
        "schedule.every",
        "'10 minutes' is not a duration; write a number of seconds or 30s, 10m, 1h, 7d, 2w",
    ),
    (
        "bad-cooldown",
        [("cooldown: 1h", "cooldown: soon")],
        "cooldown:",
        "cooldown",
        "'soon' is not a duration",
    ),
    (
        "invalid-cron",
        [("every: 10m", 'cron: "every day"')],
        "cron:",
        "schedule.cron",
        "'every day' is not a cron expression (five fields: minute hour day-of-month month "
        "day-of-week, e.g. '*/15 * * * *')",
    ),
    (
        "cron-with-seconds",
        [("every: 10m", 'cron: "*/15 * * * * 30"')],
        "cron:",
        "schedule.cron",
        "'*/15 * * * * 30' is not a cron expression (five fields: minute hour day-of-month "
        "month day-of-week, e.g. '*/15 * * * *')",
    ),
    (
        "every-and-cron",
        [("every: 10m", 'every: 10m\n  cron: "*/5 * * * *"')],
        "schedule:",
        "schedule",
        "give the schedule either 'every' (e.g. 10m) or 'cron', not both",
    ),
    (
        "empty-schedule",
        [("  every: 10m", "  {}")],
        "schedule:",
        "schedule",
        "give the schedule ",
    ),
    (
        "missing-window",
        [("window:\n  last: 300", "")],
        None,
        "window",
        "required key 'window' is missing",
    ),
    (
        "window-of-no-rows",
        [("last: 300", "last: 0")],
        "last: 0",
        "window.last",
        "greater than 0",
    ),
    (
        "drift-trigger-without-drift-section",
        [(DRIFT_SECTION, "")],
        None,
        "drift",
        "the drift trigger is on: add a drift section naming the notebook",
    ),
    (
        "performance-trigger-without-its-section",
        [(PERFORMANCE_SECTION, "")],
        None,
        "performance",
        "the performance trigger is on: add a performance section (metric, threshold)",
    ),
    (
        "schedule-trigger-without-retrain-every",
        [("  every: 30d ", "  # every: 30d ")],
        "retrain:",
        "retrain.every",
        "the schedule trigger is on: say how old a champion may get, e.g. every: 7d",
    ),
    (
        "unknown-trigger",
        [("[drift, performance, schedule]", "[drift, performence]")],
        "triggers:",
        "triggers.1",
        "Input should be 'drift', 'performance' or 'schedule'",
    ),
    (
        "no-trigger",
        [("[drift, performance, schedule]", "[]")],
        "triggers:",
        "triggers",
        "name at least one trigger: drift, performance, schedule",
    ),
    (
        "unknown-live-metric",
        [("metric: accuracy", "metric: acuracy")],
        "metric: acuracy",
        "performance.metric",
        "unknown live metric 'acuracy'; did you mean 'accuracy'?; known: accuracy, ",
    ),
    (
        "drift-notebook-missing",
        [("notebooks/drift.ipynb", "notebooks/drfit.ipynb")],
        "notebook: notebooks/drfit.ipynb",
        "drift.notebook",
        "no such notebook 'notebooks/drfit.ipynb' (looked for {root}/notebooks/drfit.ipynb; "
        "relative paths start at the project root); did you mean 'notebooks/drift.ipynb'?",
    ),
    (
        "drift-param-not-declared",
        [("p_val: 0.05", "p_value: 0.05")],
        "p_value:",
        "drift.params.p_value",
        "notebooks/drift.ipynb does not declare 'p_value'; did you mean 'p_val'?",
    ),
    (
        "drift-param-the-monitor-sets",
        [("p_val: 0.05", "current_path: today.csv")],
        "current_path:",
        "drift.params.current_path",
        "'current_path' is set by the monitor",
    ),
    (
        "retrain-pipeline-missing",
        [("pipeline: pipelines/cancer.yaml", "pipeline: pipelines/cancr.yaml")],
        "pipeline: pipelines/cancr.yaml",
        "retrain.pipeline",
        "no such pipeline spec 'pipelines/cancr.yaml' (looked for {root}/pipelines/cancr.yaml; "
        "relative paths start at the project root)",
    ),
    (
        "retrain-pipeline-delivers-another-model",
        [("model: cancer ", "model: tumour ")],
        "model: tumour",
        "model",
        "the monitor watches 'tumour' but pipelines/cancer.yaml delivers 'cancer'; "
        "make them the same model",
    ),
    (
        "unknown-placeholder",
        [("${monitor.labeled_data}", "${monitor.labelled_data}")],
        "data_path:",
        "retrain.params.data_path",
        "unknown placeholder ${monitor.labelled_data}; did you mean 'monitor.labeled_data'?; "
        "known: ${monitor.labeled_data}, ${monitor.training_data}, ${monitor.trigger}",
    ),
]


@pytest.mark.parametrize(
    ("replacements", "needle", "key", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD],
)
def test_a_mistake_is_named_with_file_line_and_key(
    example: Path, replacements: list[tuple[str, str]], needle: str | None, key: str, message: str
) -> None:
    text = edited(*replacements)
    path = write(example, text)
    problems, whole = problems_of(path)
    where = f"line {line_of(text, needle)}: {key}" if needle else key
    expected = f"{path}: {where}: "
    assert len(problems) == 1, whole
    assert problems[0].startswith(expected), (problems[0], expected)
    assert message.replace("{root}", str(example.resolve())) in problems[0]
    assert whole.startswith("1 problem in the monitor spec:\n")


def test_a_retrain_param_the_pipeline_does_not_declare(example: Path) -> None:
    text = edited(("data_path:", "data_pth:"))
    path = write(example, text)
    [problem], _ = problems_of(path)
    assert re.match(rf"{re.escape(str(path))}: line \d+: retrain.params.data_pth: ", problem)
    assert "no stage's parameters cell declares 'data_pth'; did you mean 'data_path'?" in problem


def test_a_retrain_param_problem_points_at_the_param(example: Path) -> None:
    text = edited(("data_path:", "data_pth:"), ("  every: 30d", "  profile: cii\n  every: 30d"))
    path = write(example, text)
    problems, whole = problems_of(path)
    assert sorted(p.split(": ")[1:3] for p in problems) == [
        [f"line {line_of(text, 'data_pth:')}", "retrain.params.data_pth"],
        [f"line {line_of(text, 'profile:')}", "retrain.profile"],
    ], whole
    assert "command line" not in whole


def test_a_drift_notebook_must_declare_the_data_paths(example: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('current_path = "current.csv"\np_val = 0.05')
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell("print(current_path)")]
    nbformat.write(notebook, str(example / "notebooks" / "no_reference.ipynb"))
    text = edited(
        ("notebooks/drift.ipynb", "notebooks/no_reference.ipynb"),
        ("    correction: bonferroni\n", ""),
        ("    min_rows: 100\n", ""),
    )
    path = write(example, text)
    [problem], _ = problems_of(path)
    assert problem == (
        f"{path}: line {line_of(text, 'no_reference')}: drift.notebook: the parameters cell of "
        "notebooks/no_reference.ipynb must declare reference_path (the monitor passes the "
        "data files there)"
    )


def test_a_retrain_pipeline_without_a_model_section(example: Path) -> None:
    pipeline = (example / "pipelines" / "cancer.yaml").read_text()
    (example / "pipelines" / "modelless.yaml").write_text(pipeline[: pipeline.index("\nmodel:")])
    text = edited(("pipeline: pipelines/cancer.yaml", "pipeline: pipelines/modelless.yaml"))
    path = write(example, text)
    [problem], _ = problems_of(path)
    assert problem == (
        f"{path}: line {line_of(text, 'modelless')}: retrain.pipeline: pipelines/modelless.yaml "
        "has no model: section, so retraining would deliver no model; add one naming the model "
        "and its gate"
    )


def test_every_problem_is_reported_at_once(example: Path) -> None:
    text = edited(
        ("metric: accuracy", "metric: acuracy"),
        ("p_val: 0.05", "p_value: 0.05"),
        ("${monitor.labeled_data}", "${monitor.data}"),
    )
    problems, whole = problems_of(write(example, text))
    assert whole.startswith("3 problems in the monitor spec:\n")
    keys = sorted(re.search(r": line \d+: (\S+):", p)[1] for p in problems)  # type: ignore[index]
    assert keys == ["drift.params.p_value", "performance.metric", "retrain.params.data_path"]


# -- on the command line ------------------------------------------------------------------


def test_mlnb_monitor_refuses_a_bad_spec_before_touching_anything(example: Path) -> None:
    text = edited(("every: 10m", "every: 10 minutes"))
    write(example, text)
    done = mlnb(example, "monitor", "pipelines/bad.yaml", "--once")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    head, problem, end = done.stderr.split("\n")
    assert (head, end) == ("error: 1 problem in the monitor spec:", "")
    where = f"  pipelines/bad.yaml: line {line_of(text, '10 minutes')}: schedule.every: "
    assert problem.startswith(where)
    assert problem.removeprefix(where).removeprefix("Value error, ") == (  # pydantic's prefix
        "'10 minutes' is not a duration; write a number of seconds or 30s, 10m, 1h, 7d, 2w"
    )
    assert "Traceback" not in done.stderr
    assert not (example / "mlflow.db").exists()  # no store, no kernel, no check
    assert not (example / ".mlnb").exists()

    missing = mlnb(example, "monitor", "pipelines/nowhere.yaml", "--once")
    assert missing.returncode == 2
    assert (
        missing.stderr
        == "error: 1 problem in the monitor spec:\n  pipelines/nowhere.yaml: no such monitor spec\n"
    )


def test_mlnb_check_checks_monitor_specs(example: Path) -> None:
    assert spec_kind(example / "pipelines" / "monitor.yaml") == "monitor"
    clean = mlnb(example, "check", "pipelines")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "all checks passed" in clean.stderr

    text = edited(("metric: accuracy", "metric: acuracy"))
    path = write(example, text, "watch.yaml")
    broken = mlnb(example, "check", "pipelines")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert broken.stdout.splitlines() == [
        f"pipelines/watch.yaml: line {line_of(text, 'acuracy')}: performance.metric: unknown live "
        "metric 'acuracy'; did you mean 'accuracy'?; known: accuracy, balanced_accuracy, f1, "
        "precision, recall, roc_auc, mean_absolute_error, mean_squared_error, "
        "root_mean_squared_error, r2_score"
    ]
    assert "1 problem found" in broken.stderr
    assert [p.file for p in check_paths([example])] == [str(path)]


def test_label_tests_and_manual_promotion(example: Path) -> None:
    text = edited(
        ("  below_constant: 0.2", "  below_constant: null"),
        ("promotion: auto", "promotion: manual"),
    )
    monitor = load_monitor(write(example, text, "manual.yaml"))
    assert monitor.spec.labels.below_constant is None and monitor.spec.labels.max_shift == 0.2
    assert monitor.spec.promotion == "manual"
    bare = EXAMPLE[: EXAMPLE.index("\nlabels:") + 1]  # without the section: the defaults
    defaults = load_monitor(write(example, bare, "bare.yaml")).spec
    assert (defaults.labels.below_constant, defaults.labels.max_shift) == (0.2, 0.2)
    assert defaults.promotion == "auto"


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        pytest.param(
            "promotion: auto",
            "promotion: by-hand",
            "promotion",
            "Input should be 'auto' or 'manual'",
            id="promotion",
        ),
        pytest.param(
            "  max_shift: 0.2",
            "  max_shift: 1.5",
            "labels.max_shift",
            "Input should be less than or equal to 1",
            id="shift-above-one",
        ),
        pytest.param(
            "  below_constant: 0.2",
            "  below_constnt: 0.2",
            "labels.below_constnt",
            "unknown key 'below_constnt'; did you mean 'below_constant'?",
            id="near-key",
        ),
    ],
)
def test_label_and_promotion_mistakes(
    example: Path, old: str, new: str, key: str, message: str
) -> None:
    text = edited((old, new))
    with pytest.raises(SpecError) as info:
        load_monitor(write(example, text))
    [problem] = info.value.problems
    assert problem.location == f"line {line_of(text, new.strip())}: {key}"
    assert problem.message.startswith(message), problem.message


ONLINE = (
    "promotion: auto",
    "promotion:\n  online: {metric: accuracy, min_labels: 300, min_improvement: 0.01}",
)


def test_promotion_on_live_evidence(example: Path) -> None:
    monitor = load_monitor(write(example, edited(ONLINE), "online.yaml"))
    online = monitor.online
    assert online is not None
    assert (online.metric, online.min_labels, online.min_improvement) == ("accuracy", 300, 0.01)
    assert (online.alias, online.confidence) == ("challenger", 0.95)  # the defaults
    assert not monitor.gate_moves_champion
    full = edited(
        (
            "promotion: auto",
            "promotion:\n  online:\n    metric: f1\n    alias: shadowed\n    confidence: 0.9",
        )
    )
    online = load_monitor(write(example, full, "full.yaml")).online
    assert online is not None and (online.metric, online.alias, online.confidence) == (
        "f1",
        "shadowed",
        0.9,
    )
    assert online.min_labels == 200 and online.min_improvement == 0.0
    auto = load_monitor(write(example, EXAMPLE, "auto.yaml"))
    assert auto.online is None and auto.gate_moves_champion


@pytest.mark.parametrize(
    ("new", "needle", "key", "message"),
    [
        pytest.param(
            "promotion:\n  online: {metric: acuracy}",
            "online:",
            "promotion.online.metric",
            "unknown live metric 'acuracy'; did you mean 'accuracy'?; known: accuracy, "
            "balanced_accuracy, f1,",
            id="unknown-metric",
        ),
        pytest.param(
            "promotion:\n  online:\n    metric: accuracy\n    min_lables: 100",
            "min_lables:",
            "promotion.online.min_lables",
            "unknown key 'min_lables'; did you mean 'min_labels'?",
            id="near-key",
        ),
        pytest.param(
            "promotion:\n  online:\n    metric: accuracy\n    confidence: 95",
            "confidence: 95",
            "promotion.online.confidence",
            "Input should be less than 1",
            id="confidence-as-percent",
        ),
        pytest.param(
            "promotion:\n  online:\n    metric: accuracy\n    min_labels: 1",
            "    min_labels: 1",
            "promotion.online.min_labels",
            "Input should be greater than 1",
            id="one-label",
        ),
        pytest.param(
            "promotion:\n  online:\n    min_labels: 100",
            "online:",
            "promotion.online.metric",
            "required key 'metric' is missing",
            id="no-metric",
        ),
    ],
)
def test_online_promotion_mistakes(
    example: Path, new: str, needle: str, key: str, message: str
) -> None:
    text = edited(("promotion: auto", new))
    with pytest.raises(SpecError) as info:
        load_monitor(write(example, text))
    [problem] = info.value.problems
    assert problem.file == str(example / "pipelines" / "bad.yaml")
    assert problem.location == f"line {line_of(text, needle)}: {key}"
    assert problem.message.startswith(message), problem.message


def test_a_misspelled_online_is_named_with_the_near_key(example: Path) -> None:
    text = edited(("promotion: auto", "promotion:\n  onlin: {metric: accuracy}"))
    with pytest.raises(SpecError) as info:
        load_monitor(write(example, text))
    found = {p.location: p.message for p in info.value.problems}
    assert found == {
        f"line {line_of(text, 'onlin:')}: promotion.onlin": "unknown key 'onlin'; did you mean "
        "'online'?",
        f"line {line_of(text, 'promotion:')}: promotion.online": "required key 'online' is missing",
    }


def test_online_promotion_mistakes_come_with_the_others(example: Path) -> None:
    text = edited(
        ("cooldown: 1h", "cooldown: soon"),
        ("promotion: auto", "promotion:\n  online: {metric: acuracy, min_improvement: -1}"),
    )
    with pytest.raises(SpecError) as info:
        load_monitor(write(example, text))
    found = {p.location: p.message for p in info.value.problems}
    online = line_of(text, "online:")
    assert set(found) == {
        f"line {line_of(text, 'cooldown:')}: cooldown",
        f"line {online}: promotion.online.min_improvement",
    }, found  # the metric is checked once the document is valid
