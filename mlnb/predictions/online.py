"""Online evaluation: the champion and a challenger compared on the same live labels.

A service runs a challenger beside its champion in one of two ways, and the
comparison follows the way:

- **shadow** (``mlnb serve MODEL --shadow challenger``): every request is
  answered by the champion and also scored by the challenger off the answer
  path (``shadow-YYYY-MM-DD.jsonl``). The two versions predicted the very
  same rows, so they are compared *paired*, on the rows where both predicted
  and a label came (:func:`compare_shadow`);
- **canary** (``--canary challenger:10%``): that share of the requests is
  answered by the challenger (``"arm": "canary"``). Each version is scored on
  its own share, and the two are compared as *independent* samples
  (:func:`compare_canary`).

For each live metric (:data:`~mlnb.specs.monitor.LIVE_METRICS`) the result
(:class:`OnlineComparison`) gives both values, their difference signed so
that a positive one means the challenger is better (whatever the metric's
direction), its confidence interval and a p-value:

============================  ==========================  ============================
metric                        shadow (paired)             canary (independent)
============================  ==========================  ============================
accuracy                      McNemar's exact test on     two-proportion z (unpooled),
                              the discordant pairs, the   its Wald interval
                              Clopper-Pearson interval
                              of their split
mean_absolute_error,          paired t on the per-row     Welch's t on the per-row
mean_squared_error            losses                      losses
the others (f1, precision,    paired bootstrap (the       independent bootstrap of
recall, balanced_accuracy,    same resampled rows for     each share
roc_auc, r2_score, RMSE)      both), percentile interval
============================  ==========================  ============================

Design decisions:

- **Bounded work.** A bootstrap resamples *cells* (distinct combinations of
  label and predictions, with their counts) from a multinomial, never rows:
  a classifier's window of 100,000 rows has a handful of cells; a
  regressor's has up to one per row, and the number of resamples shrinks so
  that their product stays under :data:`MAX_CELL_DRAWS`.
- **Seeded.** The same window gives the same interval in every check.
- **Pure.** No MLflow here; :mod:`mlnb.monitoring.check` logs the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mlnb.predictions.log import CANARY, SHADOW_COLUMNS, load_shadow
from mlnb.specs.monitor import LIVE_METRICS

if TYPE_CHECKING:
    import pandas as pd

Mode = Literal["shadow", "canary"]
#: metrics that are the mean of a per-row loss: compared with t tests
MEAN_LOSSES = ("mean_absolute_error", "mean_squared_error")
#: metrics that need numeric labels and predictions
NUMERIC = ("roc_auc", "r2_score", "root_mean_squared_error", *MEAN_LOSSES)
#: bootstrap resamples when the cells are few
BOOTSTRAPS = 2000
#: the fewest resamples, however many cells
MIN_BOOTSTRAPS = 200
#: resamples times cells, at most (bounds a bootstrap's time and memory)
MAX_CELL_DRAWS = 20_000_000
_CHUNK_CELLS = 2_000_000  # resamples × cells held in memory at once
_SEED = 20261204


@dataclass(frozen=True)
class OnlineComparison:
    """The challenger against the champion on live labels.

    Attributes:
        mode: ``shadow`` (paired, the same rows) or ``canary`` (each on its share).
        metric: the live metric (a key of ``LIVE_METRICS``).
        champion_version: the version that answered.
        challenger_version: the version shadowed, or the canary.
        labels: labeled rows compared: the pairs (shadow), both shares (canary).
        champion_labels: labeled rows of the champion (shadow: the pairs).
        challenger_labels: labeled rows of the challenger (shadow: the pairs).
        champion_value: the metric of the champion on them.
        challenger_value: the metric of the challenger.
        difference: challenger minus champion, signed so that positive is better.
        ci_low: the low end of the difference's confidence interval.
        ci_high: its high end.
        p_value: of the hypothesis that the two are equally good.
        confidence: of the interval.
        test: how interval and p-value were computed.
        reason: why there are no figures (empty when there are).
    """

    mode: Mode
    metric: str
    champion_version: str
    challenger_version: str
    labels: int
    champion_labels: int
    challenger_labels: int
    champion_value: float | None = None
    challenger_value: float | None = None
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    confidence: float = 0.95
    test: str = ""
    reason: str = ""

    @property
    def computed(self) -> bool:
        """Whether the comparison has its figures."""
        return self.difference is not None

    def counts(self) -> str:
        """The labels it rests on, as a person reads them."""
        if self.mode == "shadow":
            return f"{self.labels} paired labels"
        return f"{self.challenger_labels} canary and {self.champion_labels} champion labels"

    def sentence(self) -> str:
        """The comparison in one sentence."""
        head = (
            f"{self.mode} v{self.challenger_version} against champion "
            f"v{self.champion_version} on {self.counts()}"
        )
        if not self.computed:
            return f"{head}: {self.reason}"
        assert self.ci_low is not None and self.ci_high is not None and self.p_value is not None
        return (
            f"{head}: {self.metric} {self.challenger_value:.4f} against "
            f"{self.champion_value:.4f}, difference {self.difference:+.4f} "
            f"({self.confidence:.0%} CI {self.ci_low:+.4f} to {self.ci_high:+.4f}, "
            f"p={self.p_value:.3g}, {self.test}; positive: the challenger is better)"
        )


# -- what is compared ------------------------------------------------------------------------


def champion_answers(window: pd.DataFrame) -> pd.DataFrame:
    """The window's rows the champion answered: every row but a canary's."""
    return window[window["arm"] != CANARY] if "arm" in window else window


def champion_rows(window: pd.DataFrame, champion: str) -> pd.DataFrame:
    """The window's labeled rows answered by ``champion`` (not by a canary)."""
    labeled = window[window["label"].notna()] if "label" in window else window.iloc[:0]
    mine = labeled["model_version"].astype(str) == str(champion)
    if "arm" in labeled:
        mine &= labeled["arm"] != CANARY
    return labeled[mine]


