"""Monitor specs: what ``mlnb monitor`` watches, how often, and what it retrains with.

A monitor spec is YAML beside the pipeline specs (``pipelines/monitor.yaml``)
and follows the same rules: validated once, here, every problem reported at
once with file, line and key path; relative paths start at the project root.

.. code-block:: yaml

    name: cancer-monitor           # the MLflow experiment of the checks
    model: cancer                  # the registered model watched (its alias champion)
    schedule: {every: 10m}         # or {cron: "*/10 * * * *"} (UTC)
    window: {last: 1000}           # the newest prediction rows; or {since: 1d}; or both
    drift:
      notebook: notebooks/drift.ipynb
      params: {p_val: 0.05}
    performance: {metric: accuracy, threshold: 0.9, min_labels: 50}
    retrain:
      pipeline: pipelines/cancer.yaml
      params: {data_path: "${monitor.labeled_data}"}
      every: 30d                   # the schedule trigger: a champion older than this
    triggers: [drift, performance, schedule]
    cooldown: 1h
    labels: {below_constant: 0.2, max_shift: 0.2}   # when labels look suspicious
    promotion: auto                # or manual: the gate decides, a person moves champion
    # or on live evidence: the gate decides offline, then the challenger a service
    # shadows (--shadow challenger) or canaries moves to champion once it is better
    # promotion: {online: {metric: accuracy, min_labels: 200, min_improvement: 0.01}}

The retraining run's parameters may use ``${monitor.labeled_data}`` (the
path of a CSV of the window's predictions that have labels: the input
columns and the pipeline's target column), ``${monitor.training_data}`` (the
champion's training data, empty when its version records none) and
``${monitor.trigger}``.

Labels are the next model's training data, so a check looks at them before
it retrains (``labels:``): they are *suspicious*, and no retrain starts, when
the live metric is worse than a constant predictor's on the same labels by
more than ``below_constant`` (absolute for scores; a fraction of the
constant's error for errors), or when their distribution is farther than
``max_shift`` from the champion's training data (total variation distance
between the class shares; the Kolmogorov-Smirnov statistic for a regressor).
``null`` turns a test off.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from mlnb.errors import Problem, SpecError, suggest
from mlnb.specs.document import Collector, KeyPath, read_document
from mlnb.specs.pipeline import (
    COMMAND_LINE,
    REFERENCE,
    ModelSpec,
    PipelineSpec,
    load_pipeline,
    notebook_info,
    project_root,
)
from mlnb.store import prediction_log_dir

#: what can make a monitor retrain, as a spec's ``triggers:`` names it
TriggerName = Literal["drift", "performance", "schedule"]
TRIGGERS: tuple[TriggerName, ...] = get_args(TriggerName)
#: live metrics computed from labeled predictions → whether greater is better
LIVE_METRICS = {
    "accuracy": True,
    "balanced_accuracy": True,
    "f1": True,
    "precision": True,
    "recall": True,
    "roc_auc": True,
    "mean_absolute_error": False,
    "mean_squared_error": False,
    "root_mean_squared_error": False,
    "r2_score": True,
}
#: what the monitor passes to the drift notebook; its parameters cell must declare them
DRIFT_INPUTS = ("reference_path", "current_path")
#: what the monitor passes when the drift notebook declares it
DRIFT_OPTIONAL = ("features", "target")
PLACEHOLDERS = ("monitor.labeled_data", "monitor.training_data", "monitor.trigger")
#: who moves ``champion`` after a retrain: the gate, or a person (``mlnb promote``, the MLflow UI)
Promotion = Literal["auto", "manual"]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: Any) -> float:
    """Seconds in ``90``, ``30s``, ``10m``, ``1.5h``, ``7d`` or ``2w``.

    Raises:
        ValueError: the value is not such a duration.
    """
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 30s, 10m, 1h, 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(
                f"'{value}' is not a duration; write a number of seconds or 30s, 10m, 1h, 7d, 2w"
            )
        seconds = float(match[1]) * _UNITS[match[2]]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration a person reads: 45 s, 12 min, 3.5 h, 31 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


Duration = float


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleSpec(_Model):
    """When checks run: every interval, or on a cron expression (UTC)."""

    every: Duration | None = None
    cron: str | None = None

    _every = field_validator("every", mode="before")(
        lambda v: None if v is None else parse_duration(v)
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            from croniter import croniter

            if len(value.split()) != 5 or not croniter.is_valid(value):
                raise ValueError(
                    f"'{value}' is not a cron expression (five fields: minute hour "
                    "day-of-month month day-of-week, e.g. '*/15 * * * *')"
                )
        return value

    @model_validator(mode="after")
    def _one(self) -> ScheduleSpec:
        if self.every is not None and self.cron is not None:
            raise ValueError("give the schedule either 'every' (e.g. 10m) or 'cron', not both")
        if self.every is None and self.cron is None:
            raise ValueError("give the schedule 'every' (e.g. 10m) or 'cron' (e.g. '*/15 * * * *')")
        return self


class WindowSpec(_Model):
    """The predictions a check looks at: the newest ``last`` rows, those of ``since``, or both."""

    last: int | None = Field(default=None, gt=0)
    since: Duration | None = None

    _since = field_validator("since", mode="before")(
        lambda v: None if v is None else parse_duration(v)
    )

    @model_validator(mode="after")
    def _some(self) -> WindowSpec:
        if self.last is None and self.since is None:
            raise ValueError("give the window 'last' (rows), 'since' (e.g. 1d) or both")
        return self


class DriftSpec(_Model):
    """The drift notebook and its parameters."""

    notebook: str
    params: dict[str, Any] = Field(default_factory=dict)
    kernel: str | None = None
    timeout: Duration = 600.0

    _timeout = field_validator("timeout", mode="before")(parse_duration)


class PerformanceSpec(_Model):
    """The live metric on labeled predictions, and the bar it must clear."""

    metric: str
    threshold: float
    min_labels: int = Field(default=50, gt=0)
    greater_is_better: bool | None = None


class RetrainSpec(_Model):
    """The pipeline that retrains the model, and what it gets."""

    pipeline: str
    profile: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    every: Duration | None = None

    _every = field_validator("every", mode="before")(
        lambda v: None if v is None else parse_duration(v)
    )


class LabelsSpec(_Model):
    """When a window's labels are suspicious on their face (``None`` turns a test off)."""

    below_constant: float | None = Field(default=0.2, ge=0)
    max_shift: float | None = Field(default=0.2, gt=0, le=1)


