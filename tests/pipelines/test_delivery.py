"""Model delivery at the end of a run, where it fails: the run ends FAILED and says why.

Delivery that succeeds (lineage tags, the gate, cached stages reusing a version)
is covered end to end with the example project in tests/models/test_registry.py.
"""

from __future__ import annotations

import pytest

from mlnb.models import RegistryError
from mlnb.pipelines.runner import run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_process_left")]

NO_MODEL_LOGGED = """
    name: p
    stages:
      a:
        notebook: notebooks/add_one.ipynb
        outputs: {out_path: out.txt}
    model:
      name: m
      stage: a
      holdout: ${a.outputs.out_path}
      target: target
      metric: accuracy_score
"""


def test_a_stage_that_logged_no_model_fails_the_run_naming_it(project) -> None:
    spec = project.spec(NO_MODEL_LOGGED)

    with pytest.raises(RegistryError, match="logged no model named 'model'") as info:
        run_pipeline(spec)

    client = project.client()
    [experiment] = [e for e in client.search_experiments() if e.name == "p"]
    parents = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`mlnb.kind` = 'pipeline'"
    )
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FAILED"
    assert parent.data.tags["mlnb.error"] == str(info.value)
    assert "mlnb.model.version" not in parent.data.tags
    assert parent.data.metrics["stages_executed"] == 1
    stages = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`mlnb.kind` = 'stage'"
    )
    assert [(r.data.tags["mlnb.stage"], r.info.status) for r in stages] == [("a", "FINISHED")]
    assert client.search_registered_models() == []
