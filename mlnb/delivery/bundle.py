"""Pipeline bundles: what ``mlnb build`` packs and ``mlnb deploy`` installs.

A bundle is one ``.tar.gz`` holding everything a pipeline needs to run away
from the working copy::

    manifest.json          format, pipeline, version, git commit, mlnb version,
                           Python, and the sha256 of every other file
    requirements.lock      the environment it was built (and tested) in, name==version
    pipelines/<spec>.yaml  the pipeline, and the monitor specs that retrain with it
    notebooks/...          the notebooks of its stages (and drift checks), outputs stripped
    <data files>           project files its parameters name
    vendor/<wheel>         mlnb as a wheel (mlnb.delivery.vendor), so the bundle
                           installs it without an index

Design decisions:

- **Same sources, same bytes.** Members are sorted, owned by root with fixed
  modes and time stamps, and gzip records no name or time; notebooks are
  rewritten without outputs by nbformat; mlnb's wheel is packed the same way,
  whether mlnb runs from its source tree or from a wheel. The default version is
  the first 12 hex digits of the contents' hash, so a version names exactly one
  content.
- **Verified before use.** :func:`read` re-hashes every member against the
  manifest and refuses members outside the bundle, links, extra files and a
  manifest whose content hash does not add up, naming the file at fault.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import sys
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.utils import canonicalize_name

from mlnb import __version__
from mlnb import notebook as nbmod
from mlnb._files import write_atomic
from mlnb.delivery.vendor import DIST, mlnb_wheel
from mlnb.errors import MlnbError
from mlnb.pipelines.locate import load_monitor, load_pipeline, monitors_of
from mlnb.specs.pipeline import Pipeline, project_path

FORMAT = 1
MANIFEST = "manifest.json"
LOCK = "requirements.lock"
VENDOR = "vendor"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_EPOCH = 315532800  # 1980-01-01, the earliest time a zip or wheel can hold


class BundleError(MlnbError):
    """A bundle cannot be built, or fails its manifest check."""


@dataclass(frozen=True)
class Manifest:
    """What a bundle says about itself."""

    name: str
    version: str
    pipeline: str
    content_sha256: str
    files: Mapping[str, str]
    git_commit: str | None
    git_dirty: bool | None
    mlnb_version: str
    python: str
    format: int = FORMAT

    def as_json(self) -> bytes:
        data = {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "pipeline": self.pipeline,
            "content_sha256": self.content_sha256,
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "mlnb_version": self.mlnb_version,
            "python": self.python,
            "files": dict(sorted(self.files.items())),
        }
        return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()

    @classmethod
    def of_folder(cls, folder: Path) -> Manifest:
        """The manifest of an unpacked bundle.

        Raises:
            OSError: the folder holds no manifest.
            BundleError: the manifest cannot be read.
        """
        return cls.from_json((folder / MANIFEST).read_bytes(), str(folder))

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        try:
            data = json.loads(raw)
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                pipeline=str(data["pipeline"]),
                content_sha256=str(data["content_sha256"]),
                files={str(k): str(v) for k, v in dict(data["files"]).items()},
                git_commit=data.get("git_commit"),
                git_dirty=data.get("git_dirty"),
                mlnb_version=str(data.get("mlnb_version", "")),
                python=str(data.get("python", "")),
                format=int(data["format"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{where}: {MANIFEST} is not a bundle manifest ({exc})") from None


@dataclass(frozen=True)
class Built:
    """A bundle ``mlnb build`` wrote, and the Dockerfile beside it."""

    path: Path
    dockerfile: Path
    manifest: Manifest


def build(spec: Path | str, out_dir: Path | None = None, version: str | None = None) -> Built:
    """Pack a pipeline into a reproducible bundle in ``out_dir`` (default ``<project>/dist``).

    Raises:
        SpecError: the pipeline (or a monitor spec retraining with it) is invalid.
        BundleError: a file cannot be read, or ``version`` is not a valid label.
    """
    from mlnb.tracking import git_info

    pipeline = load_pipeline(Path(spec))
    root = pipeline.root
    files = collect(pipeline)
    members = {rel: _content(root / rel) for rel in files}
    members[LOCK] = lock_text().encode()
    wheel = mlnb_wheel()
    members[f"{VENDOR}/{wheel.name}"] = wheel.data
    hashes = {rel: hashlib.sha256(data).hexdigest() for rel, data in members.items()}
    content = content_hash(hashes)
    if version is not None and not _VERSION.match(version):
        raise BundleError(
            f"'{version}' is not a bundle version: use letters, digits, '.', '_', '+' or '-'"
        )
    git = git_info(root)
    manifest = Manifest(
        name=pipeline.name,
        version=version or content[:12],
        pipeline=_relative(pipeline.path, root),
        content_sha256=content,
        files=hashes,
        git_commit=git.commit,
        git_dirty=git.dirty,
        mlnb_version=__version__,
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
    )
    members[MANIFEST] = manifest.as_json()
    out = out_dir or root / "dist"
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{manifest.name}-{manifest.version}.tar.gz"
    write_atomic(target, pack(members))
    dockerfile = target.with_name(f"{manifest.name}-{manifest.version}.Dockerfile")
    dockerfile.write_text(dockerfile_text(manifest, target.name, wheel.name))
    return Built(target, dockerfile, manifest)


def collect(pipeline: Pipeline) -> list[str]:
    """The project files a pipeline bundle holds, relative to the project root, sorted."""
    root = pipeline.root
    found = {_relative(pipeline.path, root)}
    for stage in pipeline.stages:
        found.add(_relative(stage.notebook, root))
    for monitor in monitors_of(pipeline):
        found.add(_relative(monitor, root))
        drift = load_monitor(monitor).drift_notebook
        if drift is not None:
            found.add(_relative(drift, root))
    for value in _param_values(pipeline):
        found.update(_project_files(value, root))
    return sorted(found)


def _param_values(pipeline: Pipeline) -> Iterable[Any]:
    spec = pipeline.spec
    yield from spec.params.values()
    for stage in spec.stages.values():
        yield from stage.params.values()
    for values in spec.profiles.values():
        yield from values.values()


def _project_files(value: Any, root: Path) -> list[str]:
    """Files under the project root that a parameter names (a file, or a folder's files)."""
    path = project_path(value, root)
    if path is None or not path.resolve().is_relative_to(root.resolve()):
        return []
    if path.is_file():
        return [_relative(path, root)]
    return [_relative(p, root) for p in sorted(path.rglob("*")) if p.is_file()]


def _relative(path: Path, root: Path) -> str:
    try:
        return PurePosixPath(path.resolve().relative_to(root.resolve())).as_posix()
    except ValueError:
        raise BundleError(
            f"{path} lies outside the project root {root}; a bundle holds only project files"
        ) from None


def _content(path: Path) -> bytes:
    """A file's bytes as bundled: notebooks without outputs, the rest as they are."""
    try:
        if path.suffix == ".ipynb":
            return nbmod.stripped_text(path).encode()
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from None


def lock_text() -> str:
    """``name==version`` for every distribution installed here but mlnb, sorted."""
    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        key = canonicalize_name(name)
        if key != DIST:
            seen.setdefault(key, f"{key}=={dist.version}")
    head = (
        f"# the environment mlnb {__version__} built this bundle in "
        f"(Python {sys.version_info.major}.{sys.version_info.minor})\n"
    )
    return head + "".join(line + "\n" for _, line in sorted(seen.items()))


def content_hash(hashes: Mapping[str, str]) -> str:
    """The hash of a bundle's contents: of every member's path and sha256, sorted."""
    digest = hashlib.sha256()
    for rel, sha in sorted(hashes.items()):
        digest.update(f"{rel}\0{sha}\n".encode())
    return digest.hexdigest()


def pack(members: Mapping[str, bytes]) -> bytes:
    """A deterministic ``.tar.gz`` of ``members`` (path → bytes)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(members):
            data = members[rel]
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mtime = _EPOCH
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def read(path: Path | str) -> tuple[Manifest, dict[str, bytes]]:
    """Open a bundle and check it against its manifest.

    Raises:
        BundleError: naming the bundle and what is wrong: not a bundle, a
            member outside it or not a plain file, a file missing, extra or
            changed, a content hash that does not add up, an unknown format.
    """
    path = Path(path)
    where = str(path)
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for info in tar.getmembers():
                name = info.name
                pure = PurePosixPath(name)
                if pure.is_absolute() or ".." in pure.parts:
                    raise BundleError(f"{where}: member '{name}' points outside the bundle")
                if info.isdir():
                    continue
                if not info.isfile():
                    raise BundleError(f"{where}: member '{name}' is not a plain file")
                handle = tar.extractfile(info)
                assert handle is not None
                members[pure.as_posix()] = handle.read()
    except FileNotFoundError:
        raise BundleError(f"no such bundle: {where}") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{where} is not a readable bundle (.tar.gz): {exc}") from None
    if MANIFEST not in members:
        raise BundleError(f"{where} has no {MANIFEST}; build bundles with 'mlnb build'")
    manifest = Manifest.from_json(members.pop(MANIFEST), where)
    if manifest.format != FORMAT:
        raise BundleError(
            f"{where}: bundle format {manifest.format}, this mlnb reads format {FORMAT}"
        )
    for rel, expected in manifest.files.items():
        data = members.get(rel)
        if data is None:
            raise BundleError(f"{where}: {rel} is in the manifest but not in the bundle")
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise BundleError(
                f"{where}: {rel} does not match the manifest (sha256 {actual[:12]}…, "
                f"manifest {expected[:12]}…); the bundle was changed after 'mlnb build'"
            )
    extra = sorted(set(members) - set(manifest.files))
    if extra:
        raise BundleError(f"{where}: {', '.join(extra)} not in the manifest")
    if content_hash(manifest.files) != manifest.content_sha256:
        raise BundleError(f"{where}: the manifest's content hash does not match its file list")
    if manifest.pipeline not in members:
        raise BundleError(f"{where}: the pipeline spec {manifest.pipeline} is missing")
    return manifest, members


def dockerfile_text(manifest: Manifest, bundle_name: str, wheel_name: str) -> str:
    """A Dockerfile that installs a bundle (and mlnb from its wheel) and runs its pipeline."""
    tag = image_tag(manifest)
    return f"""\
# Runs pipeline '{manifest.name}' version {manifest.version} from its bundle.
# Build it from the folder holding the bundle:
#   docker build -f {manifest.name}-{manifest.version}.Dockerfile -t {tag} .
# Run it against an MLflow server:
#   docker run -e MLFLOW_TRACKING_URI=http://mlflow:5000 {tag}
FROM python:{manifest.python}-slim
ENV DO_NOT_TRACK=true PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /project
COPY {bundle_name} /tmp/bundle.tar.gz
RUN tar -xzf /tmp/bundle.tar.gz -C /project && rm /tmp/bundle.tar.gz \\
 && pip install -r {LOCK} \\
 && pip install --no-deps ./{VENDOR}/{wheel_name} \\
 && python -m ipykernel install --sys-prefix --name python3
ENTRYPOINT ["mlnb", "run", "{manifest.pipeline}"]
"""


def image_tag(manifest: Manifest) -> str:
    """The image name ``mlnb build --image`` gives a bundle."""
    return f"mlnb-{manifest.name.lower()}:{manifest.version}"


def build_image(built: Built) -> str:
    """``docker build`` the bundle's image; its tag.

    Raises:
        BundleError: docker is missing or its daemon unreachable (said plainly,
            with the command to run elsewhere), or the build failed.
    """
    import shutil
    import subprocess

    tag = image_tag(built.manifest)
    command = ["docker", "build", "-f", built.dockerfile.name, "-t", tag, "."]
    by_hand = f"cd {built.path.parent} && {' '.join(command)}"
    if shutil.which("docker") is None:
        raise BundleError(f"docker is not installed here; build the image where it is: {by_hand}")
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = (probe.stderr or probe.stdout).strip().splitlines()
        raise BundleError(
            f"docker cannot reach its daemon ({reason[-1] if reason else 'docker info failed'}); "
            f"the bundle and Dockerfile are written — build the image where docker runs: {by_hand}"
        )
    done = subprocess.run(command, cwd=built.path.parent)
    if done.returncode != 0:
        raise BundleError(f"docker build failed with exit {done.returncode}: {by_hand}")
    return tag
