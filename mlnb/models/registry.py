"""Model CD: register what a pipeline delivers, gate it, and move aliases.

Promotion is an alias: every new version becomes ``challenger``; the version
served is ``champion``. The gate scores challenger and champion on the same
holdout data with MLflow's own evaluation (``mlflow.models.evaluate``) and
decides with its ``MetricThreshold`` validation, so the comparison is MLflow's,
not a home-made one. A person can move ``champion`` in the MLflow UI, or with
``mlnb promote``; a prediction service follows the alias either way.

Each version carries what the gate needs to run again later (``mlnb promote``
outside a pipeline run): its holdout file and gate settings, as tags, beside
its lineage (pipeline run, git commit, spec fingerprint, data fingerprints,
trigger). The registered model keeps the history of ``champion`` in a tag, so
``--rollback`` returns to the version before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlnb import tags
from mlnb.errors import MlnbError, suggest
from mlnb.specs.pipeline import METRICS, ModelSpec
from mlnb.tracking import ensure_experiment

CHAMPION = "champion"
CHALLENGER = "challenger"


GATE_EXPERIMENT = "mlnb-gate"


class RegistryError(MlnbError):
    """A model cannot be registered, gated or promoted."""


@dataclass(frozen=True)
class GateConfig:
    """How the gate decides, as the ``model:`` section of a spec sets it."""

    metric: str
    greater_is_better: bool
    model_type: str
    target: str
    threshold: float | None = None
    min_improvement: float = 0.0

    @classmethod
    def from_spec(cls, model: ModelSpec) -> GateConfig:
        """Build the gate settings of a ``model:`` section."""
        greater = model.greater_is_better
        if greater is None:
            greater = METRICS[model.type][model.metric]
        return cls(
            model.metric, greater, model.type, model.target, model.threshold, model.min_improvement
        )


@dataclass(frozen=True)
class Registration:
    """A model version that a pipeline run delivered.

    Attributes:
        name: the registered model.
        version: its version number.
        created: ``False`` when the version existed already (the notebook
            registered it, or the stage came from the cache).
    """

    name: str
    version: str
    created: bool


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


class Registry:
    """Registered models on one MLflow store."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    # -- registration ------------------------------------------------------------

    def register(
        self,
        name: str,
        run_id: str,
        experiment_id: str,
        artifact: str = "model",
        tags: Mapping[str, str] | None = None,
    ) -> Registration:
        """Register the model that run ``run_id`` logged as ``artifact``; alias it challenger.

        A version of ``name`` already created from that run (by the notebook,
        or by an earlier pipeline run whose stage is now cached) is reused.

        Raises:
            RegistryError: the run logged no model called ``artifact``.
        """
        try:
            existing = self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
            if existing:
                version = str(max(int(v.version) for v in existing))
                self.client.set_registered_model_alias(name, CHALLENGER, version)
                return Registration(name, version, created=False)
            models = [
                m
                for m in self.client.search_logged_models(
                    experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'"
                )
                if m.name == artifact
            ]
            if not models:
                raise RegistryError(
                    f"the stage run {run_id} logged no model named '{artifact}'; log it in the "
                    f"notebook with mlflow.<flavor>.log_model(model, name='{artifact}'), or set "
                    "model.artifact in the spec to the name it uses"
                )
            model = max(models, key=lambda m: m.creation_timestamp)
            self._ensure_registered_model(name)
            with process_store(self.uri):
                created = self.client.create_model_version(
                    name,
                    model.model_uri,
                    run_id=run_id,
                    tags=dict(tags or {}),
                    model_id=model.model_id,
                )
            version = str(created.version)
            self.client.set_registered_model_alias(name, CHALLENGER, version)
            return Registration(name, version, created=True)
        except MlflowException as exc:
            raise RegistryError(
                f"cannot register '{name}' from run {run_id}: {exc.message}"
            ) from exc

    def _ensure_registered_model(self, name: str) -> None:
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(name)
            except MlflowException:  # created meanwhile
                self.client.get_registered_model(name)

    def tag_version(self, name: str, version: str, tags: Mapping[str, Any]) -> None:
        """Set tags on a model version."""
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, str(value))

    # -- aliases -----------------------------------------------------------------

    def require(self, name: str) -> None:
        """Raise a :class:`RegistryError` naming the models there are if ``name`` is not one."""
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            names = [m.name for m in self.client.search_registered_models(max_results=100)]
            hint = suggest(name, names) or (
                f"; registered: {', '.join(names)}" if names else "; none is registered yet"
            )
            raise RegistryError(f"no registered model '{name}' in {self.uri}{hint}") from None

    def alias(self, name: str, alias: str) -> str | None:
        """The version an alias points at, or ``None``."""
        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def version(self, name: str, version: str) -> Any:
        """A model version, or a :class:`RegistryError` that lists the versions there are."""
        try:
            return self.client.get_model_version(name, version)
        except MlflowException:
            versions = self._versions(name)
            if not versions:
                raise RegistryError(f"no registered model '{name}' in {self.uri}") from None
            raise RegistryError(
                f"'{name}' has no version {version}; versions: {', '.join(versions)}"
            ) from None

    def _versions(self, name: str) -> list[str]:
        try:
            found = self.client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            return []
        return sorted((str(v.version) for v in found), key=int)

    def set_champion(self, name: str, version: str, reason: str) -> Decision:
        """Point ``champion`` at ``version`` (by hand), keeping the history for rollback."""
        self.version(name, version)
        before = self.alias(name, CHAMPION)
        self._move_champion(name, version, before)
        self.tag_version(name, version, {tags.GATE_DECISION: "promoted", tags.GATE_REASON: reason})
        return Decision(name, version, True, before, None, None, None, reason)

    def promote(
        self, name: str, version: str | None = None, *, force: bool = False, rollback: bool = False
    ) -> Decision:
        """What ``mlnb promote`` does: gate a version, force it, or roll ``champion`` back.

        Args:
            name: the registered model.
            version: the version to promote; default the challenger.
            force: make it champion without the gate.
            rollback: return champion to the version before (no ``version``).

        Raises:
            RegistryError: the model is not registered, it has no challenger and
                no version is named, or the gate cannot run.
        """
        self.require(name)
        if rollback:
            return self.rollback(name)
        target = version or self.alias(name, CHALLENGER)
        if target is None:
            raise RegistryError(f"'{name}' has no challenger; name a version with --version")
        if force:
            return self.set_champion(name, target, f"v{target} promoted by hand")
        return self.gate(name, target)

    def rollback(self, name: str) -> Decision:
        """Return ``champion`` to the version it pointed at before.

        Raises:
            RegistryError: there is no earlier champion.
        """
        history = self._history(name)
        current = self.alias(name, CHAMPION)
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise RegistryError(f"'{name}' has no earlier champion to return to")
        target = history.pop()
        self.client.set_registered_model_alias(name, CHAMPION, target)
        self.client.set_registered_model_tag(name, tags.CHAMPION_HISTORY, json.dumps(history))
        reason = f"rolled back from version {current} to version {target}"
        self.tag_version(name, target, {tags.GATE_REASON: reason})
        return Decision(name, target, True, current, None, None, None, reason)

    def _history(self, name: str) -> list[str]:
        try:
            found_tags = self.client.get_registered_model(name).tags
        except MlflowException as exc:
            raise RegistryError(f"no registered model '{name}' in {self.uri}") from exc
        return list(json.loads(found_tags.get(tags.CHAMPION_HISTORY, "[]")))

    def _move_champion(self, name: str, version: str, before: str | None) -> None:
        history = self._history(name)
        if before and (not history or history[-1] != before):
            history.append(before)
        self.client.set_registered_model_alias(name, CHAMPION, version)
        self.client.set_registered_model_tag(name, tags.CHAMPION_HISTORY, json.dumps(history[-50:]))

    # -- the gate ----------------------------------------------------------------

    def gate(
        self,
        name: str,
        version: str,
        config: GateConfig | None = None,
        holdout: Path | None = None,
        parent_run_id: str | None = None,
        experiment_id: str | None = None,
    ) -> Decision:
        """Score ``version`` and the champion on the same holdout data; promote if it wins.

        Args:
            name: the registered model.
            version: the candidate version.
            config: gate settings; default: those recorded on the version.
            holdout: a CSV or Parquet file with features and the target column;
                default: the file recorded on the version.
            parent_run_id: a run to nest the gate's run under (the pipeline run).
            experiment_id: where the gate's run goes (default: ``mlnb-gate``).

        Returns:
            The :class:`Decision`, also recorded as tags on the version and in
            an MLflow run with both scores.
        """
        candidate = self.version(name, version)
        found_tags = candidate.tags
        if config is None:
            if tags.GATE_CONFIG not in found_tags:
                raise RegistryError(
                    f"{name} version {version} records no gate settings (it was "
                    "not registered by an mlnb pipeline with a model section); "
                    "promote it by hand with --force"
                )
            config = GateConfig(**json.loads(found_tags[tags.GATE_CONFIG]))
        holdout = holdout or (
            Path(found_tags[tags.HOLDOUT]) if tags.HOLDOUT in found_tags else None
        )
        if holdout is None or not holdout.exists():
            raise RegistryError(
                f"the holdout data of {name} version {version} is gone "
                f"({holdout}); re-run the pipeline, or promote by hand with --force"
            )
        data = _read_table(holdout)
        if config.target not in data.columns:
            raise RegistryError(
                f"{holdout} has no target column '{config.target}'; columns: "
                f"{', '.join(map(str, data.columns[:20]))}"
            )
        champion = self.alias(name, CHAMPION)
        if champion == version:
            return Decision(
                name,
                version,
                False,
                champion,
                config.metric,
                None,
                None,
                f"v{version} is already the champion",
            )

        import mlflow
        from mlflow.models import MetricThreshold
        from mlflow.models.evaluation.validation import ModelValidationFailedException

        if experiment_id is None:
            try:
                experiment_id = ensure_experiment(self.client, GATE_EXPERIMENT, self.uri)
            except MlflowException as exc:
                raise RegistryError(f"cannot create the gate's experiment: {exc.message}") from exc
        run_tags = {"mlflow.runName": f"gate {name} v{version}", tags.KIND: tags.Kind.GATE}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        gate_run = self.client.create_run(experiment_id, tags=run_tags).info.run_id
        try:
            results = {}
            for label, v in (("challenger", version), ("champion", champion)):
                if v is None:
                    continue
                child = self.client.create_run(
                    experiment_id,
                    tags={
                        "mlflow.runName": f"evaluate {name} v{v} ({label})",
                        "mlflow.parentRunId": gate_run,
                        tags.KIND: tags.Kind.EVALUATION,
                    },
                )
                with process_store(self.uri), mlflow.start_run(run_id=child.info.run_id), _quiet():
                    results[label] = mlflow.models.evaluate(
                        f"models:/{name}/{v}",
                        data=data,
                        targets=config.target,
                        model_type=config.model_type,
                        evaluators=["default"],
                        evaluator_config={"default": {"log_model_explainability": False}},
                    )
            score = _metric(results["challenger"], config.metric)
            best = _metric(results["champion"], config.metric) if "champion" in results else None
            threshold = (
                MetricThreshold(
                    threshold=config.threshold,
                    min_absolute_change=(
                        max(config.min_improvement, 1e-12) if "champion" in results else None
                    ),
                    greater_is_better=config.greater_is_better,
                )
                if config.threshold is not None or "champion" in results
                else None
            )
            promoted = True
            if threshold is not None:
                try:
                    with process_store(self.uri), _quiet():
                        mlflow.validate_evaluation_results(
                            {config.metric: threshold},
                            results["challenger"],
                            results.get("champion"),
                        )
                except ModelValidationFailedException:
                    promoted = False
            reason = _reason(config, version, score, champion, best, promoted)
        except RegistryError:
            self.client.set_terminated(gate_run, "FAILED")
            raise
        except MlflowException as exc:
            self.client.set_terminated(gate_run, "FAILED")
            raise RegistryError(
                f"the gate could not evaluate {name} v{version}: {exc.message}"
            ) from exc
        decision = Decision(
            name,
            version,
            promoted,
            champion,
            config.metric,
            score,
            best,
            reason,
            gate_run,
        )
        self.client.set_tag(gate_run, tags.GATE_DECISION, "promoted" if promoted else "rejected")
        self.client.set_tag(gate_run, tags.GATE_REASON, reason)
        self.client.log_metric(gate_run, f"challenger_{config.metric}", score)
        if best is not None:
            self.client.log_metric(gate_run, f"champion_{config.metric}", best)
        self.client.set_terminated(gate_run, "FINISHED")
        self.tag_version(
            name,
            version,
            {
                tags.GATE_DECISION: "promoted" if promoted else "rejected",
                tags.GATE_REASON: reason,
                tags.GATE_SCORE: score,
                tags.GATE_RUN: gate_run,
                **(
                    {tags.GATE_CHAMPION_VERSION: champion, tags.GATE_CHAMPION_SCORE: best}
                    if champion
                    else {}
                ),
            },
        )
        if promoted:
            self._move_champion(name, version, self.alias(name, CHAMPION))
        return decision


