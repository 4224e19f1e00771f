"""Evidence beside a challenger's own holdout: the champion's holdout, golden data, a hold.

Each case gates real models of the template store (``conftest.py``) with
MLflow's evaluation. A "poisoned" holdout is the real one with every label
inverted: a model that is wrong everywhere wins there, as a retrained model
wins on a holdout split from the labels it learnt.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from mlnb import tags
from mlnb.models.evidence import Evidence, Rules, summary, weigh
from mlnb.models.gate import GateConfig, gate_tags
from mlnb.models.registry import CHAMPION, Registry, RegistryError
from mlnb.tags import ModelDecision
from tests.models.helpers import Models, config, gate_runs, store_of

EVIDENCE = f"{tags.GATE_EVIDENCE_PREFIX}{tags.Evidence.CHAMPION_HOLDOUT}."
GOLDEN = f"{tags.GATE_EVIDENCE_PREFIX}{tags.Evidence.GOLDEN}."


def poisoned(holdout: Path) -> Path:
    """The holdout with every label inverted, as a feed with an inverted encoding gives it."""
    table = pd.read_csv(holdout)
    table["target"] = 1 - table["target"]
    path = holdout.with_name("poisoned.csv")
    table.to_csv(path, index=False)
    return path


def reordered(holdout: Path) -> Path:
    """The same rows in another order: other bytes, the same evidence."""
    path = holdout.with_name("reordered.csv")
    pd.read_csv(holdout).iloc[::-1].to_csv(path, index=False)
    return path


def champion_of(reg: Registry, models: Models, kind: str, settings: GateConfig, holdout: Path):
    """Register ``kind`` with its gate settings and holdout, and make it champion."""
    reg.register("m", models.runs[kind], models.experiment_id, tags=gate_tags(settings, holdout))
    reg.set_champion("m", "1", "seeded by the test")


def challenger_of(reg: Registry, models: Models, kind: str, settings: GateConfig, holdout: Path):
    reg.register("m", models.runs[kind], models.experiment_id, tags=gate_tags(settings, holdout))


def evaluations(reg: Registry, run_id: str) -> list:
    gate_run = reg.client.get_run(run_id)
    return reg.client.search_runs(
        [gate_run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'"
    )


# -- the champion's holdout --------------------------------------------------------------


def test_a_challenger_that_wins_only_on_poisoned_labels_is_not_promoted(
    project, models: Models
) -> None:
    reg, holdout = store_of(project, models)
    settings = config(threshold=None)
    champion_of(reg, models, "strong", settings, holdout)
    challenger_of(reg, models, "weak", settings, poisoned(holdout))

    decision = reg.gate("m", "2")

    assert not decision.promoted and decision.outcome is ModelDecision.REJECTED
    assert decision.score > decision.champion_score  # it won on its own, poisoned, holdout
    strong, weak = models.scores["strong"]["roc_auc"], models.scores["weak"]["roc_auc"]
    assert decision.reason == (
        f"v2 not promoted: roc_auc {decision.score:.4f} on its holdout but {weak:.4f} on "
        f"champion v1's holdout (v1: {strong:.4f}; tolerance 0.02)"
    )
    assert reg.alias("m", CHAMPION) == "1"
    found = reg.client.get_model_version("m", "2").tags
    assert found[tags.GATE_DECISION] == "rejected"
    assert float(found[EVIDENCE + "score"]) == pytest.approx(weak)
    assert float(found[EVIDENCE + "champion_score"]) == pytest.approx(strong)
    assert found[EVIDENCE + "path"] == str(holdout)
    assert found[EVIDENCE + "passed"] == "False"
    run = reg.client.get_run(decision.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["challenger_roc_auc.champion_holdout"] == pytest.approx(weak)
    assert run.data.metrics["champion_roc_auc.champion_holdout"] == pytest.approx(strong)
    names = sorted(r.info.run_name for r in evaluations(reg, decision.run_id))
    assert names == [
        "evaluate m v1 (champion on champion v1's holdout)",
        "evaluate m v1 (champion)",
        "evaluate m v2 (challenger on champion v1's holdout)",
        "evaluate m v2 (challenger)",
    ]


def test_a_challenger_within_the_tolerance_is_promoted_with_its_figures(
    project, models: Models
) -> None:
    reg, holdout = store_of(project, models)
    settings = config(threshold=None)
    champion_of(reg, models, "medium", settings, holdout)
    challenger_of(reg, models, "strong", settings, reordered(holdout))

    decision = reg.gate("m", "2")

    assert decision.promoted and reg.alias("m", CHAMPION) == "2"
    strong, medium = models.scores["strong"]["roc_auc"], models.scores["medium"]["roc_auc"]
    assert decision.reason.endswith(
        f"; {strong:.4f} on champion v1's holdout (champion {medium:.4f}; tolerance 0.02)"
    ), decision.reason
    [finding] = decision.findings
    assert finding.passed and finding.score == pytest.approx(strong)
    found = reg.client.get_model_version("m", "2").tags
    assert found[EVIDENCE + "passed"] == "True"
    assert float(found[EVIDENCE + "score"]) == pytest.approx(strong)


def test_a_declared_tolerance_lets_a_small_regression_through(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    strict = config(threshold=None)
    loose = GateConfig("roc_auc", True, "classifier", "target", tolerance=0.1)
    gap = models.scores["strong"]["roc_auc"] - models.scores["medium"]["roc_auc"]
    assert 0.02 < gap < 0.1
    champion_of(reg, models, "strong", strict, holdout)
    challenger_of(reg, models, "medium", loose, poisoned(holdout))

    decision = reg.gate("m", "2")

    assert decision.promoted, decision.reason
    assert "tolerance 0.1)" in decision.reason


def test_the_champion_s_holdout_is_not_scored_twice(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    settings = config(threshold=None)
    champion_of(reg, models, "medium", settings, holdout)
    copy = holdout.with_name("copy.csv")
    copy.write_bytes(holdout.read_bytes())  # a cached stage's file: the same bytes
    challenger_of(reg, models, "strong", settings, copy)

    decision = reg.gate("m", "2")

    assert decision.promoted and decision.findings == ()
    assert len(evaluations(reg, decision.run_id)) == 2


def test_a_champion_holdout_that_is_gone_refuses_the_challenger(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    settings = config(threshold=None)
    kept = holdout.with_name("champion.csv")
    kept.write_bytes(holdout.read_bytes())
    champion_of(reg, models, "medium", settings, kept)
    challenger_of(reg, models, "strong", settings, holdout)
    kept.unlink()

    decision = reg.gate("m", "2")

    assert not decision.promoted and reg.alias("m", CHAMPION) == "1"
    assert decision.reason == (
        f"v2 not promoted: it cannot be judged on champion v1's holdout ({kept} is gone); "
        "restore the file, or promote it by hand with mlnb promote --force"
    )
    assert reg.client.get_run(decision.run_id).info.status == "FINISHED"


# -- golden data -------------------------------------------------------------------------


def test_a_first_champion_must_clear_the_golden_floor(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    settings = GateConfig(
        "roc_auc", True, "classifier", "target", golden=str(holdout), floor={"roc_auc": 0.9}
    )
    challenger_of(reg, models, "weak", settings, poisoned(holdout))

    decision = reg.gate("m", "1")

    weak = models.scores["weak"]["roc_auc"]
    assert not decision.promoted and reg.alias("m", CHAMPION) is None
    assert decision.reason == (
        f"v1 not promoted: roc_auc {decision.score:.4f} on its holdout but roc_auc "
        f"{weak:.4f} on the golden data {holdout.name}, below its floor 0.9"
    )
    found = reg.client.get_model_version("m", "1").tags
    assert float(found[GOLDEN + "roc_auc"]) == pytest.approx(weak)
    assert found[GOLDEN + "passed"] == "False"
    metrics = reg.client.get_run(decision.run_id).data.metrics
    assert metrics["challenger_roc_auc.golden"] == pytest.approx(weak)


def test_a_floor_of_a_metric_where_lower_is_better(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    settings = GateConfig(
        "roc_auc", True, "classifier", "target", golden=str(holdout), floor={"log_loss": 0.2}
    )
    challenger_of(reg, models, "medium", settings, holdout)  # log loss ≈ 0.33

    decision = reg.gate("m", "1")

    assert not decision.promoted
    assert re.search(
        r"log_loss 0\.3\d+ on the golden data holdout\.csv, above its floor 0\.2$", decision.reason
    ), decision.reason


def test_golden_data_that_cannot_be_scored_fails_the_gate_run(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    golden = holdout.with_name("golden.csv")
    pd.read_csv(holdout).drop(columns=["mean_radius"]).to_csv(golden, index=False)
    settings = GateConfig("roc_auc", True, "classifier", "target", golden=str(golden))
    challenger_of(reg, models, "strong", settings, holdout)  # it needs every feature

    with pytest.raises(RegistryError) as info:
        reg.gate("m", "1")

    message = str(info.value)
    assert message.startswith(f"the gate could not evaluate m v1 on {golden}: "), message
    [gate_run] = gate_runs(reg)
    assert gate_run.info.status == "FAILED"
    runs = {r.info.run_name: r.info.status for r in evaluations(reg, gate_run.info.run_id)}
    assert runs == {
        "evaluate m v1 (challenger)": "FINISHED",
        "evaluate m v1 (challenger on the golden data golden.csv)": "FAILED",
    }
    assert reg.alias("m", CHAMPION) is None
    assert tags.GATE_DECISION not in reg.client.get_model_version("m", "1").tags


# -- a hold: the gate decides, a person promotes ---------------------------------------------


def test_a_hold_records_the_decision_and_leaves_the_champion(project, models: Models) -> None:
    reg, holdout = store_of(project, models)
    settings = config(threshold=None)
    champion_of(reg, models, "medium", settings, holdout)
    challenger_of(reg, models, "strong", settings, reordered(holdout))

    decision = reg.gate("m", "2", hold=True)

    assert not decision.promoted and decision.held
    assert decision.outcome is ModelDecision.PASSED
    assert decision.reason.startswith("v2 passed the gate: roc_auc ")
    assert "; promotion is manual: mlnb promote m --version 2" in decision.reason
    assert reg.alias("m", CHAMPION) == "1"
    found = reg.client.get_model_version("m", "2").tags
    assert found[tags.GATE_DECISION] == "passed"
    assert found[EVIDENCE + "passed"] == "True"
    assert reg.client.get_run(decision.run_id).data.tags[tags.GATE_DECISION] == "passed"

    promoted = reg.promote("m", "2")  # what the person runs

    assert promoted.promoted and reg.alias("m", CHAMPION) == "2"


# -- the rules on their own ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("greater", "score", "best", "refused"),
    [
        pytest.param(True, 0.93, 0.95, False, id="within"),
        pytest.param(True, 0.95 - 0.02, 0.95, False, id="at-the-tolerance"),
        pytest.param(True, 0.92, 0.95, True, id="beyond"),
        pytest.param(False, 0.32, 0.30, False, id="error-within"),
        pytest.param(False, 0.33, 0.30, True, id="error-beyond"),
    ],
)
def test_weigh_against_the_champion(
    greater: bool, score: float, best: float, refused: bool
) -> None:
    evidence = Evidence(tags.Evidence.CHAMPION_HOLDOUT, "champion v1's holdout", Path("h"), None)
    rules = Rules("m", greater, 0.02, {"m": greater})

    found = weigh(evidence, rules, {"m": score}, ("1", best))

    assert found.passed is not refused
    assert (found.score, found.champion_score) == (score, best)
    if refused:
        assert found.failure == (
            f"{score:.4f} on champion v1's holdout (v1: {best:.4f}; tolerance 0.02)"
        )
    assert summary([found], rules) == (
        f"{score:.4f} on champion v1's holdout (champion {best:.4f}; tolerance 0.02)"
    )
