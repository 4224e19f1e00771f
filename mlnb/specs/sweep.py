"""The ``sweep:`` section of a pipeline spec: which parameter sets to try, and how to rank them.

Two forms, one of them per spec::

    sweep:                          # a grid: every combination, in the order written
      params:
        n_estimators: [50, 200]
        train.max_depth: [3, 6]     # stage.key targets one stage, as profiles do
      metric: evaluate.accuracy     # <stage>.<a metric the stage's notebook logs>
      goal: maximize

    sweep:                          # a search: Optuna's sampler picks each trial
      search:
        method: tpe                 # or random
        trials: 30
        seed: 0
        space:
          C: {low: 0.01, high: 10, log: true}
          max_depth: {choices: [3, 6, 9]}
      metric: evaluate.accuracy

The keys are checked against the stages' parameters cells with the profile
and ``-p`` keys (:mod:`mlnb.specs.pipeline`); this module holds the shapes,
the grid's trials and the limits. It imports neither MLflow nor Optuna.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

#: the most trials one sweep runs: a grid larger than this is refused before anything runs
MAX_TRIALS = 1000
#: ``<stage>.<metric>``: the stage's run holds the metric (its notebook logs it)
METRIC = re.compile(r"^(?P<stage>[A-Za-z_][A-Za-z0-9_-]*)\.(?P<metric>[^\s]+)$")

Goal = Literal["maximize", "minimize"]
Scalar = StrictBool | StrictInt | StrictFloat | str | None


class Dimension(BaseModel):
    """One parameter of a search: a range (``low``/``high``, ``log``, ``step``) or ``choices``.

    A range of two integers is searched over integers, any other over floats.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: StrictInt | StrictFloat | None = None
    high: StrictInt | StrictFloat | None = None
    log: bool = False
    step: StrictInt | StrictFloat | None = Field(default=None, gt=0)
    choices: list[Scalar] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Dimension:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.log or self.step is not None:
                raise ValueError("give either choices or low/high (with log or step), not both")
            if not self.choices:
                raise ValueError("choices needs at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices)")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high}), both finite")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low above 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("a range is either log or stepped, not both")
        return self

    @property
    def integer(self) -> bool:
        """Whether the range is over integers (both ends are; a step, if any, is too)."""
        ends = (self.low, self.high, self.step if self.step is not None else 1)
        return all(isinstance(v, int) and not isinstance(v, bool) for v in ends)


class SearchSpec(BaseModel):
    """A search: ``trials`` parameter sets drawn by an Optuna sampler from ``space``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["random", "tpe"] = "tpe"
    trials: int = Field(ge=1, le=MAX_TRIALS)
    seed: int | None = None
    space: dict[str, Dimension]

    @model_validator(mode="after")
    def _some_space(self) -> SearchSpec:
        if not self.space:
            raise ValueError("space needs at least one parameter")
        return self


class SweepSpec(BaseModel):
    """The ``sweep:`` section: a grid (``params``) or a ``search``, a metric and its goal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: dict[str, list[Scalar]] = Field(default_factory=dict)
    search: SearchSpec | None = None
    metric: str
    goal: Goal = "maximize"

    @field_validator("metric")
    @classmethod
    def _stage_and_metric(cls, value: str) -> str:
        if not METRIC.match(value):
            raise ValueError(
                f"'{value}' does not name a stage: write <stage>.<metric its notebook logs>, "
                "e.g. evaluate.accuracy"
            )
        return value

    @model_validator(mode="after")
    def _one_form(self) -> SweepSpec:
        if bool(self.params) == (self.search is not None):
            raise ValueError(
                "give either params (a grid of values to try) or search (a space to sample)"
            )
        empty = [key for key, values in self.params.items() if not values]
        if empty:
            raise ValueError(f"params.{empty[0]} lists no value to try")
        size = math.prod(len(values) for values in self.params.values())
        if size > MAX_TRIALS:
            raise ValueError(
                f"the grid has {size:,} combinations, more than the {MAX_TRIALS:,} a sweep runs; "
                "list fewer values, or use search with a number of trials"
            )
        return self

    @property
    def keys(self) -> list[str]:
        """The swept parameters (``key`` or ``stage.key``), in the order written."""
        return list(self.params) if self.search is None else list(self.search.space)

    @property
    def stage(self) -> str:
        """The stage whose run holds the metric."""
        return self.metric.split(".", 1)[0]

    @property
    def metric_name(self) -> str:
        """The metric's name in that stage's run."""
        return self.metric.split(".", 1)[1]

    @property
    def trials(self) -> int:
        """How many trials the sweep runs."""
        if self.search is not None:
            return self.search.trials
        return math.prod(len(values) for values in self.params.values())

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of a grid, the last key varying fastest."""
        keys = list(self.params)
        return [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*self.params.values())
        ]

    def better(self, a: float, b: float) -> bool:
        """Whether metric value ``a`` beats ``b`` for this goal."""
        return a > b if self.goal == "maximize" else a < b
