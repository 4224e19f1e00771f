"""The registry: registering with lineage, champion by hand, rollback, promote, the example.

Each test registers on its own copy of the template store (``conftest.py``);
the gate's own decisions and errors are in ``test_gate.py``. Only the
end-to-end test runs whole pipelines, and ``mlnb promote`` as a user would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

import mlnb.models as models_package
from mlnb import tags
from mlnb.models import gate
from mlnb.models.registry import (
    CHALLENGER,
    CHAMPION,
    GATE_EXPERIMENT,
    Decision,
    GateConfig,
    Registration,
    Registry,
    RegistryError,
    gate_tags,
)
from mlnb.pipelines.runner import run_pipeline
from tests.helpers import REPO
from tests.models.helpers import Models, config, history, register, store_of


def test_the_gate_names_are_importable_from_the_registry() -> None:
    """Other packages import the gate's names from the registry: they are the gate's own."""
    assert GATE_EXPERIMENT == gate.GATE_EXPERIMENT == "mlnb-gate"
    assert Decision is gate.Decision and GateConfig is gate.GateConfig
    assert gate_tags is gate.gate_tags
    assert RegistryError is models_package.RegistryError
    assert (CHAMPION, CHALLENGER) == ("champion", "challenger")
    assert Registration("m", "1", True).created


# -- champion by hand, rollback, promote ------------------------------------------------


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


def test_promote_gates_forces_and_rolls_back(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    for kind in ("medium", "weak"):
        reg.register(
            "m", models.runs[kind], models.experiment_id, tags=gate_tags(config(), holdout)
        )
    reg.client.set_registered_model_alias("m", CHALLENGER, "1")

    first = reg.promote("m")  # the challenger, through the gate with its recorded settings

    assert (first.version, first.promoted, first.run_id is not None) == ("1", True, True)
    assert first.reason.startswith("v1 promoted: first champion, roc_auc = ")
    assert reg.alias("m", CHAMPION) == "1"

    weak = reg.promote("m", "2")

    assert (weak.version, weak.promoted, weak.champion) == ("2", False, "1")
    assert weak.reason.endswith("is below the threshold 0.9"), weak.reason
    assert reg.alias("m", CHAMPION) == "1"

    forced = reg.promote("m", "2", force=True)

    assert (forced.promoted, forced.champion, forced.reason) == (True, "1", "v2 promoted by hand")
    assert forced.run_id is None and reg.alias("m", CHAMPION) == "2"
    assert reg.client.get_model_version("m", "2").tags[tags.GATE_DECISION] == "promoted"

    back = reg.promote("m", rollback=True)

    assert (back.version, back.champion) == ("1", "2")
    assert back.reason == "rolled back from version 2 to version 1"
    assert reg.alias("m", CHAMPION) == "1"

    reg.client.delete_registered_model_alias("m", CHALLENGER)
    with pytest.raises(
        RegistryError, match=r"^'m' has no challenger; name a version with --version$"
    ):
        reg.promote("m")
    with pytest.raises(RegistryError, match=r"^no registered model 'mm' in .*did you mean 'm'"):
        reg.promote("mm", force=True)
    assert reg.alias("m", CHAMPION) == "1"


# -- registering ---------------------------------------------------------------------


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
    # the holdout lives in the store, on the version's run, named by its content
    digest = prepare.hashes["test_path"]
    source = first.stage("train").run_id
    assert found_tags[tags.HOLDOUT_SHA] == digest
    assert found_tags[tags.HOLDOUT] == f"runs:/{source}/mlnb/data/{digest}/test.csv"
    stored = [a.path for a in reg.client.list_artifacts(source, f"mlnb/data/{digest}")]
    assert stored == [f"mlnb/data/{digest}/test.csv"]
    assert json.loads(found_tags[tags.GATE_CONFIG]) == {
        "metric": "accuracy_score",
        "greater_is_better": True,
        "model_type": "classifier",
        "target": "target",
        "threshold": 0.9,
        "min_improvement": 0.0,
        "tolerance": 0.05,
        "golden": None,
        "floor": {},
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
    # a cached re-run rewrites nothing the version records: not its run, nor its holdout
    assert reg.client.get_model_version("cancer", "1").tags == found_tags

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

    # --no-promote: a new version, and no alias moves
    before = reg.alias("cancer", CHALLENGER)
    quiet = project.mlnb("run", "pipelines/cancer.yaml", "--no-promote", "-p", "n_estimators=4")

    assert quiet.returncode == 0, quiet.stderr
    assert "model:     cancer version 3 (registered; no alias moved)" in quiet.stdout
    assert "gate:" not in quiet.stdout
    assert reg.alias("cancer", CHAMPION) == "1" and reg.alias("cancer", CHALLENGER) == before
    assert tags.GATE_DECISION not in reg.client.get_model_version("cancer", "3").tags


@pytest.mark.parametrize("callers_store", [False, True], ids=["none", "callers-own"])
def test_the_registry_leaves_mlflows_process_store_as_it_was(
    project, models: Models, monkeypatch: pytest.MonkeyPatch, callers_store: bool
) -> None:
    import mlflow

    if callers_store:  # a caller that set up MLflow for itself keeps its set-up
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.root / 'other.db'}")
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), dict(os.environ))
    reg, holdout = store_of(project, models)
    register(reg, models, "medium")
    assert reg.gate("m", "1", config(), holdout).promoted
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), dict(os.environ)) == before
    assert ("other.db" in mlflow.get_tracking_uri()) is callers_store
