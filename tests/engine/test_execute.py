"""execute_stage: one notebook through papermill on a pooled kernel."""

from __future__ import annotations

import threading

import nbformat
import pytest
from jupyter_client.channels import HBChannel

from mlnb.engine.execute import execute_stage
from mlnb.engine.kernels import KernelPool
from mlnb.errors import CellError, KernelDiedError
from tests.helpers import SCENARIOS


def heartbeats() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if isinstance(t, HBChannel) and t.is_alive()]


@pytest.fixture
def pool(tmp_path):
    pool = KernelPool(cwd=tmp_path)
    yield pool
    pool.close()


def test_a_stage_runs_with_no_heartbeat_thread(pool, tmp_path) -> None:
    # jupyter_client's heartbeat thread can miss its own stop and beat forever
    # (or die with a traceback); liveness comes from the kernel manager instead
    pool.prestart("python3")
    seen: list[int] = []
    executed = tmp_path / "out.ipynb"

    execute_stage(
        "add",
        SCENARIOS / "add_one.ipynb",
        executed,
        {"x": 41, "out_path": str(tmp_path / "x.txt")},
        pool,
        on_cell=lambda done, total: seen.append(len(heartbeats())),
    )

    assert seen and set(seen) == {0}
    assert heartbeats() == []
    assert (tmp_path / "x.txt").read_text() == "42"
    assert nbformat.read(executed, as_version=4).cells


def test_a_kernel_that_dies_is_reported_without_a_heartbeat(pool, tmp_path) -> None:
    with pytest.raises(KernelDiedError) as info:
        execute_stage("dies", SCENARIOS / "kernel_dies.ipynb", tmp_path / "out.ipynb", {}, pool)

    assert info.value.stage == "dies"


def test_a_failing_cell_names_the_cell(pool, tmp_path) -> None:
    with pytest.raises(CellError) as info:
        execute_stage(
            "fails", SCENARIOS / "fails_in_cell_2.ipynb", tmp_path / "out.ipynb", {}, pool
        )

    assert info.value.stage == "fails"
    assert "cell" in str(info.value)
