"""Artifacts written straight to S3 without boto3: a clear error that says what to install.

A store whose server runs without ``--serve-artifacts`` hands clients an
``s3://`` artifact location, and MLflow imports boto3 only when the first
artifact is written. Here the project's experiment keeps its artifacts at
``s3://`` and boto3 cannot be imported (a package of that name on
``PYTHONPATH`` that fails as a missing one does): no request ever leaves the
machine, the import fails first.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlnb.errors import CellError
from tests.helpers import CHAIN

FIX = "pip install 'mlnb[team]'"


@pytest.fixture
def no_boto3(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import boto3`` fails as it does where boto3 is missing."""
    shadow = tmp_path / "no-boto3" / "boto3"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'boto3\'", name="boto3")\n'
    )
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def on_s3(project, pipeline: str) -> None:
    client = project.client()
    client.create_experiment(pipeline, artifact_location="s3://mlnb/artifacts")


def test_a_cell_that_cannot_import_boto3_says_what_to_install() -> None:
    # the runner writes artifacts before any kernel starts, so this is where a kernel
    # whose environment lacks boto3 (another kernelspec, a Dask worker) shows it
    error = CellError("train", 4, "ModuleNotFoundError", "No module named 'boto3'", "train.ipynb")
    assert str(error).startswith(
        "stage 'train' failed: cell 4 raised ModuleNotFoundError: No module named 'boto3'; "
        "the store keeps artifacts on S3 (s3://)"
    ), str(error)
    assert FIX in str(error)
    other = CellError("train", 4, "ModuleNotFoundError", "No module named 'torch'")
    assert (
        str(other)
        == "stage 'train' failed: cell 4 raised ModuleNotFoundError: No module named 'torch'"
    )


def test_the_runner_writing_to_s3_without_boto3_says_what_to_install(
    project, no_boto3: dict[str, str]
) -> None:
    project.spec(CHAIN)
    on_s3(project, "p")

    done = project.mlnb("run", "p", env=no_boto3)

    assert done.returncode != 0
    assert "the store keeps artifacts on S3 (s3://)" in done.stderr, done.stderr
    assert FIX in done.stderr
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr
