"""Benchmark: ``mlnb run --executor dask`` against the local executor, and scaling over workers.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/bench_dask.py``). In one
run, on this machine, in a throwaway project in a temporary folder (its own
SQLite MLflow store and state folder), against real Dask clusters of
``dask scheduler`` and ``dask worker`` processes on 127.0.0.1
(:class:`tests.dask_cluster.DaskCluster`, one thread per worker):

* the 3-stage chain of bench_run.py's trivial notebook (a parameters cell and
  ``x + 1``), ``force`` so every stage executes, on the local executor (kernels
  of this process) and on a cluster of 2 workers; the difference over 3 is what
  Dask adds to a stage (the client, the task, the notebook's bytes sent, the
  executed notebook read back from the shared state folder);
* 8 independent stages each sleeping ``--sleep`` seconds, ``jobs=8``, on 1 worker
  and on 2 workers: how well stages spread over the workers.

Every run starts with a warm-up run (imports, the SQLite schema, each worker's
kernel pool), not timed. A timed run includes creating its executor, as
``mlnb run`` does. Figures are wall-clock seconds, medians of ``--repeat``
rounds (``--scale-repeat`` for the 8 stages). MLflow telemetry is off, so nothing
leaves the machine; the temporary folder is removed and every process started
is stopped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]  # bench_run's helpers, tests.dask_cluster

from bench_run import chain_spec, trivial_notebook  # noqa: E402

if TYPE_CHECKING:
    from mlnb.pipelines.results import PipelineResult

NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
CHAIN = 3  # stages of the chain
SPREAD = 8  # independent stages of the scaling pipeline
OVERHEAD_AIM = 0.3  # seconds Dask may add to a stage


def sleep_notebook(path: Path, seconds: float) -> None:
    """A parameters cell ``seconds = ...`` and a cell sleeping that long."""
    nb = new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell(f"seconds = {seconds}")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell("import time\ntime.sleep(seconds)")]
    nbformat.write(nb, str(path))


def spread_spec(root: Path, stages: int, seconds: float) -> Path:
    """``stages`` independent stages of the sleeping notebook."""
    lines = ["name: spread", "stages:"]
    for i in range(stages):
        lines += [
            f"  s{i}:",
            "    notebook: notebooks/sleep.ipynb",
            f"    params: {{seconds: {seconds}}}",
        ]
    path = root / "pipelines" / f"sleep{stages}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def timed(run: Callable[[], object], repeat: int) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls of ``run``, after one untimed warm-up call."""
    run()
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        rounds.append(time.perf_counter() - start)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the chain (median)")
    parser.add_argument("--scale-repeat", type=int, default=1, help="rounds of the 8 stages")
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds each of the 8 sleeps")
    args = parser.parse_args()

    for name in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[name]  # the throwaway project's own store, <root>/mlflow.db
    os.environ.pop("MLNB_STATE_DIR", None)  # and its own state folder, <root>/.mlnb
    os.environ.update(NO_TELEMETRY)  # before MLflow is imported: nothing leaves the machine

    load = os.getloadavg()[0]  # other work on the machine shows in every figure
    root = Path(tempfile.mkdtemp(prefix="mlnb-bench-dask-")).resolve()
    print(f"project in {root}", file=sys.stderr)
    try:
        figures = measure(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(args, load, **figures)


def measure(root: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    (root / "notebooks").mkdir()
    (root / "pipelines").mkdir()
    trivial_notebook(root / "notebooks" / "trivial.ipynb")
    sleep_notebook(root / "notebooks" / "sleep.ipynb", args.sleep)
    chain = chain_spec(root, CHAIN)
    spread = spread_spec(root, SPREAD, args.sleep)

    from mlnb.pipelines.executors import dask_executor
    from mlnb.pipelines.runner import run_pipeline
    from mlnb.store import state_dir
    from tests.dask_cluster import DaskCluster

    def on_dask(address: str, spec: Path, jobs: int = 1) -> Callable[[], PipelineResult]:
        def run() -> PipelineResult:
            executor = dask_executor(address, state_dir(root))
            return run_pipeline(spec, executor=executor, force=True, jobs=jobs)

        return run

    def checked(run: Callable[[], PipelineResult], stages: int) -> Callable[[], PipelineResult]:
        def call() -> PipelineResult:
            result = run()
            ran = [s.status for s in result.stages]
            assert len(ran) == stages and "cached" not in ran, ran  # every stage executed
            return result

        return call

    local = timed(checked(lambda: run_pipeline(chain, force=True), CHAIN), args.repeat)
    with DaskCluster(root / "dask-2", workers=2, threads=1) as two:
        dask_chain = timed(checked(on_dask(two.address, chain), CHAIN), args.repeat)
        two_workers = timed(
            checked(on_dask(two.address, spread, jobs=SPREAD), SPREAD), args.scale_repeat
        )
    with DaskCluster(root / "dask-1", workers=1, threads=1) as one:
        on_dask(one.address, chain)()  # warms the worker's imports and kernel pool
        one_worker = timed(
            checked(on_dask(one.address, spread, jobs=SPREAD), SPREAD), args.scale_repeat
        )
    return {
        "local": local,
        "dask_chain": dask_chain,
        "one_worker": one_worker,
        "two_workers": two_workers,
    }


def report(
    args: argparse.Namespace,
    load: float,
    local: list[float],
    dask_chain: list[float],
    one_worker: list[float],
    two_workers: list[float],
) -> None:
    local_s, dask_s = statistics.median(local), statistics.median(dask_chain)
    overhead = (dask_s - local_s) / CHAIN
    one_s, two_s = statistics.median(one_worker), statistics.median(two_workers)
    ideal = SPREAD * args.sleep
    print(
        textwrap.dedent(f"""
        mlnb run --executor dask vs the local executor, Dask workers of 1 thread
        ({os.cpu_count()} CPUs, load {load:.2f} at the start); medians of {args.repeat} rounds of
        the chain and {args.scale_repeat} of the {SPREAD} stages, each after a warm-up run
    """).strip()
    )
    print(f"{'':50} {'local':>10} {'dask, 2 w':>10}")
    print(f"{f'{CHAIN}-stage chain, trivial notebook, one run':50} {local_s:9.3f}s {dask_s:9.3f}s")
    print(f"{'  per stage':50} {local_s / CHAIN:9.3f}s {dask_s / CHAIN:9.3f}s")
    print(f"{'  overhead per stage of dask, (dask - local) / 3':50} {'':>10} {overhead:+9.3f}s")
    print()
    print(f"{'':50} {'1 worker':>10} {'2 workers':>10}")
    label = f"{SPREAD} independent stages sleeping {args.sleep:g} s, jobs={SPREAD}"
    print(f"{label:50} {one_s:9.3f}s {two_s:9.3f}s")
    print(f"{'  beyond the sleeps (x stages / workers)':50} {one_s - ideal:9.3f}s", end=" ")
    print(f"{two_s - ideal / 2:9.3f}s")
    print(f"{'  speedup of 2 workers over 1':50} {'':>10} {one_s / two_s:9.2f}x")
    verdict = "within" if overhead <= OVERHEAD_AIM else "NOT within"
    print(
        f"dask's overhead per stage is {overhead:+.3f} s: {verdict} the aim of {OVERHEAD_AIM} s "
        f"per stage;\n2 workers run the {SPREAD} stages {one_s / two_s:.2f}x as fast as 1 "
        "(aim: close to 2x)"
    )


if __name__ == "__main__":
    main()
