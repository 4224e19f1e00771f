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
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlnb import notebook as nbmod
from mlnb.errors import NotebookError, Problem, SpecError, suggest
from mlnb.specs.document import Collector, Lines, load_yaml, read_document

REFERENCE = re.compile(r"\$\{([^}]*)\}")
STAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
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


#: metrics of ``mlflow.models.evaluate``'s default evaluator, and whether greater is better
METRICS: dict[str, dict[str, bool]] = {
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


class ModelSpec(BaseModel):
    """What a pipeline delivers, and the gate that promotes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    stage: str
    artifact: str = "model"
    type: Literal["classifier", "regressor"] = "classifier"
    holdout: str
    training_data: str | None = None
    target: str
    metric: str
    greater_is_better: bool | None = None
    threshold: float | None = None
    min_improvement: float = Field(default=0.0, ge=0)


class PipelineSpec(BaseModel):
    """A whole pipeline file as written in YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    stages: dict[str, StageSpec]
    model: ModelSpec | None = None

    @field_validator("stages")
    @classmethod
    def _some_stages(cls, value: dict[str, StageSpec]) -> dict[str, StageSpec]:
        if not value:
            raise ValueError("a pipeline needs at least one stage")
        return value


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


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline: stages in a runnable (topological) order.

    Attributes:
        name: the pipeline name (also the MLflow experiment name).
        path: the spec file.
        root: the project root, against which relative paths resolve.
        stages: stages in topological order.
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

    def owner(loc: list[Any]) -> type[BaseModel]:
        if len(loc) >= 3 and loc[0] == "stages":
            return StageSpec
        if len(loc) >= 2 and loc[0] == "model":
            return ModelSpec
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

    Args:
        path: the spec file.
        profile: a profile name from the spec's ``profiles``.
        overrides: ``-p`` values; ``key`` for every stage declaring it,
            ``stage.key`` for one stage.
        kernels: the Jupyter kernels installed, to check each stage's against
            (:func:`mlnb.engine.kernels.installed_kernels`); ``None`` checks none.

    Returns:
        The validated :class:`Pipeline`.

    Raises:
        SpecError: listing every problem found, each with file and key.
    """
    path = Path(path)
    spec, lines = read_spec(path)
    root = project_root(path)
    overrides = dict(overrides or {})
    collect = Collector(str(path), lines)

    infos: dict[str, nbmod.NotebookInfo] = {}
    for name, stage in spec.stages.items():
        if not STAGE_NAME.match(name):
            collect.add(
                ["stages", name],
                "a stage name starts with a letter or '_' and holds "
                "only letters, digits, '_' and '-'",
            )
        info = _notebook_info(root, name, stage, collect)
        if info is not None:
            infos[name] = info

    def declares(stage_name: str, key: str) -> bool:
        info = infos.get(stage_name)
        return info is None or key in info.parameters  # unknown notebook: reported already

    all_declared = sorted({p for info in infos.values() for p in info.parameters})

    # pipeline params: every name must reach at least one stage
    for key in spec.params:
        if not any(declares(s, key) for s in spec.stages):
            collect.add(
                ["params", key],
                f"no stage's parameters cell declares '{key}'{suggest(key, all_declared)}",
            )
        elif _only_outputs(key, spec, infos):
            collect.add(
                ["params", key],
                f"'{key}' is an output of every stage declaring it; outputs are set by mlnb",
            )

    # stage params and outputs must be declared by the stage's notebook
    for name, stage in spec.stages.items():
        info = infos.get(name)
        if info is None:
            continue
        declared = list(info.parameters)
        if (stage.params or stage.outputs) and not info.has_parameters_cell:
            collect.add(
                ["stages", name, "notebook"],
                f"{_display(info.path, root)} has no cell tagged 'parameters'; tag the cell "
                "holding the defaults (JupyterLab: property inspector → Cell Tags)",
            )
            continue
        for key in stage.params:
            if key not in info.parameters:
                collect.add(
                    ["stages", name, "params", key],
                    f"'{key}' is not declared in the parameters cell of "
                    f"{_display(info.path, root)}{suggest(key, declared)}",
                )
        for key, value in stage.outputs.items():
            if key not in info.parameters:
                collect.add(
                    ["stages", name, "outputs", key],
                    f"output '{key}' must be declared in the parameters cell of "
                    f"{_display(info.path, root)} (it receives the output's path)"
                    f"{suggest(key, declared)}",
                )
            posix = PurePosixPath(value)
            if posix.is_absolute() or ".." in posix.parts or not value.strip():
                collect.add(
                    ["stages", name, "outputs", key],
                    "an output is a relative path inside the stage's workspace, "
                    f"without '..' (got '{value}')",
                )
            if key in stage.params:
                collect.add(
                    ["stages", name, "outputs", key],
                    f"'{key}' is both a parameter and an output of stage '{name}'",
                )

    # profile and command-line overrides
    chosen: dict[str, Any] = {}
    if profile is not None:
        if profile not in spec.profiles:
            names = sorted(spec.profiles)
            hint = suggest(profile, names) or (
                f"; profiles: {', '.join(names)}" if names else "; the spec defines no 'profiles'"
            )
            collect.add(["profiles"], f"no profile '{profile}'{hint}")
        else:
            chosen = dict(spec.profiles[profile])
    for prof_name, values in spec.profiles.items():
        for key in values:
            _check_override(key, ["profiles", prof_name, key], spec, infos, all_declared, collect)
    for key in overrides:
        _check_override(key, [f"-p {key}"], spec, infos, all_declared, collect, file=COMMAND_LINE)

    # references and the dependency graph
    upstream: dict[str, set[str]] = {name: set() for name in spec.stages}
    for name, stage in spec.stages.items():
        for index, need in enumerate(stage.needs):
            if need not in spec.stages:
                collect.add(
                    ["stages", name, "needs", index],
                    f"unknown stage '{need}'{suggest(need, spec.stages)}",
                )
            elif need == name:
                collect.add(["stages", name, "needs", index], "a stage cannot need itself")
            else:
                upstream[name].add(need)
        sources: list[tuple[list[Any], Any, str | None]] = [
            (["stages", name, "params", k], v, None) for k, v in stage.params.items()
        ]
        sources += [
            (["profiles", p, k], v, None)
            for p, vals in spec.profiles.items()
            for k, v in vals.items()
            if _targets(k, name, infos)
        ]
        sources += [
            ([f"-p {k}"], v, COMMAND_LINE) for k, v in overrides.items() if _targets(k, name, infos)
        ]
        sources += [(["params", k], v, None) for k, v in spec.params.items() if declares(name, k)]
        for loc, value, file in sources:
            for inner, whole in references(value):
                ref = parse_reference(inner)
                if ref is None:
                    collect.add(
                        loc,
                        f"'{whole}' is not a reference of the form ${{stage.outputs.name}}",
                        file,
                    )
                elif ref.stage not in spec.stages:
                    collect.add(
                        loc,
                        f"'{whole}' names unknown stage '{ref.stage}'"
                        f"{suggest(ref.stage, spec.stages)}",
                        file,
                    )
                elif ref.output not in spec.stages[ref.stage].outputs:
                    outs = spec.stages[ref.stage].outputs
                    hint = suggest(ref.output, outs) or (
                        f"; its outputs: {', '.join(outs)}"
                        if outs
                        else f"; stage '{ref.stage}' declares no outputs"
                    )
                    collect.add(
                        loc,
                        f"'{whole}': stage '{ref.stage}' has no output '{ref.output}'{hint}",
                        file,
                    )
                elif ref.stage == name:
                    collect.add(loc, f"'{whole}': a stage cannot use its own output", file)
                else:
                    upstream[name].add(ref.stage)

    if spec.model is not None:
        _check_model(spec, collect)

    kernels = frozenset(k.lower() for k in kernels or ())
    for name, stage in spec.stages.items():
        kernel = stage.kernel or (infos[name].kernel_name if name in infos else None)
        if kernel and kernels and kernel.lower() not in kernels:
            where = ["stages", name, "kernel"] if stage.kernel else ["stages", name, "notebook"]
            collect.add(
                where,
                f"no Jupyter kernel named '{kernel}' is installed"
                f"{suggest(kernel, kernels) or '; installed: ' + ', '.join(sorted(kernels))}",
            )

    order, cycle = _topological(spec.stages, upstream)
    if cycle:
        path_text = " → ".join([*cycle, cycle[0]])
        collect.add(
            ["stages", cycle[0]],
            f"the stages form a cycle: {path_text}; "
            "remove a reference or a 'needs' entry to break it",
        )

    if collect.problems:
        raise SpecError(collect.problems)

    stages = tuple(
        Stage(
            name=name,
            notebook=infos[name].path,
            params=_merged_params(name, spec, infos[name], chosen, overrides),
            outputs=dict(spec.stages[name].outputs),
            upstream=tuple(sorted(upstream[name])),
            timeout=spec.stages[name].timeout,
            kernel=spec.stages[name].kernel or infos[name].kernel_name,
            cache=spec.stages[name].cache,
            info=infos[name],
        )
        for name in order
    )
    return Pipeline(
        name=spec.name,
        path=path.resolve(),
        root=root,
        stages=stages,
        profile=profile,
        overrides=overrides,
        spec=spec,
    )


def _check_model(spec: PipelineSpec, collect: Collector) -> None:
    """The ``model:`` section: its stage, holdout reference and metric exist."""
    model = spec.model
    assert model is not None
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


def _check_output(spec: PipelineSpec, key: str, value: str, what: str, collect: Collector) -> None:
    """A ``model:`` key that names one stage output, ``${stage.outputs.name}``."""
    ref = None
    whole = REFERENCE.fullmatch(value.strip())
    if whole:
        ref = parse_reference(whole.group(1))
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
    """The stage output a validated ``model:`` key (``holdout``, ``training_data``) names."""
    ref = parse_reference(REFERENCE.fullmatch(value.strip()).group(1))  # type: ignore[union-attr]
    assert ref is not None
    return ref


def holdout_reference(model: ModelSpec) -> Reference:
    """The stage output a validated ``model:`` section names as its holdout data."""
    return output_reference(model.holdout)


def _notebook_info(
    root: Path, name: str, stage: StageSpec, collect: Collector
) -> nbmod.NotebookInfo | None:
    return notebook_info(root, stage.notebook, ["stages", name, "notebook"], collect)


def notebook_info(
    root: Path, notebook: str, where: list[Any], collect: Collector
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


def _targets(key: str, stage: str, infos: Mapping[str, nbmod.NotebookInfo]) -> bool:
    target, dot, _name = key.partition(".")
    if dot:
        return target == stage
    info = infos.get(stage)
    return info is not None and key in info.parameters


def _check_override(
    key: str,
    loc: list[Any],
    spec: PipelineSpec,
    infos: Mapping[str, nbmod.NotebookInfo],
    all_declared: list[str],
    collect: Collector,
    file: str | None = None,
) -> None:
    target, dot, name = key.partition(".")
    if dot:
        if target not in spec.stages:
            collect.add(loc, f"unknown stage '{target}'{suggest(target, spec.stages)}", file)
            return
        info = infos.get(target)
        if info is not None and name not in info.parameters:
            collect.add(
                loc,
                f"stage '{target}' does not declare '{name}'{suggest(name, list(info.parameters))}",
                file,
            )
        if name in spec.stages[target].outputs:
            collect.add(
                loc, f"'{name}' is an output of stage '{target}'; outputs are set by mlnb", file
            )
        return
    if infos and not any(key in info.parameters for info in infos.values()):
        collect.add(
            loc, f"no stage's parameters cell declares '{key}'{suggest(key, all_declared)}", file
        )
    elif _only_outputs(key, spec, infos):
        collect.add(
            loc, f"'{key}' is an output of every stage declaring it; outputs are set by mlnb", file
        )


def _only_outputs(key: str, spec: PipelineSpec, infos: Mapping[str, nbmod.NotebookInfo]) -> bool:
    """Whether every stage whose notebook declares ``key`` uses it as an output."""
    declaring = [n for n, info in infos.items() if key in info.parameters]
    return bool(declaring) and all(key in spec.stages[n].outputs for n in declaring)


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


def _topological(
    names: Iterable[str], upstream: Mapping[str, set[str]]
) -> tuple[list[str], list[str]]:
    """Return (order, cycle): a stable topological order, or one cycle found."""
    names = list(names)
    remaining = {n: set(upstream[n]) & set(names) for n in names}
    order: list[str] = []
    while True:
        ready = [n for n in names if n in remaining and not remaining[n]]
        if not ready:
            break
        for n in ready:
            order.append(n)
            del remaining[n]
        for deps in remaining.values():
            deps.difference_update(ready)
    if not remaining:
        return order, []
    # walk one cycle among what is left
    start = next(n for n in names if n in remaining)
    seen: list[str] = []
    node = start
    while node not in seen:
        seen.append(node)
        node = sorted(remaining[node])[0]
    return order, seen[seen.index(node) :]
