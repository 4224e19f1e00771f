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
- **Verified streaming, within limits.** :func:`verify` reads a bundle as a
  stream, member by member, and checks each tar header before a byte of its
  contents is decompressed: a plain file or folder (no links, devices or
  sparse files), a relative path inside the bundle, each path once, and the
  :class:`Limits` on members, member size and unpacked size; the decompressor
  itself stops at what the admitted headers announce, so neither a
  decompression bomb nor an oversized PAX header is ever inflated. Files are
  hashed as they stream and checked against a manifest whose keys are
  validated (pydantic): its name a pipeline name, its version a bundle
  version. :func:`extract` writes a verified bundle, streaming and hashing it
  again, with tarfile's ``data`` filter as a second guard on every path.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import re
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import IO, Annotated, Any

from packaging.utils import canonicalize_name
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from mlnb import __version__
from mlnb import notebook as nbmod
from mlnb._files import write_atomic
from mlnb.delivery.vendor import DIST, mlnb_wheel
from mlnb.errors import MlnbError
from mlnb.pipelines.locate import load_monitor, load_pipeline, monitors_of
from mlnb.specs.pipeline import Pipeline, is_pipeline_name, project_path

FORMAT = 1
MANIFEST = "manifest.json"
LOCK = "requirements.lock"
VENDOR = "vendor"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_EPOCH = 315532800  # 1980-01-01, the earliest time a zip or wheel can hold
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


class BundleError(MlnbError):
    """A bundle cannot be built, or fails its manifest check."""


def name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a bundle's pipeline name, or None: a pipeline's rule."""
    if is_pipeline_name(name):
        return None
    return (
        f"'{shown(name)}' is not a pipeline name: use letters, digits, '_', '.' or '-', "
        "starting with a letter or digit"
    )


def version_problem(version: str) -> str | None:
    """What is wrong with ``version`` as a bundle version, or None."""
    if _VERSION.fullmatch(version):
        return None
    return (
        f"'{shown(version)}' is not a bundle version: use letters, digits, '.', '_', '+' or '-', "
        "starting with a letter or digit, at most 64 characters"
    )


def shown(text: str, limit: int = 120) -> str:
    """``text`` fit for one line of an error: control characters escaped, long text cut."""
    safe = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return safe if len(safe) <= limit else f"{safe[:limit]}…"


def _checked(problem: Callable[[str], str | None]) -> Callable[[str], str]:
    def check(value: str) -> str:
        reason = problem(value)
        if reason is not None:
            raise ValueError(reason)
        return value

    return check


def _member_problem(rel: str) -> str | None:
    """What is wrong with ``rel`` as the path of a bundle member, or None."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or ".." in parts:
        return "points outside the bundle"
    if "" in parts or "." in parts:
        return "is not a plain relative path (write it without '.', '//' or a trailing '/')"
    return None


def _parents(rel: str) -> list[str]:
    """The folders a member's path lies in, outermost first (``a``, ``a/b`` for ``a/b/c``)."""
    parts = rel.split("/")
    return ["/".join(parts[:end]) for end in range(1, len(parts))]


def _member_path(rel: str) -> str:
    reason = _member_problem(rel)
    if reason is not None:
        raise ValueError(f"'{shown(rel)}' {reason}")
    return rel


_Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Manifest(BaseModel):
    """What a bundle says about itself (``manifest.json``), validated as it is read.

    ``name`` and ``version`` become folder names of a deployment, so they follow
    the rules of pipeline names and :func:`version_problem`; ``pipeline`` is a
    member's path.
    """

    model_config = ConfigDict(frozen=True, strict=True)

    name: Annotated[str, AfterValidator(_checked(name_problem))]
    version: Annotated[str, AfterValidator(_checked(version_problem))]
    pipeline: Annotated[str, AfterValidator(_member_path)]
    content_sha256: _Sha256
    files: dict[str, _Sha256]
    git_commit: str | None = None
    git_dirty: bool | None = None
    mlnb_version: str = ""
    python: str = ""
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
        """Parse and validate a manifest.

        Raises:
            BundleError: naming ``where`` and the first manifest key at fault.
        """
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise BundleError(f"{where}: {_manifest_problem(exc)}") from None


