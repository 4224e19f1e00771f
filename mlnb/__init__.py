"""mlnb: CI/CD and continuous training for ML pipelines whose stages are notebooks.

Public names are loaded lazily so that ``mlnb --help`` and spec validation do
not pay for importing MLflow or papermill.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "MlnbError",
    "Monitor",
    "MonitorRunner",
    "Pipeline",
    "PipelineResult",
    "Registry",
    "SpecError",
    "StageError",
    "__version__",
    "check_paths",
    "create_app",
    "load_monitor",
    "load_pipeline",
    "run_pipeline",
]

_LAZY = {
    "MlnbError": "mlnb.errors",
    "SpecError": "mlnb.errors",
    "StageError": "mlnb.errors",
    "Pipeline": "mlnb.specs.pipeline",
    "load_pipeline": "mlnb.pipelines.locate",
    "PipelineResult": "mlnb.pipelines.results",
    "run_pipeline": "mlnb.pipelines.runner",
    "check_paths": "mlnb.delivery.lint",
    "Monitor": "mlnb.specs.monitor",
    "load_monitor": "mlnb.pipelines.locate",
    "MonitorRunner": "mlnb.monitoring.runner",
    "Registry": "mlnb.models.registry",
    "create_app": "mlnb.serving.server",
}

if TYPE_CHECKING:
    from mlnb.delivery.lint import check_paths
    from mlnb.errors import MlnbError, SpecError, StageError
    from mlnb.models.registry import Registry
    from mlnb.monitoring.runner import MonitorRunner
    from mlnb.pipelines.locate import load_monitor, load_pipeline
    from mlnb.pipelines.results import PipelineResult
    from mlnb.pipelines.runner import run_pipeline
    from mlnb.serving.server import create_app
    from mlnb.specs.monitor import Monitor
    from mlnb.specs.pipeline import Pipeline


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlnb' has no attribute '{name}'")
    return getattr(import_module(module), name)
