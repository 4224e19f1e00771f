"""Pipeline specs: YAML in, validated frozen models out, every problem at once.

Validation happens here, once, at the boundary: past :func:`load_pipeline`
the rest of mlnb trusts what it gets. Errors are collected rather than raised
one by one, so a user fixes a spec in one pass; each names the file, the line,
the key path (``stages.train.params.C``) and, where a near name exists, says
"did you mean".

The path rule, stated once (and in the README): relative paths in a spec
resolve against the *project root* — the directory that holds the
``pipelines/`` folder the spec lives in, or the spec's own directory when it
is not in a folder named ``pipelines``. The working directory of ``mlnb run``
does not matter.

Parameters flow to a stage by name, in rising precedence: the notebook's own
defaults, the pipeline's ``params`` (for every stage whose parameters cell
declares the name), the stage's ``params``, the chosen profile, then
``-p key=value`` from the command line. A profile or command-line key written
``stage.key`` targets one stage only. A name that no parameters cell declares
is an error, never silently ignored.

:func:`load_pipeline` reads the spec (:mod:`mlnb.specs.document`), then runs
the checks of :class:`_Validation` one after the other, each a named step
that collects what it finds. Stages run in waves (:class:`Pipeline`), ordered
by :class:`graphlib.TopologicalSorter`, whose :class:`graphlib.CycleError`
names a cycle. The installed Jupyter kernels come in as an argument: the spec
layer starts nothing and imports no Jupyter machinery.
"""

from __future__ import annotations

import graphlib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from mlnb import notebook as nbmod
from mlnb.errors import NotebookError, Problem, SpecError, suggest
from mlnb.specs.document import Collector, KeyPath, Lines, load_yaml, read_document
from mlnb.specs.sweep import Dimension, SearchSpec, SweepSpec

REFERENCE = re.compile(r"\$\{([^}]*)\}")
STAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
#: a resource a stage needs, as ``dask worker --resources NAME=N`` names it
RESOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
COMMAND_LINE = "command line"


class StageSpec(BaseModel):
    """One stage as written in YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    notebook: str
    params: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    needs: list[str] = Field(default_factory=list)
    timeout: float | None = Field(default=None, gt=0)
    kernel: str | None = None
    cache: bool = True
    #: abstract resources the stage needs on a Dask worker (``{GPU: 1}``)
    resources: dict[str, Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )

    @field_validator("resources")
    @classmethod
    def _resource_names(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [name for name in value if not RESOURCE_NAME.match(name)]
        if bad:
            raise ValueError(
                f"resource name '{bad[0]}' is not one a Dask worker can offer: use letters, "
                "digits, '_', '.' and '-', starting with a letter (e.g. GPU), as in "
                "'dask worker --resources GPU=1'"
            )
        return value


#: what a pipeline's model is, for ``mlflow.models.evaluate``
ModelType = Literal["classifier", "regressor"]

#: metrics of ``mlflow.models.evaluate``'s default evaluator, and whether greater is better
METRICS: dict[ModelType, dict[str, bool]] = {
    "classifier": {
        "accuracy_score": True,
        "f1_score": True,
        "precision_score": True,
        "recall_score": True,
        "roc_auc": True,
        "precision_recall_auc": True,
        "log_loss": False,
        "true_positives": True,
        "false_positives": False,
        "true_negatives": True,
        "false_negatives": False,
    },
    "regressor": {
        "mean_absolute_error": False,
        "mean_squared_error": False,
        "root_mean_squared_error": False,
        "sum_on_target": True,
        "mean_on_target": True,
        "r2_score": True,
        "max_error": False,
        "mean_absolute_percentage_error": False,
    },
}


#: the table formats the gate reads (holdout and golden data)
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


class GoldenSpec(BaseModel):
    """A curated table every challenger is also scored on, and the least it must score there.

    ``floor`` maps metrics of ``mlflow.models.evaluate`` to their bar (the
    least for a metric where greater is better, the most for one where it is not).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    floor: dict[str, float] = Field(default_factory=dict)