def _manifest_problem(exc: ValidationError) -> str:
    """The first problem pydantic found in a manifest, as one line naming its key."""
    error = exc.errors(include_url=False)[0]
    key = ".".join(shown(str(part)) for part in error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    message = str(cause) if isinstance(cause, ValueError) else error["msg"]
    if error["type"] == "json_invalid" or not key:
        return f"{MANIFEST} is not a bundle manifest ({message})"
    return f"{MANIFEST} key '{key}': {message}"


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
    reason = None if version is None else version_problem(version)
    if reason is not None:
        raise BundleError(reason)
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


@dataclass(frozen=True)
class Limits:
    """What a bundle may hold, checked from each member's tar header before it is read.

    The defaults leave a thousandfold room over what ``mlnb build`` makes of a
    project (the example project's bundle: 9 members, 210 KiB unpacked, the
    largest mlnb's own wheel of 180 KiB) and a pipeline's data files, and
    refuse a decompression bomb at its first header. A project whose bundle
    holds more raises them (``mlnb deploy --max-member-mib`` and its siblings).

    Attributes:
        members: how many members (files and folders) a bundle may hold.
        member_size: the bytes one member may hold, unpacked.
        total_size: the bytes all members may hold together, unpacked.
    """

    members: int = 10_000
    member_size: int = 256 * MiB
    total_size: int = 1024 * MiB


#: the bytes the tar headers of one member may take (long names, PAX records)
HEADER_SIZE = 64 * KiB
#: ... and those of all members together
HEADERS_SIZE = 16 * MiB
#: the bytes of manifest.json, which is read into memory
MANIFEST_SIZE = 8 * MiB
_CHUNK = 1 * MiB


class _Overrun(Exception):
    """The tar reader asked for more bytes than the member it is in allows."""


class _BoundedGzip(gzip.GzipFile):
    """A gzip stream that refuses to decompress past ``limit`` bytes.

    The walk moves ``limit`` past each member whose header it admitted, so
    nothing the headers do not announce (and the limits allow) is ever
    decompressed: not a bomb's contents, not an oversized PAX header.
    """

    limit = HEADER_SIZE
    position = 0

    def read(self, size: int | None = -1) -> bytes:
        room = self.limit - self.position
        if room <= 0:
            raise _Overrun
        wanted = room if size is None or size < 0 or size > room else size
        data = super().read(wanted)
        self.position += len(data)
        return data


@dataclass
class _Walk:
    """One pass over a bundle's members: what it found, and the tallies the limits bound."""

    where: str
    limits: Limits
    manifest: bytes | None = None
    hashes: dict[str, str] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)
    parents: set[str] = field(default_factory=set)
    total: int = 0
    headers: int = 0
    end: int = 0  # where the last member's contents end in the tar stream
    last: str = ""

    def admit(self, info: tarfile.TarInfo) -> str:
        """Check a member's header (its path, its kind, the limits); return its path."""
        name = info.name
        self.last = name
        reason = _member_problem(name) or _kind_problem(info) or self._place_problem(name, info)
        if reason is not None:
            raise BundleError(f"{self.where}: member '{shown(name)}' {reason}")
        self.headers += info.offset_data - self.end
        self.total += info.size
        self._within_limits(name, info.size)
        self.seen.add(name)
        if info.isfile():
            self.files.add(name)
        self.parents.update(_parents(name))
        self.end = info.offset_data + _padded(info.size)
        return name

    def _place_problem(self, name: str, info: tarfile.TarInfo) -> str | None:
        if name in self.seen:
            return "appears twice; a bundle holds each path once"
        if info.isfile() and name in self.parents:
            return "is a file, and a folder of other members"
        under = [folder for folder in _parents(name) if folder in self.files]
        if under:
            return f"lies under '{shown(under[0])}', which is a file"
        return None

    def _within_limits(self, name: str, size: int) -> None:
        limits, where, member = self.limits, self.where, f"member '{shown(name)}'"
        if len(self.seen) >= limits.members:
            raise BundleError(
                f"{where}: more than {limits.members} members (at {member}); if the bundle "
                "is genuine, deploy it with a higher --max-members"
            )
        if size > limits.member_size:
            raise BundleError(
                f"{where}: {member} unpacks to {_size(size)}, more than the "
                f"{_size(limits.member_size)} a member may; if the bundle is genuine, deploy "
                f"it with --max-member-mib {-(-size // MiB)}"
            )
        if self.total > limits.total_size:
            raise BundleError(
                f"{where}: the members up to {member} unpack to {_size(self.total)}, more "
                f"than the {_size(limits.total_size)} a bundle may; if the bundle is genuine, "
                "deploy it with a higher --max-total-mib"
            )
        if self.headers > HEADERS_SIZE:
            raise BundleError(
                f"{where}: the tar headers up to {member} take more than {_size(HEADERS_SIZE)}; "
                "'mlnb build' writes headers of a few hundred bytes"
            )


