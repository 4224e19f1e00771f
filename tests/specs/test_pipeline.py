"""Pipeline specs: every kind of error, reported together, and the happy path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlnb.engine.kernelspecs import installed_kernels
from mlnb.errors import Problem, SpecError
from mlnb.pipelines import locate
from mlnb.specs.pipeline import (
    COMMAND_LINE,
    Reference,
    load_pipeline,
    output_reference,
    parse_assignments,
    project_root,
)
from tests.helpers import REPO


def problems_of(path: Path, **kwargs: object) -> list[Problem]:
    """Load a spec that must fail and return its problems."""
    with pytest.raises(SpecError) as info:
        load_pipeline(path, **kwargs)  # type: ignore[arg-type]
    assert info.value.problems, "a SpecError must list its problems"
    return info.value.problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def at(problems: list[Problem], location: str) -> Problem:
    """The one problem reported at ``location``."""
    found = [p for p in problems if p.location == location]
    assert len(found) == 1, f"no single problem at {location!r} in:\n" + "\n".join(
        map(str, problems)
    )
    return found[0]


# -- structure: unknown keys, missing keys, types, YAML -------------------------------


@pytest.mark.parametrize(
    ("text", "location", "message"),
    [
        pytest.param(
            "name: p\nstagse:\n  a: {notebook: notebooks/add_one.ipynb}\n",
            "line 2: stagse",
            "unknown key 'stagse'; did you mean 'stages'?",
            id="top-level",
        ),
        pytest.param(
            "name: p\nparms: {x: 1}\nstages:\n  a: {notebook: notebooks/add_one.ipynb}\n",
            "line 2: parms",
            "unknown key 'parms'; did you mean 'params'?",
            id="top-level-params",
        ),
        pytest.param(
            "name: p\nstages:\n  a:\n    notebook: notebooks/add_one.ipynb\n    parms: {x: 1}\n",
            "line 5: stages.a.parms",
            "unknown key 'parms'; did you mean 'params'?",
            id="stage-params",
        ),
        pytest.param(
            "name: p\nstages:\n  a:\n    notebook: notebooks/add_one.ipynb\n    output: {}\n",
            "line 5: stages.a.output",
            "unknown key 'output'; did you mean 'outputs'?",
            id="stage-outputs",
        ),
        pytest.param(
            "name: p\nstages:\n  a:\n    notebook: notebooks/add_one.ipynb\n    color: red\n",
            "line 5: stages.a.color",
            "unknown key 'color'",
            id="no-near-name",
        ),
    ],
)
def test_unknown_key_is_reported_with_line_and_suggestion(
    project, text: str, location: str, message: str
) -> None:
    path = project.spec(text)
    problem = at(problems_of(path), location)
    assert problem.file == str(path)
    assert problem.message.startswith(message)
    if "did you mean" not in message:
        assert "did you mean" not in problem.message


def test_misspelled_stage_keys_report_each_key_and_the_missing_notebook(project) -> None:
    path = project.spec(
        """\
        name: p
        stages:
          a:
            notebok: notebooks/add_one.ipynb
            parms: {x: 1}
        """
    )
    problems = problems_of(path)
    assert {p.file for p in problems} == {str(path)}
    assert at(problems, "line 4: stages.a.notebok").message == (
        "unknown key 'notebok'; did you mean 'notebook'?"
    )
    assert at(problems, "line 5: stages.a.parms").message == (
        "unknown key 'parms'; did you mean 'params'?"
    )
    assert at(problems, "line 3: stages.a.notebook").message == "required key 'notebook' is missing"
    assert len(problems) == 3


@pytest.mark.parametrize(
    ("text", "location", "message"),
    [
        pytest.param(
            "stages:\n  a: {notebook: notebooks/add_one.ipynb}\n",
            "name",
            "required key 'name' is missing",
            id="name",
        ),
        pytest.param(
            "name: p\ndescription: nothing to run\n",
            "stages",
            "required key 'stages' is missing",
            id="stages",
        ),
        pytest.param(
            "name: p\nstages:\n  a:\n    params: {x: 1}\n",
            "line 3: stages.a.notebook",
            "required key 'notebook' is missing",
            id="stage-notebook",
        ),
        pytest.param(
            "name: p\nstages: {}\n",
            "line 2: stages",
            "a pipeline needs at least one stage",
            id="no-stages",
        ),
        pytest.param(
            "name: p\nstages:\n  a:\n    notebook: notebooks/add_one.ipynb\n    timeout: -1\n",
            "line 5: stages.a.timeout",
            "greater than 0",
            id="negative-timeout",
        ),
        pytest.param(
            "name: p\nstages:\n  a:\n    notebook: notebooks/add_one.ipynb\n    timeout: abc\n",
            "line 5: stages.a.timeout",
            "valid number",
            id="text-timeout",
        ),
        pytest.param(
            "name: p\nstages:\n  a:\n    notebook: notebooks/add_one.ipynb\n    needs: b\n",
            "line 5: stages.a.needs",
            "valid list",
            id="needs-not-a-list",
        ),
        pytest.param(
            "name: p\nstages:\n  a: notebooks/add_one.ipynb\n",
            "line 3: stages.a",
            "valid dictionary",
            id="stage-not-a-mapping",
        ),
        pytest.param(
            "name: my pipeline\nstages:\n  a: {notebook: notebooks/add_one.ipynb}\n",
            "line 1: name",
            "should match pattern",
            id="name-with-space",
        ),
    ],
)
def test_missing_keys_and_wrong_types(project, text: str, location: str, message: str) -> None:
    path = project.spec(text)
    problem = only(problems_of(path))
    assert problem.file == str(path)
    assert problem.location == location
    assert message in problem.message


def test_invalid_yaml_names_the_line(project) -> None:
    path = project.spec("name: p\nstages:\n  a:\n    notebook: x.ipynb\n     timeout: 5\n")
    problem = only(problems_of(path))
    assert problem.file == str(path)
    assert problem.location == "line 5"
    assert problem.message.startswith("invalid YAML: ")
    assert "mapping values are not allowed" in problem.message


@pytest.mark.parametrize(
    "text", ["- a\n- b\n", "just a string\n", "", "# only a comment\n"], ids=repr
)
def test_a_spec_that_is_not_a_mapping(project, text: str) -> None:
    path = project.spec(text)
    problem = only(problems_of(path))
    assert (problem.file, problem.location) == (str(path), "")
    assert "mapping with 'name' and 'stages'" in problem.message


def test_missing_spec_file(project) -> None:
    path = project.root / "pipelines" / "nowhere.yaml"
    problem = only(problems_of(path))
    assert (problem.file, problem.location) == (str(path), "")
    assert problem.message == "no such pipeline spec"


def test_spec_error_message_lists_every_problem(project) -> None:
    path = project.spec("name: p\nstagse: {}\nparms: {}\n")
    with pytest.raises(SpecError) as info:
        load_pipeline(path)
    text = str(info.value)
    assert text.startswith("3 problems in the pipeline spec:")
    assert f"{path}: line 2: stagse: unknown key 'stagse'" in text
    assert f"{path}: line 3: parms: unknown key 'parms'" in text
    assert info.value.exit_code == 2


# -- the dependency graph ------------------------------------------------------------


def test_cycle_through_references(project) -> None:
    path = project.spec(
        """\
        name: p
        stages:
          a:
            notebook: notebooks/reads_input.ipynb
            params: {in_path: "${b.outputs.out_path}"}
            outputs: {out_path: a.txt}
          b:
            notebook: notebooks/reads_input.ipynb
            params: {in_path: "${a.outputs.out_path}"}
            outputs: {out_path: b.txt}
        """
    )
    problem = only(problems_of(path))
    assert problem.location == "line 3: stages.a"
    assert "the stages form a cycle: a → b → a" in problem.message


def test_cycle_through_needs_shows_the_cycle_not_its_downstream(project) -> None:
    path = project.spec(
        """\
        name: p
        stages:
          c:
            notebook: notebooks/add_one.ipynb
            needs: [a]
          a:
            notebook: notebooks/add_one.ipynb
            needs: [b]
          b:
            notebook: notebooks/add_one.ipynb
            needs: [a]
        """
    )
    problem = only(problems_of(path))
    assert problem.location == "line 6: stages.a"
    assert "the stages form a cycle: a → b → a;" in problem.message
    assert "c →" not in problem.message


def test_a_cycle_reads_in_the_direction_of_needs(project) -> None:
    path = project.spec(
        """\
        name: p
        stages:
          a:
            notebook: notebooks/add_one.ipynb
            needs: [b]
          b:
            notebook: notebooks/add_one.ipynb
            needs: [c]
          c:
            notebook: notebooks/add_one.ipynb
            needs: [a]
        """
    )
    problem = only(problems_of(path))
    assert problem.location == "line 3: stages.a"
    assert problem.message == (
        "the stages form a cycle: a → b → c → a; remove a reference or a 'needs' entry to break it"
    )


def test_a_cycle_is_named_from_where_the_first_stage_reaches_it(project) -> None:
    # 'first' is listed first and needs 'b': the cycle is entered at b
    path = project.spec(
        """\
        name: p
        stages:
          first:
            notebook: notebooks/add_one.ipynb
            needs: [b]
          a:
            notebook: notebooks/add_one.ipynb
            needs: [b]
          b:
            notebook: notebooks/add_one.ipynb
            needs: [a]
        """
    )
    problem = only(problems_of(path))
    assert problem.location == "line 9: stages.b"
    assert problem.message.startswith("the stages form a cycle: b → a → b;")


def test_a_stage_cannot_need_itself_or_an_unknown_stage(project) -> None:
    path = project.spec(
        """\
        name: p
        stages:
          prepare:
            notebook: notebooks/add_one.ipynb
          train:
            notebook: notebooks/add_one.ipynb
            needs: [train, prepar]
        """
    )
    problems = problems_of(path)
    assert at(problems, "line 7: stages.train.needs.0").message == "a stage cannot need itself"
    assert at(problems, "line 7: stages.train.needs.1").message == (
        "unknown stage 'prepar'; did you mean 'prepare'?"
    )
    assert len(problems) == 2


REFERENCING = """\
name: p
stages:
  prepare:
    notebook: notebooks/add_one.ipynb
    outputs: {{out_path: data.txt}}
  other:
    notebook: notebooks/writes_nothing.ipynb
  train:
    notebook: notebooks/reads_input.ipynb
    params:
      in_path: "{reference}"