class ModelSpec(BaseModel):
    """What a pipeline delivers, and the gate that promotes it.

    ``tolerance`` is how much worse (in the metric's units) than the champion a
    challenger may score on evidence that is not its own holdout data: the
    champion's holdout, and the ``golden`` data.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    stage: str
    artifact: str = "model"
    type: ModelType = "classifier"
    holdout: str
    training_data: str | None = None
    target: str
    metric: str
    greater_is_better: bool | None = None
    threshold: float | None = None
    min_improvement: float = Field(default=0.0, ge=0)
    tolerance: float = Field(default=0.02, ge=0)
    golden: GoldenSpec | None = None


class PipelineSpec(BaseModel):
    """A whole pipeline file as written in YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    stages: dict[str, StageSpec]
    model: ModelSpec | None = None
    sweep: SweepSpec | None = None

    @field_validator("stages")
    @classmethod
    def _some_stages(cls, value: dict[str, StageSpec]) -> dict[str, StageSpec]:
        if not value:
            raise ValueError("a pipeline needs at least one stage")
        return value


_PIPELINE_NAME: TypeAdapter[str] = TypeAdapter(Annotated[str, PipelineSpec.model_fields["name"]])


def is_pipeline_name(name: str) -> bool:
    """Whether ``name`` is what a pipeline spec's ``name`` key accepts.

    The rule is :class:`PipelineSpec`'s own field, so a name valid here is
    valid in a spec and the other way round: letters, digits, ``_``, ``.`` and
    ``-``, starting with a letter or digit (never a path of several parts).
    """
    try:
        _PIPELINE_NAME.validate_python(name)
    except ValidationError:
        return False
    return True


@dataclass(frozen=True)
class Reference:
    """``${stage.outputs.name}``: an output of an upstream stage."""

    stage: str
    output: str


@dataclass(frozen=True)
class Stage:
    """A validated stage, ready to run.

    Attributes:
        name: the stage name.
        notebook: absolute path of the stage notebook.
        params: parameters the pipeline passes (before references resolve),
            already merged by precedence; keys are declared by the notebook.
        outputs: output name → path relative to the stage's workspace folder.
        upstream: stages this one depends on, by reference or ``needs``.
        timeout: seconds the whole stage may take, or ``None``.
        kernel: the Jupyter kernel name.
        cache: whether an unchanged stage may be reused from the cache.
        info: what was read from the notebook.
        resources: abstract resources the stage needs (``{"GPU": 1.0}``), which
            only a Dask worker offering them may run it with; empty for none.
    """

    name: str
    notebook: Path
    params: Mapping[str, Any]
    outputs: Mapping[str, str]
    upstream: tuple[str, ...]
    timeout: float | None
    kernel: str
    cache: bool
    info: nbmod.NotebookInfo
    resources: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline: stages in a runnable (topological) order.

    The order is in waves: first every stage that needs no other, in the
    order the spec lists them; then every stage whose upstream stages are all
    in earlier waves, again in spec order; and so on.

    Attributes:
        name: the pipeline name (also the MLflow experiment name).
        path: the spec file.
        root: the project root, against which relative paths resolve.
        stages: stages in that order.
        profile: the profile applied, if any.
        overrides: ``-p`` values applied, as given.
        spec: the spec as parsed.
    """

    name: str
    path: Path
    root: Path
    stages: tuple[Stage, ...]
    profile: str | None
    overrides: Mapping[str, Any]
    spec: PipelineSpec = field(repr=False)

    def stage(self, name: str) -> Stage:
        """Return the stage called ``name``."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)


def project_root(spec_path: Path) -> Path:
    """Return the project root for a spec file (see the module docstring)."""
    folder = spec_path.resolve().parent
    return folder.parent if folder.name == "pipelines" else folder


def project_path(value: Any, root: Path) -> Path | None:
    """The existing file or folder a parameter value names, relative to the project root.

    ``None`` for anything else: non-text, absolute paths, content hashes
    (``sha256:...``), the root itself, or a path that does not exist.
    """
    if not isinstance(value, str) or not value or "\n" in value or len(value) > 4096:
        return None
    path = Path(value)
    if path.is_absolute() or value.startswith("sha256:"):
        return None
    candidate = root / path
    try:
        return candidate if candidate.exists() and candidate.resolve() != root.resolve() else None
    except OSError:
        return None


