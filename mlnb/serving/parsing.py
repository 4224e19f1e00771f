"""Reading a request's rows and checking them against the model's signature.

A request that cannot be scored is a :class:`Reject`: the HTTP front answers
it with a JSON error ``{"error_code", "message"}`` that names the problem.

Design decisions:

- **The fast path first.** :func:`_fast` reads the payload of each JSON
  scoring format straight into a float64 matrix in the signature's column
  order, when every input column is numeric and every value a number. It
  answers ``None`` for anything it does not take cleanly (a string, a null,
  a fraction in an integer column, a column missing), never an error.
- **Then pandas, column by column.** :func:`_frame` turns the payload into a
  DataFrame and :func:`check_frame` converts each column to its signature
  type, so a client error names the column, the row and the value at fault,
  for every bad column at once.
- **Only named scalar columns.** :class:`InputSchema` covers signatures of
  named columns of scalar types; tensors, unnamed columns, arrays, objects
  and maps are left to MLflow's own parser (``InputSchema.of`` is ``None``).
- **The cost is bounded before the work.** :class:`Limits` caps a request's
  columns, rows and values (rows × columns), a Parquet body's uncompressed
  size and a JSON body's nesting. Each is checked on what is known before
  the table is built: the JSON document's lengths, a CSV body's header row
  (read by :mod:`csv`) with pandas reading at most the allowed rows, a
  Parquet body's footer (its row count and uncompressed size) with the rows
  decoded in batches and counted as they come. A request over a limit is a
  413 that names the limit.
"""

from __future__ import annotations

import base64
import csv
import difflib
import functools
import io
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson
import pandas as pd

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

#: the keys of a JSON body, one per scoring format (MLflow's scoring protocol)
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
JSON, CSV, PARQUET = "application/json", "text/csv", "application/vnd.apache.parquet"
#: what a rejected request is counted as in the metrics
ErrorKind = Literal[
    "bad_request", "not_found", "too_large", "media_type", "model_error", "log", "internal"
]
_ERROR_KINDS: dict[int, ErrorKind] = {
    400: "bad_request",
    404: "not_found",
    413: "too_large",
    415: "media_type",
}
_NUMBER_KINDS = {"double": np.float64, "float": np.float32, "long": np.int64, "integer": np.int32}
#: a JSON string, escapes included (skipped when the nesting of a body is measured)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_PARQUET_BATCH = 65_536  # rows decoded at a time from a Parquet body


class Reject(Exception):
    """A request answered with a JSON error ``{"error_code", "message"}``.

    Attributes:
        status: the HTTP status of the answer.
        code: its ``error_code`` (MLflow's names: ``BAD_REQUEST``, ...).
        kind: the error's label in the metrics (by default, from the status).
        message: the message, cut to 2000 characters.
    """

    def __init__(
        self,
        message: str,
        status: int = 400,
        code: str = "BAD_REQUEST",
        kind: ErrorKind | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.kind: ErrorKind = kind or _ERROR_KINDS.get(status, "internal")
        self.message = message if len(message) <= 2000 else message[:1997] + "..."

    def body(self) -> bytes:
        """The answer's JSON body."""
        return orjson.dumps({"error_code": self.code, "message": self.message})


def _over(
    limit: str, count: int, allowed: int, unit: str, advice: str = "send fewer per request"
) -> Reject:
    """The 413 of a request with ``count`` ``unit``, more than the ``limit`` setting allows."""
    return Reject(
        f"the request has {count:,} {unit}; this service takes at most {allowed:,} "
        f"(its limit {limit}): {advice}, or raise {limit} where the service is started",
        413,
        "REQUEST_LIMIT_EXCEEDED",
    )


@dataclass(frozen=True)
class Limits:
    """What one request may hold; each is checked before the work it would cost.

    Attributes:
        max_columns: columns of the table (a model's signature may always be
            sent whole, however wide).
        max_rows: rows of the table.
        max_cells: values of the table, rows × columns.
        max_parquet_bytes: a Parquet body's size uncompressed, as its footer states it.
        max_json_depth: how deeply the arrays and objects of a JSON body nest.
    """

    max_columns: int = 4_096
    max_rows: int = 100_000
    max_cells: int = 2_000_000
    max_parquet_bytes: int = 64 * 2**20
    max_json_depth: int = 32

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"limit {name} must be a positive integer; got {value!r}")

    def check(self, rows: int, columns: int, signature_columns: int = 0) -> None:
        """A :class:`Reject` (413) if a table of ``rows`` × ``columns`` is over a limit."""
        widest = max(self.max_columns, signature_columns)
        if columns > widest:
            raise _over("max_columns", columns, widest, "columns")
        if rows > self.max_rows:
            raise _over("max_rows", rows, self.max_rows, "rows")
        if rows * columns > self.max_cells:
            raise _over("max_cells", rows * columns, self.max_cells, "values (rows × columns)")

    def rows_for(self, columns: int) -> tuple[int, str]:
        """The most rows a table of ``columns`` columns may have, and the limit that says so."""
        by_cells = self.max_cells // max(columns, 1)
        return (by_cells, "max_cells") if by_cells < self.max_rows else (self.max_rows, "max_rows")

    def check_depth(self, body: bytes) -> None:
        """A :class:`Reject` (413) if the arrays and objects of a JSON body nest too deeply."""
        if body.count(b"[") + body.count(b"{") <= self.max_json_depth:
            return
        brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
        codes = np.frombuffer(brackets, np.uint8)
        steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
        depth = int(np.cumsum(steps).max(initial=0))
        if depth > self.max_json_depth:
            raise _over(
                "max_json_depth", depth, self.max_json_depth, "levels of nesting", "nest less"
            )


