"""Loading a version and scoring one request body with it, in process, on real logged models.

A SQLite MLflow store in a temporary folder holds three registered models,
each fitted on the same small table (``x`` double, ``n`` long, ``y`` double,
``color`` string): ``numeric`` (a logistic regression on the three numbers,
logged with its signature), ``unsigned`` (the same model, logged without
one) and ``mixed`` (one-hot ``color`` plus the numbers, with its signature).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlnb.serving.parsing import CSV, JSON, PARQUET, Limits, Reject
from mlnb.serving.scoring import Served, load_version, score, score_many

pytestmark = pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer:UserWarning")

NUMBERS = ["x", "n", "y"]


class Models:
    """The fitted models, registered in a store of their own."""

    def __init__(self, root: Path) -> None:
        import mlflow
        from sklearn.compose import make_column_transformer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder

        rng = np.random.default_rng(7)
        size = 200
        self.table = pd.DataFrame(
            {
                "x": rng.normal(size=size),
                "n": rng.integers(0, 5, size=size),
                "y": rng.normal(size=size),
                "color": rng.choice(["red", "blue"], size=size),
            }
        )
        label = self.table["x"] + self.table["y"] + (self.table["color"] == "red") > 0.5
        self.numeric = LogisticRegression().fit(self.table[NUMBERS], label)
        encode = make_column_transformer((OneHotEncoder(), ["color"]), remainder="passthrough")
        self.mixed = make_pipeline(encode, LogisticRegression()).fit(self.table, label)
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)
        experiment = self.client.create_experiment(
            "scoring", artifact_location=(root / "artifacts").as_uri()
        )
        outside = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)  # log_model works on the fluent store only
        try:
            self._log(experiment, self.numeric, "numeric", self.table[NUMBERS].head(3))
            self._log(experiment, self.numeric, "unsigned", None)
            self._log(experiment, self.mixed, "mixed", self.table.head(3))
        finally:
            mlflow.set_tracking_uri(None)
            if outside is not None:
                os.environ["MLFLOW_TRACKING_URI"] = outside

    def _log(self, experiment: str, model: Any, name: str, example: pd.DataFrame | None) -> None:
        import mlflow

        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(
                model,
                name="model",
                input_example=example,
                pip_requirements=["scikit-learn"],
                registered_model_name=name,
            )

    def load(self, name: str) -> Served:
        return load_version(self.client, name, "1", self.uri)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(tmp_path_factory.mktemp("scoring"))


def rows(models: Models) -> pd.DataFrame:
    """Six rows of the table, three of each class the numeric model predicts."""
    predicted = pd.Series(models.numeric.predict(models.table[NUMBERS]))
    chosen = [*predicted.index[predicted == 0][:3], *predicted.index[predicted == 1][:3]]
    assert len(chosen) == 6
    return models.table.iloc[chosen].reset_index(drop=True)


def as_json(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


BODIES = {
    "split": lambda r: (JSON, as_json({"dataframe_split": r.to_dict(orient="split")})),
    "records": lambda r: (JSON, as_json({"dataframe_records": r.to_dict(orient="records")})),
    "inputs as columns": lambda r: (JSON, as_json({"inputs": r.to_dict(orient="list")})),
    "with a boolean param (pandas path)": lambda r: (
        JSON,
        as_json({"dataframe_split": r.to_dict(orient="split"), "params": {"flag": True}}),
    ),
    "integers as floats": lambda r: (
        JSON,
        as_json({"dataframe_split": r.assign(n=r["n"].astype(float)).to_dict(orient="split")}),
    ),
    "csv": lambda r: (CSV, r.to_csv(index=False).encode()),
    "parquet": lambda r: (PARQUET, parquet(r)),
}


def test_a_signed_sklearn_model_predicts_on_a_matrix(models: Models) -> None:
    served = models.load("numeric")
    assert (served.version, served.flavor) == ("1", "sklearn")
    assert served.wants_matrix and served.takes_params  # MLflow's pyfunc takes params
    assert served.schema is not None and served.schema.columns == ("x", "n", "y")
    assert served.run_id
    assert Path(served.source).is_dir()  # a file URI became a path


@pytest.mark.parametrize("body", BODIES)
def test_each_body_predicts_as_the_model(models: Models, body: str) -> None:
    served, chosen = models.load("numeric"), rows(models)
    mime, content = BODIES[body](chosen)
    scored = score(served, mime, content)
    expected = models.numeric.predict(chosen[NUMBERS]).tolist()
    assert np.asarray(scored.outputs).tolist() == expected
    assert json.loads(scored.answer) == {"predictions": expected}
    assert scored.columns == NUMBERS
    assert scored.rows == len(chosen)
    logged = np.asarray(scored.inputs, dtype=float)  # CSV text may round the last digit
    np.testing.assert_allclose(logged, chosen[NUMBERS], rtol=1e-12)


def test_a_model_with_a_string_input_predicts_as_mlflow_enforces_it(models: Models) -> None:
    served, chosen = models.load("mixed"), rows(models)
    assert (served.flavor, served.wants_matrix) == ("sklearn", False)
    scored = score(served, JSON, as_json({"dataframe_records": chosen.to_dict(orient="records")}))
    assert np.asarray(scored.outputs).tolist() == models.mixed.predict(chosen).tolist()
    assert scored.columns == ["x", "n", "y", "color"]
    assert scored.inputs[0] == chosen.iloc[0].tolist()  # the log keeps the rows as lists
    records = chosen.to_dict("records")
    records[1]["color"] = 5  # MLflow's enforcement passes a number in a string column on
    with pytest.raises(Reject, match="unknown categories") as refused:  # the encoder refuses it
        score(served, JSON, as_json({"dataframe_records": records}))
    assert (refused.value.status, refused.value.kind) == (400, "model_error")
    records[1]["color"] = "red"
    del records[0]["x"], records[1]["x"], records[3]["x"], records[4]["x"], records[5]["x"]
    del records[2]["x"]
    with pytest.raises(Reject) as rejected:  # a column none of the rows has
        score(served, JSON, as_json({"dataframe_records": records}))
    assert (rejected.value.status, rejected.value.code) == (400, "INVALID_PARAMETER_VALUE")
    assert rejected.value.message == (
        "the input does not fit the model's signature: missing column 'x'; "
        "the model's signature needs 4 columns"
    )


def test_a_model_without_a_signature_is_parsed_by_mlflow(models: Models) -> None:
    served, chosen = models.load("unsigned"), rows(models)
    assert (served.flavor, served.schema, served.mlflow_schema) == ("pyfunc", None, None)
    scored = score(served, JSON, as_json({"dataframe_split": chosen[NUMBERS].to_dict("split")}))
    assert np.asarray(scored.outputs).tolist() == models.numeric.predict(chosen[NUMBERS]).tolist()
    assert scored.columns == NUMBERS
    assert scored.rows == len(chosen)
    with pytest.raises(Reject) as rejected:
        score(served, JSON, as_json({"dataframe_split": "not a table"}))
    assert rejected.value.status == 400
    assert rejected.value.message and "Traceback" not in rejected.value.message


@pytest.mark.parametrize(
    ("mime", "content", "words"),
    [
        (JSON, b'{"dataframe_split": ', ["malformed JSON"]),
        (JSON, b"[1, 2]", ["must be an object with one of the keys", "got [1,2] (a list)"]),
        (JSON, b'{"data": []}', ["exactly one of the keys", "it has 'data'"]),
        (JSON, b'{"instances": [], "inputs": []}', ["it has 'instances', 'inputs'"]),
        (JSON, b"{}", ["it has none"]),
        (CSV, b"x,n,y\n1.5,2,abc\n", ["cannot read the CSV body: column 'y' (float64): row 0"]),
        (PARQUET, b"not parquet", ["cannot read the body as Parquet"]),
    ],
    ids=["malformed", "a list", "no format", "two formats", "empty object", "bad csv", "parquet"],
)
def test_bodies_that_cannot_be_scored_are_rejected(
    models: Models, mime: str, content: bytes, words: list[str]
) -> None:
    with pytest.raises(Reject) as rejected:
        score(models.load("numeric"), mime, content)
    assert (rejected.value.status, rejected.value.kind) == (400, "bad_request")
    for word in words:
        assert word in rejected.value.message


def test_a_model_that_fails_is_a_model_error(models: Models) -> None:
    body = b"x,n,y\ninf,2,0.5\n"  # passes the signature; scikit-learn refuses infinity
    with pytest.raises(Reject) as rejected:
        score(models.load("numeric"), CSV, body)
    assert rejected.value.kind == "model_error"
    assert rejected.value.message.startswith("the model could not predict on this input: ")
    assert "infinity" in rejected.value.message


TIGHT = Limits(max_columns=4, max_rows=5, max_cells=40, max_json_depth=8)


@pytest.mark.parametrize("body", BODIES)
def test_each_body_over_the_rows_limit_is_refused_before_it_is_scored(
    models: Models, body: str
) -> None:
    served, chosen = models.load("numeric"), rows(models)  # six rows; five are allowed
    mime, content = BODIES[body](chosen)
    with pytest.raises(Reject) as rejected:
        score(served, mime, content, TIGHT)
    assert rejected.value.status == 413
    assert "6 rows" in rejected.value.message and "max_rows" in rejected.value.message
    scored = score(served, *BODIES[body](chosen.head(5)), TIGHT)
    assert scored.rows == 5


@pytest.mark.parametrize("name", ["numeric", "unsigned"])
def test_a_wide_or_deep_body_is_refused_for_every_kind_of_model(models: Models, name: str) -> None:
    served = models.load(name)
    wide = ",".join(f"c{i}" for i in range(10)) + "\n" + ",".join(["0"] * 10) + "\n"
    with pytest.raises(Reject, match=r"10 columns; .*max_columns"):
        score(served, CSV, wide.encode(), TIGHT)
    deep = b'{"inputs": {"x": [[[[[[[[[1]]]]]]]]], "n": [1], "y": [1]}}'
    with pytest.raises(Reject, match=r"11 levels of nesting; .*max_json_depth"):
        score(served, JSON, deep, TIGHT)


def test_predictions_are_written_as_mlflow_writes_them_or_refused_whole() -> None:
    from mlnb.serving.scoring import _answer

    fields = {"model_version": "1", "request_id": "r"}
    as_mlflow = json.loads(_answer(np.array([0.1, np.nan], dtype=np.float32), False, fields))
    assert as_mlflow["predictions"][0] == float(np.float32(0.1))  # widened, as MLflow's encoder
    assert np.isnan(as_mlflow["predictions"][1])  # NaN as MLflow writes it, not null
    assert as_mlflow["model_version"] == "1"
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", None]})
    assert json.loads(_answer(frame, False, {}))["predictions"] == [
        {"a": 1, "b": "x"},
        {"a": 2, "b": None},
    ]
    assert json.loads(_answer({"choices": [{"text": "hi"}]}, True, fields)) == {
        "choices": [{"text": "hi"}]
    }  # an unwrapped chat answer gets no fields of mlnb's
    with pytest.raises(Reject) as refused:  # nothing is logged for an answer never made
        _answer({"bad": object()}, False, fields)
    assert (refused.value.status, refused.value.code) == (500, "INTERNAL_ERROR")
    assert "cannot be written as JSON" in refused.value.message


def test_many_bodies_are_scored_as_each_alone_and_a_bad_one_fails_alone(models: Models) -> None:
    served, chosen = models.load("numeric"), rows(models)
    bodies = [BODIES[name](chosen.iloc[[i]]) for i, name in enumerate(BODIES) if i < 6]
    bodies.insert(2, (JSON, as_json({"dataframe_split": {"columns": ["x"], "data": [[1.0]]}})))
    bodies.append((JSON, b"{not json"))

    results = score_many(served, bodies)

    assert len(results) == len(bodies)
    for (mime, body), result in zip(bodies, results, strict=True):
        try:
            alone = np.asarray(score(served, mime, body).outputs).tolist()
        except Reject as reject:
            assert isinstance(result, Reject) and result.message == reject.message
        else:
            assert np.asarray(result).tolist() == alone
    assert isinstance(results[2], Reject) and isinstance(results[-1], Reject)
    assert sum(not isinstance(r, Reject) for r in results) == 6
