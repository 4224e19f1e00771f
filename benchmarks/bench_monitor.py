"""Benchmark: one ``mlnb monitor`` check with its drift notebook against the drift test alone.

Run with ``.venv/bin/python benchmarks/bench_monitor.py``. In one run, on this
machine, in a throwaway project in a temporary folder:

* a SQLite MLflow store with a registered model ``cancer`` (a logistic
  regression; alias ``champion``) whose version tag ``mlnb.training_data``
  names a reference CSV of ``--rows`` rows × 20 numeric features and a target;
* a prediction log, written with :class:`mlnb.predictions.log.PredictionLog`, of
  ``--rows`` current rows (requests of 10 rows) drawn from the same
  distribution, so the verdict is ``no_drift`` and nothing retrains;
* the repository's ``notebooks/drift.ipynb`` (copied as it is) and a monitor
  spec with the drift trigger only, window ``last: --rows``, retraining with a
  copy of ``pipelines/cancer.yaml`` (valid, never run).

Measured side by side:

* alibi-detect alone: ``TabularDrift`` fit + predict on the same arrays in this
  process (the test itself), and a fresh interpreter importing alibi-detect,
  loading the arrays from ``.npy`` and testing (the import timed inside it);
* mlnb in this process: ``MonitorRunner(load_monitor(spec))`` and its first
  check (cold: the kernel fork server is still importing alibi-detect), then
  ``--checks`` more checks in the same runner, each after the idle time a
  schedule leaves (the next kernel pre-started, the last one stopped): the
  steady state of ``mlnb monitor``; with where a check's time goes and how
  many calls each part made, timed by wrapping mlnb's functions here (mlnb is
  not changed) and from the per-cell durations papermill records in the
  executed notebook;
* ``mlnb monitor SPEC --once`` as a command, in turns with the fresh script and
  with a fresh interpreter importing what the drift kernel's fork server imports
  (ipykernel's modules, the notebook's, MLflow's SQL store: no kernel can start
  sooner); where the command's time goes, from the process's start and exit,
  the check and drift runs' times in MLflow and the executed notebook's.

Every check's result is checked (no error, ``no_drift``, 20 features tested,
the whole window read), so no figure is of a failing path. Figures are
wall-clock seconds; medians. MLflow telemetry is off, so nothing leaves the
machine. The temporary folder is removed and every process started is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
MODEL = "cancer"
MONITOR = "bench-monitor"
FEATURES = [f"f{i:02d}" for i in range(20)]
REQUEST_ROWS = 10
P_VAL, CORRECTION = 0.05, "bonferroni"
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
SPEC = """\
name: {monitor}
model: {model}
schedule: {{every: 10m}}
window: {{last: {rows}}}
drift:
  notebook: notebooks/drift.ipynb
  params: {{p_val: {p_val}, correction: {correction}, min_rows: 100}}
retrain:
  pipeline: pipelines/cancer.yaml
triggers: [drift]
"""
FRESH = f"""
import json, sys, time
start = time.perf_counter()
from alibi_detect.cd import TabularDrift
imported = time.perf_counter()
import numpy as np
x_ref, x_cur = np.load(sys.argv[1]), np.load(sys.argv[2])
detector = TabularDrift(x_ref, p_val={P_VAL}, categories_per_feature={{}},
                        x_ref_preprocessed=True, correction="{CORRECTION}")
result = detector.predict(x_cur, drift_type="batch", return_p_val=True, return_distance=True)
done = time.perf_counter()
print(json.dumps({{"import": imported - start, "test": done - imported,
                  "drift": int(result["data"]["is_drift"])}}))
"""  # the honest cold baseline of `--once`
IMPORTS = """
import importlib, json, sys, time
start = time.perf_counter()
for module in sys.argv[1:]:
    importlib.import_module(module)
