"""mlnb as a wheel: what a bundle's ``vendor/`` holds, so the bundle installs mlnb without an index.

The wheel is the distribution of the mlnb that is running, wherever it comes from:

- **A source tree** (``pip install -e .``, found through the distribution's
  ``direct_url.json``; or a checkout on ``sys.path``): ``pip wheel`` builds it
  with the backend ``pyproject.toml`` names, from a copy of what the build
  reads (the top-level build files, the data files ``pyproject.toml`` names
  and the package) in a temporary folder, so nothing (``build/``,
  ``*.egg-info``) lands in the tree. The backend must be
  installed here (``--no-build-isolation``: no index is asked); pip's
  ``--check-build-dependencies`` names a missing or too old one.
- **An installed wheel**: the files its ``RECORD`` lists, each checked against
  its hash there, are packed again, less what the installer wrote itself
  (``INSTALLER``, ``REQUESTED``, ``direct_url.json``, bytecode, the scripts it
  made from the entry points); the data files it put outside the package go
  back under ``<name>.data/data/``.

Design decisions:

- **The contents decide the bytes.** Either way the entries are written in one
  order (the package's files sorted, then the ``.dist-info`` files, ``RECORD``
  last), with a fixed time and mode and a ``RECORD`` of their own, so the wheel
  depends on neither the clock, nor the umask the tree was checked out with,
  nor how mlnb was installed. ``zipfile`` writes them: the ``wheel`` package's
  writer takes its time from ``SOURCE_DATE_EPOCH`` in the process environment,
  which a library should not set.
- **Built once per process.** A build is cached by the bytes of its inputs
  (the same inputs build the same wheel), so building the bundles of several
  pipelines in one process asks pip once.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import io
import json
import stat
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import Parser
from importlib import metadata
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse
from urllib.request import url2pathname

from mlnb.errors import MlnbError

DIST = "mlnb"
#: what a build reads at the top of a source tree, besides the package (setuptools' defaults)
BUILD_FILES = (
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "MANIFEST.in",
    "README*",
    "LICEN[CS]E*",
    "COPYING*",
    "NOTICE*",
    "AUTHORS*",
)
#: ``.dist-info`` files an installer writes, not the wheel (PEP 376, 610, 627)
INSTALLER_FILES = frozenset({"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"})
#: where installers put the scripts they make from entry points (posix, Windows schemes)
SCRIPT_FOLDERS = frozenset({"bin", "Scripts"})
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
_UNIX = 3  # ZipInfo.create_system: the mode in external_attr is a Unix one

#: a build's inputs: (path relative to the source tree, bytes), sorted
Inputs = tuple[tuple[str, bytes], ...]


class VendorError(MlnbError):
    """mlnb's own wheel cannot be built, or its installed files are not what RECORD says."""


@dataclass(frozen=True)
class Wheel:
    """A wheel file: its name (``mlnb-0.1.0-py3-none-any.whl``) and bytes."""

    name: str
    data: bytes


def mlnb_wheel() -> Wheel:
    """The running mlnb as a wheel: built from its source tree, or packed again from its install.

    Raises:
        VendorError: pip cannot build it (naming what the build needs), or an
            installed file is missing or differs from its ``RECORD`` hash.
    """
    package = Path(__file__).resolve().parents[1]
    source = source_tree(package)
    if source is not None:
        return _built(str(source), build_inputs(source, package))
    return repacked(_installed(package))


def source_tree(package: Path) -> Path | None:
    """The source tree the running package is imported from; None when it is installed.

    An editable install names its tree in ``direct_url.json``; a checkout on
    ``sys.path`` has ``pyproject.toml`` beside the package.
    """
    for root in (*_editable_roots(), package.parent):
        if package.is_relative_to(root) and (root / "pyproject.toml").is_file():
            return root
    return None


