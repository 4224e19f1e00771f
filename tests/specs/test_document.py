"""YAML documents: each problem placed by file, line and key, every one at once.

The document layer is generic over the model it validates against, so these
tests use a small model of their own (a name and stages, each with a notebook
and params) rather than a pipeline: what is asserted is how ``read_document``
reads, places and words problems, not what a pipeline allows.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlnb.errors import Problem, SpecError
from mlnb.specs.document import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_VALUES,
    Collector,
    KeyPath,
    Lines,
    RefusedError,
    load_yaml,
    read_document,
    read_yaml,
)

SHAPE = "a document is a YAML mapping with 'name' and 'stages'"


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notebook: str
    params: dict[str, Any] = Field(default_factory=dict)


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    stages: dict[str, Stage]
    retries: int = 0

    @field_validator("retries")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("retries cannot be negative")
        return value


def owner(loc: KeyPath) -> type[BaseModel]:
    return Stage if len(loc) >= 3 and loc[0] == "stages" else Document


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doc.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(SpecError) as raised:
        read_document(path, Document, owner, "monitor spec", SHAPE)
    assert raised.value.problems, "a SpecError must list its problems"
    return raised.value.problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


# -- what reads --------------------------------------------------------------------------


def test_a_valid_document_reads_into_the_model_with_its_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        name: demo
        stages:
          train:
            notebook: train.ipynb
            params: {C: 1e-3}
        """,
    )
    document, lines = read_document(path, Document, owner, "pipeline spec", SHAPE)
    assert document.name == "demo"
    assert document.stages["train"].notebook == "train.ipynb"
    assert document.stages["train"].params == {"C": 0.001}  # YAML 1.2: a float, not text
    assert lines.where(["stages", "train", "params", "C"]) == "line 5: stages.train.params.C"


def test_load_yaml_reads_exponents_as_floats_as_yaml_1_2_does() -> None:
    assert load_yaml("a: 1e-3\nb: -2.5E+2\nc: 1_000\nd: text\n") == {
        "a": 0.001,
        "b": -250.0,
        "c": 1000,
        "d": "text",
    }


# -- problems that stop the reading ------------------------------------------------------


def test_a_missing_file_is_named_with_the_kind_of_document(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    problem = only(problems_of(path))
    assert problem == Problem(str(path), "", "no such monitor spec")


def test_an_unreadable_file_says_why(tmp_path: Path) -> None:
    path = tmp_path / "a-folder.yaml"
    path.mkdir()
    with pytest.raises(SpecError) as raised:
        read_document(path, Document, owner, "pipeline spec", SHAPE)
    problem = only(raised.value.problems)
    assert (problem.file, problem.location) == (str(path), "")
    assert problem.message == "cannot read the pipeline spec: Is a directory"
    assert str(raised.value).startswith("1 problem in the pipeline spec:")


def test_invalid_yaml_names_the_line_and_the_reason(tmp_path: Path) -> None:
    path = write(tmp_path, "name: demo\nstages:\n  a:\n    notebook: a.ipynb\n     params: {}\n")
    problem = only(problems_of(path))
    assert (problem.file, problem.location) == (str(path), "line 5")
    assert problem.message == "invalid YAML: mapping values are not allowed here"


def test_an_unclosed_flow_names_the_line_where_the_parser_gave_up(tmp_path: Path) -> None:
    problem = only(problems_of(write(tmp_path, "name: [demo\n")))
    assert problem.location == "line 2"
    assert problem.message == "invalid YAML: expected ',' or ']', but got '<stream end>'"


def test_a_character_yaml_refuses_is_invalid_yaml_without_a_line(tmp_path: Path) -> None:
    problem = only(problems_of(write(tmp_path, "name: \x07\n")))
    assert problem.location == ""
    assert problem.message.startswith(
        "invalid YAML: unacceptable character #x0007: special characters are not allowed"
    )


@pytest.mark.parametrize(
    "text", ["- a\n- b\n", "just text\n", "", "# a comment\n", "42\n"], ids=repr
)
def test_a_document_that_is_not_a_mapping_is_told_its_shape(tmp_path: Path, text: str) -> None:
    problem = only(problems_of(write(tmp_path, text)))
    assert problem == Problem(str(tmp_path / "doc.yaml"), "", SHAPE)


# -- structural problems, every one at once ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "location", "message"),
    [
        pytest.param(
            "name: demo\nstagse: {}\nstages:\n  a: {notebook: a.ipynb}\n",
            "line 2: stagse",
            "unknown key 'stagse'; did you mean 'stages'?",
            id="top-level",
        ),
        pytest.param(
            "name: demo\nstages:\n  a:\n    notebook: a.ipynb\n    parms: {}\n",
            "line 5: stages.a.parms",
            "unknown key 'parms'; did you mean 'params'?",
            id="nested-suggests-from-its-own-model",
        ),
        pytest.param(
            "name: demo\nstages:\n  a:\n    notebook: a.ipynb\n    colour: red\n",
            "line 5: stages.a.colour",
            "unknown key 'colour'",
            id="no-near-name",
        ),
    ],
)
def test_an_unknown_key_is_placed_and_a_near_one_suggested(
    tmp_path: Path, text: str, location: str, message: str
) -> None:
    problem = only(problems_of(write(tmp_path, text)))
    assert (problem.file, problem.location, problem.message) == (
        str(tmp_path / "doc.yaml"),
        location,
        message,
    )