print(json.dumps({"import": time.perf_counter() - start}))
"""  # what no drift kernel can start without: the floor of `--once`


# -- the throwaway project -----------------------------------------------------------


def draw(rows: int, seed: int) -> np.ndarray:
    """``rows`` × 20 features: normal, each feature with its own mean and scale."""
    rng = np.random.default_rng(seed)
    means = np.linspace(-5.0, 5.0, len(FEATURES))
    scales = np.linspace(0.5, 3.0, len(FEATURES))
    return rng.normal(means, scales, size=(rows, len(FEATURES)))


def make_project(root: Path, rows: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """Lay out the project, the store, the model and the log; return the spec and the data."""
    (root / "notebooks").mkdir(parents=True)
    (root / "pipelines").mkdir()
    for name in ("drift", "prepare", "train", "evaluate"):
        shutil.copy(REPO / "notebooks" / f"{name}.ipynb", root / "notebooks")
    shutil.copy(REPO / "pipelines" / "cancer.yaml", root / "pipelines")
    spec = root / "pipelines" / "monitor.yaml"
    spec.write_text(
        SPEC.format(monitor=MONITOR, model=MODEL, rows=rows, p_val=P_VAL, correction=CORRECTION)
    )

    x_ref, x_cur = draw(rows, seed=1), draw(rows, seed=2)
    weights = np.random.default_rng(0).normal(size=len(FEATURES))
    centred = (x_ref - x_ref.mean(axis=0)) / x_ref.std(axis=0)
    target = (centred @ weights > 0).astype(int)
    reference = root / "data" / "train.csv"
    reference.parent.mkdir()
    pd.DataFrame(x_ref, columns=FEATURES).assign(target=target).to_csv(reference, index=False)
    model = register(root, x_ref, target, reference)

    from mlnb.predictions.log import PredictionLog, default_log_dir, new_request_id

    log = PredictionLog(default_log_dir(root))
    predictions = model.predict(x_cur)
    now = int(time.time() * 1000)
    requests = rows // REQUEST_ROWS
    for i in range(requests):
        ms = now - (requests - i) * 5  # oldest first, 5 ms apart
        chunk = slice(i * REQUEST_ROWS, (i + 1) * REQUEST_ROWS)
        log.write_prediction(
            new_request_id(ms), ms, "1", FEATURES, x_cur[chunk], predictions[chunk], REQUEST_ROWS
        )
    log.close()
    # the arrays as the notebook sees them: the CSV read back, the log's floats
    x_ref = pd.read_csv(reference)[FEATURES].to_numpy(np.float64)
    np.save(root / "x_ref.npy", x_ref)
    np.save(root / "x_cur.npy", x_cur)
    return spec, x_ref, x_cur


def register(root: Path, x: np.ndarray, y: np.ndarray, reference: Path) -> Any:
    """Register a small model as ``cancer`` v1 @champion, its training data tagged."""
    import mlflow
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    from mlnb import tags
    from mlnb.models.registry import CHAMPION
    from mlnb.store import default_artifact_location, tracking_uri

    uri = tracking_uri(root)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    client = MlflowClient(uri)
    experiment = client.create_experiment("setup", default_artifact_location(uri))
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.sklearn.log_model(
                model, name="model", pip_requirements=["scikit-learn"], registered_model_name=MODEL
            )
    finally:
        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(MODEL, CHAMPION, version)
    client.set_model_version_tag(MODEL, version, tags.TRAINING_DATA, str(reference))
    return model


# -- timing --------------------------------------------------------------------------


def seconds(run: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    """Wall times of ``repeat`` calls, and the last call's value."""
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = run()
        times.append(time.perf_counter() - start)
    return times, value


def tabular_drift(x_ref: np.ndarray, x_cur: np.ndarray) -> dict[str, Any]:
    """The drift notebook's test, called directly: fit on the reference, predict the batch."""
    from alibi_detect.cd import TabularDrift

    detector = TabularDrift(
        x_ref,
        p_val=P_VAL,
        categories_per_feature={},
        x_ref_preprocessed=True,
        correction=CORRECTION,
    )
    return detector.predict(x_cur, drift_type="batch", return_p_val=True, return_distance=True)


