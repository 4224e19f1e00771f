"""A check's online evaluation: the live comparison, and the promotion it decides.

When the model has a challenger that a service shadows (``mlnb serve MODEL
--shadow challenger``) or canaries (``--canary challenger:10%``), each check
compares it with the champion on the window's labels
(:mod:`mlnb.predictions.online`) and logs the figures on its run. With
``promotion: {online: ...}`` the comparison also decides
(:func:`decide`): a challenger with ``min_labels`` labels that is better by
``min_improvement`` or more, the low end of its interval above 0, becomes
champion (:meth:`~mlnb.models.registry.Registry.promote_on_evidence`, which
keeps the history for rollback); one whose interval's high end is below 0
loses its alias, which stops the shadow or canary (the service follows the
alias). Anything else waits.

Design decisions:

- **The gate's verdict stands.** A challenger the gate rejected offline is
  compared, never promoted on live evidence.
- **Evidence about a champion is about that champion.** The promotion
  happens under the gate's lock and only while the version compared is
  still champion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlnb import tags
from mlnb.predictions.online import (
    CANARY,
    OnlineComparison,
    compare_canary,
    compare_shadow,
    load_shadow_rows,
    shadow_pairs,
    shadow_versions,
)
from mlnb.specs.monitor import LIVE_METRICS, Monitor, OnlineSpec
from mlnb.tags import ModelDecision, OnlineDecision

if TYPE_CHECKING:
    import pandas as pd

    from mlnb.models.registry import Registry

#: the alias compared when promotion is not online
CHALLENGER = "challenger"


@dataclass(frozen=True)
class OnlineResult:
    """What a check made of the live comparison.

    Attributes:
        comparison: the figures.
        decision: what it decided.
        reason: why, in a sentence.
    """

    comparison: OnlineComparison
    decision: OnlineDecision
    reason: str

    def metrics(self) -> dict[str, float]:
        """The figures as the check run's metrics (charted over the checks)."""
        c = self.comparison
        found: dict[str, float] = {"online_labels": c.labels}
        if c.mode == "canary":
            found["online_champion_labels"] = c.champion_labels
            found["online_challenger_labels"] = c.challenger_labels
        figures = {
            f"online_champion_{c.metric}": c.champion_value,
            f"online_challenger_{c.metric}": c.challenger_value,
            "online_difference": c.difference,
            "online_ci_low": c.ci_low,
            "online_ci_high": c.ci_high,
            "online_p_value": c.p_value,
        }
        found.update({k: v for k, v in figures.items() if v is not None})
        return found

    def tags(self) -> dict[str, str]:
        """The comparison's mode, versions and decision, as the check run's tags."""
        c = self.comparison
        found = {
            tags.ONLINE_MODE: c.mode,
            tags.ONLINE_METRIC: c.metric,
            tags.ONLINE_CHAMPION: c.champion_version,
            tags.ONLINE_CHALLENGER: c.challenger_version,
            tags.ONLINE_TEST: c.test,
            tags.ONLINE_SENTENCE: c.sentence()[: tags.VALUE_LIMIT],
            tags.ONLINE_DECISION: str(self.decision),
            tags.ONLINE_REASON: self.reason[: tags.VALUE_LIMIT],
        }
        return {key: value for key, value in found.items() if value}


def the_alias(monitor: Monitor) -> str:
    """The alias of the version compared with the champion."""
    return monitor.online.alias if monitor.online else CHALLENGER


def the_metric(monitor: Monitor) -> tuple[str, float] | None:
    """The metric compared and the interval's confidence; ``None`` when there is no metric."""
    if monitor.online is not None:
        return monitor.online.metric, monitor.online.confidence
    performance = monitor.spec.performance
    if performance is not None and performance.metric in LIVE_METRICS:
        return performance.metric, 0.95
    return None


