"""Scoring one request: a body in MLflow's scoring protocol → the answer of one version.

:func:`load_version` loads a registered version as a :class:`Served`;
:func:`score` parses, predicts and answers one request body with it (the
bounds and the fast path are in :mod:`mlnb.serving.parsing`).

Design decisions:

- **MLflow's answer, faster.** Whatever ``mlflow models serve`` answers
  200 for, mlnb answers the same predictions, serialized as MLflow
  serializes them. The common case takes a fast path: a version logged by
  ``mlflow.sklearn`` with a signature of numeric columns predicts with the
  estimator itself on a float64 matrix (for one row 0.23 ms, against 1.3 ms
  for the pyfunc wrapper on a DataFrame), on exactly the values MLflow's
  schema enforcement would give it, and its finite numeric predictions are
  written by orjson (as Python's ``json`` writes them; float32 widened
  first, as MLflow's encoder does). Every other request goes through
  MLflow's own code: its scoring-server parsers (``_parse_json_data``,
  ``parse_csv_input``, nulls, coercions, ``params``, tensors, dicts, chat
  payloads), the pyfunc model's ``predict`` (which enforces the signature)
  and MLflow's ``predictions_to_json`` (NaN, DataFrames, dicts, NumPy).
- **One model in memory.** A version is loaded once, with
  ``mlflow.pyfunc``; the fast path predicts with the raw estimator that
  the pyfunc wrapper holds.
- **MLflow's status and code, mlnb's message.** A request MLflow refuses is
  refused with MLflow's HTTP status and ``error_code``; the message says
  what is wrong without quoting the whole request back (a missing column
  is named, with a near typo).
- **A model's failure is the client's answer.** An exception from ``predict``
  is a 400 that says what the model said (and a warning in the server log),
  never a traceback.
- **Answered means serializable.** The response body is made before the
  request is logged, so a prediction that cannot be written as JSON is a
  500 that leaves no record.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import orjson
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlnb.serving.parsing import (
    CSV,
    DEFAULT_LIMITS,
    FORMATS,
    JSON,
    InputSchema,
    Limits,
    Reject,
    _fast,
    _show,
    check_csv,
    read_parquet,
    table_size,
)

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel
    from mlflow.types import Schema

logger = logging.getLogger(__name__)

#: how a version predicts on the fast path: the scikit-learn estimator itself, or none
Flavor = Literal["sklearn", "pyfunc"]
#: what the model is given: a float64 matrix, or what MLflow's parser made of the body
Batch = Any
_DUMP = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
#: an integer of 19 digits or more: beyond int64 perhaps, which orjson reads as a float
_BIG_INTEGER = re.compile(rb"(?<![\d.eE])\d{19,}(?![\d.eE])")
#: the keys of MLflow's unwrapped chat, completions and embeddings payloads
_LLM_KEYS = ("messages", "prompt", "input")


@dataclass(frozen=True)
class Served:
    """One loaded model version, immutable: a request holds it from start to end.

    Attributes:
        version: the registry version.
        source: where its files were loaded from.
        run_id: the run that logged it.
        flavor: ``sklearn`` (the fast path predicts with the estimator on a
            matrix) or ``pyfunc`` (every request goes through MLflow's wrapper).
        model: MLflow's pyfunc model, which answers every request the fast path does not take.
        predict: the estimator's predict on a matrix (the fast path); ``model.predict`` else.
        schema: its column signature as the fast path reads it; ``None`` without one.
        mlflow_schema: the signature's input schema as MLflow has it, or ``None``.
        wants_matrix: ``predict`` takes a float64 matrix in signature order.
        takes_params: the pyfunc model's ``predict`` takes the request's ``params``.
        loaded_at: when it was loaded.
    """

    version: str
    source: str
    run_id: str | None
    flavor: Flavor
    model: PyFuncModel
    predict: Callable[..., Any]
    schema: InputSchema | None
    mlflow_schema: Schema | None
    wants_matrix: bool
    takes_params: bool
    loaded_at: datetime


class Scored(NamedTuple):
    """One request scored: the answer, and what the prediction log keeps."""

    answer: bytes  # the response body
    outputs: Any  # the predictions, as the log keeps them
    columns: list[str]  # the input column names, in the order of each row of ``inputs``
    inputs: Any  # the rows as the model saw them (a matrix or a list of rows)
    rows: int


def load_version(client: MlflowClient, name: str, version: str, uri: str) -> Served:
    """Load one registered version: MLflow's pyfunc model, and the fast path when it has one.

    Raises:
        MlflowException, OSError or whatever the model's loader raises.
    """
    import mlflow.pyfunc

    found = client.get_model_version(name, version)
    source = _local_source(client, name, version, uri)
    model = mlflow.pyfunc.load_model(source)
    meta = model.metadata
    schema = InputSchema.of(meta.signature)
    conf = meta.flavors.get("python_function", {})
    flavor: Flavor = "pyfunc"
    predict, wants_matrix = model.predict, False
    if schema is not None and conf.get("loader_module") == "mlflow.sklearn":
        estimator = model.get_raw_model()
        flavor = "sklearn"
        predict = _trusting(getattr(estimator, conf.get("predict_fn", "predict")))
        wants_matrix = _takes_matrix(estimator, schema)
    return Served(
        version=str(version),
        source=source,
        run_id=found.run_id,
        flavor=flavor,
        model=model,
        predict=predict,
        schema=schema,
        mlflow_schema=meta.get_input_schema(),
        wants_matrix=wants_matrix,
        takes_params="params" in inspect.signature(model.predict).parameters,
        loaded_at=datetime.now(UTC),
    )


def _local_source(client: MlflowClient, name: str, version: str, uri: str) -> str:
    """Where MLflow loads a version's files from: a path, or a URI it can read."""
    source = client.get_model_version_download_uri(name, version)
    if source.startswith("file:"):  # a path, not a file URI
        from mlflow.utils.file_utils import local_file_uri_to_path

        return str(local_file_uri_to_path(source))
    if source.startswith("mlflow-artifacts:") and uri.startswith(("http://", "https://")):
        from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

        return str(MlflowArtifactsRepository.resolve_uri(source, uri))
    return source


def _takes_matrix(estimator: Any, schema: InputSchema) -> bool:
    """The estimator predicts on a matrix: every input numeric, in the order it was fitted."""
    names = getattr(estimator, "feature_names_in_", None)
    matrix = schema.numeric and (names is None or list(names) == schema.names)
    if matrix and names is not None:
        # the matrix holds exactly the columns the model was fitted on, in order
        warnings.filterwarnings("ignore", "X does not have valid feature names", UserWarning)
    return matrix


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


def _loggable(value: Any) -> Any:
    """Predictions in a form the prediction log writes: arrays as they are, frames as records."""
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value) if value.dtype.kind in "biuf" else value.tolist()
    if isinstance(value, pd.DataFrame):
        return value.to_dict(orient="records")
    if isinstance(value, pd.Series):
        return _loggable(value.to_numpy())
    if isinstance(value, tuple):
        return list(value)
    return value


