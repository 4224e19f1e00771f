"""Benchmark: ``mlnb sweep`` over a 2×2 grid against the same four runs as ``mlnb run`` commands.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/bench_sweep.py``). In one
run, on this machine, on a copy of the example project (``pipelines/cancer.yaml``,
``--profile ci``) in a temporary folder with its own SQLite store:

* **four commands**: ``mlnb run pipelines/cancer.yaml --profile ci --no-promote
  -p n_estimators=N -p max_depth=D`` for each of the grid's four combinations,
  one after the other, as a shell loop does; then picking the best is still to
  do by hand;
* **one sweep**: ``mlnb sweep pipelines/cancer.yaml --profile ci --no-promote``
  with the grid ``n_estimators: [N1, N2] × max_depth: [D1, D2]`` (``--jobs 1``
  and ``--jobs 2``), which registers the best trial's model (the loop
  registers all four); and ``--jobs 2`` without ``--no-promote``, which also
  gates it (an ``mlflow.evaluate`` of the version and, later, the champion).

Each variant runs in a fresh copy of the project (a cold cache and store), so
neither profits from the other's cache. Figures are wall-clock seconds of the
whole commands, medians of ``--repeat`` rounds, and the number of times the
``prepare`` stage executed (the sweep shares it through the cache). MLflow
telemetry is off; the temporary folder is removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
MLNB = [sys.executable, "-m", "mlnb"]
GRID = {"n_estimators": [5, 20], "max_depth": [2, 4]}
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "NO_COLOR": "1"}


def project(root: Path) -> Path:
    """A copy of the example project whose cancer pipeline sweeps :data:`GRID`."""
    for name in ("pipelines", "notebooks"):
        shutil.copytree(REPO / name, root / name)
    spec = root / "pipelines" / "cancer.yaml"
    text = yaml.safe_load(spec.read_text())
    text["sweep"] = {"params": GRID, "metric": "train.cv_accuracy", "goal": "maximize"}
    spec.write_text(yaml.safe_dump(text, sort_keys=False))
    return spec


def mlnb(root: Path, *args: str) -> None:
    done = subprocess.run([*MLNB, *args], cwd=root, env=ENV, capture_output=True, text=True)
    if done.returncode not in (0, 3):  # 3: the gate kept the champion
        raise SystemExit(f"mlnb {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def executed_prepares(root: Path) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cancer")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`mlnb.stage` = 'prepare' and tags.`mlnb.cached` = 'false'",
    )
    return len(runs)


def four_commands(root: Path) -> None:
    for n in GRID["n_estimators"]:
        for depth in GRID["max_depth"]:
            mlnb(root, "run", "pipelines/cancer.yaml", "--profile", "ci", "--no-promote",
                 "-p", f"n_estimators={n}", "-p", f"max_depth={depth}")  # fmt: skip


def one_sweep(jobs: int, *more: str) -> object:
    def run(root: Path) -> None:
        mlnb(root, "sweep", "pipelines/cancer.yaml", "--profile", "ci", "--jobs", str(jobs), *more)

    return run


def measure(name: str, run: object, repeat: int, scratch: Path) -> tuple[float, int]:
    seconds, prepares = [], 0
    for index in range(repeat):
        root = scratch / f"{name.replace(' ', '-')}-{index}"
        project(root)
        started = time.perf_counter()
        run(root)  # type: ignore[operator]
        seconds.append(time.perf_counter() - started)
        prepares = executed_prepares(root)
    return statistics.median(seconds), prepares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="rounds of each variant")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="mlnb-bench-sweep-"))
    more = (args.repeat, scratch)
    try:
        rows = [
            ("4 × mlnb run --no-promote", measure("loop", four_commands, *more)),
            ("sweep --no-promote --jobs 1", measure("s1", one_sweep(1, "--no-promote"), *more)),
            ("sweep --no-promote --jobs 2", measure("s2", one_sweep(2, "--no-promote"), *more)),
            ("sweep --jobs 2 (+ the gate)", measure("s2g", one_sweep(2), *more)),
        ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    baseline = rows[0][1][0]
    print(
        f"2×2 grid over the example (--profile ci), median of {args.repeat}, {os.cpu_count()} cores"
    )
    print(f"{'':32} {'seconds':>8} {'vs loop':>8} {'prepare executed':>17}")
    for name, (seconds, prepares) in rows:
        print(f"{name:32} {seconds:8.1f} {seconds / baseline:7.2f}× {prepares:17d}")


if __name__ == "__main__":
    main()
