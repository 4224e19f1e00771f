"""Workspaces and the stage cache, both in the state folder a team may share.

Every pipeline run writes into its own workspace, ``runs/<run id>/`` in the
state folder (:func:`mlnb.store.state_dir`: ``MLNB_STATE_DIR``, else the
project's ``.mlnb``), so concurrent runs never overwrite each other: a
stage's outputs go to ``<workspace>/<stage>/`` and its executed notebook to
``<workspace>/<stage>.ipynb``.

A stage's cache key hashes what determines its result: the notebook's
fingerprint (sources, not outputs), the kernel, the resolved parameters, the
*contents* of its input files — upstream outputs and project files named by a
parameter — never their run-specific paths, and the MLflow store the producing
run is in (an entry made against another store names a run this one lacks). A
hit reuses the outputs by hard link (a copy across file systems) into the new
workspace, after checking that the producer's files are still there and
unchanged. Entries are small JSON files written atomically, their outputs
relative to the state folder, so concurrent runs — on every machine that
mounts the folder — share the cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlnb._files import hash_path, write_atomic

CACHE_VERSION = 2


def workspace(state: Path, run_id: str) -> Path:
    """The workspace of pipeline run ``run_id`` in state folder ``state``."""
    return state / "runs" / run_id


def stage_key(
    fingerprint: str,
    kernel: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    store: str = "",
) -> str:
    """The cache key of a stage execution.

    Args:
        fingerprint: the notebook fingerprint.
        kernel: the kernel name.
        params: parameters with run-specific paths replaced by content hashes.
        inputs: input name → content hash.
        outputs: output name → relative path.
        store: the MLflow store the stage runs are recorded in (no user info).
    """
    payload = {
        "v": CACHE_VERSION,
        "store": store,
        "notebook": fingerprint,
        "kernel": kernel,
        "params": params,
        "inputs": dict(sorted(inputs.items())),
        "outputs": dict(sorted(outputs.items())),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """A stage execution that can be reused.

    Attributes:
        key: the cache key.
        stage: the stage name.
        run_id: the MLflow run of the stage execution that produced it.
        parent_run_id: the pipeline run it belonged to.
        outputs: output name → absolute path of the produced file or folder.
        hashes: output name → content hash.
    """

    key: str
    stage: str
    run_id: str
    parent_run_id: str
    outputs: Mapping[str, str]
    hashes: Mapping[str, str]


class Cache:
    """The stage cache in state folder ``state``."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.dir = state / "cache"

    def _file(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def get(self, key: str) -> CacheEntry | None:
        """Return a valid entry for ``key``: its outputs exist and are unchanged."""
        try:
            data = json.loads(self._file(key).read_text())
            fields = {k: data[k] for k in CacheEntry.__dataclass_fields__}
            fields["outputs"] = {n: str(self.state / p) for n, p in data["outputs"].items()}
            entry = CacheEntry(**fields)
            stats = data.get("stats", {})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        for name, location in entry.outputs.items():
            path = Path(location)
            if not path.exists():
                return None
            if _stat(path) != stats.get(name) and hash_path(path) != entry.hashes.get(name):
                return None
        return entry

    def put(self, entry: CacheEntry) -> None:
        """Record an entry, atomically; its outputs must lie in the state folder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        data = {
            **entry.__dict__,
            "outputs": {
                name: Path(p).relative_to(self.state).as_posix()
                for name, p in entry.outputs.items()
            },
            "hashes": dict(entry.hashes),
            "stats": {name: _stat(Path(p)) for name, p in entry.outputs.items()},
            "created": time.time(),
        }
        write_atomic(self._file(entry.key), json.dumps(data, indent=1))


def _stat(path: Path) -> list[int]:
    if path.is_dir():
        files = [p.stat() for p in path.rglob("*") if p.is_file()]
        return [
            len(files),
            sum(s.st_size for s in files),
            max((s.st_mtime_ns for s in files), default=0),
        ]
    stat = path.stat()
    return [1, stat.st_size, stat.st_mtime_ns]
