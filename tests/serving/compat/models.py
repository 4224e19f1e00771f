"""The registered models both servers serve, and the rows a request sends each of them.

:data:`MODELS` describes the seven models (name, input kind, sample rows)
without fitting anything, so that the request cases can be built when
pytest collects; :func:`build_store` fits and logs them into a SQLite MLflow
store, each as version 1 of its registered name with the alias
:data:`ALIAS`. The pyfunc classes below are pickled by value, so a server
process loads them without importing this package. Their ``predict`` takes
a DataFrame or an array by its type hints: hints MLflow infers no signature
from (the signatures are given when logging).
"""

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

ALIAS = "champion"
#: how a model takes its input: named columns, one tensor, or a chat request
Kind = Literal["columns", "tensor", "chat"]
MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is MLflow?"},
]
PARAMS = {"temperature": 1.0, "max_tokens": 64}
WEIGHTS = np.array([[1.0, 0.5], [-2.0, 0.25], [0.5, 0.125], [3.0, -1.0]])  # the tensor model's


@dataclass(frozen=True)
class Model:
    """A registered model as the request cases see it."""

    name: str
    kind: Kind
    #: a request's rows: columns for ``columns``, four float columns for ``tensor``
    rows: pd.DataFrame | None = None
    signature: bool = True

    def sample(self) -> pd.DataFrame:
        """A copy of the rows (a chat model has none)."""
        assert self.rows is not None, f"{self.name} takes no rows"
        return self.rows.copy()

    def columns_of(self, dtype: str) -> list[str]:
        """The sample's columns of one pandas dtype kind (``f``, ``i``, ``O``)."""
        rows = self.sample()
        return [c for c in rows.columns if rows[c].dtype.kind == dtype]


def _numbers() -> pd.DataFrame:
    """Three double columns and a long one; the classifier's and the unsigned model's rows."""
    return pd.DataFrame(
        {
            "x1": [0.5, -1.25, 2.0, 0.1, -0.3],
            "x2": [1.5, 0.75, -0.5, 2.25, 0.0],
            "x3": [-0.2, 1.1, 0.3, -1.7, 0.9],
            "n": np.array([3, 0, 7, 1, 4], dtype=np.int64),
        }
    )


MODELS: dict[str, Model] = {
    m.name: m
    for m in [
        Model("classifier", "columns", _numbers()),
        Model(
            "regressor",
            "columns",
            pd.DataFrame(
                {
                    "x1": [0.5, -1.25, 2.0, 0.1],
                    "x2": [1.5, 0.75, -0.5, 2.25],
                    "x3": np.array([0.3, -0.7, 1.9, 0.05], dtype=np.float32),
                }
            ),
        ),
        Model("unsigned", "columns", _numbers(), signature=False),
        Model(
            "pipeline",
            "columns",
            pd.DataFrame(
                {
                    "color": ["red", "green", "blue", "red", "green"],
                    "shape": ["round", "square", "round", "flat", "square"],
                    "weight": [1.5, 0.25, 3.75, 2.0, 0.5],
                    "count": np.array([2, 5, 1, 0, 9], dtype=np.int64),
                }
            ),
        ),
        Model(
            "tensor",
            "tensor",
            pd.DataFrame(
                np.array([[0.1, 0.2, 0.3, 0.4], [1.5, -2.5, 0.0, 4.25], [-0.3, 0.7, 2.2, -1.1]])
            ),
        ),
        Model(
            "frame",
            "columns",
            pd.DataFrame(
                {
                    "x": [4.0, -1.0, 0.3, 2.25],
                    "k": np.array([2, 0, 5, 1], dtype=np.int64),
                    "s": ["ab", "cd", "", "xyz"],
                }
            ),
        ),
        Model("chat", "chat"),
    ]
}


class Float32Regressor(PythonModel):
    """A ridge regressor whose predictions are float32."""

    def __init__(self, estimator: Any, columns: list[str]) -> None:
        self.estimator = estimator
        self.columns = columns

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        frame = model_input[self.columns].astype("float64")
        return self.estimator.predict(frame.to_numpy()).astype(np.float32)


class Projection(PythonModel):
    """A (-1, 4) float64 tensor times a 4×2 matrix."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        if isinstance(model_input, dict):
            (model_input,) = model_input.values()
        return np.asarray(model_input) @ self.weights


class Summary(PythonModel):
    """A DataFrame of five columns of several types; ``root`` is NaN for a negative ``x``."""

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        x = model_input["x"].astype("float64")
        k = model_input["k"]
        return pd.DataFrame(
            {
                "total": x + k,
                "half": (x / 2).astype(np.float32),
                "root": np.sqrt(x.where(x >= 0)),
                "label": model_input["s"].astype(str).str.upper(),
                "twice": (k * 2).astype(np.int64),
            }
        )


class Echo(PythonModel):
    """A chat model: answers the last message's content, reversed, and its params."""

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        messages = list(model_input["messages"].iloc[0])  # MLflow makes a dict one row
        last = messages[-1]
        content = last["content"] if isinstance(last, dict) else str(last)
        params = params or {}
        return {
            "id": "echo-1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content[::-1]},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": len(messages), "completion_tokens": 1},
            "temperature": params.get("temperature"),
            "max_tokens": params.get("max_tokens"),
        }


