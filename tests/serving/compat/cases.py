"""The request cases: one request body (and media type) per (model, case).

The cases come from MLflow's scoring-server tests
(``tests/pyfunc/test_scoring_server.py``) and the documented request formats
(https://mlflow.org/docs/latest/ml/deployment/deploy-model-locally/): each
JSON format, CSV and Parquet, the media type and its parameters, malformed
and unexpected bodies, values that need a coercion or cannot have one,
columns extra, missing and out of order, zero rows, ``params``, the unified
chat format, tensors. A case is a function of a :class:`~.models.Model`
registered with :func:`case` for the models it makes sense for; it returns
the :class:`Request`, or ``None`` where the model has no column the case
needs. :func:`requests` lists every (model, case, request).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tests.serving.compat.models import MESSAGES, MODELS, Model

JSON = "application/json"
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"

#: the models with a column signature (or none), by what their columns hold
COLUMNS = ("classifier", "regressor", "unsigned", "pipeline", "frame")
NUMBERS = ("classifier", "regressor", "unsigned")
STRINGS = ("pipeline", "frame")
#: one model of each way mlnb scores: the scikit-learn fast path, MLflow's parser, pyfuncs
PROTOCOL = ("classifier", "unsigned", "tensor", "chat")
#: for the cases of the protocol that one model shows as well as four
BASIC = ("classifier",)


@dataclass(frozen=True)
class Request:
    """A body for ``POST /invocations`` and its ``Content-Type`` (``None``: no header)."""

    body: bytes
    media: str | None = JSON

    def headers(self) -> dict[str, str]:
        return {} if self.media is None else {"content-type": self.media}


Builder = Callable[[Model], Request | None]
CASES: dict[str, tuple[tuple[str, ...], Builder]] = {}


def case(models: tuple[str, ...]) -> Callable[[Builder], Builder]:
    """Register a case, named as its function (``_`` read as ``-``), for ``models``."""

    def register(build: Builder) -> Builder:
        name = build.__name__.replace("_", "-")
        assert name not in CASES and set(models) <= MODELS.keys()
        CASES[name] = (models, build)
        return build

    return register


def requests() -> Iterator[tuple[str, str, Request]]:
    """Every (model name, case name, request), models in :data:`MODELS` order."""
    for model in MODELS.values():
        for name, (models, build) in CASES.items():
            if model.name in models and (request := build(model)) is not None:
                yield model.name, name, request


def dumps(payload: Any) -> bytes:
    """JSON as Python writes it: ``NaN`` and ``Infinity`` tokens, numpy scalars as numbers."""
    return json.dumps(payload, default=lambda o: o.item()).encode()


def js(payload: Any, media: str = JSON) -> Request:
    return Request(dumps(payload), media)


def rows(model: Model) -> pd.DataFrame:
    return model.sample()


def split(frame: pd.DataFrame, index: bool = True) -> dict[str, Any]:
    parts = frame.to_dict(orient="split")
    if not index:
        del parts["index"]
    return parts


def changed(model: Model, dtype: str, value: Any, row: int = 0) -> pd.DataFrame | None:
    """The model's rows with ``value`` in ``row`` of its first column of ``dtype``."""
    columns = model.columns_of(dtype)
    if not columns:
        return None
    frame = rows(model).astype(object)
    frame.at[row, columns[0]] = value
    return frame


def as_split(frame: pd.DataFrame | None) -> Request | None:
    return None if frame is None else js({"dataframe_split": split(frame, index=False)})


def as_records(frame: pd.DataFrame | None) -> Request | None:
    return None if frame is None else js({"dataframe_records": frame.to_dict(orient="records")})


def parquet(frame: pd.DataFrame) -> Request:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return Request(buffer.getvalue(), PARQUET)


def valid(model: Model) -> dict[str, Any]:
    """A request each model answers: rows in ``dataframe_split``, a tensor, a chat."""
    if model.kind == "chat":
        return {"messages": MESSAGES}
    if model.kind == "tensor":
        return {"inputs": rows(model).to_numpy().tolist()}
    return {"dataframe_split": split(rows(model))}


# The JSON formats, CSV and Parquet.


@case(COLUMNS)
def split_with_index(model: Model) -> Request:
    return js({"dataframe_split": split(rows(model))})


