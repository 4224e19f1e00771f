"""mlnb in JupyterLab: a Jupyter server extension (REST under ``/mlnb/api/``) and its panel.

The server extension answers what the panel shows: the project's pipelines
drawn as DAGs with their spec problems, recent runs and their stages' states,
runs started and stopped as ``mlnb run`` processes, the parameters a stage
received, and each registered model's status. The panel itself is a prebuilt
JupyterLab extension shipped in ``labextension/`` (built from ``lab/`` in the
repository). Notebooks never need either to run.

Jupyter finds the server extension, :class:`mlnb.lab.server.MlnbLab`, through
:func:`_jupyter_server_extension_points` (enabled by the
``jupyter_server_config.d/mlnb.json`` file mlnb installs) and the panel through
:func:`_jupyter_labextension_paths`.
"""

from __future__ import annotations

from typing import Any

from mlnb import __version__ as __version__

#: the lab extension's name (``lab/package.json``), its folder in ``share/jupyter/labextensions``
LABEXTENSION = "mlnb-lab"


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": LABEXTENSION}]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from mlnb.lab.server import MlnbLab  # jupyter_server, only when Jupyter asks

    return [{"module": "mlnb.lab", "app": MlnbLab}]