def references(value: Any) -> list[tuple[str, str]]:
    """Return the ``(inside, whole)`` texts of every ``${...}`` within a value."""
    found: list[tuple[str, str]] = []
    if isinstance(value, str):
        found.extend((m.group(1), m.group(0)) for m in REFERENCE.finditer(value))
    elif isinstance(value, Mapping):
        for item in value.values():
            found.extend(references(item))
    elif isinstance(value, list | tuple):
        for item in value:
            found.extend(references(item))
    return found


def parse_reference(text: str) -> Reference | None:
    """Parse ``stage.outputs.name``; ``None`` when it has another shape."""
    parts = text.strip().split(".")
    if len(parts) == 3 and parts[1] == "outputs" and all(parts):
        return Reference(parts[0], parts[2])
    return None


def substitute(value: Any, outputs: Mapping[str, Mapping[str, str]]) -> Any:
    """Replace every reference in ``value`` with the upstream output path.

    A value that is exactly one reference becomes the path; a reference inside
    a longer string is interpolated.
    """
    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value)
        if whole:
            ref = parse_reference(whole.group(1))
            assert ref is not None
            return outputs[ref.stage][ref.output]

        def repl(match: re.Match[str]) -> str:
            ref = parse_reference(match.group(1))
            assert ref is not None
            return str(outputs[ref.stage][ref.output])

        return REFERENCE.sub(repl, value)
    if isinstance(value, Mapping):
        return {key: substitute(item, outputs) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [substitute(item, outputs) for item in value]
    return value


def parse_assignments(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings from the command line; values are YAML scalars.

    Raises:
        SpecError: for a pair without ``=``.
    """
    result: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            problems.append(
                Problem(COMMAND_LINE, f"-p {pair}", "expected key=value, for example -p C=0.5")
            )
            continue
        try:
            result[key.strip()] = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            result[key.strip()] = raw
    if problems:
        raise SpecError(problems)
    return result


def _display(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def read_spec(path: Path) -> tuple[PipelineSpec, Lines]:
    """Parse and structurally validate a pipeline spec file.

    Raises:
        SpecError: with every structural problem found.
    """

    def owner(loc: KeyPath) -> type[BaseModel]:
        if len(loc) >= 3 and loc[0] == "stages":
            return StageSpec
        if len(loc) >= 3 and loc[0] == "model" and loc[1] == "golden":
            return GoldenSpec
        if len(loc) >= 2 and loc[0] == "model":
            return ModelSpec
        if len(loc) >= 5 and loc[:3] == ("sweep", "search", "space"):
            return Dimension
        if len(loc) >= 3 and loc[:2] == ("sweep", "search"):
            return SearchSpec
        if len(loc) >= 2 and loc[0] == "sweep":
            return SweepSpec
        return PipelineSpec

    return read_document(
        path,
        PipelineSpec,
        owner,
        "pipeline spec",
        "a pipeline spec is a YAML mapping with 'name' and 'stages'",
    )


def load_pipeline(
    path: Path | str,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    kernels: Collection[str] | None = None,
) -> Pipeline:
    """Read, validate and resolve a pipeline spec.

    The checks run in this order, each collecting what it finds (the order
    of the problems in the error): stage names and notebooks, pipeline
    ``params``, stage ``params`` and ``outputs``, the profile and the keys of
    every profile and of ``-p``, ``needs`` and references, the ``model:``
    section, the ``sweep:`` section, kernels, cycles.

    Args:
        path: the spec file.
        profile: a profile name from the spec's ``profiles``.
        overrides: ``-p`` values; ``key`` for every stage declaring it,
            ``stage.key`` for one stage.
        kernels: the Jupyter kernels installed, to check each stage's against
            (:func:`mlnb.engine.kernelspecs.installed_kernels`); ``None`` checks none.

    Returns:
        The validated :class:`Pipeline`.

    Raises:
        SpecError: listing every problem found, each with file and key.
    """
    path = Path(path)
    spec, lines = read_spec(path)
    check = _Validation(spec, project_root(path), Collector(str(path), lines), overrides)
    check.read_notebooks()
    check.pipeline_params()
    check.stage_params_and_outputs()
    chosen = check.chosen_profile(profile)
    check.profile_and_command_line_keys()
    upstream = check.dependencies()
    check.model_section()
    check.sweep_section()
    check.stage_kernels(kernels)
    order = check.stage_order(upstream)
    if check.collect.problems:
        raise SpecError(check.collect.problems)
    return Pipeline(
        name=spec.name,
        path=path.resolve(),
        root=check.root,
        stages=tuple(check.stage(name, chosen, upstream[name]) for name in order),
        profile=profile,
        overrides=check.overrides,
        spec=_with_golden_resolved(spec, check.root),
    )


class _Source(NamedTuple):
    """A value given to a stage, and where the spec (or the command line) gives it."""

    loc: KeyPath
    value: Any
    file: str | None = None


class _Validation:
    """One pipeline spec checked against its notebooks: the state the checks share.

    Each check adds what it finds to ``collect`` and goes on, so that one
    :class:`SpecError` lists every problem. ``infos`` holds the notebooks
    that could be read; a stage whose notebook could not is reported once,
    and the checks that need its parameters pass over it rather than raise
    false alarms.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        root: Path,
        collect: Collector,
        overrides: Mapping[str, Any] | None,
    ) -> None:
        self.spec = spec
        self.root = root
        self.collect = collect
        self.overrides: dict[str, Any] = dict(overrides or {})
        self.infos: dict[str, nbmod.NotebookInfo] = {}

    def read_notebooks(self) -> None:
        """Each stage's name is valid and its notebook can be read."""
        for name, stage in self.spec.stages.items():
            if not STAGE_NAME.match(name):
                self.collect.add(
                    ["stages", name],
                    "a stage name starts with a letter or '_' and holds "
                    "only letters, digits, '_' and '-'",
                )
            info = notebook_info(
                self.root, stage.notebook, ["stages", name, "notebook"], self.collect
            )
            if info is not None:
                self.infos[name] = info

    def declares(self, stage: str, key: str) -> bool:
        """Whether ``stage`` declares ``key``; yes for an unread notebook (reported already)."""
        info = self.infos.get(stage)
        return info is None or key in info.parameters

    def declared_anywhere(self) -> list[str]:
        """Every parameter some stage declares, for "did you mean"."""
        return sorted({p for info in self.infos.values() for p in info.parameters})

    def only_outputs(self, key: str) -> bool:
        """Whether every stage whose notebook declares ``key`` uses it as an output."""
        declaring = [n for n, info in self.infos.items() if key in info.parameters]
        return bool(declaring) and all(key in self.spec.stages[n].outputs for n in declaring)

    def targets(self, key: str, stage: str) -> bool:
        """Whether a profile or ``-p`` key (``key`` or ``stage.key``) reaches ``stage``."""
        target, dot, _name = key.partition(".")
        if dot:
            return target == stage
        info = self.infos.get(stage)
        return info is not None and key in info.parameters

    def pipeline_params(self) -> None:
        """Each pipeline ``params`` name reaches at least one stage, as a parameter."""
        for key in self.spec.params:
            if not any(self.declares(stage, key) for stage in self.spec.stages):
                self.collect.add(
                    ["params", key],
                    f"no stage's parameters cell declares '{key}'"
                    f"{suggest(key, self.declared_anywhere())}",
                )
            elif self.only_outputs(key):
                self.collect.add(
                    ["params", key],
                    f"'{key}' is an output of every stage declaring it; outputs are set by mlnb",
                )

    def stage_params_and_outputs(self) -> None:
        """Each stage's ``params`` and ``outputs`` are declared by its notebook."""
        for name, stage in self.spec.stages.items():
            info = self.infos.get(name)
            if info is None:
                continue
            if (stage.params or stage.outputs) and not info.has_parameters_cell:
                self.collect.add(
                    ["stages", name, "notebook"],
                    f"{_display(info.path, self.root)} has no cell tagged 'parameters'; tag the "
                    "cell holding the defaults (JupyterLab: property inspector → Cell Tags)",
                )
                continue
            for key in stage.params:
                self._stage_param(name, key, info)
            for key, value in stage.outputs.items():
                self._stage_output(name, stage, key, value, info)

    def _stage_param(self, name: str, key: str, info: nbmod.NotebookInfo) -> None:
        if key not in info.parameters:
            self.collect.add(
                ["stages", name, "params", key],
                f"'{key}' is not declared in the parameters cell of "
                f"{_display(info.path, self.root)}{suggest(key, list(info.parameters))}",
            )

    def _stage_output(
        self, name: str, stage: StageSpec, key: str, value: str, info: nbmod.NotebookInfo
    ) -> None:
        where = ["stages", name, "outputs", key]
        if key not in info.parameters:
            self.collect.add(
                where,
                f"output '{key}' must be declared in the parameters cell of "
                f"{_display(info.path, self.root)} (it receives the output's path)"
                f"{suggest(key, list(info.parameters))}",
            )
        posix = PurePosixPath(value)
        if posix.is_absolute() or ".." in posix.parts or not value.strip():
            self.collect.add(
                where,
                "an output is a relative path inside the stage's workspace, "
                f"without '..' (got '{value}')",
            )
        if key in stage.params:
            self.collect.add(where, f"'{key}' is both a parameter and an output of stage '{name}'")

    def chosen_profile(self, profile: str | None) -> dict[str, Any]:
        """The values of the profile asked for; none when no profile is (or it is unknown)."""
        if profile is None:
            return {}
        if profile in self.spec.profiles:
            return dict(self.spec.profiles[profile])
        names = sorted(self.spec.profiles)
        hint = suggest(profile, names) or (
            f"; profiles: {', '.join(names)}" if names else "; the spec defines no 'profiles'"
        )
        self.collect.add(["profiles"], f"no profile '{profile}'{hint}")
        return {}

    def profile_and_command_line_keys(self) -> None:
        """Every key of every profile, and of ``-p``, reaches a stage parameter."""
        for profile, values in self.spec.profiles.items():
            for key in values:
                self._override_key(key, ["profiles", profile, key])
        for key in self.overrides:
            self._override_key(key, [f"-p {key}"], file=COMMAND_LINE)

    def _override_key(self, key: str, loc: KeyPath, file: str | None = None) -> None:
        target, dot, name = key.partition(".")
        if dot:
            self._one_stage_key(target, name, loc, file)
        elif self.infos and not any(key in info.parameters for info in self.infos.values()):
            self.collect.add(
                loc,
                f"no stage's parameters cell declares '{key}'"
                f"{suggest(key, self.declared_anywhere())}",
                file,
            )
        elif self.only_outputs(key):
            self.collect.add(
                loc,
                f"'{key}' is an output of every stage declaring it; outputs are set by mlnb",
                file,
            )

    def _one_stage_key(self, target: str, name: str, loc: KeyPath, file: str | None) -> None:
        """A ``stage.key`` override: the stage exists and declares the key, not as an output."""
        if target not in self.spec.stages:
            self.collect.add(
                loc, f"unknown stage '{target}'{suggest(target, self.spec.stages)}", file
            )
            return
        info = self.infos.get(target)
        if info is not None and name not in info.parameters:
            self.collect.add(
                loc,
                f"stage '{target}' does not declare '{name}'{suggest(name, list(info.parameters))}",
                file,
            )
        if name in self.spec.stages[target].outputs:
            self.collect.add(
                loc, f"'{name}' is an output of stage '{target}'; outputs are set by mlnb", file
            )

    def dependencies(self) -> dict[str, set[str]]:
        """Each stage's upstream stages, from its ``needs`` and the references it is given."""
        upstream: dict[str, set[str]] = {}
        for name, stage in self.spec.stages.items():
            upstream[name] = self._needs(name, stage)
            for source in self._sources(name, stage):
                upstream[name] |= self._referenced(name, source)
        return upstream

    def _needs(self, name: str, stage: StageSpec) -> set[str]:
        needed = set()
        for index, need in enumerate(stage.needs):
            if need not in self.spec.stages:
                self.collect.add(
                    ["stages", name, "needs", index],
                    f"unknown stage '{need}'{suggest(need, self.spec.stages)}",
                )
            elif need == name:
                self.collect.add(["stages", name, "needs", index], "a stage cannot need itself")
            else:
                needed.add(need)
        return needed

    def _sources(self, name: str, stage: StageSpec) -> list[_Source]:
        """The values given to a stage, where its references may be, in precedence order."""
        spec = self.spec
        return [
            *(_Source(["stages", name, "params", k], v) for k, v in stage.params.items()),
            *(
                _Source(["profiles", p, k], v)
                for p, values in spec.profiles.items()
                for k, v in values.items()
                if self.targets(k, name)
            ),
            *(
                _Source([f"-p {k}"], v, COMMAND_LINE)
                for k, v in self.overrides.items()
                if self.targets(k, name)
            ),
            *(_Source(["params", k], v) for k, v in spec.params.items() if self.declares(name, k)),
        ]

    def _referenced(self, name: str, source: _Source) -> set[str]:
        """The stages whose outputs a value references; each bad reference is collected."""
        found = set()
        for inner, whole in references(source.value):
            ref = parse_reference(inner)
            problem = self._reference_problem(name, ref, whole)
            if problem is not None:
                self.collect.add(source.loc, problem, source.file)
            elif ref is not None:
                found.add(ref.stage)
        return found

    def _reference_problem(self, name: str, ref: Reference | None, whole: str) -> str | None:
        """What is wrong with a reference written ``whole`` in stage ``name``, if anything."""
        stages = self.spec.stages
        if ref is None:
            return f"'{whole}' is not a reference of the form ${{stage.outputs.name}}"
        if ref.stage not in stages:
            return f"'{whole}' names unknown stage '{ref.stage}'{suggest(ref.stage, stages)}"
        outs = stages[ref.stage].outputs
        if ref.output not in outs:
            hint = suggest(ref.output, outs) or (
                f"; its outputs: {', '.join(outs)}"
                if outs
                else f"; stage '{ref.stage}' declares no outputs"
            )
            return f"'{whole}': stage '{ref.stage}' has no output '{ref.output}'{hint}"
        if ref.stage == name:
            return f"'{whole}': a stage cannot use its own output"
        return None

    def model_section(self) -> None:
        """The ``model:`` section, when there is one: its stage, outputs and metric exist."""
        if self.spec.model is not None:
            _check_model(self.spec, self.spec.model, self.collect)
            if self.spec.model.golden is not None:
                _check_golden(self.spec.model, self.spec.model.golden, self.root, self.collect)

    def sweep_section(self) -> None:
        """The ``sweep:`` section: each swept key reaches a stage, the metric's stage exists."""
        sweep = self.spec.sweep
        if sweep is None:
            return
        where = ["sweep", "params"] if sweep.search is None else ["sweep", "search", "space"]
        for key in sweep.keys:
            self._override_key(key, [*where, key])
        if sweep.stage not in self.spec.stages:
            self.collect.add(
                ["sweep", "metric"],
                f"unknown stage '{sweep.stage}'{suggest(sweep.stage, self.spec.stages)}; "
                "the metric is written <stage>.<metric its notebook logs>",
            )

    def stage_kernels(self, kernels: Collection[str] | None) -> None:
        """Each stage's kernel (its own, or its notebook's) is one of ``kernels``."""
        installed = frozenset(k.lower() for k in kernels or ())
        if not installed:
            return
        for name, stage in self.spec.stages.items():
            kernel = self._kernel(name, stage)
            if kernel and kernel.lower() not in installed:
                where = ["stages", name, "kernel" if stage.kernel else "notebook"]
                hint = suggest(kernel, installed) or "; installed: " + ", ".join(sorted(installed))
                self.collect.add(where, f"no Jupyter kernel named '{kernel}' is installed{hint}")

    def _kernel(self, name: str, stage: StageSpec) -> str | None:
        """A stage's kernel: its own, or its notebook's (``None`` for an unread notebook)."""
        info = self.infos.get(name)
        return stage.kernel or (info.kernel_name if info is not None else None)

    def stage_order(self, upstream: Mapping[str, Collection[str]]) -> list[str]:
        """The stages in the order they run (see :class:`Pipeline`); a cycle is collected."""
        names = list(self.spec.stages)
        try:
            return _waves(names, upstream)
        except graphlib.CycleError:
            cycle = _cycle(names, upstream)
            self.collect.add(
                ["stages", cycle[0]],
                f"the stages form a cycle: {' → '.join([*cycle, cycle[0]])}; "
                "remove a reference or a 'needs' entry to break it",
            )
            return []

    def stage(self, name: str, profile: Mapping[str, Any], upstream: Collection[str]) -> Stage:
        """The validated stage ``name``, its parameters merged by precedence."""
        stage, info = self.spec.stages[name], self.infos[name]
        return Stage(
            name=name,
            notebook=info.path,
            params=_merged_params(name, self.spec, info, profile, self.overrides),
            outputs=dict(stage.outputs),
            upstream=tuple(sorted(upstream)),
            timeout=stage.timeout,
            kernel=stage.kernel or info.kernel_name,
            cache=stage.cache,
            info=info,
            resources=dict(stage.resources),
        )


def _waves(names: Sequence[str], upstream: Mapping[str, Collection[str]]) -> list[str]:
    """``names`` in waves of ready stages, each wave in the order of ``names``.

    Raises:
        graphlib.CycleError: naming one cycle.
    """
    position = {name: index for index, name in enumerate(names)}
    sorter = graphlib.TopologicalSorter({name: upstream[name] for name in names})
    sorter.prepare()
    order: list[str] = []
    while sorter.is_active():
        wave = sorted(sorter.get_ready(), key=position.__getitem__)
        order.extend(wave)
        sorter.done(*wave)
    return order


def _cycle(names: Sequence[str], upstream: Mapping[str, Collection[str]]) -> list[str]:
    """One cycle among the stages, each needing the next; empty when there is none.

    :meth:`graphlib.TopologicalSorter.prepare` looks for a cycle by walking
    from each node, in the order the nodes were added, to its successors,
    and its :class:`graphlib.CycleError` names the cycle in the walk's
    direction. Given the stages in spec order, each with the stages it needs
    (in name order) as its successors, the walk starts at the first stage the
    spec lists and goes towards what it needs, so the cycle reads as the
    message does (``a → b``: a needs b) and is the same one whatever the
    order of the sets in ``upstream``.
    """
    needs: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name in names:
        needs.add(name)
    for name in names:
        for need in sorted(upstream[name]):
            needs.add(need, name)  # a successor of ``name`` here: a stage it needs
    try:
        needs.prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1][:-1])
    return []


