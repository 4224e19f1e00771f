"""The panel in a real browser: headless Chromium on `mlnb lab` runs the example pipeline."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import leftover_processes
from tests.helpers import REPO, SCENARIOS, free_port
from tests.lab.conftest import TYPO, clean_env, example_project

CHROMIUM = Path("/usr/bin/chromium")
#: Debian's chromium, as CI runs it: no sandbox (a container), nothing that phones home
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO / "reports" / "lab-panel.png"
ALL_ENDED = """() => {
    const stages = [...document.querySelectorAll('.mlnb-dag .mlnb-stage')];
    const exited = document.querySelector('.mlnb-launch-exited');
    return exited && stages.length && stages.every(g => g.dataset.state !== 'running');
}"""

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (/usr/bin/chromium): "
    "apt-get install -y --no-install-recommends chromium (.ci/run does)",
)


def _wait_for_server(proc: subprocess.Popen[bytes], url: str, token: str, log: Path) -> None:
    request = urllib.request.Request(
        f"{url}/api/status", headers={"Authorization": f"token {token}"}
    )
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"mlnb lab exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)


def _launches(url: str, token: str) -> str:
    request = urllib.request.Request(
        f"{url}/mlnb/api/launches", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.dumps(json.loads(answer.read()), indent=1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_panel_runs_the_example_pipeline_and_every_stage_finishes(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    root = example_project(tmp_path / "example")
    (root / "pipelines" / "typo.yaml").write_text(textwrap.dedent(TYPO))
    for name in ("add_one", "reads_input"):
        shutil.copy(SCENARIOS / f"{name}.ipynb", root / "notebooks" / f"{name}.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    env = {
        **clean_env(),
        "HOME": str(tmp_path / "home"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
    }
    log = tmp_path / "lab.log"
    with log.open("wb") as out:
        lab = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlnb",
                "lab",
                "--no-browser",
                "--port",
                str(port),
                "--ServerApp.ip=127.0.0.1",
                f"--IdentityProvider.token={token}",
                "--ServerApp.port_retries=0",
                *(["--allow-root"] if os.geteuid() == 0 else []),  # CI's containers run as root
            ],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_server(lab, url, token, log)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium"),
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 900},
            )
            try:
                page = browser.new_page()
                page.set_default_timeout(180_000)
                page.goto(f"{url}/lab?token={token}")
                page.click('li[data-id="mlnb-panel"]')
                page.wait_for_selector('.mlnb-dag .mlnb-stage[data-stage="evaluate"]')
                stages = page.locator(".mlnb-dag .mlnb-stage")
                assert stages.count() == 3
                page.select_option(".mlnb-profile", "ci")
                page.click(".mlnb-run")
                page.wait_for_function(ALL_ENDED, timeout=0)  # pytest's timeout bounds it
                states = {
                    stages.nth(i).get_attribute("data-stage"): stages.nth(i).get_attribute(
                        "data-state"
                    )
                    for i in range(stages.count())
                }
                assert states == dict.fromkeys(("prepare", "train", "evaluate"), "succeeded"), (
                    _launches(url, token)
                )
                assert page.get_attribute(".mlnb-launch", "data-returncode") == "0"
                page.wait_for_selector('.mlnb-model[data-model="cancer"] .mlnb-champion')
                assert "v1" in page.inner_text('.mlnb-model[data-model="cancer"] .mlnb-champion')
                page.click('.mlnb-runs .mlnb-chip[data-stage="train"]')
                page.wait_for_selector(".mlnb-executed iframe")
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.locator("#mlnb-panel").screenshot(path=str(SCREENSHOT))
                # a spec's problem is shown on the stage it is about, in mlnb check's words
                page.select_option(".mlnb-pipeline-select", "typo")
                page.wait_for_selector('.mlnb-stage.mlnb-has-problem[data-stage="second"]')
                (problem,) = page.locator(".mlnb-pipelines .mlnb-problem").all_inner_texts()
                assert "names unknown stage 'frist'; did you mean 'first'?" in problem
                # the toolbar of a stage notebook runs the parameters of that run in its kernel
                notebook = root / "notebooks" / "train.ipynb"
                before = notebook.read_bytes()
                page.goto(f"{url}/lab/tree/notebooks/train.ipynb?token={token}")
                page.click(".jp-NotebookPanel-toolbar >> text=parameters of…")
                choice = page.locator(".jp-Dialog select.mlnb-parameters-choice")
                assert "run " in choice.locator("option").first.inner_text()
                page.click(".jp-Dialog .jp-mod-accept")
                source = page.locator(".jp-Dialog .mlnb-params-source").inner_text()
                assert "n_estimators = 5" in source and "train.csv" in source, source
                page.click(".jp-Dialog .jp-mod-accept")
                assert notebook.read_bytes() == before
            finally:
                browser.close()
    finally:
        lab.send_signal(signal.SIGTERM)
        lab.wait(120)
    assert not leftover_processes(root)
