"""``mlnb promote`` and ``mlnb ui`` as a user runs them: bad input is one error line."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from mlnb.models.gate import gate_tags
from tests.models.conftest import models as models  # the template store of real models
from tests.models.helpers import Models, config, store_of


def truncated(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # the last row stops half way


def text_in_a_feature(path: Path) -> None:
    table = pd.read_csv(path).astype({"mean_radius": object})
    table.loc[3, "mean_radius"] = "n/a"
    table.to_csv(path, index=False)


def header_only(path: Path) -> None:
    path.write_text(path.read_text().splitlines()[0] + "\n")


def binary(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


@pytest.mark.parametrize(
    ("corrupt", "says"),
    [
        pytest.param(truncated, "has no 'target' on 1 of", id="truncated"),
        pytest.param(text_in_a_feature, "ValueError: Input X contains NaN.", id="text-in-feature"),
        pytest.param(header_only, "has no rows", id="header-only"),
        pytest.param(binary, "cannot read the holdout data", id="binary"),
    ],
)
def test_promote_with_a_corrupt_holdout_is_one_error_line(
    project, models: Models, corrupt, says: str
) -> None:
    reg, holdout = store_of(project, models)
    reg.register(
        "m", models.runs["medium"], models.experiment_id, tags=gate_tags(config(), holdout)
    )
    corrupt(holdout)

    done = project.mlnb("promote", "m")

    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and str(holdout) in lines[0], lines[0]
    assert says in lines[0]
    assert reg.alias("m", "champion") is None


@pytest.mark.parametrize("port", ["0", "70000", "-1"])
def test_ui_port_out_of_range_is_a_usage_error(project, port: str) -> None:
    done = project.mlnb("ui", "--port", port)

    assert done.returncode == 2, done.stdout + done.stderr
    assert "Invalid value for '--port'" in done.stderr
    assert "is not in the range 1<=x<=65535" in done.stderr
    assert "Traceback" not in done.stderr


def test_ui_on_a_server_store_opens_that_servers_ui(project) -> None:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": "http://someone:secret@127.0.0.1:9/",
        "BROWSER": "echo OPENED %s",  # what a browser would be given
    }
    done = project.mlnb("ui", env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "its UI is at http://127.0.0.1:9/" in done.stderr
    assert "OPENED http://127.0.0.1:9/" in done.stdout
    assert "secret" not in done.stdout + done.stderr