def test_a_missing_key_is_placed_at_its_nearest_written_parent(tmp_path: Path) -> None:
    path = write(tmp_path, "stages:\n  a:\n    params: {x: 1}\n")
    problems = problems_of(path)
    assert [(p.location, p.message) for p in problems] == [
        ("name", "required key 'name' is missing"),
        ("line 2: stages.a.notebook", "required key 'notebook' is missing"),
    ]


def test_a_validator_speaks_without_pydantics_prefix(tmp_path: Path) -> None:
    path = write(tmp_path, "name: demo\nretries: -1\nstages:\n  a: {notebook: a.ipynb}\n")
    problem = only(problems_of(path))
    assert (problem.location, problem.message) == ("line 2: retries", "retries cannot be negative")


def test_every_structural_problem_is_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        nmae: demo
        retries: lots
        stages:
          a:
            notebok: a.ipynb
        """,
    )
    with pytest.raises(SpecError) as raised:
        read_document(path, Document, owner, "monitor spec", SHAPE)
    locations = sorted(p.location for p in raised.value.problems)
    assert locations == [
        "line 1: nmae",
        "line 2: retries",
        "line 4: stages.a.notebook",
        "line 5: stages.a.notebok",
        "name",
    ]
    assert {p.file for p in raised.value.problems} == {str(path)}
    assert str(raised.value).startswith("5 problems in the monitor spec:")


# -- Lines and Collector -----------------------------------------------------------------

TEXT = """\
name: demo
stages:
  train:
    notebook: train.ipynb
    needs:
      - prepare
      - split
"""


@pytest.mark.parametrize(
    ("path", "where"),
    [
        pytest.param(["name"], "line 1: name", id="top-level-key"),
        pytest.param(["stages", "train", "notebook"], "line 4: stages.train.notebook", id="nested"),
        pytest.param(["stages", "train", "needs", 1], "line 7: stages.train.needs.1", id="index"),
        pytest.param(
            ["stages", "train", "params", "C"],
            "line 3: stages.train.params.C",
            id="unwritten-key-takes-its-parent's-line",
        ),
        pytest.param(["model", "metric"], "model.metric", id="nothing-written-no-line"),
        pytest.param([], "", id="empty-path"),
    ],
)
def test_lines_where_places_a_key_path(path: KeyPath, where: str) -> None:
    assert Lines(TEXT).where(path) == where


def test_lines_of_invalid_yaml_place_by_key_path_only() -> None:
    lines = Lines("name: [demo\n")
    assert lines.lines == {}
    assert lines.where(["name"]) == "name"


def test_collector_places_problems_in_its_file_or_in_another_source() -> None:
    collect = Collector("doc.yaml", Lines(TEXT))
    collect.add(["stages", "train", "needs", 0], "unknown stage 'prepare'")
    collect.add(["-p C"], "no stage declares 'C'", file="command line")
    assert collect.problems == [
        Problem("doc.yaml", "line 6: stages.train.needs.0", "unknown stage 'prepare'"),
        Problem("command line", "-p C", "no stage declares 'C'"),
    ]


# -- what a spec must not be: too large, too deep, a key twice ----------------------------


def laughs(levels: int, width: int) -> str:
    """A "billion laughs" document: each level an anchored list of ``width`` aliases."""
    rows = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    rows += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(
        [
            *rows,
            "name: bomb",
            "stages:",
            f"  a: {{notebook: a.ipynb, params: {{x: *l{levels - 1}}}}}",
            "",
        ]
    )


def test_an_alias_bomb_is_refused_at_the_alias_that_crosses_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path, laughs(9, 9))
    problem = only(problems_of(path))
    # l5 holds 9**5 + ... values, the first level beyond MAX_VALUES
    assert (problem.file, problem.location) == (str(path), "line 6")
    assert problem.message.startswith(f"holds more than {MAX_VALUES:,} values once its aliases")


def test_aliases_within_the_limit_read_as_shared_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        name: demo
        stages:
          a: {notebook: a.ipynb, params: &common {C: 1, seed: 7}}
          b: {notebook: b.ipynb, params: {<<: *common, C: 2}}
        """,
    )
    document, _ = read_document(path, Document, owner, "pipeline spec", SHAPE)
    assert document.stages["a"].params == {"C": 1, "seed": 7}
    assert document.stages["b"].params == {"C": 2, "seed": 7}  # a merge key may be overridden


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    problem = only(problems_of(write(tmp_path, "name: demo\nstages: &s {a: *s}\n")))
    assert (problem.location, problem.message) == (
        "line 2",
        "an alias repeats the collection it is in",
    )


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("[" * 10_000 + "]" * 10_000, id="flow-sequences"),
        pytest.param("{a: " * 10_000 + "}" * 10_000, id="flow-mappings"),
        pytest.param("[" * 10_000, id="unclosed"),
    ],
)
def test_deep_nesting_is_refused_before_it_is_scanned(
    tmp_path: Path, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path, f"name: demo\nstages: {{a: {{notebook: a.ipynb, params: {{x: {value}}}}}}}\n"
    )
    # PyYAML's scanner is quadratic in open brackets: the refusal must come
    # before it has read the brackets, so count the characters it reads
    read = 0
    forward = yaml.reader.Reader.forward

    def counting(self: yaml.reader.Reader, length: int = 1) -> None:
        nonlocal read
        read += length
        forward(self, length)

    monkeypatch.setattr(yaml.reader.Reader, "forward", counting)
    problem = only(problems_of(path))
    assert 0 < read < 5 * MAX_DEPTH + 100 < len(value)
    assert (problem.location, problem.message) == (
        "line 2",
        f"nested more than {MAX_DEPTH} levels deep; a spec is shallower",
    )


