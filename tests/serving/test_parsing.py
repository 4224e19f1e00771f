"""The request parsers and signature checks, on real MLflow signatures.

The signatures come from MLflow itself (``infer_signature`` on a DataFrame,
or a ``Schema`` of ``ColSpec``\\ s), as a logged model carries them.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema, TensorSpec
from mlflow.types.schema import Array

from mlnb.serving.parsing import (
    InputSchema,
    Limits,
    Reject,
    _coerce,
    _fast,
    _frame,
    check_frame,
    read_csv,
    read_parquet,
    table_size,
)

pytestmark = pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer:UserWarning")

#: a signature of three numeric columns: x (double), n (long), y (double)
NUMERIC = InputSchema.of(
    ModelSignature(Schema([ColSpec("double", "x"), ColSpec("long", "n"), ColSpec("double", "y")]))
)
ROWS = [[1.5, 2, -0.5], [0.0, 7, 3.25]]
EXPECTED = np.array(ROWS, dtype=np.float64)


def numeric() -> InputSchema:
    assert NUMERIC is not None
    return NUMERIC


def of_columns(*specs: ColSpec) -> InputSchema:
    schema = InputSchema.of(ModelSignature(Schema(list(specs))))
    assert schema is not None
    return schema


# InputSchema.of


def test_a_column_signature_becomes_names_kinds_and_required() -> None:
    frame = pd.DataFrame(
        {
            "x": [1.5, 2.0],
            "n": [1, 2],
            "s": ["a", "b"],
            "flag": [True, False],
            "opt": [1.0, None],
        }
    )
    schema = InputSchema.of(infer_signature(frame))
    assert schema is not None
    assert schema.columns == ("x", "n", "s", "flag", "opt")
    assert schema.kinds == ("double", "long", "string", "boolean", "double")
    assert schema.required == (True, True, True, True, False)
    assert schema.integral == [1]
    assert not schema.numeric
    assert numeric().numeric
    assert numeric().names == ["x", "n", "y"]


@pytest.mark.parametrize(
    "signature",
    [
        None,
        infer_signature(np.zeros((3, 4))),  # a tensor signature
        ModelSignature(Schema([TensorSpec(np.dtype(np.float32), (-1, 4), "t")])),
        ModelSignature(Schema([ColSpec("double"), ColSpec("double")])),  # unnamed columns
        ModelSignature(Schema([ColSpec(Array("double"), "v")])),  # an array column
    ],
    ids=["none", "inferred tensor", "tensor spec", "unnamed", "array column"],
)
def test_signatures_mlnb_does_not_check_are_left_to_mlflow(signature: Any) -> None:
    assert InputSchema.of(signature) is None


# InputSchema.missing


def test_missing_names_the_absent_columns_and_a_near_typo() -> None:
    schema = numeric()
    assert schema.missing(["y", "n", "x", "extra"]) is None
    one = schema.missing(["x", "y"])
    assert one == "missing column 'n'; the model's signature needs 3 columns"
    assert (
        schema.missing(["x"]) == "missing columns 'n', 'y'; the model's signature needs 3 columns"
    )
    named = of_columns(ColSpec("double", "mean area"), ColSpec("double", "mean radius"))
    typo = named.missing(["mean radius", "mean aera", "id"])
    assert typo == (
        "missing column 'mean area' (the request has 'mean aera': a typo?); "
        "the model's signature needs 2 columns"
    )
    many = of_columns(*(ColSpec("double", f"c{i}") for i in range(12))).missing([])
    assert many is not None
    assert "'c9' ..." in many and "'c10'" not in many
    assert many.endswith("needs 12 columns")


# the fast path


def split(data: Any, columns: Any = None) -> dict[str, Any]:
    return {"data": data} if columns is None else {"columns": columns, "data": data}


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("dataframe_split", split(ROWS)),
        ("dataframe_split", split(ROWS, ["x", "n", "y"])),
        ("dataframe_split", split([[r[2], 99, r[0], r[1]] for r in ROWS], ["y", "id", "x", "n"])),
        ("dataframe_records", [{"n": r[1], "y": r[2], "x": r[0], "other": "z"} for r in ROWS]),
        ("instances", [{"x": r[0], "n": r[1], "y": r[2]} for r in ROWS]),
        ("instances", ROWS),
        ("inputs", ROWS),
        ("inputs", {"y": [-0.5, 3.25], "x": [1.5, 0.0], "n": [2, 7]}),
        ("dataframe_split", split([[1.5, 2.0, -0.5], [0.0, 7.0, 3.25]])),  # a whole float: fine
    ],
    ids=[
        "split",
        "split, named",
        "split, reordered with an extra column",
        "records, extra key",
        "instances as records",
        "instances as rows",
        "inputs as rows",
        "inputs as columns",
        "integer column given as whole floats",
    ],
)
def test_the_fast_path_reads_numbers_in_signature_order(fmt: str, data: Any) -> None:
    matrix = _fast(fmt, data, numeric())
    assert matrix is not None
    assert matrix.dtype == np.float64
    assert matrix.flags.c_contiguous
    np.testing.assert_array_equal(matrix, EXPECTED)


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("dataframe_split", split([[1.5, 2.5, -0.5]])),  # a fraction in the integer column
        ("instances", [[1.5, 2.5, -0.5]]),
        ("dataframe_split", split(ROWS, ["x", "n"])),  # fewer names than values
        ("dataframe_split", split(ROWS, ["x", "x", "y"])),  # a duplicate name
        ("dataframe_split", split(ROWS, ["x", "m", "y"])),  # a column missing
        ("dataframe_split", split([[1.5, None, -0.5]])),  # a null
        ("dataframe_split", split([[1.5, "2", -0.5]])),  # a string
        ("dataframe_split", split([[1.5, 2]])),  # a short row
        ("dataframe_split", [[1.5, 2, -0.5]]),  # not an object
        ("dataframe_records", ROWS),  # records must be objects
        ("instances", [{"x": 1.5, "y": -0.5}]),  # a key missing
        ("inputs", {"x": [1.5], "n": [2]}),  # a column missing
        ("inputs", []),
    ],
    ids=[
        "fraction in an integer column",
        "fraction, as rows",
        "names short",
        "duplicate names",
        "missing name",
        "null",
        "string",
        "short row",
        "split not an object",
        "records as lists",
        "record lacks a key",
        "columns lack one",
        "no rows",
    ],
)
def test_the_fast_path_leaves_anything_unclean_to_pandas(fmt: str, data: Any) -> None:
    assert _fast(fmt, data, numeric()) is None


# _frame


@pytest.mark.parametrize(
    ("fmt", "data", "words"),
    [
        ("dataframe_split", [[1, 2, 3]], ["'dataframe_split' must be an object with 'data'"]),
        ("dataframe_split", {"columns": ["x"]}, ["must be an object with 'data'"]),
        (
            "dataframe_split",
            split([1, 2], ["x", "n", "y"]),
            ["each row of 'data' must be a list of values"],
        ),
        (
            "dataframe_split",
            split([1, 2]),
            ["'dataframe_split': each row of 'data' must be a list"],
        ),
        ("dataframe_split", split([[1, 2]]), ["rows have 2 values", "has 3 columns"]),
        ("instances", [[1, 2, 3], [1, 2]], ["rows have 2, 3 values"]),
        ("instances", [[1, 2, 3], 4], ["'instances': each row must be a list of values"]),
        ("dataframe_records", {"x": 1}, ["'dataframe_records' must be a list of objects"]),
        ("inputs", 5, ["'inputs' must be a list of rows (objects or lists) or an object"]),
        ("inputs", {"x": [1, 2], "n": {"a": 1}}, ["'inputs' must be a list of rows"]),
        ("inputs", {"x": [1, 2], "n": [1]}, ["'inputs' is not a table", "same length"]),
        ("dataframe_split", split([[1, 2]], ["x", "n", "y"]), ["'dataframe_split' is not a table"]),
    ],
    ids=[
        "split not an object",
        "split without data",
        "split rows not lists",
        "split rows not lists, unnamed",
        "split rows short",
        "instances ragged",
        "instances mixed",
        "records not a list",
        "inputs a number",
        "inputs of nested objects",
        "inputs columns of unequal length",
        "split, names and rows disagree",
    ],
)
def test_frame_names_what_is_wrong_with_each_format(fmt: str, data: Any, words: list[str]) -> None:
    with pytest.raises(Reject) as rejected:
        _frame(fmt, data, numeric())
    assert rejected.value.status == 400
    for word in words:
        assert word in rejected.value.message


def test_frame_builds_tables_of_every_shape() -> None:
    schema = numeric()
    positional = _frame("instances", ROWS, schema)
    assert list(positional.columns) == ["x", "n", "y"]
    assert positional.to_numpy().tolist() == ROWS
    record = _frame("inputs", {"x": 1.5, "n": 2, "y": -0.5}, schema)  # one row as an object
    assert record.to_dict(orient="records") == [{"x": 1.5, "n": 2, "y": -0.5}]
    unsigned = _frame("instances", [[1, "a"]], None)  # no schema: pandas names the columns
    assert list(unsigned.columns) == [0, 1]
    assert _frame("dataframe_records", [], schema).empty


# _coerce and check_frame


def test_a_bad_value_names_its_column_row_and_value() -> None:
    frame = pd.DataFrame({"x": [1.5, "abc", 2.0], "n": [1, 2, 3], "y": [0.5, 1.5, True]})
    with pytest.raises(Reject) as rejected:
        check_frame(frame, numeric())
    assert rejected.value.message == (
        "column 'x' (double): row 1 has \"abc\" (a string); expected a number; "
        "column 'y' (double): row 2 has true (a boolean); expected a number"
    )


def test_more_than_five_bad_columns_are_counted() -> None:
    schema = of_columns(*(ColSpec("double", f"c{i}") for i in range(8)))
    frame = pd.DataFrame({f"c{i}": ["no"] for i in range(8)})
    with pytest.raises(Reject, match=r"column 'c4' .*\(and 3 more columns\)$") as rejected:
        check_frame(frame, schema)
    assert "'c5'" not in rejected.value.message


def test_a_required_null_is_rejected_and_an_optional_one_kept() -> None:
    schema = of_columns(ColSpec("double", "x"), ColSpec("long", "n", required=False))
    frame = pd.DataFrame({"x": [1.0, 2.0, None], "n": [1, None, 3]})
    with pytest.raises(Reject, match=r"^column 'x' \(double\): row 2 has no value$"):
        check_frame(frame, schema)
    checked = check_frame(frame.fillna({"x": 0.0}), schema)
    assert checked["n"].dtype == np.float64  # an integer column with a null stays float
    assert checked["n"].isna().tolist() == [False, True, False]


def test_integer_columns_take_whole_numbers_only() -> None:
    schema = of_columns(ColSpec("long", "n"), ColSpec("integer", "i"))
    checked = check_frame(pd.DataFrame({"n": [1.0, 2.0], "i": [3, 4]}), schema)
    assert (checked["n"].dtype, checked["i"].dtype) == (np.int64, np.int32)
    assert checked["n"].tolist() == [1, 2]
    with pytest.raises(Reject, match=r"column 'n' \(long\): row 1 has 2.5; expected an integer"):
        check_frame(pd.DataFrame({"n": [1.0, 2.5], "i": [3, 4]}), schema)


def test_string_and_boolean_columns() -> None:
    schema = of_columns(ColSpec("string", "s"), ColSpec("boolean", "b"))
    with pytest.raises(Reject) as rejected:
        check_frame(pd.DataFrame({"s": ["a", 5], "b": [True, "yes"]}), schema)
    assert "column 's' (string): row 1 has 5 (int); expected a string" in rejected.value.message
    assert "column 'b' (boolean): row 1 has \"yes\" (a string); expected true or false" in (
        rejected.value.message
    )
    from_csv = check_frame(pd.DataFrame({"s": ["a", 5], "b": [True, False]}), schema, text=True)
    assert from_csv["s"].tolist() == ["a", "5"]  # CSV text: a number is the string it spells


def test_csv_text_may_spell_numbers() -> None:
    frame = pd.DataFrame({"x": ["1.5", "2"], "n": ["3", "4"], "y": [0.5, 1.5]})  # as read_csv
    checked = check_frame(frame, numeric(), text=True)
    assert checked.to_numpy().tolist() == [[1.5, 3, 0.5], [2.0, 4, 1.5]]
    assert checked["n"].dtype == np.int64
    with pytest.raises(Reject, match=r"column 'x' \(double\): row 1 has \"two\""):
        check_frame(frame.assign(x=["1.5", "two"]), numeric(), text=True)
    with pytest.raises(Reject, match="expected a number"):  # JSON strings are not numbers
        check_frame(frame, numeric())


def test_datetime_and_binary_columns() -> None:
    assert _coerce(pd.Series(["2025-01-31T10:00:00"]), "datetime", True, False).dtype.kind == "M"
    with pytest.raises(ValueError, match="not a date and time"):
        _coerce(pd.Series(["yesterday"]), "datetime", True, False)
    assert _coerce(pd.Series(["aGk="]), "binary", True, False).tolist() == [b"hi"]
    with pytest.raises(ValueError, match="not base64"):
        _coerce(pd.Series(["a"]), "binary", True, False)


def test_check_frame_keeps_the_signature_columns_in_order() -> None:
    frame = pd.DataFrame({"y": [0.5], "extra": ["z"], "n": [2], "x": [1.5]}, index=[7])
    checked = check_frame(frame, numeric())
    assert list(checked.columns) == ["x", "n", "y"]
    assert checked.index.tolist() == [0]
    assert checked.to_numpy().tolist() == [[1.5, 2.0, 0.5]]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame([[1.5, 2, 0.5, 1]], columns=["x", "n", "y", "x"]), "duplicate columns: 'x'"),
        (pd.DataFrame({"x": [1.5], "n": [2]}), "missing column 'y'"),
        (pd.DataFrame({"x": [], "n": [], "y": []}), "the request has no rows to predict"),
    ],
    ids=["duplicate", "missing", "no rows"],
)
def test_check_frame_rejects_the_table_as_a_whole(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(Reject) as rejected:
        check_frame(frame, numeric())
    assert rejected.value.message.startswith(message)


# limits


SMALL = Limits(max_columns=4, max_rows=3, max_cells=8, max_parquet_bytes=2_000, max_json_depth=4)


def over(limit: str) -> Any:
    """``pytest.raises`` of the 413 that names ``limit``."""
    return pytest.raises(Reject, match=rf"\(its limit {limit}\): .*, or raise {limit} where")


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_a_limit_is_a_positive_integer(value: Any) -> None:
    with pytest.raises(ValueError, match="limit max_rows must be a positive integer"):
        Limits(max_rows=value)


def test_each_limit_is_a_413_that_names_it() -> None:
    SMALL.check(rows=2, columns=4)
    with over("max_columns") as rejected:
        SMALL.check(rows=1, columns=5)
    assert (rejected.value.status, rejected.value.code) == (413, "REQUEST_LIMIT_EXCEEDED")
    assert rejected.value.kind == "too_large"
    assert "the request has 5 columns; this service takes at most 4" in rejected.value.message
    with over("max_rows"):
        SMALL.check(rows=4, columns=1)
    with over("max_cells"):
        SMALL.check(rows=3, columns=3)
    SMALL.check(rows=1, columns=6, signature_columns=6)  # a model's own columns always fit


@pytest.mark.parametrize(
    ("fmt", "data", "size"),
    [
        ("dataframe_split", split(ROWS, ["x", "n", "y"]), (2, 3)),
        ("dataframe_split", split([[1], [1, 2, 3, 4, 5]]), (2, 5)),
        ("dataframe_split", split([[1], [1, 2, 3, 4, 5]], ["x"]), (2, 5)),
        ("dataframe_records", [{"a": 1}, {"b": 1}, {"c": 1, "d": 2}], (3, 4)),
        ("instances", ROWS, (2, 3)),
        ("inputs", {"x": [1, 2, 3], "y": [1]}, (3, 2)),
        ("inputs", {"x": 1, "y": 2}, (1, 2)),
        ("inputs", "text", (0, 0)),
    ],
    ids=[
        "split",
        "split, ragged",
        "split, a row wider than its columns",
        "records, keys of their own",
        "rows",
        "columns",
        "one row",
        "no table",
    ],
)
def test_table_size_is_the_table_a_payload_would_make(
    fmt: str, data: Any, size: tuple[int, int]
) -> None:
    assert table_size(fmt, data, SMALL) == size


def test_records_with_too_many_values_are_refused_before_their_keys_are_counted() -> None:
    with over("max_cells"):
        table_size("dataframe_records", [{f"k{i}": 0 for i in range(9)}], SMALL)


def test_json_nesting_is_measured_outside_strings() -> None:
    SMALL.check_depth(b'{"inputs": [[1, 2], [3, 4]]}')
    SMALL.check_depth(b'{"inputs": [["[[[[[", "{{{{{\\"]]], "x": "]]]]"}')
    with over("max_json_depth") as rejected:
        SMALL.check_depth(b'{"inputs": [[[[1]]]]}')
    assert "5 levels of nesting" in rejected.value.message


def test_a_csv_body_is_bounded_by_its_header_and_rows() -> None:
    assert read_csv(b"x,n,y\n1.5,2,3\n0,1,2\n", SMALL).shape == (2, 3)
    assert read_csv(b'"a,b",c\n1,2\n', SMALL).columns.tolist() == ["a,b", "c"]
    with over("max_columns"):
        read_csv(b"a,b,c,d,e\n1,2,3,4,5\n", SMALL)
    with over("max_columns"):
        read_csv(b'"a\nb",b,c,d,e\n1,2,3,4,5\n', SMALL)  # a line break inside quotes
    with over("max_rows"):
        read_csv(b"x\n1\n2\n3\n4\n", SMALL)
    with over("max_cells") as rejected:
        read_csv(b"x,y,z\n1,2,3\n1,2,3\n1,2,3\n", SMALL)
    assert "has 3 rows of 3 columns; this service takes at most 2" in rejected.value.message
    with pytest.raises(Reject, match="cannot read the body as CSV"):
        read_csv(b'"unclosed\n', SMALL)


def parquet(frame: pd.DataFrame, **options: Any) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, **options)
    return buffer.getvalue()


def test_a_parquet_body_is_bounded_by_its_footer() -> None:
    frame = pd.DataFrame({"x": [1.5, 2.5], "n": [1, 2]}, index=[7, 9])
    np.testing.assert_array_equal(read_parquet(parquet(frame), SMALL).index, [7, 9])
    with over("max_rows"):
        read_parquet(parquet(pd.DataFrame({"x": range(4)}), index=False), SMALL)
    with over("max_columns"):
        read_parquet(parquet(pd.DataFrame({f"c{i}": [0] for i in range(5)}), index=False), SMALL)
    text = pd.DataFrame({"s": ["x" * 3_000]})
    with over("max_parquet_bytes"):
        read_parquet(parquet(text, index=False, compression="zstd"), SMALL)
    with pytest.raises(Reject, match="cannot read the body as Parquet"):
        read_parquet(b"PAR1 not really", SMALL)
