"""What a pipeline run reports when it ends: per stage and for the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from mlnb.errors import StageError
from mlnb.tags import EndState

if TYPE_CHECKING:
    from mlnb.models.registry import Decision, Registration


class StageStatus(StrEnum):
    """Where a stage of a pipeline run is, or how it ended."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CACHED = "cached"  # its outputs came from the cache
    REUSED = "reused"  # by --resume: the run's earlier attempt succeeded
    FAILED = "failed"
    SKIPPED = "skipped"  # an upstream stage failed, or the run was interrupted
    KILLED = "killed"  # interrupted while it ran

    @property
    def done(self) -> bool:
        """Whether the stage's outputs are there for the stages downstream."""
        return self in (StageStatus.SUCCEEDED, StageStatus.CACHED, StageStatus.REUSED)


@dataclass
class StageResult:
    """How one stage of a pipeline run ended.

    Attributes:
        name: the stage name.
        status: how it ended (:class:`StageStatus`).
        run_id: the stage's MLflow run, if one was created.
        outputs: output name → absolute path.
        seconds: wall-clock time of the stage.
        error: the error that stopped it, if any.
        source_run_id: for a cached stage, the run that produced the outputs.
        notebook: the executed notebook, if one was written.
    """

    name: str
    status: StageStatus = StageStatus.PENDING
    run_id: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    error: StageError | None = None
    source_run_id: str | None = None
    notebook: str | None = None


@dataclass
class PipelineResult:
    """The outcome of :func:`run_pipeline`.

    Attributes:
        pipeline: the pipeline name.
        run_id: the parent MLflow run (``""`` for a run that was up to date).
        experiment_id: its experiment (``""`` for a run that was up to date).
        status: how the run ended, as MLflow's run states name it.
        stages: per-stage results, in topological order.
        workspace: the run's workspace folder.
        tracking_uri: the MLflow store.
        url: where a person sees the run.
        seconds: wall-clock time of the run.
        registration: the model version the run delivered (with a ``model:`` section).
        decision: what the gate decided about it (unless promotion was off).
        up_to_date: every stage came from the cache and there was no model to
            deliver, so nothing ran and nothing new was recorded: each stage's
            ``source_run_id`` is the run that holds its outputs.
    """

    pipeline: str
    run_id: str
    experiment_id: str
    status: EndState
    stages: list[StageResult]
    workspace: Path
    tracking_uri: str
    url: str
    seconds: float = 0.0
    registration: Registration | None = None
    decision: Decision | None = None
    up_to_date: bool = False

    def stage(self, name: str) -> StageResult:
        """Return the result of stage ``name``."""
        return next(s for s in self.stages if s.name == name)

    @property
    def failures(self) -> list[StageError]:
        """The stage errors that stopped the run."""
        return [s.error for s in self.stages if s.error is not None]