def _count(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 1


def error_text(exc: BaseException) -> str:
    """An exception as one line for a message: MLflow's own text, or its type and text."""
    text = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, MlflowException) else text


def score(
    served: Served,
    mime: str,
    body: bytes,
    limits: Limits = DEFAULT_LIMITS,
    fields: dict[str, str] | None = None,
) -> Scored:
    """Parse, predict and answer one request body.

    Args:
        served: the version that answers.
        mime: the body's media type: :data:`~mlnb.serving.parsing.JSON`,
            ``CSV`` or ``PARQUET`` (the HTTP front has checked it is one).
        body: the request body, not empty.
        limits: what one request may hold, checked before it is parsed whole.
        fields: added to the answer's object beside ``predictions``
            (``model_version``, ``request_id``); not to an unwrapped chat answer.

    Raises:
        Reject: the body is over a limit (413), MLflow's scoring server
            refuses it (its status and code), or the model failed on it.
    """
    fields = fields or {}
    if (
        mime == JSON
        and served.wants_matrix
        and (matrix := _fast_matrix(served, body, limits)) is not None
    ):
        return _fast_answer(served, matrix, fields)
    return _score_parsed(served, mime, body, limits, fields)


def _score_parsed(
    served: Served, mime: str, body: bytes, limits: Limits, fields: dict[str, str]
) -> Scored:
    """:func:`score` past the fast path: MLflow's parsers, schema enforcement and writer."""
    if mime == JSON:
        doc = _json_document(body, limits)
        _check_table(served, doc, limits)
        batch, params, unwrapped = _parse_json(served, doc)
    else:
        batch, params, unwrapped = _parse_file(served, mime, body, limits), None, False
    outputs = _predict(served, batch, params)
    answer = _answer(outputs, unwrapped, fields)
    columns, inputs = _as_logged(batch, served.schema)
    return Scored(answer, _loggable(outputs), columns, inputs, _count(inputs))


