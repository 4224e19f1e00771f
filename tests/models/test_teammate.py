"""A teammate gates another member's version: what the gate needs comes from the store.

Two project folders that do not see each other's files share one store. A
trains two versions; then A's folder loses its workspaces and cache (another
machine's disk). B gates A's second version from its own folder: the holdout
of the version and the champion's come down from the store, once, into B's
state folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlnb import tags
from mlnb.models.registry import CHAMPION, Registry
from mlnb.pipelines.runner import run_pipeline

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_teammate_gates_a_version_trained_elsewhere(project, tmp_path: Path) -> None:
    member_a = project.root
    shutil.copytree(REPO / "notebooks", member_a / "notebooks", dirs_exist_ok=True)
    shutil.copytree(REPO / "pipelines", member_a / "pipelines", dirs_exist_ok=True)
    spec = member_a / "pipelines" / "cancer.yaml"
    first = run_pipeline(spec, profile="ci")
    second = run_pipeline(spec, profile="ci", overrides={"n_estimators": 3}, promote=False)
    assert first.decision is not None and first.decision.promoted
    assert second.registration is not None and second.decision is None
    shutil.rmtree(member_a / ".mlnb")  # nothing of A's folder is left to read

    member_b = tmp_path / "member-b"
    member_b.mkdir()
    teammate = Registry(project.store, member_b / ".mlnb")
    decision = teammate.gate("cancer", second.registration.version)

    assert decision.champion == "1", decision.reason
    assert decision.outcome in {"promoted", "rejected"}
    assert "is gone" not in decision.reason
    downloads = sorted(p.name for p in (member_b / ".mlnb" / "data").glob("*/*"))
    assert downloads == ["test.csv"], downloads  # both holdouts are one content: one download
    recorded = teammate.client.get_model_version("cancer", "2").tags
    assert recorded[tags.GATE_DECISION] == decision.outcome
    expected = "2" if decision.promoted else "1"
    assert teammate.alias("cancer", CHAMPION) == expected
