"""Model delivery: what a pipeline run with a ``model:`` section does once its stages succeed.

The model the section's stage logged becomes a registered version (alias
``challenger``), tagged with its lineage: the pipeline run and the stage run
that logged it, why the run happened and on what evidence, the sha256 of the
spec and of every stage output, the git commit, the training data, and the
gate settings and holdout file that let the gate run again later. A version
that existed already (the notebook registered it, or its stage came from the
cache) keeps the lineage of the run that made it and is only told about this
run. Then, unless promotion is off, the gate decides whether it becomes
``champion`` (:meth:`mlnb.models.registry.Registry.gate`).

The registry (and the MLflow evaluation behind the gate) is imported only when
a model is delivered: a pipeline without one never pays for it, and importing
this module stays cheap for the runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlnb import tags
from mlnb.models import RegistryError
from mlnb.pipelines.results import StageResult
from mlnb.specs.pipeline import ModelSpec, holdout_reference, output_reference

if TYPE_CHECKING:
    from mlnb.models.registry import Decision, GateConfig, Registration, Registry


@dataclass(frozen=True)
class Provenance:
    """Where a delivered model comes from, besides the stage results.

    Attributes:
        pipeline_run: the pipeline's parent MLflow run.
        experiment_id: its experiment (where the gate's run goes too).
        spec_sha: the sha256 of the spec file.
        git_commit: the project's commit, outside git ``None``.
        trigger: why the run happened (``manual``, ``schedule``, ``drift``, ``performance``).
        reason: the evidence behind the trigger.
        extra: more tags of the version (a sweep's run and the trial's parameters).
    """

    pipeline_run: str
    experiment_id: str
    spec_sha: str
    git_commit: str | None
    trigger: str
    reason: str
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    """The version a run delivered, and what the gate made of it (``None``: not gated)."""

    registration: Registration
    decision: Decision | None

    @property
    def run_tags(self) -> dict[str, str]:
        """What the pipeline run records about its model."""
        found = {tags.MODEL_VERSION: self.registration.version}
        if self.decision is not None:
            found[tags.MODEL_DECISION] = self.decision.outcome
        return found


def deliver(
    uri: str,
    model: ModelSpec,
    results: Mapping[str, StageResult],
    provenance: Provenance,
    *,
    promote: bool = True,
    state: Path | None = None,
) -> Delivery:
    """Register the model a run's stages produced, then (with ``promote``) gate it.

    Args:
        uri: the MLflow store (tracking and registry).
        model: the spec's ``model:`` section.
        results: every stage's result; all of them succeeded.
        provenance: the run the model comes from.
        promote: alias the version ``challenger`` and run the gate on it;
            without, the version is registered and no alias moves.
        state: the state folder (downloads, the gate's lock).

    Raises:
        RegistryError: the stage logged no such model, or registering or gating failed.
    """
    from mlnb.models.registry import GateConfig, Registry

    config = GateConfig.from_spec(model)
    ref = holdout_reference(model)
    holdout = Path(results[ref.stage].outputs[ref.output])
    registry = Registry(uri, state)
    registration = _register(registry, model, results, provenance, config, holdout, promote)
    if not promote:
        return Delivery(registration, None)
    decision = registry.gate(
        model.name,
        registration.version,
        config,
        holdout,
        parent_run_id=provenance.pipeline_run,
        experiment_id=provenance.experiment_id,
    )
    return Delivery(registration, decision)


def _register(
    registry: Registry,
    model: ModelSpec,
    results: Mapping[str, StageResult],
    provenance: Provenance,
    config: GateConfig,
    holdout: Path,
    alias: bool,
) -> Registration:
    """The registered version of the stage's model: new with its lineage, or reused as it is.

    The holdout and the training data go to the store as artifacts of the
    version's run first, so whoever gates or checks the version later finds
    them. A version that exists already (a cached re-run) keeps what it records.
    """
    from mlnb.models.data import store_data
    from mlnb.models.registry import gate_tags

    source_run = _source_run(model, results)
    holdout_uri, holdout_sha = store_data(registry.client, source_run, holdout)
    lineage = {
        tags.PIPELINE_RUN: provenance.pipeline_run,
        tags.SOURCE_RUN: source_run,
        tags.TRIGGER: provenance.trigger,
        tags.TRIGGER_REASON: provenance.reason,
        tags.SPEC_SHA: provenance.spec_sha,
        **gate_tags(config, holdout_uri, holdout_sha),
        **_data_tags(results),
    }
    if model.training_data is not None:
        data = output_reference(model.training_data)
        training = Path(results[data.stage].outputs[data.output])
        uri, digest = store_data(registry.client, source_run, training)
        lineage[tags.TRAINING_DATA], lineage[tags.TRAINING_DATA_SHA] = uri, digest
    if provenance.git_commit:
        lineage[tags.GIT_COMMIT] = provenance.git_commit
    lineage.update(provenance.extra)
    return registry.register(
        model.name, source_run, provenance.experiment_id, model.artifact, lineage, alias=alias
    )


def _source_run(model: ModelSpec, results: Mapping[str, StageResult]) -> str:
    """The stage run that logged the model: for a cached stage, the run that produced it."""
    producer = results[model.stage]
    source_run = producer.source_run_id or producer.run_id
    if source_run is None:
        raise RegistryError(
            f"stage '{model.stage}' has no MLflow run to register model '{model.name}' from"
        )
    return source_run


def _data_tags(results: Mapping[str, StageResult]) -> dict[str, str]:
    """The sha256 of every stage output, as ``mlnb.data.<stage>.<output>`` tags."""
    return {
        f"{tags.DATA_PREFIX}{name}.{output}": digest
        for name, res in results.items()
        for output, digest in res.hashes.items()
    }
