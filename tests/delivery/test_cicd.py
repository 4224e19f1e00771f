"""CI/CD for pipelines: ``mlnb test``, ``mlnb build``, ``mlnb deploy``, ``mlnb init``.

Real kernels, real SQLite MLflow stores in temporary folders and the real
command line: a subprocess (``python -m mlnb``) where the process boundary
matters, click's CliRunner where it does not. ``mlnb test`` runs twice in the
whole module, each time in a module fixture that several tests read: on a
freshly scaffolded project (everything passes) and on a small project whose
stage raises and whose notebook fails when run by hand.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256
from importlib import metadata
from pathlib import Path

import nbformat
import psutil
import pytest
import yaml
from click.testing import CliRunner, Result

import mlnb
from mlnb import __version__
from mlnb.cli import main
from mlnb.delivery.bundle import build as build_bundle
from mlnb.delivery.deploy import EXPERIMENT
from mlnb.delivery.scaffold import render
from mlnb.monitoring.runner import MonitorRunner
from mlnb.specs.monitor import load_monitor
from mlnb.specs.pipeline import load_pipeline
from tests.helpers import REPO, SCENARIOS

NBVAL_SUITE = "notebooks (nbval --nbval-lax)"
DAEMONLESS = re.compile(r"docker cannot reach its daemon|docker is not installed")


# -- helpers -----------------------------------------------------------------------


def mlnb_cli(cwd: Path, *args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
    """``python -m mlnb ARGS`` in ``cwd``, as a person (or CI) runs it; no MLFLOW_* leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["DO_NOT_TRACK"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "mlnb", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def invoke(cwd: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    """The command line in this process (click's CliRunner), from ``cwd``."""
    monkeypatch.chdir(cwd)
    return CliRunner().invoke(main, list(args))


def scenario_project(root: Path) -> Path:
    """A project folder with the scenario notebooks in notebooks/."""
    (root / "notebooks").mkdir(parents=True)
    (root / "pipelines").mkdir()
    for notebook in SCENARIOS.glob("*.ipynb"):
        shutil.copy(notebook, root / "notebooks" / notebook.name)
    return root


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@dataclass(frozen=True)
class Case:
    name: str
    status: str  # passed, failed, skipped
    message: str  # the failure's message attribute (its headline)
    text: str  # the failure's full text


def read_junit(path: Path) -> dict[str, list[Case]]:
    """JUnit XML as suite name → its cases, in order."""
    suites: dict[str, list[Case]] = {}
    for suite in ET.parse(path).getroot().iter("testsuite"):
        cases = suites.setdefault(suite.get("name", ""), [])
        for item in suite.iter("testcase"):
            failure, skipped = item.find("failure"), item.find("skipped")
            name = item.get("name", "")
            if failure is not None:
                case = Case(name, "failed", failure.get("message", ""), failure.text or "")
            elif skipped is not None:
                case = Case(name, "skipped", skipped.get("message", ""), "")
            else:
                case = Case(name, "passed", "", "")
            cases.append(case)
    return suites


def processes_in(root: Path) -> list[str]:
    """Live processes working in ``root`` or below (kernels a run left behind)."""
    text = str(root.resolve())
    found = []
    for proc in psutil.process_iter():
        try:
            cwd = proc.cwd()
            if cwd == text or cwd.startswith(text + os.sep):
                found.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
        except psutil.Error:
            continue
    return found


def bundle_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {
            info.name: tar.extractfile(info).read()  # type: ignore[union-attr]
            for info in tar.getmembers()
            if info.isfile()
        }


def manifest_of(path: Path) -> dict:
    return json.loads(bundle_members(path)["manifest.json"])


def listing(output: str) -> list[tuple[bool, str, str, str]]:
    """``mlnb deploy --list`` lines as (live, pipeline, version, action)."""
    rows = []
    for line in output.splitlines():
        if line[:2] in ("* ", "  "):
            pipeline, version, action = line[2:].split()[:3]
            rows.append((line.startswith("*"), pipeline, version, action))
    return rows


# -- a tiny project for build, deploy and the monitor ------------------------------

TINY = """\
    name: tiny
    params: {x: 1}
    profiles:
      ci: {x: 10}
    stages:
      a:
        notebook: notebooks/add_one.ipynb
        outputs: {out_path: out.txt}
      show:
        notebook: notebooks/with_outputs.ipynb
      read:
        notebook: notebooks/reads_input.ipynb
        params: {in_path: data/in.txt}
        outputs: {out_path: out.txt}
    model:
      name: tiny
      stage: a
      holdout: ${a.outputs.out_path}
      target: target
      metric: accuracy_score
"""

MONITOR = """\
    name: tiny-monitor
    model: tiny
    schedule: {every: 10m}
    window: {last: 100}
    performance: {metric: accuracy, threshold: 0.9}
    retrain:
      pipeline: pipelines/tiny.yaml
    triggers: [performance]
"""

#: what the tiny pipeline's bundle holds from the project (the rest is mlnb, vendored)
TINY_FILES = {
    "data/in.txt",
    "notebooks/add_one.ipynb",
    "notebooks/reads_input.ipynb",
    "notebooks/with_outputs.ipynb",
    "pipelines/monitor.yaml",
    "pipelines/tiny.yaml",
    "requirements.lock",
}


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


def store(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def live(root: Path, pipeline: str = "tiny") -> str:
    return (root / ".mlnb" / "deployments" / pipeline / "LIVE").read_text()


# -- mlnb init and the example -----------------------------------------------------


def test_example_is_the_template_rendered_as_cancer() -> None:
    files = render("cancer")
    notebooks = {rel for rel in files if rel.startswith("notebooks/") and rel.endswith(".ipynb")}
    assert notebooks == {f"notebooks/{p.name}" for p in (REPO / "notebooks").glob("*.ipynb")}
    specs = {"pipelines/cancer.yaml", "pipelines/monitor.yaml"}
    assert {f"pipelines/{p.name}" for p in (REPO / "pipelines").glob("*.y*ml")} == specs
    for rel in sorted(notebooks | specs):
        assert files[rel] == (REPO / rel).read_bytes(), f"{rel} differs from the template"


def test_init_writes_a_project_ready_for_ci(tmp_path: Path, monkeypatch) -> None:
    result = invoke(tmp_path, monkeypatch, "init", "shop")

    assert result.exit_code == 0, result.output
    root = tmp_path / "shop"
    written = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert written == {
        ".github/workflows/mlnb.yml",
        ".gitignore",
        ".pre-commit-config.yaml",
        "README.md",
        "environment.yml",
        "notebooks/drift.ipynb",
        "notebooks/evaluate.ipynb",
        "notebooks/prepare.ipynb",
        "notebooks/train.ipynb",
        "pipelines/monitor.yaml",
        "pipelines/shop.yaml",
    }
    assert "created 11 files in shop; next: cd shop && mlnb test" in result.output
    for rel in written:
        text = (root / rel).read_text()
        assert "{{name}}" not in text and "{{mlnb_version}}" not in text, rel
    for notebook in (root / "notebooks").glob("*.ipynb"):
        cells = nbformat.read(str(notebook), as_version=4).cells
        tagged = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{notebook.name} needs one cell tagged parameters"
        assert all(not c.get("outputs") for c in cells), f"{notebook.name} has outputs"

    pipeline = yaml.safe_load((root / "pipelines" / "shop.yaml").read_text())
    assert pipeline["name"] == "shop"
    assert pipeline["profiles"]["ci"]
    assert list(pipeline["stages"]) == ["prepare", "train", "evaluate"]
    assert pipeline["model"]["name"] == "shop" and pipeline["model"]["stage"] == "train"
    monitor = yaml.safe_load((root / "pipelines" / "monitor.yaml").read_text())
    assert monitor["model"] == "shop"
    assert monitor["retrain"]["pipeline"] == "pipelines/shop.yaml"
    assert monitor["drift"]["notebook"] == "notebooks/drift.ipynb"
    assert f"mlnb=={__version__}" in (root / "environment.yml").read_text()

    precommit = yaml.safe_load((root / ".pre-commit-config.yaml").read_text())
    hooks = {h["id"]: (repo["repo"], h) for repo in precommit["repos"] for h in repo["hooks"]}
    assert hooks["nbstripout"][0] == "https://github.com/kynan/nbstripout"
    assert hooks["mlnb-check"][1]["entry"] == "mlnb check"

    workflow = yaml.safe_load((root / ".github" / "workflows" / "mlnb.yml").read_text())
    assert workflow.get("on", workflow.get(True)) == ["push"]  # YAML 1.1 reads `on` as true
    ci, deploy = workflow["jobs"]["ci"], workflow["jobs"]["deploy"]
    runs = [step.get("run", "") for step in ci["steps"]]
    order = [
        next(i for i, run in enumerate(runs) if run.startswith(command))
        for command in ("mlnb check", "mlnb test", "mlnb build pipelines/shop.yaml")
    ]
    assert order == sorted(order), runs
    assert deploy["needs"] == "ci"
    assert deploy["if"] == "github.ref == 'refs/heads/main'"
    assert any("mlnb deploy" in step.get("run", "") for step in deploy["steps"])


def test_init_takes_the_name_from_the_option(tmp_path: Path, monkeypatch) -> None:
    result = invoke(tmp_path, monkeypatch, "init", "folder", "--name", "churn")

    assert result.exit_code == 0, result.output
    spec = tmp_path / "folder" / "pipelines" / "churn.yaml"
    assert yaml.safe_load(spec.read_text())["name"] == "churn"
    assert not (tmp_path / "folder" / "pipelines" / "folder.yaml").exists()


def test_init_refuses_a_folder_with_files(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine\n")

    result = invoke(tmp_path, monkeypatch, "init", "busy")

    assert result.exit_code == 1
    assert "busy is not empty (notes.txt)" in result.output
    assert "nothing is overwritten" in result.output
    assert "Traceback" not in result.output
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize(
    ("folder", "options", "name"),
    [("1st-project", [], "1st-project"), ("ok", ["--name", "my model"], "my model")],
    ids=["folder-name", "option"],
)
def test_init_refuses_a_bad_name(
    tmp_path: Path, monkeypatch, folder: str, options: list[str], name: str
) -> None:
    result = invoke(tmp_path, monkeypatch, "init", folder, *options)

    assert result.exit_code == 1
    assert f"'{name}' cannot name a pipeline and its model" in result.output
    assert "--name" in result.output  # says what to do
    assert not (tmp_path / folder).exists()


# -- mlnb build ----------------------------------------------------------------------


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

    package = Path(mlnb.__file__).parent
    sources = {
        f"vendor/mlnb/{p.relative_to(package).as_posix()}": p.read_bytes()
        for p in package.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources and all(members.get(rel) == data for rel, data in sources.items())
    assert (
        "vendor/mlnb/delivery/templates/project/pipelines/model.yaml" in members
    )  # mlnb init works
    pyproject = members["vendor/pyproject.toml"].decode()
    assert 'name = "mlnb"' in pyproject and f'version = "{__version__}"' in pyproject


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


# -- mlnb deploy ----------------------------------------------------------------------


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
    assert Path(tags["mlnb.deployment.path"]).resolve() == folder
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
    assert len(client.search_runs([experiment.experiment_id])) == 1


# -- the monitor retrains with the live deployment ------------------------------------


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


# -- mlnb test: a project that fails --------------------------------------------------

BAD = """\
    name: bad
    profiles:
      ci: {x: 7}
    stages:
      boom:
        notebook: notebooks/fails_in_cell_2.ipynb
      after:
        notebook: notebooks/add_one.ipynb
        needs: [boom]
        outputs: {out_path: out.txt}
"""

# passes as a pipeline; reads_input.ipynb fails when run by hand (its in.txt is not there)
GOOD = """\
    name: good
    profiles:
      ci: {x: 10}
    stages:
      a:
        notebook: notebooks/add_one.ipynb
        outputs: {out_path: out.txt}
      b:
        notebook: notebooks/reads_input.ipynb
        params: {in_path: "${a.outputs.out_path}"}
        outputs: {out_path: out.txt}
"""


@dataclass(frozen=True)
class Outcome:
    """One ``mlnb test`` in a project: the project, what it printed, its JUnit XML."""

    root: Path
    done: subprocess.CompletedProcess[str]
    junit: dict[str, list[Case]]
    left: list[str]


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    root = scenario_project(tmp_path_factory.mktemp("failing") / "proj")
    write(root / "pipelines" / "bad.yaml", BAD)
    write(root / "pipelines" / "good.yaml", GOOD)
    done = mlnb_cli(root, "test", "--junit-xml", "reports/junit.xml")
    report = root / "reports" / "junit.xml"
    junit = read_junit(report) if report.exists() else {}
    return Outcome(root, done, junit, processes_in(root))


def test_a_failing_stage_fails_mlnb_test_naming_pipeline_stage_cell_and_exception(
    failing: Outcome,
) -> None:
    done = failing.done
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pipeline bad (profile ci, throwaway MLflow store)" in done.stdout
    headline = re.compile(r"pipeline bad: stage 'boom' failed: cell \d+ raised ValueError: boom 7")
    assert headline.search(done.stdout), done.stdout  # boom 7: the ci profile reached it
    assert re.search(r"^error: " + headline.pattern, done.stderr, re.MULTILINE), done.stderr
    assert "3 failed, 3 passed" in done.stderr
    assert "JUnit XML: reports/junit.xml" in done.stdout

    junit = failing.junit
    assert list(junit) == ["pipeline bad", "pipeline good", NBVAL_SUITE]
    boom, after = junit["pipeline bad"]
    assert (boom.name, boom.status) == ("boom", "failed")
    assert headline.match(boom.message), boom.message
    assert (after.name, after.status, after.message) == (
        "after",
        "skipped",
        "an upstream stage failed",
    )
    assert [(c.name, c.status) for c in junit["pipeline good"]] == [
        ("a", "passed"),
        ("b", "passed"),
    ]


def test_a_notebook_failing_by_hand_fails_the_nbval_part_naming_it(failing: Outcome) -> None:
    cases = {c.name: c for c in failing.junit[NBVAL_SUITE]}
    assert list(cases) == [
        "notebooks/fails_in_cell_2.ipynb",
        "notebooks/add_one.ipynb",
        "notebooks/reads_input.ipynb",
    ]
    assert cases["notebooks/add_one.ipynb"].status == "passed"
    by_hand = cases["notebooks/reads_input.ipynb"]
    assert by_hand.status == "failed"
    assert by_hand.message.startswith("notebooks/reads_input.ipynb: ")
    assert "FileNotFoundError" in by_hand.text and "'in.txt'" in by_hand.text
    assert cases["notebooks/fails_in_cell_2.ipynb"].status == "failed"
    assert "ValueError" in cases["notebooks/fails_in_cell_2.ipynb"].text
    assert "✗ notebooks/reads_input.ipynb: " in failing.done.stdout
    assert "✓ notebooks/add_one.ipynb (2 cells" in failing.done.stdout
    assert re.search(r"^error: notebooks/reads_input\.ipynb: ", failing.done.stderr, re.M)


def test_mlnb_test_leaves_the_project_store_alone_after_a_failure(failing: Outcome) -> None:
    assert not (failing.root / "mlflow.db").exists()
    assert not (failing.root / "mlartifacts").exists()
    # the passing pipeline's workspace is gone; only a failed run's may stay, named
    runs = failing.root / ".mlnb" / "runs"
    left = [p.name for p in runs.iterdir()] if runs.exists() else []
    assert len(left) <= 1
    assert all(f"/.mlnb/runs/{run}/boom.ipynb" in failing.done.stderr for run in left)
    assert not failing.left, failing.left


def test_the_failing_cell_is_its_position_in_the_notebook_edited(failing: Outcome) -> None:
    # fails_in_cell_2.ipynb raises in its second cell, whatever parameters are injected
    assert "stage 'boom' failed: cell 2 raised ValueError: boom 7" in failing.done.stderr


def test_the_executed_notebook_a_failure_names_is_there(failing: Outcome) -> None:
    named = re.findall(r"executed notebook: (\S+)", failing.done.stderr)
    assert all(Path(path).is_file() for path in named), named


def test_an_nbval_failure_headline_names_the_cell_and_exception(failing: Outcome) -> None:
    by_hand = next(c for c in failing.junit[NBVAL_SUITE] if c.name.endswith("reads_input.ipynb"))
    assert "FileNotFoundError" in by_hand.message
    assert "#x1B" not in by_hand.text and "\x1b" not in by_hand.text


# -- the scaffolded project: check, test, build as it is (the one expensive test) ----


@dataclass(frozen=True)
class Scaffolded:
    root: Path
    init: subprocess.CompletedProcess[str]
    check: subprocess.CompletedProcess[str]
    test: Outcome
    build: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> Scaffolded:
    """``mlnb init shop``, then what its CI workflow runs: check, test, build."""
    parent = tmp_path_factory.mktemp("scaffold")
    root = parent / "shop"
    init = mlnb_cli(parent, "init", "shop")
    check = mlnb_cli(root, "check")
    done = mlnb_cli(root, "test", "--junit-xml", "reports/mlnb-test.xml")
    report = root / "reports" / "mlnb-test.xml"
    tested = Outcome(root, done, read_junit(report) if report.exists() else {}, processes_in(root))
    build = mlnb_cli(root, "build", "pipelines/shop.yaml")
    return Scaffolded(root, init, check, tested, build)


@pytest.mark.slow
def test_a_scaffolded_project_passes_check_test_and_build(scaffolded: Scaffolded) -> None:
    assert scaffolded.init.returncode == 0, scaffolded.init.stderr
    assert scaffolded.check.returncode == 0, scaffolded.check.stdout + scaffolded.check.stderr
    assert "all checks passed" in scaffolded.check.stderr
    done = scaffolded.test.done
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pipeline shop (profile ci, throwaway MLflow store)" in done.stdout
    assert "all 8 passed" in done.stderr
    assert scaffolded.build.returncode == 0, scaffolded.build.stderr
    [bundle] = (scaffolded.root / "dist").glob("shop-*.tar.gz")
    assert f"bundle:     {bundle}" in scaffolded.build.stdout
    files = manifest_of(bundle)["files"]
    assert {
        "pipelines/shop.yaml",
        "pipelines/monitor.yaml",
        "notebooks/prepare.ipynb",
        "notebooks/train.ipynb",
        "notebooks/evaluate.ipynb",
        "notebooks/drift.ipynb",
        "requirements.lock",
    } <= set(files)
    assert (scaffolded.root / "dist" / bundle.name.replace(".tar.gz", ".Dockerfile")).is_file()


@pytest.mark.slow
def test_mlnb_test_reports_each_stage_and_notebook_in_junit(scaffolded: Scaffolded) -> None:
    junit = scaffolded.test.junit
    assert list(junit) == ["pipeline shop", NBVAL_SUITE]
    assert [(c.name, c.status) for c in junit["pipeline shop"]] == [
        ("prepare", "passed"),
        ("train", "passed"),
        ("evaluate", "passed"),
        ("model", "passed"),
    ]
    assert [(c.name, c.status) for c in junit[NBVAL_SUITE]] == [
        ("notebooks/prepare.ipynb", "passed"),
        ("notebooks/train.ipynb", "passed"),
        ("notebooks/evaluate.ipynb", "passed"),
        ("notebooks/drift.ipynb", "passed"),  # the monitor's, which retrains with the pipeline
    ]
    root = ET.parse(scaffolded.root / "reports" / "mlnb-test.xml").getroot()
    assert [(s.get("tests"), s.get("failures")) for s in root] == [("4", "0"), ("4", "0")]
    assert "✓ model shop: v1 promoted: first champion" in scaffolded.test.done.stdout


@pytest.mark.slow
def test_mlnb_test_uses_a_throwaway_store_and_removes_the_workspace(
    scaffolded: Scaffolded,
) -> None:
    root = scaffolded.root
    assert not (root / "mlflow.db").exists()
    assert not (root / "mlartifacts").exists()
    runs = root / ".mlnb" / "runs"
    assert not runs.exists() or not any(runs.iterdir())
    assert not scaffolded.test.left, scaffolded.test.left


@pytest.mark.slow
def test_mlnb_test_writes_no_mlflow_artifacts_into_the_project(scaffolded: Scaffolded) -> None:
    assert not (scaffolded.root / "mlruns").exists()