def _editable_roots() -> list[Path]:
    """The folders that editable installs of mlnb point to (PEP 610)."""
    roots = []
    for dist in metadata.distributions(name=DIST):
        try:
            direct = json.loads(dist.read_text("direct_url.json") or "{}")
            editable = bool(direct.get("dir_info", {}).get("editable"))
            url = urlparse(str(direct.get("url", "")))
        except (ValueError, AttributeError):
            continue
        if editable and url.scheme == "file":
            roots.append(Path(url2pathname(url.path)).resolve())
    return roots


def _installed(package: Path) -> metadata.Distribution:
    """The installed distribution that the running package is part of."""
    for dist in metadata.distributions(name=DIST):
        if Path(str(dist.locate_file(package.name))).resolve() == package:
            return dist
    raise VendorError(
        f"mlnb at {package} is neither installed nor in a source tree; install it with pip"
    )


def build_inputs(source: Path, package: Path) -> Inputs:
    """What building the wheel reads: the top-level build files, the data files that
    ``pyproject.toml`` names (``[tool.setuptools.data-files]``) and the package's files."""
    patterns = (*BUILD_FILES, *_data_files(source / "pyproject.toml"))
    paths = {p for pattern in patterns for p in source.glob(pattern) if p.is_file()}
    paths.update(
        p
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.relative_to(package).parts
    )
    try:
        return tuple(sorted((p.relative_to(source).as_posix(), p.read_bytes()) for p in paths))
    except OSError as exc:
        raise VendorError(f"cannot read mlnb's source tree {source}: {exc}") from None


def _data_files(pyproject: Path) -> list[str]:
    """The globs of ``[tool.setuptools.data-files]`` (files installed outside the package)."""
    try:
        config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise VendorError(f"cannot read {pyproject}: {exc}") from None
    table = config.get("tool", {}).get("setuptools", {}).get("data-files", {})
    return [str(g) for globs in table.values() if isinstance(globs, list) for g in globs]


