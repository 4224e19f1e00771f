"""``mlnb deploy``: a checked bundle unpacked beside the working copy and made live,
rollback, tampered bundles refused, and the monitor retraining with the live version."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

from mlnb.delivery.bundle import Limits, MiB
from mlnb.delivery.bundle import build as build_bundle
from mlnb.delivery.deploy import EXPERIMENT
from mlnb.monitoring.runner import MonitorRunner
from mlnb.specs.monitor import load_monitor
from mlnb.specs.pipeline import load_pipeline
from mlnb.store import located
from tests.delivery.helpers import (
    bundle_members,
    invoke,
    listing,
    live,
    manifest_of,
    mlnb_cli,
    store,
)


def test_deploy_unpacks_beside_the_working_copy_and_records_it(
    tiny: Path, bundles: dict[str, Path], monkeypatch
) -> None:
    done = mlnb_cli(tiny, "deploy", "dist/tiny-1.0.0.tar.gz")

    assert done.returncode == 0, done.stderr
    folder = tiny.resolve() / ".mlnb" / "deployments" / "tiny" / "1.0.0"
    assert f"deployed tiny 1.0.0: live, in {folder}\n" in done.stdout
    assert f"mlnb monitor retrains with {folder / 'pipelines' / 'tiny.yaml'}" in done.stdout
    assert live(tiny) == "1.0.0\n"
    members = bundle_members(bundles["1.0.0"])
    unpacked = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert unpacked == set(members)
    for rel in ("pipelines/tiny.yaml", "notebooks/add_one.ipynb", "data/in.txt"):
        path = folder / rel
        assert not path.is_symlink() and not path.samefile(tiny / rel)
        assert path.read_bytes() == members[rel]

    client = store(tiny)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    assert experiment.tags["mlnb.live.tiny"] == "1.0.0"
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["mlnb.pipeline"] == "tiny"
    assert tags["mlnb.deployment.version"] == "1.0.0"
    assert tags["mlnb.deployment.action"] == "deploy"
    assert tags["mlnb.deployment.content_sha256"] == manifest_of(bundles["1.0.0"])["content_sha256"]
    assert tags["mlnb.deployment.bundle"] == "tiny-1.0.0.tar.gz"
    assert tags["mlnb.deployment.path"] == "$MLNB_STATE_DIR/deployments/tiny/1.0.0"
    assert located(tags["mlnb.deployment.path"], tiny) == folder
    model = client.get_registered_model("tiny")
    assert model.tags["mlnb.deployment"] == "tiny 1.0.0"

    result = invoke(tiny, monkeypatch, "deploy", "--list")
    assert result.exit_code == 0, result.output
    assert listing(result.output) == [(True, "tiny", "1.0.0", "deploy")]


def test_rollback_makes_the_previous_version_live_again(
    tiny: Path, bundles: dict[str, Path], monkeypatch
) -> None:
    spec = tiny / "pipelines" / "tiny.yaml"
    spec.write_text(spec.read_text().replace("ci: {x: 10}", "ci: {x: 30}"))
    bundles = {**bundles, "3.0.0": build_bundle(spec, version="3.0.0").path}
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        result = invoke(tiny, monkeypatch, "deploy", str(bundles[version]))
        assert result.exit_code == 0, result.output
    assert live(tiny) == "3.0.0\n"
    result = invoke(tiny, monkeypatch, "deploy", "--list")
    assert listing(result.output) == [
        (True, "tiny", "3.0.0", "deploy"),
        (False, "tiny", "2.0.0", "deploy"),
        (False, "tiny", "1.0.0", "deploy"),
    ]

    result = invoke(tiny, monkeypatch, "deploy", "--rollback", "tiny")

    assert result.exit_code == 0, result.output
    assert "rolled back to tiny 2.0.0: live, in " in result.output
    assert live(tiny) == "2.0.0\n"
    client = store(tiny)
    assert client.get_experiment_by_name(EXPERIMENT).tags["mlnb.live.tiny"] == "2.0.0"
    assert client.get_registered_model("tiny").tags["mlnb.deployment"] == "tiny 2.0.0"
    result = invoke(tiny, monkeypatch, "deploy", "--list")
    assert listing(result.output) == [
        (True, "tiny", "2.0.0", "rollback"),
        (False, "tiny", "3.0.0", "deploy"),
        (False, "tiny", "2.0.0", "deploy"),
        (False, "tiny", "1.0.0", "deploy"),
    ]

    # --to names the version
    result = invoke(tiny, monkeypatch, "deploy", "--rollback", "tiny", "--to", "1.0.0")
    assert result.exit_code == 0, result.output
    assert live(tiny) == "1.0.0\n"
    assert client.get_registered_model("tiny").tags["mlnb.deployment"] == "tiny 1.0.0"
    result = invoke(tiny, monkeypatch, "deploy", "--list")
    marked = [row for row in listing(result.output) if row[0]]
    assert marked == [(True, "tiny", "1.0.0", "rollback")]
    # the live one, or one never unpacked here, is a clear error that changes nothing
    result = invoke(tiny, monkeypatch, "deploy", "--rollback", "tiny", "--to", "1.0.0")
    assert result.exit_code == 1
    assert "version 1.0.0 of 'tiny' is live already" in result.output
    result = invoke(tiny, monkeypatch, "deploy", "--rollback", "tiny", "--to", "9.9.9")
    assert result.exit_code == 1
    assert "version 9.9.9 of 'tiny' is not unpacked" in result.output
    assert "deployed versions: 1.0.0, 2.0.0, 3.0.0" in result.output
    assert "Traceback" not in result.output
    assert live(tiny) == "1.0.0\n"


def test_rollback_needs_an_earlier_version(
    tiny: Path, bundles: dict[str, Path], monkeypatch
) -> None:
    result = invoke(tiny, monkeypatch, "deploy", "--rollback", "tiny")
    assert result.exit_code == 1
    assert "error: 'tiny' has never been deployed; deploy a bundle first" in result.output

    assert invoke(tiny, monkeypatch, "deploy", str(bundles["1.0.0"])).exit_code == 0
    result = invoke(tiny, monkeypatch, "deploy", "--rollback", "tiny")

    assert result.exit_code == 1
    assert "'tiny' has only one deployed version (1.0.0); nothing to roll back to" in result.output
    assert "Traceback" not in result.output
    assert live(tiny) == "1.0.0\n"


def _change_a_byte(members: dict[str, bytes]) -> None:
    data = members["notebooks/add_one.ipynb"]
    assert data.count(b"x + 1") == 2
    members["notebooks/add_one.ipynb"] = data.replace(b"x + 1", b"x + 2", 1)


def _add_a_file(members: dict[str, bytes]) -> None:
    members["notebooks/extra.py"] = b"import os\n"


def _climb_out(members: dict[str, bytes]) -> None:
    members["../evil.txt"] = b"outside\n"


def _drop_a_file(members: dict[str, bytes]) -> None:
    del members["data/in.txt"]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_change_a_byte, "notebooks/add_one.ipynb does not match the manifest"),
        (_add_a_file, "notebooks/extra.py not in the manifest"),
        (_climb_out, "member '../evil.txt' points outside the bundle"),
        (_drop_a_file, "data/in.txt is in the manifest but not in the bundle"),
    ],
    ids=["changed-byte", "extra-file", "dotdot-path", "missing-file"],
)
def test_a_tampered_bundle_is_refused(
    tiny: Path,
    bundles: dict[str, Path],
    monkeypatch,
    tamper: Callable[[dict[str, bytes]], None],
    reason: str,
) -> None:
    assert invoke(tiny, monkeypatch, "deploy", str(bundles["1.0.0"])).exit_code == 0
    members = bundle_members(bundles["2.0.0"])
    tamper(members)
    tampered = tiny / "dist" / "tiny-2.0.0-tampered.tar.gz"
    with tarfile.open(tampered, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    result = invoke(tiny, monkeypatch, "deploy", str(tampered))

    assert result.exit_code == 1
    assert f"error: {tampered}: {reason}" in result.output
    assert "Traceback" not in result.output
    # nothing deployed: the live version, the folders and the record are as they were
    deployments = tiny / ".mlnb" / "deployments"
    assert live(tiny) == "1.0.0\n"
    assert sorted(p.name for p in (deployments / "tiny").iterdir()) == ["1.0.0", "LIVE"]
    assert not (deployments / "evil.txt").exists() and not (tiny / ".mlnb" / "evil.txt").exists()
    client = store(tiny)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags["mlnb.live.tiny"] == "1.0.0"
    # the attempt is recorded, FAILED with the reason; the listing shows what was deployed
    runs = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])
    assert [(r.info.status, r.data.tags["mlnb.deployment.bundle"]) for r in runs] == [
        ("FAILED", "tiny-2.0.0-tampered.tar.gz"),
        ("FINISHED", "tiny-1.0.0.tar.gz"),
    ]
    assert runs[0].data.tags["mlnb.error"].startswith(f"{tampered}: {reason}")
    result = invoke(tiny, monkeypatch, "deploy", "--list")
    assert listing(result.output) == [(True, "tiny", "1.0.0", "deploy")]


def test_monitor_retrains_with_the_deployed_version_not_the_working_copy(
    tiny: Path, bundles: dict[str, Path], monkeypatch
) -> None:
    monitor_spec = tiny / "pipelines" / "monitor.yaml"
    uri = f"sqlite:///{tiny / 'mlflow.db'}"

    def retrains_with() -> tuple[Path, str]:
        runner = MonitorRunner(load_monitor(monitor_spec), tracking_uri=uri)
        try:
            return runner.pipeline_spec()
        finally:
            runner.close()

    working = tiny.resolve() / "pipelines" / "tiny.yaml"
    assert retrains_with() == (working, "pipelines/tiny.yaml (working copy)")
    original_spec = working.read_text()
    original_notebook = bundle_members(bundles["1.0.0"])["notebooks/add_one.ipynb"]
    assert invoke(tiny, monkeypatch, "deploy", str(bundles["1.0.0"])).exit_code == 0

    # the working copy moves on: another parameter, a notebook that would fail
    working.write_text(original_spec.replace("params: {x: 1}", "params: {x: 100}"))
    path = tiny / "notebooks" / "add_one.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[1].source = 'raise RuntimeError("work in progress")'
    nbformat.write(nb, str(path))

    spec, which = retrains_with()

    folder = tiny.resolve() / ".mlnb" / "deployments" / "tiny" / "1.0.0"
    assert (spec, which) == (folder / "pipelines" / "tiny.yaml", "deployed tiny 1.0.0")
    assert spec.read_text() == original_spec
    deployed = load_pipeline(spec)
    assert deployed.root == folder
    assert deployed.stage("a").params["x"] == 1
    notebook = deployed.stage("a").notebook
    assert notebook.is_relative_to(folder) and notebook.read_bytes() == original_notebook
    assert (deployed.root / "data" / "in.txt").read_text() == "41\n"

    # it follows the live pointer: a new deployment, then a rollback
    assert invoke(tiny, monkeypatch, "deploy", str(bundles["2.0.0"])).exit_code == 0
    assert retrains_with()[1] == "deployed tiny 2.0.0"
    assert invoke(tiny, monkeypatch, "deploy", "--rollback", "tiny").exit_code == 0
    assert retrains_with()[1] == "deployed tiny 1.0.0"


def test_a_deploy_that_fails_after_its_run_started_ends_it_failed(
    tiny: Path, bundles: dict[str, Path], monkeypatch
) -> None:
    assert invoke(tiny, monkeypatch, "deploy", str(bundles["1.0.0"])).exit_code == 0
    spec = tiny / "pipelines" / "tiny.yaml"
    spec.write_text(spec.read_text().replace("ci: {x: 10}", "ci: {x: 40}"))
    other = build_bundle(spec, tiny / "other", version="1.0.0").path  # 1.0.0, other contents
    folder = tiny.resolve() / ".mlnb" / "deployments" / "tiny"

    result = invoke(tiny, monkeypatch, "deploy", str(other))

    assert result.exit_code == 1
    reason = (
        f"version 1.0.0 of 'tiny' is deployed already with other contents ({folder / '1.0.0'}); "
        "build with another --version, or remove that folder"
    )
    assert f"error: {reason}" in result.output
    # the pointer cannot be replaced: the bundle is unpacked and the run ends FAILED
    (folder / "LIVE").unlink()
    (folder / "LIVE").mkdir()
    result = invoke(tiny, monkeypatch, "deploy", str(bundles["2.0.0"]))

    assert result.exit_code == 1
    assert f"error: cannot make tiny 2.0.0 live: cannot write {folder / 'LIVE'}: " in result.output
    assert "Traceback" not in result.output
    client = store(tiny)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])
    assert [(r.info.status, r.info.run_name) for r in runs] == [
        ("FAILED", "tiny 2.0.0"),
        ("FAILED", "tiny 1.0.0"),
        ("FINISHED", "tiny 1.0.0"),
    ]
    assert runs[1].data.tags["mlnb.error"] == reason
    assert runs[0].data.tags["mlnb.error"].startswith("cannot make tiny 2.0.0 live")
    assert (folder / "LIVE").is_dir() and not list((folder / "LIVE").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["1.0.0", "2.0.0", "LIVE"]


def test_limits_are_options_for_bundles_that_need_more(tiny: Path, monkeypatch) -> None:
    (tiny / "data" / "in.txt").write_bytes(bytes(3 * MiB))
    bundle = build_bundle(tiny / "pipelines" / "tiny.yaml", version="1.0.0").path

    result = invoke(tiny, monkeypatch, "deploy", str(bundle), "--max-member-mib", "2")

    assert result.exit_code == 1
    assert (
        f"error: {bundle}: member 'data/in.txt' unpacks to 3 MiB, more than the 2 MiB a member "
        "may; if the bundle is genuine, deploy it with --max-member-mib 3"
    ) in result.output
    assert not (tiny / ".mlnb" / "deployments" / "tiny").exists()
    result = invoke(tiny, monkeypatch, "deploy", str(bundle), "--max-total-mib", "1")
    assert result.exit_code == 1
    assert (
        f"error: {bundle}: the members up to member 'data/in.txt' unpack to 3 MiB, more than "
        "the 1 MiB a bundle may; if the bundle is genuine, deploy it with a higher --max-total-mib"
    ) in result.output
    result = invoke(tiny, monkeypatch, "deploy", str(bundle), "--max-members", "3")
    assert result.exit_code == 1
    assert "more than 3 members (at member " in result.output

    result = invoke(tiny, monkeypatch, "deploy", str(bundle), "--max-member-mib", "3")

    assert result.exit_code == 0, result.output
    assert live(tiny) == "1.0.0\n"


def test_the_help_states_the_default_limits(tiny: Path, monkeypatch) -> None:
    result = invoke(tiny, monkeypatch, "deploy", "--help")

    text = " ".join(result.output.split())
    limits = Limits()
    assert "--max-members INTEGER RANGE Refuse a bundle of more members" in text
    assert f"(files and folders) [default: {limits.members}]" in text
    assert f"in MiB [default: {limits.member_size // MiB}]" in text
    assert f"in MiB [default: {limits.total_size // MiB}]" in text
