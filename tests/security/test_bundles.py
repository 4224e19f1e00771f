"""Hostile bundles against ``mlnb deploy``: every one refused, naming the member, manifest key
or limit at fault, with nothing written outside the deployments folder, the live version
unchanged and the attempt's MLflow run ended FAILED with the reason.

The bundles are real files: a genuine bundle of a tiny project, built once, taken apart and
packed again with one hostile change each, or a tar stream written by hand (a gzip bomb is a
deflate block of zeros repeated, so a 2 GiB member costs 2 MB and no time to make). Every
attack runs against one deployed project whose parent folders are watched, so a path that
climbs out of it is seen.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import tracemalloc
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlnb.delivery import bundle as bundlemod
from mlnb.delivery.bundle import BundleError, Limits, build, content_hash
from mlnb.delivery.deploy import EXPERIMENT, DeployError, deploy, rollback
from tests.delivery.helpers import MONITOR, TINY, bundle_members, scenario_project, write

GiB, MiB, KiB = 1 << 30, 1 << 20, 1 << 10
#: what a bomb's refusal may cost the process that refuses it, at most
SMALL = 4 * MiB


@dataclass(frozen=True)
class Site:
    """A project with version 1.0.0 of ``tiny`` live, three folders below ``outer``."""

    outer: Path
    root: Path
    genuine: dict[str, bytes]

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def deployments(self) -> Path:
        return self.root / ".mlnb" / "deployments"

    def bundle(self, name: str) -> Path:
        return self.outer / "incoming" / name

    def files(self) -> dict[str, int]:
        """Every path below ``outer`` (its size; -1 for a folder), less the MLflow store."""
        found = {}
        for path in self.outer.rglob("*"):
            rel = path.relative_to(self.outer)
            if rel.parts[0] == "incoming" or rel.parts[-1].startswith("mlflow.db"):
                continue
            found[rel.as_posix()] = -1 if path.is_dir() else path.lstat().st_size
        return found

    def attempt(self, bundle: Path) -> Any:
        """The one deployment run of ``bundle``."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`mlnb.deployment.bundle` = '{bundle.name}'",
        )
        assert len(runs) == 1, [r.info.run_name for r in runs]
        return runs[0]

    def live(self) -> str:
        return (self.deployments / "tiny" / "LIVE").read_text()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    outer = tmp_path_factory.mktemp("outer")
    root = scenario_project(outer / "a" / "b" / "proj")
    write(root / "pipelines" / "tiny.yaml", TINY)
    write(root / "pipelines" / "monitor.yaml", MONITOR)
    write(root / "data" / "in.txt", "41\n")
    built = build(root / "pipelines" / "tiny.yaml", outer / "incoming", version="1.0.0")
    deploy(built.path, root, f"sqlite:///{root / 'mlflow.db'}")
    return Site(outer, root, bundle_members(built.path))


@pytest.fixture
def unchanged(site: Site) -> Any:
    """After the test: the same files below ``outer``, and 1.0.0 still live."""
    before = site.files()
    assert site.live() == "1.0.0\n"
    yield
    after = site.files()
    assert after == before, {k: after.get(k) for k in set(after) ^ set(before)}
    assert site.live() == "1.0.0\n"


# -- writing hostile bundles ------------------------------------------------------------


