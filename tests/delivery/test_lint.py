"""``mlnb check``: lint specs and notebooks without running anything."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from mlnb.delivery.lint import check_paths, discover
from mlnb.errors import Problem
from tests.helpers import REPO

OUTPUTS_MESSAGE = "committed with outputs; strip them with 'mlnb check --fix'"


def test_the_example_project_is_clean() -> None:
    assert check_paths([REPO / "pipelines", REPO / "notebooks"]) == []


def test_the_example_spec_alone_is_clean() -> None:
    assert check_paths([REPO / "pipelines" / "cancer.yaml"]) == []


def test_a_notebook_with_outputs_is_reported_with_its_cells(project) -> None:
    path = project.root / "notebooks" / "with_outputs.ipynb"
    assert check_paths([path]) == [Problem(str(path), "cells 2", OUTPUTS_MESSAGE)]


def test_fix_strips_outputs_and_a_second_check_is_clean(project) -> None:
    path = project.root / "notebooks" / "with_outputs.ipynb"
    assert check_paths([project.root], fix=True) == []
    nb = nbformat.read(str(path), as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells)
    assert nb.cells[1].source == "print(x)"
    assert check_paths([project.root]) == []


def test_fix_leaves_other_problems_reported(project) -> None:
    missing = project.root / "nowhere"
    problems = check_paths([project.root / "notebooks", missing], fix=True)
    assert problems == [Problem(str(missing), "", "no such file or folder")]


def test_many_cells_with_outputs_are_abbreviated(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"print({i})", execution_count=i) for i in range(1, 11)]
    path = tmp_path / "busy.ipynb"
    nbformat.write(nb, str(path))
    (problem,) = check_paths([path])
    assert problem.location == "cells 1, 2, 3, 4, 5, 6, 7, 8…"


def test_a_project_folder_finds_notebooks_and_specs(project) -> None:
    project.spec("name: p\nstages:\n  a: {notebook: notebooks/add_one.ipynb}\n")
    (project.root / "pipelines" / "notes.yaml").write_text("owner: me\n")  # not a pipeline
    hidden = project.root / "notebooks" / ".ipynb_checkpoints"
    hidden.mkdir()
    shutil.copy(project.root / "notebooks" / "with_outputs.ipynb", hidden / "x-checkpoint.ipynb")
    specs, notebooks = discover([project.root])
    assert specs == [project.root / "pipelines" / "p.yaml"]
    assert sorted(p.name for p in notebooks) == sorted(
        p.name for p in (REPO / "tests" / "notebooks").glob("*.ipynb")
    )
    problems = check_paths([project.root])
    assert [(p.file, p.location) for p in problems] == [
        (str(project.root / "notebooks" / "with_outputs.ipynb"), "cells 2")
    ]


def test_a_stage_notebook_without_parameters_cell_is_reported(project) -> None:
    spec = project.spec(
        "name: p\nstages:\n  a: {notebook: notebooks/no_parameters_cell.ipynb}\n"
        "  b: {notebook: notebooks/add_one.ipynb}\n"
    )
    (problem,) = check_paths([spec])
    assert problem.file == str(spec)
    assert problem.location == "stages.a.notebook"
    assert problem.message.startswith("no_parameters_cell.ipynb has no cell tagged 'parameters'")


def test_absolute_paths_in_params_and_profiles_are_reported(project) -> None:
    spec = project.spec(
        r"""
        name: p
        params:
          seed: 0
          out_path: /home/me/out.txt
        profiles:
          ci:
            in_path: ~/data/in.txt
            x: 3
          win:
            in_path: 'C:\data\in.txt'
        stages:
          a:
            notebook: notebooks/add_one.ipynb
            params: {x: 1}
          b:
            notebook: notebooks/reads_input.ipynb
            params:
              in_path: /mnt/shared/in.txt
              out_path: data/out.txt
          c:
            notebook: notebooks/writes_nothing.ipynb
            params:
              out_path: ["rel.txt", "/abs/in/list.txt"]
        """
    )
    problems = check_paths([spec])
    assert {p.file for p in problems} == {str(spec)}
    found = {p.location: p.message for p in problems}
    assert set(found) == {
        "params.out_path",
        "profiles.ci.in_path",
        "profiles.win.in_path",
        "stages.b.params.in_path",
        "stages.c.params.out_path",
    }
    assert found["params.out_path"] == (
        "absolute path '/home/me/out.txt' ties the pipeline to one machine; "
        "use a path relative to the project root"
    )
    assert "'~/data/in.txt'" in found["profiles.ci.in_path"]
    assert "'C:\\data\\in.txt'" in found["profiles.win.in_path"]
    assert "'/abs/in/list.txt'" in found["stages.c.params.out_path"]


def test_references_and_relative_paths_are_not_absolute(project) -> None:
    spec = project.spec(
        """\
        name: p
        stages:
          a:
            notebook: notebooks/add_one.ipynb
            outputs: {out_path: out.txt}
          b:
            notebook: notebooks/reads_input.ipynb
            params:
              in_path: ${a.outputs.out_path}
              out_path: ./data/out.txt
        """
    )
    assert check_paths([spec]) == []


def test_spec_errors_surface_as_problems(project) -> None:
    spec = project.spec(
        """\
        name: p
        stages:
          a:
            notebook: notebooks/add_one.ipynb
            params: {xx: 1}
          b:
            notebook: notebooks/add_on.ipynb
        """
    )
    problems = check_paths([spec])
    assert {p.file for p in problems} == {str(spec)}
    found = {p.location: p.message for p in problems}
    assert set(found) == {"line 5: stages.a.params.xx", "line 7: stages.b.notebook"}
    assert found["line 5: stages.a.params.xx"].endswith("did you mean 'x'?")
    assert found["line 7: stages.b.notebook"].endswith("did you mean 'notebooks/add_one.ipynb'?")


def test_spec_errors_in_a_folder_are_found(project) -> None:
    project.spec("name: p\nstages:\n  a:\n    notebook: notebooks/add_one.ipynb\n    x: 1\n")
    problems = check_paths([project.root / "pipelines"])
    assert [(p.location, p.message) for p in problems] == [
        ("line 5: stages.a.x", "unknown key 'x'")
    ]


@pytest.mark.parametrize(
    "text",
    [
        "name: p\nstagse:\n  a: {notebook: notebooks/add_one.ipynb}\n",
        "- name: p\n",
    ],
    ids=["misspelled-stages", "not-a-mapping"],
)
def test_a_broken_spec_in_pipelines_is_not_skipped(project, text: str) -> None:
    spec = project.spec(text)
    problems = check_paths([project.root / "pipelines"])
    assert problems
    assert {p.file for p in problems} == {str(spec)}


def test_invalid_yaml_in_pipelines_is_reported(project) -> None:
    spec = project.spec("name: p\nstages: [\n")
    (problem,) = check_paths([project.root / "pipelines"])
    assert problem.file == str(spec)
    assert problem.message.startswith("invalid YAML")


def test_a_nonexistent_path_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert check_paths([missing]) == [Problem(str(missing), "", "no such file or folder")]


def test_an_unreadable_notebook_is_reported(project) -> None:
    path = project.root / "notebooks" / "broken.ipynb"
    path.write_text("{not json")
    (problem,) = check_paths([path])
    assert problem.file == str(path)
    assert problem.location == ""
    assert problem.message.startswith("not a readable notebook")


def test_an_unreadable_notebook_given_relatively_names_it_once(
    project, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project.root / "notebooks" / "broken.ipynb").write_text("{not json")
    monkeypatch.chdir(project.root)
    (problem,) = check_paths([Path("notebooks/broken.ipynb")])
    assert problem.file == "notebooks/broken.ipynb"
    assert problem.message.startswith("not a readable notebook")


def test_the_command_line_reports_one_line_per_problem_then_fixes(project) -> None:
    project.spec("name: p\nstages:\n  a: {notebook: notebooks/no_parameters_cell.ipynb}\n")
    failed = project.mlnb("check")
    assert failed.returncode == 1, failed.stderr
    lines = failed.stdout.splitlines()
    assert lines == [
        f"notebooks/with_outputs.ipynb: cells 2: {OUTPUTS_MESSAGE}",
        "pipelines/p.yaml: stages.a.notebook: no_parameters_cell.ipynb has no cell tagged "
        "'parameters'; tag the cell holding its defaults so the pipeline can set them",
    ]
    assert "2 problems found" in failed.stderr

    (project.root / "pipelines" / "p.yaml").unlink()
    fixed = project.mlnb("check", "--fix", "notebooks")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert fixed.stdout == ""
    assert "all checks passed" in fixed.stderr

    clean = project.mlnb("check")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "all checks passed" in clean.stderr