def score_many(
    served: Served, bodies: Sequence[tuple[str, bytes]], limits: Limits = DEFAULT_LIMITS
) -> list[Any | Reject]:
    """The predictions of several request bodies by one version, with fewer model calls.

    The bodies the fast path takes are stacked into one matrix and predicted
    in one call (a shadow's queue of 1-row requests costs one predict, not
    one each); the others are scored one by one. When the stacked call
    fails, each of its bodies is predicted alone, so one bad request does
    not fail the others.

    Returns:
        For each body, in order, its predictions as the log keeps them, or
        the :class:`Reject` it got.
    """
    results: list[Any | Reject] = [None] * len(bodies)
    stacked: list[tuple[int, np.ndarray]] = []
    for index, (mime, body) in enumerate(bodies):
        try:
            matrix = None
            if mime == JSON and served.wants_matrix:
                matrix = _fast_matrix(served, body, limits)
            if matrix is None:
                results[index] = _score_parsed(served, mime, body, limits, {}).outputs
            else:
                stacked.append((index, matrix))
        except Reject as reject:
            results[index] = reject
    if not stacked:
        return results
    outputs: Any = None
    if len(stacked) > 1:
        try:
            outputs = _predict(served, np.vstack([m for _, m in stacked]), None, fast=True)
        except Reject:
            outputs = None
    if isinstance(outputs, np.ndarray) and len(outputs) == sum(len(m) for _, m in stacked):
        ends = np.cumsum([len(m) for _, m in stacked])[:-1]
        for (index, _), part in zip(stacked, np.split(outputs, ends), strict=True):
            results[index] = _loggable(part)
        return results
    for index, matrix in stacked:
        try:
            results[index] = _loggable(_predict(served, matrix, None, fast=True))
        except Reject as reject:
            results[index] = reject
    return results


def _json_document(body: bytes, limits: Limits) -> Any:
    """A JSON body's document as MLflow reads it (Python's ``json``: NaN tokens, big integers).

    Its nesting is bounded first (Python's parser recurses).
    """
    limits.check_depth(body)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise Reject(f"malformed JSON: {exc}") from None


def _format(doc: dict[str, Any]) -> str | None:
    """The one scoring format a JSON object names, or ``None``."""
    keys = [key for key in FORMATS if key in doc]
    return keys[0] if len(keys) == 1 else None


def _fast_matrix(served: Served, body: bytes, limits: Limits) -> np.ndarray | None:
    """The body as the fast path's matrix, within the limits, or ``None`` for MLflow's path.

    orjson reads the body; anything it does not read as Python's ``json``
    would (NaN tokens, integers beyond 64 bits, which orjson makes floats)
    is left to MLflow's path.
    """
    schema = served.schema
    if schema is None or b"true" in body or b"false" in body:
        return None  # NumPy reads a boolean among numbers as 0 or 1
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or (fmt := _format(doc)) is None or "params" in doc:
        return None
    _check_table(served, doc, limits)
    if _BIG_INTEGER.search(body):
        return None
    return _fast(fmt, doc[fmt], schema)


