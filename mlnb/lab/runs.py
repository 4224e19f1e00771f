"""A pipeline's recent runs and the states of their stages, read from the MLflow store.

A pipeline run is the parent MLflow run (kind ``pipeline``); its stages are
the runs nested under it, the latest attempt of each stage winning (a
resumed run has several). A stage's state comes from its run:
``RUNNING`` is running, ``FINISHED`` is succeeded (cached when its outputs
came from the cache), ``FAILED`` failed and ``KILLED`` killed. Its executed
notebook is ``<workspace>/<stage>.ipynb`` in the workspace of the run that
executed it (for a cached stage, the run it was cached from).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from mlnb import tags
from mlnb.errors import NotFoundError, UsageError
from mlnb.pipelines.results import StageStatus
from mlnb.store import HTTP_SCHEMES, located
from mlnb.tracking import Tracker

#: the most runs one request lists
MAX_RUNS = 50
#: where the MLflow UI is when the store is not a server: ``mlnb ui``'s address unless told
UI_VAR = "MLNB_UI_URL"
DEFAULT_UI = "http://127.0.0.1:5000"

_STATES: dict[str, StageStatus] = {
    "RUNNING": StageStatus.RUNNING,
    "SCHEDULED": StageStatus.PENDING,
    "FINISHED": StageStatus.SUCCEEDED,
    "FAILED": StageStatus.FAILED,
    "KILLED": StageStatus.KILLED,
}


@dataclass
class StageRun:
    """One stage of a pipeline run."""

    name: str
    state: StageStatus
    run_id: str
    seconds: float | None
    error: str | None = None
    cached_from: str | None = None
    notebook: bool = False  # whether its executed notebook is there to open
    url: str = ""


@dataclass
class PipelineRun:
    """One run of a pipeline, with its stages."""

    run_id: str
    pipeline: str
    status: str  # MLflow's run state (RunState)
    started: float  # Unix seconds
    seconds: float
    trigger: str
    profile: str
    overrides: str
    url: str
    stages: list[StageRun] = field(default_factory=list)
    error: str | None = None
    model_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ui_url(tracker: Tracker, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI: the server's own, else where ``mlnb ui`` serves."""
    base = tracker.uri if tracker.uri.startswith(HTTP_SCHEMES) else os.environ.get(UI_VAR)
    base = (base or DEFAULT_UI).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def recent(tracker: Tracker, pipeline: str, limit: int = 10) -> list[PipelineRun]:
    """The latest ``limit`` runs of ``pipeline`` (its MLflow experiment), newest first."""
    experiment = tracker.client.get_experiment_by_name(pipeline)
    if experiment is None:
        return []
    found = tracker.client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{tags.KIND}` = '{tags.Kind.PIPELINE}'",
        order_by=["attributes.start_time DESC"],
        max_results=max(1, min(limit, MAX_RUNS)),
    )
    return [describe(tracker, run) for run in found]


def pipeline_run(tracker: Tracker, run_id: str) -> Run:
    """The pipeline run ``run_id``.

    Raises:
        TrackingError: no such run in the store.
        UsageError: the run is not a pipeline run.
    """
    run = tracker.get_run(run_id)
    if run.data.tags.get(tags.KIND) != tags.Kind.PIPELINE:
        raise UsageError(f"run '{run_id}' is not a pipeline run")
    return run


def describe(tracker: Tracker, run: Run) -> PipelineRun:
    """A pipeline run and the latest attempt of each of its stages."""
    info, found_tags = run.info, run.data.tags
    end = (info.end_time or time.time() * 1000) if info.status != "RUNNING" else time.time() * 1000
    result = PipelineRun(
        run_id=info.run_id,
        pipeline=found_tags.get(tags.PIPELINE, ""),
        status=info.status,
        started=info.start_time / 1000,
        seconds=max(0.0, (end - info.start_time) / 1000),
        trigger=found_tags.get(tags.TRIGGER, ""),
        profile=found_tags.get(tags.PROFILE, ""),
        overrides=found_tags.get(tags.OVERRIDES, "{}"),
        url=ui_url(tracker, info.experiment_id, info.run_id),
        error=found_tags.get(tags.ERROR),
        model_version=found_tags.get(tags.MODEL_VERSION),
    )
    children = sorted(
        tracker.child_runs(info.experiment_id, info.run_id), key=lambda r: r.info.start_time or 0
    )
    latest = {child.data.tags.get(tags.STAGE, ""): child for child in children}
    result.stages = [_stage(tracker, name, child) for name, child in latest.items() if name]
    return result


def _stage(tracker: Tracker, name: str, child: Run) -> StageRun:
    info, found_tags = child.info, child.data.tags
    state = _STATES.get(info.status, StageStatus.PENDING)
    cached = found_tags.get(tags.CACHED) == "true"
    if cached and state == StageStatus.SUCCEEDED:
        state = StageStatus.CACHED
    seconds = (info.end_time - info.start_time) / 1000 if info.end_time else None
    return StageRun(
        name=name,
        state=state,
        run_id=info.run_id,
        seconds=seconds,
        error=found_tags.get(tags.ERROR),
        cached_from=found_tags.get(tags.CACHED_FROM),
        notebook=executed_notebook(tracker, child) is not None,
        url=ui_url(tracker, info.experiment_id, info.run_id),
    )


def workspace(tracker: Tracker, run: Run) -> Path | None:
    """The workspace folder of a pipeline run, as its tag records it."""
    recorded = run.data.tags.get(tags.WORKSPACE)
    return located(recorded, tracker.root) if recorded else None


def stage_run(tracker: Tracker, run: Run, stage: str) -> Run:
    """The latest attempt of ``stage`` in pipeline run ``run``.

    Raises:
        NotFoundError: the run has no such stage.
    """
    children = [
        c
        for c in tracker.child_runs(run.info.experiment_id, run.info.run_id)
        if c.data.tags.get(tags.STAGE) == stage
    ]
    if not children:
        raise NotFoundError(f"pipeline run '{run.info.run_id}' has no stage '{stage}'")
    return max(children, key=lambda c: c.info.start_time or 0)


def executed_notebook(tracker: Tracker, child: Run) -> Path | None:
    """Where the executed notebook of a stage run is, if it is there.

    A cached stage's notebook is the one of the stage run it was cached from.
    """
    source = child
    cached_from = child.data.tags.get(tags.CACHED_FROM)
    if cached_from:
        try:
            source = tracker.get_run(cached_from)
        except Exception:  # the source run was deleted
            return None
    parent_id = source.data.tags.get(MLFLOW_PARENT_RUN_ID)
    if not parent_id:
        return None
    try:
        folder = workspace(tracker, tracker.get_run(parent_id))
    except Exception:
        return None
    path = folder / f"{source.data.tags.get(tags.STAGE, '')}.ipynb" if folder else None
    return path if path is not None and path.is_file() else None


def failing_cell(notebook: Path) -> tuple[int, str | None] | None:
    """The index and id of the first cell with an error output, or ``None``."""
    nb = nbformat.read(notebook, as_version=4)
    for index, cell in enumerate(nb.cells):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return index, cell.get("id")
    return None
