"""``mlnb build``: a byte-reproducible bundle of a pipeline, with mlnb vendored as a wheel.

The wheel a bundle vendors is built once and installed with pip into a folder
of its own (the package fixtures ``vendored`` and ``installed``); mlnb run
from that folder is mlnb installed from a wheel, and its bundles must be the
very same bytes. test_vendor.py checks the wheel itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
from hashlib import sha256
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
import yaml
from pydantic import ValidationError

from mlnb import __version__
from mlnb.delivery.bundle import BundleError, Manifest, MiB, extract, name_problem, verify
from mlnb.delivery.bundle import build as build_bundle
from mlnb.specs.pipeline import PipelineSpec
from tests.delivery.helpers import (
    DATA,
    DIST_INFO,
    TINY_FILES,
    WHEEL,
    bundle_members,
    data_files,
    from_the_wheel,
    invoke,
    manifest_of,
    mlnb_cli,
    package_files,
    wheel_files,
)

DAEMONLESS = re.compile(r"docker cannot reach its daemon|docker is not installed")


def test_build_is_byte_identical_across_folders_and_mtimes(tiny: Path, monkeypatch) -> None:
    first = mlnb_cli(tiny, "build", "pipelines/tiny.yaml", "--out", "out1")
    assert first.returncode == 0, first.stderr
    version = re.search(r"^version:\s+(\S+)$", first.stdout, re.MULTILINE)
    assert version, first.stdout
    for path in tiny.rglob("*"):
        if path.is_file() and "out1" not in path.parts:
            os.utime(path, (1_900_000_000, 1_900_000_000))
    # the second from another folder, with an absolute spec path, in this process
    elsewhere = tiny.parent / "elsewhere"
    elsewhere.mkdir()
    second = invoke(
        elsewhere, monkeypatch, "build", str(tiny / "pipelines" / "tiny.yaml"), "--out", "out2"
    )
    assert second.exit_code == 0, second.output

    name = f"tiny-{version.group(1)}"
    one, two = tiny / "out1", elsewhere / "out2"
    assert sorted(p.name for p in one.iterdir()) == [f"{name}.Dockerfile", f"{name}.tar.gz"]
    assert sorted(p.name for p in two.iterdir()) == [f"{name}.Dockerfile", f"{name}.tar.gz"]
    assert (one / f"{name}.tar.gz").read_bytes() == (two / f"{name}.tar.gz").read_bytes()
    assert (one / f"{name}.Dockerfile").read_bytes() == (two / f"{name}.Dockerfile").read_bytes()
    manifest = manifest_of(one / f"{name}.tar.gz")
    assert manifest["version"] == manifest["content_sha256"][:12] == version.group(1)
    assert f"content sha256 {manifest['content_sha256']}" in first.stdout


def test_bundle_holds_the_pipeline_and_what_it_needs(tiny: Path, monkeypatch) -> None:
    result = invoke(tiny, monkeypatch, "build", "tiny")  # a pipeline name works too

    assert result.exit_code == 0, result.output
    [bundle] = (tiny / "dist").glob("*.tar.gz")
    members = bundle_members(bundle)
    manifest = json.loads(members.pop("manifest.json"))
    assert set(manifest["files"]) == set(members)
    for rel, data in members.items():
        assert manifest["files"][rel] == sha256(data).hexdigest(), rel
    assert {
        key: manifest[key] for key in ("format", "name", "pipeline", "git_commit", "python")
    } == {
        "format": 1,
        "name": "tiny",
        "pipeline": "pipelines/tiny.yaml",
        "git_commit": None,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }
    assert manifest["mlnb_version"] == __version__
    # the project's files: the stages' notebooks, the specs, the data a parameter names;
    # not the other notebooks in the folder
    assert {rel for rel in members if not rel.startswith("vendor/")} == TINY_FILES

    # a notebook committed with outputs is bundled without them
    source = nbformat.read(str(tiny / "notebooks" / "with_outputs.ipynb"), as_version=4)
    assert source.cells[1].outputs, "the scenario notebook should carry outputs"
    bundled = nbformat.reads(members["notebooks/with_outputs.ipynb"].decode(), as_version=4)
    assert [c.source for c in bundled.cells] == [c.source for c in source.cells]
    assert all(c.outputs == [] and c.execution_count is None for c in bundled.cells)
    assert members["data/in.txt"] == b"41\n"
    assert members["pipelines/tiny.yaml"] == (tiny / "pipelines" / "tiny.yaml").read_bytes()
    assert yaml.safe_load(members["pipelines/monitor.yaml"])["retrain"]["pipeline"] == (
        "pipelines/tiny.yaml"
    )

    lock = members["requirements.lock"].decode().splitlines()
    assert f"mlflow=={metadata.version('mlflow')}" in lock
    assert f"papermill=={metadata.version('papermill')}" in lock
    assert not any(line.startswith("mlnb==") for line in lock)

    # mlnb itself: its wheel, checked in test_the_vendored_wheel_is_mlnb_and_installs
    assert [rel for rel in members if rel.startswith("vendor/")] == [f"vendor/{WHEEL}"]


def test_version_names_the_bundle_and_its_dockerfile(tiny: Path, monkeypatch) -> None:
    result = invoke(tiny, monkeypatch, "build", "pipelines/tiny.yaml", "--version", "1.2.0")

    assert result.exit_code == 0, result.output
    bundle = tiny / "dist" / "tiny-1.2.0.tar.gz"
    dockerfile = tiny / "dist" / "tiny-1.2.0.Dockerfile"
    assert f"bundle:     {bundle}" in result.output
    assert f"Dockerfile: {dockerfile}" in result.output
    assert manifest_of(bundle)["version"] == "1.2.0"
    text = dockerfile.read_text()
    assert "COPY tiny-1.2.0.tar.gz /tmp/bundle.tar.gz" in text
    assert 'ENTRYPOINT ["mlnb", "run", "pipelines/tiny.yaml"]' in text
    assert f"FROM python:{sys.version_info.major}.{sys.version_info.minor}-slim" in text
    assert "docker build -f tiny-1.2.0.Dockerfile -t mlnb-tiny:1.2.0 ." in text
    assert "pip install -r requirements.lock" in text
    assert f"pip install --no-deps ./vendor/{WHEEL}" in text


@pytest.mark.parametrize("label", ["1.2 bad", "../1.0", "v/1", ".hidden"])
def test_a_bad_version_is_a_clear_error(tiny: Path, monkeypatch, label: str) -> None:
    result = invoke(tiny, monkeypatch, "build", "pipelines/tiny.yaml", "--version", label)

    assert result.exit_code == 1
    assert f"error: '{label}' is not a bundle version" in result.output
    assert "letters, digits" in result.output
    assert "Traceback" not in result.output
    assert not (tiny / "dist").exists()


def test_only_a_source_change_changes_the_version(tiny: Path) -> None:
    spec = tiny / "pipelines" / "tiny.yaml"
    before = build_bundle(spec, tiny / "a").manifest
    # stripping the committed outputs changes no bundled byte
    path = tiny / "notebooks" / "with_outputs.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, str(path))
    assert build_bundle(spec, tiny / "b").manifest.version == before.version
    # a changed cell is another version
    path = tiny / "notebooks" / "add_one.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[1].source = nb.cells[1].source.replace("x + 1", "x + 2")
    nbformat.write(nb, str(path))
    after = build_bundle(spec, tiny / "c")

    assert after.manifest.version != before.version
    assert after.manifest.content_sha256 != before.content_sha256
    changed = {r for r in after.manifest.files if after.manifest.files[r] != before.files.get(r)}
    assert changed == {"notebooks/add_one.ipynb"}
    assert b"x + 2" in bundle_members(after.path)["notebooks/add_one.ipynb"]


def test_image_without_a_docker_daemon_says_so_and_how(tiny: Path, monkeypatch) -> None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            pytest.skip("a docker daemon answers here: this test is for a machine without one")

    result = invoke(tiny, monkeypatch, "build", "tiny", "--version", "1.0.0", "--image")

    assert result.exit_code == 1
    assert DAEMONLESS.search(result.output), result.output
    by_hand = f"cd {tiny / 'dist'} && docker build -f tiny-1.0.0.Dockerfile -t mlnb-tiny:1.0.0 ."
    assert by_hand in result.output
    assert "Traceback" not in result.output
    # the bundle and its Dockerfile are written all the same
    assert (tiny / "dist" / "tiny-1.0.0.tar.gz").is_file()
    assert (tiny / "dist" / "tiny-1.0.0.Dockerfile").is_file()


# -- mlnb itself, vendored as a wheel ---------------------------------------------------


def test_the_vendored_wheel_holds_exactly_mlnbs_package_files(vendored: bytes) -> None:
    files = wheel_files(vendored)
    package = {rel: data for rel, data in files.items() if rel.startswith("mlnb/")}
    outside = {rel: data for rel, data in files.items() if rel.startswith(f"{DATA}/")}

    assert package == package_files()
    # the JupyterLab extension where JupyterLab looks for it, and its server extension enabled
    assert outside == data_files()
    assert f"{DATA}/share/jupyter/labextensions/mlnb-lab/package.json" in outside
    assert f"{DATA}/etc/jupyter/jupyter_server_config.d/mlnb.json" in outside
    assert "mlnb/delivery/templates/project/pipelines/model.yaml" in package  # mlnb init works
    assert "mlnb/delivery/templates/project/notebooks/train.ipynb" in package
    assert "mlnb/py.typed" in package
    assert sorted(set(files) - set(package) - set(outside)) == [
        f"{DIST_INFO}/{name}"
        for name in ("METADATA", "RECORD", "WHEEL", "entry_points.txt", "top_level.txt")
    ]


def test_mlnb_init_runs_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    env = from_the_wheel(installed)
    where = subprocess.run(
        [sys.executable, "-c", "import mlnb; print(mlnb.__file__)"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert Path(where.stdout.strip()).parent == installed / "mlnb", where.stderr

    done = mlnb_cli(tmp_path, "init", "fresh", env=env)

    assert done.returncode == 0, done.stderr
    assert "created 11 files in fresh" in done.stdout
    spec = yaml.safe_load((tmp_path / "fresh" / "pipelines" / "fresh.yaml").read_text())
    assert spec["name"] == "fresh"


def test_mlnb_installed_from_the_wheel_builds_the_same_bundle(
    installed: Path, tiny: Path, vendored: bytes
) -> None:
    here = build_bundle(tiny / "pipelines" / "tiny.yaml", tiny / "here")

    done = mlnb_cli(
        tiny, "build", "pipelines/tiny.yaml", "--out", "there", env=from_the_wheel(installed)
    )

    assert done.returncode == 0, done.stderr
    there = tiny / "there" / here.path.name
    assert bundle_members(there)[f"vendor/{WHEEL}"] == vendored
    assert there.read_bytes() == here.path.read_bytes()


# -- verifying a bundle ------------------------------------------------------------------


def test_verify_hashes_members_as_they_stream(tiny: Path) -> None:
    (tiny / "data" / "in.txt").write_bytes(bytes(32 * MiB))
    built = build_bundle(tiny / "pipelines" / "tiny.yaml", version="1.0.0")

    tracemalloc.start()
    try:
        manifest = verify(built.path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert manifest == built.manifest
    assert manifest.files["data/in.txt"] == sha256(bytes(32 * MiB)).hexdigest()
    assert peak < 8 * MiB, f"verifying a 32 MiB member took {peak / MiB:.1f} MiB"


def test_extract_refuses_a_bundle_that_changed_since_it_was_verified(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    verified = verify(bundles["1.0.0"])
    folder = tmp_path / "scratch"
    folder.mkdir()

    with pytest.raises(BundleError) as caught:
        extract(bundles["2.0.0"], verified, folder)

    assert str(caught.value) == (
        f"{bundles['2.0.0']} changed while it was being deployed; deploy it again"
    )
    extract(bundles["1.0.0"], verified, folder / "again")
    assert Manifest.of_folder(folder / "again") == verified


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[" * 100_000, "manifest.json is not a bundle manifest (Invalid JSON: recursion limit"),
        (b"{not json", "manifest.json is not a bundle manifest (Invalid JSON"),
        (b'{"format": 1}', "manifest.json key 'name': Field required"),
    ],
    ids=["deeply-nested", "not-json", "missing-key"],
)
def test_a_manifest_that_is_not_one_is_a_one_line_error(raw: bytes, reason: str) -> None:
    with pytest.raises(BundleError) as caught:
        Manifest.from_json(raw, "b.tar.gz")

    assert str(caught.value).startswith(f"b.tar.gz: {reason}"), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_version_ending_in_a_newline_is_refused(tiny: Path) -> None:
    with pytest.raises(BundleError) as caught:
        build_bundle(tiny / "pipelines" / "tiny.yaml", version="1.0\n")

    assert str(caught.value).startswith("'1.0\\n' is not a bundle version")
    assert not (tiny / "dist").exists()


@pytest.mark.parametrize(
    "name", ["tiny", "a.b-c_d", "9lives", "../x", "/abs", "a/b", ".hidden", "-x", "", "a\n", "é"]
)
def test_a_bundle_name_follows_the_rule_of_pipeline_names(name: str) -> None:
    spec = {"name": name, "stages": {"a": {"notebook": "a.ipynb"}}}
    try:
        PipelineSpec.model_validate(spec)
    except ValidationError:
        valid_in_a_spec = False
    else:
        valid_in_a_spec = True

    assert (name_problem(name) is None) == valid_in_a_spec
