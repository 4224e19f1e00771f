"""Notebooks: parameters cells, fingerprints, stripping outputs, cell positions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from mlnb import notebook as nbmod
from mlnb.errors import NotebookError
from tests.helpers import SCENARIOS


def make_notebook(path: Path, *cells: tuple[str, str], tag: int | None = 0) -> Path:
    """Write a notebook of ``(cell_type, source)`` cells; cell ``tag`` is tagged parameters."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for index, (kind, source) in enumerate(cells):
        cell = (
            nbformat.v4.new_code_cell(source)
            if kind == "code"
            else nbformat.v4.new_markdown_cell(source)
        )
        if index == tag:
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nbformat.write(nb, str(path))
    return path


# -- declared_parameters ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("x = 1", {"x": "1"}, id="plain"),
        pytest.param(
            'x = 1\nname = "abc"\nrate = 0.5',
            {"x": "1", "name": '"abc"', "rate": "0.5"},
            id="several",
        ),
        pytest.param("x: int = 3", {"x": "3"}, id="annotated"),
        pytest.param("x: int", {"x": ""}, id="annotation-without-value"),
        pytest.param("a = b = 5", {"a": "5", "b": "5"}, id="chained"),
        pytest.param(
            "sizes = [\n    1,\n    2,\n]",
            {"sizes": "[\n    1,\n    2,\n]"},
            id="multi-line-default",
        ),
        pytest.param("# just a comment\nx = 1  # the count", {"x": "1"}, id="comments"),
        pytest.param("", {}, id="empty"),
    ],
)
def test_declared_parameters(source: str, expected: dict[str, str]) -> None:
    assert nbmod.declared_parameters(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        "a, b = 1, 2",
        "(a, b) = (1, 2)",
        "a, b = make_pair()",
        "[a, b] = 1, 2",
    ],
)
def test_declared_parameters_tuple_assignment_declares_each_name(source: str) -> None:
    assert list(nbmod.declared_parameters(source)) == ["a", "b"]


def test_declared_parameters_keeps_the_cell_order() -> None:
    assert list(nbmod.declared_parameters("b = 1\na = 2\nc = 3")) == ["b", "a", "c"]


def test_declared_parameters_ignores_what_is_not_a_top_level_name() -> None:
    source = "\n".join(
        [
            "x = 1",
            "if True:",
            "    inside_if = 2",
            "def f():",
            "    inside_def = 3",
            "for loop_var in range(3):",
            "    inside_for = 4",
            "with open(__file__) as handle:",
            "    inside_with = 5",
            "obj.attr = 6",
            "table['key'] = 7",
            "x += 8",
            "import os",
            "print(x)",
        ]
    )
    assert nbmod.declared_parameters(source) == {"x": "1"}


def test_declared_parameters_raises_syntax_error() -> None:
    with pytest.raises(SyntaxError):
        nbmod.declared_parameters("x = = 1")


# -- fingerprint -----------------------------------------------------------------------