DEFAULT_LIMITS = Limits()


def _widest(rows: list[Any]) -> int:
    """The most values a row of ``rows`` has (rows that are lists or objects)."""
    if set(map(type, rows)) <= {list, dict}:
        return max(map(len, rows), default=0)
    return max((len(row) for row in rows if isinstance(row, list | dict)), default=0)


def table_size(fmt: str, data: Any, limits: Limits) -> tuple[int, int]:
    """The rows and columns the table of a JSON payload would have, found from its lengths.

    Objects as rows may each have other keys, so their table is as wide as
    all their keys together; those are counted only when the table could be
    over a limit, and only once their values are known to be within ``max_cells``.
    """
    if fmt == "dataframe_split" and isinstance(data, dict):
        rows = data.get("data")
        rows = rows if isinstance(rows, list) else []
        if len(rows) > limits.max_rows:
            return len(rows), 0  # over a limit already: not worth counting columns
        names = data.get("columns")
        named = len(names) if isinstance(names, list) else 0
        return len(rows), max(named, _widest(rows))  # a ragged row widens the table
    if isinstance(data, list):
        if len(data) > limits.max_rows:
            return len(data), 0  # over a limit already: not worth counting columns
        if data and all(isinstance(row, dict) for row in data):
            return len(data), _keys(data, limits)
        return len(data), _widest(data)
    if isinstance(data, dict):
        lengths = [len(value) for value in data.values() if isinstance(value, list)]
        return max(lengths, default=1), len(data)
    return 0, 0


def _keys(records: list[dict[str, Any]], limits: Limits) -> int:
    """How many distinct keys the objects of ``records`` have together."""
    values = sum(map(len, records))
    if values <= limits.max_columns and len(records) * values <= limits.max_cells:
        return _widest(records)  # within every limit whatever the keys are
    if values > limits.max_cells:
        raise _over("max_cells", values, limits.max_cells, "values")
    return len(set().union(*records))


def _csv_width(body: bytes) -> int:
    """How many columns the header row of a CSV body names.

    A first line without quotes is counted by its commas; one with quotes
    (which may hold commas and line breaks) is read by :mod:`csv`.
    """
    end = body.find(b"\n")
    first = body if end < 0 else body[:end]
    if b'"' not in first:
        return first.count(b",") + 1
    text = io.TextIOWrapper(io.BytesIO(body), encoding="utf-8", newline="")
    try:
        return len(next(csv.reader(text), []))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise Reject(f"cannot read the body as CSV: {type(exc).__name__}: {exc}") from None


def read_csv(body: bytes, limits: Limits, signature_columns: int = 0) -> pd.DataFrame:
    """A CSV body as a table; its header's width and its row count checked first.

    Raises:
        Reject: a 413 over a limit; a 400 for a body that is not CSV.
    """
    columns = _csv_width(body)
    limits.check(1, columns, signature_columns)
    most, limit = limits.rows_for(columns)
    try:
        frame = pd.read_csv(io.BytesIO(body), nrows=most + 1)
    except Exception as exc:  # pandas raises many kinds for a body it cannot read
        raise Reject(f"cannot read the body as CSV: {type(exc).__name__}: {exc}") from None
    if len(frame) > most:
        unit = "rows" if limit == "max_rows" else f"rows of {columns:,} columns"
        raise _over(limit, len(frame), most, unit)
    return frame


