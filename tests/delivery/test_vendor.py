"""mlnb's own wheel: built from its source tree (installed editable here) without leaving
anything in it, or packed again from an installed wheel's RECORD, the same bytes either way."""

from __future__ import annotations

import base64
import csv
import io
import shutil
import tomllib
from email.parser import Parser
from hashlib import sha256
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from mlnb import __version__
from mlnb.delivery.vendor import Wheel, pack, repacked, source_tree
from tests.delivery.helpers import (
    DIST_INFO,
    PACKAGE,
    WHEEL,
    from_the_wheel,
    mlnb_cli,
    wheel_entries,
    wheel_files,
)
from tests.helpers import REPO


def test_the_source_tree_is_the_one_mlnb_runs_from() -> None:
    assert source_tree(PACKAGE) == REPO.resolve()


def test_a_checkout_on_the_path_is_a_source_tree(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "mlnb"\n')
    (tmp_path / "mlnb").mkdir()

    assert source_tree(tmp_path / "mlnb") == tmp_path


def test_an_installed_wheel_is_no_source_tree(installed: Path) -> None:
    assert source_tree(installed / "mlnb") is None


def test_packed_again_from_its_record_it_is_the_wheel_it_was_installed_from(
    installed: Path, vendored: bytes
) -> None:
    assert repacked(metadata.Distribution.at(installed / DIST_INFO)) == Wheel(WHEEL, vendored)


def test_pack_writes_one_order_whatever_order_the_files_come_in() -> None:
    files = {
        "pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nTag: py3-none-any\n",
        "pkg/sub/b.py": b"b = 2\n",
        "pkg-1.0.dist-info/METADATA": b"Name: pkg\nVersion: 1.0\n",
        "pkg/a.py": b"a = 1\n",
        "pkg-1.0.dist-info/RECORD": b"stale,,\n",
    }

    packed = pack(files)

    assert packed == pack(dict(reversed(files.items())))
    assert list(wheel_entries(packed)) == [
        "pkg/a.py",
        "pkg/sub/b.py",
        "pkg-1.0.dist-info/METADATA",
        "pkg-1.0.dist-info/WHEEL",
        "pkg-1.0.dist-info/RECORD",
    ]
    assert b"stale" not in wheel_files(packed)["pkg-1.0.dist-info/RECORD"]


def test_the_vendored_wheel_says_what_pyproject_says(vendored: bytes) -> None:
    files = wheel_files(vendored)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    meta = Parser().parsestr(files[f"{DIST_INFO}/METADATA"].decode())

    assert (meta["Name"], meta["Version"]) == ("mlnb", __version__)
    assert SpecifierSet(meta["Requires-Python"]) == SpecifierSet(project["requires-python"])
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    assert [str(r) for r in requires if r.marker is None] == [
        str(Requirement(r)) for r in project["dependencies"]
    ]
    assert "mlnb = mlnb.cli:main" in files[f"{DIST_INFO}/entry_points.txt"].decode()


def test_the_vendored_wheel_records_every_entry_at_a_fixed_time_and_mode(vendored: bytes) -> None:
    files = wheel_files(vendored)
    entries = wheel_entries(vendored)
    record = f"{DIST_INFO}/RECORD"
    rows = list(csv.reader(io.StringIO(files[record].decode())))

    assert [row[0] for row in rows] == list(entries)  # in the wheel's order, RECORD last
    assert rows[-1] == [record, "", ""]
    for name, digest, size in rows[:-1]:
        expected = base64.urlsafe_b64encode(sha256(files[name]).digest()).rstrip(b"=").decode()
        assert (digest, int(size)) == (f"sha256={expected}", len(files[name])), name
    assert {(info.date_time, info.external_attr >> 16) for info in entries.values()} == {
        ((1980, 1, 1, 0, 0, 0), 0o100644)
    }


def test_a_changed_installed_file_is_refused_naming_it(
    installed: Path, tiny: Path, tmp_path: Path
) -> None:
    site = shutil.copytree(installed, tmp_path / "site")
    readme = site / "mlnb" / "delivery" / "templates" / "project" / "README.md"
    readme.write_text(readme.read_text() + "changed after install\n")

    done = mlnb_cli(tiny, "build", "pipelines/tiny.yaml", env=from_the_wheel(site))

    assert done.returncode == 1
    assert (
        f"error: mlnb/delivery/templates/project/README.md in {site} is not the file mlnb was "
        "installed with" in done.stderr
    ), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tiny / "dist").exists()


def build_litter() -> dict[str, int]:
    """What a build in the source tree would leave there: build/ and *.egg-info, with times."""
    roots = [REPO / "build", *REPO.glob("*.egg-info"), *PACKAGE.rglob("*.egg-info")]
    return {
        str(path): path.stat().st_mtime_ns
        for root in roots
        if root.exists()
        for path in [root, *root.rglob("*")]
    }


def test_building_the_wheel_leaves_the_source_tree_as_it_was(tiny: Path) -> None:
    before = build_litter()

    done = mlnb_cli(tiny, "build", "pipelines/tiny.yaml")  # a new process: the wheel is built

    assert done.returncode == 0, done.stderr
    assert build_litter() == before
    assert not (REPO / "build").exists()
