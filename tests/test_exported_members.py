"""mlnb's public names: pinned, each where it says, and cheap to import."""

from __future__ import annotations

import subprocess
import sys

import mlnb

PUBLIC = {
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


def test_all_is_pinned() -> None:
    assert sorted(mlnb.__all__) == sorted([*PUBLIC, "__version__"])


def test_each_public_name_is_the_object_of_its_module() -> None:
    for name, module in PUBLIC.items():
        value = getattr(mlnb, name)
        assert getattr(sys.modules[module], name) is value, name
        assert value.__module__ == module, f"{name} is defined in {value.__module__}"


def test_importing_mlnb_imports_no_mlflow_and_no_papermill() -> None:
    code = "import sys, mlnb; print(sorted({m.split('.')[0] for m in sys.modules}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = done.stdout
    assert "'mlnb'" in loaded
    assert "mlflow" not in loaded and "papermill" not in loaded and "pandas" not in loaded