def read_parquet(body: bytes, limits: Limits, signature_columns: int = 0) -> pd.DataFrame:
    """A Parquet body as a table; its footer's row count and sizes checked before decoding.

    The rows are decoded in batches and counted as they come, so a footer
    that understates them costs no more than one batch past the limit.

    Raises:
        Reject: a 413 over a limit; a 400 for a body that is not Parquet.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(body))
        meta = parquet.metadata
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    except Exception as exc:  # pyarrow raises many kinds for a body it cannot read
        raise Reject(f"cannot read the body as Parquet: {type(exc).__name__}: {exc}") from None
    columns = meta.num_columns
    limits.check(meta.num_rows, columns, signature_columns)
    size = sum(group.total_byte_size for group in groups)
    if size > limits.max_parquet_bytes:
        raise _over("max_parquet_bytes", size, limits.max_parquet_bytes, "bytes uncompressed")
    batches, rows = [], 0
    try:
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH, use_pandas_metadata=True):
            rows += batch.num_rows
            limits.check(rows, columns, signature_columns)
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=parquet.schema_arrow).to_pandas()
    except Reject:
        raise
    except Exception as exc:
        raise Reject(f"cannot read the body as Parquet: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class InputSchema:
    """The column part of a model signature, shaped for checking requests fast."""

    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    required: tuple[bool, ...]
    numeric: bool = field(init=False)
    integral: list[int] = field(init=False)
    names: list[str] = field(init=False)
    row_of: Callable[[dict[str, Any]], Sequence[Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "numeric", all(kind in _NUMBER_KINDS for kind in self.kinds))
        set_(self, "integral", [i for i, k in enumerate(self.kinds) if k in ("long", "integer")])
        set_(self, "names", list(self.columns))
        first = self.columns[0]
        getter = operator.itemgetter(*self.columns)
        set_(self, "row_of", getter if len(self.columns) > 1 else lambda r: (r[first],))

    @classmethod
    def of(cls, signature: ModelSignature | None) -> InputSchema | None:
        """The schema of a signature with named scalar columns; ``None`` for any other."""
        from mlflow.types import DataType

        inputs = signature.inputs if signature is not None else None
        if inputs is None or inputs.is_tensor_spec() or not inputs.has_input_names():
            return None
        specs = inputs.inputs
        if not specs or not all(isinstance(spec.type, DataType) for spec in specs):
            return None  # arrays, objects, maps: left to MLflow's own parsing
        return cls(
            tuple(str(spec.name) for spec in specs),
            tuple(spec.type.name for spec in specs),
            tuple(bool(getattr(spec, "required", True)) for spec in specs),
        )

    def missing(self, present: Sequence[Any]) -> str | None:
        """A message naming the signature columns absent from ``present``, or ``None``."""
        have = set(present)
        lacking = [c for c in self.columns if c not in have]
        if not lacking:
            return None
        names = ", ".join(repr(c) for c in lacking[:10]) + (" ..." if len(lacking) > 10 else "")
        text = f"missing column{'s' if len(lacking) > 1 else ''} {names}"
        wanted = set(self.columns)
        extra = [str(c) for c in present if c not in wanted]
        near = [m for c in lacking[:10] for m in difflib.get_close_matches(c, extra, 1, 0.8)]
        if near:
            text += f" (the request has {', '.join(repr(n) for n in near)}: a typo?)"
        return text + f"; the model's signature needs {len(self.columns)} columns"


def _numbers(values: Any) -> np.ndarray | None:
    """``values`` as a 2-D array of numbers, or ``None`` (ragged, strings, nulls, booleans)."""
    try:
        matrix = np.asarray(values)
    except (ValueError, TypeError):
        return None
    return matrix if matrix.dtype.kind in "iuf" and matrix.ndim == 2 and matrix.size else None


def _matrix(matrix: np.ndarray | None, schema: InputSchema) -> np.ndarray | None:
    """One column per signature column, as float64; ``None`` if an integer column has a fraction."""
    if matrix is None or matrix.shape[1] != len(schema.columns):
        return None
    if schema.integral and matrix.dtype.kind == "f":
        part = matrix[:, schema.integral]
        if not np.array_equal(part, np.round(part)):
            return None
    return np.ascontiguousarray(matrix, dtype=np.float64)


def _fast(fmt: str, data: Any, schema: InputSchema) -> np.ndarray | None:
    """The JSON payload as a float64 matrix in signature order, or ``None`` to check it in pandas.

    Takes rows (lists, in signature order or named by ``columns``), records
    (objects; extra keys ignored) and objects of columns, all numbers.
    """
    if fmt == "dataframe_split":
        return _fast_split(data, schema) if isinstance(data, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return _fast_records(data, schema)
    if fmt == "dataframe_records":
        return None
    if isinstance(data, list) and data and isinstance(data[0], list):
        return _matrix(_numbers(data), schema)
    if isinstance(data, dict):
        return _fast_columns(data, schema)
    return None


def _fast_split(data: dict[str, Any], schema: InputSchema) -> np.ndarray | None:
    """``dataframe_split``: rows in signature order, or in the order ``columns`` names them."""
    matrix, names = _numbers(data.get("data")), data.get("columns")
    if matrix is None or names is None or names == schema.names:
        return _matrix(matrix, schema)
    if not isinstance(names, list) or len(names) != matrix.shape[1]:
        return None
    if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        return None
    where = {name: i for i, name in enumerate(names)}
    if not all(column in where for column in schema.columns):
        return None
    return _matrix(matrix[:, [where[c] for c in schema.columns]], schema)


def _fast_records(data: list[Any], schema: InputSchema) -> np.ndarray | None:
    """A list of objects, one per row; keys the signature does not name are ignored."""
    try:
        return _matrix(_numbers(list(map(schema.row_of, data))), schema)
    except (KeyError, TypeError):
        return None


def _fast_columns(data: dict[str, Any], schema: InputSchema) -> np.ndarray | None:
    """An object of columns, each a list of values."""
    try:
        columns = _numbers([data[c] for c in schema.columns])
    except KeyError:
        return None
    return None if columns is None else _matrix(columns.T, schema)


def _frame(fmt: str, data: Any, schema: InputSchema | None) -> pd.DataFrame:
    """The JSON payload of one scoring format as a DataFrame (not yet checked).

    Raises:
        Reject: the payload is not shaped as its format says, or pandas
            cannot make a table of it.
    """
    try:
        return _table(fmt, data, schema)
    except (ValueError, TypeError) as exc:
        raise Reject(f"'{fmt}' is not a table: {exc}") from exc


def _table(fmt: str, data: Any, schema: InputSchema | None) -> pd.DataFrame:
    """Rows (objects or lists), one object per row, or an object of columns, as a table."""
    if fmt == "dataframe_split":
        return _split_table(data, schema)
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return pd.DataFrame.from_records(data) if data else pd.DataFrame()
    if fmt == "dataframe_records":
        raise Reject("'dataframe_records' must be a list of objects, one per row")
    if isinstance(data, list):
        return _positional(fmt, data, "", schema)
    if isinstance(data, dict):
        if all(isinstance(value, list) for value in data.values()):
            return pd.DataFrame(data)
        if not any(isinstance(value, list | dict) for value in data.values()):
            return pd.DataFrame([data])
    raise Reject(f"'{fmt}' must be a list of rows (objects or lists) or an object of columns")


def _split_table(data: Any, schema: InputSchema | None) -> pd.DataFrame:
    """``dataframe_split``: ``data`` (rows) named by ``columns``, or in signature order."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise Reject(
            "'dataframe_split' must be an object with 'data' (a list of rows) "
            "and optionally 'columns' and 'index'"
        )
    if data.get("columns") is None:
        return _positional("dataframe_split", data["data"], " of 'data'", schema)
    if not all(isinstance(row, list) for row in data["data"]):
        raise Reject("'dataframe_split': each row of 'data' must be a list of values")
    return pd.DataFrame(data["data"], columns=data["columns"])


