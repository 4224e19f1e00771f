"""Model registry and promotion gate: decisions, aliases, rollback, errors, the example.

The gate tests log small scikit-learn models of known quality once per module
(a template store), and give every test its own copy of that SQLite store, so
each test registers, gates and promotes on a store of its own without paying
for logging models again. Only the end-to-end test runs whole pipelines.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlnb import tags
from mlnb.errors import SpecError
from mlnb.models.registry import (
    CHALLENGER,
    CHAMPION,
    GATE_EXPERIMENT,
    Decision,
    GateConfig,
    Registry,
    RegistryError,
    gate_tags,
)
from mlnb.pipelines.runner import run_pipeline
from mlnb.specs.pipeline import METRICS, ModelSpec, load_pipeline
from tests.helpers import REPO

HOLDOUT = "holdout.csv"
#: models logged in the template store; their holdout scores (sklearn, for reference):
#: strong ≈ 0.995 roc_auc / 0.09 log_loss, medium ≈ 0.92 / 0.33, weak ≈ 0.52 / 0.66
KINDS = ("strong", "strong_copy", "medium", "weak")


# -- a template store with models of known quality -----------------------------------


@dataclass(frozen=True)
class Models:
    """The template store: where it is, the runs that logged each model, their scores."""

    folder: Path
    experiment_id: str
    runs: dict[str, str]  # kind → run id ("no_model" logged none)
    scores: dict[str, dict[str, float]]  # kind → metric → score on the holdout data


def _estimator(kind: str):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind in ("strong", "strong_copy"):  # every feature
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    feature = {"medium": "mean_radius", "weak": "mean_fractal_dimension"}[kind]
    return make_pipeline(
        ColumnTransformer([("one", "passthrough", [feature])]), LogisticRegression()
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    import mlflow
    import mlflow.sklearn
    from sklearn.datasets import load_breast_cancer
    from sklearn.metrics import log_loss, roc_auc_score
    from sklearn.model_selection import train_test_split

    folder = tmp_path_factory.mktemp("models")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    train, test = train_test_split(frame, test_size=0.25, random_state=0, stratify=frame["target"])
    test.to_csv(folder / HOLDOUT, index=False)
    X, y = train.drop(columns=["target"]), train["target"]
    X_test, y_test = test.drop(columns=["target"]), test["target"]

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment(
        "models", artifact_location=(folder / "mlartifacts").as_uri()
    )
    runs, scores = {}, {}
    for kind in KINDS:
        model = _estimator(kind).fit(X, y)
        proba = model.predict_proba(X_test)[:, 1]
        scores[kind] = {
            "roc_auc": roc_auc_score(y_test, proba),
            "log_loss": log_loss(y_test, proba),
        }
        with mlflow.start_run(experiment_id=experiment_id) as run, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # schema hints about integer predictions
            mlflow.sklearn.log_model(
                model, name="model", input_example=X.head(3), pip_requirements=["scikit-learn"]
            )
        runs[kind] = run.info.run_id
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("nothing", 1.0)
    runs["no_model"] = run.info.run_id
    mlflow.set_tracking_uri(None)
    assert scores["strong"]["roc_auc"] > 0.99
    assert 0.9 < scores["medium"]["roc_auc"] < scores["strong"]["roc_auc"] - 0.05
    assert scores["strong"]["roc_auc"] - scores["medium"]["roc_auc"] < 0.1  # min_improvement
    assert scores["strong"] == scores["strong_copy"]
    assert scores["weak"]["roc_auc"] < 0.9
    return Models(folder, experiment_id, runs, scores)


def store_of(project, models: Models) -> tuple[Registry, Path]:
    """A copy of the template store in the project, and its holdout file."""
    shutil.copy(models.folder / "mlflow.db", project.root / "mlflow.db")
    holdout = project.root / HOLDOUT
    shutil.copy(models.folder / HOLDOUT, holdout)
    return Registry(project.store), holdout


def register(reg: Registry, models: Models, *kinds: str, name: str = "m") -> list[str]:
    """Register a version per model kind, in order; each becomes the challenger."""
    versions = []
    for kind in kinds:
        registration = reg.register(name, models.runs[kind], models.experiment_id)
        assert registration.created
        assert reg.alias(name, CHALLENGER) == registration.version
        versions.append(registration.version)
    return versions


def config(
    metric: str = "roc_auc", threshold: float | None = 0.9, min_improvement: float = 0.0
) -> GateConfig:
    """Gate settings as a ``model:`` section would give them."""
    spec = ModelSpec(
        name="m",
        stage="train",
        holdout="${prepare.outputs.test_path}",
        target="target",
        metric=metric,
        threshold=threshold,
        min_improvement=min_improvement,
    )
    return GateConfig.from_spec(spec)


def history(reg: Registry, name: str = "m") -> list[str]:
    return json.loads(reg.client.get_registered_model(name).tags.get(tags.CHAMPION_HISTORY, "[]"))


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


# -- champion by hand, rollback --------------------------------------------------------


def test_rollback_after_two_gate_promotions(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    register(reg, models, "medium", "strong")
    assert reg.gate("m", "1", config(), holdout).promoted
    assert reg.gate("m", "2", config(), holdout).promoted
    assert reg.alias("m", CHAMPION) == "2"
    assert history(reg) == ["1"]

    decision = reg.rollback("m")

    assert decision.promoted and (decision.version, decision.champion) == ("1", "2")
    assert decision.reason == "rolled back from version 2 to version 1"
    assert reg.alias("m", CHAMPION) == "1"
    assert reg.client.get_model_version("m", "1").tags[tags.GATE_REASON] == decision.reason
    assert history(reg) == []
    with pytest.raises(RegistryError, match="'m' has no earlier champion to return to"):
        reg.rollback("m")
    assert reg.alias("m", CHAMPION) == "1"


def test_set_champion_by_hand_keeps_history_for_rollback(project, models: Models) -> None:
    reg, _ = store_of(project, models)
    register(reg, models, "weak", "medium", "strong")
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback("m")  # no champion at all yet

    first = reg.set_champion("m", "1", "v1 by hand")
    assert (first.version, first.promoted, first.champion) == ("1", True, None)
    reg.set_champion("m", "2", "v2 by hand")
    decision = reg.set_champion("m", "3", "v3 by hand")

    assert (decision.version, decision.champion, decision.reason) == ("3", "2", "v3 by hand")
    assert reg.alias("m", CHAMPION) == "3"
    assert history(reg) == ["1", "2"]
    found_tags = reg.client.get_model_version("m", "3").tags
    assert (found_tags[tags.GATE_DECISION], found_tags[tags.GATE_REASON]) == (
        "promoted",
        "v3 by hand",
    )

    assert reg.rollback("m").version == "2"
    assert reg.rollback("m").version == "1"  # a second rollback goes further back
    assert reg.alias("m", CHAMPION) == "1"
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback("m")
    with pytest.raises(RegistryError, match="'m' has no version 7; versions: 1, 2, 3"):
        reg.set_champion("m", "7", "no such version")
    assert reg.alias("m", CHAMPION) == "1"


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run", "artifact"),
    [
        pytest.param("no_model", "model", id="no-model"),
        pytest.param("strong", "clf", id="other-name"),
    ],
)
def test_register_needs_the_logged_model(project, models: Models, run: str, artifact: str) -> None:
    reg, _ = store_of(project, models)
    run_id = models.runs[run]

    with pytest.raises(RegistryError) as info:
        reg.register("m", run_id, models.experiment_id, artifact=artifact)

    message = str(info.value)
    assert f"run {run_id} logged no model named '{artifact}'" in message
    assert f"name='{artifact}'" in message and "model.artifact" in message
    assert reg._versions("m") == []


def test_register_twice_from_one_run_reuses_the_version(project, models: Models) -> None:
    reg, _ = store_of(project, models)
    register(reg, models, "medium", "strong")

    again = reg.register("m", models.runs["medium"], models.experiment_id)

    assert (again.version, again.created) == ("1", False)
    assert reg.alias("m", CHALLENGER) == "1"
    assert reg._versions("m") == ["1", "2"]


def test_gate_without_recorded_settings_suggests_force(project, models: Models) -> None:
    reg, _ = store_of(project, models)
    register(reg, models, "medium")

    with pytest.raises(RegistryError, match=r"records no gate settings.*--force"):
        reg.gate("m", "1")
    assert reg.alias("m", CHAMPION) is None


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


def test_require_names_the_near_model(project, models: Models) -> None:
    reg, _ = store_of(project, models)
    with pytest.raises(
        RegistryError, match=r"no registered model 'cancer'.*none is registered yet"
    ):
        reg.require("cancer")
    register(reg, models, "medium", name="cancer")
    reg.require("cancer")

    with pytest.raises(RegistryError, match=r"no registered model 'cancr'.*did you mean 'cancer'"):
        reg.require("cancr")
    with pytest.raises(RegistryError, match=r"no registered model 'zzz'.*; registered: cancer"):
        reg.require("zzz")
    with pytest.raises(RegistryError, match="'cancer' has no version 4; versions: 1"):
        reg.version("cancer", "4")


def test_gate_metric_not_computed_fails_its_run(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    register(reg, models, "medium")
    settings = GateConfig("my_metric", True, "classifier", "target", None)

    with pytest.raises(RegistryError, match=r"computed no metric 'my_metric'.*roc_auc"):
        reg.gate("m", "1", settings, holdout)

    assert reg.alias("m", CHAMPION) is None
    experiment = reg.client.get_experiment_by_name(GATE_EXPERIMENT)
    [gate_run] = reg.client.search_runs(
        [experiment.experiment_id], filter_string="tags.`mlnb.kind` = 'gate'"
    )
    assert gate_run.info.status == "FAILED"


def test_gate_experiment_keeps_artifacts_beside_the_store(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    register(reg, models, "medium")
    assert Path.cwd().resolve() != project.root.resolve()

    reg.gate("m", "1", config(), holdout)

    location = reg.client.get_experiment_by_name(GATE_EXPERIMENT).artifact_location
    assert location.startswith((project.root / "mlartifacts").resolve().as_uri())


# -- the model: section of a spec -----------------------------------------------------

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
    ("lines", "metric", "greater"),
    [
        pytest.param("metric: score\ngreater_is_better: true\n", "score", True, id="custom-metric"),
        pytest.param(
            "metric: example_count\ngreater_is_better: false\n", "example_count", False, id="lower"
        ),
        pytest.param("metric: log_loss\n", "log_loss", False, id="known-lower-is-better"),
        pytest.param(
            "metric: r2_score\ntype: regressor\nthreshold: 0.5\n", "r2_score", True, id="regressor"
        ),
    ],
)
def test_model_section_valid(project, lines: str, metric: str, greater: bool) -> None:
    text = STAGES + "  stage: b\n  holdout: ${a.outputs.out_path}\n"
    path = project.spec(text + "".join(f"  {line}\n" for line in lines.splitlines()))

    model = load_pipeline(path).spec.model

    assert model is not None and (model.name, model.stage, model.metric) == ("m", "b", metric)
    settings = GateConfig.from_spec(model)
    assert (settings.metric, settings.greater_is_better, settings.target) == (metric, greater, "y")


# -- end to end with the example project ---------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_example_registers_gates_and_promotes(project) -> None:
    root = project.root
    shutil.copytree(REPO / "notebooks", root / "notebooks", dirs_exist_ok=True)
    shutil.copytree(REPO / "pipelines", root / "pipelines", dirs_exist_ok=True)
    spec = root / "pipelines" / "cancer.yaml"
    reg = Registry(project.store)

    # a first run delivers version 1, the first champion
    first = run_pipeline(spec, profile="ci")

    assert first.registration is not None and first.decision is not None
    assert (first.registration.name, first.registration.version) == ("cancer", "1")
    assert first.registration.created
    assert first.decision.promoted and first.decision.champion is None
    assert "first champion" in first.decision.reason
    assert reg.alias("cancer", CHAMPION) == "1" and reg.alias("cancer", CHALLENGER) == "1"
    found_tags = reg.client.get_model_version("cancer", "1").tags
    assert found_tags[tags.PIPELINE_RUN] == first.run_id
    assert found_tags[tags.SOURCE_RUN] == first.stage("train").run_id
    assert found_tags[tags.TRIGGER] == "manual"
    assert found_tags[tags.SPEC_SHA] == hashlib.sha256(spec.read_bytes()).hexdigest()
    prepare = first.stage("prepare")
    assert found_tags[f"{tags.DATA_PREFIX}prepare.train_path"] == prepare.hashes["train_path"]
    assert found_tags[tags.HOLDOUT] == prepare.outputs["test_path"]
    assert Path(found_tags[tags.HOLDOUT]).is_absolute()
    assert json.loads(found_tags[tags.GATE_CONFIG]) == {
        "metric": "accuracy_score",
        "greater_is_better": True,
        "model_type": "classifier",
        "target": "target",
        "threshold": 0.9,
        "min_improvement": 0.0,
    }
    assert (
        found_tags[tags.GATE_DECISION] == "promoted"
        and found_tags[tags.GATE_RUN] == first.decision.run_id
    )
    gate_run = reg.client.get_run(first.decision.run_id)
    assert gate_run.data.tags["mlflow.parentRunId"] == first.run_id
    assert gate_run.info.experiment_id == first.experiment_id
    parent = reg.client.get_run(first.run_id).data.tags
    assert (parent["mlnb.model.version"], parent["mlnb.model.decision"]) == ("1", "promoted")

    # an unchanged run comes from the cache: the same version, already champion
    second = run_pipeline(spec, profile="ci")

    assert [s.status for s in second.stages] == ["cached"] * 3
    assert second.registration is not None and second.decision is not None
    assert (second.registration.version, second.registration.created) == ("1", False)
    assert not second.decision.promoted and second.decision.champion == "1"
    assert second.decision.reason == "v1 is already the champion"
    assert reg._versions("cancer") == ["1"]
    found_tags = reg.client.get_model_version("cancer", "1").tags
    assert found_tags[tags.PIPELINE_RUN] == second.run_id  # the latest run that delivered it
    assert found_tags[tags.SOURCE_RUN] == first.stage("train").run_id  # lineage kept

    # a worse model from the command line: version 2, rejected by the gate
    worse = project.mlnb(
        "run", "pipelines/cancer.yaml", "-p", "n_estimators=3", "-p", "max_depth=1"
    )

    assert worse.returncode == 0, worse.stderr
    assert "model:     cancer version 2 (registered; alias challenger)" in worse.stdout
    assert "gate:      v2 not promoted: accuracy_score " in worse.stdout
    assert reg.alias("cancer", CHAMPION) == "1" and reg.alias("cancer", CHALLENGER) == "2"
    assert reg.client.get_model_version("cancer", "2").tags[tags.GATE_DECISION] == "rejected"

    forced = project.mlnb("promote", "cancer", "--version", "2", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "v2 promoted by hand" in forced.stdout
    assert "champion:  cancer version 2" in forced.stdout
    assert reg.alias("cancer", CHAMPION) == "2"

    back = project.mlnb("promote", "cancer", "--rollback")
    assert back.returncode == 0, back.stderr
    assert "rolled back from version 2 to version 1" in back.stdout
    assert "champion:  cancer version 1" in back.stdout
    assert reg.alias("cancer", CHAMPION) == "1"

    gated = project.mlnb("promote", "cancer", "--version", "2")
    assert gated.returncode == 3, gated.stdout + gated.stderr
    assert "v2 not promoted: accuracy_score " in gated.stdout
    assert "champion:  cancer version 1" in gated.stdout
    assert "Traceback" not in gated.stderr
    assert reg.alias("cancer", CHAMPION) == "1"

    missing = project.mlnb("promote", "nosuch")
    assert missing.returncode != 0
    assert "error: no registered model 'nosuch'" in missing.stderr
    assert "registered: cancer" in missing.stderr
    assert "Traceback" not in missing.stderr

    # --no-promote: a new version becomes challenger, the champion stays
    quiet = project.mlnb("run", "pipelines/cancer.yaml", "--no-promote", "-p", "n_estimators=4")

    assert quiet.returncode == 0, quiet.stderr
    assert "model:     cancer version 3 (registered; alias challenger)" in quiet.stdout
    assert "gate:" not in quiet.stdout
    assert reg.alias("cancer", CHAMPION) == "1" and reg.alias("cancer", CHALLENGER) == "3"
    assert tags.GATE_DECISION not in reg.client.get_model_version("cancer", "3").tags


def test_the_registry_leaves_mlflows_process_store_as_it_was(project, models: Models) -> None:
    import mlflow

    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), dict(os.environ))
    reg, holdout = store_of(project, models)
    register(reg, models, "medium")
    reg.gate("m", "1", config(), holdout)
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), dict(os.environ)) == before