def _training(model: str, seed: int, size: int = 200) -> pd.DataFrame:
    """``size`` random rows with the columns and dtypes of ``model``'s sample."""
    rows = MODELS[model].sample()
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    for name in rows.columns:
        kind = rows[name].dtype.kind
        if kind == "f":
            columns[name] = rng.normal(size=size).astype(rows[name].dtype)
        elif kind == "i":
            columns[name] = rng.integers(0, 10, size=size).astype(np.int64)
        else:
            columns[name] = rng.choice(sorted(set(rows[name])), size=size)
    return pd.DataFrame(columns)


#: how a model is logged: a flavor's ``log_model`` and its arguments beyond the common ones
Logged = tuple[Callable[..., Any], dict[str, Any]]


@functools.cache
def _fitted_classifier() -> tuple[pd.DataFrame, Any]:
    from sklearn.linear_model import LogisticRegression

    numbers = _training("classifier", seed=1)
    labels = np.digitize(numbers["x1"] + numbers["x2"] - 0.1 * numbers["n"], [-0.5, 0.5])
    return numbers, LogisticRegression(max_iter=1000).fit(numbers, labels)


def _classifier() -> Logged:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    numbers, classifier = _fitted_classifier()
    signature = infer_signature(numbers, classifier.predict(numbers))
    return mlflow.sklearn.log_model, {"sk_model": classifier, "signature": signature}


def _unsigned() -> Logged:
    import mlflow.sklearn

    return mlflow.sklearn.log_model, {"sk_model": _fitted_classifier()[1]}


def _regressor() -> Logged:
    import mlflow.pyfunc
    from mlflow.models import infer_signature
    from sklearn.linear_model import Ridge

    rows = _training("regressor", seed=2)
    target = rows @ np.array([1.5, -2.0, 0.75]) + 0.1
    regressor = Float32Regressor(
        Ridge().fit(rows.to_numpy("float64"), target), [str(c) for c in rows.columns]
    )
    signature = infer_signature(rows, regressor.predict(None, rows))
    return mlflow.pyfunc.log_model, {"python_model": regressor, "signature": signature}


def _pipeline() -> Logged:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    goods = _training("pipeline", seed=3)
    encode = ColumnTransformer(
        [
            ("categories", OneHotEncoder(handle_unknown="ignore"), ["color", "shape"]),
            ("numbers", StandardScaler(), ["weight", "count"]),
        ]
    )
    pipeline = make_pipeline(encode, LogisticRegression(max_iter=1000))
    pipeline.fit(goods, (goods["color"] == "red") | (goods["weight"] > 0.5))
    signature = infer_signature(goods, pipeline.predict(goods))
    return mlflow.sklearn.log_model, {"sk_model": pipeline, "signature": signature}


def _tensor() -> Logged:
    import mlflow.pyfunc
    from mlflow.models.signature import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float64), (-1, 4), "x")]),
        outputs=Schema([TensorSpec(np.dtype(np.float64), (-1, 2))]),
    )
    return mlflow.pyfunc.log_model, {"python_model": Projection(WEIGHTS), "signature": signature}


def _frame() -> Logged:
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    rows = MODELS["frame"].sample()
    signature = infer_signature(rows, Summary().predict(None, rows))
    return mlflow.pyfunc.log_model, {"python_model": Summary(), "signature": signature}


def _chat() -> Logged:
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    chat = {"messages": MESSAGES}
    answer = Echo().predict(None, pd.DataFrame([chat]), PARAMS)
    signature = infer_signature(chat, answer, params=PARAMS)
    return mlflow.pyfunc.log_model, {"python_model": Echo(), "signature": signature}


LOGGED: dict[str, Callable[[], Logged]] = {
    "classifier": _classifier,
    "regressor": _regressor,
    "unsigned": _unsigned,
    "pipeline": _pipeline,
    "tensor": _tensor,
    "frame": _frame,
    "chat": _chat,
}
assert LOGGED.keys() == MODELS.keys()


def build_store(root: Path) -> str:
    """Fit and register :data:`MODELS` in a SQLite store in ``root``; return its URI.

    Artifacts go to ``root/artifacts``, beside the database file.
    """
    import cloudpickle
    import mlflow
    from mlflow import MlflowClient

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("compat", artifact_location=(root / "artifacts").as_uri())
    outside = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # log_model works on the fluent store only
    try:
        for name, logged in LOGGED.items():
            log, arguments = logged()
            with mlflow.start_run(experiment_id=experiment, run_name=name):
                log(
                    name="model",
                    registered_model_name=name,
                    pip_requirements=["scikit-learn", "pandas", "numpy"],  # none inferred: slow
                    **arguments,
                )
            client.set_registered_model_alias(name, ALIAS, "1")
    finally:
        mlflow.set_tracking_uri(None)
        if outside is not None:
            os.environ["MLFLOW_TRACKING_URI"] = outside
    return uri