def entry(name: str, data: bytes = b"", **fields: Any) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def pack(path: Path, entries: Iterable[tuple[tarfile.TarInfo, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def with_manifest(members: dict[str, bytes], **changes: Any) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Members and a manifest that lists each with its true hash, then ``changes`` applied:
    a bundle whose only flaw is the one its test makes."""
    files = {rel: data for rel, data in members.items() if rel != "manifest.json"}
    manifest = json.loads(members["manifest.json"])
    manifest["files"] = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    manifest["content_sha256"] = content_hash(manifest["files"])
    manifest.update(changes)
    return [entry("manifest.json", json.dumps(manifest).encode())] + [
        entry(rel, data) for rel, data in files.items()
    ]


def gzip_bomb(path: Path, size: int, name: str = "data/big.bin") -> Path:
    """A ``.tar.gz`` whose first member holds ``size`` zero bytes, written without holding
    them: the deflate block of 1 MiB of zeros after a full flush is the same every time, so it
    is compressed once and repeated. The gzip trailer's CRC is left 0 (computing it would
    take seconds); a reader that refuses at the header never reaches it."""
    header = tarfile.TarInfo(name)
    header.size = size
    chunk = 1 * MiB
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    with path.open("wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # gzip, no name, no time
        out.write(deflate.compress(header.tobuf(tarfile.PAX_FORMAT)))
        out.write(deflate.flush(zlib.Z_FULL_FLUSH))
        block = deflate.compress(bytes(chunk)) + deflate.flush(zlib.Z_FULL_FLUSH)
        for _ in range(size // chunk):
            out.write(block)
        out.write(deflate.compress(bytes(2 * tarfile.BLOCKSIZE)) + deflate.flush())
        out.write((0).to_bytes(4, "little") + (size % (1 << 32)).to_bytes(4, "little"))
    return path


def refused(site: Site, bundle: Path, reason: str, limits: Limits | None = None) -> None:
    """Deploying ``bundle`` raises one line naming it and ``reason``; its run ends FAILED."""
    with pytest.raises((BundleError, DeployError)) as caught:
        deploy(bundle, site.root, site.uri, limits)
    message = str(caught.value)
    if isinstance(caught.value, BundleError):
        assert message.startswith(f"{bundle}: "), message
    assert reason in message
    assert "\n" not in message
    run = site.attempt(bundle)
    assert run.info.status == "FAILED"
    assert run.data.tags["mlnb.error"] == message


# -- the manifest's names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("name", "{outer}/ABS-ESCAPE", "key 'name': '{outer}/ABS-ESCAPE' is not a pipeline name"),
        ("name", "../../../DOTDOT", "key 'name': '../../../DOTDOT' is not a pipeline name"),
        ("name", "..", "key 'name': '..' is not a pipeline name"),
        ("name", 7, "key 'name': Input should be a valid string"),
        ("version", "../../../DOTDOT", "key 'version': '../../../DOTDOT' is not a bundle version"),
        ("version", "{outer}/ABS-ESCAPE", "key 'version': '{outer}/ABS-ESCAPE' is not a bundle"),
        ("version", "1.0\n", "key 'version': '1.0\\n' is not a bundle version"),
        ("pipeline", "../../x.yaml", "key 'pipeline': '../../x.yaml' points outside the bundle"),
    ],
    ids=[
        "absolute-name",
        "dotdot-name",
        "dotdot-only",
        "number-name",
        "dotdot-version",
        "absolute-version",
        "newline-version",
        "dotdot-pipeline",
    ],
)
def test_manifest_names_that_are_paths_are_refused(
    site: Site, unchanged: None, key: str, value: Any, reason: str, request: Any
) -> None:
    bundle = site.bundle(f"{request.node.callspec.id}.tar.gz")
    if isinstance(value, str):  # absolute paths point into the test's folder, never at /
        value, reason = value.format(outer=site.outer), reason.format(outer=site.outer)
    pack(bundle, with_manifest(site.genuine, **{key: value}))

    refused(site, bundle, reason)

    assert not (site.outer / "ABS-ESCAPE").exists()


# -- members that escape or are not plain files ------------------------------------------


ATTACKS = {
    "dotdot-member": (
        [entry("../../../evil.txt", b"outside\n")],
        "member '../../../evil.txt' points outside the bundle",
    ),
    "absolute-member": (
        [entry("/{outer}/evil.txt", b"outside\n")],
        "member '/{outer}/evil.txt' points outside the bundle",
    ),
    "dot-member": (
        [entry("notebooks/./a.py", b"x\n")],
        "member 'notebooks/./a.py' is not a plain relative path",
    ),
    "symlink-out": (
        [entry("data/link", type=tarfile.SYMTYPE, linkname="/etc/passwd")],
        "member 'data/link' is not a plain file but a symbolic link to '/etc/passwd'",
    ),
    "symlink-up": (
        [entry("data/up", type=tarfile.SYMTYPE, linkname="../../../../..")],
        "member 'data/up' is not a plain file but a symbolic link to '../../../../..'",
    ),
    "hardlink-out": (
        [entry("data/hard", type=tarfile.LNKTYPE, linkname="../../../../etc/passwd")],
        "member 'data/hard' is not a plain file but a hard link to '../../../../etc/passwd'",
    ),
    "hardlink-inside": (
        [entry("data/again", type=tarfile.LNKTYPE, linkname="data/in.txt")],
        "member 'data/again' is not a plain file but a hard link to 'data/in.txt'",
    ),
    "device": (
        [entry("data/tty", type=tarfile.CHRTYPE, devmajor=5, devminor=0)],
        "member 'data/tty' is not a plain file but a device, FIFO or other special file",
    ),
    "fifo": (
        [entry("data/pipe", type=tarfile.FIFOTYPE)],
        "member 'data/pipe' is not a plain file but a device, FIFO or other special file",
    ),
    "duplicate": (
        [entry("data/in.txt", b"41\n"), entry("data/in.txt", b"poisoned\n")],
        "member 'data/in.txt' appears twice",
    ),
    "file-under-file": (
        [entry("data/in.txt/x", b"x\n")],
        "member 'data/in.txt/x' lies under 'data/in.txt', which is a file",
    ),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_members_that_escape_or_are_not_plain_files_are_refused(
    site: Site, unchanged: None, attack: str
) -> None:
    hostile, reason = ATTACKS[attack]
    # an absolute member points into the test's folder, never at /
    hostile = [
        (info.replace(name=info.name.replace("/{outer}", str(site.outer))), data)
        for info, data in hostile
    ]
    reason = reason.replace("/{outer}", str(site.outer))
    members = dict(site.genuine)
    # the manifest lists the hostile files with their true hashes: only the path is at fault
    for info, data in hostile:
        if info.isfile():
            members[info.name] = data
    entries = [e for e in with_manifest(members) if e[0].name not in {i.name for i, _ in hostile}]
    bundle = pack(site.bundle(f"{attack}.tar.gz"), [*entries, *hostile])

    refused(site, bundle, reason)

    assert not (site.outer / "evil.txt").exists()


# -- limits, checked from the headers -------------------------------------------------------


def test_a_gzip_bomb_is_refused_at_its_header_in_small_memory(site: Site, unchanged: None) -> None:
    bomb = gzip_bomb(site.bundle("bomb.tar.gz"), 2 * GiB)
    assert bomb.stat().st_size < 3 * MiB  # 2 GiB unpacked

    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(BundleError) as caught:
            bundlemod.verify(bomb)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert str(caught.value) == (
        f"{bomb}: member 'data/big.bin' unpacks to 2 GiB, more than the 256 MiB a member may; "
        "if the bundle is genuine, deploy it with --max-member-mib 2048"
    )
    assert peak < SMALL, f"refusing the bomb took {peak / MiB:.1f} MiB"
    assert elapsed < 5, f"refusing the bomb took {elapsed:.1f} s"  # inflating it takes 40 s
    refused(site, bomb, "member 'data/big.bin' unpacks to 2 GiB")


def test_a_gzip_bomb_through_the_cli_exits_non_zero_in_small_memory(
    site: Site, unchanged: None
) -> None:
    bomb = gzip_bomb(site.bundle("cli-bomb.tar.gz"), 2 * GiB)
    # a fresh parent process, so the peak RSS of its children is mlnb deploy's alone
    measure = (
        "import resource, subprocess, sys; "
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stderr.write(done.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(done.returncode)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-c", measure, sys.executable, "-m", "mlnb", "deploy", str(bomb)],
        cwd=site.root,
        env={**env, "DO_NOT_TRACK": "true"},
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {bomb}: member 'data/big.bin' unpacks to 2 GiB, more than the 256 MiB a member "
        "may; if the bundle is genuine, deploy it with --max-member-mib 2048"
    ]
    peak_kib = int(done.stdout.split()[-1])
    # mlnb with MLflow imported is some 250 MB; inflating the member would take 2 GiB more
    assert peak_kib * KiB < 1 * GiB, f"mlnb deploy peaked at {peak_kib / KiB:.0f} MiB"
    assert site.attempt(bomb).info.status == "FAILED"


def test_an_oversized_pax_header_is_not_inflated(site: Site, unchanged: None) -> None:
    info, data = entry("data/in.txt", b"41\n")
    info.pax_headers = {"comment": "x" * (16 * MiB)}
    bundle = pack(site.bundle("pax.tar.gz"), [(info, data)])

    tracemalloc.start()
    try:
        with pytest.raises(BundleError) as caught:
            bundlemod.verify(bundle)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert "the tar headers after the start take more than 64 KiB" in str(caught.value)
    assert peak < SMALL, f"refusing the header took {peak / MiB:.1f} MiB"
    refused(site, bundle, "the tar headers after the start take more than 64 KiB")


def test_too_many_members_are_refused_from_their_headers(site: Site, unchanged: None) -> None:
    entries = [entry(f"many/{i}") for i in range(Limits().members + 1)]
    bundle = pack(site.bundle("many.tar.gz"), entries)

    refused(site, bundle, "more than 10000 members (at member 'many/10000')")


def test_members_adding_up_past_the_total_are_refused(site: Site, unchanged: None) -> None:
    entries = [entry(f"data/{c}.bin", bytes(600 * KiB)) for c in "abc"]
    bundle = pack(site.bundle("total.tar.gz"), entries)
    limits = Limits(total_size=1 * MiB)

    refused(
        site,
        bundle,
        "the members up to member 'data/b.bin' unpack to 1.2 MiB, more than the 1 MiB a bundle "
        "may; if the bundle is genuine, deploy it with a higher --max-total-mib",
        limits,
    )


# -- targets a link leads elsewhere, and rollback's names ----------------------------------


def test_a_deployment_folder_linked_elsewhere_is_refused(site: Site) -> None:
    elsewhere = site.outer / "elsewhere"
    elsewhere.mkdir()
    link = site.deployments / "linked"
    link.symlink_to(elsewhere, target_is_directory=True)
    try:
        bundle = pack(site.bundle("linked.tar.gz"), with_manifest(site.genuine, name="linked"))

        refused(site, bundle, "(through a symbolic link); a deployment is unpacked only inside")

        assert list(elsewhere.iterdir()) == []
        assert site.live() == "1.0.0\n"
    finally:
        link.unlink()
        elsewhere.rmdir()


@pytest.mark.parametrize(
    ("pipeline", "version", "reason"),
    [
        ("../../x", None, "cannot roll back: '../../x' is not a pipeline name"),
        ("tiny", "../../../x", "cannot roll back: '../../../x' is not a bundle version"),
        ("/tmp", "x", "cannot roll back: '/tmp' is not a pipeline name"),
    ],
)
def test_rollback_refuses_names_that_are_paths(
    site: Site, unchanged: None, pipeline: str, version: str | None, reason: str
) -> None:
    with pytest.raises(DeployError) as caught:
        rollback(site.root, site.uri, pipeline, version)

    assert str(caught.value).startswith(reason)


# -- a deploy stopped from outside ---------------------------------------------------------------


def signalled_while_unpacking(site: Site, name: str, sig: int) -> tuple[Path, Path, int, int]:
    """``mlnb deploy`` of a large bundle ``name``, sent ``sig`` once it has begun to unpack.

    Returns the bundle, its deployment folder, the process's pid and its exit code.
    """
    members = {**site.genuine, "data/big.bin": bytes(192 * MiB)}
    bundle = pack(site.bundle(f"{name}.tar.gz"), with_manifest(members, name=name, version="1"))
    folder = site.deployments / name
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlnb", "deploy", str(bundle)],
        cwd=site.root,
        env={**env, "DO_NOT_TRACK": "true"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while not list(folder.glob(".1.*")):  # the scratch folder: unpacking has begun
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the deploy never began to unpack"
            time.sleep(0.02)
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return bundle, folder, proc.pid, proc.returncode


def test_sigterm_during_a_deploy_leaves_no_running_run_and_no_scratch(site: Site) -> None:
    bundle, folder, _, code = signalled_while_unpacking(site, "slow", signal.SIGTERM)

    # SIGTERM is held until the deployment's run has ended, then ends the process as it would
    assert code == -signal.SIGTERM
    assert site.attempt(bundle).info.status == "FINISHED"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "LIVE"]
    assert (folder / "1" / "data" / "big.bin").stat().st_size == 192 * MiB
    assert site.live() == "1.0.0\n"


def test_a_deploy_killed_for_real_is_ended_killed_by_the_next_deploy(site: Site) -> None:
    bundle, _, pid, code = signalled_while_unpacking(site, "killed", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert site.attempt(bundle).info.status == "RUNNING"  # what kill -9 leaves

    after = with_manifest(site.genuine, name="after", version="1")
    other = pack(site.bundle("after.tar.gz"), after)
    deploy(other, site.root, site.uri)

    run = site.attempt(bundle)
    assert run.info.status == "KILLED"
    owner = f"pid {pid} on {socket.gethostname()}"
    assert run.data.tags["mlnb.error"] == f"its process ({owner}) died"
    assert site.live() == "1.0.0\n"
