"""MLflow's process-wide (fluent) state, set only for the calls that need it.

``mlflow.models.evaluate``, ``mlflow.validate_evaluation_results``, fluent
runs and the resolution of ``models:/`` sources go through MLflow's
process-wide tracking and registry store, whatever client is at hand. The
registry (creating a version) and the gate (evaluating) both point it at their
store for a while and put back what was there, so a caller's own MLflow set-up
survives; the gate also silences MLflow's evaluation chatter meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


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
    saved_env = {key: os.environ.get(key) for key in _URI_VARIABLES}
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
def quiet() -> Iterator[None]:
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
