"""A team member's machine: a project folder of its own, the team's store and state folder.

:class:`Member` is the monitoring tests' :class:`~tests.monitoring.project.Example`
pointed at a shared ``mlflow server`` (``MLFLOW_TRACKING_URI``) and at a
state folder (``MLNB_STATE_DIR``) that it may share with other members. Its
processes see only their own folder, the state folder they are given and
the server: what one member needs of another's work has to come from there.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests.monitoring.project import Example, environment
from tests.team.conftest import service_env


class Member(Example):
    """The example project (pipelines and notebooks) in ``root``, on the team's store.

    Args:
        root: the member's project folder; created with a copy of the example project.
        uri: the team's ``mlflow server``.
        state: the member's ``MLNB_STATE_DIR`` (shared with another member or not).
    """

    def __init__(self, root: Path, uri: str, state: Path) -> None:
        super().__init__(root)
        self.uri = uri
        self.state = state
        self.env = {
            **service_env(),
            **{k: v for k, v in environment().items() if not k.startswith(("MLFLOW_", "AWS_"))},
            "MLFLOW_TRACKING_URI": uri,
            "MLNB_STATE_DIR": str(state),
        }
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            self.env.pop(key)  # artifacts go through the server: a member holds no S3 keys
        repo = Path(__file__).resolve().parents[2]
        for name in ("pipelines", "notebooks"):
            shutil.copytree(repo / name, root / name)

    @property
    def log_dir(self) -> Path:
        return self.state / "predictions"

    def run(self, *args: str, timeout: float = 300) -> str:
        """``mlnb run pipelines/cancer.yaml --profile ci ARGS``; what it said (it must succeed)."""
        done = self.mlnb("run", "pipelines/cancer.yaml", "--profile", "ci", *args, timeout=timeout)
        said = done.stdout + done.stderr
        assert done.returncode == 0, said
        return said

    def runs(self, pipeline: str = "cancer") -> list[Any]:
        """The stage runs of ``pipeline`` in the store, oldest first."""
        experiment = self.client.get_experiment_by_name(pipeline)
        return self.client.search_runs(
            [experiment.experiment_id],
            filter_string="tags.`mlnb.kind` = 'stage'",
            order_by=["attributes.start_time ASC"],
        )