"""


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        pytest.param(
            "${prepar.outputs.out_path}",
            "'${prepar.outputs.out_path}' names unknown stage 'prepar'; did you mean 'prepare'?",
            id="unknown-stage",
        ),
        pytest.param(
            "${zzz.outputs.out_path}",
            "'${zzz.outputs.out_path}' names unknown stage 'zzz'",
            id="unknown-stage-no-near-name",
        ),
        pytest.param(
            "${prepare.outputs.out_pth}",
            "'${prepare.outputs.out_pth}': stage 'prepare' has no output 'out_pth'; "
            "did you mean 'out_path'?",
            id="near-output",
        ),
        pytest.param(
            "${prepare.outputs.train}",
            "'${prepare.outputs.train}': stage 'prepare' has no output 'train'; "
            "its outputs: out_path",
            id="far-output-lists-outputs",
        ),
        pytest.param(
            "${other.outputs.out_path}",
            "'${other.outputs.out_path}': stage 'other' has no output 'out_path'; "
            "stage 'other' declares no outputs",
            id="stage-without-outputs",
        ),
        pytest.param(
            "${prepare.train}",
            "'${prepare.train}' is not a reference of the form ${stage.outputs.name}",
            id="malformed-two-parts",
        ),
        pytest.param(
            "data/${prepare.output.out_path}",
            "'${prepare.output.out_path}' is not a reference of the form ${stage.outputs.name}",
            id="malformed-inside-text",
        ),
        pytest.param(
            "${}",
            "'${}' is not a reference of the form ${stage.outputs.name}",
            id="empty",
        ),
    ],
)
def test_bad_references(project, reference: str, message: str) -> None:
    path = project.spec(REFERENCING.format(reference=reference))
    problem = only(problems_of(path))
    assert problem.file == str(path)
    assert problem.location == "line 11: stages.train.params.in_path"
    assert problem.message == message


def test_a_stage_cannot_use_its_own_output(project) -> None:
    path = project.spec(
        """\
        name: p
        stages:
          a:
            notebook: notebooks/reads_input.ipynb
            params: {in_path: "${a.outputs.out_path}"}
            outputs: {out_path: o.txt}
        """
    )
    problem = only(problems_of(path))
    assert problem.location == "line 5: stages.a.params.in_path"
    assert problem.message == "'${a.outputs.out_path}': a stage cannot use its own output"


# -- notebooks ------------------------------------------------------------------------


def test_missing_notebook_suggests_a_near_one(project) -> None:
    path = project.spec("name: p\nstages:\n  a:\n    notebook: notebooks/add_on.ipynb\n")
    problem = only(problems_of(path))
    assert problem.location == "line 4: stages.a.notebook"
    assert problem.message.startswith("no such notebook 'notebooks/add_on.ipynb'")
    assert str(project.root / "notebooks" / "add_on.ipynb") in problem.message
    assert problem.message.endswith("did you mean 'notebooks/add_one.ipynb'?")


def test_missing_notebook_in_a_missing_folder(project) -> None:
    path = project.spec("name: p\nstages:\n  a:\n    notebook: nowhere/add_one.ipynb\n")
    problem = only(problems_of(path))
    assert problem.location == "line 4: stages.a.notebook"
    assert problem.message.startswith("no such notebook 'nowhere/add_one.ipynb'")
    assert "did you mean" not in problem.message


def test_notebook_that_is_not_json(project) -> None:
    (project.root / "notebooks" / "broken.ipynb").write_text("{not json")
    path = project.spec("name: p\nstages:\n  a:\n    notebook: notebooks/broken.ipynb\n")
    problem = only(problems_of(path))
    assert problem.file == str(path)
    assert problem.location == "line 4: stages.a.notebook"
    assert "broken.ipynb" in problem.message
    assert "not a readable notebook" in problem.message


def test_notebook_that_is_not_ipynb(project) -> None:
    (project.root / "notebooks" / "script.py").write_text("x = 1\n")
    path = project.spec("name: p\nstages:\n  a:\n    notebook: notebooks/script.py\n")
    problem = only(problems_of(path))
    assert problem.location == "line 4: stages.a.notebook"
    assert problem.message == "'notebooks/script.py' is not a .ipynb notebook"


def test_notebook_with_a_broken_parameters_cell(project, tmp_path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x = = 1")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell]
    nbformat.write(nb, str(project.root / "notebooks" / "bad_params.ipynb"))
    path = project.spec("name: p\nstages:\n  a:\n    notebook: notebooks/bad_params.ipynb\n")
    problem = only(problems_of(path))
    assert problem.location == "line 4: stages.a.notebook"
    assert "bad_params.ipynb" in problem.message
    assert "the parameters cell (cell 2) is not valid Python" in problem.message


# -- parameters and outputs against the parameters cell --------------------------------


def test_undeclared_stage_parameter_and_output(project) -> None:
    path = project.spec(
        """\
        name: p
        stages:
          a:
            notebook: notebooks/add_one.ipynb
            params:
              xx: 2
              learning_rate: 0.1
            outputs:
              out_pth: o.txt
        """
    )
    problems = problems_of(path)
    assert at(problems, "line 6: stages.a.params.xx").message == (
        "'xx' is not declared in the parameters cell of notebooks/add_one.ipynb; did you mean 'x'?"
    )
    assert at(problems, "line 7: stages.a.params.learning_rate").message == (
        "'learning_rate' is not declared in the parameters cell of notebooks/add_one.ipynb"
    )
    output = at(problems, "line 9: stages.a.outputs.out_pth")
    assert output.message.startswith("output 'out_pth' must be declared in the parameters cell")
    assert output.message.endswith("did you mean 'out_path'?")
    assert len(problems) == 3


@pytest.mark.parametrize(
    ("value", "shown"),
    [("/abs/o.txt", "/abs/o.txt"), ("../o.txt", "../o.txt"), ("' '", " ")],
    ids=["absolute", "parent", "blank"],
)
def test_output_path_must_stay_in_the_workspace(project, value: str, shown: str) -> None:
    path = project.spec(
        f"name: p\nstages:\n  a:\n    notebook: notebooks/add_one.ipynb\n"
        f"    outputs:\n      out_path: {value}\n"
    )
    problem = only(problems_of(path))
    assert problem.location == "line 6: stages.a.outputs.out_path"
    assert problem.message == (
        f"an output is a relative path inside the stage's workspace, without '..' (got '{shown}')"
    )


def test_a_name_cannot_be_both_parameter_and_output(project) -> None:
    path = project.spec(
        """\
        name: p
        stages:
          a:
            notebook: notebooks/add_one.ipynb
            params: {out_path: x.txt}
            outputs: {out_path: o.txt}
        """
    )
    problem = only(problems_of(path))
    assert problem.location == "line 6: stages.a.outputs.out_path"
    assert problem.message == "'out_path' is both a parameter and an output of stage 'a'"


def test_pipeline_params_must_reach_a_stage(project) -> None:
    path = project.spec(
        """\
        name: p
        params:
          sed: 1
          seed: 2
          batch: 3
        stages:
          a: {notebook: notebooks/add_one.ipynb}
          b: {notebook: notebooks/fails_in_cell_2.ipynb}
        """
    )
    problems = problems_of(path)
    assert at(problems, "line 3: params.sed").message == (
        "no stage's parameters cell declares 'sed'; did you mean 'seed'?"
    )
    assert at(problems, "line 5: params.batch").message == (
        "no stage's parameters cell declares 'batch'"
    )
    assert len(problems) == 2


def test_stage_params_on_a_notebook_without_parameters_cell(project) -> None:
    path = project.spec(
        """\
        name: p
        stages:
          a:
            notebook: notebooks/no_parameters_cell.ipynb
            params: {x: 2}
        """
    )
    problem = only(problems_of(path))
    assert problem.location == "line 4: stages.a.notebook"
    assert problem.message.startswith(
        "notebooks/no_parameters_cell.ipynb has no cell tagged 'parameters'"
    )


def test_a_notebook_without_parameters_cell_and_no_params_loads(project) -> None:
    path = project.spec("name: p\nstages:\n  a: {notebook: notebooks/no_parameters_cell.ipynb}\n")
    stage = load_pipeline(path).stage("a")
    assert stage.params == {}
    assert not stage.info.has_parameters_cell


PROFILED = """\
name: p
profiles:
  ci:
    x: 2
    xx: 3
    a.out_pth: 4
    zz.x: 5
    a.out_path: o.txt