@functools.cache
def _built(source: str, inputs: Inputs) -> Wheel:
    """``pip wheel`` on a copy of ``inputs``; the wheel packed again in :func:`pack`'s order."""
    with tempfile.TemporaryDirectory(prefix="mlnb-wheel-") as scratch:
        tree, out = Path(scratch, "src"), Path(scratch, "out")
        for rel, data in inputs:
            path = tree / PurePosixPath(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        done = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"),
                *("--no-deps", "--no-index", "--no-build-isolation", "--check-build-dependencies"),
                *("--wheel-dir", str(out), str(tree)),
            ],
            capture_output=True,
            text=True,
        )
        wheels = sorted(out.glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise VendorError(
                f"cannot build mlnb's wheel from its source tree {source}: {_reason(done)} "
                "(the build backend its pyproject.toml names must be installed here)"
            )
        with zipfile.ZipFile(wheels[0]) as built:
            files = {i.filename: built.read(i) for i in built.infolist() if not i.is_dir()}
        return Wheel(wheels[0].name, pack(files))


def _reason(done: subprocess.CompletedProcess[str]) -> str:
    """pip's own words for a failed build: its ERROR lines, or the last line it wrote."""
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR: ")]
    if errors:
        return " ".join(errors).rstrip(".")
    return lines[-1].rstrip(".") if lines else f"pip exited with {done.returncode}"


def repacked(dist: metadata.Distribution) -> Wheel:
    """An installed distribution as a wheel again: the files its RECORD lists, checked.

    Files installed outside the package (the data files: the JupyterLab
    extension and its server config) go back under ``<name>.data/data/``.
    RECORD is read as written: ``importlib_metadata``, which some libraries
    put in place of the standard one, leaves those files out of ``files``.

    Raises:
        VendorError: it has no RECORD, or a file is missing or changed since it was installed.
    """
    where = dist.locate_file("")
    record = dist.read_text("RECORD")
    if record is None:
        raise VendorError(f"mlnb's installation in {where} has no RECORD; reinstall it with pip")
    files: dict[str, bytes] = {}
    data_files: dict[str, bytes] = {}
    for row in csv.reader(io.StringIO(record)):
        if not row or not row[0]:
            continue
        entry, digest = PurePosixPath(row[0]), row[1] if len(row) > 1 else ""
        if _written_by_installer(entry):
            continue
        if ".." in entry.parts:  # a data file, relative to the scheme's data folder
            rel = PurePosixPath(*(part for part in entry.parts if part != ".."))
            data_files[rel.as_posix()] = _checked(dist, entry, digest, rel)
        else:
            files[entry.as_posix()] = _checked(dist, entry, digest)
    dist_info = _dist_info(files)
    stem = dist_info.removesuffix(".dist-info")
    files.update({f"{stem}.data/data/{rel}": data for rel, data in data_files.items()})
    return Wheel(f"{stem}-{_tag(files, dist_info)}.whl", pack(files))


def _checked(
    dist: metadata.Distribution, entry: PurePosixPath, digest: str, rel: PurePosixPath | None = None
) -> bytes:
    """The bytes of RECORD ``entry``, checked against its ``sha256=`` ``digest``.

    A data file is where RECORD says, or (``pip install --target``, which moves
    the data folder into the target and leaves RECORD as it was) at ``rel`` in it.
    """
    where = dist.locate_file("")
    places = [dist.locate_file(entry)] + ([dist.locate_file(rel)] if rel is not None else [])
    data = None
    for place in places:
        try:
            data = Path(str(place)).read_bytes()
            break
        except OSError:
            continue
    if data is None:
        raise VendorError(f"{entry} of mlnb is missing from {where}; reinstall mlnb")
    if digest != f"sha256={_digest(data)}":
        raise VendorError(
            f"{entry} in {where} is not the file mlnb was installed with (its RECORD hash "
            "differs); reinstall mlnb"
        )
    return data


def _written_by_installer(entry: PurePosixPath) -> bool:
    """Whether a RECORD entry is the installer's: bytecode, scripts, its dist-info files."""
    outside = [part for part in entry.parts if part != ".."]
    return (
        (".." in entry.parts and bool(outside) and outside[0] in SCRIPT_FOLDERS)
        or "__pycache__" in entry.parts
        or entry.suffix == ".pyc"
        or (entry.parent.name.endswith(".dist-info") and entry.name in INSTALLER_FILES)
    )


def _tag(files: Mapping[str, bytes], dist_info: str) -> str:
    """The compressed tag set of a wheel's file name, from its ``WHEEL`` file."""
    wheel = Parser().parsestr(files[f"{dist_info}/WHEEL"].decode())
    parts = [tag.split("-") for tag in wheel.get_all("Tag") or ["py3-none-any"]]
    return "-".join(".".join(sorted({p[i] for p in parts})) for i in range(3))


def pack(files: Mapping[str, bytes]) -> bytes:
    """A wheel of ``files`` (path → bytes): one order, fixed times and modes, a fresh RECORD."""
    dist_info = _dist_info(files)
    record = f"{dist_info}/RECORD"
    body = {rel: data for rel, data in files.items() if rel != record}
    order = sorted(body, key=lambda rel: (rel.startswith(f"{dist_info}/"), rel))
    rows = [(rel, f"sha256={_digest(body[rel])}", str(len(body[rel]))) for rel in order]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([*rows, (record, "", "")])
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as wheel:
        for rel in order:
            wheel.writestr(_entry(rel), body[rel])
        wheel.writestr(_entry(record), text.getvalue())
    return raw.getvalue()


def _dist_info(files: Mapping[str, bytes]) -> str:
    found = {rel.split("/")[0] for rel in files if rel.split("/")[0].endswith(".dist-info")}
    if len(found) != 1:
        raise VendorError(f"a wheel holds one .dist-info folder, not {sorted(found) or 'none'}")
    return found.pop()


def _entry(rel: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(rel, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = _UNIX
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


def _digest(data: bytes) -> str:
    """A RECORD hash: urlsafe base64 of the sha256, without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