def canary_rows(window: pd.DataFrame, challenger: str) -> pd.DataFrame:
    """The window's labeled rows the canary answered as ``challenger``.

    A table without the ``arm`` column counts the rows the challenger
    version answered.
    """
    labeled = window[window["label"].notna()] if "label" in window else window.iloc[:0]
    mine = labeled["model_version"].astype(str) == str(challenger)
    if "arm" in labeled:
        mine &= labeled["arm"] == CANARY
    return labeled[mine]


def shadow_pairs(
    window: pd.DataFrame, shadow: pd.DataFrame, champion: str, challenger: str
) -> pd.DataFrame:
    """Labeled rows the champion answered and the shadow scored: ``label``, two predictions."""
    import pandas as pd

    answered = champion_rows(window, champion)
    columns = ["label", "champion", "challenger"]
    if answered.empty or shadow.empty or "prediction" not in answered or "prediction" not in shadow:
        return pd.DataFrame({c: [] for c in columns})
    scored = shadow[shadow["model_version"].astype(str) == str(challenger)]
    if "error" in scored:
        scored = scored[scored["error"].isna()]
    left = answered[["request_id", "row", "label", "prediction"]].rename(
        columns={"prediction": "champion"}
    )
    right = scored[["request_id", "row", "prediction"]].rename(columns={"prediction": "challenger"})
    right = right.drop_duplicates(["request_id", "row"], keep="last")
    pairs = left.merge(right, on=["request_id", "row"], how="inner")
    pairs = pairs[pairs["challenger"].notna()]
    return pairs[columns].reset_index(drop=True)


def shadow_versions(shadow: pd.DataFrame) -> set[str]:
    """The versions the shadow log scored."""
    if shadow.empty or "model_version" not in shadow:
        return set()
    return {str(v) for v in shadow["model_version"]}


