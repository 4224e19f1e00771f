"""Every name mlnb writes into MLflow: run and version tags, run kinds, run states.

One module of names, as MLflow keeps its own in ``mlflow/utils/mlflow_tags.py``:
the MLflow UI shows these tags, ``--resume``, the gate, the monitor and
``mlnb status`` read them back, and a reader finds every one here. Importing
this module imports nothing else, so any layer may use it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

# -- what a run is ---------------------------------------------------------------------------------

KIND = "mlnb.kind"


class Kind(StrEnum):
    """The value of :data:`KIND`: what an mlnb run in MLflow is."""

    PIPELINE = "pipeline"
    STAGE = "stage"
    GATE = "gate"
    EVALUATION = "evaluation"
    CHECK = "monitor-check"
    DRIFT = "drift"
    DEPLOYMENT = "deployment"
    SWEEP = "sweep"


#: MLflow's run states (``mlflow.entities.RunStatus``) by name; a test keeps them equal.
#: Kept as text so that naming one imports no MLflow.
RunState = Literal["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"]
#: the states a run ends in
EndState = Literal["FINISHED", "FAILED", "KILLED"]

# -- pipeline and stage runs -----------------------------------------------------------------------

PIPELINE = "mlnb.pipeline"  # a run's pipeline; a deployment run's pipeline too
SPEC = "mlnb.spec"
SPEC_SHA = "mlnb.spec_sha256"  # on runs and on the model versions they deliver
PROFILE = "mlnb.profile"
OVERRIDES = "mlnb.overrides"
WORKSPACE = "mlnb.workspace"
GIT_DIRTY = "mlnb.git.dirty"
STAGE = "mlnb.stage"
NOTEBOOK = "mlnb.notebook"
FINGERPRINT = "mlnb.notebook.sha256"
CACHE_KEY = "mlnb.cache_key"
CACHED = "mlnb.cached"
CACHED_FROM = "mlnb.cached_from_run"
OUTPUTS = "mlnb.outputs"
WORKER = "mlnb.worker"  # on a stage run executed by a Dask worker: the worker's address
ERROR = "mlnb.error"
TRIGGER = "mlnb.trigger"  # why a run (and the model version it delivered) happened
TRIGGER_REASON = "mlnb.trigger.reason"  # the evidence: "drift: p=0.0003 on 3 of 20 ..."
MODEL_VERSION = "mlnb.model.version"  # the version a pipeline run delivered, or a check watched
MODEL_DECISION = "mlnb.model.decision"  # what the gate made of it: promoted, rejected, champion
#: a sweep (kind ``sweep``) and its trials, each a pipeline run nested under it
SWEEP_RUN = "mlnb.sweep.run_id"  # on a trial's pipeline run, and on the version of the best
SWEEP_TRIAL = "mlnb.sweep.trial"  # a trial's number, from 0
SWEEP_PARAMS = "mlnb.sweep.params"  # a trial's parameters (JSON), on its run and its version
SWEEP_METRIC = "mlnb.sweep.metric"  # <stage>.<metric>, on the sweep run
SWEEP_GOAL = "mlnb.sweep.goal"  # maximize or minimize
SWEEP_BEST = "mlnb.sweep.best_run_id"  # on the sweep run: the best trial's pipeline run
#: who runs a pipeline run: judged dead (and the run ended KILLED) only on this host
OWNER_HOST = "mlnb.owner.host"
OWNER_PID = "mlnb.owner.pid"
OWNER_STARTED = "mlnb.owner.started"  # the process's start time (Unix seconds): pids are reused

# -- model versions: lineage and the gate ----------------------------------------------------------

PIPELINE_RUN = "mlnb.pipeline_run_id"
SOURCE_RUN = "mlnb.source_run_id"
GIT_COMMIT = "mlnb.git_commit"  # on versions and on deployment runs
DATA_PREFIX = "mlnb.data."  # + "<stage>.<output>": the sha256 of each stage output
HOLDOUT = "mlnb.holdout"  # the holdout's artifact URI in the store (a path, on older versions)
HOLDOUT_SHA = "mlnb.holdout.sha256"
TRAINING_DATA = "mlnb.training_data"  # the training data's artifact URI (or path)
TRAINING_DATA_SHA = "mlnb.training_data.sha256"
GATE_CONFIG = "mlnb.gate.config"
GATE_DECISION = "mlnb.gate.decision"  # on the version and on the gate run
GATE_REASON = "mlnb.gate.reason"  # on the version and on the gate run
GATE_SCORE = "mlnb.gate.score"
GATE_CHAMPION_VERSION = "mlnb.gate.champion_version"
GATE_CHAMPION_SCORE = "mlnb.gate.champion_score"
GATE_RUN = "mlnb.gate.run_id"
#: + "<evidence>.<figure>": what the gate scored on evidence that is not the version's own
#: holdout (:class:`Evidence`), e.g. ``mlnb.gate.evidence.champion_holdout.score``
GATE_EVIDENCE_PREFIX = "mlnb.gate.evidence."
CHAMPION_HISTORY = "mlnb.champion_history"  # on the registered model
MODEL_DEPLOYMENT = "mlnb.deployment"  # on the registered model: the live deployment


class ModelDecision(StrEnum):
    """What the gate made of a version (:data:`MODEL_DECISION`, :data:`GATE_DECISION`)."""

    PROMOTED = "promoted"
    REJECTED = "rejected"
    CHAMPION = "champion"  # it was the champion already
    PASSED = "passed"  # the gate passed it, and promotion is manual: a person moves champion


class Evidence(StrEnum):
    """What the gate judges a challenger on besides its own holdout data.

    Its figures are version tags under :data:`GATE_EVIDENCE_PREFIX`.
    """

    CHAMPION_HOLDOUT = "champion_holdout"  # the holdout the champion was gated on
    GOLDEN = "golden"  # the curated data set the model section names


# -- monitor checks ---------------------------------------------------------------------

MONITOR = "mlnb.monitor"
MODEL = "mlnb.model"
CHECK_DECISION = "mlnb.monitor.decision"
CHECK_TRIGGERS = "mlnb.monitor.triggers"
CHECK_EVIDENCE = "mlnb.monitor.evidence"
RETRAIN = "mlnb.monitor.retrain"
RETRAIN_REASON = "mlnb.monitor.retrain_reason"
RETRAIN_RUN = "mlnb.monitor.retrain_run_id"
RETRAIN_VERSION = "mlnb.monitor.retrain_version"
RETRAIN_PIPELINE = "mlnb.monitor.retrain_pipeline"  # the deployed version, or the working copy
CHECK_LABELS = "mlnb.monitor.labels"  # plausible, suspicious or untested (LabelStatus)
CHECK_LABELS_REASON = "mlnb.monitor.labels_reason"
#: online evaluation: the challenger a service shadows or canaries against the champion,
#: on the check run (and the decision and reason on the challenger's version too)
ONLINE_MODE = "mlnb.online.mode"  # shadow or canary
ONLINE_METRIC = "mlnb.online.metric"
ONLINE_CHAMPION = "mlnb.online.champion_version"
ONLINE_CHALLENGER = "mlnb.online.challenger_version"
ONLINE_TEST = "mlnb.online.test"  # how the interval and p-value were computed
ONLINE_SENTENCE = "mlnb.online.comparison"
ONLINE_DECISION = "mlnb.online.decision"  # OnlineDecision
ONLINE_REASON = "mlnb.online.reason"
ONLINE_CHECK_RUN = "mlnb.online.check_run_id"  # on the version: the check that decided


class OnlineDecision(StrEnum):
    """What a check made of the live comparison (:data:`ONLINE_DECISION`)."""

    PROMOTED = "promoted"  # the challenger is better: it became champion
    REMOVED = "removed"  # the challenger is worse: its alias was removed
    WAITING = "waiting"  # fewer labels than min_labels
    UNDECIDED = "undecided"  # no significant difference yet
    REFUSED = "refused"  # better, but the gate rejected it offline, or the champion moved
    COMPARED = "compared"  # promotion is not online: the figures only


#: the drift notebook's contract: it sets these two on its run
DRIFT_STATUS = "mlnb.drift.status"
DRIFT_REASON = "mlnb.drift.reason"

# -- deployments -----------------------------------------------------------------------------------

DEPLOYMENT_VERSION = "mlnb.deployment.version"
DEPLOYMENT_ACTION = "mlnb.deployment.action"
DEPLOYMENT_CONTENT = "mlnb.deployment.content_sha256"
DEPLOYMENT_PATH = "mlnb.deployment.path"
DEPLOYMENT_BUNDLE = "mlnb.deployment.bundle"
LIVE_PREFIX = "mlnb.live."  # + "<pipeline>", on the deployments experiment: the live version

#: the longest tag value mlnb writes (MLflow's limit is larger; a reader's is not)
VALUE_LIMIT = 5000
