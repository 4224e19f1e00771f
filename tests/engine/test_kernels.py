"""The kernel pool and the fork server: fresh, isolated kernels, all stopped."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import psutil
import pytest

from mlnb.engine.forkserver import ForkedProcess, ForkServer
from mlnb.engine.kernels import KernelPool, connect, handshake, kernel_pid


def _run(km, code: str) -> str:
    """Execute code on a pooled kernel and return what it printed."""

    async def go() -> str:
        client = km.client()
        connect(client)
        try:
            # IOPub reaches us before the code runs, as in a stage
            await handshake(client, timeout=60)
            reply = await client.execute_interactive(code, timeout=30, output_hook=sink)
            assert reply["content"]["status"] == "ok", reply["content"]
            return "".join(out)
        finally:
            client.stop_channels()

    out: list[str] = []

    def sink(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    return asyncio.run(go())


@pytest.mark.parametrize("fork", [True, False])
def test_kernels_are_fresh_processes_with_the_pool_environment(fork: bool, tmp_path) -> None:
    pool = KernelPool(env={"MLNB_TEST_MARK": "pooled"}, cwd=tmp_path, fork=fork)
    try:
        first, second = pool.acquire("python3"), pool.acquire("python3")
        assert isinstance(first.provisioner.process, ForkedProcess) is fork
        pids = {kernel_pid(first), kernel_pid(second)}
        assert len(pids) == 2 and os.getpid() not in pids
        code = (
            "import os, random, sys\n"
            "print(os.getpid(), os.environ['MLNB_TEST_MARK'], os.getcwd(), random.random(),"
            " 'shared' in globals())\n"
            "shared = 1\n"
        )
        a = _run(first, code).split()
        b = _run(second, code).split()
        assert a[0] != b[0] and {int(a[0]), int(b[0])} == pids
        assert a[1] == b[1] == "pooled"
        assert a[2] == b[2] == str(tmp_path)
        assert a[3] != b[3]  # each fork re-seeds random
        assert a[4] == b[4] == "False"  # nothing of another kernel's state
        for km in (first, second):
            pool.release(km)
    finally:
        pool.close()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_close_stops_prestarted_and_live_kernels_and_the_server(tmp_path) -> None:
    pool = KernelPool(cwd=tmp_path)
    pool.prestart("python3", 2)
    km = pool.acquire("python3")
    server = pool._server.pid
    live = kernel_pid(km)
    pool.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and psutil.pid_exists(live):
        time.sleep(0.05)
    assert not psutil.pid_exists(live)
    assert server is not None and not psutil.pid_exists(server)


def test_a_killed_kernel_is_seen_dead(tmp_path) -> None:
    pool = KernelPool(cwd=tmp_path)
    try:
        km = pool.acquire("python3")
        process = km.provisioner.process
        assert process.poll() is None
        pool.kill(km)
        assert process.wait(timeout=10) != 0
    finally:
        pool.close()


def test_fork_server_only_takes_this_interpreters_ipykernel() -> None:
    server = ForkServer()
    launcher = [sys.executable, "-m", "ipykernel_launcher", "-f", "c.json"]
    try:
        assert server.usable_for(launcher) == ["-f", "c.json"]
        assert server.pid is not None  # started on first use, with no flags
        flagged = [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "c"]
        assert server.usable_for(flagged) is None  # other flags: an ordinary start
    finally:
        server.stop()
    flagged_first = ForkServer()
    try:
        assert flagged_first.usable_for(flagged) == ["-f", "c"]
        assert flagged_first.flags == ["-Xfrozen_modules=off"]
    finally:
        flagged_first.stop()
    assert server.usable_for(["/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "c"]) in (
        None,
        ["-f", "c"],  # only where /usr/bin/python3 is this very interpreter
    )
    assert server.usable_for(["R", "--slave", "-e", "IRkernel::main()"]) is None


def test_an_unknown_kernel_fails_clearly(tmp_path) -> None:
    from mlnb.engine.kernels import KernelStartError

    pool = KernelPool(cwd=tmp_path)
    try:
        with pytest.raises(KernelStartError, match="no-such-kernel"):
            pool.acquire("no-such-kernel")
    finally:
        pool.close()


OWNER = """
import sys
from mlnb.engine.kernels import KernelPool, kernel_pid
pool = KernelPool(fork={fork})
km = pool.acquire("python3")
print(kernel_pid(km), flush=True)
sys.stdin.readline()  # until killed
"""


@pytest.mark.parametrize("fork", [True, False])
def test_kernels_exit_when_the_process_that_started_them_is_killed(fork: bool, tmp_path) -> None:
    """SIGKILL leaves no cleanup to run: the kernel must notice its parent went away."""
    import subprocess

    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER.format(fork=fork)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert owner.stdout is not None
    pid = int(owner.stdout.readline())
    kernel = psutil.Process(pid)
    assert kernel.is_running()
    owner.kill()
    owner.wait()
    try:
        kernel.wait(timeout=20)  # ipykernel's parent poller looks once a second
    except psutil.TimeoutExpired:
        kernel.kill()
        raise AssertionError(f"kernel {pid} outlived its owner") from None


def test_kernels_get_a_servers_credentials_as_mlflows_variables(tmp_path) -> None:
    """The URI a kernel's MLflow prints in its links carries no user info."""
    uri = "http://alice:s3cr%40t@127.0.0.1:5999"
    pool = KernelPool(env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    try:
        km = pool.acquire("python3")
        code = (
            "import os\n"
            "print(os.environ['MLFLOW_TRACKING_URI'], os.environ['MLFLOW_TRACKING_USERNAME'],"
            " os.environ['MLFLOW_TRACKING_PASSWORD'])\n"
        )
        found = _run(km, code).split()
        pool.release(km)
    finally:
        pool.close()
    assert found == ["http://127.0.0.1:5999", "alice", "s3cr@t"]


def test_installed_kernels_are_those_jupyter_client_finds(tmp_path, monkeypatch) -> None:
    """Found without importing jupyter_client, the same names as its KernelSpecManager."""
    from jupyter_client.kernelspec import KernelSpecManager

    from mlnb.engine.kernelspecs import installed_kernels

    extra = tmp_path / "share" / "kernels"
    (extra / "Other-Kernel").mkdir(parents=True)
    (extra / "Other-Kernel" / "kernel.json").write_text(
        json.dumps({"argv": ["python", "-m", "ipykernel_launcher"], "display_name": "Other"})
    )
    (extra / "not-a-kernel").mkdir()  # no kernel.json
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share"))

    found = installed_kernels()

    assert found == {name.lower() for name in KernelSpecManager().find_kernel_specs()}
    assert {"other-kernel", "python3"} <= found
    assert "not-a-kernel" not in found


def test_a_kernel_runs_the_warmup_before_it_is_handed_out(tmp_path) -> None:
    """Its effect is there when the stage starts, unrecorded; a failing warm-up is let be."""
    warmed = KernelPool(cwd=tmp_path, warmup="import json as warm\nwarm_mark = 41 + 1\n")
    failing = KernelPool(cwd=tmp_path, warmup="raise RuntimeError('no store')\n")
    try:
        km = warmed.acquire("python3")
        out = _run(km, "print(warm_mark, warm.__name__, len(In))")
        assert out.split() == ["42", "json", "2"]  # In: '' and this cell, not the warm-up
        assert _run(failing.acquire("python3"), "print('fine')") == "fine\n"
    finally:
        warmed.close()
        failing.close()
