"""Evidence beside a challenger's own holdout: data that did not come from its training run.

A challenger's own holdout data is split from the data it was trained on, so
labels that are wrong (an inverted encoding, a join on the wrong key, a
client poisoning ``/feedback``) are wrong on both sides of the split: the
challenger wins there whatever it learnt. The gate therefore also scores it
on tables it cannot have shaped:

- the champion's own holdout (:attr:`Evidence.kind` ``champion_holdout``):
  the data the champion was gated on, recorded on its version;
- the golden data of the ``model:`` section (``golden``): a curated table
  with floors of its own.

On each, the challenger may score worse than the champion by at most the
declared tolerance, and must clear every floor; what it scored is a
:class:`Finding`, recorded on the gate run and the version. Evidence that
cannot be read refuses the challenger rather than letting it through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlnb import tags

if TYPE_CHECKING:
    from pandas import DataFrame

#: how far below a bar a score may fall and still count as meeting it (float noise)
_NOISE = 1e-12


@dataclass(frozen=True)
class Evidence:
    """A table the challenger is also judged on.

    Attributes:
        kind: which evidence it is.
        label: how a sentence names it (``champion v3's holdout``).
        path: its file.
        data: the table, or ``None`` when it cannot be read.
        problem: why it cannot be read.
        floor: metric → the bar the challenger must clear on it.
    """

    kind: tags.Evidence
    label: str
    path: Path
    data: DataFrame | None
    problem: str = ""
    floor: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """What the challenger (and the champion) scored on one piece of evidence.

    Attributes:
        kind: which evidence.
        label: how a sentence names it.
        path: its file.
        score: the challenger's gate metric there (``None``: not scored).
        champion_score: the champion's, when there is a champion.
        floors: metric → (its floor, the challenger's score).
        failure: the clause that refuses the challenger; ``None`` when it passes.
    """

    kind: tags.Evidence
    label: str
    path: Path
    score: float | None
    champion_score: float | None
    floors: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    failure: str | None = None

    @property
    def passed(self) -> bool:
        """Whether the challenger holds up on this evidence."""
        return self.failure is None

    def version_tags(self) -> dict[str, object]:
        """The figures as version tags, ``mlnb.gate.evidence.<kind>.<figure>``."""
        prefix = f"{tags.GATE_EVIDENCE_PREFIX}{self.kind}."
        found: dict[str, object] = {f"{prefix}path": self.path, f"{prefix}passed": self.passed}
        if self.score is not None:
            found[f"{prefix}score"] = self.score
        if self.champion_score is not None:
            found[f"{prefix}champion_score"] = self.champion_score
        for metric, (_, score) in self.floors.items():
            found[f"{prefix}{metric}"] = score
        if self.failure is not None:
            found[f"{prefix}failure"] = self.failure
        return found

    def metrics(self, metric: str) -> dict[str, float]:
        """The figures as metrics of the gate run, ``challenger_<metric>.<kind>`` and so on."""
        found = {}
        if self.score is not None:
            found[f"challenger_{metric}.{self.kind}"] = self.score
        if self.champion_score is not None:
            found[f"champion_{metric}.{self.kind}"] = self.champion_score
        for name, (_, score) in self.floors.items():
            found[f"challenger_{name}.{self.kind}"] = score
        return found


@dataclass(frozen=True)
class Rules:
    """What the challenger must do on evidence: the gate's metric, direction and tolerance."""

    metric: str
    greater_is_better: bool
    tolerance: float
    directions: Mapping[str, bool]  # metric → whether greater is better, for the floors


def unreadable(evidence: Evidence) -> Finding:
    """The finding on evidence that cannot be read: it refuses the challenger."""
    return Finding(
        evidence.kind,
        evidence.label,
        evidence.path,
        None,
        None,
        failure=(
            f"it cannot be judged on {evidence.label} ({evidence.problem}); restore the file, "
            "or promote it by hand with mlnb promote --force"
        ),
    )


def weigh(
    evidence: Evidence,
    rules: Rules,
    scores: Mapping[str, float],
    champion: tuple[str, float] | None,
) -> Finding:
    """What the challenger's scores on ``evidence`` mean.

    Args:
        evidence: the table scored.
        rules: the gate's metric, its direction, the tolerance, the floors' directions.
        scores: the challenger's metrics there (the gate metric and every floor's).
        champion: the champion's version and its gate metric there, if there is a champion.
    """
    metric = rules.metric
    score = scores[metric]
    floors = {name: (bar, scores[name]) for name, bar in evidence.floor.items()}
    failure = _regression(evidence, rules, score, champion) or _below_floor(evidence, rules, floors)
    return Finding(
        evidence.kind,
        evidence.label,
        evidence.path,
        score,
        champion[1] if champion else None,
        floors,
        failure,
    )


def _regression(
    evidence: Evidence, rules: Rules, score: float, champion: tuple[str, float] | None
) -> str | None:
    """The clause when the challenger scores worse than the champion beyond the tolerance."""
    if champion is None:
        return None
    version, best = champion
    worse_by = best - score if rules.greater_is_better else score - best
    if worse_by <= rules.tolerance + _NOISE:
        return None
    return (
        f"{score:.4f} on {evidence.label} (v{version}: {best:.4f}; tolerance {rules.tolerance:g})"
    )


def _below_floor(
    evidence: Evidence, rules: Rules, floors: Mapping[str, tuple[float, float]]
) -> str | None:
    """The clause when the challenger misses a floor of the evidence."""
    for name, (bar, score) in floors.items():
        greater = rules.directions.get(name, True)
        if (score < bar - _NOISE) if greater else (score > bar + _NOISE):
            side = "below" if greater else "above"
            return f"{name} {score:.4f} on {evidence.label}, {side} its floor {bar:g}"
    return None


def summary(findings: list[Finding], rules: Rules) -> str:
    """The findings of a challenger that held up, as a clause to add to the gate's sentence."""
    parts = []
    for found in findings:
        if found.score is None:
            continue
        text = f"{found.score:.4f} on {found.label}"
        if found.champion_score is not None:
            text += f" (champion {found.champion_score:.4f}; tolerance {rules.tolerance:g})"
        floors = (f"{m} {s:.4f} (floor {b:g})" for m, (b, s) in found.floors.items())
        parts.extend([text, *floors])
    return "; ".join(parts)
