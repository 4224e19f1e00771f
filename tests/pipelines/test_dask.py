"""``--executor dask``: stages on a real Dask cluster (a scheduler and workers as processes).

The workers work in folders of their own, not in the project: what a stage
needs travels with its task or through the shared state folder. One cluster
serves the module's tests; each test runs whole pipelines of the scenario
notebooks against the project's SQLite store and checks what a user sees
locally: statuses, outputs, the cache, failures with their cell, resources,
``mlnb.worker`` on every stage run, Ctrl-C and a lost worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlnb import tags
from mlnb.errors import CellError, MlnbError, PipelineError
from mlnb.pipelines.executors import dask_executor
from mlnb.pipelines.runner import run_pipeline
from mlnb.pipelines.sweep import run_sweep
from mlnb.store import state_dir
from tests.dask_cluster import DaskCluster
from tests.helpers import CHAIN, FAILS_FIRST, free_port

pytestmark = [pytest.mark.team, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """Two one-thread workers; the second offers the resource GPU=1."""
    with DaskCluster(tmp_path_factory.mktemp("dask"), workers=2, resources={1: "GPU=1"}) as running:
        yield running


def statuses(result) -> dict[str, str]:
    return {s.name: s.status for s in result.stages}


def on_workers(project, cluster: DaskCluster, spec: Path, **kw: object):
    executor = dask_executor(cluster.address, state_dir(project.root))
    return run_pipeline(spec, executor=executor, **kw)  # type: ignore[arg-type]


def test_stages_run_on_workers_and_are_tracked(project, cluster: DaskCluster) -> None:
    (project.root / "data").mkdir()
    (project.root / "data" / "in.txt").write_text("10")
    spec = project.spec(
        CHAIN
        + """
      c:
        notebook: notebooks/reads_input.ipynb
        params: {in_path: data/in.txt}
        outputs: {out_path: out.txt}
    """
    )
    first = on_workers(project, cluster, spec, jobs=2)

    assert statuses(first) == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    assert Path(first.stage("b").outputs["out_path"]).read_text() == "3"
    assert Path(first.stage("c").outputs["out_path"]).read_text() == "11"
    workers = cluster.wait_for_workers(2)
    client = project.client()
    for stage in first.stages:
        run = client.get_run(stage.run_id)
        assert run.data.tags[tags.WORKER] in workers
        assert run.info.status == "FINISHED"
        assert Path(stage.notebook).exists()  # written by the worker to the state folder
    # the project file a parameter names reached the worker through the state folder
    copied = list((project.root / ".mlnb" / "inputs").glob("*/in.txt"))
    assert [p.read_text() for p in copied] == ["10"]
    recorded = client.get_run(first.stage("c").run_id).data.params["in_path"]
    assert recorded.startswith("$MLNB_STATE_DIR/inputs/")

    # the cache holds across executors: nothing runs again, locally or on the workers
    again = on_workers(project, cluster, spec)
    assert statuses(again) == {"a": "cached", "b": "cached", "c": "cached"}
    local = run_pipeline(spec)
    assert statuses(local) == {"a": "cached", "b": "cached", "c": "cached"}


def test_a_failing_cell_is_reported_as_locally(project, cluster: DaskCluster) -> None:
    spec = project.spec(FAILS_FIRST)
    with pytest.raises(PipelineError) as info:
        on_workers(project, cluster, spec)

    failure = info.value.failures[0]
    assert isinstance(failure, CellError)
    assert (failure.stage, failure.cell, failure.ename, failure.evalue) == (
        "fail",
        2,
        "ValueError",
        "boom 1",
    )
    result = info.value.result
    assert result is not None
    assert statuses(result) == {"fail": "failed", "after": "skipped"}
    assert Path(result.stage("fail").notebook).exists()


def test_resources_reach_only_the_worker_that_offers_them(project, cluster: DaskCluster) -> None:
    spec = project.spec(
        """
        name: p
        stages:
          gpu:
            notebook: notebooks/add_one.ipynb
            outputs: {out_path: out.txt}
            resources: {GPU: 1}
        """
    )
    result = on_workers(project, cluster, spec)
    worker = project.client().get_run(result.stage("gpu").run_id).data.tags[tags.WORKER]
    with_gpu = [a for a, w in _workers(cluster).items() if w.get("resources", {}).get("GPU")]
    assert [worker] == with_gpu

    spec = project.spec(
        """
        name: p
        stages:
          tpu:
            notebook: notebooks/add_one.ipynb
            resources: {TPU: 2}
        """
    )
    with pytest.raises(PipelineError) as info:
        on_workers(project, cluster, spec)
    assert "needs resource TPU=2, which no worker" in str(info.value.failures[0])


def test_a_sweep_runs_its_trials_on_the_workers(project, cluster: DaskCluster) -> None:
    spec = project.spec(
        CHAIN
        + """
      m:
        notebook: notebooks/logs_to_mlflow.ipynb
        needs: [b]
    sweep:
      params:
        m.answer: [3, 7]
      metric: m.answer
    """
    )
    swept = run_sweep(
        spec, jobs=2, executor=lambda: dask_executor(cluster.address, state_dir(project.root))
    )

    assert [(t.params, t.status) for t in swept.trials] == [
        ({"m.answer": 3}, "finished"),
        ({"m.answer": 7}, "finished"),
    ]
    assert swept.best is not None and swept.best.value == 7.0
    workers = cluster.wait_for_workers(2)
    client = project.client()
    for trial in swept.trials:
        assert trial.result is not None
        executed = [s for s in trial.result.stages if s.status == "succeeded"]
        assert executed, trial.result.stages
        for stage in executed:
            assert client.get_run(stage.run_id).data.tags[tags.WORKER] in workers
    # a and b are upstream of every swept value: executed in the first trial only
    second = {s.name: s.status for s in swept.trials[1].result.stages}  # type: ignore[union-attr]
    assert second == {"a": "cached", "b": "cached", "m": "succeeded"}


def test_a_timeout_holds_on_a_worker(project, cluster: DaskCluster) -> None:
    spec = project.spec(
        """
        name: p
        stages:
          slow:
            notebook: notebooks/sleeps.ipynb
            params: {seconds: 60}
            timeout: 2
        """
    )
    started = time.monotonic()
    with pytest.raises(PipelineError) as info:
        on_workers(project, cluster, spec)
    assert time.monotonic() - started < 30
    assert "timed out" in str(info.value.failures[0]) or "2 s" in str(info.value.failures[0])


def test_interrupt_stops_stages_on_workers(project, cluster: DaskCluster) -> None:
    project.spec(
        """
        name: p
        stages:
          slow:
            notebook: notebooks/sleeps.ipynb
            params: {seconds: 120}
        """
    )
    env = {**os.environ, "MLNB_SCHEDULER": cluster.address}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlnb.cli", "run", "p", "--executor", "dask"],
        cwd=project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_running(project, proc)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out
    assert "resume it with" in out, out
    runs = project.client().search_runs(
        [project.client().get_experiment_by_name("p").experiment_id],
        filter_string="tags.`mlnb.stage` = 'slow'",
    )
    assert [r.info.status for r in runs] == ["KILLED"]
    # the worker is free again: a short stage runs at once
    quick = project.spec(
        """
        name: q
        stages:
          a:
            notebook: notebooks/add_one.ipynb
        """,
        name="q.yaml",
    )
    started = time.monotonic()
    assert statuses(on_workers(project, cluster, quick)) == {"a": "succeeded"}
    assert time.monotonic() - started < 30


def test_a_lost_worker_moves_the_stage(project, tmp_path: Path) -> None:
    """Dask moves a lost worker's task to another; the stage still succeeds."""
    spec = project.spec(
        """
        name: p
        stages:
          slow:
            notebook: notebooks/sleeps.ipynb
            params: {seconds: 4}
            outputs: {out_path: out.txt}
        """
    )
    with DaskCluster(tmp_path / "lost", workers=2) as own:
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["result"] = on_workers(project, own, spec)
            except Exception as exc:  # reported below
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        _wait_for_running(project)
        busy = _busy(own)
        index = [i for i in range(len(own.workers)) if _address_of(own, i) in busy]
        assert len(index) == 1, busy
        own.kill_worker(index[0])
        thread.join(120)
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        assert statuses(result) == {"slow": "succeeded"}