def load_shadow_rows(log_dir: Path, since_ms: int | None) -> pd.DataFrame:
    """The shadow log of ``log_dir`` from ``since_ms`` on; an empty table when there is none.

    Columns: ``request_id``, ``row``, ``time``, ``model_version``,
    ``prediction``, ``error`` (:func:`~mlnb.predictions.log.load_shadow`).
    """
    import pandas as pd

    empty = pd.DataFrame({c: [] for c in (*SHADOW_COLUMNS, "prediction", "error")})
    if not Path(log_dir).is_dir():
        return empty
    table = load_shadow(Path(log_dir), since_ms=since_ms)
    return empty if table.empty else table


# -- the comparisons ------------------------------------------------------------------------


def compare_shadow(
    pairs: pd.DataFrame,
    metric: str,
    champion: str,
    challenger: str,
    *,
    confidence: float = 0.95,
    seed: int = _SEED,
) -> OnlineComparison:
    """Champion and shadow on the same labeled rows (:func:`shadow_pairs`): a paired test."""
    n = len(pairs)
    base = OnlineComparison("shadow", metric, str(champion), str(challenger), n, n, n)
    base = _with(base, confidence=confidence)
    if n < 2:
        return _with(base, reason=f"{n} paired labels: too few to compare")
    try:
        truth, ours, theirs = _encode(
            metric, pairs["label"], pairs["champion"], pairs["challenger"]
        )
        return _paired(base, truth, ours, theirs, np.random.default_rng(seed))
    except ValueError as exc:
        return _with(base, reason=f"{metric} cannot be compared: {exc}")


def compare_canary(
    window: pd.DataFrame,
    metric: str,
    champion: str,
    challenger: str,
    *,
    confidence: float = 0.95,
    seed: int = _SEED,
) -> OnlineComparison:
    """Champion and canary each on its own labeled share: a test of independent samples."""
    ours, theirs = champion_rows(window, champion), canary_rows(window, challenger)
    base = OnlineComparison(
        "canary",
        metric,
        str(champion),
        str(challenger),
        len(ours) + len(theirs),
        len(ours),
        len(theirs),
        confidence=confidence,
    )
    if min(len(ours), len(theirs)) < 2:
        return _with(base, reason="too few labels on a share to compare")
    if "prediction" not in window:
        return _with(base, reason="the model answers records, not one prediction")
    try:
        truth, predicted = _encode(
            metric,
            _concat(ours["label"], theirs["label"]),
            _concat(ours["prediction"], theirs["prediction"]),
        )
        arm = np.r_[np.zeros(len(ours), bool), np.ones(len(theirs), bool)]
        return _independent(
            base,
            (truth[~arm], predicted[~arm]),
            (truth[arm], predicted[arm]),
            np.random.default_rng(seed),
        )
    except ValueError as exc:
        return _with(base, reason=f"{metric} cannot be compared: {exc}")


def _with(comparison: OnlineComparison, **changes: Any) -> OnlineComparison:
    from dataclasses import replace

    return replace(comparison, **changes)


def _concat(first: pd.Series, second: pd.Series) -> pd.Series:
    import pandas as pd

    return pd.concat([first, second], ignore_index=True)


def _sign(metric: str) -> float:
    """+1 when greater is better, -1 when it is an error."""
    return 1.0 if LIVE_METRICS[metric] else -1.0


