"""The gate: decisions against a threshold and a champion, what it records, its errors.

Gate decisions run MLflow's real evaluation on a copy of the template store
(``conftest.py``); the decision's vocabulary, its tags and the settings a
version records are checked directly; the ``model:`` section of a spec is
where the gate's settings come from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mlnb import tags
from mlnb.errors import SpecError
from mlnb.models.gate import GATE_EXPERIMENT, Decision, GateConfig, gate_tags, read_holdout
from mlnb.models.registry import CHALLENGER, CHAMPION, Registry, RegistryError
from mlnb.specs.pipeline import METRICS, load_pipeline
from mlnb.tags import ModelDecision
from tests.models.helpers import Models, config, gate_runs, history, register, store_of


def assert_recorded(reg: Registry, decision: Decision, metric: str) -> None:
    """The decision is on the version's tags and in a gate run with nested evaluations."""
    found_tags = reg.client.get_model_version(decision.name, decision.version).tags
    assert found_tags[tags.GATE_DECISION] == ("promoted" if decision.promoted else "rejected")
    assert found_tags[tags.GATE_REASON] == decision.reason
    assert float(found_tags[tags.GATE_SCORE]) == pytest.approx(decision.score)
    assert found_tags[tags.GATE_RUN] == decision.run_id
    if decision.champion is None:
        assert tags.GATE_CHAMPION_VERSION not in found_tags
    else:
        assert found_tags[tags.GATE_CHAMPION_VERSION] == decision.champion
        assert float(found_tags[tags.GATE_CHAMPION_SCORE]) == pytest.approx(decision.champion_score)

    run = reg.client.get_run(decision.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlnb.kind"] == "gate"
    assert run.data.tags["mlnb.gate.decision"] == found_tags[tags.GATE_DECISION]
    assert run.data.tags["mlnb.gate.reason"] == decision.reason
    assert run.data.metrics[f"challenger_{metric}"] == pytest.approx(decision.score)
    labels = ["challenger"]
    if decision.champion is None:
        assert f"champion_{metric}" not in run.data.metrics
    else:
        assert run.data.metrics[f"champion_{metric}"] == pytest.approx(decision.champion_score)
        labels.append("champion")
    children = reg.client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{decision.run_id}'",
    )
    assert sorted(c.info.run_name for c in children) == sorted(
        f"evaluate m v{v} ({label})"
        for v, label in zip([decision.version, decision.champion], labels, strict=False)
    )
    for child in children:
        assert child.data.tags["mlnb.kind"] == "evaluation"
        assert child.info.status == "FINISHED"
        assert metric in child.data.metrics


# -- gate decisions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "threshold", "promoted", "reason"),
    [
        pytest.param("medium", 0.9, True, "v1 promoted: first champion, roc_auc = ", id="meets"),
        pytest.param("weak", 0.9, False, "v1 not promoted: roc_auc ", id="below"),
        pytest.param("weak", None, True, "v1 promoted: first champion", id="no-threshold"),
    ],
)
def test_gate_without_champion(
    project, models: Models, kind: str, threshold: float | None, promoted: bool, reason: str
) -> None:
    reg, holdout = store_of(project, models)
    [version] = register(reg, models, kind)

    decision = reg.gate("m", version, config(threshold=threshold), holdout)

    assert decision.name == "m" and decision.version == "1"
    assert decision.promoted is promoted
    assert decision.outcome is (ModelDecision.PROMOTED if promoted else ModelDecision.REJECTED)
    assert decision.champion is None and decision.champion_score is None
    assert decision.metric == "roc_auc"
    assert decision.score == pytest.approx(models.scores[kind]["roc_auc"])
    assert decision.reason.startswith(reason)
    if promoted and threshold is not None:
        assert decision.reason.endswith("(threshold 0.9)")
    if not promoted:
        assert decision.reason.endswith(" is below the threshold 0.9")
    assert reg.alias("m", CHAMPION) == ("1" if promoted else None)
    assert reg.alias("m", CHALLENGER) == "1"
    assert history(reg) == []
    assert_recorded(reg, decision, "roc_auc")


