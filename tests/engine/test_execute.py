"""execute_stage: one notebook through papermill on a pooled kernel."""

from __future__ import annotations

import threading
import time

import nbformat
import pytest
from jupyter_client.channels import HBChannel

from mlnb.engine import execute
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


def outputs_of(executed) -> list[dict]:
    nb = nbformat.read(executed, as_version=4)
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_stage_that_prints_a_lot_keeps_its_first_and_last_output(
    pool, tmp_path, stream: str
) -> None:
    executed = tmp_path / "out.ipynb"
    forwarded: list[str] = []

    execute_stage(
        "loud",
        SCENARIOS / "prints_a_lot.ipynb",
        executed,
        {"megabytes": 2, "stream": stream, "out_path": str(tmp_path / "done.txt")},
        pool,
        on_output=forwarded.append,
        output_limit=200_000,
    )

    assert (tmp_path / "done.txt").read_text() == "done"  # the cells after it ran
    outputs = outputs_of(executed)
    assert {out["name"] for out in outputs} == {stream}
    texts = [out["text"] for out in outputs]
    notes = [t for t in texts if t.startswith("\n[mlnb: ")]
    assert len(notes) == 1, texts[:3]
    printed = 2 * 1024 * 1024
    head = "".join(texts[: texts.index(notes[0])])
    tail = "".join(texts[texts.index(notes[0]) + 1 :])
    assert 90_000 < len(head) <= 100_000 and len(tail) == 100_000
    assert head.startswith("x" * 1023 + "\n") and tail.endswith("x" * 1023 + "\n")
    dropped = printed - len(head) - len(tail)
    assert notes[0] == (
        f"\n[mlnb: {dropped / 1e6:.0f} MB of {stream} dropped; the cell printed 2 MB, more "
        f"than the 200 KB kept: its first {len(head) / 1e3:.0f} KB above, its last 100 KB below]\n"
    )
    # forwarded: what was kept, in the notebook's order, and nothing more
    assert "".join(forwarded).startswith(head)
    assert "".join(forwarded).endswith(notes[0] + tail)
    assert len("".join(forwarded)) < 250_000


def test_a_stage_within_the_limit_keeps_all_it_printed(pool, tmp_path) -> None:
    executed = tmp_path / "out.ipynb"
    execute_stage(
        "quiet",
        SCENARIOS / "prints_a_lot.ipynb",
        executed,
        {"megabytes": 0.1, "out_path": str(tmp_path / "done.txt")},
        pool,
    )
    text = "".join(out["text"] for out in outputs_of(executed))
    assert text == ("x" * 1023 + "\n") * 102


def test_output_still_coming_after_the_reply_is_read_not_timed_out(pool, tmp_path) -> None:
    # the kernel is done in a blink; mlnb reads its 1,200 flushed writes for about 6 s,
    # past nbclient's four seconds for the output still queued after a cell's reply
    executed = tmp_path / "out.ipynb"
    forwarded: list[str] = []

    def slow(text: str) -> None:
        time.sleep(0.005)
        forwarded.append(text)

    execute_stage(
        "flushes",
        SCENARIOS / "flushes_often.ipynb",
        executed,
        {"writes": 1200, "out_path": str(tmp_path / "done.txt")},
        pool,
        on_output=slow,
    )

    assert (tmp_path / "done.txt").read_text() == "done"
    text = "".join(out["text"] for out in outputs_of(executed))
    assert text == "".join(f"{i}\n" for i in range(1200))
    assert "".join(forwarded) == text


def test_an_unknown_magic_names_its_usage_error(pool, tmp_path) -> None:
    with pytest.raises(CellError) as info:
        execute_stage("magic", SCENARIOS / "unknown_magic.ipynb", tmp_path / "out.ipynb", {}, pool)

    error = info.value
    assert (error.cell, error.ename) == (2, "UsageError")
    assert error.evalue == "Line magic function `%nosuchmagic` not found."
    assert str(error).startswith(
        "stage 'magic' failed: cell 2 raised UsageError: Line magic function `%nosuchmagic`"
    )


def notebook_of(path, *sources: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, str(path))
    return path


def test_the_executed_notebook_is_written_less_often_and_shows_a_long_cell(
    pool, tmp_path, monkeypatch
) -> None:
    """papermill would write it twice a cell; the engine at most every SAVE_EVERY seconds,
    yet a long cell shows as running in the file while it runs, and the end is written."""
    monkeypatch.setattr(execute, "SAVE_EVERY", 0.5)
    writes: list[float] = []
    original = execute._Manager._write

    def counted(self, **kwargs) -> None:
        writes.append(time.monotonic())
        original(self, **kwargs)

    monkeypatch.setattr(execute._Manager, "_write", counted)
    quick = [f"x{i} = {i}" for i in range(20)]
    source = notebook_of(
        tmp_path / "nb.ipynb", *quick, "import time\ntime.sleep(30)", "print('done')"
    )
    executed = tmp_path / "out.ipynb"
    ended: list[BaseException] = []

    def run() -> None:
        try:
            execute_stage("s", source, executed, {}, pool, timeout=60)
        except KernelDiedError as exc:  # killed below, once the long cell showed
            ended.append(exc)

    stage = threading.Thread(target=run)
    started = time.monotonic()
    stage.start()
    try:
        deadline = time.monotonic() + 25
        running = None
        while time.monotonic() < deadline and running is None:
            time.sleep(0.1)
            try:
                cells = nbformat.read(executed, as_version=4).cells
            except Exception:  # not written yet, or being replaced
                continue
            states = [c.metadata.get("papermill", {}).get("status") for c in cells]
            running = states.index("running") if "running" in states else None
        assert running == len(quick)  # the long cell, counted from 0
        quick_done = time.monotonic() - started
        # papermill's own: start, then each of 21 cells started and completed
        assert len(writes) < 2 * len(quick)
        assert len(writes) <= 3 + quick_done / execute.SAVE_EVERY
    finally:
        pool.kill_all()
        stage.join(timeout=60)
    assert ended and ended[0].cell == len(quick) + 1  # 1-based: the long cell
    final = nbformat.read(executed, as_version=4).cells
    assert [c.metadata.papermill.status for c in final[: len(quick)]] == ["completed"] * 20