def _kind_problem(info: tarfile.TarInfo) -> str | None:
    """What is wrong with a member's kind, or None: a bundle holds plain files and folders."""
    target = shown(info.linkname)
    if info.issym():
        return f"is not a plain file but a symbolic link to '{target}'"
    if info.islnk():
        return f"is not a plain file but a hard link to '{target}'"
    if info.issparse():
        return "is not a plain file but a sparse one"
    if not (info.isfile() or info.isdir()):
        return "is not a plain file but a device, FIFO or other special file"
    return None


def _padded(size: int) -> int:
    """The bytes a member's contents take in a tar stream: whole 512-byte blocks."""
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _size(count: int) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if count >= factor:
            return f"{count / factor:.1f} {unit}".replace(".0 ", " ")
    return f"{count} bytes"


def _walk(path: Path, limits: Limits, into: Path | None) -> _Walk:
    """Stream a bundle once, member by member, each header checked before its contents are
    read; each file hashed as it streams (and written below ``into`` when given).

    Raises:
        BundleError: naming the bundle and the member or limit at fault.
    """
    walk = _Walk(str(path), limits)
    try:
        with (
            path.open("rb") as raw,
            _BoundedGzip(fileobj=raw, mode="rb") as gz,
            tarfile.open(fileobj=gz, mode="r|") as tar,
        ):
            for info in tar:
                name = walk.admit(info)
                gz.limit = walk.end + HEADER_SIZE
                if info.isdir():
                    continue
                source = tar.extractfile(info)
                assert source is not None  # a plain file's contents
                if name == MANIFEST:
                    walk.manifest = _manifest_bytes(walk.where, info, source)
                else:
                    target = None if into is None else _destination(walk.where, info, into)
                    walk.hashes[name] = _copy(source, target)
    except _Overrun:
        after = f"member '{shown(walk.last)}'" if walk.last else "the start"
        raise BundleError(
            f"{walk.where}: the tar headers after {after} take more than {_size(HEADER_SIZE)}; "
            "not a bundle 'mlnb build' wrote"
        ) from None
    except FileNotFoundError:
        raise BundleError(f"no such bundle: {walk.where}") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise BundleError(f"{walk.where} is not a readable bundle (.tar.gz): {exc}") from None
    return walk


def _manifest_bytes(where: str, info: tarfile.TarInfo, source: IO[bytes]) -> bytes:
    if info.size > MANIFEST_SIZE:
        raise BundleError(
            f"{where}: {MANIFEST} is {_size(info.size)}, more than the "
            f"{_size(MANIFEST_SIZE)} a manifest may be"
        )
    return source.read()