@pytest.mark.parametrize(
    ("champion", "challenger", "metric", "threshold", "min_improvement", "promoted", "reason"),
    [
        pytest.param(
            "medium", "strong", "roc_auc", 0.9, 0.0, True, "beats champion v1", id="better"
        ),
        pytest.param(
            "strong", "medium", "roc_auc", 0.9, 0.0, False, "does not beat champion v1", id="worse"
        ),
        pytest.param(
            "strong", "strong_copy", "roc_auc", 0.9, 0.0, False, "does not beat", id="equal"
        ),
        pytest.param(
            "medium",
            "strong",
            "roc_auc",
            0.9,
            0.1,
            False,
            r"does not beat champion v1 \(0\.9\d+\) by at least 0\.1$",
            id="gain-below-min-improvement",
        ),
        pytest.param(
            "medium", "strong", "roc_auc", 0.9, 0.05, True, "by at least 0.05", id="gain-above-min"
        ),
        pytest.param(
            "medium",
            "strong",
            "log_loss",
            0.5,
            0.0,
            True,
            "beats champion v1",
            id="log-loss-better",
        ),
        pytest.param(
            "strong", "medium", "log_loss", 0.5, 0.0, False, "does not beat", id="log-loss-worse"
        ),
        pytest.param(
            "strong",
            "weak",
            "log_loss",
            0.5,
            0.0,
            False,
            "is above the threshold 0.5",
            id="log-loss-above-threshold",
        ),
    ],
)
def test_gate_against_champion(
    project,
    models: Models,
    champion: str,
    challenger: str,
    metric: str,
    threshold: float,
    min_improvement: float,
    promoted: bool,
    reason: str,
) -> None:
    reg, holdout = store_of(project, models)
    register(reg, models, champion, challenger)
    reg.set_champion("m", "1", "seeded by the test")
    settings = config(metric, threshold, min_improvement)
    assert settings.greater_is_better is METRICS["classifier"][metric]
    assert settings.greater_is_better is (metric != "log_loss")

    decision = reg.gate("m", "2", settings, holdout)

    assert (decision.name, decision.version, decision.champion) == ("m", "2", "1")
    assert decision.promoted is promoted
    assert decision.metric == metric
    assert decision.score == pytest.approx(models.scores[challenger][metric], rel=1e-6)
    assert decision.champion_score == pytest.approx(models.scores[champion][metric], rel=1e-6)
    assert re.search(reason, decision.reason), decision.reason
    assert decision.reason.startswith(f"v2 {'promoted' if promoted else 'not promoted'}: {metric}")
    assert reg.alias("m", CHAMPION) == ("2" if promoted else "1")
    assert reg.alias("m", CHALLENGER) == "2"
    assert history(reg) == (["1"] if promoted else [])
    assert_recorded(reg, decision, metric)