def test_no_scheduler_is_a_clear_error(tmp_path: Path) -> None:
    started = time.monotonic()
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(MlnbError, match=f"cannot reach the Dask scheduler at {address}"):
        dask_executor(address, tmp_path)
    assert time.monotonic() - started < 20
    with pytest.raises(MlnbError, match="MLNB_SCHEDULER"):
        dask_executor(None, tmp_path)


# -- helpers ------------------------------------------------------------------------------


def _workers(cluster: DaskCluster) -> dict[str, dict]:
    from distributed import Client

    with Client(cluster.address, set_as_default=False) as client:
        return dict(client.scheduler_info(n_workers=-1)["workers"])


def _address_of(cluster: DaskCluster, index: int) -> str | None:
    for address, info in _workers(cluster).items():
        if info.get("name") == f"w{index}":
            return address
    return None


def _busy(cluster: DaskCluster) -> list[str]:
    """The workers processing a task now."""
    from distributed import Client

    with Client(cluster.address, set_as_default=False) as client:
        return [address for address, keys in client.processing().items() if keys]


def _wait_for_running(
    project, proc: subprocess.Popen[str] | None = None, timeout: float = 120
) -> None:
    """Once the stage ``slow`` has started executing; ``proc``'s output if it never does."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=project.store)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"mlnb run ended before the stage started:\n{proc.communicate()[0]}"
            )
        experiment = client.get_experiment_by_name("p")
        if experiment is not None:
            runs = client.search_runs(
                [experiment.experiment_id],
                filter_string="tags.`mlnb.stage` = 'slow' and attributes.status = 'RUNNING'",
            )
            if runs:
                time.sleep(1.5)  # the kernel is executing the notebook
                return
        time.sleep(0.2)
    said = ""
    if proc is not None:
        proc.kill()
        said = f"; mlnb run printed:\n{proc.communicate()[0]}"
    raise AssertionError(f"the stage never started within {timeout:g} s{said}")