def _destination(where: str, info: tarfile.TarInfo, into: Path) -> Path:
    """Where a member is written below ``into``, checked by tarfile's ``data`` filter too."""
    try:
        tarfile.data_filter(info, str(into))
    except tarfile.FilterError as exc:
        raise BundleError(f"{where}: member '{shown(info.name)}' is refused: {exc}") from None
    return into / PurePosixPath(info.name)


def _copy(source: IO[bytes], target: Path | None) -> str:
    """The sha256 of a member's contents, streamed in chunks (into ``target`` when given).

    Raises:
        BundleError: ``target`` cannot be written.
    """
    digest = hashlib.sha256()
    try:
        with contextlib.ExitStack() as stack:
            out = None
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                out = stack.enter_context(target.open("xb"))
            for chunk in iter(lambda: source.read(_CHUNK), b""):
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
    except OSError as exc:
        if target is None:
            raise
        raise BundleError(f"cannot write {target}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def verify(path: Path | str, limits: Limits | None = None) -> Manifest:
    """Check a bundle against its manifest in one streaming pass, writing nothing.

    Every member's header is checked before its contents are read (a plain
    file or folder, a path inside the bundle, once, within ``limits``); every
    file is hashed as it streams, so memory stays small whatever the bundle
    claims to hold.

    Raises:
        BundleError: naming the bundle and what is wrong: not a bundle, a
            member outside it, not a plain file, twice or over a limit, a
            manifest key at fault, a file missing, extra or changed, a content
            hash that does not add up, an unknown format.
    """
    path = Path(path)
    return _consistent(_walk(path, limits or Limits(), into=None))


def extract(
    path: Path | str, manifest: Manifest, folder: Path, limits: Limits | None = None
) -> None:
    """Write a bundle :func:`verify` accepted into the empty ``folder``, checking it again.

    The bundle is streamed once more and each file hashed as it is written;
    a bundle whose contents differ from ``manifest`` now (changed since it
    was verified) is refused. On refusal, what was written stays in
    ``folder`` for the caller to remove.

    Raises:
        BundleError: the bundle is not what ``manifest`` says, or a file cannot be written.
    """
    path = Path(path)
    walk = _walk(path, limits or Limits(), into=folder)
    if _consistent(walk) != manifest:
        raise BundleError(f"{path} changed while it was being deployed; deploy it again")
    try:
        (folder / MANIFEST).write_bytes(manifest.as_json())
    except OSError as exc:
        raise BundleError(f"cannot write {folder / MANIFEST}: {exc.strerror or exc}") from None


def _consistent(walk: _Walk) -> Manifest:
    """The manifest a walk found, checked against the files it hashed."""
    where = walk.where
    if walk.manifest is None:
        raise BundleError(f"{where} has no {MANIFEST}; build bundles with 'mlnb build'")
    manifest = Manifest.from_json(walk.manifest, where)
    if manifest.format != FORMAT:
        raise BundleError(
            f"{where}: bundle format {manifest.format}, this mlnb reads format {FORMAT}"
        )
    for rel, expected in manifest.files.items():
        actual = walk.hashes.get(rel)
        if actual is None:
            raise BundleError(f"{where}: {shown(rel)} is in the manifest but not in the bundle")
        if actual != expected:
            raise BundleError(
                f"{where}: {rel} does not match the manifest (sha256 {actual[:12]}…, "
                f"manifest {expected[:12]}…); the bundle was changed after 'mlnb build'"
            )
    extra = sorted(set(walk.hashes) - set(manifest.files))
    if extra:
        raise BundleError(f"{where}: {shown(', '.join(extra))} not in the manifest")
    if content_hash(manifest.files) != manifest.content_sha256:
        raise BundleError(f"{where}: the manifest's content hash does not match its file list")
    if manifest.pipeline not in manifest.files:
        raise BundleError(f"{where}: the pipeline spec {manifest.pipeline} is missing")
    return manifest


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
