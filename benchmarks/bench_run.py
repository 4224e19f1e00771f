"""Benchmark: per-stage overhead of ``mlnb run`` against plain papermill, and cached re-runs.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/bench_run.py``). Everything
runs here, in one process, on the same trivial notebook (a parameters cell and
one cell computing ``x + 1``), so the time per notebook is the tools' overhead:

* plain ``papermill.execute_notebook`` N times in a row;
* ``mlnb run`` of a pipeline of N such stages chained with ``needs`` (``force``,
  so every stage executes), tracked in a fresh SQLite MLflow store;
* the cached re-run of a 3-stage pipeline, in-process and as a command;
* ``mlnb --help`` and the imports that bound a command's start-up.

Figures are wall-clock seconds, best of ``--repeat`` rounds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook


def trivial_notebook(path: Path, work: float = 0.0) -> None:
    """A parameters cell and ``x + 1``; with ``work``, a sleep of that many seconds first."""
    nb = new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    body = f"import time\ntime.sleep({work})\n" if work else ""
    nb.cells = [params, new_code_cell(f"{body}y = x + 1\ny")]
    nbformat.write(nb, str(path))


def chain_spec(root: Path, stages: int, notebook: str = "trivial") -> Path:
    lines = ["name: bench", "stages:"]
    for i in range(stages):
        lines += [
            f"  s{i}:",
            f"    notebook: notebooks/{notebook}.ipynb",
            f"    params: {{x: {i}}}",
        ]
        if i:
            lines.append(f"    needs: [s{i - 1}]")
    path = root / "pipelines" / f"{notebook}{stages}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


WORK = 0.5  # seconds of work in the second notebook: time in which a kernel can start


def command_seconds(args: list[str], cwd: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(args, cwd=cwd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=5, help="notebooks per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is kept")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mlnb-bench-"))
    (root / "notebooks").mkdir()
    (root / "pipelines").mkdir()
    notebook = root / "notebooks" / "trivial.ipynb"
    trivial_notebook(notebook)
    working = root / "notebooks" / "working.ipynb"
    trivial_notebook(working, work=WORK)
    chain = chain_spec(root, args.stages)
    working_chain = chain_spec(root, args.stages, "working")
    three = chain_spec(root, 3)

    import papermill

    from mlnb.pipelines.runner import run_pipeline

    # warm both (imports, kernelspec lookup, the SQLite schema)
    papermill.execute_notebook(str(notebook), str(root / "warm.ipynb"), progress_bar=False)
    run_pipeline(three)

    def per_notebook_papermill(path: Path) -> list[float]:
        rounds = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            for i in range(args.stages):
                papermill.execute_notebook(
                    str(path), str(root / f"out{i}.ipynb"), parameters={"x": i}, progress_bar=False
                )
            rounds.append((time.perf_counter() - start) / args.stages)
        return rounds

    def per_stage_mlnb(spec: Path) -> list[float]:
        rounds = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            run_pipeline(spec, force=True)
            rounds.append((time.perf_counter() - start) / args.stages)
        return rounds

    plain, tracked = per_notebook_papermill(notebook), per_stage_mlnb(chain)
    plain_work, tracked_work = per_notebook_papermill(working), per_stage_mlnb(working_chain)

    cached = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = run_pipeline(three)
        cached.append(time.perf_counter() - start)
        assert all(s.status == "cached" for s in result.stages), result.stages

    mlnb = [sys.executable, "-m", "mlnb"]
    cached_cmd = command_seconds([*mlnb, "run", str(three)], root, args.repeat)
    help_cmd = command_seconds([*mlnb, "--help"], root, max(args.repeat, 5))
    import_papermill = command_seconds([sys.executable, "-c", "import papermill"], root, 3)
    import_mlflow = command_seconds([sys.executable, "-c", "import mlflow"], root, 3)
    python_start = command_seconds([sys.executable, "-c", "pass"], root, 5)

    rows = [
        ("per notebook / stage (trivial notebook)", min(plain), min(tracked)),
        (
            f"overhead per stage, notebook working {WORK} s",
            min(plain_work) - WORK,
            min(tracked_work) - WORK,
        ),
        ("cached re-run of 3 stages, in process", None, min(cached)),
        ("cached re-run of 3 stages, `mlnb run` command", None, cached_cmd),
        ("`mlnb --help`", None, help_cmd),
        ("python start-up", python_start, None),
        ("`import papermill`", import_papermill, None),
        ("`import mlflow`", import_mlflow, None),
    ]
    print(
        textwrap.dedent(f"""
        mlnb run vs papermill.execute_notebook — {args.stages} notebooks a round,
        best of {args.repeat} rounds (median per stage: papermill
        {statistics.median(plain):.3f} s, mlnb {statistics.median(tracked):.3f} s)
    """).strip()
    )
    print(f"{'':50} {'papermill':>10} {'mlnb':>10}")
    for label, base, ours in rows:
        left = f"{base:9.3f}s" if base is not None else f"{'':>10}"
        right = f"{ours:9.3f}s" if ours is not None else f"{'':>10}"
        print(f"{label:50} {left} {right}")
    print(
        f"mlnb's time per stage is {min(tracked) / min(plain):.0%} of papermill's on the trivial "
        f"notebook, its overhead {(min(tracked_work) - WORK) / (min(plain_work) - WORK):.0%} of "
        "papermill's on the working one (mlnb's includes MLflow runs, artifacts and HTML, and "
        "the first kernel's start and the last one's shutdown)"
    )


if __name__ == "__main__":
    main()