def _paired(
    base: OnlineComparison,
    truth: np.ndarray,
    ours: np.ndarray,
    theirs: np.ndarray,
    rng: np.random.Generator,
) -> OnlineComparison:
    metric, level = base.metric, base.confidence
    if metric == "accuracy":
        return _mcnemar(base, truth == ours, truth == theirs)
    if metric in MEAN_LOSSES:
        loss = np.abs if metric == "mean_absolute_error" else np.square
        ours_loss, theirs_loss = loss(truth - ours), loss(truth - theirs)
        low, high, p = _t_interval(ours_loss - theirs_loss, level)
        return _with(
            base,
            champion_value=float(ours_loss.mean()),
            challenger_value=float(theirs_loss.mean()),
            difference=float((ours_loss - theirs_loss).mean()),
            ci_low=low,
            ci_high=high,
            p_value=p,
            test="paired t test",
        )
    cells, counts = np.unique(np.c_[truth, ours, theirs], axis=0, return_counts=True)
    one = counts[None, :].astype(float)
    champion = _metric(metric, cells[:, 0], cells[:, 1], one)[0]
    challenger = _metric(metric, cells[:, 0], cells[:, 2], one)[0]
    if math.isnan(champion) or math.isnan(challenger):
        raise ValueError("it is undefined on these labels")
    sign = _sign(metric)
    draws = []
    for weights in _resamples(counts, rng):
        ours_b = _metric(metric, cells[:, 0], cells[:, 1], weights)
        theirs_b = _metric(metric, cells[:, 0], cells[:, 2], weights)
        draws.append(sign * (theirs_b - ours_b))
    return _bootstrapped(base, champion, challenger, np.concatenate(draws), "paired bootstrap")