@case(COLUMNS)
def split_without_index(model: Model) -> Request:
    return js({"dataframe_split": split(rows(model), index=False)})


@case(("classifier", "frame"))
def split_string_index(model: Model) -> Request:
    frame = rows(model)
    frame.index = [f"r{i}" for i in range(len(frame))]
    return js({"dataframe_split": split(frame)})


@case(COLUMNS)
def split_without_columns(model: Model) -> Request:
    return js({"dataframe_split": {"data": rows(model).to_numpy().tolist()}})


@case(COLUMNS)
def records(model: Model) -> Request:
    return js({"dataframe_records": rows(model).to_dict(orient="records")})


@case(COLUMNS)
def records_key_missing_in_a_row(model: Model) -> Request:
    records = rows(model).to_dict(orient="records")
    del records[1][next(iter(records[1]))]
    return js({"dataframe_records": records})


@case(("classifier", "unsigned", "pipeline", "frame"))
def records_many_rows(model: Model) -> Request:
    """A body of some 100 kB: past mlnb's inline size, scored on a worker."""
    frame = rows(model)
    return js({"dataframe_records": pd.concat([frame] * 300).to_dict(orient="records")})


@case(COLUMNS)
def instances_as_records(model: Model) -> Request:
    return js({"instances": rows(model).to_dict(orient="records")})


@case(COLUMNS)
def instances_as_rows(model: Model) -> Request:
    return js({"instances": rows(model).to_numpy().tolist()})


@case(COLUMNS)
def instances_as_columns(model: Model) -> Request:
    return js({"instances": rows(model).to_dict(orient="list")})


@case(COLUMNS)
def inputs_as_columns(model: Model) -> Request:
    return js({"inputs": rows(model).to_dict(orient="list")})


@case(COLUMNS)
def inputs_as_records(model: Model) -> Request:
    return js({"inputs": rows(model).to_dict(orient="records")})


@case(COLUMNS)
def inputs_as_rows(model: Model) -> Request:
    return js({"inputs": rows(model).to_numpy().tolist()})


@case(COLUMNS)
def inputs_one_row_of_scalars(model: Model) -> Request:
    return js({"inputs": rows(model).to_dict(orient="records")[0]})


@case(COLUMNS)
def csv(model: Model) -> Request:
    return Request(rows(model).to_csv(index=False).encode(), CSV)


@case(("classifier", "unsigned", "pipeline"))
def csv_with_index_column(model: Model) -> Request:
    return Request(rows(model).to_csv().encode(), CSV)


@case(COLUMNS)
def parquet_body(model: Model) -> Request:
    return parquet(rows(model))


@case(NUMBERS)
def parquet_float32_columns(model: Model) -> Request:
    frame = rows(model)
    return parquet(frame.astype({c: np.float32 for c in model.columns_of("f")}))


@case(NUMBERS)
def parquet_ints_in_doubles(model: Model) -> Request:
    frame = rows(model)
    return parquet(frame.astype({c: np.int64 for c in model.columns_of("f")}))


# The media type and its parameters.


@case(PROTOCOL)
def charset_upper_utf8(model: Model) -> Request:
    return js(valid(model), f"{JSON}; charset=UTF-8")


@case(BASIC)
def charset_utf8_spaced(model: Model) -> Request:
    return js(valid(model), f"{JSON} ;  charset=utf-8")


@case(PROTOCOL)
def charset_latin1(model: Model) -> Request:
    return js(valid(model), f"{JSON}; charset=latin-1")


@case(PROTOCOL)
def unknown_media_parameter(model: Model) -> Request:
    return js(valid(model), f"{JSON}; format=pandas-split")


@case(PROTOCOL)
def media_type_upper_case(model: Model) -> Request:
    return js(valid(model), "Application/JSON")


@case(BASIC)
def media_type_text_plain(model: Model) -> Request:
    return js(valid(model), "text/plain")


@case(("classifier",))
def media_type_unsupported(model: Model) -> Request:
    return js(valid(model), "not_a_supported_content_type")


@case(PROTOCOL)
def no_content_type(model: Model) -> Request:
    return Request(dumps(valid(model)), None)


@case(("classifier", "pipeline"))
def csv_with_charset(model: Model) -> Request:
    return Request(rows(model).to_csv(index=False).encode(), f"{CSV}; charset=utf-8")


