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
    "Pipeline": "mlnb.spec",
    "load_pipeline": "mlnb.spec",
    "PipelineResult": "mlnb.pipeline",
    "run_pipeline": "mlnb.pipeline",
    "check_paths": "mlnb.check",
    "Monitor": "mlnb.monitorspec",
    "load_monitor": "mlnb.monitorspec",
    "MonitorRunner": "mlnb.monitor",
    "Registry": "mlnb.registry",
    "create_app": "mlnb.serve",
}

if TYPE_CHECKING:
    from mlnb.check import check_paths
    from mlnb.errors import MlnbError, SpecError, StageError
    from mlnb.monitor import MonitorRunner
    from mlnb.monitorspec import Monitor, load_monitor
    from mlnb.pipeline import PipelineResult, run_pipeline
    from mlnb.registry import Registry
    from mlnb.serve import create_app
    from mlnb.spec import Pipeline, load_pipeline


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlnb' has no attribute '{name}'")
    return getattr(import_module(module), name)