stages:
  a:
    notebook: notebooks/add_one.ipynb
    outputs: {out_path: o.txt}
  b:
    notebook: notebooks/fails_in_cell_2.ipynb
"""


def test_profile_keys_are_checked_against_the_notebooks(project) -> None:
    path = project.spec(PROFILED)
    problems = problems_of(path)
    assert {p.file for p in problems} == {str(path)}
    assert at(problems, "line 5: profiles.ci.xx").message == (
        "no stage's parameters cell declares 'xx'; did you mean 'x'?"
    )
    assert at(problems, "line 6: profiles.ci.a.out_pth").message == (
        "stage 'a' does not declare 'out_pth'; did you mean 'out_path'?"
    )
    assert at(problems, "line 7: profiles.ci.zz.x").message == "unknown stage 'zz'"
    assert at(problems, "line 8: profiles.ci.a.out_path").message == (
        "'out_path' is an output of stage 'a'; outputs are set by mlnb"
    )
    assert len(problems) == 4


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("sed", "no stage's parameters cell declares 'sed'; did you mean 'seed'?"),
        ("nothing_like_it", "no stage's parameters cell declares 'nothing_like_it'"),
        ("a.sed", "stage 'a' does not declare 'sed'; did you mean 'seed'?"),
        ("trian.x", "unknown stage 'trian'; did you mean 'train'?"),
        ("a.out_path", "'out_path' is an output of stage 'a'; outputs are set by mlnb"),
    ],
)
def test_command_line_overrides_are_checked(project, key: str, message: str) -> None:
    path = project.spec(
        """\
        name: p
        stages:
          a:
            notebook: notebooks/add_one.ipynb
            outputs: {out_path: o.txt}
          train:
            notebook: notebooks/fails_in_cell_2.ipynb
        """
    )
    problem = only(problems_of(path, overrides={key: 1}))
    assert problem.file == COMMAND_LINE == "command line"
    assert problem.location == f"-p {key}"
    assert problem.message == message


@pytest.mark.parametrize("where", ["overrides", "params"])
def test_a_plain_key_that_only_names_outputs_is_an_error(project, where: str) -> None:
    params = "params: {out_path: x.txt}\n" if where == "params" else ""
    path = project.spec(
        f"name: p\n{params}stages:\n  a:\n    notebook: notebooks/add_one.ipynb\n"
        "    outputs: {out_path: o.txt}\n"
    )
    overrides = {"out_path": "x.txt"} if where == "overrides" else {}
    problem = only(problems_of(path, overrides=overrides))
    assert "output" in problem.message


@pytest.mark.parametrize(
    ("profiles", "asked", "message"),
    [
        ("profiles:\n  ci: {x: 1}\n", "cj", "no profile 'cj'; profiles: ci"),
        ("profiles:\n  smoke: {x: 1}\n", "smok", "no profile 'smok'; did you mean 'smoke'?"),
        ("", "ci", "no profile 'ci'; the spec defines no 'profiles'"),
    ],
)
def test_unknown_profile(project, profiles: str, asked: str, message: str) -> None:
    path = project.spec(f"name: p\n{profiles}stages:\n  a: {{notebook: notebooks/add_one.ipynb}}\n")
    problem = only(problems_of(path, profile=asked))
    assert problem.file == str(path)
    assert problem.location == ("line 2: profiles" if profiles else "profiles")
    assert problem.message == message


# -- all problems at once --------------------------------------------------------------


def test_every_problem_is_reported_together(project) -> None:
    path = project.spec(
        """\
        name: p
        params: {sed: 1}
        stages:
          prepare:
            notebook: notebooks/add_one.ipynb
            outputs: {out_path: data.txt}
          train:
            notebook: notebooks/reads_input.ipynb
            params:
              xx: 1
              in_path: "${prepare.outputs.data}"
            needs: [train]
          evaluate:
            notebook: notebooks/reads_input.ipynb
            params: {in_path: "${trian.outputs.out_path}"}
        """
    )
    problems = problems_of(path, profile="ci", overrides={"nope": 1})
    expected = {
        "line 2: params.sed": "did you mean 'seed'?",
        "line 10: stages.train.params.xx": "'xx' is not declared",
        "line 11: stages.train.params.in_path": "stage 'prepare' has no output 'data'",
        "line 12: stages.train.needs.0": "a stage cannot need itself",
        "line 15: stages.evaluate.params.in_path": "did you mean 'train'?",
        "profiles": "no profile 'ci'",
        "-p nope": "no stage's parameters cell declares 'nope'",
    }
    assert sorted(p.location for p in problems) == sorted(expected)
    for location, message in expected.items():
        assert message in at(problems, location).message
    assert {p.file for p in problems} == {str(path), COMMAND_LINE}


def test_a_missing_notebook_does_not_cause_false_alarms(project) -> None:
    path = project.spec(
        """\
        name: p
        params: {anything: 1}
        stages:
          a:
            notebook: notebooks/add_on.ipynb
            params: {whatever: 2}
            outputs: {result: r.txt}
        """
    )
    problem = only(problems_of(path))
    assert problem.location == "line 5: stages.a.notebook"


def test_structural_errors_are_reported_together(project) -> None:
    path = project.spec(
        """\
        nam: p
        stages:
          a:
            notebok: notebooks/add_one.ipynb
            timeout: -5
          b:
            notebook: notebooks/add_one.ipynb
            cache: maybe
        """
    )
    problems = problems_of(path)
    assert sorted(p.location for p in problems) == sorted(
        [
            "name",
            "line 1: nam",
            "line 3: stages.a.notebook",
            "line 4: stages.a.notebok",
            "line 5: stages.a.timeout",
            "line 8: stages.b.cache",
        ]
    )
    assert at(problems, "line 1: nam").message == "unknown key 'nam'; did you mean 'name'?"
    assert "valid boolean" in at(problems, "line 8: stages.b.cache").message


# -- the happy path --------------------------------------------------------------------


def test_stages_come_in_topological_order(project) -> None:
    path = project.spec(
        """\
        name: p
        stages:
          evaluate:
            notebook: notebooks/reads_input.ipynb
            params: {in_path: "${train.outputs.out_path}"}
            outputs: {out_path: score.txt}
          train:
            notebook: notebooks/reads_input.ipynb
            params: {in_path: "data/${prepare.outputs.out_path}"}
            outputs: {out_path: model.txt}
          prepare:
            notebook: notebooks/add_one.ipynb
            outputs: {out_path: data.txt}
          report:
            notebook: notebooks/writes_nothing.ipynb
            needs: [evaluate]
          lonely:
            notebook: notebooks/fails_in_cell_2.ipynb
        """
    )
    pipeline = load_pipeline(path)
    names = [s.name for s in pipeline.stages]
    assert names.index("prepare") < names.index("train") < names.index("evaluate")
    assert names.index("evaluate") < names.index("report")
    assert sorted(names) == ["evaluate", "lonely", "prepare", "report", "train"]
    assert pipeline.stage("train").upstream == ("prepare",)
    assert pipeline.stage("evaluate").upstream == ("train",)
    assert pipeline.stage("report").upstream == ("evaluate",)
    assert pipeline.stage("lonely").upstream == ()
    # references stay unresolved in the spec's params
    assert pipeline.stage("train").params["in_path"] == "data/${prepare.outputs.out_path}"
    assert pipeline.stage("prepare").outputs == {"out_path": "data.txt"}
    assert pipeline.stage("prepare").notebook == project.root / "notebooks" / "add_one.ipynb"
    with pytest.raises(KeyError):
        pipeline.stage("nope")


def test_needs_orders_stages_without_references(project) -> None:
    path = project.spec(
        """\
        name: p
        stages:
          second:
            notebook: notebooks/add_one.ipynb
            needs: [first]
          first:
            notebook: notebooks/add_one.ipynb
        """
    )
    pipeline = load_pipeline(path)
    assert [s.name for s in pipeline.stages] == ["first", "second"]
    assert pipeline.stage("second").upstream == ("first",)


def test_stages_run_in_waves_each_in_spec_order(project) -> None:
    # a diamond (source → left, right → report) beside a free stage and a late one
    path = project.spec(
        """\
        name: p
        stages:
          report:
            notebook: notebooks/add_one.ipynb
            needs: [left, right]
          right:
            notebook: notebooks/reads_input.ipynb
            params: {in_path: "${source.outputs.out_path}"}
          late:
            notebook: notebooks/add_one.ipynb
            needs: [left]
          left:
            notebook: notebooks/reads_input.ipynb
            params: {in_path: "${source.outputs.out_path}"}
          free:
            notebook: notebooks/writes_nothing.ipynb
          source:
            notebook: notebooks/add_one.ipynb
            outputs: {out_path: data.txt}
        """
    )
    pipeline = load_pipeline(path)
    # wave 1: free, source; wave 2: right, left; wave 3: report, late
    assert [s.name for s in pipeline.stages] == [
        "free",
        "source",
        "right",
        "left",
        "report",
        "late",
    ]
    assert pipeline.stage("report").upstream == ("left", "right")
    assert pipeline.stage("left").upstream == ("source",)


def test_an_unknown_kernel_is_a_spec_error(project) -> None:
    path = project.spec(
        "name: p\nstages:\n  a:\n    notebook: notebooks/add_one.ipynb\n    kernel: pyhton3\n"
    )
    problem = only(problems_of(path, kernels=installed_kernels()))
    assert problem.location == "line 5: stages.a.kernel"
    assert problem.message == (
        "no Jupyter kernel named 'pyhton3' is installed; did you mean 'python3'?"
    )
    load_pipeline(path)  # the spec layer checks kernels only against those it is given
    with pytest.raises(SpecError, match="pyhton3"):
        locate.load_pipeline(path)  # mlnb run, check, test and build give the installed ones


def test_stage_fields_come_from_spec_and_notebook(project) -> None:
    path = project.spec(
        """\
        name: p
        stages:
          a:
            notebook: notebooks/add_one.ipynb
            timeout: 30
            kernel: Python3
            cache: false
          b:
            notebook: notebooks/add_one.ipynb
        """
    )
    pipeline = load_pipeline(path)
    a, b = pipeline.stage("a"), pipeline.stage("b")
    assert (a.timeout, a.kernel, a.cache) == (30.0, "Python3", False)
    assert (b.timeout, b.kernel, b.cache) == (None, "python3", True)
    assert a.info.parameters == {"x": "1", "seed": "0", "out_path": '"out.txt"'}
    assert pipeline.name == "p"
    assert pipeline.path == path.resolve()
    assert pipeline.profile is None
    assert pipeline.overrides == {}


PRECEDENCE = """\
name: p
params: {x: 10, seed: 1}
profiles:
  ci: {x: 30, b.seed: 7}
  other: {x: 99}
