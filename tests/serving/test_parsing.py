"""The request bounds and the fast path, on real MLflow signatures.

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
    _fast,
    check_csv,
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
        ("dataframe_split", split(ROWS, ["x", "n", "y"])),
        ("dataframe_split", {**split(ROWS, ["x", "n", "y"]), "index": [7, 9]}),
        ("dataframe_split", split([[r[2], 99, r[0], r[1]] for r in ROWS], ["y", "id", "x", "n"])),
        ("dataframe_records", [{"n": r[1], "y": r[2], "x": r[0], "other": "z"} for r in ROWS]),
        ("instances", [{"x": r[0], "n": r[1], "y": r[2]} for r in ROWS]),
        ("inputs", {"y": [-0.5, 3.25], "x": [1.5, 0.0], "n": [2, 7]}),
        ("dataframe_split", split([[1.5, 2.0, -0.5], [0.0, 7.0, 3.25]], ["x", "n", "y"])),
    ],
    ids=[
        "split, named",
        "split with its index",
        "split, reordered with an extra column",
        "records, extra key",
        "instances as records",
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
        ("dataframe_split", split([[1.5, 2.5, -0.5]], ["x", "n", "y"])),  # a fraction in n
        ("dataframe_split", split(ROWS)),  # rows without names: MLflow refuses them
        ("instances", ROWS),
        ("inputs", ROWS),
        ("dataframe_split", {**split(ROWS, ["x", "n", "y"]), "index": [0, 1, 2]}),
        ("dataframe_split", split([[1.5, 2**63, -0.5]], ["x", "n", "y"])),  # beyond int64
        ("dataframe_split", split(ROWS, ["x", "n"])),  # fewer names than values
        ("dataframe_split", split(ROWS, ["x", "x", "y"])),  # a duplicate name
        ("dataframe_split", split(ROWS, ["x", "m", "y"])),  # a column missing
        ("dataframe_split", split([[1.5, None, -0.5]], ["x", "n", "y"])),  # a null
        ("dataframe_split", split([[1.5, "2", -0.5]], ["x", "n", "y"])),  # a string
        ("dataframe_split", split([[1.5, 2]], ["x", "n", "y"])),  # a short row
        ("dataframe_split", [[1.5, 2, -0.5]]),  # not an object
        ("dataframe_records", ROWS),  # records must be objects
        ("instances", [{"x": 1.5, "y": -0.5}]),  # a key missing
        ("inputs", {"x": [1.5], "n": [2]}),  # a column missing
        ("inputs", []),
    ],
    ids=[
        "fraction in an integer column",
        "split without names",
        "instances as rows",
        "inputs as rows",
        "split with a longer index",
        "beyond int64",
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
def test_the_fast_path_leaves_anything_unclean_to_mlflow(fmt: str, data: Any) -> None:
    assert _fast(fmt, data, numeric()) is None


# the fast path agrees with MLflow


def mlflow_reads(fmt: str, data: Any, signature: Schema) -> np.ndarray:
    """What MLflow's scoring server hands the model for a payload, as a float64 matrix."""
    from mlflow.models.utils import _enforce_schema
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    frame = _enforce_schema(infer_and_parse_data({fmt: data}, signature), signature)
    return frame[signature.input_names()].to_numpy(dtype=np.float64)


MIXED = Schema(
    [
        ColSpec("double", "d"),
        ColSpec("float", "f"),
        ColSpec("long", "n"),
        ColSpec("integer", "i"),
    ]
)
MIXED_ROWS = [[0.1, 0.1, 3, 4], [1e-7, 2.718281828459045, -(2**40), 2**31 - 1], [5, 7, 3.0, -8]]


@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "instances", "inputs"])
def test_the_fast_matrix_holds_the_values_mlflow_gives_the_model(fmt: str) -> None:
    names = MIXED.input_names()
    records = [dict(zip(names, row, strict=True)) for row in MIXED_ROWS]
    data = {
        "dataframe_split": split(MIXED_ROWS, names),
        "dataframe_records": records,
        "instances": records,
        "inputs": {name: [row[i] for row in MIXED_ROWS] for i, name in enumerate(names)},
    }[fmt]
    matrix = _fast(fmt, data, of_columns(*MIXED.inputs))
    assert matrix is not None
    np.testing.assert_array_equal(matrix, mlflow_reads(fmt, data, MIXED))
    assert matrix[0, 1] == float(np.float32(0.1)) != 0.1  # a float column, rounded as MLflow does


def test_an_integer_beyond_int32_is_left_to_mlflow() -> None:
    schema = of_columns(ColSpec("integer", "i"))
    assert _fast("dataframe_split", split([[2**31 - 1]], ["i"]), schema) is not None
    assert _fast("dataframe_split", split([[2**31]], ["i"]), schema) is None
    assert _fast("dataframe_split", split([[-(2**31) - 1]], ["i"]), schema) is None


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
    check_csv(b"x,n,y\n1.5,2,3\n0,1,2\n", SMALL)
    check_csv(b'"a,b",c\n1,2\n', SMALL)
    check_csv(b'x\n"1\n\n\n\n"\n', SMALL)  # line breaks inside quotes are no rows
    with over("max_columns"):
        check_csv(b"a,b,c,d,e\n1,2,3,4,5\n", SMALL)
    with over("max_columns"):
        check_csv(b'"a\nb",b,c,d,e\n1,2,3,4,5\n', SMALL)  # a line break inside quotes
    with over("max_rows"):
        check_csv(b"x\n1\n2\n3\n4\n", SMALL)
    with over("max_cells") as rejected:
        check_csv(b"x,y,z\n1,2,3\n1,2,3\n1,2,3\n", SMALL)
    assert "has 3 rows of 3 columns; this service takes at most 2" in rejected.value.message


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