def _independent(
    base: OnlineComparison,
    ours: tuple[np.ndarray, np.ndarray],
    theirs: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> OnlineComparison:
    metric, level = base.metric, base.confidence
    from scipy import stats

    if metric == "accuracy":
        right_ours, right_theirs = ours[0] == ours[1], theirs[0] == theirs[1]
        p1, p2 = right_ours.mean(), right_theirs.mean()
        se = math.sqrt(p1 * (1 - p1) / len(right_ours) + p2 * (1 - p2) / len(right_theirs))
        low, high, p = _normal_interval(p2 - p1, se, level)
        return _with(
            base,
            champion_value=float(p1),
            challenger_value=float(p2),
            difference=float(p2 - p1),
            ci_low=low,
            ci_high=high,
            p_value=p,
            test="two-proportion z test",
        )
    if metric in MEAN_LOSSES:
        loss = np.abs if metric == "mean_absolute_error" else np.square
        ours_loss, theirs_loss = loss(ours[0] - ours[1]), loss(theirs[0] - theirs[1])
        difference = float(ours_loss.mean() - theirs_loss.mean())
        if ours_loss.std() == 0 and theirs_loss.std() == 0:
            low, high, p = difference, difference, 1.0 if difference == 0 else 0.0
        else:
            tested = stats.ttest_ind(ours_loss, theirs_loss, equal_var=False)
            interval = tested.confidence_interval(level)
            low, high, p = float(interval.low), float(interval.high), float(tested.pvalue)
        return _with(
            base,
            champion_value=float(ours_loss.mean()),
            challenger_value=float(theirs_loss.mean()),
            difference=difference,
            ci_low=low,
            ci_high=high,
            p_value=p,
            test="Welch t test",
        )
    sides = []
    for truth, predicted in (ours, theirs):
        cells, counts = np.unique(np.c_[truth, predicted], axis=0, return_counts=True)
        value = _metric(metric, cells[:, 0], cells[:, 1], counts[None, :].astype(float))[0]
        if math.isnan(value):
            raise ValueError("it is undefined on a share's labels")
        sides.append((cells, counts, value))
    (c1, n1, v1), (c2, n2, v2) = sides
    budget = max(len(n1), len(n2))
    ours_b = np.concatenate(
        [_metric(metric, c1[:, 0], c1[:, 1], w) for w in _resamples(n1, rng, budget)]
    )
    theirs_b = np.concatenate(
        [_metric(metric, c2[:, 0], c2[:, 1], w) for w in _resamples(n2, rng, budget)]
    )
    draws = _sign(metric) * (theirs_b - ours_b)
    return _bootstrapped(base, v1, v2, draws, "bootstrap of each share")


def _mcnemar(base: OnlineComparison, ours: np.ndarray, theirs: np.ndarray) -> OnlineComparison:
    """McNemar's exact test: of the rows only one version got right, whose are they?

    Given the discordant pairs, the challenger's share of them is binomial
    (one half when the two are equally accurate); its Clopper-Pearson
    interval, scaled by the discordant fraction, is the interval of the
    difference in accuracy.
    """
    from scipy import stats

    n = len(ours)
    only_ours = int(np.count_nonzero(ours & ~theirs))
    only_theirs = int(np.count_nonzero(~ours & theirs))
    discordant = only_ours + only_theirs
    difference = (only_theirs - only_ours) / n
    if discordant == 0:
        low = high = 0.0
        p = 1.0
    else:
        tested = stats.binomtest(only_theirs, discordant, 0.5)
        share = tested.proportion_ci(base.confidence, method="exact")
        scale = discordant / n
        low, high = scale * (2 * share.low - 1), scale * (2 * share.high - 1)
        p = float(tested.pvalue)
    return _with(
        base,
        champion_value=float(ours.mean()),
        challenger_value=float(theirs.mean()),
        difference=float(difference),
        ci_low=float(low),
        ci_high=float(high),
        p_value=min(1.0, p),
        test=f"McNemar's exact test on {discordant} discordant pairs",
    )


def _t_interval(differences: np.ndarray, level: float) -> tuple[float, float, float]:
    """The t interval of a mean of paired differences, and the two-sided p-value."""
    from scipy import stats

    n = len(differences)
    mean = float(differences.mean())
    se = float(differences.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return mean, mean, 1.0 if mean == 0 else 0.0
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return mean - half, mean + half, p


def _normal_interval(difference: float, se: float, level: float) -> tuple[float, float, float]:
    """The normal interval of a difference with standard error ``se``, and its p-value."""
    from scipy import stats

    if se == 0:
        return difference, difference, 1.0 if difference == 0 else 0.0
    half = float(stats.norm.ppf((1 + level) / 2)) * se
    return difference - half, difference + half, float(2 * stats.norm.sf(abs(difference) / se))


def _bootstrapped(
    base: OnlineComparison, champion: float, challenger: float, draws: np.ndarray, test: str
) -> OnlineComparison:
    """The percentile interval of the resampled differences, and the p-value it inverts."""
    draws = draws[~np.isnan(draws)]
    if len(draws) < MIN_BOOTSTRAPS // 2:
        raise ValueError("it is undefined on most resamples of these labels")
    alpha = 1 - base.confidence
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    total = len(draws)
    below = (np.count_nonzero(draws <= 0) + 1) / (total + 1)
    above = (np.count_nonzero(draws >= 0) + 1) / (total + 1)
    return _with(
        base,
        champion_value=float(champion),
        challenger_value=float(challenger),
        difference=_sign(base.metric) * (challenger - champion),
        ci_low=float(low),
        ci_high=float(high),
        p_value=float(min(1.0, 2 * min(below, above))),
        test=f"{test}, {total} resamples",
    )


def _resamples(
    counts: np.ndarray, rng: np.random.Generator, cells: int | None = None
) -> list[np.ndarray]:
    """Bootstrap resamples of the rows as counts per cell, in chunks bounded in memory.

    Resampling rows with replacement is a multinomial draw over the cells;
    ``cells`` (default: these) sets how many resamples the budget allows.
    """
    width = len(counts)
    total = int(min(BOOTSTRAPS, max(MIN_BOOTSTRAPS, MAX_CELL_DRAWS // max(cells or width, 1))))
    chunk = max(1, min(total, _CHUNK_CELLS // max(width, 1)))
    probabilities = counts / counts.sum()
    rows = int(counts.sum())
    found = []
    for start in range(0, total, chunk):
        size = min(chunk, total - start)
        found.append(rng.multinomial(rows, probabilities, size=size).astype(float))
    return found


# -- the metrics, on weighted cells -----------------------------------------------------------


def _encode(metric: str, truth: pd.Series, *predictions: pd.Series) -> tuple[np.ndarray, ...]:
    """Labels and predictions as arrays of one type: numbers, or codes of the classes."""
    import pandas as pd

    series = [s.reset_index(drop=True).infer_objects() for s in (truth, *predictions)]
    numeric = all(pd.api.types.is_numeric_dtype(s) for s in series)
    if metric in NUMERIC:
        if not numeric:
            raise ValueError("it needs numeric labels and predictions")
        arrays = [s.to_numpy(dtype=float) for s in series]
        if metric == "roc_auc":
            classes = np.unique(arrays[0])
            if len(classes) != 2:
                raise ValueError(f"it needs labels of two classes, not {len(classes)}")
            arrays[0] = (arrays[0] == classes[1]).astype(float)
        return tuple(arrays)
    if numeric:
        values = [s.to_numpy() for s in series]
    else:
        values = [s.astype(str).to_numpy() for s in series]
    classes, codes = np.unique(np.concatenate(values), return_inverse=True)
    binary = numeric and set(classes.tolist()) <= {0, 1}
    split = np.split(codes.astype(float), np.cumsum([len(v) for v in values])[:-1])
    if metric in ("f1", "precision", "recall") and binary and len(classes) == 2:
        return tuple(split)  # codes 0 and 1 are the classes 0 and 1: class 1 is positive
    if metric in ("f1", "precision", "recall") and binary:  # one class seen
        only = float(classes[0])
        return tuple(np.full(len(v), only) for v in values)
    if metric in ("f1", "precision", "recall"):
        return tuple(s + 2 for s in split)  # codes from 2: marks macro averaging
    return tuple(split)


def _metric(
    metric: str, truth: np.ndarray, predicted: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """``metric`` of each row of ``weights`` (resamples × cells) on the cells given."""
    total = weights.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "accuracy":
            return (weights @ (truth == predicted).astype(float)) / total
        if metric in ("f1", "precision", "recall"):
            return _f_scores(metric, truth, predicted, weights)
        if metric == "balanced_accuracy":
            recalls = []
            for c in np.unique(truth):
                support = weights @ (truth == c).astype(float)
                hit = weights @ ((truth == c) & (predicted == c)).astype(float)
                recalls.append(np.where(support > 0, hit / support, np.nan))
            return np.nanmean(np.vstack(recalls), axis=0)
        if metric == "roc_auc":
            return _auc(truth, predicted, weights)
        squared = weights @ np.square(truth - predicted)
        if metric == "root_mean_squared_error":
            return np.sqrt(squared / total)
        if metric == "mean_squared_error":
            return squared / total
        if metric == "mean_absolute_error":
            return (weights @ np.abs(truth - predicted)) / total
        if metric == "r2_score":
            mean = (weights @ truth) / total
            spread = weights @ np.square(truth) - total * np.square(mean)
            return np.where(spread > 0, 1 - squared / spread, np.nan)
    raise ValueError(f"unknown live metric '{metric}'")


def _f_scores(
    metric: str, truth: np.ndarray, predicted: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Precision, recall or F1: of class 1 (codes 0 and 1), else macro-averaged (codes from 2)."""
    macro = truth.min(initial=2) >= 2 and predicted.min(initial=2) >= 2
    classes = np.unique(np.r_[truth, predicted]) if macro else np.array([1.0])
    scores = []
    for c in classes:
        tp = weights @ ((truth == c) & (predicted == c)).astype(float)
        fp = weights @ ((truth != c) & (predicted == c)).astype(float)
        fn = weights @ ((truth == c) & (predicted != c)).astype(float)
        if metric == "precision":
            top, bottom = tp, tp + fp
        elif metric == "recall":
            top, bottom = tp, tp + fn
        else:
            top, bottom = 2 * tp, 2 * tp + fp + fn
        scores.append(np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), 0.0))
    return np.mean(np.vstack(scores), axis=0)


def _auc(truth: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The area under the ROC curve (truth 0 or 1), ties counted half, for each resample."""
    order = np.argsort(score, kind="stable")
    ranked = score[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    positive = truth[order]
    w = weights[:, order]
    pos = np.add.reduceat(w * positive, starts, axis=1)
    neg = np.add.reduceat(w * (1 - positive), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    won = (pos * (below + 0.5 * neg)).sum(axis=1)
    return np.where(pairs > 0, won / np.where(pairs > 0, pairs, 1), np.nan)
