"""Events a pipeline run reports while it runs.

Library code never prints: :func:`mlnb.pipelines.runner.run_pipeline` calls an
``on_event`` callback with these, and the command line draws them (a live
progress display on a terminal, plain log lines elsewhere). Callbacks may come
from worker threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mlnb.pipelines.results import StageStatus


@dataclass(frozen=True)
class RunStarted:
    """A pipeline run began (or resumed)."""

    pipeline: str
    run_id: str
    experiment_id: str
    stages: tuple[str, ...]
    workspace: str
    tracking_uri: str
    url: str
    resumed: bool = False


@dataclass(frozen=True)
class StageStarted:
    """A stage's notebook began executing."""

    stage: str
    run_id: str


@dataclass(frozen=True)
class StageProgress:
    """A cell of a stage finished."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class StageOutput:
    """Text a stage notebook printed (with ``log_output``)."""

    stage: str
    text: str


@dataclass(frozen=True)
class StageFinished:
    """A stage ended, with its :class:`~mlnb.pipelines.results.StageStatus`."""

    stage: str
    status: StageStatus
    seconds: float = 0.0
    run_id: str | None = None
    error: str | None = None
    source_run_id: str | None = None


Event = RunStarted | StageStarted | StageProgress | StageOutput | StageFinished
EventCallback = Callable[[Event], None]
