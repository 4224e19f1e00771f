"""Label plausibility: a constant predictor's score and the label distribution, on real tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlnb.monitoring.labels import Labeled, LabelStatus, check_labels, constant_score
from mlnb.predictions.window import live_metric
from mlnb.specs.monitor import LabelsSpec

SHARE = 0.63  # of class 1 in the training data, as in the breast-cancer set


def training(tmp_path: Path, values: list[float]) -> Path:
    path = tmp_path / "train.csv"
    pd.DataFrame({"x": range(len(values)), "target": values}).to_csv(path, index=False)
    return path


def labeled(labels: list[float], predictions: list[float], metric: str, **kw: object) -> Labeled:
    window = pd.DataFrame({"label": labels, "prediction": predictions})
    settings = {
        "greater_is_better": True,
        "model_type": "classifier",
        "reference": None,
        "target": "target",
        **kw,
    }
    return Labeled(window["label"], live_metric(window, metric, 1), **settings)


def classes(count: int, share: float) -> list[float]:
    ones = round(count * share)
    return [1.0] * ones + [0.0] * (count - ones)


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    return training(tmp_path, classes(400, SHARE))


def test_inverted_labels_are_suspicious_on_both_tests(reference: Path) -> None:
    truth = classes(200, SHARE)
    inverted = [1 - t for t in truth]
    case = labeled(inverted, truth, "accuracy", reference=reference)

    found = check_labels(case, LabelsSpec(), min_labels=50)

    assert found.status is LabelStatus.SUSPICIOUS
    assert found.metrics["labels.constant_accuracy"] == pytest.approx(SHARE, abs=0.01)
    assert found.metrics["labels.shift"] == pytest.approx(2 * SHARE - 1, abs=0.01)
    assert "the champion's live accuracy 0.0000 is far worse than a constant predictor's" in (
        found.reason
    )
    assert "total variation distance; max_shift 0.2" in found.reason


def test_a_stale_model_on_true_labels_is_plausible(reference: Path) -> None:
    truth = classes(200, SHARE)
    predictions = [1 - t if i % 3 == 0 else t for i, t in enumerate(truth)]  # 67 % right
    case = labeled(truth, predictions, "accuracy", reference=reference)

    found = check_labels(case, LabelsSpec(), min_labels=50)

    assert found.status is LabelStatus.PLAUSIBLE, found.reason
    assert found.metrics["labels.shift"] < 0.01


def test_a_flipped_class_balance_alone_is_suspicious(reference: Path) -> None:
    flipped = classes(200, 1 - SHARE)
    case = labeled(flipped, flipped, "accuracy", reference=reference)  # the model agrees

    found = check_labels(case, LabelsSpec(), min_labels=50)

    assert found.status is LabelStatus.SUSPICIOUS
    assert found.reason.startswith("the labels' distribution is 0.26 from the champion's")


def test_null_turns_the_tests_off_and_few_labels_are_untested(reference: Path) -> None:
    truth = classes(200, SHARE)
    case = labeled([1 - t for t in truth], truth, "accuracy", reference=reference)

    off = check_labels(case, LabelsSpec(below_constant=None, max_shift=None), min_labels=50)
    few = check_labels(case, LabelsSpec(), min_labels=500)

    assert (off.status, off.reason) == (LabelStatus.UNTESTED, "no label test applies")
    assert few.status is LabelStatus.UNTESTED
    assert few.reason == "200 labels, fewer than the 500 a test needs"


def test_a_regressor_against_the_mean_and_by_kolmogorov_smirnov(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(10, 1, 300)
    reference = training(tmp_path, list(rng.normal(10, 1, 300)))
    anti = list(20 - truth)  # predictions that move against the labels
    case = labeled(
        list(truth),
        anti,
        "mean_absolute_error",
        greater_is_better=False,
        model_type="regressor",
        reference=reference,
    )

    constant = constant_score(case)
    found = check_labels(case, LabelsSpec(), min_labels=50)

    assert constant is not None and constant.value == pytest.approx(0.8, abs=0.1)
    assert found.status is LabelStatus.SUSPICIOUS
    assert "constant predictor's" in found.reason
    assert found.metrics["labels.shift"] < 0.2  # the same distribution: KS is small
