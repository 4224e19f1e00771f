"""The live comparison of champion and challenger: its statistics, on data with a known truth.

Each data set is drawn with a seed from a model of known accuracy (or error),
so a test knows the true difference: a challenger truly better on 2000
labels must get an interval above 0; equal models must get intervals that
cover 0 about 95 % of the time over 200 seeded repetitions.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlnb.predictions import online
from mlnb.predictions.log import PredictionLog
from mlnb.predictions.window import _score
from mlnb.specs.monitor import LIVE_METRICS

REGRESSION = ["mean_absolute_error", "mean_squared_error", "root_mean_squared_error", "r2_score"]


def classified(rng: np.random.Generator, n: int, *accuracies: float) -> list[np.ndarray]:
    """Binary labels, and one prediction per accuracy (each right with that chance)."""
    truth = rng.integers(0, 2, n)
    return [truth, *(np.where(rng.random(n) < a, truth, 1 - truth) for a in accuracies)]


def regressed(rng: np.random.Generator, n: int, *noises: float) -> list[np.ndarray]:
    """Numeric labels, and one prediction per noise level (the label plus that much noise)."""
    truth = rng.normal(size=n)
    return [truth, *(truth + rng.normal(size=n) * s for s in noises)]


def pairs(truth: np.ndarray, champion: np.ndarray, challenger: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"label": truth, "champion": champion, "challenger": challenger})


def data(metric: str, rng: np.random.Generator, n: int, worse: float, better: float) -> list:
    """Labels, a champion and a challenger for ``metric``: ``worse`` and ``better`` quality."""
    if metric in REGRESSION:
        return regressed(rng, n, 1 - worse, 1 - better)  # quality → noise
    return classified(rng, n, worse, better)


# -- shadow: paired --------------------------------------------------------------------------


@pytest.mark.parametrize("metric", list(LIVE_METRICS))
def test_a_truly_better_shadow_on_2000_labels_has_its_interval_above_0(metric: str) -> None:
    truth, ours, theirs = data(metric, np.random.default_rng(7), 2000, 0.80, 0.88)
    found = online.compare_shadow(pairs(truth, ours, theirs), metric, "1", "2")

    assert found.computed, found.reason
    assert found.mode == "shadow" and found.labels == 2000
    assert found.difference is not None and found.difference > 0  # positive: better, errors too
    assert found.ci_low is not None and found.ci_high is not None and found.p_value is not None
    assert 0 < found.ci_low <= found.difference <= found.ci_high
    assert found.p_value < 0.01
    # the values are the live metric's, as the window scores it
    assert found.champion_value == pytest.approx(_score(metric, pd.Series(truth), pd.Series(ours)))
    assert found.challenger_value == pytest.approx(
        _score(metric, pd.Series(truth), pd.Series(theirs))
    )


@pytest.mark.parametrize("metric", list(LIVE_METRICS))
def test_a_truly_worse_shadow_has_its_interval_below_0(metric: str) -> None:
    truth, ours, theirs = data(metric, np.random.default_rng(8), 2000, 0.88, 0.80)
    found = online.compare_shadow(pairs(truth, ours, theirs), metric, "1", "2")

    assert found.ci_high is not None and found.ci_high < 0, found.sentence()


@pytest.mark.parametrize(
    ("metric", "level"),
    [("accuracy", 0.95), ("mean_absolute_error", 0.95), ("f1", 0.95), ("accuracy", 0.8)],
)
def test_equal_shadows_cover_0_as_often_as_the_confidence_says(metric: str, level: float) -> None:
    covered = 0
    for seed in range(200):
        truth, ours, theirs = data(metric, np.random.default_rng(seed), 300, 0.8, 0.8)
        found = online.compare_shadow(
            pairs(truth, ours, theirs), metric, "1", "2", confidence=level, seed=seed
        )
        assert found.ci_low is not None and found.ci_high is not None
        covered += found.ci_low <= 0 <= found.ci_high
    # binomial spread over 200 draws is about 3 points; the exact test is a little conservative
    assert level - 0.06 <= covered / 200 <= min(1.0, level + 0.06), covered


def test_mcnemar_counts_the_discordant_pairs() -> None:
    # 10 rows: both right on 4, only the challenger right on 5, only the champion on 1
    truth = np.ones(10, int)
    ours = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1])
    theirs = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    found = online.compare_shadow(pairs(truth, ours, theirs), "accuracy", "1", "2")

    assert (found.champion_value, found.challenger_value) == (0.5, 0.9)
    assert found.difference == pytest.approx(0.4)
    assert found.p_value == pytest.approx(0.21875)  # two-sided exact binomial, 1 of 6 at 1/2
    assert "6 discordant pairs" in found.test
    assert found.ci_low is not None and found.ci_low < 0 < found.difference


def test_identical_predictions_are_no_difference() -> None:
    truth, ours = classified(np.random.default_rng(1), 500, 0.9)
    found = online.compare_shadow(pairs(truth, ours, ours), "accuracy", "1", "2")

    assert (found.difference, found.ci_low, found.ci_high, found.p_value) == (0, 0, 0, 1)


def test_the_sentence_says_values_interval_and_counts() -> None:
    truth, ours, theirs = classified(np.random.default_rng(2), 2000, 0.8, 0.9)
    sentence = online.compare_shadow(pairs(truth, ours, theirs), "accuracy", "1", "2").sentence()

    assert sentence.startswith("shadow v2 against champion v1 on 2000 paired labels: accuracy 0.")
    assert "95% CI +0.0" in sentence and "McNemar's exact test" in sentence
    assert sentence.endswith("positive: the challenger is better)")


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ([1, 1, 1, 1], "roc_auc cannot be compared: it needs labels of two classes, not 1"),
        ([1], "1 paired labels: too few"),
    ],
)
def test_what_cannot_be_compared_says_why(labels: list[int], reason: str) -> None:
    n = len(labels)
    found = online.compare_shadow(
        pairs(np.array(labels), np.ones(n), np.zeros(n)), "roc_auc", "1", "2"
    )

    assert not found.computed
    assert found.reason.startswith(reason), found.reason
    assert found.sentence().endswith(found.reason)


def test_a_window_of_100k_regression_rows_is_bounded_work() -> None:
    truth, ours, theirs = regressed(np.random.default_rng(3), 100_000, 1.0, 0.9)
    started = time.perf_counter()
    found = online.compare_shadow(pairs(truth, ours, theirs), "r2_score", "1", "2")

    assert f"{online.MIN_BOOTSTRAPS} resamples" in found.test  # fewer resamples of many cells
    assert time.perf_counter() - started < 60  # seconds here; generous for a loaded machine
    assert found.ci_low is not None and found.ci_low > 0


def test_a_classifier_s_window_is_a_handful_of_cells() -> None:
    truth, ours, theirs = classified(np.random.default_rng(4), 100_000, 0.8, 0.81)
    found = online.compare_shadow(pairs(truth, ours, theirs), "f1", "1", "2")

    assert f"{online.BOOTSTRAPS} resamples" in found.test


def test_string_classes_are_compared_macro_averaged() -> None:
    rng = np.random.default_rng(5)
    truth = rng.choice(["benign", "malignant", "unknown"], 1000)
    ours = np.where(rng.random(1000) < 0.7, truth, "benign")
    found = online.compare_shadow(pairs(truth, ours, truth), "f1", "1", "2")

    assert found.champion_value == pytest.approx(_score("f1", pd.Series(truth), pd.Series(ours)))
    assert found.challenger_value == 1.0
    assert found.ci_low is not None and found.ci_low > 0


# -- what is paired, and the canary's shares -----------------------------------------------


def window_of(rows: list[tuple[str, int, str, str, int, int | None]]) -> pd.DataFrame:
    """A window: (request id, row, version, arm, prediction, label) per row."""
    frame = pd.DataFrame(
        rows, columns=["request_id", "row", "model_version", "arm", "prediction", "label"]
    )
    frame["time"] = pd.Timestamp("2026-12-04", tz="UTC")
    return frame


def test_shadow_pairs_are_the_labeled_rows_both_versions_predicted() -> None:
    window = window_of(
        [
            ("a", 0, "1", "champion", 1, 1),
            ("a", 1, "1", "champion", 0, None),  # no label
            ("b", 0, "1", "champion", 0, 1),  # the shadow failed on it
            ("c", 0, "0", "champion", 1, 1),  # an older champion answered
            ("d", 0, "2", "canary", 1, 1),  # a canary answer is no pair
            ("e", 0, "1", "champion", 1, 0),
        ]
    )
    shadow = pd.DataFrame(
        {
            "request_id": ["a", "a", "b", "c", "d", "e", "e"],
            "row": [0, 1, 0, 0, 0, 0, 0],
            "model_version": ["2", "2", "2", "2", "2", "3", "2"],
            "prediction": [0, 1, None, 1, 1, 1, 0],
            "error": [None, None, "boom", None, None, None, None],
        }
    )
    found = online.shadow_pairs(window, shadow, "1", "2")

    assert found.to_dict("list") == {"label": [1, 0], "champion": [1, 1], "challenger": [0, 0]}


def test_a_canary_is_compared_on_its_own_share_with_the_counts() -> None:
    rng = np.random.default_rng(6)
    rows = []
    for i in range(900):
        arm = "canary" if i % 10 == 0 else "champion"
        version = "2" if arm == "canary" else "1"
        truth = int(rng.integers(0, 2))
        right = rng.random() < (0.95 if arm == "canary" else 0.8)
        label = truth if i % 3 else None  # two labeled rows of three
        rows.append((f"r{i}", 0, version, arm, truth if right else 1 - truth, label))
    rows.append(("old", 0, "0", "champion", 1, 1))  # answered by an older champion
    window = window_of(rows)
    found = online.compare_canary(window, "accuracy", "1", "2")

    canary = [r for r in rows if r[3] == "canary" and r[5] is not None]
    champion = [r for r in rows if r[3] == "champion" and r[2] == "1" and r[5] is not None]
    assert (found.challenger_labels, found.champion_labels) == (len(canary), len(champion))
    assert found.labels == len(canary) + len(champion)
    assert found.mode == "canary" and found.test == "two-proportion z test"
    assert found.challenger_value == pytest.approx(np.mean([r[4] == r[5] for r in canary]))
    assert found.ci_low is not None and found.ci_low > 0
    assert found.counts() == f"{len(canary)} canary and {len(champion)} champion labels"


def test_a_log_without_arms_counts_the_challenger_version_s_answers() -> None:
    window = window_of([("a", 0, "1", "x", 1, 1), ("b", 0, "2", "x", 1, 1)]).drop(columns="arm")

    assert len(online.canary_rows(window, "2")) == 1
    assert len(online.champion_rows(window, "1")) == 1


@pytest.mark.parametrize("metric", ["accuracy", "mean_squared_error", "f1", "r2_score"])
def test_equal_canaries_cover_0_about_95_percent(metric: str) -> None:
    covered = 0
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        truth, ours, theirs = data(metric, rng, 400, 0.8, 0.8)
        arm = np.where(np.arange(400) % 4 == 0, "canary", "champion")
        window = pd.DataFrame(
            {
                "request_id": [f"r{i}" for i in range(400)],
                "row": 0,
                "model_version": np.where(arm == "canary", "2", "1"),
                "arm": arm,
                "prediction": np.where(arm == "canary", theirs, ours),
                "label": truth,
            }
        )
        found = online.compare_canary(window, metric, "1", "2", seed=seed)
        assert found.ci_low is not None and found.ci_high is not None, found.reason
        covered += found.ci_low <= 0 <= found.ci_high
    assert 0.89 <= covered / 200 <= 1.0, covered


@pytest.mark.parametrize("metric", ["accuracy", "mean_absolute_error", "roc_auc"])
def test_a_truly_better_canary_is_found_better(metric: str) -> None:
    rng = np.random.default_rng(11)
    truth, ours, theirs = data(metric, rng, 4000, 0.75, 0.9)
    arm = np.where(np.arange(4000) % 2 == 0, "canary", "champion")
    window = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(4000)],
            "row": 0,
            "model_version": np.where(arm == "canary", "2", "1"),
            "arm": arm,
            "prediction": np.where(arm == "canary", theirs, ours),
            "label": truth,
        }
    )
    found = online.compare_canary(window, metric, "1", "2")

    assert found.ci_low is not None and found.ci_low > 0, found.sentence()
    assert (found.champion_labels, found.challenger_labels) == (2000, 2000)


# -- the shadow log --------------------------------------------------------------------------


def test_the_shadow_log_is_read_one_row_per_predicted_row(tmp_path: Path) -> None:
    ms = int(datetime(2026, 12, 4, 12, tzinfo=UTC).timestamp() * 1000)
    log = PredictionLog(tmp_path)
    try:
        log.write_shadow("a", ms, "2", 2, 0.01, outputs=[1, 0])
        log.write_shadow("b", ms, "2", 1, 0.0, error="boom")
    finally:
        log.close()
    found = online.load_shadow_rows(tmp_path, since_ms=ms)

    assert list(found["request_id"]) == ["a", "a", "b"]
    assert list(found["row"]) == [0, 1, 0]
    assert found["prediction"].tolist()[:2] == [1, 0]
    assert found["error"].tolist() == [None, None, "boom"]
    assert online.load_shadow_rows(tmp_path, since_ms=ms + 1).empty
    assert online.load_shadow_rows(tmp_path / "nowhere", None).empty