def _positional(fmt: str, rows: list[Any], where: str, schema: InputSchema | None) -> pd.DataFrame:
    """Rows given as lists of values: named by the signature's columns, in its order."""
    if not all(isinstance(row, list) for row in rows):
        raise Reject(f"'{fmt}': each row{where} must be a list of values")
    if schema is None:
        return pd.DataFrame(rows)
    lengths = {len(row) for row in rows}
    width = len(schema.columns)
    if lengths != {width}:
        got = ", ".join(str(n) for n in sorted(lengths))
        raise Reject(
            f"'{fmt}': rows have {got} values; the model's signature has {width} columns "
            "(name them, or give the values in the signature's order)"
        )
    return pd.DataFrame(rows, columns=list(schema.columns))


def _show(value: Any) -> str:
    """A value as a message shows it: its JSON, cut short, and what it is."""
    kinds = {str: "a string", bool: "a boolean", list: "a list", dict: "an object"}
    try:
        text = orjson.dumps(value, default=str).decode()
    except orjson.JSONEncodeError:  # nested too deeply for orjson
        text = "..."
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} ({kinds.get(type(value), type(value).__name__)})"


def _fail_at_first(values: pd.Series, bad: pd.Series, expected: str) -> None:
    """Raise a ValueError naming the first row ``bad`` marks, if any, and its value."""
    if bad.any():
        row = bad[bad].index[0]
        raise ValueError(f"row {row} has {_show(values[row])}; expected {expected}")