class Clock:
    """Adds up the time in wrapped functions, and their calls, by label, until :meth:`take`."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[tuple[Any, str, Any, bool]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        had = name in vars(owner)
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.parts[label] += time.perf_counter() - start
                self.calls[label] += 1

        setattr(owner, name, timed)
        self._undo.append((owner, name, original, had))

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        parts, self.parts = dict(self.parts), defaultdict(float)
        calls, self.calls = dict(self.calls), defaultdict(int)
        return parts, calls

    def restore(self) -> None:
        for owner, name, original, had in reversed(self._undo):
            if had:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._undo.clear()


# labels of the breakdown; indented ones are inside the row above
WINDOW = "read the window (WindowReader.read)"
COLUMNS = "reference columns (check.model_features)"
WRITE = "write current.parquet (_write_table)"
OPEN = "MLflow: open store, experiment (Tracker)"
RUNS = "MLflow: runs, tags, metrics (Tracker)"
ARTIFACT = "MLflow: executed notebook artifact"
REGISTRY = "MLflow: champion and version (Registry)"
NOTEBOOK = "drift notebook (stage.execute_stage)"
ACQUIRE = "  wait for the pre-started kernel"
PAPERMILL = "  papermill/nbclient outside the cells"
REST = "the rest of MonitorRunner.check()"


def instrument(clock: Clock) -> None:
    """Time the parts of a check by wrapping mlnb's functions (in this process only)."""
    from mlnb import tracking
    from mlnb.engine import execute as stage
    from mlnb.models import registry
    from mlnb.monitoring import check, drift
    from mlnb.predictions.window import WindowReader

    clock.wrap(WindowReader, "read", WINDOW)
    clock.wrap(check, "model_features", COLUMNS)
    clock.wrap(drift, "_write_table", WRITE)
    clock.wrap(stage, "execute_stage", NOTEBOOK)
    for name in ("__init__", "experiment_id"):
        clock.wrap(tracking.Tracker, name, OPEN)
    for name in ("start_run", "log", "finish", "get_run"):
        clock.wrap(tracking.Tracker, name, RUNS)
    clock.wrap(tracking.Tracker, "log_artifact", ARTIFACT)
    for name in ("__init__", "alias", "version"):
        clock.wrap(registry.Registry, name, REGISTRY)