@case(("classifier", "pipeline"))
def json_body_as_csv(model: Model) -> Request:
    return Request(dumps(valid(model)), CSV)


# Bodies that are not what they say, or not a request.


@case(PROTOCOL)
def malformed_json(model: Model) -> Request:
    return Request(b"this is,,,, not valid json")


@case(PROTOCOL)
def empty_body(model: Model) -> Request:
    return Request(b"")


@case(BASIC)
def trailing_garbage(model: Model) -> Request:
    return Request(dumps(valid(model)) + b" x")


@case(BASIC)
def pretty_printed_json(model: Model) -> Request:
    return Request(b"\n  " + json.dumps(valid(model), indent=2).encode() + b"\n")


@case(PROTOCOL)
def utf8_bom(model: Model) -> Request:
    return Request(b"\xef\xbb\xbf" + dumps(valid(model)))


@case(PROTOCOL)
def non_utf8_json(model: Model) -> Request:
    return Request(dumps(valid(model)).replace(b"}", b', "caf\xe9": 1}', 1))


@case(PROTOCOL)
def json_list(model: Model) -> Request:
    return js([1])


@case(BASIC)
def json_string(model: Model) -> Request:
    return js("1")


@case(BASIC)
def json_number(model: Model) -> Request:
    return js(1)


@case(PROTOCOL)
def no_format_key(model: Model) -> Request:
    return js({"not": "a serialized dataframe"})


@case(BASIC)
def two_format_keys(model: Model) -> Request:
    return js({"dataframe_records": [], "dataframe_split": {"data": []}})


@case(PROTOCOL)
def unknown_key_beside_format(model: Model) -> Request:
    return js({**valid(model), "extra": {"a": 1}})


@case(PROTOCOL)
def params_unknown(model: Model) -> Request:
    return js({**valid(model), "params": {"alpha": 1}})


@case(BASIC)
def params_not_a_dict(model: Model) -> Request:
    return js({**valid(model), "params": 5})


@case(("classifier", "unsigned", "tensor"))
def signature_name(model: Model) -> Request:
    return js({"instances": rows(model).to_numpy().tolist(), "signature_name": "serving"})


@case(("classifier", "unsigned"))
def csv_empty(model: Model) -> Request:
    return Request(b"", CSV)


@case(("classifier", "unsigned", "pipeline"))
def csv_non_utf8(model: Model) -> Request:
    return Request(rows(model).to_csv(index=False).encode() + b"1,2,3,caf\xe9\n", CSV)


@case(("classifier", "unsigned"))
def parquet_garbage(model: Model) -> Request:
    return Request(b"not parquet", PARQUET)


@case(BASIC)
def split_given_records(model: Model) -> Request:
    return js({"dataframe_split": rows(model).to_dict(orient="records")})


@case(BASIC)
def records_given_split(model: Model) -> Request:
    return js({"dataframe_records": split(rows(model))})


@case(BASIC)
def split_index_longer_than_data(model: Model) -> Request:
    parts = split(rows(model))
    parts["index"] = [*parts["index"], 99]
    return js({"dataframe_split": parts})


@case(BASIC)
def split_extra_field(model: Model) -> Request:
    return js({"dataframe_split": {**split(rows(model)), "dtype": "float"}})


@case(BASIC)
def split_data_null(model: Model) -> Request:
    return js({"dataframe_split": {"columns": list(rows(model).columns), "data": None}})


@case(BASIC)
def split_duplicate_column(model: Model) -> Request:
    parts = split(rows(model), index=False)
    parts["columns"] = [*parts["columns"], parts["columns"][0]]
    parts["data"] = [[*row, row[0]] for row in parts["data"]]
    return js({"dataframe_split": parts})


@case(BASIC)
def inputs_scalar(model: Model) -> Request:
    return js({"inputs": 5})


@case(BASIC)
def duplicate_json_key(model: Model) -> Request:
    body = dumps({"dataframe_split": split(rows(model))})
    return Request(b'{"dataframe_split": {"data": []}, ' + body[1:])


# Values: missing ones, and ones that need a coercion or cannot have one.


@case(COLUMNS)
def nan_token_in_double(model: Model) -> Request | None:
    return as_split(changed(model, "f", float("nan")))