def _check_model(spec: PipelineSpec, model: ModelSpec, collect: Collector) -> None:
    """The ``model:`` section: its stage, holdout reference and metric exist."""
    if model.stage not in spec.stages:
        collect.add(
            ["model", "stage"], f"unknown stage '{model.stage}'{suggest(model.stage, spec.stages)}"
        )
    _check_output(spec, "holdout", model.holdout, "holdout data", collect)
    if model.training_data is not None:
        _check_output(spec, "training_data", model.training_data, "training data", collect)
    known = METRICS[model.type]
    if model.metric not in known and model.greater_is_better is None:
        collect.add(
            ["model", "metric"],
            f"'{model.metric}' is not a metric mlflow.evaluate computes for a {model.type}"
            f"{suggest(model.metric, known)} (for a metric of your own, set greater_is_better)",
        )


def _check_golden(model: ModelSpec, golden: GoldenSpec, root: Path, collect: Collector) -> None:
    """The golden data is a table in the project, and each floor names a metric the gate has."""
    path = _in_root(golden.path, root)
    if path.suffix not in TABLE_SUFFIXES:
        collect.add(
            ["model", "golden", "path"],
            f"'{golden.path}' is not a table the gate reads ({', '.join(TABLE_SUFFIXES)})",
        )
    elif not path.is_file():
        collect.add(
            ["model", "golden", "path"],
            f"no such file '{golden.path}' (looked for {path}; relative paths start at the "
            "project root); the golden data is a curated table with the target column",
        )
    known = METRICS[model.type]
    for metric in golden.floor:
        custom = metric == model.metric and model.greater_is_better is not None
        if metric not in known and not custom:
            collect.add(
                ["model", "golden", "floor", metric],
                f"'{metric}' is not a metric mlflow.evaluate computes for a {model.type}"
                f"{suggest(metric, known)}",
            )


