"""``mlnb check``: lint pipeline and monitor specs and notebooks for CI.

Everything ``mlnb run`` would refuse is reported here without running
anything, plus what only hurts later: a stage notebook without a
``parameters`` cell, notebooks committed with outputs (``fix`` strips them)
and absolute paths in parameters (they tie a pipeline to one machine).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path, PureWindowsPath
from typing import Any

from mlnb import notebook as nbmod
from mlnb.errors import NotebookError, Problem, SpecError
from mlnb.pipelines.locate import load_monitor, load_pipeline, spec_kind

SPEC_SUFFIXES = (".yaml", ".yml")
SKIP_DIRS = {
    ".git",
    ".mlnb",
    ".venv",
    "venv",
    "node_modules",
    "__pycache__",
    "mlartifacts",
    "mlruns",
    "dist",
    "build",
    ".ipynb_checkpoints",
}


def _walk(folder: Path, pattern: str) -> list[Path]:
    found = []
    for path in sorted(folder.rglob(pattern)):
        parts = path.relative_to(folder).parts[:-1]
        if not any(p in SKIP_DIRS or p.startswith(".") for p in parts):
            found.append(path)
    return found


def discover(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Return the pipeline specs and notebooks under ``paths``.

    A folder contributes the specs in its ``pipelines/`` folder (or itself, if
    it is one) and every notebook below it, outside hidden and build folders.
    A path named like a spec is a spec, even when it is a folder (the spec
    reader says it cannot be read).
    """
    specs: list[Path] = []
    notebooks: list[Path] = []
    for path in paths:
        if path.is_dir() and path.suffix not in SPEC_SUFFIXES:
            spec_dir = path if path.name == "pipelines" else path / "pipelines"
            if spec_dir.is_dir():
                specs += [p for p in sorted(spec_dir.glob("*.y*ml")) if spec_kind(p)]
            notebooks += _walk(path, "*.ipynb")
        elif path.suffix in SPEC_SUFFIXES:
            specs.append(path)
        elif path.suffix == ".ipynb":
            notebooks.append(path)
    return list(dict.fromkeys(specs)), list(dict.fromkeys(notebooks))


def _absolute_paths(value: Any) -> list[str]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("/", "~")) or (PureWindowsPath(text).drive and len(text) > 2):
            return [text]
        return []
    if isinstance(value, Mapping):
        return [p for item in value.values() for p in _absolute_paths(item)]
    if isinstance(value, list | tuple):
        return [p for item in value for p in _absolute_paths(item)]
    return []


def check_spec(path: Path) -> list[Problem]:
    """Every problem of one spec: a monitor spec, or a pipeline and its notebooks' parameters."""
    if spec_kind(path) == "monitor":
        try:
            load_monitor(path)
        except SpecError as exc:
            return exc.problems
        return []
    try:
        pipeline = load_pipeline(path)
    except SpecError as exc:
        return exc.problems
    problems: list[Problem] = []
    spec = pipeline.spec
    where = str(path)
    sections: list[tuple[str, Mapping[str, Any]]] = [("params", spec.params)]
    sections += [(f"stages.{n}.params", s.params) for n, s in spec.stages.items()]
    sections += [(f"profiles.{n}", values) for n, values in spec.profiles.items()]
    for prefix, values in sections:
        for key, value in values.items():
            for text in _absolute_paths(value):
                problems.append(
                    Problem(
                        where,
                        f"{prefix}.{key}",
                        f"absolute path '{text}' ties the pipeline to one machine; "
                        "use a path relative to the project root",
                    )
                )
    for stage in pipeline.stages:
        if not stage.info.has_parameters_cell:
            problems.append(
                Problem(
                    where,
                    f"stages.{stage.name}.notebook",
                    f"{stage.notebook.name} has no cell tagged 'parameters'; "
                    "tag the cell holding its defaults so the pipeline can "
                    "set them",
                )
            )
    return problems


def check_notebook(path: Path, fix: bool = False) -> list[Problem]:
    """Problems of one notebook: unreadable, or committed with outputs."""
    try:
        info = nbmod.inspect(path)
    except NotebookError as exc:
        return [Problem(str(path), "", exc.message.removeprefix(f"{exc.path}: "))]
    if not info.cells_with_outputs:
        return []
    if fix:
        nbmod.strip_outputs(path)
        return []
    cells = ", ".join(str(c) for c in info.cells_with_outputs[:8])
    more = "…" if len(info.cells_with_outputs) > 8 else ""
    return [
        Problem(
            str(path),
            f"cells {cells}{more}",
            "committed with outputs; strip them with 'mlnb check --fix'",
        )
    ]


def check_paths(paths: Iterable[Path | str], fix: bool = False) -> list[Problem]:
    """Lint specs and notebooks under ``paths``; with ``fix``, strip notebook outputs.

    Returns:
        Every problem found (empty when all is well).
    """
    given = [Path(p) for p in paths]
    problems = [Problem(str(p), "", "no such file or folder") for p in given if not p.exists()]
    specs, notebooks = discover(p for p in given if p.exists())
    for notebook in notebooks:
        problems += check_notebook(notebook, fix=fix)
    for spec in specs:
        problems += check_spec(spec)
    return problems