@case(("classifier", "frame"))
def nan_token_in_records(model: Model) -> Request | None:
    return as_records(changed(model, "f", float("nan"), row=1))


@case(("classifier", "frame"))
def infinity_token_in_double(model: Model) -> Request | None:
    return as_split(changed(model, "f", float("inf")))


@case(COLUMNS)
def null_in_double(model: Model) -> Request | None:
    return as_split(changed(model, "f", None))


@case(BASIC)
def null_in_double_records(model: Model) -> Request | None:
    return as_records(changed(model, "f", None, row=2))


@case(("classifier", "pipeline", "frame"))
def null_in_long(model: Model) -> Request | None:
    return as_split(changed(model, "i", None))


@case(STRINGS)
def null_in_string(model: Model) -> Request | None:
    return as_split(changed(model, "O", None))


@case(BASIC)
def null_text_in_double(model: Model) -> Request | None:
    return as_split(changed(model, "f", "null"))


@case(STRINGS)
def null_text_in_string(model: Model) -> Request | None:
    return as_split(changed(model, "O", "null"))


@case(("classifier", "unsigned", "frame"))
def empty_csv_cell_in_double(model: Model) -> Request | None:
    frame = changed(model, "f", None, row=1)
    return None if frame is None else Request(frame.to_csv(index=False).encode(), CSV)


@case(STRINGS)
def empty_csv_cell_in_string(model: Model) -> Request | None:
    frame = changed(model, "O", None, row=1)
    return None if frame is None else Request(frame.to_csv(index=False).encode(), CSV)


@case(BASIC)
def empty_csv_cell_in_long(model: Model) -> Request | None:
    frame = changed(model, "i", None, row=1)
    return None if frame is None else Request(frame.to_csv(index=False).encode(), CSV)


@case(("classifier", "frame"))
def nan_text_in_csv(model: Model) -> Request | None:
    frame = changed(model, "f", "NaN", row=1)
    return None if frame is None else Request(frame.to_csv(index=False).encode(), CSV)


@case(("classifier", "unsigned", "frame"))
def true_in_double(model: Model) -> Request | None:
    return as_split(changed(model, "f", True))


@case(BASIC)
def true_in_long(model: Model) -> Request | None:
    return as_split(changed(model, "i", True))


@case(("classifier", "regressor", "pipeline", "frame"))
def numeric_string_in_double(model: Model) -> Request | None:
    return as_split(changed(model, "f", "13.5"))


@case(BASIC)
def numeric_string_in_long(model: Model) -> Request | None:
    return as_split(changed(model, "i", "7"))


@case(("classifier", "unsigned", "frame"))
def word_in_double(model: Model) -> Request | None:
    return as_split(changed(model, "f", "abc"))


@case(BASIC)
def list_in_double(model: Model) -> Request | None:
    return as_split(changed(model, "f", [1.0, 2.0]))


@case(STRINGS)
def number_in_string(model: Model) -> Request | None:
    return as_split(changed(model, "O", 5))


@case(STRINGS)
def unicode_string(model: Model) -> Request | None:
    return as_split(changed(model, "O", "rouge ✓ 日本"))


@case(("classifier", "pipeline", "frame"))
def fraction_in_long(model: Model) -> Request | None:
    return as_split(changed(model, "i", 3.5))


@case(("classifier", "pipeline", "frame"))
def integral_float_in_long(model: Model) -> Request | None:
    return as_split(changed(model, "i", 3.0))


@case(BASIC)
def huge_int_in_long(model: Model) -> Request | None:
    return as_split(changed(model, "i", 2**64))


@case(BASIC)
def int_beyond_float_precision_in_long(model: Model) -> Request | None:
    return as_split(changed(model, "i", 2**53 + 1))


@case(COLUMNS)
def ints_in_doubles(model: Model) -> Request | None:
    columns = model.columns_of("f")
    if not columns:
        return None
    frame = rows(model).astype(object)
    for column in columns:
        frame[column] = [round(v * 4) for v in rows(model)[column]]
    return as_split(frame)


@case(("regressor",))
def double_beyond_float32(model: Model) -> Request | None:
    frame = rows(model).astype(object)
    frame.at[0, "x3"] = 1e300
    return as_split(frame)