def _check_table(served: Served, doc: Any, limits: Limits) -> None:
    """A :class:`Reject` (413) if the table of a JSON document is over a limit."""
    if isinstance(doc, dict) and (fmt := _format(doc)) is not None:
        width = len(served.schema.columns) if served.schema is not None else 0
        limits.check(*table_size(fmt, doc[fmt], limits), width)


def _fast_answer(served: Served, matrix: np.ndarray, fields: dict[str, str]) -> Scored:
    schema = served.schema
    assert schema is not None
    outputs = _predict(served, matrix, None, fast=True)
    answer = _answer(outputs, False, fields)
    return Scored(answer, _loggable(outputs), schema.names, matrix, len(matrix))


def _answer(outputs: Any, unwrapped: bool, fields: dict[str, str]) -> bytes:
    """The response body, as MLflow's ``predictions_to_json`` writes it.

    Finite numeric arrays are written by orjson, which writes what Python's
    ``json`` does for float64 and integers (float32 is widened first, as
    MLflow's encoder widens it); anything else by MLflow's own function.
    """
    numbers = isinstance(outputs, np.ndarray) and outputs.dtype.kind in "iuf"
    if numbers and not unwrapped and (outputs.dtype.kind != "f" or np.isfinite(outputs).all()):
        widened = outputs.astype(np.float64) if outputs.dtype == np.float32 else outputs
        try:
            return orjson.dumps({"predictions": widened, **fields}, option=_DUMP)
        except orjson.JSONEncodeError:
            pass  # an array orjson does not take (not contiguous, an odd dtype)
    from mlflow.pyfunc.scoring_server import predictions_to_json, unwrapped_predictions_to_json

    text = io.StringIO()
    try:
        if unwrapped:
            unwrapped_predictions_to_json(outputs, text)
        else:
            predictions_to_json(outputs, text, fields)
    except (TypeError, ValueError, MlflowException) as exc:
        logger.warning("predictions of type %s cannot be written as JSON: %s", type(outputs), exc)
        raise Reject(
            f"the model's predictions ({type(outputs).__name__}) cannot be written as JSON: "
            f"{error_text(exc)}",
            500,
            "INTERNAL_ERROR",
            "model_error",
        ) from None
    return text.getvalue().encode()


def _parse_json(served: Served, doc: Any) -> tuple[Batch, Any, bool]:
    """A JSON document as MLflow's scoring server reads it: the data, ``params``, unwrapped."""
    from mlflow.pyfunc.scoring_server import _parse_json_data

    if not isinstance(doc, dict):
        raise Reject(
            f"the JSON body must be an object with one of the keys {', '.join(FORMATS)}, "
            f"or a chat payload ({', '.join(map(repr, _LLM_KEYS))}); got {_show(doc)}"
        )
    meta = served.model.metadata
    hinted = getattr(meta, "_is_signature_from_type_hint", None)
    parsed_by_format = not (callable(hinted) and hinted())
    if parsed_by_format and _format(doc) is None and not any(key in doc for key in _LLM_KEYS):
        raise Reject(
            f"the JSON body must have exactly one of the keys {', '.join(FORMATS)}, or be a "
            f"chat payload ({', '.join(map(repr, _LLM_KEYS))}); it has "
            f"{', '.join(repr(k) for k in list(doc)[:10]) or 'none'}"
        )
    try:
        parsed = _parse_json_data(doc, meta, served.mlflow_schema)
    except MlflowException as exc:
        raise Reject.of_mlflow(exc, _without_input(exc.message)) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise Reject(f"the JSON body is not an input of this model: {error_text(exc)}") from None
    return parsed.data, parsed.params, parsed.is_unified_llm_input


