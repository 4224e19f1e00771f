"""Fixtures of the CI/CD tests: the tiny project, bundles of it, mlnb's vendored wheel
installed, a scaffolded project.

The package-scoped fixtures are made once and read by several test modules:
the wheel a bundle vendors and a folder pip installed it into (the bundle and
vendor tests), and the scaffolded project (``mlnb init``, then check, test and
build as its CI workflow runs them; the scaffold and ``mlnb test`` tests), the
one expensive fixture.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlnb.delivery.bundle import build as build_bundle
from tests.delivery.helpers import (
    MONITOR,
    TINY,
    WHEEL,
    Scaffolded,
    bundle_members,
    manifest_of,
    mlnb_cli,
    mlnb_test,
    scenario_project,
    write,
)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A project with pipeline ``tiny`` (three stages, a data file, a model section) and a
    monitor that retrains with it; not in git."""
    root = scenario_project(tmp_path / "tiny")
    write(root / "pipelines" / "tiny.yaml", TINY)
    write(root / "pipelines" / "monitor.yaml", MONITOR)
    write(root / "data" / "in.txt", "41\n")
    return root


@pytest.fixture
def bundles(tiny: Path) -> dict[str, Path]:
    """Two bundles of ``tiny`` with different contents: 1.0.0, and 2.0.0 after a spec change."""
    first = build_bundle(tiny / "pipelines" / "tiny.yaml", version="1.0.0").path
    spec = tiny / "pipelines" / "tiny.yaml"
    spec.write_text(spec.read_text().replace("ci: {x: 10}", "ci: {x: 20}"))
    second = build_bundle(spec, version="2.0.0").path
    spec.write_text(textwrap.dedent(TINY))
    assert manifest_of(first)["content_sha256"] != manifest_of(second)["content_sha256"]
    return {"1.0.0": first, "2.0.0": second}


@pytest.fixture(scope="package")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> Scaffolded:
    """``mlnb init shop``, then what its CI workflow runs: check, test, build."""
    parent = tmp_path_factory.mktemp("scaffold")
    root = parent / "shop"
    init = mlnb_cli(parent, "init", "shop")
    check = mlnb_cli(root, "check")
    tested = mlnb_test(root, "reports/mlnb-test.xml")
    build = mlnb_cli(root, "build", "pipelines/shop.yaml")
    return Scaffolded(root, init, check, tested, build)


@pytest.fixture(scope="package")
def vendored(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The wheel a bundle vendors, built here from mlnb's source tree."""
    root = scenario_project(tmp_path_factory.mktemp("vendored") / "tiny")
    write(root / "pipelines" / "tiny.yaml", TINY)
    write(root / "data" / "in.txt", "41\n")
    return bundle_members(build_bundle(root / "pipelines" / "tiny.yaml").path)[f"vendor/{WHEEL}"]


@pytest.fixture(scope="package")
def installed(tmp_path_factory: pytest.TempPathFactory, vendored: bytes) -> Path:
    """A folder that pip installed the vendored wheel into (``--target``): on PYTHONPATH, mlnb
    runs from there, installed from a wheel."""
    folder = tmp_path_factory.mktemp("installed")
    wheel = folder / WHEEL
    wheel.write_bytes(vendored)
    site = folder / "site"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"),
            *("--target", str(site), str(wheel)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return site
