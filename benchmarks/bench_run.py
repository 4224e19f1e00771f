"""Benchmark: per-stage overhead of ``mlnb run`` against plain papermill, and cached re-runs.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/bench_run.py``). Everything
runs here, in one process, on two notebooks — a parameters cell and one cell
computing ``x + 1``, the second sleeping ``WORK`` seconds first — so the time
per notebook beyond that work is the tools' overhead:

* plain ``papermill.execute_notebook`` N times in a row (each call starts and
  stops its own kernel);
* ``mlnb run`` of a pipeline of N such stages chained with ``needs``
  (``force``, so every stage executes), tracked in a SQLite MLflow store, and
  of 2N stages: the slope between the two is what one more stage costs, the
  rest what a run costs once (its parent run, its first kernel);
* where a stage's time goes, timed by wrapping mlnb's functions here (mlnb is
  not changed): on the stage's own path, in the background thread that
  uploads its artifacts, and once per run;
* the re-run of a 3-stage and a 9-stage pipeline whose stages are all in the
  cache, in process and as a command (up to date: it imports no MLflow), and
  what bounds the command: Python's start-up and the imports it needs;
* ``mlnb --help`` and the imports of MLflow and papermill, for scale.

Figures are wall-clock seconds, best of ``--repeat`` rounds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nbformat
from clock import Clock
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

# labels of the breakdown: where a stage's time goes
STAGE_RUN = "MLflow: create the stage run"
STAGE_LOG = "MLflow: log its params and tags"
ACQUIRE = "wait for its pre-started kernel"
CONNECT = "connect to the kernel, run the set-up cell"
PAPERMILL = "papermill.execute_notebook"
SAVES = "papermill: write the notebook after each cell"
UPLOAD = "upload the executed notebook and its HTML"
HTML = "render the HTML"
FINISH = "MLflow: end the stage run"
TRACKER = "MLflow: the pipeline run (start, params, spec, end)"


def command_seconds(args: list[str], cwd: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(args, cwd=cwd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def instrument(clock: Clock) -> None:
    """Time the parts of a stage by wrapping mlnb's functions (in this process only)."""
    from papermill.engines import NotebookExecutionManager

    from mlnb import tracking
    from mlnb.engine import execute
    from mlnb.engine.kernels import KernelPool

    clock.wrap(tracking.Tracker, "start_run", STAGE_RUN)
    clock.wrap(tracking.Tracker, "log", STAGE_LOG)
    clock.wrap(tracking.Tracker, "log_artifact", UPLOAD)
    clock.wrap(tracking.Tracker, "finish", FINISH)
    clock.wrap(tracking, "render_html", HTML)
    clock.wrap(KernelPool, "acquire", ACQUIRE)
    clock.wrap(execute._PooledClient, "start_new_kernel_client", CONNECT)
    clock.wrap(execute, "execute_notebook", PAPERMILL)
    clock.wrap(NotebookExecutionManager, "save", SAVES)