def _without_input(message: str) -> str:
    """MLflow's message without the request it quotes back (``Input: ...``)."""
    return message.split("\nInput:", 1)[0].strip()


def _parse_file(served: Served, mime: str, body: bytes, limits: Limits) -> pd.DataFrame:
    """A CSV or Parquet body as MLflow's scoring server reads it, within the limits."""
    schema = served.mlflow_schema
    width = len(served.schema.columns) if served.schema is not None else 0
    if mime != CSV:
        return read_parquet(body, limits, width)
    check_csv(body, limits, width)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Reject(f"the CSV body is not UTF-8: {exc}") from None
    from mlflow.pyfunc.scoring_server import parse_csv_input

    try:
        if schema is None:
            return parse_csv_input(io.StringIO(text))
        return parse_csv_input(io.StringIO(text), schema)
    except MlflowException as exc:
        reason = _csv_problem(text, schema) or exc.message.split(" Error: ", 1)[-1]
        raise Reject.of_mlflow(exc, f"cannot read the CSV body: {reason}") from None


def _csv_problem(text: str, schema: Schema | None) -> str | None:
    """The first column, row and value of a CSV body that its signature type does not take."""
    if schema is None or not schema.has_input_names():
        return None
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        types = dict(zip(schema.input_names(), schema.pandas_types(), strict=True))
    except Exception:  # pandas and MLflow raise many kinds; MLflow's reason is kept then
        return None
    for name, dtype in types.items():
        if name not in frame.columns:
            continue
        for row, value in enumerate(frame[name]):
            try:
                pd.Series([value or None]).astype(dtype)
            except (ValueError, TypeError):
                return f"column '{name}' ({dtype}): row {row} has {value!r}"
    return None


def _predict(served: Served, batch: Batch, params: Any, fast: bool = False) -> Any:
    """The model's predictions, as MLflow's scoring server gets them.

    Raises:
        Reject: MLflow refused the input (its status and code, and what it
            found: the missing columns or the column that does not convert),
            or the model failed on it (400, what the model said).
    """
    try:
        if fast:
            return served.predict(batch)
        if served.takes_params:
            return served.model.predict(batch, params=params)
        return served.model.predict(batch)
    except MlflowException as exc:
        raise Reject.of_mlflow(exc, _mlflow_refusal(served, batch, exc)) from None
    except Exception as exc:
        logger.warning("version %s could not predict: %s", served.version, error_text(exc))
        raise Reject(
            f"the model could not predict on this input: {error_text(exc)}", kind="model_error"
        ) from None


def _mlflow_refusal(served: Served, batch: Batch, exc: MlflowException) -> str:
    """Why MLflow refused an input, without quoting it: the missing columns, or the reason."""
    enforced = served.mlflow_schema
    if getattr(exc, "error_class", None) != "SCHEMA_ENFORCEMENT_FAILED" or enforced is None:
        return exc.message
    schema = served.schema
    if schema is not None and isinstance(batch, pd.DataFrame):
        missing = schema.missing(list(batch.columns))
        if missing is not None:
            return f"the input does not fit the model's signature: {missing}"
    from mlflow.models.utils import _enforce_schema

    try:  # once more, for the reason alone (MLflow's message quotes the whole input)
        _enforce_schema(batch, enforced)
    except Exception as reason:
        return f"the input does not fit the model's signature: {error_text(reason)}"
    return exc.message


def _as_logged(batch: Batch, schema: InputSchema | None) -> tuple[list[str], Any]:
    """The input column names and rows of a batch, as the prediction log keeps them.

    A table keeps the signature's columns (the model is given no others); a
    batch that is not a table is kept whole, as one row.
    """
    if isinstance(batch, pd.DataFrame):
        if schema is not None and set(schema.columns) <= set(batch.columns):
            batch = batch[schema.names]
        return [str(c) for c in batch.columns], batch.to_numpy(dtype=object).tolist()
    return [], [_loggable(batch)]