def _in_root(value: str, root: Path) -> Path:
    """A path of the spec: relative ones start at the project root."""
    path = Path(value)
    return path if path.is_absolute() else root / path


def _with_golden_resolved(spec: PipelineSpec, root: Path) -> PipelineSpec:
    """The spec with its golden data's path absolute, as the gate reads it from anywhere."""
    model = spec.model
    if model is None or model.golden is None:
        return spec
    golden = model.golden.model_copy(update={"path": str(_in_root(model.golden.path, root))})
    return spec.model_copy(update={"model": model.model_copy(update={"golden": golden})})


def _whole_reference(value: str) -> Reference | None:
    """The reference ``value`` is, when it is exactly one ``${stage.outputs.name}``."""
    whole = REFERENCE.fullmatch(value.strip())
    return parse_reference(whole.group(1)) if whole else None


def _check_output(spec: PipelineSpec, key: str, value: str, what: str, collect: Collector) -> None:
    """A ``model:`` key that names one stage output, ``${stage.outputs.name}``."""
    ref = _whole_reference(value)
    if ref is None:
        collect.add(
            ["model", key], f"the {what} is an output of a stage, written ${{stage.outputs.name}}"
        )
    elif ref.stage not in spec.stages:
        collect.add(["model", key], f"unknown stage '{ref.stage}'{suggest(ref.stage, spec.stages)}")
    elif ref.output not in spec.stages[ref.stage].outputs:
        outs = spec.stages[ref.stage].outputs
        collect.add(
            ["model", key],
            f"stage '{ref.stage}' has no output '{ref.output}'"
            f"{suggest(ref.output, outs) or '; its outputs: ' + ', '.join(outs)}",
        )


