"""The committed JupyterLab extension is built from the sources in lab/ as they are."""

from __future__ import annotations

import json
import runpy

from tests.helpers import REPO

BUNDLE = REPO / "mlnb" / "lab" / "labextension"


def test_the_committed_bundle_was_built_from_the_sources_as_they_are() -> None:
    stamp = runpy.run_path(str(REPO / "scripts" / "lab_sources.py"))
    assert (BUNDLE / "sources.sha256").read_text().strip() == stamp["sources_sha256"](), (
        "lab/ changed since mlnb/lab/labextension was built: run make lab-build and commit it"
    )
    built = json.loads((BUNDLE / "package.json").read_text())
    source = json.loads((REPO / "lab" / "package.json").read_text())
    assert (built["name"], built["version"]) == (source["name"], source["version"])
    assert (BUNDLE / "static" / built["jupyterlab"]["_build"]["load"].split("/")[-1]).is_file()