class OnlineSpec(_Model):
    """Promotion on live evidence: the challenger against the champion on live labels.

    The challenger (the version ``alias`` names) becomes champion once it has
    ``min_labels`` labeled rows and beats the champion by ``min_improvement``
    or more with the low end of the ``confidence`` interval above 0; it loses
    the alias when the interval's high end is below 0.
    """

    metric: str
    min_labels: int = Field(default=200, gt=1)
    min_improvement: float = Field(default=0.0, ge=0)
    alias: str = Field(default="challenger", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    confidence: float = Field(default=0.95, gt=0.5, lt=1)


class OnlinePromotion(_Model):
    """``promotion: {online: {...}}``."""

    online: OnlineSpec


def _promotion_kind(value: Any) -> str:
    """Which form of ``promotion:`` a value is (the tags are no keys: see ``read_document``)."""
    return "<online>" if isinstance(value, dict | OnlinePromotion) else "<mode>"


#: ``auto``, ``manual``, or ``{online: ...}``
PromotionSpec = Annotated[
    Annotated[Promotion, Tag("<mode>")] | Annotated[OnlinePromotion, Tag("<online>")],
    Discriminator(_promotion_kind),
]


class MonitorSpec(_Model):
    """A whole monitor file as written in YAML."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    alias: str = "champion"
    schedule: ScheduleSpec
    window: WindowSpec
    drift: DriftSpec | None = None
    performance: PerformanceSpec | None = None
    retrain: RetrainSpec
    triggers: list[TriggerName]
    cooldown: Duration = 0.0
    log_dir: str | None = None  # default: the state folder's predictions/
    labels: LabelsSpec = Field(default_factory=LabelsSpec)
    promotion: PromotionSpec = "auto"

    _cooldown = field_validator("cooldown", mode="before")(
        lambda v: 0.0 if v in (0, "0") else parse_duration(v)
    )


_SECTIONS: dict[str, type[BaseModel]] = {
    "schedule": ScheduleSpec,
    "window": WindowSpec,
    "drift": DriftSpec,
    "performance": PerformanceSpec,
    "retrain": RetrainSpec,
    "labels": LabelsSpec,
}


@dataclass(frozen=True)
class Monitor:
    """A validated monitor spec with its paths resolved.

    Attributes:
        name: the monitor (and its MLflow experiment).
        path: the spec file.
        root: the project root.
        spec: the validated document.
        drift_notebook: the drift notebook, absolute (``None`` without drift checks).
        drift_params: parameters the notebook declares, as the spec gives them.
        drift_kernel: the kernel the notebook runs on.
        drift_declares: every parameter the drift notebook's parameters cell declares.
        pipeline: the retraining pipeline spec, absolute.
        pipeline_spec: the retraining pipeline, validated.
        log_dir: the prediction log folder, absolute (default: ``predictions/``
            in the state folder, where ``mlnb serve`` logs).
        greater_is_better: of the live metric.
    """

    name: str
    path: Path
    root: Path
    spec: MonitorSpec
    drift_notebook: Path | None
    drift_params: Mapping[str, Any]
    drift_kernel: str
    drift_declares: frozenset[str]
    pipeline: Path
    pipeline_spec: PipelineSpec
    log_dir: Path
    greater_is_better: bool

    @property
    def triggers(self) -> frozenset[TriggerName]:
        """The triggers the spec turns on."""
        return frozenset(self.spec.triggers)

    @property
    def online(self) -> OnlineSpec | None:
        """The settings of promotion on live evidence, when the spec promotes that way."""
        promotion = self.spec.promotion
        return promotion.online if isinstance(promotion, OnlinePromotion) else None

    @property
    def gate_moves_champion(self) -> bool:
        """Whether the gate of a retrain moves ``champion`` (``promotion: auto``)."""
        return self.spec.promotion == "auto"


def _owner(loc: KeyPath) -> type[BaseModel]:
    if len(loc) >= 2 and loc[0] in _SECTIONS:
        return _SECTIONS[str(loc[0])]
    if len(loc) >= 2 and loc[0] == "promotion":
        return OnlineSpec if len(loc) >= 3 else OnlinePromotion
    return MonitorSpec


def load_monitor(path: Path | str, *, kernels: Collection[str] | None = None) -> Monitor:
    """Read and validate a monitor spec, and the pipeline it retrains with.

    The checks run in this order, each collecting what it finds: the
    triggers and the sections they need, the live metric, the drift
    notebook and its parameters, the retraining pipeline.

    ``kernels`` are the Jupyter kernels installed, for the retraining
    pipeline's check (see :func:`~mlnb.specs.pipeline.load_pipeline`).

    Raises:
        SpecError: listing every problem found, each with file, line and key.
    """
    path = Path(path)
    spec, lines = read_document(
        path,
        MonitorSpec,
        _owner,
        "monitor spec",
        "a monitor spec is a YAML mapping with 'name', 'model', 'schedule', 'window', "
        "'retrain' and 'triggers'",
    )
    root = project_root(path)
    collect = Collector(str(path), lines)
    _check_triggers(spec, collect)
    greater = _greater_is_better(spec.performance, collect)
    _check_online(spec.promotion, collect)
    drift = _drift_notebook(spec.drift, root, collect)
    pipeline_path = _in_project(spec.retrain.pipeline, root)
    pipeline_spec = _check_pipeline(spec, pipeline_path, collect, kernels)
    if collect.problems:
        raise SpecError(collect.problems, "monitor spec")
    assert pipeline_spec is not None  # every way to None collects a problem
    return Monitor(
        name=spec.name,
        path=path.resolve(),
        root=root,
        spec=spec,
        drift_notebook=drift.notebook,
        drift_params=dict(spec.drift.params) if spec.drift else {},
        drift_kernel=drift.kernel,
        drift_declares=drift.declares,
        pipeline=pipeline_path.resolve(),
        pipeline_spec=pipeline_spec,
        log_dir=_in_project(spec.log_dir, root) if spec.log_dir else prediction_log_dir(root),
        greater_is_better=greater,
    )


def _in_project(value: str, root: Path) -> Path:
    """A path of the spec: relative ones start at the project root."""
    path = Path(value)
    return path if path.is_absolute() else root / path


def _check_triggers(spec: MonitorSpec, collect: Collector) -> None:
    """At least one trigger, none twice, and each with the section it needs."""
    triggers = spec.triggers
    if not triggers:
        collect.add(["triggers"], f"name at least one trigger: {', '.join(TRIGGERS)}")
    for index, trigger in enumerate(triggers):
        if triggers.index(trigger) != index:
            collect.add(["triggers", index], f"trigger '{trigger}' is listed twice")
    if "drift" in triggers and spec.drift is None:
        collect.add(["drift"], "the drift trigger is on: add a drift section naming the notebook")
    if "performance" in triggers and spec.performance is None:
        collect.add(
            ["performance"],
            "the performance trigger is on: add a performance section (metric, threshold)",
        )
    if "schedule" in triggers and spec.retrain.every is None:
        collect.add(
            ["retrain", "every"],
            "the schedule trigger is on: say how old a champion may get, e.g. every: 7d",
        )


def _greater_is_better(performance: PerformanceSpec | None, collect: Collector) -> bool:
    """Whether the live metric improves upward: as the spec says, or as the metric is known."""
    if performance is None:
        return True
    if performance.greater_is_better is not None:
        return performance.greater_is_better
    if performance.metric in LIVE_METRICS:
        return LIVE_METRICS[performance.metric]
    collect.add(
        ["performance", "metric"],
        f"unknown live metric '{performance.metric}'{suggest(performance.metric, LIVE_METRICS)}; "
        f"known: {', '.join(LIVE_METRICS)}",
    )
    return True


def _check_online(promotion: Promotion | OnlinePromotion, collect: Collector) -> None:
    """The metric of promotion on live evidence is a live metric the comparison knows."""
    if not isinstance(promotion, OnlinePromotion):
        return
    metric = promotion.online.metric
    if metric not in LIVE_METRICS:
        collect.add(
            ["promotion", "online", "metric"],
            f"unknown live metric '{metric}'{suggest(metric, LIVE_METRICS)}; "
            f"known: {', '.join(LIVE_METRICS)}",
        )


@dataclass(frozen=True)
class _Drift:
    """What the monitor needs of its drift notebook; the defaults when there is none."""

    notebook: Path | None = None
    kernel: str = "python3"
    declares: frozenset[str] = frozenset()


def _drift_notebook(drift: DriftSpec | None, root: Path, collect: Collector) -> _Drift:
    """The drift notebook can be read and declares what the monitor and the spec give it."""
    if drift is None:
        return _Drift()
    info = notebook_info(root, drift.notebook, ["drift", "notebook"], collect)
    if info is None:
        return _Drift()
    missing = [name for name in DRIFT_INPUTS if name not in info.parameters]
    if missing:
        collect.add(
            ["drift", "notebook"],
            f"the parameters cell of {drift.notebook} must declare "
            f"{', '.join(missing)} (the monitor passes the data files there)",
        )
    for key in drift.params:
        if key in (*DRIFT_INPUTS, *DRIFT_OPTIONAL):
            collect.add(["drift", "params", key], f"'{key}' is set by the monitor")
        elif key not in info.parameters:
            collect.add(
                ["drift", "params", key],
                f"{drift.notebook} does not declare '{key}'{suggest(key, info.parameters)}",
            )
    return _Drift(info.path, drift.kernel or info.kernel_name, frozenset(info.parameters))


def _check_pipeline(
    spec: MonitorSpec, path: Path, collect: Collector, kernels: Collection[str] | None
) -> PipelineSpec | None:
    """The retraining pipeline loads with the retrain params and delivers the model watched.

    ``None`` when it does not load (the problems are collected).
    """
    _check_placeholders(spec.retrain, collect)
    if not path.is_file():
        collect.add(
            ["retrain", "pipeline"],
            f"no such pipeline spec '{spec.retrain.pipeline}' (looked for {path}; "
            "relative paths start at the project root)",
        )
        return None
    overrides = {key: _placeholder_free(value) for key, value in spec.retrain.params.items()}
    try:
        pipeline = load_pipeline(path, spec.retrain.profile, overrides, kernels=kernels)
    except SpecError as exc:
        for problem in exc.problems:
            collect.add(*_as_retrain_problem(problem, spec.retrain))
        return None
    _check_delivers(spec, pipeline.spec.model, collect)
    return pipeline.spec


def _check_placeholders(retrain: RetrainSpec, collect: Collector) -> None:
    """Each ``${...}`` in a retrain parameter is one of :data:`PLACEHOLDERS`."""
    for key, value in retrain.params.items():
        for inside in REFERENCE.findall(value) if isinstance(value, str) else ():
            if inside.strip() not in PLACEHOLDERS:
                collect.add(
                    ["retrain", "params", key],
                    f"unknown placeholder ${{{inside}}}{suggest(inside.strip(), PLACEHOLDERS)}; "
                    f"known: {', '.join('${' + p + '}' for p in PLACEHOLDERS)}",
                )


def _as_retrain_problem(problem: Problem, retrain: RetrainSpec) -> tuple[KeyPath, str]:
    """Where in the monitor spec a problem of the retraining pipeline belongs, and its message.

    A retrain param reaches the pipeline as a ``-p`` override, so a problem of
    one is the param's; an unknown profile is the ``profile``'s; anything else
    is the pipeline's, named with its own file and key.
    """
    if problem.file == COMMAND_LINE and problem.location.startswith("-p "):
        return ["retrain", "params", problem.location.removeprefix("-p ")], problem.message
    if retrain.profile and problem.message.startswith("no profile "):
        return ["retrain", "profile"], problem.message
    where = f"{problem.file}: {problem.location}" if problem.location else problem.file
    return ["retrain", "pipeline"], f"{where}: {problem.message}"


def _check_delivers(spec: MonitorSpec, model: ModelSpec | None, collect: Collector) -> None:
    """The retraining pipeline has a ``model:`` section, for the model the monitor watches."""
    if model is None:
        collect.add(
            ["retrain", "pipeline"],
            f"{spec.retrain.pipeline} has no model: section, so retraining would deliver "
            "no model; add one naming the model and its gate",
        )
    elif model.name != spec.model:
        collect.add(
            ["model"],
            f"the monitor watches '{spec.model}' but {spec.retrain.pipeline} delivers "
            f"'{model.name}'; make them the same model",
        )


def _placeholder_free(value: Any) -> Any:
    """A retrain parameter with its ``${monitor.*}`` placeholders filled by examples."""
    if isinstance(value, str):
        return REFERENCE.sub("placeholder", value)
    return value


def fill_placeholders(params: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """The retrain parameters with ``${monitor.*}`` placeholders replaced by ``values``."""

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return REFERENCE.sub(lambda m: str(values[m.group(1).strip()]), value)
        return value

    return {key: fill(value) for key, value in params.items()}
