"""Reading a request's rows, bounded, and the fast path for all-numeric signatures.

A request that cannot be scored is a :class:`Reject`: the HTTP front answers
it with a JSON error ``{"error_code", "message"}`` in MLflow's shape that
names the problem.

Design decisions:

- **MLflow's rules define the answer.** What a request means (its nulls,
  MLflow's coercions, ``params``, tensors, dicts, chat payloads) is what
  ``mlflow models serve`` makes of it: :mod:`mlnb.serving.scoring` hands
  every request the fast path does not take to MLflow's own parsers and the
  pyfunc model's schema enforcement.
- **The fast path only where it agrees.** :func:`_fast` reads the payload
  of each JSON scoring format straight into a float64 matrix in the
  signature's column order, when every input column is numeric and every
  value a number that MLflow would convert without loss to its column's
  type (a whole number in a ``long``, one within range in an ``integer``;
  ``float`` columns are rounded to float32 as MLflow's cast rounds them).
  It answers ``None`` for anything else (a string, a null, a boolean, a
  fraction in an integer column, a column missing), never an error.
- **The cost is bounded before the work.** :class:`Limits` caps a request's
  columns, rows and values (rows × columns), a Parquet body's uncompressed
  size and a JSON body's nesting. Each is checked on what is known before
  the table is built: the JSON document's lengths, a CSV body's header row
  (read by :mod:`csv`) and its line count (pandas counts the rows exactly
  only when the lines are over the limit), a Parquet body's footer (its row
  count and uncompressed size) with the rows decoded in batches and counted
  as they come. A request over a limit is a 413 that names the limit.
"""

from __future__ import annotations

import csv
import difflib
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
    "bad_request",
    "not_found",
    "too_large",
    "media_type",
    "model_error",
    "timeout",
    "log",
    "internal",
]
_ERROR_KINDS: dict[int, ErrorKind] = {
    400: "bad_request",
    404: "not_found",
    413: "too_large",
    415: "media_type",
    504: "timeout",
}
_NUMBER_KINDS = {"double": np.float64, "float": np.float32, "long": np.int64, "integer": np.int32}
#: a JSON string, escapes included (skipped when the nesting of a body is measured)
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_PARQUET_BATCH = 65_536  # rows decoded at a time from a Parquet body
_INT32 = np.iinfo(np.int32)


class Reject(Exception):
    """A request answered with a JSON error ``{"error_code", "message"}``.

    Attributes:
        status: the HTTP status of the answer.
        code: its ``error_code`` (MLflow's names: ``BAD_REQUEST``, ...).
        kind: the error's label in the metrics (by default, from the status).
        message: the message, cut to 2000 characters.
        version: the model version that refused it, when one was chosen (a
            canary's request names the canary's version); ``None`` else.
    """

    version: str | None = None

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

    @classmethod
    def of_mlflow(cls, exc: Any, message: str | None = None) -> Reject:
        """The answer MLflow's scoring server gives for an ``MlflowException``: its status and code.

        ``message`` replaces MLflow's text (which may quote the whole request).
        """
        return cls(message or exc.message, exc.get_http_status_code(), exc.error_code)


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


def check_csv(body: bytes, limits: Limits, signature_columns: int = 0) -> None:
    """A :class:`Reject` (413) if a CSV body's header is too wide or its rows too many.

    The rows are bounded by the body's line count; only when that is over the
    limit (quoted values may hold line breaks) does pandas count them, reading
    no more than one row past the limit.
    """
    columns = _csv_width(body)
    limits.check(1, columns, signature_columns)
    most, limit = limits.rows_for(columns)
    if body.count(b"\n") <= most:
        return
    try:
        rows = len(pd.read_csv(io.BytesIO(body), nrows=most + 1, dtype=str))
    except Exception:  # pandas raises many kinds; MLflow's parser names the problem
        return
    if rows > most:
        unit = "rows" if limit == "max_rows" else f"rows of {columns:,} columns"
        raise _over(limit, rows, most, unit)


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
    int32: list[int] = field(init=False)  # the ``integer`` columns: whole numbers within int32
    float32: list[int] = field(init=False)  # the ``float`` columns: MLflow casts them to float32
    names: list[str] = field(init=False)
    row_of: Callable[[dict[str, Any]], Sequence[Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "numeric", all(kind in _NUMBER_KINDS for kind in self.kinds))
        set_(self, "integral", [i for i, k in enumerate(self.kinds) if k in ("long", "integer")])
        set_(self, "int32", [i for i, k in enumerate(self.kinds) if k == "integer"])
        set_(self, "float32", [i for i, k in enumerate(self.kinds) if k == "float"])
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
    # unsigned: a whole number beyond int64, which MLflow's cast refuses
    return matrix if matrix.dtype.kind in "if" and matrix.ndim == 2 and matrix.size else None


def _matrix(matrix: np.ndarray | None, schema: InputSchema) -> np.ndarray | None:
    """One column per signature column, as float64 with the values MLflow's cast gives them.

    ``None`` where MLflow would convert differently: a fraction in an integer
    column, a ``long`` beyond int64, an ``integer`` beyond int32.
    """
    if matrix is None or matrix.shape[1] != len(schema.columns):
        return None
    if schema.integral:
        part = matrix[:, schema.integral]
        if matrix.dtype.kind == "f" and not np.array_equal(part, np.round(part)):
            return None
        if part.min() < -(2.0**63) or part.max() >= 2.0**63:  # beyond int64: MLflow refuses
            return None
    if schema.int32:
        part = matrix[:, schema.int32]
        if part.min() < _INT32.min or part.max() > _INT32.max:
            return None
    result = np.array(matrix, dtype=np.float64, order="C", copy=True)
    if schema.float32:
        cols = schema.float32
        result[:, cols] = result[:, cols].astype(np.float32).astype(np.float64)
    return result


def _fast(fmt: str, data: Any, schema: InputSchema) -> np.ndarray | None:
    """The JSON payload as a float64 matrix in signature order, or ``None`` for MLflow's path.

    Takes rows named by ``columns`` (``dataframe_split``), records (objects;
    extra keys ignored) and objects of columns, all numbers. Rows of values
    without names are MLflow's to refuse (its schema names no column 0).
    """
    if fmt == "dataframe_split":
        return _fast_split(data, schema) if isinstance(data, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return _fast_records(data, schema)
    if fmt == "dataframe_records":
        return None
    if isinstance(data, dict):
        return _fast_columns(data, schema)
    return None


def _fast_split(data: dict[str, Any], schema: InputSchema) -> np.ndarray | None:
    """``dataframe_split``: rows in the order ``columns`` names them, an index of as many."""
    names, index = data.get("columns"), data.get("index")
    if names is None or not data.keys() <= {"columns", "data", "index"}:
        return None  # fields MLflow refuses: MLflow's path
    matrix = _numbers(data.get("data"))
    if index is not None and (
        not isinstance(index, list) or matrix is None or len(index) != len(matrix)
    ):
        return None  # an index pandas may refuse (or not a list): MLflow's path
    if matrix is None or names == schema.names:
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


def _show(value: Any) -> str:
    """A value as a message shows it: its JSON, cut short, and what it is."""
    kinds = {str: "a string", bool: "a boolean", list: "a list", dict: "an object"}
    try:
        text = orjson.dumps(value, default=str).decode()
    except orjson.JSONEncodeError:  # nested too deeply for orjson
        text = "..."
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} ({kinds.get(type(value), type(value).__name__)})"
