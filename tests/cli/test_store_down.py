"""A store that is down is a clear error within seconds, not after MLflow's minutes of retries."""

from __future__ import annotations

import os
import time

from tests.helpers import CHAIN, free_port


def test_run_against_a_server_that_is_down_fails_fast(project) -> None:
    project.spec(CHAIN)
    down = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": down}
    started = time.monotonic()

    done = project.mlnb("run", "p", env=env, timeout=120)

    took = time.monotonic() - started
    assert done.returncode != 0
    assert f"error: cannot open the MLflow store {down}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert took < 45, f"took {took:.0f} s to fail"  # MLflow's own defaults: minutes