def compare(
    monitor: Monitor, window: pd.DataFrame, champion: str, challenger: str
) -> OnlineComparison | None:
    """The live comparison of the window, when a service shadows or canaries ``challenger``.

    Shadow records of the challenger in the window's time make it a shadow
    comparison; else canary answers of it in the window a canary one.
    ``None`` when there are neither, or no metric to compare.
    """
    chosen = the_metric(monitor)
    if chosen is None or window.empty or challenger == champion:
        return None
    metric, confidence = chosen
    since_ms = int(window["time"].min().timestamp() * 1000)
    shadow = load_shadow_rows(monitor.log_dir, since_ms)
    if challenger in shadow_versions(shadow):
        pairs = shadow_pairs(window, shadow, champion, challenger)
        return compare_shadow(pairs, metric, champion, challenger, confidence=confidence)
    versions = window["model_version"].astype(str) == challenger
    if "arm" in window:
        versions &= window["arm"] == CANARY
    if versions.any():
        return compare_canary(window, metric, champion, challenger, confidence=confidence)
    return None


def decide(
    comparison: OnlineComparison, spec: OnlineSpec | None, gate_decision: str | None
) -> OnlineResult:
    """What the comparison calls for under ``spec`` (``None``: promotion is not online)."""
    c = comparison
    if spec is None:
        return OnlineResult(c, OnlineDecision.COMPARED, c.sentence())
    labels = c.labels if c.mode == "shadow" else c.challenger_labels
    if labels < spec.min_labels:
        return OnlineResult(
            c, OnlineDecision.WAITING, f"waiting: {labels} of {spec.min_labels} labels"
        )
    if not c.computed:
        return OnlineResult(c, OnlineDecision.UNDECIDED, f"no comparison yet: {c.reason}")
    assert c.difference is not None and c.ci_low is not None and c.ci_high is not None
    figures = (
        f"{c.metric} {c.difference:+.4f} ({c.confidence:.0%} CI {c.ci_low:+.4f} to "
        f"{c.ci_high:+.4f}, p={c.p_value:.3g}) on {c.counts()} ({c.mode})"
    )
    if c.ci_high < 0:
        return OnlineResult(
            c,
            OnlineDecision.REMOVED,
            f"v{c.challenger_version} is worse than champion v{c.champion_version} on live "
            f"labels: {figures}; its alias {spec.alias} is removed",
        )
    if c.ci_low > 0 and c.difference >= spec.min_improvement:
        if gate_decision == ModelDecision.REJECTED:
            return OnlineResult(
                c,
                OnlineDecision.REFUSED,
                f"v{c.challenger_version} is better on live labels ({figures}), but the gate "
                "rejected it offline; promote it by hand with mlnb promote --force",
            )
        return OnlineResult(
            c,
            OnlineDecision.PROMOTED,
            f"v{c.challenger_version} promoted on live evidence over "
            f"v{c.champion_version}: {figures}",
        )
    if c.ci_low > 0:
        why = f"better by less than min_improvement {spec.min_improvement:g}"
    else:
        why = "no significant difference yet"
    return OnlineResult(c, OnlineDecision.UNDECIDED, f"{why}: {figures}")


def act(
    result: OnlineResult, registry: Registry, model: str, alias: str, check_run: str
) -> OnlineResult:
    """Move the aliases as ``result`` decided; the decision and reason go on the version.

    A champion (or challenger) that moved meanwhile turns a promotion into a
    refusal: the evidence was about other versions.
    """
    c = result.comparison
    version_tags = {
        tags.ONLINE_DECISION: result.decision,
        tags.ONLINE_REASON: result.reason[: tags.VALUE_LIMIT],
        tags.ONLINE_CHECK_RUN: check_run,
    }
    if result.decision == OnlineDecision.PROMOTED:
        moved = registry.promote_on_evidence(
            model, c.challenger_version, c.champion_version, result.reason, version_tags, alias
        )
        if moved is None:
            return OnlineResult(
                c,
                OnlineDecision.REFUSED,
                f"champion or {alias} moved from v{c.champion_version} and "
                f"v{c.challenger_version} while the check compared; the next check compares again",
            )
    elif result.decision == OnlineDecision.REMOVED:
        registry.remove_alias(model, alias, c.challenger_version, version_tags)
    return result