@contextlib.contextmanager
def process_store(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry store at ``uri`` for a while.

    MLflow resolves ``models:/<id>`` sources, runs ``evaluate`` and starts
    fluent runs through its process-wide store, whatever client is at hand;
    mlnb sets it only around those calls and restores it (and the variables
    ``set_tracking_uri`` exports), so a caller's own MLflow set-up survives.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence MLflow's evaluation chatter (schema hints, label-type guesses) for the gate."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def gate_tags(config: GateConfig, holdout: Path) -> dict[str, str]:
    """Version tags that let the gate run again later."""
    return {tags.GATE_CONFIG: json.dumps(asdict(config)), tags.HOLDOUT: str(holdout)}


def _metric(result: Any, metric: str) -> float:
    if metric not in result.metrics:
        known = ", ".join(sorted(result.metrics))
        raise RegistryError(f"mlflow.evaluate computed no metric '{metric}'; it computed: {known}")
    return float(result.metrics[metric])


def _reason(
    config: GateConfig,
    version: str,
    score: float,
    champion: str | None,
    best: float | None,
    promoted: bool,
) -> str:
    """One sentence on the decision, from the figures MLflow's validation judged."""
    metric, bar = config.metric, config.threshold
    worse = "below" if config.greater_is_better else "above"
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
        return f"v{version} not promoted: {metric} {score:.4f} is {worse} the threshold {bar:g}"
    return (
        f"v{version} not promoted: {metric} {score:.4f} does not beat champion "
        f"v{champion} ({best:.4f}){margin}"
    )


def _read_table(path: Path) -> Any:
    import pandas as pd

    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path)