def test_deep_block_nesting_is_refused_where_it_gets_too_deep(tmp_path: Path) -> None:
    rows = [f"{'  ' * depth}k{depth}:" for depth in range(200)]
    path = write(tmp_path, "\n".join(["name: demo", "stages:", *("  " + r for r in rows), ""]))
    problem = only(problems_of(path))
    # the document is level 1, the mapping of level n begins on line n + 1
    assert (problem.location, problem.message) == (
        "line 66",
        f"nested more than {MAX_DEPTH} levels deep; a spec is shallower",
    )


def test_nesting_up_to_the_limit_reads() -> None:
    value = load_yaml("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == []


@pytest.mark.parametrize(
    ("text", "location", "message"),
    [
        pytest.param(
            "name: demo\nstages:\n  a: {notebook: a.ipynb}\n  a: {notebook: b.ipynb}\n",
            "line 4",
            "duplicate key 'a' (first at line 3); keep one of them",
            id="nested",
        ),
        pytest.param(
            "name: demo\nstages: {a: {notebook: a.ipynb}}\nname: other\n",
            "line 3",
            "duplicate key 'name' (first at line 1); keep one of them",
            id="top-level",
        ),
        pytest.param(
            "name: demo\nstages: {a: {notebook: a.ipynb, params: {C: 1, C: 2}}}\n",
            "line 2",
            "duplicate key 'C' (first at line 2); keep one of them",
            id="flow",
        ),
    ],
)
def test_a_key_written_twice_is_an_error_naming_both_lines(
    tmp_path: Path, text: str, location: str, message: str
) -> None:
    problem = only(problems_of(write(tmp_path, text)))
    assert (problem.file, problem.location, problem.message) == (
        str(tmp_path / "doc.yaml"),
        location,
        message,
    )


def test_keys_that_differ_in_type_are_not_duplicates() -> None:
    assert load_yaml("1: int\n'1': text\n") == {1: "int", "1": "text"}


def test_a_file_that_is_not_utf8_names_the_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "doc.yaml"
    path.write_bytes(b"name: demo\nstages: {}\n# caf\xe9\n")
    problem = only(problems_of(path))
    assert (problem.location, problem.message) == (
        "line 3",
        "not UTF-8 text (byte 0xe9); save the monitor spec as UTF-8",
    )


def test_a_file_larger_than_a_spec_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text("name: demo\n" + "#" * MAX_BYTES + "\n")
    problem = only(problems_of(path))
    assert problem == Problem(
        str(path), "", f"larger than the {MAX_BYTES:,} bytes a monitor spec may be; is it one?"
    )


def test_read_yaml_reads_a_spec_file_within_the_limits(tmp_path: Path) -> None:
    assert read_yaml(write(tmp_path, "a: 1e-3\n"), "pipeline spec") == {"a": 0.001}
    with pytest.raises(SpecError) as raised:
        read_yaml(write(tmp_path, laughs(9, 9)), "pipeline spec")
    assert only(raised.value.problems).location == "line 6"


def test_load_yaml_refuses_with_a_yaml_error_marked_at_its_line() -> None:
    with pytest.raises(RefusedError) as raised:
        load_yaml("a: 1\nb: 2\na: 3\n")
    assert raised.value.problem_mark is not None
    assert raised.value.problem_mark.line + 1 == 3


def test_lines_of_a_bomb_place_by_key_path_only() -> None:
    lines = Lines(laughs(9, 9))  # expanding it would mean 9**9 values
    assert lines.lines == {}