@case(("regressor",))
def precise_double_in_float32(model: Model) -> Request | None:
    frame = rows(model).astype(object)
    frame.at[0, "x3"] = 0.1
    return as_split(frame)


# Columns: extra, missing, out of order; zero rows.


@case(COLUMNS)
def extra_column(model: Model) -> Request:
    return js({"dataframe_split": split(rows(model).assign(id="x"))})


@case(COLUMNS)
def missing_column(model: Model) -> Request:
    frame = rows(model)
    return js({"dataframe_split": split(frame.drop(columns=frame.columns[0]))})


@case(COLUMNS)
def columns_reversed(model: Model) -> Request:
    frame = rows(model)
    return js({"dataframe_split": split(frame[frame.columns[::-1]])})


@case(("classifier", "unsigned", "frame"))
def columns_reversed_records(model: Model) -> Request:
    frame = rows(model)
    return js({"dataframe_records": frame[frame.columns[::-1]].to_dict(orient="records")})


@case(("classifier", "unsigned", "pipeline"))
def columns_reversed_csv(model: Model) -> Request:
    frame = rows(model)
    return Request(frame[frame.columns[::-1]].to_csv(index=False).encode(), CSV)


@case(("classifier", "pipeline"))
def column_name_case_differs(model: Model) -> Request:
    frame = rows(model)
    return js({"dataframe_split": split(frame.rename(columns={frame.columns[0]: "X"}))})


@case(COLUMNS)
def zero_rows_split(model: Model) -> Request:
    return js({"dataframe_split": {"columns": list(rows(model).columns), "data": []}})


@case(("classifier", "unsigned", "frame"))
def zero_rows_records(model: Model) -> Request:
    return js({"dataframe_records": []})


@case(("classifier", "unsigned", "frame"))
def zero_rows_inputs(model: Model) -> Request:
    return js({"inputs": {c: [] for c in rows(model).columns}})


@case(("classifier", "unsigned", "frame"))
def zero_rows_csv(model: Model) -> Request:
    return Request(rows(model).head(0).to_csv(index=False).encode(), CSV)


@case(("classifier", "frame"))
def zero_rows_parquet(model: Model) -> Request:
    return parquet(rows(model).head(0))


# Tensors.

TENSOR = ("tensor",)


def matrix(model: Model) -> list[list[Any]]:
    return [[float(v) for v in row] for row in rows(model).to_numpy()]


@case(TENSOR)
def inputs_nested_lists(model: Model) -> Request:
    return js({"inputs": matrix(model)})


@case(TENSOR)
def instances_nested_lists(model: Model) -> Request:
    return js({"instances": matrix(model)})


@case(TENSOR)
def inputs_named(model: Model) -> Request:
    return js({"inputs": {"x": matrix(model)}})


@case(TENSOR)
def inputs_misnamed(model: Model) -> Request:
    return js({"inputs": {"y": matrix(model)}})


@case(TENSOR)
def instances_named_rows(model: Model) -> Request:
    return js({"instances": [{"x": row} for row in matrix(model)]})


@case(TENSOR)
def tensor_ints(model: Model) -> Request:
    return js({"inputs": [[round(v) for v in row] for row in matrix(model)]})


@case(TENSOR)
def tensor_numeric_strings(model: Model) -> Request:
    return js({"inputs": [[str(v) for v in row] for row in matrix(model)]})


@case(TENSOR)
def tensor_booleans(model: Model) -> Request:
    return js({"inputs": [[v > 0 for v in row] for row in matrix(model)]})


@case(TENSOR)
def tensor_nan_token(model: Model) -> Request:
    values = matrix(model)
    values[0][1] = float("nan")
    return js({"inputs": values})


@case(TENSOR)
def tensor_null(model: Model) -> Request:
    values: list[list[Any]] = matrix(model)
    values[0][1] = None
    return js({"inputs": values})


@case(TENSOR)
def tensor_too_narrow(model: Model) -> Request:
    return js({"inputs": [row[:3] for row in matrix(model)]})


@case(TENSOR)
def tensor_ragged(model: Model) -> Request:
    values = matrix(model)
    return js({"inputs": [values[0], values[1][:3]]})


@case(TENSOR)
def tensor_one_row_flat(model: Model) -> Request:
    return js({"inputs": matrix(model)[0]})