def breakdown(parts: dict[tuple[str, str], float], stages: int, seconds: float) -> list[str]:
    """Where the time of a run of ``stages`` stages, ``seconds`` long, went: ms per stage."""

    def ms(label: str, thread: str) -> float:
        return parts.get((label, thread), 0.0) / stages * 1000

    stage = "mlnb-stage"
    papermill = ms(PAPERMILL, stage) - ms(CONNECT, stage) - ms(SAVES, stage) - WORK * 1000
    on_path = [
        (STAGE_RUN, ms(STAGE_RUN, stage)),
        (STAGE_LOG, ms(STAGE_LOG, stage)),
        (ACQUIRE, ms(ACQUIRE, stage)),
        (CONNECT, ms(CONNECT, stage)),
        (SAVES, ms(SAVES, stage)),
        ("papermill/nbclient, the rest", papermill),
    ]
    per_run = sum(ms(label, "MainThread") for label in (STAGE_RUN, STAGE_LOG, UPLOAD, FINISH))
    total = seconds / stages * 1000 - WORK * 1000
    rest = total - sum(v for _, v in on_path) - per_run
    lines = [f"where a stage's {total:.0f} ms of overhead goes, ms per stage ({stages} stages):"]
    lines += [f"  {label:58} {value:6.1f}" for label, value in on_path]
    lines.append(f"  {TRACKER + ', ÷ stages':58} {per_run:6.1f}")
    lines.append(f"  {'the rest (scheduling, hashing outputs, the cache entry)':58} {rest:6.1f}")
    lines.append("  in the background, beside the next stage:")
    for label in (UPLOAD, HTML, FINISH):
        lines.append(f"    {label:56} {ms(label, 'mlnb-upload'):6.1f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=5, help="notebooks per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is kept")
    args = parser.parse_args()
    n = args.stages

    root = Path(tempfile.mkdtemp(prefix="mlnb-bench-"))
    (root / "notebooks").mkdir()
    (root / "pipelines").mkdir()
    notebook = root / "notebooks" / "trivial.ipynb"
    trivial_notebook(notebook)
    working = root / "notebooks" / "working.ipynb"
    trivial_notebook(working, work=WORK)
    chains = {
        (name, stages): chain_spec(root, stages, name)
        for name in ("trivial", "working")
        for stages in (n, 2 * n)
    }
    three, nine = chain_spec(root, 3), chain_spec(root, 9)

    import papermill

    from mlnb.pipelines.runner import run_pipeline

    # warm both (imports, kernelspec lookup, the SQLite schema)
    papermill.execute_notebook(str(notebook), str(root / "warm.ipynb"), progress_bar=False)
    run_pipeline(three)
    run_pipeline(nine)

    def per_notebook_papermill(path: Path) -> float:
        rounds = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            for i in range(n):
                papermill.execute_notebook(
                    str(path), str(root / f"out{i}.ipynb"), parameters={"x": i}, progress_bar=False
                )
            rounds.append((time.perf_counter() - start) / n)
        return min(rounds)

    def run_seconds(spec: Path) -> float:
        rounds = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            run_pipeline(spec, force=True)
            rounds.append(time.perf_counter() - start)
        return min(rounds)

    plain, plain_work = per_notebook_papermill(notebook), per_notebook_papermill(working)
    runs = {key: run_seconds(spec) for key, spec in chains.items()}

    clock = Clock()
    instrument(clock)
    start = time.perf_counter()
    run_pipeline(chains["working", n], force=True)
    timed = time.perf_counter() - start
    parts = clock.take_by_thread()
    clock.restore()

    def cached_seconds(spec: Path) -> float:
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = run_pipeline(spec)
            best = min(best, time.perf_counter() - start)
            assert result.up_to_date, result.stages
        return best

    cached3, cached9 = cached_seconds(three), cached_seconds(nine)
    mlnb = [sys.executable, "-m", "mlnb"]
    cached3_cmd = command_seconds([*mlnb, "run", str(three)], root, args.repeat)
    cached9_cmd = command_seconds([*mlnb, "run", str(nine)], root, args.repeat)
    help_cmd = command_seconds([*mlnb, "--help"], root, max(args.repeat, 5))
    imports = (
        "import mlnb.cli.main, mlnb.cli.pipelines, mlnb.pipelines.locate, mlnb.pipelines.runner"
    )
    import_command = command_seconds([sys.executable, "-c", imports], root, max(args.repeat, 5))
    import_papermill = command_seconds([sys.executable, "-c", "import papermill"], root, 3)
    import_mlflow = command_seconds([sys.executable, "-c", "import mlflow"], root, 3)
    python_start = command_seconds([sys.executable, "-c", "pass"], root, 5)

    def slope(name: str) -> tuple[float, float]:
        """What one more stage costs, and what the run costs once."""
        per_stage = (runs[name, 2 * n] - runs[name, n]) / n
        return per_stage, runs[name, n] - n * per_stage

    trivial_slope, trivial_fixed = slope("trivial")
    working_slope, working_fixed = slope("working")
    rows = [
        (f"per notebook / stage, trivial notebook ({n}-stage run)", plain, runs["trivial", n] / n),
        (
            f"overhead per stage, notebook working {WORK} s ({n}-stage run)",
            plain_work - WORK,
            runs["working", n] / n - WORK,
        ),
        (f"  one more stage, trivial notebook ({n} → {2 * n} stages)", None, trivial_slope),
        (f"  one more stage, overhead beside {WORK} s of work", None, working_slope - WORK),
        ("  once per run, trivial / working (first kernel, parent run)", None, None),
        ("cached re-run of 3 stages, in process", None, cached3),
        ("cached re-run of 9 stages, in process", None, cached9),
        ("cached re-run of 3 stages, `mlnb run` command", None, cached3_cmd),
        ("cached re-run of 9 stages, `mlnb run` command", None, cached9_cmd),
        ("  python start-up", python_start, None),
        ("  the imports of the command (mlnb's CLI, specs, runner)", None, import_command),
        ("`mlnb --help`", None, help_cmd),
        ("`import papermill`", import_papermill, None),
        ("`import mlflow` (a cached re-run no longer imports it)", import_mlflow, None),
    ]
    print(
        textwrap.dedent(f"""
        mlnb run vs papermill.execute_notebook — {n} notebooks a round, best of
        {args.repeat} rounds; mlnb in a SQLite store, every stage recorded with its
        executed notebook and HTML
    """).strip()
    )
    print(f"{'':66} {'papermill':>10} {'mlnb':>10}")
    for label, base, ours in rows:
        left = f"{base:9.3f}s" if base is not None else f"{'':>10}"
        right = f"{ours:9.3f}s" if ours is not None else f"{'':>10}"
        if label.startswith("  once per run"):
            right = f"{trivial_fixed:.2f}/{working_fixed:.2f}s"
        print(f"{label:66} {left} {right:>10}")
    overhead = (runs["working", n] / n - WORK) / (plain_work - WORK)
    print(
        f"mlnb's time per stage is {runs['trivial', n] / n / plain:.0%} of papermill's on the "
        f"trivial notebook, its overhead {overhead:.0%} of papermill's on the working one "
        "(a run's figure includes its first kernel's start)"
    )
    print()
    print("\n".join(breakdown(parts, n, timed)))


if __name__ == "__main__":
    main()
