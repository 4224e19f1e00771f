"""The gate: score a challenger and the champion on the same holdout data, and decide.

The comparison is MLflow's, not a home-made one: each model is scored by
``mlflow.models.evaluate`` in a nested run of its own, and the decision is
``mlflow.validate_evaluation_results`` with a ``MetricThreshold`` (an absolute
bar, a margin over the champion, or both). A gate run in MLflow holds both
scores, the decision and its reason, one sentence a person can read.

A challenger that wins on its own holdout is also scored on evidence that did
not come from its training run (:mod:`mlnb.models.evidence`): the champion's
holdout and the golden data. It is promoted only if it scores no worse than
the champion there beyond the tolerance, and clears the golden data's floors.
Every error, in any of these evaluations, ends the gate run ``FAILED``.

The gate knows the MLflow client and the evaluation, nothing of aliases: the
registry (:meth:`mlnb.models.registry.Registry.gate`) looks up the versions,
calls :meth:`Gate.decide`, records the decision on the version and moves
``champion``. So this module imports no registry, and the registry imports it.
The gate's settings travel as a version tag (:func:`gate_tags`), read back
through :meth:`GateConfig.from_json`, so a later ``mlnb promote`` decides the
way the pipeline's ``model:`` section said.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from mlnb import tags
from mlnb.models import RegistryError
from mlnb.models._fluent import process_store, quiet
from mlnb.models.evidence import Evidence, Finding, Rules, summary, unreadable, weigh
from mlnb.specs.pipeline import METRICS, ModelSpec, ModelType
from mlnb.tags import EndState, ModelDecision
from mlnb.tracking import ensure_experiment

if TYPE_CHECKING:
    from mlflow.models import EvaluationResult, MetricThreshold
    from pandas import DataFrame

#: where the gate's runs go when no pipeline run holds them (``mlnb promote``)
GATE_EXPERIMENT = "mlnb-gate"

#: the two sides of the comparison, as the evaluation runs are named
Role = Literal["challenger", "champion"]

#: the smallest gain that counts as beating the champion when no margin is set
_ANY_GAIN = 1e-12


@dataclass(frozen=True)
class GateConfig:
    """How the gate decides, as the ``model:`` section of a spec sets it."""

    metric: str
    greater_is_better: bool
    model_type: ModelType
    target: str
    threshold: float | None = None
    min_improvement: float = 0.0
    tolerance: float = 0.02
    golden: str | None = None
    floor: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, model: ModelSpec) -> GateConfig:
        """Build the gate settings of a ``model:`` section (its golden path as loaded)."""
        greater = model.greater_is_better
        if greater is None:
            greater = METRICS[model.type][model.metric]
        golden = model.golden
        return cls(
            model.metric,
            greater,
            model.type,
            model.target,
            model.threshold,
            model.min_improvement,
            model.tolerance,
            golden.path if golden else None,
            dict(golden.floor) if golden else {},
        )

    def rules(self) -> Rules:
        """What the challenger must do on evidence beside its own holdout."""
        known = METRICS[self.model_type]
        directions = {name: known.get(name, True) for name in self.floor}
        directions[self.metric] = self.greater_is_better
        return Rules(self.metric, self.greater_is_better, self.tolerance, directions)

    @classmethod
    def from_json(cls, text: str) -> GateConfig:
        """Read the settings a version records (:func:`gate_tags`) back.

        Raises:
            ValueError: the text is not gate settings; the message names each wrong field.
        """
        from pydantic import TypeAdapter, ValidationError

        try:
            return TypeAdapter(cls).validate_json(text)
        except ValidationError as exc:
            problems = (
                f"{'.'.join(map(str, e['loc'])) or 'the text'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError("; ".join(problems)) from None


def gate_tags(config: GateConfig, holdout: Path | str, digest: str = "") -> dict[str, str]:
    """Version tags that let the gate run again later, anywhere.

    Args:
        config: the gate's settings.
        holdout: the holdout's artifact URI in the store (or a local path).
        digest: the holdout's content hash (names its download folder).
    """
    found = {tags.GATE_CONFIG: json.dumps(asdict(config)), tags.HOLDOUT: str(holdout)}
    if digest:
        found[tags.HOLDOUT_SHA] = digest
    return found


@dataclass(frozen=True)
class Decision:
    """What the gate (or a person) decided about a version.

    Attributes:
        name: the registered model.
        version: the version decided about.
        promoted: whether ``champion`` now points at it.
        champion: the version that was champion before, if any.
        metric: the gate metric.
        score: the version's score on the holdout data.
        champion_score: the champion's score on the same data.
        reason: one sentence a person can read.
        run_id: the MLflow run holding the evaluation, if one ran.
        held: the gate passed it, but promotion is manual: ``champion`` did not move.
        findings: what it scored on evidence beside its own holdout.
    """

    name: str
    version: str
    promoted: bool
    champion: str | None
    metric: str | None
    score: float | None
    champion_score: float | None
    reason: str
    run_id: str | None = None
    held: bool = False
    findings: tuple[Finding, ...] = ()

    @property
    def outcome(self) -> ModelDecision:
        """The decision as one word: promoted, passed (held), rejected, or champion already."""
        if self.promoted:
            return ModelDecision.PROMOTED
        if self.held:
            return ModelDecision.PASSED
        if self.champion == self.version:
            return ModelDecision.CHAMPION
        return ModelDecision.REJECTED

    def version_tags(self) -> dict[str, object]:
        """The tags that record a gate decision on the version it is about."""
        found: dict[str, object] = {
            tags.GATE_DECISION: self.outcome,
            tags.GATE_REASON: self.reason,
            tags.GATE_SCORE: self.score,
            tags.GATE_RUN: self.run_id,
        }
        if self.champion:
            found[tags.GATE_CHAMPION_VERSION] = self.champion
            found[tags.GATE_CHAMPION_SCORE] = self.champion_score
        for finding in self.findings:
            found.update(finding.version_tags())
        return found


def already_champion(name: str, version: str, metric: str) -> Decision:
    """The decision when the candidate is the champion already: nothing to evaluate."""
    return Decision(
        name, version, False, version, metric, None, None, f"v{version} is already the champion"
    )


def read_holdout(path: Path, target: str) -> DataFrame:
    """The holdout table (CSV or Parquet) the gate scores on: rows, and a ``target`` on each.

    Raises:
        RegistryError: the file cannot be read, has no column ``target``, no
            rows, or rows without a target value (a truncated file, say).
    """
    import pandas as pd

    try:
        data = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the holdout data {path}: {exc}") from exc
    if target not in data.columns:
        raise RegistryError(
            f"{path} has no target column '{target}'; columns: "
            f"{', '.join(map(str, data.columns[:20]))}"
        )
    if data.empty:
        raise RegistryError(f"the holdout data {path} has no rows")
    missing = data[target].isna()
    if missing.any():
        first = int(missing.to_numpy().argmax()) + 1
        raise RegistryError(
            f"the holdout data {path} has no '{target}' on {int(missing.sum())} of "
            f"{len(data)} rows (the first: data row {first}); is the file truncated?"
        )
    return data


@dataclass(frozen=True)
class _Contest:
    """One gate run: where it is, and what its evaluations score on."""

    experiment_id: str
    run_id: str
    name: str
    config: GateConfig
    data: DataFrame
    source: str = ""  # the file the data was read from, as an error names it


@dataclass(frozen=True)
class _Verdict:
    """What MLflow's validation made of the scores, and the sentence that says it.

    ``promoted`` is the verdict; with a hold, the version passed and ``champion`` stays.
    """

    promoted: bool
    score: float
    best: float | None
    reason: str
    findings: tuple[Finding, ...] = ()
    held: bool = False

    @property
    def outcome(self) -> ModelDecision:
        if not self.promoted:
            return ModelDecision.REJECTED
        return ModelDecision.PASSED if self.held else ModelDecision.PROMOTED


class Gate:
    """The gate on one MLflow store: evaluates, decides, and records in its own runs."""

    def __init__(self, client: MlflowClient, uri: str) -> None:
        self.client = client
        self.uri = uri

    def decide(
        self,
        name: str,
        version: str,
        champion: str | None,
        config: GateConfig,
        data: DataFrame,
        *,
        parent_run_id: str | None = None,
        experiment_id: str | None = None,
        evidence: Sequence[Evidence] = (),
        hold: bool | str = False,
        source: Path | None = None,
    ) -> Decision:
        """Score ``version`` (and ``champion``, if any) on ``data``; decide whether it wins.

        A challenger that wins on ``data`` is also scored on each piece of
        ``evidence``, and is promoted only if it holds up there too. Moves no
        alias: the caller does, when the decision says so.

        Args:
            name: the registered model.
            version: the challenger.
            champion: the version it must beat, or ``None`` for a first champion.
            config: how to decide.
            data: the holdout table, with the ``config.target`` column.
            parent_run_id: a run to nest the gate's run under (the pipeline run).
            experiment_id: where the gate's run goes (default: ``mlnb-gate``).
            evidence: tables beside ``data`` (the champion's holdout, the golden data).
            hold: promotion is not the gate's; a version that wins is ``passed``, not
                promoted. A string says who moves ``champion`` then (default: a person,
                with ``mlnb promote``).
            source: the file ``data`` was read from, for the errors to name.

        Raises:
            RegistryError: the store refuses, or an evaluation fails or does
                not compute the metric; the gate's run then ends ``FAILED``.
        """
        if experiment_id is None:
            experiment_id = self._experiment()
        run_id = self._start(experiment_id, name, version, parent_run_id)
        contest = _Contest(experiment_id, run_id, name, config, data, str(source or ""))
        with self._failing(run_id, f"the gate could not evaluate {name} v{version}"):
            verdict = self._judge(contest, version, champion)
            if verdict.promoted and evidence:
                verdict = self._weigh(contest, version, champion, verdict, evidence)
        if hold and verdict.promoted:
            verdict = _held(verdict, name, version, hold if isinstance(hold, str) else None)
        with self._failing(run_id, f"the gate could not record its decision on {name} v{version}"):
            self._record(run_id, config.metric, verdict)
        return Decision(
            name,
            version,
            verdict.promoted and not verdict.held,
            champion,
            config.metric,
            verdict.score,
            verdict.best,
            verdict.reason,
            run_id,
            verdict.held,
            verdict.findings,
        )

    def _experiment(self) -> str:
        try:
            return ensure_experiment(self.client, GATE_EXPERIMENT, self.uri)
        except MlflowException as exc:
            raise RegistryError(f"cannot create the gate's experiment: {exc.message}") from exc

    def _start(self, experiment_id: str, name: str, version: str, parent_run_id: str | None) -> str:
        run_tags = {MLFLOW_RUN_NAME: f"gate {name} v{version}", tags.KIND: tags.Kind.GATE}
        if parent_run_id:
            run_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        try:
            return self.client.create_run(experiment_id, tags=run_tags).info.run_id
        except MlflowException as exc:
            raise RegistryError(f"cannot start the gate's run: {exc.message}") from exc

    @contextlib.contextmanager
    def _failing(self, run_id: str, what: str) -> Iterator[None]:
        """End the gate run ``FAILED`` on an error (``KILLED`` on an interrupt).

        An error from MLflow becomes a :class:`RegistryError` that says ``what`` failed.
        """
        try:
            yield
        except MlflowException as exc:
            self._fail(run_id, "FAILED")
            raise RegistryError(f"{what}: {exc.message}") from exc
        except Exception:
            self._fail(run_id, "FAILED")
            raise
        except BaseException:
            self._fail(run_id, "KILLED")
            raise

    def _fail(self, run_id: str, state: EndState) -> None:
        with contextlib.suppress(MlflowException):  # the error that got here says more
            self._end(run_id, state)

    def _end(self, run_id: str, state: EndState) -> None:
        self.client.set_terminated(run_id, state)

    def _judge(self, contest: _Contest, version: str, champion: str | None) -> _Verdict:
        config = contest.config
        challenger = self._evaluate(contest, version, "challenger")
        baseline = None if champion is None else self._evaluate(contest, champion, "champion")
        score = _metric(challenger, config.metric)
        best = None if baseline is None else _metric(baseline, config.metric)
        promoted = self._passes(config, challenger, baseline)
        return _Verdict(
            promoted, score, best, explain(config, version, score, champion, best, promoted)
        )

    def _weigh(
        self,
        contest: _Contest,
        version: str,
        champion: str | None,
        verdict: _Verdict,
        evidence: Sequence[Evidence],
    ) -> _Verdict:
        """The verdict once the challenger that won is scored on each piece of evidence too."""
        config = contest.config
        rules = config.rules()
        findings = [self._finding(contest, version, champion, item, rules) for item in evidence]
        refused = next((f for f in findings if f.failure is not None), None)
        if refused is None:
            held_up = summary(findings, rules)
            reason = f"{verdict.reason}; {held_up}" if held_up else verdict.reason
            return _Verdict(True, verdict.score, verdict.best, reason, tuple(findings))
        on_own = f"{config.metric} {verdict.score:.4f} on its holdout"
        failure = refused.failure or ""
        clause = failure if refused.score is None else f"{on_own} but {failure}"
        reason = f"v{version} not promoted: {clause}"
        return _Verdict(False, verdict.score, verdict.best, reason, tuple(findings))

    def _finding(
        self,
        contest: _Contest,
        version: str,
        champion: str | None,
        evidence: Evidence,
        rules: Rules,
    ) -> Finding:
        """The challenger (and the champion) scored on one piece of evidence."""
        if evidence.data is None:
            return unreadable(evidence)
        on = _Contest(
            contest.experiment_id,
            contest.run_id,
            contest.name,
            contest.config,
            evidence.data,
            str(evidence.path),
        )
        where = f"on {evidence.label}"
        result = self._evaluate(on, version, "challenger", where)
        scores = {m: _metric(result, m) for m in {rules.metric, *evidence.floor}}
        best = None
        if champion is not None:
            best = (
                champion,
                _metric(self._evaluate(on, champion, "champion", where), rules.metric),
            )
        return weigh(evidence, rules, scores, best)

    def _evaluate(
        self, contest: _Contest, version: str, role: Role, where: str = ""
    ) -> EvaluationResult:
        """Score one version with ``mlflow.models.evaluate`` in a run nested in the gate's.

        Raises:
            RegistryError: the model cannot score the data (its own code raised,
                e.g. on a missing feature); the nested run ends ``FAILED``.
        """
        import mlflow

        name, config = contest.name, contest.config
        side = f"{role} {where}" if where else role
        child = self.client.create_run(
            contest.experiment_id,
            tags={
                MLFLOW_RUN_NAME: f"evaluate {name} v{version} ({side})",
                MLFLOW_PARENT_RUN_ID: contest.run_id,
                tags.KIND: tags.Kind.EVALUATION,
            },
        )
        try:
            with process_store(self.uri), mlflow.start_run(run_id=child.info.run_id), quiet():
                return mlflow.models.evaluate(
                    f"models:/{name}/{version}",
                    data=contest.data,
                    targets=config.target,
                    model_type=config.model_type,
                    evaluators=["default"],
                    evaluator_config={"default": {"log_model_explainability": False}},
                )
        except MlflowException:
            raise
        except Exception as exc:  # the model's own code: it cannot score this data
            data = f" on {contest.source}" if contest.source else ""
            raise RegistryError(
                f"the gate could not evaluate {name} v{version}{data}: {type(exc).__name__}: "
                f"{_one_line(exc)}"
            ) from exc

    def _passes(
        self,
        config: GateConfig,
        challenger: EvaluationResult,
        champion: EvaluationResult | None,
    ) -> bool:
        """Whether MLflow's validation passes the challenger (always, with no bar to meet)."""
        import mlflow
        from mlflow.models.evaluation.validation import ModelValidationFailedException

        threshold = _threshold(config, against_champion=champion is not None)
        if threshold is None:
            return True
        try:
            with process_store(self.uri), quiet():
                mlflow.validate_evaluation_results({config.metric: threshold}, challenger, champion)
        except ModelValidationFailedException:
            return False
        return True

    def _record(self, run_id: str, metric: str, verdict: _Verdict) -> None:
        self.client.set_tag(run_id, tags.GATE_DECISION, verdict.outcome)
        self.client.set_tag(run_id, tags.GATE_REASON, verdict.reason[: tags.VALUE_LIMIT])
        self.client.log_metric(run_id, f"challenger_{metric}", verdict.score)
        if verdict.best is not None:
            self.client.log_metric(run_id, f"champion_{metric}", verdict.best)
        for finding in verdict.findings:
            for key, value in finding.metrics(metric).items():
                self.client.log_metric(run_id, key, value)
        self._end(run_id, "FINISHED")


def _one_line(error: Exception, limit: int = 500) -> str:
    """An error's message on one line, at most ``limit`` characters: a model may say a page."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _held(verdict: _Verdict, name: str, version: str, mover: str | None = None) -> _Verdict:
    """A verdict that passed, when the gate does not promote: the sentence says who moves
    champion (``mover``; by default a person, with ``mlnb promote``)."""
    passed = verdict.reason.replace(f"v{version} promoted:", f"v{version} passed the gate:", 1)
    mover = mover or f"promotion is manual: mlnb promote {name} --version {version}"
    reason = f"{passed}; {mover}"
    return _Verdict(True, verdict.score, verdict.best, reason, verdict.findings, held=True)


def _threshold(config: GateConfig, *, against_champion: bool) -> MetricThreshold | None:
    """The bar MLflow's validation applies: the threshold, a margin over the champion, both."""
    from mlflow.models import MetricThreshold

    if config.threshold is None and not against_champion:
        return None
    return MetricThreshold(
        threshold=config.threshold,
        min_absolute_change=max(config.min_improvement, _ANY_GAIN) if against_champion else None,
        greater_is_better=config.greater_is_better,
    )


def _metric(result: EvaluationResult, metric: str) -> float:
    if metric not in result.metrics:
        known = ", ".join(sorted(result.metrics))
        raise RegistryError(f"mlflow.evaluate computed no metric '{metric}'; it computed: {known}")
    return float(result.metrics[metric])


def explain(
    config: GateConfig,
    version: str,
    score: float,
    champion: str | None,
    best: float | None,
    promoted: bool,
) -> str:
    """One sentence on the decision, from the figures MLflow's validation judged."""
    metric, bar = config.metric, config.threshold
    if promoted and champion is None:
        limit = f" (threshold {bar:g})" if bar is not None else ""
        return f"v{version} promoted: first champion, {metric} = {score:.4f}{limit}"
    margin = f" by at least {config.min_improvement:g}" if config.min_improvement else ""
    if promoted:
        return (
            f"v{version} promoted: {metric} {score:.4f} beats champion v{champion} "
            f"({best:.4f}){margin}"
        )
    if bar is not None and (score < bar if config.greater_is_better else score > bar):
        worse = "below" if config.greater_is_better else "above"
        return f"v{version} not promoted: {metric} {score:.4f} is {worse} the threshold {bar:g}"
    return (
        f"v{version} not promoted: {metric} {score:.4f} does not beat champion "
        f"v{champion} ({best:.4f}){margin}"
    )
