"""The stage cache on its own: keys by contents, entries that notice changed outputs.

Real files in a temporary project; no kernel runs here (test_runner covers the
cache inside whole pipeline runs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mlnb._files import hash_path
from mlnb.pipelines.cache import Cache, CacheEntry, stage_key, workspace

KEY_PARTS: dict[str, Any] = {
    "fingerprint": "f" * 64,
    "kernel": "python3",
    "params": {"x": 1, "in_path": "sha256:abc"},
    "inputs": {"in_path": "abc", "data": "def"},
    "outputs": {"out_path": "out.txt", "model": "model"},
}


def key_of(**changes: Any) -> str:
    return stage_key(**{**KEY_PARTS, **changes})


def test_the_key_is_stable_and_ignores_the_order_of_names() -> None:
    reordered = {
        "params": dict(reversed(list(KEY_PARTS["params"].items()))),
        "inputs": dict(reversed(list(KEY_PARTS["inputs"].items()))),
        "outputs": dict(reversed(list(KEY_PARTS["outputs"].items()))),
    }

    assert key_of() == key_of()
    assert key_of(**reordered) == key_of()
    assert len(key_of()) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"fingerprint": "e" * 64},
        {"kernel": "python3.12"},
        {"params": {"x": 2, "in_path": "sha256:abc"}},
        {"inputs": {"in_path": "abd", "data": "def"}},
        {"outputs": {"out_path": "out.csv", "model": "model"}},
    ],
    ids=["notebook", "kernel", "parameter", "input-content", "output-path"],
)
def test_each_part_changes_the_key(change: dict[str, Any]) -> None:
    assert key_of(**change) != key_of()


def test_the_key_follows_contents_not_paths(tmp_path: Path) -> None:
    first, second = tmp_path / "runs" / "1" / "a", tmp_path / "runs" / "2" / "a"
    for folder, text in ((first, "2"), (second, "2")):
        (folder / "part").mkdir(parents=True)
        (folder / "part" / "out.txt").write_text(text)

    def key_for(output: Path) -> str:
        digest = hash_path(output)
        return key_of(params={"in_path": f"sha256:{digest}"}, inputs={"in_path": digest})

    assert key_for(first) == key_for(second)
    (second / "part" / "out.txt").write_text("3")
    assert key_for(first) != key_for(second)


def entry_for(state: Path, key: str = "k" * 64) -> CacheEntry:
    """An entry whose outputs (a file and a folder) exist in a run's workspace under ``state``."""
    stage_dir = workspace(state, "run1") / "a"
    (stage_dir / "model").mkdir(parents=True)
    (stage_dir / "out.txt").write_text("2")
    (stage_dir / "model" / "weights.bin").write_bytes(b"\x00\x01")
    outputs = {"out_path": str(stage_dir / "out.txt"), "model": str(stage_dir / "model")}
    hashes = {name: hash_path(Path(p)) for name, p in outputs.items()}
    return CacheEntry(key, "a", "stage-run", "run1", outputs, hashes)


def test_an_entry_reads_back_as_it_was_put(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = entry_for(tmp_path)

    cache.put(entry)

    assert cache.get(entry.key) == entry
    assert cache.get("0" * 64) is None
    assert workspace(tmp_path, "run1") == tmp_path / "runs" / "run1"
    stored = json.loads((tmp_path / "cache" / f"{entry.key}.json").read_text())
    assert stored["outputs"] == {"out_path": "runs/run1/a/out.txt", "model": "runs/run1/a/model"}


def test_a_moved_state_folder_keeps_its_entries(tmp_path: Path) -> None:
    """Entries name outputs relative to the folder: another machine mounts it elsewhere."""
    Cache(tmp_path / "here").put(entry_for(tmp_path / "here"))
    (tmp_path / "here").rename(tmp_path / "there")

    found = Cache(tmp_path / "there").get("k" * 64)

    assert found is not None
    assert found.outputs["model"] == str(tmp_path / "there" / "runs" / "run1" / "a" / "model")


def test_the_store_is_part_of_the_key() -> None:
    assert key_of(store="http://mlflow:5000") != key_of(store="sqlite:////tmp/other.db")


@pytest.mark.parametrize(
    "change",
    ["file-content", "file-gone", "folder-content", "folder-new-file"],
)
def test_a_changed_output_invalidates_the_entry(tmp_path: Path, change: str) -> None:
    cache = Cache(tmp_path)
    entry = entry_for(tmp_path)
    cache.put(entry)
    out, model = Path(entry.outputs["out_path"]), Path(entry.outputs["model"])

    if change == "file-content":
        out.write_text("27")
    elif change == "file-gone":
        out.unlink()
    elif change == "folder-content":
        (model / "weights.bin").write_bytes(b"\x00\x01\x02")
    else:
        (model / "extra.txt").write_text("x")

    assert cache.get(entry.key) is None


def test_an_output_touched_but_unchanged_keeps_the_entry(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = entry_for(tmp_path)
    cache.put(entry)
    out = Path(entry.outputs["out_path"])
    stat = out.stat()

    os.utime(out, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))

    assert cache.get(entry.key) == entry


@pytest.mark.parametrize("text", ["", "{not json", '{"key": "k"}', "[1, 2]"])
def test_an_unreadable_entry_is_a_miss(tmp_path: Path, text: str) -> None:
    cache = Cache(tmp_path)
    entry = entry_for(tmp_path)
    cache.put(entry)
    entry_file = tmp_path / "cache" / f"{entry.key}.json"
    assert entry_file.exists()

    entry_file.write_text(text)

    assert cache.get(entry.key) is None
