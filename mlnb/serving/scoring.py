"""Scoring one request: a body in MLflow's scoring protocol → predictions of one version.

Split from :mod:`mlnb.serve` (the service around it) so that each reads on its
own. The fast path parses with orjson straight into a float64 matrix in the
signature's column order and calls the scikit-learn flavor's ``predict``;
anything it does not take cleanly is checked column by column in pandas, so a
client error names the column, row and value at fault. Models without a
column signature go through MLflow's own scoring-server parser.
"""

from __future__ import annotations

import difflib
import inspect
import io
import logging
import operator
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

logger = logging.getLogger("mlnb.serve")

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
JSON, CSV, PARQUET = "application/json", "text/csv", "application/vnd.apache.parquet"
_NUMBER_KINDS = {"double": np.float64, "float": np.float32, "long": np.int64, "integer": np.int32}
_ERROR_KINDS = {400: "bad_request", 404: "not_found", 413: "too_large", 415: "media_type"}


class Reject(Exception):
    """A request answered with a JSON error ``{"error_code", "message"}``.

    ``kind`` labels the error in the metrics.
    """

    def __init__(
        self, message: str, status: int = 400, code: str = "BAD_REQUEST", kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.kind = kind or _ERROR_KINDS.get(status, "internal")
        self.message = message if len(message) <= 2000 else message[:1997] + "..."

    def body(self) -> bytes:
        return orjson.dumps({"error_code": self.code, "message": self.message})


# --- the input schema and the checks against it ------------------------------------------------


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
    def of(cls, signature: Any) -> InputSchema | None:
        """The schema of a signature with named scalar columns; ``None`` for any other."""
        from mlflow.types import DataType

        inputs = getattr(signature, "inputs", None)
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
        extra = [str(c) for c in present if c not in set(self.columns)]
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
        if not isinstance(data, dict):
            return None
        matrix, names = _numbers(data.get("data")), data.get("columns")
        if matrix is not None and names is not None and names != schema.names:
            if len(names) != matrix.shape[1] or len(set(names)) != len(names):
                return None
            if schema.missing(names) is not None:
                return None
            where = {name: i for i, name in enumerate(names)}
            matrix = matrix[:, [where[c] for c in schema.columns]]
        return _matrix(matrix, schema)
    if isinstance(data, list) and data and isinstance(data[0], dict):
        try:
            return _matrix(_numbers(list(map(schema.row_of, data))), schema)
        except (KeyError, TypeError):
            return None
    if fmt == "dataframe_records":
        return None
    if isinstance(data, list) and data and isinstance(data[0], list):
        return _matrix(_numbers(data), schema)
    if isinstance(data, dict):
        try:
            columns = _numbers([data[c] for c in schema.columns])
        except KeyError:
            return None
        return None if columns is None else _matrix(columns.T, schema)
    return None


def _frame(fmt: str, data: Any, schema: InputSchema | None) -> pd.DataFrame:
    """The JSON payload of one scoring format as a DataFrame (not yet checked)."""
    width = len(schema.columns) if schema else None

    def positional(rows: list[Any], where: str) -> pd.DataFrame:
        if not all(isinstance(row, list) for row in rows):
            raise Reject(f"'{fmt}': each row{where} must be a list of values")
        lengths = {len(row) for row in rows}
        if schema is None:
            return pd.DataFrame(rows)
        if lengths != {width}:
            got = ", ".join(str(n) for n in sorted(lengths))
            raise Reject(
                f"'{fmt}': rows have {got} values; the model's signature has {width} columns "
                "(name them, or give the values in the signature's order)"
            )
        return pd.DataFrame(rows, columns=list(schema.columns))

    try:
        if fmt == "dataframe_split":
            if not isinstance(data, dict) or not isinstance(data.get("data"), list):
                raise Reject(
                    "'dataframe_split' must be an object with 'data' (a list of rows) "
                    "and optionally 'columns' and 'index'"
                )
            if data.get("columns") is None:
                return positional(data["data"], " of 'data'")
            if not all(isinstance(row, list) for row in data["data"]):
                raise Reject("'dataframe_split': each row of 'data' must be a list of values")
            return pd.DataFrame(data["data"], columns=data["columns"])
        if isinstance(data, list) and all(isinstance(row, dict) for row in data):
            return pd.DataFrame.from_records(data) if data else pd.DataFrame()
        if fmt == "dataframe_records":
            raise Reject("'dataframe_records' must be a list of objects, one per row")
        if isinstance(data, list):
            return positional(data, "")
        if isinstance(data, dict):
            if all(isinstance(value, list) for value in data.values()):
                return pd.DataFrame(data)
            if not any(isinstance(value, list | dict) for value in data.values()):
                return pd.DataFrame([data])
        raise Reject(f"'{fmt}' must be a list of rows (objects or lists) or an object of columns")
    except Reject:
        raise
    except (ValueError, TypeError) as exc:
        raise Reject(f"'{fmt}' is not a table: {exc}") from exc


def _show(value: Any) -> str:
    kinds = {str: "a string", bool: "a boolean", list: "a list", dict: "an object"}
    text = orjson.dumps(value, default=str).decode()
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} ({kinds.get(type(value), type(value).__name__)})"


