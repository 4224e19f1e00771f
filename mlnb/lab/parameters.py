"""The parameters a stage received in a run, or would receive with a profile, as papermill
injects them.

For a stage a run executed, that is the ``injected-parameters`` cell of its
executed notebook, word for word. Otherwise (a cached stage, a stage the run
never reached, a profile) the parameters are resolved as ``mlnb run`` resolves
them: the spec's values by precedence with the run's profile and ``-p``
overrides, each ``${stage.outputs.x}`` the path of that output in the run's
workspace, project files as absolute paths and the stage's own outputs in
the workspace; then rendered by papermill's translator for the stage's kernel.
A profile's upstream outputs point at the files of the pipeline's latest run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run

from mlnb import tags
from mlnb.engine.parameters import injected_cell, injected_source
from mlnb.errors import NotFoundError, UsageError
from mlnb.lab import runs as runsmod
from mlnb.lab.project import spec_of
from mlnb.pipelines.cache import workspace as workspace_of
from mlnb.pipelines.locate import load_pipeline, project_pipelines
from mlnb.specs.pipeline import Pipeline, project_path, read_spec, substitute
from mlnb.store import state_dir
from mlnb.tracking import Tracker


@dataclass(frozen=True)
class Use:
    """A stage of a pipeline whose notebook is the one open."""

    pipeline: str
    stage: str
    profiles: list[str]


@dataclass(frozen=True)
class Parameters:
    """What to run in a kernel, and where it came from."""

    pipeline: str
    stage: str
    source: str
    origin: str  # "executed notebook" or "resolved"
    run_id: str | None
    note: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def uses(root: Path, notebook: str) -> list[Use]:
    """The stages of the project's pipelines whose notebook is ``notebook`` (project-relative)."""
    target = (root / notebook).resolve()
    found = []
    for path in project_pipelines(root):
        try:
            spec, _ = read_spec(path)
        except Exception:  # a broken spec is the pipelines list's to report
            continue
        for name, stage in spec.stages.items():
            if (root / stage.notebook).resolve() == target:
                found.append(Use(path.stem, name, list(spec.profiles)))
    return found


def of_run(tracker: Tracker, root: Path, pipeline: str, stage: str, run_id: str) -> Parameters:
    """What ``stage`` received in pipeline run ``run_id``.

    Raises:
        UsageError: the run is not a run of ``pipeline``, or has no stage ``stage``.
        SpecError: the spec no longer loads with the run's profile and overrides.
    """
    run = runsmod.pipeline_run(tracker, run_id)
    spec = spec_of(root, pipeline)
    loaded = _loaded(spec, run)
    if loaded.name != run.data.tags.get(tags.PIPELINE):
        raise UsageError(f"run '{run_id}' is a run of {run.data.tags.get(tags.PIPELINE)}")
    folder = runsmod.workspace(tracker, run) or workspace_of(state_dir(root), run_id)
    executed = folder / f"{stage}.ipynb"
    if executed.is_file():
        source = injected_cell(executed)
        if source is not None:
            return Parameters(
                pipeline, stage, source, "executed notebook", run_id, f"as run {run_id} ran it"
            )
    return Parameters(
        pipeline,
        stage,
        resolve(loaded, stage, folder),
        "resolved",
        run_id,
        f"upstream outputs from run {run_id}",
    )


def of_profile(
    tracker: Tracker, root: Path, pipeline: str, stage: str, profile: str | None
) -> Parameters:
    """What ``stage`` would receive with ``profile``, upstream outputs from the latest run."""
    loaded = load_pipeline(spec_of(root, pipeline), profile or None)
    latest = runsmod.recent(tracker, loaded.name, limit=1)
    if latest:
        folder = runsmod.workspace(tracker, tracker.get_run(latest[0].run_id))
        run_id: str | None = latest[0].run_id
    else:
        folder, run_id = None, None
    note = (
        f"profile {profile or '(none)'}; upstream outputs from the latest run, {run_id}"
        if run_id
        else f"profile {profile or '(none)'}; no run yet, so upstream outputs are not there"
    )
    where = folder or workspace_of(state_dir(root), "next-run")
    return Parameters(pipeline, stage, resolve(loaded, stage, where), "resolved", run_id, note)


def resolve(pipeline: Pipeline, stage_name: str, folder: Path) -> str:
    """The injected source for ``stage_name`` with its outputs and references in ``folder``.

    Raises:
        NotFoundError: the pipeline has no such stage.
    """
    try:
        stage = pipeline.stage(stage_name)
    except KeyError:
        raise NotFoundError(f"pipeline {pipeline.name} has no stage '{stage_name}'") from None
    outputs_of = {
        s.name: {name: str(folder / s.name / rel) for name, rel in s.outputs.items()}
        for s in pipeline.stages
    }
    params = substitute(dict(stage.params), outputs_of)
    for name, value in params.items():
        path = project_path(value, pipeline.root)
        if path is not None:
            params[name] = str(path.resolve())
    params.update(outputs_of[stage.name])
    return injected_source(stage.notebook, params, stage.kernel)


def _loaded(spec: Path, run: Run) -> Pipeline:
    found = run.data.tags
    given = json.loads(found.get(tags.OVERRIDES) or "{}")
    return load_pipeline(spec, found.get(tags.PROFILE) or None, given)