def _as_numbers(values: pd.Series, null: pd.Series, text: bool) -> pd.Series:
    """A column that is not all numbers yet, as float64; text (CSV) may spell numbers."""
    if text:
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna() & ~null
    else:
        numbers = values
        bad = values[~null].map(lambda v: isinstance(v, bool) or not isinstance(v, int | float))
    _fail_at_first(values, bad, "a number")
    return numbers.astype(np.float64)


def _to_number(values: pd.Series, null: pd.Series, text: bool, dtype: np.dtype) -> pd.Series:
    numbers = values
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        numbers = _as_numbers(values, null, text)
    if dtype.kind != "i":
        return numbers.astype(dtype)
    present = numbers[~null]
    whole = present == np.round(present)
    if not whole.all():
        row = whole[~whole].index[0]
        raise ValueError(f"row {row} has {numbers[row]!r}; expected an integer")
    return numbers.astype(dtype) if not null.any() else numbers.astype(np.float64)


def _to_boolean(values: pd.Series, null: pd.Series, text: bool) -> pd.Series:
    if not pd.api.types.is_bool_dtype(values):
        bad = values[~null].map(lambda v: not isinstance(v, bool | np.bool_))
        _fail_at_first(values, bad, "true or false")
    return values


def _to_string(values: pd.Series, null: pd.Series, text: bool) -> pd.Series:
    if text:
        return values.map(lambda v: v if v is None or isinstance(v, str) else str(v))
    _fail_at_first(values, values[~null].map(lambda v: not isinstance(v, str)), "a string")
    return values


def _to_datetime(values: pd.Series, null: pd.Series, text: bool) -> pd.Series:
    try:
        return pd.to_datetime(values)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a date and time: {exc}") from None


def _to_binary(values: pd.Series, null: pd.Series, text: bool) -> pd.Series:
    def decode(v: Any) -> Any:
        return v if v is None or isinstance(v, bytes) else base64.b64decode(v)

    try:
        return values.map(decode)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not base64: {exc}") from None


#: how a column of each signature type is converted: (values, nulls, came from text) → column
_CONVERTERS: dict[str, Callable[[pd.Series, pd.Series, bool], pd.Series]] = {
    **{
        kind: functools.partial(_to_number, dtype=np.dtype(number))
        for kind, number in _NUMBER_KINDS.items()
    },
    "boolean": _to_boolean,
    "string": _to_string,
    "datetime": _to_datetime,
    "binary": _to_binary,
}


def _coerce(values: pd.Series, kind: str, required: bool, text: bool) -> pd.Series:
    """One column converted to its signature type; raises ValueError naming the bad row."""
    null = values.isna()
    if required and null.any():
        raise ValueError(f"row {int(np.argmax(null.to_numpy()))} has no value")
    convert = _CONVERTERS.get(kind)
    return values if convert is None else convert(values, null, text)


def check_frame(frame: pd.DataFrame, schema: InputSchema, text: bool = False) -> pd.DataFrame:
    """A request's table checked against the signature: its columns, in order, typed.

    Args:
        frame: the parsed request; extra columns are dropped, as MLflow does.
        schema: the model's input schema.
        text: the values came from text (CSV), so numbers may be written as strings.

    Raises:
        Reject: naming the missing columns, or each column with a bad value.
    """
    if frame.columns.has_duplicates:
        twice = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise Reject(f"duplicate columns: {', '.join(repr(c) for c in twice)}")
    if (message := schema.missing(list(frame.columns))) is not None:
        raise Reject(message)
    if frame.empty:
        raise Reject("the request has no rows to predict")
    frame = frame.reset_index(drop=True)
    problems: list[str] = []
    checked: dict[str, pd.Series] = {}
    for name, kind, required in zip(schema.columns, schema.kinds, schema.required, strict=True):
        try:
            checked[name] = _coerce(frame[name], kind, required, text)
        except ValueError as exc:
            problems.append(f"column '{name}' ({kind}): {exc}")
    if problems:
        more = f" (and {len(problems) - 5} more columns)" if len(problems) > 5 else ""
        raise Reject("; ".join(problems[:5]) + more)
    return pd.DataFrame(checked)