def executed_copy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The same notebook after a person ran it in JupyterLab."""
    ran = nbformat.from_dict(nb)
    for count, cell in enumerate(ran.cells, start=1):
        if cell.cell_type == "code":
            cell.execution_count = count
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
            cell.metadata["execution"] = {"iopub.status.busy": "2024-01-01T00:00:00Z"}
    ran.metadata["widgets"] = {"state": {}}
    return ran


def test_fingerprint_ignores_outputs_and_execution_counts() -> None:
    nb = nbformat.read(str(SCENARIOS / "add_one.ipynb"), as_version=4)
    fp = nbmod.fingerprint(nb)
    assert len(fp) == 64
    assert nbmod.fingerprint(executed_copy(nb)) == fp


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda nb: setattr(nb.cells[1], "source", nb.cells[1].source + "\n"), id="source"
        ),
        pytest.param(
            lambda nb: setattr(nb.cells[0], "source", "x = 2\nseed = 0\nout_path = 'o'"),
            id="parameters-source",
        ),
        pytest.param(lambda nb: nb.cells.append(nbformat.v4.new_code_cell("pass")), id="new-cell"),
        pytest.param(lambda nb: nb.cells.reverse(), id="order"),
        pytest.param(lambda nb: nb.cells[0].metadata.pop("tags"), id="untagged"),
        pytest.param(lambda nb: nb.metadata["kernelspec"].update(name="ir"), id="kernel"),
    ],
)
def test_fingerprint_changes_with_what_the_notebook_does(change) -> None:
    nb = nbformat.read(str(SCENARIOS / "add_one.ipynb"), as_version=4)
    before = nbmod.fingerprint(nb)
    changed = nbformat.from_dict(nb)
    change(changed)
    assert nbmod.fingerprint(changed) != before


def test_fingerprint_of_with_outputs_equals_its_stripped_copy(tmp_path: Path) -> None:
    path = shutil.copy(SCENARIOS / "with_outputs.ipynb", tmp_path / "w.ipynb")
    before = nbmod.inspect(Path(path)).fingerprint
    assert nbmod.strip_outputs(Path(path))
    assert nbmod.inspect(Path(path)).fingerprint == before


# -- strip_outputs ---------------------------------------------------------------------


def test_strip_outputs_then_nothing_left_to_strip(tmp_path: Path) -> None:
    path = Path(shutil.copy(SCENARIOS / "with_outputs.ipynb", tmp_path / "w.ipynb"))
    original = nbformat.read(str(path), as_version=4)
    assert nbmod.strip_outputs(path) is True
    first = path.read_text()
    assert nbmod.strip_outputs(path) is False
    assert path.read_text() == first

    stripped = nbformat.read(str(path), as_version=4)
    nbformat.validate(stripped)
    assert [c.source for c in stripped.cells] == [c.source for c in original.cells]
    assert stripped.cells[0].metadata["tags"] == ["parameters"]
    for cell in stripped.cells:
        if cell.cell_type == "code":
            assert cell.outputs == []
            assert cell.execution_count is None
    assert not list(tmp_path.glob(".*.tmp"))
    info = nbmod.inspect(path)
    assert info.cells_with_outputs == ()
    assert info.parameters == {"x": "1"}


def test_strip_outputs_removes_run_metadata(tmp_path: Path) -> None:
    source = nbformat.read(str(SCENARIOS / "add_one.ipynb"), as_version=4)
    ran = executed_copy(source)
    ran.cells[1].metadata["papermill"] = {"duration": 1.0}
    ran.metadata["papermill"] = {"parameters": {"x": 2}}
    path = tmp_path / "ran.ipynb"
    nbformat.write(ran, str(path))
    assert nbmod.strip_outputs(path) is True
    stripped = nbformat.read(str(path), as_version=4)
    assert "papermill" not in stripped.metadata
    assert "widgets" not in stripped.metadata
    for cell in stripped.cells:
        assert "papermill" not in cell.metadata
        assert "execution" not in cell.metadata
    assert nbmod.fingerprint(stripped) == nbmod.fingerprint(source)


def test_strip_outputs_leaves_a_clean_notebook_untouched(tmp_path: Path) -> None:
    path = Path(shutil.copy(SCENARIOS / "add_one.ipynb", tmp_path / "a.ipynb"))
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    assert nbmod.strip_outputs(path) is False
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime


def test_strip_outputs_of_a_missing_notebook(tmp_path: Path) -> None:
    with pytest.raises(NotebookError, match="no such notebook"):
        nbmod.strip_outputs(tmp_path / "nope.ipynb")


# -- inspect ---------------------------------------------------------------------------


def test_inspect_scenario_with_outputs() -> None:
    info = nbmod.inspect(SCENARIOS / "with_outputs.ipynb")
    assert info.cells_with_outputs == (2,)
    assert info.parameters_cell == 1
    assert info.has_parameters_cell
    assert info.parameters == {"x": "1"}
    assert info.code_cells == 2
    assert info.kernel_name == "python3"
    assert info.path == (SCENARIOS / "with_outputs.ipynb").resolve()


def test_inspect_scenario_without_parameters_cell() -> None:
    info = nbmod.inspect(SCENARIOS / "no_parameters_cell.ipynb")
    assert not info.has_parameters_cell
    assert info.parameters_cell is None
    assert info.parameters == {}
    assert info.cells_with_outputs == ()


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("add_one.ipynb", ["x", "seed", "out_path"]),
        ("reads_input.ipynb", ["in_path", "out_path", "seed"]),
        ("sleeps.ipynb", ["seconds", "out_path"]),
        ("logs_to_mlflow.ipynb", ["answer"]),
        ("writes_nothing.ipynb", ["out_path"]),
        ("fails_in_cell_2.ipynb", ["x"]),
        ("kernel_dies.ipynb", ["x"]),
    ],
)
def test_inspect_reads_the_scenario_parameters(name: str, parameters: list[str]) -> None:
    info = nbmod.inspect(SCENARIOS / name)
    assert list(info.parameters) == parameters
    assert info.parameters_cell == 1
    assert info.cells_with_outputs == ()


def test_inspect_counts_positions_across_markdown_cells(tmp_path: Path) -> None:
    path = make_notebook(
        tmp_path / "m.ipynb",
        ("markdown", "# Title"),
        ("code", "import os"),
        ("code", "alpha = 0.1"),
        ("markdown", "text"),
        ("code", "print(alpha)"),
        tag=2,
    )
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[4].execution_count = 3
    nbformat.write(nb, str(path))
    info = nbmod.inspect(path)
    assert info.parameters_cell == 3
    assert info.parameters == {"alpha": "0.1"}
    assert info.code_cells == 3
    assert info.cells_with_outputs == (5,)


def test_inspect_uses_the_first_parameters_cell(tmp_path: Path) -> None:
    path = make_notebook(tmp_path / "two.ipynb", ("code", "a = 1"), ("code", "b = 2"))
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[1].metadata["tags"] = ["parameters"]
    nbformat.write(nb, str(path))
    info = nbmod.inspect(path)
    assert info.parameters_cell == 1
    assert info.parameters == {"a": "1"}


def test_inspect_notices_a_rewritten_notebook(tmp_path: Path) -> None:
    path = make_notebook(tmp_path / "n.ipynb", ("code", "a = 1"))
    assert list(nbmod.inspect(path).parameters) == ["a"]
    make_notebook(path, ("code", "a = 1\nbeta = 2"))
    assert list(nbmod.inspect(path).parameters) == ["a", "beta"]


def test_inspect_kernel_name_defaults_to_python3(tmp_path: Path) -> None:
    path = make_notebook(tmp_path / "k.ipynb", ("code", "a = 1"))
    nb = nbformat.read(str(path), as_version=4)
    del nb.metadata["kernelspec"]
    nbformat.write(nb, str(path))
    assert nbmod.inspect(path).kernel_name == "python3"


def test_parameters_cell_with_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = make_notebook(tmp_path / "bad.ipynb", ("markdown", "# t"), ("code", "x = = 1"), tag=1)
    with pytest.raises(NotebookError) as info:
        nbmod.inspect(path)
    assert info.value.path == str(path.resolve())
    assert str(info.value).startswith(f"{path.resolve()}: ")
    assert "the parameters cell (cell 2) is not valid Python" in str(info.value)
    assert info.value.exit_code == 2


def test_a_syntax_error_outside_the_parameters_cell_is_fine(tmp_path: Path) -> None:
    path = make_notebook(tmp_path / "ok.ipynb", ("code", "x = 1"), ("code", "%matplotlib inline"))
    assert nbmod.inspect(path).parameters == {"x": "1"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such notebook"),
        ("{not json", "not a readable notebook"),
        ('{"cells": 3}', "not a readable notebook"),
    ],
    ids=["missing", "not-json", "not-a-notebook"],
)
def test_inspect_unreadable_notebook(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "x.ipynb"
    if content is not None:
        path.write_text(content)
    with pytest.raises(NotebookError) as info:
        nbmod.inspect(path)
    assert message in str(info.value)
    assert "x.ipynb" in info.value.path


def test_inspect_reads_format_4_as_nbformat_does(tmp_path: Path) -> None:
    """The JSON read (no nbformat import) sees what nbformat sees: lines joined, same hash."""
    path = make_notebook(
        tmp_path / "nb.ipynb", ("code", "x = 1\ny = 2"), ("markdown", "# t"), ("code", "x + y")
    )
    raw = json.loads(path.read_text())
    raw["cells"][0]["source"] = ["x = 1\n", "y = 2"]  # as Jupyter writes it: a list of lines
    path.write_text(json.dumps(raw))

    info = nbmod.inspect(path)

    assert info.parameters == {"x": "1", "y": "2"}
    assert info.fingerprint == nbmod.fingerprint(nbformat.read(path, as_version=4))
    assert (info.code_cells, info.parameters_cell) == (2, 1)


def test_inspect_reads_an_older_format_through_nbformat(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    path = tmp_path / "old.ipynb"
    nbformat.write(nbformat.convert(nb, 3), str(path))
    assert json.loads(path.read_text())["nbformat"] == 3

    info = nbmod.inspect(path)

    assert info.code_cells == 1
    assert info.fingerprint == nbmod.fingerprint(nbformat.read(path, as_version=4))


# -- source_position -------------------------------------------------------------------


def test_source_position_skips_injected_parameters() -> None:
    nb = nbformat.read(str(SCENARIOS / "fails_in_cell_2.ipynb"), as_version=4)
    injected = nbformat.v4.new_code_cell("x = 5")
    injected.metadata["tags"] = ["injected-parameters"]
    executed = nbformat.from_dict(nb)
    executed.cells.insert(1, injected)
    # executed: [parameters, injected, raise, print]
    assert nbmod.source_position(executed, 0) == 1
    assert nbmod.source_position(executed, 2) == 2
    assert nbmod.source_position(executed, 3) == 3
    # a notebook without injected cells maps index i to position i + 1
    assert nbmod.source_position(nb, 1) == 2