def cell_seconds(executed: Path) -> dict[str, float]:
    """Per-cell durations papermill recorded in an executed notebook, labeled by first line."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    cells = {}
    for index, cell in enumerate(nb.cells):
        duration = cell.metadata.get("papermill", {}).get("duration")
        if cell.cell_type != "code" or duration is None:
            continue
        lines = [ln for ln in cell.source.splitlines() if ln.strip() and not ln.startswith("#")]
        first = lines[0].strip() if lines else ""
        cells[f"  cell {index}: {first[:36]}"] = float(duration)
    return cells


def check_once(
    runner: Any, clock: Clock, rows: int
) -> tuple[float, dict[str, float], dict[str, int]]:
    """One check, sanity-checked; its wall time, where the time went and the calls made."""
    clock.take()
    start = time.perf_counter()
    result = runner.check()
    wall = time.perf_counter() - start
    parts, calls = clock.take()
    assert result.error is None, result.error
    assert result.drift is not None and result.drift.status == "no_drift", result.drift
    assert result.drift.metrics.get("features_tested") == len(FEATURES), result.drift.metrics
    assert result.rows == rows and result.retrain is None, (result.rows, result.retrain)
    executed = runner.state / MONITOR / result.run_id / "drift.ipynb"
    cells = cell_seconds(executed)
    parts.update(cells)
    parts[PAPERMILL] = parts[NOTEBOOK] - parts.get(ACQUIRE, 0.0) - sum(cells.values())
    return wall, parts, calls


def settle(pool: Any, kernel: str, timeout: float = 60) -> None:
    """Wait out what a schedule leaves idle between checks: the next kernel starting, the
    last one stopping (reads the pool's private state; a fixed pause where that fails)."""
    try:
        for future in list(pool._ready[kernel]):
            future.result(timeout)
        deadline = time.monotonic() + timeout
        while len(pool._live) > len(pool._ready[kernel]) and time.monotonic() < deadline:
            time.sleep(0.05)
    except AttributeError:
        time.sleep(3)


# phases of `mlnb monitor --once`, from the process's start and end (taken here), the
# check and drift runs' start and end times (MLflow's) and the executed notebook's (papermill's)
STARTUP = "start-up: imports, spec, store, until the check run"
BEFORE = "the check until its drift run (window, lineage)"
KERNEL = "waiting for the kernel (fork server importing)"
CELLS = "the drift notebook, first cell to last"
AFTER = "after the notebook, until the check run ends"
EXIT = "closing the kernels and exiting"
PHASES = (STARTUP, BEFORE, KERNEL, CELLS, AFTER, EXIT)


def command(
    spec: Path, root: Path, env: dict[str, str], rows: int
) -> tuple[float, dict[str, float]]:
    """``mlnb monitor SPEC --once``: its wall time and where it went (:data:`PHASES`); the
    check run is checked in the store."""
    from mlflow import MlflowClient

    from mlnb.store import tracking_uri

    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "mlnb", "monitor", str(spec), "--once"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    ended = time.time()
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri(root))
    experiment = client.get_experiment_by_name(MONITOR)
    assert experiment is not None
    check, drift = (
        client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`mlnb.kind` = '{kind}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )[0]
        for kind in ("monitor-check", "drift")
    )
    assert drift.data.tags.get("mlflow.parentRunId") == check.info.run_id
    assert check.data.tags.get("mlnb.drift.status") == "no_drift", check.data.tags
    assert check.data.metrics.get("drift.features_tested") == len(FEATURES), check.data.metrics
    assert check.data.metrics.get("window_rows") == rows, check.data.metrics
    executed = root / ".mlnb" / "monitor" / MONITOR / check.info.run_id / "drift.ipynb"
    cells = json.loads(executed.read_text())["metadata"]["papermill"]
    first, last = (
        datetime.fromisoformat(cells[key]).timestamp() for key in ("start_time", "end_time")
    )
    moments = [
        started,
        check.info.start_time / 1000,
        drift.info.start_time / 1000,
        first,
        last,
        check.info.end_time / 1000,
        ended,
    ]
    phases = {phase: b - a for phase, a, b in zip(PHASES, moments, moments[1:], strict=False)}
    return ended - started, phases


@contextlib.contextmanager
def no_leftovers(root: Path) -> Iterator[None]:
    """On the way out: stop any process still running in the project (kernels start there)."""
    import psutil

    try:
        yield
    finally:
        left = []
        for process in psutil.process_iter(["pid", "cwd"]):
            cwd = process.info.get("cwd") or ""
            if process.pid != os.getpid() and cwd.startswith(str(root)):
                left.append(process)
        for process in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(left, timeout=5)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        if left:
            print(f"warning: stopped {len(left)} process(es) left running", file=sys.stderr)