def _coerce(values: pd.Series, kind: str, required: bool, text: bool) -> pd.Series:
    """One column converted to its signature type; raises ValueError naming the bad row."""
    null = values.isna()
    if required and null.any():
        raise ValueError(f"row {int(np.argmax(null.to_numpy()))} has no value")
    present = values[~null]
    if kind in _NUMBER_KINDS:
        dtype = np.dtype(_NUMBER_KINDS[kind])
        numbers = values
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            if text:
                numbers = pd.to_numeric(values, errors="coerce")
                bad = numbers.isna() & ~null
            else:
                bad = present.map(lambda v: isinstance(v, bool) or not isinstance(v, int | float))
            if bad.any():
                row = bad[bad].index[0]
                raise ValueError(f"row {row} has {_show(values[row])}; expected a number")
            numbers = numbers.astype(np.float64)
        if dtype.kind == "i":
            whole = numbers[~null] == np.round(numbers[~null])
            if not whole.all():
                row = whole[~whole].index[0]
                raise ValueError(f"row {row} has {numbers[row]!r}; expected an integer")
            return numbers.astype(dtype) if not null.any() else numbers.astype(np.float64)
        return numbers.astype(dtype)
    if kind == "boolean":
        if not pd.api.types.is_bool_dtype(values):
            bad = present.map(lambda v: not isinstance(v, bool | np.bool_))
            if bad.any():
                row = bad[bad].index[0]
                raise ValueError(f"row {row} has {_show(values[row])}; expected true or false")
        return values
    if kind == "string":
        if text:
            return values.map(lambda v: v if v is None or isinstance(v, str) else str(v))
        bad = present.map(lambda v: not isinstance(v, str))
        if bad.any():
            row = bad[bad].index[0]
            raise ValueError(f"row {row} has {_show(values[row])}; expected a string")
        return values
    if kind == "datetime":
        try:
            return pd.to_datetime(values)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a date and time: {exc}") from None
    if kind == "binary":
        import base64

        def decode(v: Any) -> Any:
            return v if v is None or isinstance(v, bytes) else base64.b64decode(v)

        try:
            return values.map(decode)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not base64: {exc}") from None
    return values


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


# --- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """One loaded model version, immutable: a request holds it from start to end."""

    version: str
    source: str
    run_id: str | None
    flavor: str  # "sklearn": its own predict on a matrix or frame; "pyfunc": the MLflow wrapper
    predict: Callable[..., Any]
    schema: InputSchema | None
    mlflow_schema: Any  # the signature's input schema as MLflow has it, or None
    wants_matrix: bool
    takes_params: bool
    loaded_at: datetime


def load_version(client: MlflowClient, name: str, version: str, uri: str) -> Served:
    """Load one registered version: its signature, and the fastest flavor that predicts.

    Raises:
        MlflowException, OSError or whatever the model's loader raises.
    """
    import mlflow.pyfunc
    from mlflow.models import Model

    found = client.get_model_version(name, version)
    source = client.get_model_version_download_uri(name, version)
    if source.startswith("file:"):  # Model.load takes a path, not a file URI
        from mlflow.utils.file_utils import local_file_uri_to_path

        source = local_file_uri_to_path(source)
    elif source.startswith("mlflow-artifacts:") and uri.startswith(("http://", "https://")):
        from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

        source = MlflowArtifactsRepository.resolve_uri(source, uri)
    meta = Model.load(source)
    schema = InputSchema.of(meta.signature)
    conf = meta.flavors.get("python_function", {})
    sklearn_flavor = "sklearn" in meta.flavors and conf.get("loader_module") == "mlflow.sklearn"
    if schema is not None and sklearn_flavor:
        import mlflow.sklearn

        model = mlflow.sklearn.load_model(source)
        names = getattr(model, "feature_names_in_", None)
        matrix = schema.numeric and (names is None or list(names) == schema.names)
        if matrix and names is not None:
            # the matrix holds exactly the columns the model was fitted on, in order
            warnings.filterwarnings("ignore", "X does not have valid feature names", UserWarning)
        predict = _trusting(getattr(model, conf.get("predict_fn", "predict")))
        flavor, takes_params = "sklearn", False
    else:
        model = mlflow.pyfunc.load_model(source)
        predict, flavor, matrix = model.predict, "pyfunc", False
        takes_params = "params" in inspect.signature(model.predict).parameters
    return Served(
        version=str(version),
        source=source,
        run_id=found.run_id,
        flavor=flavor,
        predict=predict,
        schema=schema,
        mlflow_schema=meta.get_input_schema(),
        wants_matrix=matrix,
        takes_params=takes_params,
        loaded_at=datetime.now(UTC),
    )