@case(TENSOR)
def tensor_three_dimensions(model: Model) -> Request:
    return js({"inputs": [matrix(model)]})


@case(TENSOR)
def tensor_zero_rows(model: Model) -> Request:
    return js({"inputs": []})


@case(TENSOR)
def tensor_as_split(model: Model) -> Request:
    return js({"dataframe_split": split(rows(model))})


@case(TENSOR)
def tensor_as_records(model: Model) -> Request:
    return js({"dataframe_records": rows(model).to_dict(orient="records")})


@case(TENSOR)
def tensor_as_csv(model: Model) -> Request:
    return Request(rows(model).to_csv(index=False).encode(), CSV)


@case(TENSOR)
def tensor_as_parquet(model: Model) -> Request:
    frame = rows(model)
    return parquet(frame.set_axis([f"c{i}" for i in frame.columns], axis=1))


# The chat model: the unified (unwrapped) format, and the wrapped ones.

CHAT = ("chat",)


@case(CHAT)
def chat_messages(model: Model) -> Request:
    return js({"messages": MESSAGES})


@case(CHAT)
def chat_temperature(model: Model) -> Request:
    return js({"messages": MESSAGES, "temperature": 0.5})


@case(CHAT)
def chat_temperature_and_max_tokens(model: Model) -> Request:
    return js({"messages": MESSAGES, "temperature": 0.5, "max_tokens": 10})


@case(CHAT)
def chat_temperature_int(model: Model) -> Request:
    return js({"messages": MESSAGES, "temperature": 1})


@case(CHAT)
def chat_temperature_text(model: Model) -> Request:
    return js({"messages": MESSAGES, "temperature": "hot"})


@case(CHAT)
def chat_max_tokens_fraction(model: Model) -> Request:
    return js({"messages": MESSAGES, "max_tokens": 10.5})


@case(CHAT)
def chat_unknown_field(model: Model) -> Request:
    return js({"messages": MESSAGES, "stream": False})


@case(CHAT)
def chat_params_key(model: Model) -> Request:
    return js({"messages": MESSAGES, "params": {"temperature": 0.25}})


@case(CHAT)
def chat_inputs(model: Model) -> Request:
    return js({"inputs": {"messages": MESSAGES}})


@case(CHAT)
def chat_inputs_with_params(model: Model) -> Request:
    return js({"inputs": {"messages": MESSAGES}, "params": {"temperature": 0.5}})


@case(CHAT)
def chat_inputs_with_bad_param(model: Model) -> Request:
    return js({"inputs": {"messages": MESSAGES}, "params": {"temperature": "hot"}})


@case(CHAT)
def chat_records(model: Model) -> Request:
    return js({"dataframe_records": [{"messages": MESSAGES}]})


@case(CHAT)
def chat_split(model: Model) -> Request:
    return js({"dataframe_split": {"columns": ["messages"], "data": [[MESSAGES]]}})


@case(CHAT)
def chat_instances(model: Model) -> Request:
    return js({"instances": [{"messages": MESSAGES}]})


@case(CHAT)
def chat_messages_not_a_list(model: Model) -> Request:
    return js({"messages": "What is MLflow?"})


@case(CHAT)
def chat_message_without_content(model: Model) -> Request:
    return js({"messages": [{"role": "user"}]})


@case(CHAT)
def chat_message_extra_field(model: Model) -> Request:
    return js({"messages": [{"role": "user", "content": "hi", "name": "ann"}]})


@case(CHAT)
def chat_content_a_number(model: Model) -> Request:
    return js({"messages": [{"role": "user", "content": 5}]})


@case(CHAT)
def chat_messages_empty(model: Model) -> Request:
    return js({"messages": []})


@case(CHAT)
def chat_unicode(model: Model) -> Request:
    return js({"messages": [{"role": "user", "content": "héllo ✓ 日本"}]})


@case(CHAT)
def completions_prompt(model: Model) -> Request:
    return js({"prompt": "What is MLflow?", "temperature": 0.5})


@case(CHAT)
def embeddings_input(model: Model) -> Request:
    return js({"input": ["What is MLflow?"]})


@case(CHAT)
def chat_as_csv(model: Model) -> Request:
    return Request(b"messages\nhello\n", CSV)
