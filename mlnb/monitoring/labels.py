"""Whether a window's labels are plausible on their face, before a retrain learns from them.

Labels arrive through ``/feedback`` and become the next model's training
data, so a wrong feed (an inverted encoding, a join on the wrong key, a
client poisoning it) would retrain the model on it, and the retrained model
would win on a holdout split from the same labels. Two tests, each a
setting of the monitor spec's ``labels:`` section, catch what is wrong on
its face:

- **worse than a constant** (``below_constant``): the champion's live metric
  is far worse than what always answering the labels' majority class (their
  mean, for a regressor) scores on the same labels. A model that went stale
  scores about as well as a constant; one far below it disagrees with the
  labels systematically.
- **a shifted distribution** (``max_shift``): the labels' distribution is far
  from the champion's training data: the total variation distance between
  the class shares, or the Kolmogorov-Smirnov statistic for a regressor.

Either makes the labels :attr:`LabelStatus.SUSPICIOUS`; the check then
starts no retrain (:mod:`mlnb.monitoring.check`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from mlnb.predictions.window import LiveMetric, live_metric
from mlnb.specs.monitor import LabelsSpec
from mlnb.specs.pipeline import ModelType

if TYPE_CHECKING:
    import pandas as pd


class LabelStatus(StrEnum):
    """What a check made of the window's labels (:data:`mlnb.tags.CHECK_LABELS`)."""

    PLAUSIBLE = "plausible"
    SUSPICIOUS = "suspicious"  # no automatic retrain on them
    UNTESTED = "untested"  # too few labels, or no test turned on


@dataclass(frozen=True)
class LabelCheck:
    """The labels' verdict, its reason, and the figures behind it (check-run metrics)."""

    status: LabelStatus
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Labeled:
    """What the tests look at: the labels, the live metric on them, the champion's training data.

    Attributes:
        labels: the window's labels (one per labeled prediction).
        live: the live metric of the champion on them (``None`` without one).
        greater_is_better: of the live metric.
        model_type: a classifier's labels are classes, a regressor's numbers.
        reference: the champion's training data (``None`` when its version records none).
        target: the label column of the training data.
    """

    labels: pd.Series
    live: LiveMetric | None
    greater_is_better: bool
    model_type: ModelType
    reference: Path | None
    target: str


def check_labels(labeled: Labeled, spec: LabelsSpec, min_labels: int) -> LabelCheck:
    """Whether the labels are plausible: both tests of ``spec``, on at least ``min_labels``."""
    count = len(labeled.labels)
    if count < min_labels:
        return LabelCheck(
            LabelStatus.UNTESTED, f"{count} labels, fewer than the {min_labels} a test needs"
        )
    metrics: dict[str, float] = {}
    found = [
        _below_constant(labeled, spec.below_constant, metrics),
        _shifted(labeled, spec.max_shift, metrics),
    ]
    problems = [problem for problem in found if problem]
    if problems:
        return LabelCheck(LabelStatus.SUSPICIOUS, "; ".join(problems), metrics)
    if not metrics:
        return LabelCheck(LabelStatus.UNTESTED, "no label test applies", metrics)
    return LabelCheck(LabelStatus.PLAUSIBLE, f"{count} labels look plausible", metrics)


def constant_score(labeled: Labeled) -> LiveMetric | None:
    """The live metric of always answering the labels' majority class (their mean)."""
    import pandas as pd

    live = labeled.live
    if live is None or live.value is None:
        return None
    labels = labeled.labels.infer_objects()
    if labeled.model_type == "regressor":
        answer = float(pd.to_numeric(labels, errors="coerce").mean())
    else:
        answer = labels.mode().iloc[0]
    table = pd.DataFrame({"label": labels.to_numpy(), "prediction": [answer] * len(labels)})
    return live_metric(table, live.metric, 1)


def _below_constant(labeled: Labeled, margin: float | None, metrics: dict[str, float]) -> str:
    """The problem when the live metric is worse than a constant's by more than ``margin``."""
    live = labeled.live
    if margin is None or live is None or live.value is None:
        return ""
    constant = constant_score(labeled)
    if constant is None or constant.value is None:
        return ""
    metrics[f"labels.constant_{live.metric}"] = constant.value
    if labeled.greater_is_better:
        worse = live.value < constant.value - margin
    else:  # an error: worse by a fraction of the constant's own error
        worse = live.value > constant.value * (1 + margin)
    if not worse:
        return ""
    return (
        f"the champion's live {live.metric} {live.value:.4f} is far worse than a constant "
        f"predictor's {constant.value:.4f} on the same {live.labels} labels (margin {margin:g}): "
        "are the labels inverted or joined to the wrong predictions?"
    )


def _shifted(labeled: Labeled, limit: float | None, metrics: dict[str, float]) -> str:
    """The problem when the labels' distribution is farther than ``limit`` from training's."""
    if limit is None or labeled.reference is None:
        return ""
    reference = _reference_labels(labeled.reference, labeled.target)
    if reference is None or reference.empty:
        return ""
    if labeled.model_type == "regressor":
        distance, how = _ks(reference, labeled.labels), "Kolmogorov-Smirnov statistic"
    else:
        distance, how = _total_variation(reference, labeled.labels), "total variation distance"
    metrics["labels.shift"] = distance
    if distance <= limit:
        return ""
    return (
        f"the labels' distribution is {distance:.2f} from the champion's training data "
        f"({how}; max_shift {limit:g})"
    )


def _reference_labels(path: Path, target: str) -> pd.Series | None:
    """The target column of the champion's training data; ``None`` when it cannot be read."""
    import pandas as pd

    try:
        if path.suffix in (".parquet", ".pq"):
            table = pd.read_parquet(path, columns=[target])
        else:
            table = pd.read_csv(path, usecols=[target])
    except (OSError, ValueError, KeyError):
        return None
    return table[target].dropna()


def _total_variation(reference: pd.Series, labels: pd.Series) -> float:
    """Half the L1 distance between the class shares."""
    ours = _classes(labels).value_counts(normalize=True)
    theirs = _classes(reference).value_counts(normalize=True)
    classes = ours.index.union(theirs.index)
    gap = ours.reindex(classes, fill_value=0.0) - theirs.reindex(classes, fill_value=0.0)
    return float(gap.abs().sum() / 2)


def _classes(values: pd.Series) -> pd.Series:
    """Classes as text, whole numbers without a decimal point (labels read as 1.0 are 1)."""
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all() and (numbers == numbers.round()).all():
        return numbers.astype("int64").astype(str)
    return values.astype(str)


def _ks(reference: pd.Series, labels: pd.Series) -> float:
    """The two-sample Kolmogorov-Smirnov statistic of numeric labels: the widest ECDF gap."""
    import numpy as np
    import pandas as pd

    ours = np.sort(pd.to_numeric(labels, errors="coerce").dropna().to_numpy(dtype=float))
    theirs = np.sort(pd.to_numeric(reference, errors="coerce").dropna().to_numpy(dtype=float))
    if not len(ours) or not len(theirs):
        return 0.0
    points = np.concatenate([ours, theirs])
    gap = np.searchsorted(ours, points, "right") / len(ours) - np.searchsorted(
        theirs, points, "right"
    ) / len(theirs)
    return float(np.abs(gap).max())