def _trusting(predict: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``predict`` that spares scikit-learn its finiteness checks on a matrix known finite.

    Every step of a pipeline checks its input for NaN and infinity again; one
    ``np.isfinite`` here instead saves a tenth of a one-row predict. Inputs
    with NaN or infinity get scikit-learn's checks, and its errors.
    """
    import sklearn

    def run(batch: Any) -> Any:
        if isinstance(batch, np.ndarray) and np.isfinite(batch).all():
            with sklearn.config_context(assume_finite=True):
                return predict(batch)
        return predict(batch)

    return run


def _jsonable(value: Any) -> Any:
    """Predictions in a form orjson writes: NumPy arrays as they are, frames as records."""
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value) if value.dtype.kind in "biuf" else value.tolist()
    if isinstance(value, pd.DataFrame):
        return value.to_dict(orient="records")
    if isinstance(value, pd.Series):
        return _jsonable(value.to_numpy())
    if isinstance(value, tuple):
        return list(value)
    return value


def _count(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 1


def error_text(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, MlflowException) else text


def score(served: Served, mime: str, body: bytes) -> tuple[Any, list[str], Any, int]:
    """Parse, check and predict one request body.

    Returns:
        The predictions, the input column names, the inputs as the model saw
        them (for the log) and the number of rows.

    Raises:
        Reject: the body is not a table the model's signature accepts, or the
            model failed on it.
    """
    schema, params = served.schema, None
    if mime == JSON:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Reject(f"malformed JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise Reject(
                f"the JSON body must be an object with one of the keys {', '.join(FORMATS)}; "
                f"got {_show(doc)}"
            )
        keys = [key for key in FORMATS if key in doc]
        if len(keys) != 1:
            raise Reject(
                f"the JSON body must have exactly one of the keys {', '.join(FORMATS)}; "
                f"it has {', '.join(repr(k) for k in doc) or 'none'}"
            )
        fmt, data, params = keys[0], doc[keys[0]], doc.get("params")
        if schema is None:
            batch = _mlflow_parse(doc, fmt, served)
        else:
            # NumPy would read a JSON boolean among numbers as 0 or 1: leave those to pandas
            fast = served.wants_matrix and b"true" not in body and b"false" not in body
            batch = _fast(fmt, data, schema) if fast else None
            if batch is None:
                batch = check_frame(_frame(fmt, data, schema), schema)
    else:
        try:
            if mime == CSV:
                frame = pd.read_csv(io.BytesIO(body))
            else:
                frame = pd.read_parquet(io.BytesIO(body))
        except Exception as exc:  # pandas raises many kinds for a body it cannot read
            what = "CSV" if mime == CSV else "Parquet"
            raise Reject(f"cannot read the body as {what}: {error_text(exc)}") from None
        batch = frame if schema is None else check_frame(frame, schema, text=mime == CSV)
    if isinstance(batch, pd.DataFrame) and served.wants_matrix:
        batch = np.ascontiguousarray(batch.to_numpy(dtype=np.float64))
    try:
        if params is not None and served.takes_params:
            raw = served.predict(batch, params=params)
        else:
            raw = served.predict(batch)
    except Exception as exc:
        logger.warning("version %s could not predict: %s", served.version, error_text(exc))
        raise Reject(
            f"the model could not predict on this input: {error_text(exc)}", kind="model_error"
        ) from None
    if isinstance(batch, np.ndarray) and schema is not None:
        columns, inputs = schema.names, batch
    elif isinstance(batch, pd.DataFrame):
        columns = [str(c) for c in batch.columns]
        inputs = batch.to_numpy(dtype=object).tolist()
    else:
        columns, inputs = [], [_jsonable(batch)]
    return _jsonable(raw), columns, inputs, _count(inputs)


def _mlflow_parse(doc: dict[str, Any], fmt: str, served: Served) -> Any:
    """Parse with MLflow's scoring-server code (for models without a column signature)."""
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    try:
        return infer_and_parse_data({fmt: doc[fmt]}, served.mlflow_schema)
    except MlflowException as exc:
        raise Reject(exc.message) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise Reject(f"'{fmt}' is not a table: {error_text(exc)}") from None