def output_reference(value: str) -> Reference:
    """The stage output a validated ``model:`` key (``holdout``, ``training_data``) names.

    Raises:
        ValueError: ``value`` is not one ``${stage.outputs.name}`` (a spec not validated).
    """
    ref = _whole_reference(value)
    if ref is None:
        raise ValueError(f"'{value}' is not a reference of the form ${{stage.outputs.name}}")
    return ref


def holdout_reference(model: ModelSpec) -> Reference:
    """The stage output a validated ``model:`` section names as its holdout data."""
    return output_reference(model.holdout)


def notebook_info(
    root: Path, notebook: str, where: KeyPath, collect: Collector
) -> nbmod.NotebookInfo | None:
    """Inspect the notebook a spec names at ``where``; a problem is collected, not raised."""
    raw = Path(notebook)
    nb_path = raw if raw.is_absolute() else root / raw
    if not nb_path.is_file():
        siblings = (
            [str(p.relative_to(root)) for p in nb_path.parent.glob("*.ipynb")]
            if nb_path.parent.is_dir() and nb_path.parent.is_relative_to(root)
            else []
        )
        collect.add(
            where,
            f"no such notebook '{notebook}' (looked for {nb_path}; "
            f"relative paths start at the project root){suggest(notebook, siblings)}",
        )
        return None
    if nb_path.suffix != ".ipynb":
        collect.add(where, f"'{notebook}' is not a .ipynb notebook")
        return None
    try:
        return nbmod.inspect(nb_path)
    except NotebookError as exc:
        collect.add(where, exc.message)
        return None


def _merged_params(
    name: str,
    spec: PipelineSpec,
    info: nbmod.NotebookInfo,
    profile: Mapping[str, Any],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    stage = spec.stages[name]
    merged: dict[str, Any] = {}
    for layer in (spec.params, stage.params, profile, overrides):
        # plain keys first, so that 'stage.key' wins within a layer
        for key, value in sorted(layer.items(), key=lambda item: "." in item[0]):
            target, dot, param = key.partition(".")
            if dot:
                if target == name:
                    merged[param] = value
            elif key in info.parameters and key not in stage.outputs:
                merged[key] = value
    return merged