def test_gate_of_the_champion_decides_without_evaluating(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    register(reg, models, "medium")
    first = reg.gate("m", "1", config(), holdout)
    assert first.promoted and reg.alias("m", CHAMPION) == "1"

    again = reg.gate("m", "1", config(), holdout)

    assert (again.version, again.champion, again.promoted) == ("1", "1", False)
    assert again.outcome is ModelDecision.CHAMPION
    assert again.reason == "v1 is already the champion"
    assert (again.metric, again.score, again.champion_score, again.run_id) == (
        "roc_auc",
        None,
        None,
        None,
    )
    assert [r.info.run_id for r in gate_runs(reg)] == [first.run_id]  # no second gate run
    found_tags = reg.client.get_model_version("m", "1").tags
    assert (found_tags[tags.GATE_RUN], found_tags[tags.GATE_REASON]) == (
        first.run_id,
        first.reason,
    )
    assert history(reg) == []


def test_gate_reads_the_settings_and_holdout_a_version_records(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    strict = config(threshold=0.95)  # medium (≈ 0.92) fails it; the default 0.9 would pass
    reg.register("m", models.runs["medium"], models.experiment_id, tags=gate_tags(strict, holdout))

    decision = reg.gate("m", "1")

    assert not decision.promoted
    assert decision.reason.endswith("is below the threshold 0.95"), decision.reason
    assert decision.score == pytest.approx(models.scores["medium"]["roc_auc"])
    assert reg.alias("m", CHAMPION) is None
    assert_recorded(reg, decision, "roc_auc")


# -- errors ---------------------------------------------------------------------------


def test_gate_without_recorded_settings_suggests_force(project, models: Models) -> None:
    reg, _ = store_of(project, models)
    register(reg, models, "medium")

    with pytest.raises(RegistryError, match=r"records no gate settings.*--force"):
        reg.gate("m", "1")
    assert reg.alias("m", CHAMPION) is None


@pytest.mark.parametrize(
    ("recorded", "problem"),
    [
        pytest.param(
            {"model_type": "ranker"}, "model_type: Input should be 'classifier' or", id="bad-type"
        ),
        pytest.param({"threshold": "high"}, "threshold: Input should be a valid number", id="nan"),
    ],
)
def test_gate_with_unreadable_recorded_settings(
    project, models: Models, recorded: dict[str, str], problem: str
) -> None:
    reg, holdout = store_of(project, models)
    settings = {**json.loads(gate_tags(config(), holdout)[tags.GATE_CONFIG]), **recorded}
    found_tags = {**gate_tags(config(), holdout), tags.GATE_CONFIG: json.dumps(settings)}
    reg.register("m", models.runs["medium"], models.experiment_id, tags=found_tags)

    with pytest.raises(RegistryError) as info:
        reg.gate("m", "1")

    message = str(info.value)
    assert message.startswith("m version 1 records gate settings mlnb cannot read ("), message
    assert problem in message and message.endswith("; promote it by hand with --force")
    assert gate_runs(reg) == [] and reg.alias("m", CHAMPION) is None


def test_gate_with_recorded_holdout_that_is_gone(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    reg.register(
        "m", models.runs["medium"], models.experiment_id, tags=gate_tags(config(), holdout)
    )
    found_tags = reg.client.get_model_version("m", "1").tags
    assert json.loads(found_tags[tags.GATE_CONFIG])["metric"] == "roc_auc"
    assert found_tags[tags.HOLDOUT] == str(holdout)
    holdout.unlink()

    with pytest.raises(RegistryError) as info:
        reg.gate("m", "1")

    assert f"the holdout data of m version 1 is gone ({holdout})" in str(info.value)
    assert "--force" in str(info.value)


def test_gate_holdout_without_target_column(project, models: Models) -> None:
    import pandas as pd

    reg, holdout = store_of(project, models)
    register(reg, models, "medium")
    pd.read_csv(holdout).rename(columns={"target": "label"}).to_csv(holdout, index=False)

    with pytest.raises(RegistryError) as info:
        reg.gate("m", "1", config(), holdout)

    message = str(info.value)
    assert f"{holdout} has no target column 'target'; columns: mean_radius, " in message
    assert reg.alias("m", CHAMPION) is None


def test_gate_metric_not_computed_fails_its_run(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    register(reg, models, "medium")
    settings = GateConfig("my_metric", True, "classifier", "target", None)

    with pytest.raises(RegistryError, match=r"computed no metric 'my_metric'.*roc_auc"):
        reg.gate("m", "1", settings, holdout)

    assert reg.alias("m", CHAMPION) is None
    [gate_run] = gate_runs(reg)
    assert gate_run.info.status == "FAILED"
    assert tags.GATE_DECISION not in reg.client.get_model_version("m", "1").tags


def test_gate_that_cannot_evaluate_fails_its_run(project, models: Models) -> None:
    import pandas as pd

    reg, holdout = store_of(project, models)
    register(reg, models, "strong")  # it needs every feature
    pd.read_csv(holdout).drop(columns=["mean_radius"]).to_csv(holdout, index=False)

    with pytest.raises(RegistryError) as info:
        reg.gate("m", "1", config(), holdout)

    message = str(info.value)
    assert message.startswith(f"the gate could not evaluate m v1 on {holdout}: "), message
    assert "mean_radius" in message and "\n" not in message
    [gate_run] = gate_runs(reg)
    assert gate_run.info.status == "FAILED"
    [evaluation] = reg.client.search_runs(
        [gate_run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{gate_run.info.run_id}'",
    )
    assert evaluation.info.run_name == "evaluate m v1 (challenger)"
    assert evaluation.info.status == "FAILED"
    assert reg.alias("m", CHAMPION) is None
    assert tags.GATE_DECISION not in reg.client.get_model_version("m", "1").tags


def test_gate_experiment_keeps_artifacts_beside_the_store(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    register(reg, models, "medium")
    assert Path.cwd().resolve() != project.root.resolve()

    reg.gate("m", "1", config(), holdout)

    location = reg.client.get_experiment_by_name(GATE_EXPERIMENT).artifact_location
    assert location.startswith((project.root / "mlartifacts").resolve().as_uri())


# -- the holdout table ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".pq"])
def test_read_holdout_reads_csv_and_parquet(tmp_path: Path, suffix: str) -> None:
    import pandas as pd

    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "target": [0, 1, 0]})
    path = tmp_path / f"holdout{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)

    found = read_holdout(path, "target")

    assert found.to_dict("list") == {"x": [1.0, 2.0, 3.0], "target": [0, 1, 0]}


def test_read_holdout_that_is_not_a_table(tmp_path: Path) -> None:
    path = tmp_path / "holdout.parquet"
    path.write_text("x,target\n1,0\n")  # CSV text under a Parquet name

    with pytest.raises(
        RegistryError, match=rf"^cannot read the holdout data {re.escape(str(path))}: "
    ):
        read_holdout(path, "target")


# -- what a decision says and records ---------------------------------------------------


@pytest.mark.parametrize(
    ("promoted", "champion", "outcome"),
    [
        pytest.param(True, None, ModelDecision.PROMOTED, id="first-champion"),
        pytest.param(True, "1", ModelDecision.PROMOTED, id="beats-champion"),
        pytest.param(False, "1", ModelDecision.REJECTED, id="rejected"),
        pytest.param(False, None, ModelDecision.REJECTED, id="below-threshold"),
        pytest.param(False, "2", ModelDecision.CHAMPION, id="already-champion"),
    ],
)
def test_decision_outcome(promoted: bool, champion: str | None, outcome: ModelDecision) -> None:
    decision = Decision("m", "2", promoted, champion, "roc_auc", 0.9, None, "why", "run")

    assert decision.outcome is outcome
    assert decision.version_tags()[tags.GATE_DECISION] == outcome.value


def test_decision_version_tags() -> None:
    first = Decision("m", "1", True, None, "roc_auc", 0.93, None, "first", "r1")
    second = Decision("m", "2", False, "1", "roc_auc", 0.91, 0.93, "worse", "r2")

    assert first.version_tags() == {
        tags.GATE_DECISION: "promoted",
        tags.GATE_REASON: "first",
        tags.GATE_SCORE: 0.93,
        tags.GATE_RUN: "r1",
    }
    assert second.version_tags() == {
        tags.GATE_DECISION: "rejected",
        tags.GATE_REASON: "worse",
        tags.GATE_SCORE: 0.91,
        tags.GATE_RUN: "r2",
        tags.GATE_CHAMPION_VERSION: "1",
        tags.GATE_CHAMPION_SCORE: 0.93,
    }


def test_gate_settings_survive_the_version_tag(tmp_path: Path) -> None:
    settings = GateConfig("r2_score", True, "regressor", "price", 0.5, 0.01)

    recorded = gate_tags(settings, tmp_path / "holdout.csv")

    assert recorded[tags.HOLDOUT] == str(tmp_path / "holdout.csv")
    assert GateConfig.from_json(recorded[tags.GATE_CONFIG]) == settings
    with pytest.raises(ValueError, match=r"^the text: Invalid JSON"):
        GateConfig.from_json("not json")
    with pytest.raises(ValueError, match=r"metric: Field required.*target: Field required"):
        GateConfig.from_json('{"greater_is_better": true, "model_type": "classifier"}')


# -- the model: section of a spec, where the gate's settings come from ---------------

STAGES = """\
name: p
stages:
  a:
    notebook: notebooks/add_one.ipynb
    outputs: {out_path: out.txt}
  b:
    notebook: notebooks/reads_input.ipynb
    params: {in_path: "${a.outputs.out_path}"}
    outputs: {out_path: b.txt}
model:
  name: m
  target: y
"""


@pytest.mark.parametrize(
    ("lines", "location", "message"),
    [
        pytest.param(
            "stage: c\nholdout: ${a.outputs.out_path}\nmetric: roc_auc\n",
            "line 13: model.stage",
            "unknown stage 'c'",
            id="unknown-stage",
        ),
        pytest.param(
            "stage: bb\nholdout: ${a.outputs.out_path}\nmetric: roc_auc\n",
            "line 13: model.stage",
            "unknown stage 'bb'; did you mean 'b'?",
            id="near-stage",
        ),
        pytest.param(
            "stage: b\nholdout: a/out.txt\nmetric: roc_auc\n",
            "line 14: model.holdout",
            "the holdout data is an output of a stage, written ${stage.outputs.name}",
            id="holdout-not-a-reference",
        ),
        pytest.param(
            "stage: b\nholdout: ${a.outputs.out_pth}\nmetric: roc_auc\n",
            "line 14: model.holdout",
            "stage 'a' has no output 'out_pth'; did you mean 'out_path'?",
            id="holdout-unknown-output",
        ),
        pytest.param(
            "stage: b\nholdout: ${c.outputs.out_path}\nmetric: roc_auc\n",
            "line 14: model.holdout",
            "unknown stage 'c'",
            id="holdout-unknown-stage",
        ),
        pytest.param(
            "stage: b\nholdout: ${a.outputs.out_path}\nmetric: roc_auk\n",
            "line 15: model.metric",
            "'roc_auk' is not a metric mlflow.evaluate computes for a classifier; "
            "did you mean 'roc_auc'?",
            id="unknown-metric",
        ),
        pytest.param(
            "stage: b\nholdout: ${a.outputs.out_path}\nmetric: r2_score\ntype: classifier\n",
            "line 15: model.metric",
            "'r2_score' is not a metric mlflow.evaluate computes for a classifier",
            id="regressor-metric-on-classifier",
        ),
        pytest.param(
            "stage: b\nholdout: ${a.outputs.out_path}\nmetric: roc_auc\ntreshold: 0.9\n",
            "line 16: model.treshold",
            "unknown key 'treshold'; did you mean 'threshold'?",
            id="unknown-key",
        ),
    ],
)
def test_model_section_errors(project, lines: str, location: str, message: str) -> None:
    text = STAGES + "".join(f"  {line}\n" for line in lines.splitlines())
    path = project.spec(text)

    with pytest.raises(SpecError) as info:
        load_pipeline(path)

    problems = info.value.problems
    assert [p.location for p in problems] == [location], "\n".join(map(str, problems))
    assert problems[0].message.startswith(message)
    assert problems[0].file == str(path)


def test_model_section_reports_every_problem_together(project) -> None:
    path = project.spec(STAGES + "  stage: c\n  holdout: ${a.outputs.nope}\n  metric: roc_auk\n")

    with pytest.raises(SpecError) as info:
        load_pipeline(path)

    assert [p.location for p in info.value.problems] == [
        "line 13: model.stage",
        "line 14: model.holdout",
        "line 15: model.metric",
    ]


@pytest.mark.parametrize(
    ("lines", "metric", "greater", "model_type"),
    [
        pytest.param(
            "metric: score\ngreater_is_better: true\n",
            "score",
            True,
            "classifier",
            id="custom-metric",
        ),
        pytest.param(
            "metric: example_count\ngreater_is_better: false\n",
            "example_count",
            False,
            "classifier",
            id="lower",
        ),
        pytest.param(
            "metric: log_loss\n", "log_loss", False, "classifier", id="known-lower-is-better"
        ),
        pytest.param(
            "metric: r2_score\ntype: regressor\nthreshold: 0.5\n",
            "r2_score",
            True,
            "regressor",
            id="regressor",
        ),
    ],
)
def test_model_section_valid(
    project, lines: str, metric: str, greater: bool, model_type: str
) -> None:
    text = STAGES + "  stage: b\n  holdout: ${a.outputs.out_path}\n"
    path = project.spec(text + "".join(f"  {line}\n" for line in lines.splitlines()))

    model = load_pipeline(path).spec.model

    assert model is not None and (model.name, model.stage, model.metric) == ("m", "b", metric)
    settings = GateConfig.from_spec(model)
    assert (settings.metric, settings.greater_is_better, settings.target) == (metric, greater, "y")
    assert settings.model_type == model_type