# -- the run -------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="reference and current rows")
    parser.add_argument("--checks", type=int, default=4, help="steady-state checks (median)")
    parser.add_argument("--commands", type=int, default=3, help="`mlnb monitor --once` runs")
    args = parser.parse_args()

    for name in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[name]  # the project's own store, as `mlnb monitor` finds it
    os.environ.update(NO_TELEMETRY)  # before MLflow is imported: nothing leaves the machine

    load = os.getloadavg()[0]  # other work on the machine shows in every figure
    root = Path(tempfile.mkdtemp(prefix="mlnb-bench-monitor-")).resolve()
    print(f"project in {root}", file=sys.stderr)
    try:
        with no_leftovers(root):
            figures = measure(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(args, load=load, **figures)


def measure(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Build the project in ``root`` and take every figure."""
    env = dict(os.environ)
    spec, x_ref, x_cur = make_project(root, args.rows)

    tabular_drift(x_ref, x_cur)  # imports alibi-detect: not part of the test's time
    test, result = seconds(lambda: tabular_drift(x_ref, x_cur), 5)
    assert not result["data"]["is_drift"], "the reference and current data drifted"

    from mlnb.monitoring.runner import MonitorRunner
    from mlnb.specs.monitor import load_monitor

    clock = Clock()
    instrument(clock)
    runner = None
    try:
        start = time.perf_counter()
        loaded = load_monitor(spec)
        runner = MonitorRunner(loaded)
        construct = time.perf_counter() - start
        clock.wrap(runner.pool, "acquire", ACQUIRE)
        first = check_once(runner, clock, args.rows)
        steady = []
        for _ in range(args.checks):
            settle(runner.pool, loaded.drift_kernel)
            steady.append(check_once(runner, clock, args.rows))
        start = time.perf_counter()
        runner.close()
        close = time.perf_counter() - start
        runner = None
    finally:
        clock.restore()
        if runner is not None:
            runner.close()

    # the commands against their baselines, in turns: load from elsewhere falls on each alike
    fresh, kernel, commands = [], [], []
    for _ in range(args.commands):
        fresh.append(script(FRESH, [str(root / "x_ref.npy"), str(root / "x_cur.npy")], root, env))
        kernel.append(script(IMPORTS, kernel_modules(loaded), root, env))
        commands.append(command(spec, root, env, args.rows))
    assert all(run["drift"] == 0 for _, run in fresh)
    return {
        "test": test,
        "fresh": fresh,
        "kernel": kernel,
        "construct": construct,
        "first": first,
        "steady": steady,
        "close": close,
        "commands": commands,
        "modules": kernel_modules(loaded),
    }


def script(code: str, argv: list[str], root: Path, env: dict[str, str]) -> tuple[float, Any]:
    """A fresh interpreter running ``code``: its wall time (start to exit) and what it printed."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=root, env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return time.perf_counter() - start, json.loads(done.stdout)


def kernel_modules(monitor: Any) -> list[str]:
    """What a monitor's kernel fork server imports: ipykernel's modules and the notebook's."""
    from mlnb.engine._zygote import PRELOAD
    from mlnb.monitoring.drift import preload_modules
    from mlnb.store import tracking_uri

    return [*PRELOAD, *preload_modules(monitor.drift_notebook, tracking_uri(monitor.root))]


def report(args: argparse.Namespace, **m: Any) -> None:
    med = statistics.median
    every = lambda values: ", ".join(f"{v:.3f}" for v in values)  # noqa: E731
    test = med(m["test"])
    imported = med(run["import"] for _, run in m["fresh"])
    fresh = med(wall for wall, _ in m["fresh"])
    kernel = med(run["import"] for _, run in m["kernel"])
    steady_walls = [wall for wall, _, _ in m["steady"]]
    steady = med(steady_walls)
    walls = [wall for wall, _ in m["commands"]]
    cmd = med(walls)
    rows = [
        ("the test: TabularDrift fit + predict, in process", test, None, every(m["test"])),
        (
            "`from alibi_detect.cd import TabularDrift`, fresh",
            imported,
            None,
            every(run["import"] for _, run in m["fresh"]),
        ),
        ("import + test, in process", imported + test, None, ""),
        ("fresh script: import, load .npy, test", fresh, None, every(w for w, _ in m["fresh"])),
        (
            f"the drift kernel's {len(m['modules'])} modules, imported fresh",
            kernel,
            None,
            every(run["import"] for _, run in m["kernel"]),
        ),
        ("MonitorRunner(load_monitor(spec))", None, m["construct"], ""),
        ("first check (cold: fork server importing)", None, m["first"][0], ""),
        (f"steady-state check (median of {len(steady_walls)})", None, steady, every(steady_walls)),
        ("runner.close() (stops the pre-started kernel)", None, m["close"], ""),
        ("`mlnb monitor SPEC --once`, command", None, cmd, every(walls)),
    ]
    print(
        f"\nmlnb monitor check vs alibi-detect's TabularDrift — {args.rows} reference rows × "
        f"{len(FEATURES)} features against {args.rows} current rows (no drift); "
        f"{os.cpu_count()} CPUs, load average {m['load']:.1f} at the start; "
        "wall-clock seconds, medians\n"
    )
    print(f"{'':56} {'baseline':>9} {'mlnb':>9}   every run")
    for label, base, ours, runs in rows:
        left = f"{base:8.3f}s" if base is not None else f"{'':>9}"
        right = f"{ours:8.3f}s" if ours is not None else f"{'':>9}"
        print(f"{label:56} {left} {right}   {runs}")
    print(
        f"\nsteady-state check / the test alone:         {steady / test:6.1f}x "
        f"(+{steady - test:.2f} s)\n"
        f"steady-state check / import + test:          {steady / (imported + test):6.2f}x "
        f"(+{steady - imported - test:.2f} s)\n"
        f"`mlnb monitor --once` / fresh script:        {cmd / fresh:6.2f}x (+{cmd - fresh:.2f} s)\n"
        f"`mlnb monitor --once` / the kernel's imports: {cmd / kernel:6.2f}x "
        f"(+{cmd - kernel:.2f} s)"
    )
    steady_breakdown(m["first"], m["steady"])
    print(
        f"\nwhere `mlnb monitor --once` goes (median of {len(walls)}, {cmd:.3f} s; from the "
        "process's start and exit, the check and drift runs' times in MLflow and the executed "
        "notebook's in papermill; the kernel starts at the top, beside the rest)"
    )
    for phase in PHASES:
        values = [phases[phase] for _, phases in m["commands"]]
        print(f"{phase:56} {med(values):8.3f}s   {every(values)}")
    print(f"the drift kernel's modules: {', '.join(m['modules'])}")


def steady_breakdown(first: Any, steady: list[Any]) -> None:
    """Where a check's time goes: the wrapped parts, their calls, the notebook's cells."""
    steady_parts = [parts for _, parts, _ in steady]
    labels = list(dict.fromkeys(k for parts in steady_parts for k in parts))
    order = [WINDOW, COLUMNS, WRITE, OPEN, REGISTRY, RUNS, ARTIFACT, NOTEBOOK, ACQUIRE]
    order += [k for k in labels if k.startswith("  cell ")] + [PAPERMILL]
    mean = statistics.fmean(wall for wall, _, _ in steady)  # means: the parts add up
    print(
        f"\nwhere a check goes (steady: mean of {len(steady)}, {mean:.3f} s; first: the cold "
        "check; calls: of the wrapped functions, per steady check; indented rows are inside "
        "the row above them)"
    )
    print(f"{'':56} {'steady':>9} {'share':>6} {'calls':>6} {'first':>9}")
    for label in [*order, REST]:
        if label == REST:
            values = [
                wall - sum(v for k, v in parts.items() if not k.startswith("  "))
                for wall, parts, _ in [first, *steady]
            ]
            value, cold, calls = statistics.fmean(values[1:]), values[0], ""
        else:
            value = statistics.fmean(parts.get(label, 0.0) for parts in steady_parts)
            cold = first[1].get(label, 0.0)
            count = statistics.fmean(made.get(label, 0) for _, _, made in steady)
            calls = f"{count:g}" if count else ""
        print(f"{label:56} {value:8.3f}s {value / mean:6.0%} {calls:>6} {cold:8.3f}s")


if __name__ == "__main__":
    main()
