"""What tests share besides fixtures: the repository's paths, spec texts, a port, a wait."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
#: the scenario notebooks, named for what they do
SCENARIOS = REPO / "tests" / "notebooks"

#: two scenario stages, a → b (a writes x + 1, b reads it), with a ci profile;
#: tests append stages to it
CHAIN = """
    name: p
    profiles:
      ci: {x: 10}
    stages:
      a:
        notebook: notebooks/add_one.ipynb
        params: {x: 1}
        outputs: {out_path: out.txt}
      b:
        notebook: notebooks/reads_input.ipynb
        params: {in_path: "${a.outputs.out_path}"}
        outputs: {out_path: out.txt}
"""
#: a stage that raises in its second cell, and one that needs it
FAILS_FIRST = """
    name: p
    stages:
      fail:
        notebook: notebooks/fails_in_cell_2.ipynb
      after:
        notebook: notebooks/add_one.ipynb
        needs: [fail]
        outputs: {out_path: out.txt}
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_ping(
    proc: subprocess.Popen[bytes], url: str, log: Callable[[], str], timeout: float
) -> None:
    """Wait until the server process at ``url`` answers ``/ping``; fail with its log if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}):\n{log()}")
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server did not answer /ping within {timeout:.0f} s:\n{log()}")
