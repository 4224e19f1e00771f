"""A project's pipelines as the panel draws them: stages, edges and the problems of each spec.

The problems are :func:`mlnb.delivery.lint.check_spec`'s, so the panel says
what ``mlnb check`` says. A spec that parses is drawn even when it has
problems (a missing notebook, a reference to a stage that is not there), so
the problem shows where it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlnb.delivery.lint import check_spec
from mlnb.errors import NotFoundError, SpecError
from mlnb.pipelines.locate import project_pipelines
from mlnb.specs.pipeline import PipelineSpec, parse_reference, read_spec, references

#: how one stage comes to depend on another
EdgeKind = Literal["output", "needs"]


@dataclass(frozen=True)
class Edge:
    """``source`` runs before ``target``: ``target`` reads its output, or ``needs`` it."""

    source: str
    target: str
    kind: EdgeKind
    output: str | None = None  # the output read, for ``kind == "output"``
    param: str | None = None  # the parameter of ``target`` that reads it


@dataclass(frozen=True)
class StageNode:
    """A stage as drawn: its notebook (relative to the project) and its declared outputs."""

    name: str
    notebook: str
    outputs: list[str]
    level: int  # its topological level: 0 for a stage that needs no other


@dataclass
class PipelineView:
    """One spec in ``pipelines/``: what it is named, its DAG, its profiles, its problems."""

    id: str  # the file's stem, as ``mlnb run <id>`` takes it
    spec: str  # the file, relative to the project
    name: str | None = None
    description: str = ""
    profiles: list[str] = field(default_factory=list)
    stages: list[StageNode] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    model: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def spec_of(root: Path, pipeline: str) -> Path:
    """The spec file of pipeline ``pipeline`` (a file stem in ``pipelines/``).

    Raises:
        NotFoundError: no such pipeline, naming those there are.
    """
    specs = {path.stem: path for path in project_pipelines(root)}
    if pipeline not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise NotFoundError(f"no pipeline '{pipeline}' in {root / 'pipelines'} (there: {known})")
    return specs[pipeline]


def pipelines(root: Path) -> list[PipelineView]:
    """Every pipeline spec of the project, each drawn as far as it parses."""
    return [view(root, path) for path in project_pipelines(root)]


def view(root: Path, path: Path) -> PipelineView:
    """One spec: its DAG and every problem ``mlnb check`` reports for it."""
    found = PipelineView(id=path.stem, spec=path.relative_to(root).as_posix())
    found.problems = [
        {"file": p.file, "location": p.location, "message": p.message, "text": str(p)}
        for p in check_spec(path)
    ]
    try:
        spec, _ = read_spec(path)
    except SpecError:
        return found  # not even its shape: the problems say why
    found.name, found.description = spec.name, spec.description
    found.profiles = list(spec.profiles)
    found.model = spec.model.name if spec.model else None
    found.edges = edges(spec)
    found.stages = _nodes(spec, found.edges)
    return found


def edges(spec: PipelineSpec) -> list[Edge]:
    """The wiring of a spec: each ``${stage.outputs.x}`` a stage reads, each of its ``needs``."""
    found: list[Edge] = []
    for name, stage in spec.stages.items():
        wired: set[str] = set()
        for param, value in stage.params.items():
            for inside, _ in references(value):
                ref = parse_reference(inside)
                if ref is not None and ref.stage in spec.stages:
                    found.append(Edge(ref.stage, name, "output", ref.output, param))
                    wired.add(ref.stage)
        found += [
            Edge(need, name, "needs")
            for need in stage.needs
            if need in spec.stages and need not in wired
        ]
    return found


def _nodes(spec: PipelineSpec, wiring: list[Edge]) -> list[StageNode]:
    """The stages with their topological level (a stage in a cycle keeps the level it reached)."""
    upstream: dict[str, set[str]] = {name: set() for name in spec.stages}
    for edge in wiring:
        upstream[edge.target].add(edge.source)
    level: dict[str, int] = {}
    for _ in range(len(upstream)):  # a longest-path relaxation, bounded for a cycle
        for name, before in upstream.items():
            level[name] = max((level.get(b, 0) + 1 for b in before), default=0)
    return [
        StageNode(name, stage.notebook, list(stage.outputs), level[name])
        for name, stage in spec.stages.items()
    ]
