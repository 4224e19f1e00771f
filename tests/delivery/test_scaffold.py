"""``mlnb init``: a new project, and that it passes check, test and build as it is."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml

from mlnb import __version__
from mlnb.delivery.scaffold import render
from tests.delivery.helpers import Scaffolded, invoke, manifest_of
from tests.helpers import REPO


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


@pytest.mark.slow
def test_a_scaffolded_project_passes_check_test_and_build(scaffolded: Scaffolded) -> None:
    assert scaffolded.init.returncode == 0, scaffolded.init.stderr
    assert scaffolded.check.returncode == 0, scaffolded.check.stdout + scaffolded.check.stderr
    assert "all checks passed" in scaffolded.check.stderr
    done = scaffolded.test.done
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pipeline shop (profile ci, throwaway MLflow store)" in done.stdout
    assert "all 9 passed" in done.stderr
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