stages:
  a:
    notebook: notebooks/add_one.ipynb
    params: {x: 20}
  b:
    notebook: notebooks/reads_input.ipynb
  c:
    notebook: notebooks/fails_in_cell_2.ipynb
"""


@pytest.mark.parametrize(
    ("profile", "overrides", "expected"),
    [
        pytest.param(
            None,
            {},
            {"a": {"x": 20, "seed": 1}, "b": {"seed": 1}, "c": {"x": 10}},
            id="pipeline<stage",
        ),
        pytest.param(
            "ci",
            {},
            {"a": {"x": 30, "seed": 1}, "b": {"seed": 7}, "c": {"x": 30}},
            id="stage<profile",
        ),
        pytest.param(
            "ci",
            {"x": 40},
            {"a": {"x": 40, "seed": 1}, "b": {"seed": 7}, "c": {"x": 40}},
            id="profile<override",
        ),
        pytest.param(
            "ci",
            {"c.x": 50, "seed": 2},
            {"a": {"x": 30, "seed": 2}, "b": {"seed": 2}, "c": {"x": 50}},
            id="stage-key-targets-one-stage",
        ),
        pytest.param(
            None,
            {"b.out_path": "elsewhere.txt"},
            {
                "a": {"x": 20, "seed": 1},
                "b": {"seed": 1, "out_path": "elsewhere.txt"},
                "c": {"x": 10},
            },
            id="stage-key-sets-an-unset-param",
        ),
    ],
)
def test_parameter_precedence(
    project, profile: str | None, overrides: dict[str, object], expected: dict[str, dict]
) -> None:
    path = project.spec(PRECEDENCE)
    pipeline = load_pipeline(path, profile=profile, overrides=overrides)
    assert {s.name: dict(s.params) for s in pipeline.stages} == expected
    assert pipeline.profile == profile
    assert dict(pipeline.overrides) == overrides


def test_notebook_defaults_stay_when_nothing_overrides_them(project) -> None:
    path = project.spec(PRECEDENCE)
    a = load_pipeline(path).stage("a")
    assert "out_path" not in a.params
    assert a.info.parameters["out_path"] == '"out.txt"'


def test_pipeline_params_skip_the_stages_outputs(project) -> None:
    path = project.spec(
        """\
        name: p
        params: {out_path: shared.txt}
        stages:
          a:
            notebook: notebooks/add_one.ipynb
            outputs: {out_path: o.txt}
          b:
            notebook: notebooks/writes_nothing.ipynb
        """
    )
    pipeline = load_pipeline(path)
    assert "out_path" not in pipeline.stage("a").params
    assert pipeline.stage("b").params == {"out_path": "shared.txt"}


@pytest.mark.parametrize(
    "profile",
    [
        pytest.param("{x: 1, a.x: 2}", id="plain-first"),
        pytest.param("{a.x: 2, x: 1}", id="specific-first"),
    ],
)
def test_stage_key_beats_plain_key_in_the_same_layer(project, profile: str) -> None:
    path = project.spec(
        f"name: p\nprofiles:\n  ci: {profile}\nstages:\n"
        "  a: {notebook: notebooks/add_one.ipynb}\n"
        "  b: {notebook: notebooks/fails_in_cell_2.ipynb}\n"
    )
    pipeline = load_pipeline(path, profile="ci")
    assert pipeline.stage("b").params == {"x": 1}
    assert pipeline.stage("a").params == {"x": 2}


def test_overrides_typed_by_parse_assignments(project) -> None:
    path = project.spec(PRECEDENCE)
    overrides = parse_assignments(["x=0.5", "a.seed=3"])
    pipeline = load_pipeline(path, overrides=overrides)
    assert pipeline.stage("a").params == {"x": 0.5, "seed": 3}
    assert pipeline.stage("c").params == {"x": 0.5}
    assert pipeline.stage("b").params == {"seed": 1}


@pytest.mark.parametrize(
    ("pair", "key", "value"),
    [
        ("C=0.5", "C", 0.5),
        ("n=3", "n", 3),
        ("name=abc", "name", "abc"),
        ("flag=true", "flag", True),
        ("empty=", "empty", ""),
        ("quoted='3'", "quoted", "3"),
        ("path=data/train.csv", "path", "data/train.csv"),
        ("train.C=0.001", "train.C", 0.001),
        ("C=1e-3", "C", 0.001),
        ("expr=a=b", "expr", "a=b"),
        (" spaced = 7", "spaced", 7),
        ("broken=[1, 2", "broken", "[1, 2"),
    ],
)
def test_parse_assignments_types_values_as_yaml(pair: str, key: str, value: object) -> None:
    parsed = parse_assignments([pair])
    assert parsed == {key: value}
    assert type(parsed[key]) is type(value)


def test_parse_assignments_keeps_every_pair_and_the_last_wins() -> None:
    assert parse_assignments(["a=1", "b=x", "a=2"]) == {"a": 2, "b": "x"}
    assert parse_assignments([]) == {}


@pytest.mark.parametrize("pairs", [["novalue"], ["=5"], ["ok=1", "novalue", " =2"]])
def test_parse_assignments_rejects_pairs_without_key_or_value(pairs: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        parse_assignments(pairs)
    bad = [p for p in pairs if p.partition("=")[1] == "" or not p.partition("=")[0].strip()]
    assert [(p.file, p.location) for p in info.value.problems] == [
        (COMMAND_LINE, f"-p {p}") for p in bad
    ]
    assert all("expected key=value" in p.message for p in info.value.problems)


def test_project_root_of_a_spec_in_pipelines(tmp_path: Path) -> None:
    assert project_root(tmp_path / "proj" / "pipelines" / "p.yaml") == (tmp_path / "proj")
    assert project_root(tmp_path / "proj" / "specs" / "p.yaml") == (tmp_path / "proj" / "specs")
    assert project_root(Path("p.yaml")) == tmp_path  # the autouse fixture chdirs to tmp_path


def test_relative_paths_resolve_against_the_project_root_not_the_cwd(
    project, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = project.spec("name: p\nstages:\n  a: {notebook: notebooks/add_one.ipynb}\n")
    monkeypatch.chdir(project.root / "notebooks")
    pipeline = load_pipeline(Path("../pipelines/p.yaml"))
    assert pipeline.root == project.root.resolve()
    assert pipeline.stage("a").notebook == (project.root / "notebooks" / "add_one.ipynb").resolve()
    assert pipeline.path == path.resolve()


def test_a_spec_outside_pipelines_resolves_against_its_own_folder(project) -> None:
    elsewhere = project.root / "experiments"
    (elsewhere / "nbs").mkdir(parents=True)
    shutil.copy(project.root / "notebooks" / "add_one.ipynb", elsewhere / "nbs" / "add_one.ipynb")
    spec = elsewhere / "p.yaml"
    spec.write_text("name: p\nstages:\n  a: {notebook: nbs/add_one.ipynb}\n")
    pipeline = load_pipeline(spec)
    assert pipeline.root == elsewhere.resolve()
    assert pipeline.stage("a").notebook == (elsewhere / "nbs" / "add_one.ipynb").resolve()
    # and the project's own notebooks/ is not found from there
    spec.write_text("name: p\nstages:\n  a: {notebook: notebooks/add_one.ipynb}\n")
    problem = only(problems_of(spec))
    assert str(elsewhere / "notebooks" / "add_one.ipynb") in problem.message


def test_the_example_pipeline_loads() -> None:
    pipeline = load_pipeline(REPO / "pipelines" / "cancer.yaml")
    assert pipeline.name == "cancer"
    assert pipeline.root == REPO
    assert [s.name for s in pipeline.stages] == ["prepare", "train", "evaluate"]
    assert pipeline.stage("evaluate").upstream == ("prepare", "train")
    assert pipeline.stage("prepare").params == {"seed": 0, "test_size": 0.25}
    assert pipeline.stage("train").params["n_estimators"] == 200
    ci = load_pipeline(REPO / "pipelines" / "cancer.yaml", profile="ci")
    assert ci.stage("train").params["n_estimators"] == 5
    assert ci.stage("train").params["max_depth"] == 2
    assert "max_depth" not in ci.stage("prepare").params


@pytest.mark.parametrize(
    ("value", "stage", "output"),
    [("${train.outputs.model}", "train", "model"), ("  ${ prep.outputs.test }  ", "prep", "test")],
)
def test_output_reference_names_the_stage_output(value: str, stage: str, output: str) -> None:
    assert output_reference(value) == Reference(stage, output)


@pytest.mark.parametrize(
    "value", ["data/test.csv", "${train.model}", "x ${train.outputs.model}", "${a.outputs.b}${c}"]
)
def test_output_reference_refuses_anything_but_one_reference(value: str) -> None:
    with pytest.raises(ValueError, match="is not a reference of the form"):
        output_reference(value)


# -- the golden data of the model section ------------------------------------------------

GOLDEN_STAGES = """\
name: p
stages:
  a:
    notebook: notebooks/add_one.ipynb
    outputs: {out_path: out.csv}
