"""Where a pipeline's spec is: a file, a name in ``pipelines/``, or the live deployment's copy.

Every command that takes a pipeline finds it here, and so does everything that
looks for specs in a project (``mlnb check``, ``mlnb test``, ``mlnb build``):

- :func:`spec_path` turns what a user typed (``cancer``, ``pipelines/cancer.yaml``)
  into a spec file;
- :func:`spec_kind` tells pipeline specs from monitor specs and other YAML;
- :func:`project_pipelines` lists a project's pipeline specs, and
  :func:`monitors_of` the monitor specs that retrain with one;
- :func:`live_spec` finds the spec of the version ``mlnb deploy`` made live
  (under ``.mlnb/deployments/<pipeline>/``), which retrains instead of the
  working copy; :func:`load_pipeline` and :func:`load_monitor` read specs with the kernels
  installed here.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from mlnb.engine.kernelspecs import installed_kernels
from mlnb.errors import SpecError
from mlnb.specs import monitor as monitor_specs
from mlnb.specs import pipeline as specs
from mlnb.specs.document import read_yaml
from mlnb.specs.monitor import Monitor
from mlnb.specs.pipeline import Pipeline
from mlnb.store import state_dir

SpecKind = Literal["pipeline", "monitor"]
#: top-level keys that make a YAML file in pipelines/ a monitor spec
MONITOR_KEYS = ("triggers", "retrain", "schedule")
#: the pointer file naming a pipeline's live deployed version
LIVE = "LIVE"
#: the file of an unpacked bundle that names its spec (see :mod:`mlnb.delivery.bundle`)
MANIFEST = "manifest.json"


def load_pipeline(
    path: Path | str, profile: str | None = None, overrides: Mapping[str, Any] | None = None
) -> Pipeline:
    """Read and validate a pipeline spec, its stages' kernels checked against those installed.

    See :func:`mlnb.specs.pipeline.load_pipeline`, which this calls with
    :func:`~mlnb.engine.kernelspecs.installed_kernels`.

    Raises:
        SpecError: listing every problem found, each with file and key.
    """
    return specs.load_pipeline(path, profile, overrides, kernels=installed_kernels())


def load_monitor(path: Path | str) -> Monitor:
    """Read and validate a monitor spec, its pipeline's kernels checked against those installed.

    Raises:
        SpecError: listing every problem found, each with file, line and key.
    """
    return monitor_specs.load_monitor(path, kernels=installed_kernels())


def spec_path(value: str | Path, root: Path | None = None) -> Path:
    """A spec path, or a pipeline name found as ``pipelines/<name>.yaml`` under ``root``."""
    path = Path(value)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    for suffix in (".yaml", ".yml"):
        candidate = (root or Path()) / "pipelines" / f"{value}{suffix}"
        if candidate.exists():
            return candidate
    return path


def spec_kind(path: Path) -> SpecKind | None:
    """``pipeline`` or ``monitor`` for an mlnb spec file, ``None`` for other YAML."""
    try:
        data = read_yaml(path, "pipeline spec")
    except SpecError:
        return "pipeline"  # let the spec reader report it
    if not isinstance(data, dict):
        # a list or a scalar is a broken spec; an empty file is not one
        return "pipeline" if data is not None else None
    keys = [str(k) for k in data]
    if any(k in keys for k in MONITOR_KEYS) and "stages" not in keys:
        return "monitor"
    if "stages" in keys or difflib.get_close_matches("stages", keys):
        return "pipeline"
    return None


def project_pipelines(root: Path) -> list[Path]:
    """The pipeline specs in ``<root>/pipelines`` (monitor specs and other YAML left out)."""
    folder = root / "pipelines"
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.glob("*.y*ml")) if spec_kind(p) == "pipeline"]


def monitors_of(pipeline: Pipeline) -> list[Path]:
    """The monitor specs beside a pipeline spec whose ``retrain.pipeline`` names it."""
    found = []
    for candidate in sorted(pipeline.path.parent.glob("*.y*ml")):
        try:
            data = read_yaml(candidate, "monitor spec")
        except SpecError:
            continue
        retrain = data.get("retrain") if isinstance(data, dict) else None
        named = retrain.get("pipeline") if isinstance(retrain, dict) else None
        if isinstance(named, str):
            target = Path(named) if Path(named).is_absolute() else pipeline.root / named
            if target.resolve() == pipeline.path:
                found.append(candidate)
    return found


def deployments_dir(root: Path) -> Path:
    """Where deployed versions are unpacked: ``.mlnb/deployments/<pipeline>/<version>/``."""
    return state_dir(root) / "deployments"


def live_spec(root: Path, pipeline: str) -> tuple[str, Path] | None:
    """The live version of ``pipeline`` and its spec, or ``None`` when none is live."""
    folder = deployments_dir(root) / pipeline
    try:
        version = (folder / LIVE).read_text().strip()
        manifest = json.loads((folder / version / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    named = manifest.get("pipeline") if isinstance(manifest, dict) else None
    if not isinstance(named, str):
        return None
    spec = folder / version / named
    return (version, spec) if spec.is_file() else None