model:
  name: m
  stage: a
  holdout: ${a.outputs.out_path}
  target: y
  metric: accuracy_score
"""


def test_golden_data_loads_with_its_path_resolved_and_tolerance(project) -> None:
    (project.root / "data").mkdir()
    (project.root / "data" / "golden.csv").write_text("x,y\n1,0\n")
    text = (
        GOLDEN_STAGES
        + "  tolerance: 0.05\n  golden: {path: data/golden.csv, floor: {f1_score: 0.8}}\n"
    )

    model = load_pipeline(project.spec(text)).spec.model

    assert model is not None and model.golden is not None
    assert model.golden.path == str(project.root / "data" / "golden.csv")
    assert model.golden.floor == {"f1_score": 0.8}
    assert model.tolerance == 0.05
    default = load_pipeline(project.spec(GOLDEN_STAGES, "d.yaml")).spec.model
    assert default is not None and (default.tolerance, default.golden) == (0.02, None)


@pytest.mark.parametrize(
    ("golden", "location", "message"),
    [
        pytest.param(
            "{path: data/nope.csv}",
            "line 12: model.golden.path",
            "no such file 'data/nope.csv' (looked for ",
            id="missing",
        ),
        pytest.param(
            "{path: golden.txt}",
            "line 12: model.golden.path",
            "'golden.txt' is not a table the gate reads (.csv, .parquet, .pq)",
            id="not-a-table",
        ),
        pytest.param(
            "{path: golden.csv, floor: {acuracy_score: 0.9}}",
            "line 12: model.golden.floor.acuracy_score",
            "'acuracy_score' is not a metric mlflow.evaluate computes for a classifier; "
            "did you mean 'accuracy_score'?",
            id="floor-metric",
        ),
        pytest.param(
            "{pth: golden.csv}",
            "line 12: model.golden.pth",
            "unknown key 'pth'; did you mean 'path'?",
            id="near-key",
        ),
    ],
)
def test_golden_data_mistakes(project, golden: str, location: str, message: str) -> None:
    (project.root / "golden.csv").write_text("x,y\n1,0\n")
    path = project.spec(GOLDEN_STAGES + f"  golden: {golden}\n")

    problems = problems_of(path)

    problem = at(problems, location)
    assert problem.message.startswith(message), problem.message
    assert problem.file == str(path)


def test_a_negative_tolerance_is_refused(project) -> None:
    path = project.spec(GOLDEN_STAGES + "  tolerance: -0.1\n")

    problem = only(problems_of(path))

    assert problem.location == "line 12: model.tolerance"
    assert problem.message.startswith("Input should be greater than or equal to 0")
