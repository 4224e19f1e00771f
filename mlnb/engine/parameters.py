"""The parameters cell papermill injects into a stage notebook, rendered without running it.

papermill writes the cell tagged ``injected-parameters`` with its translator for
the notebook's kernel and language (``translate_parameters``); this renders
that same source, so a person can run in a kernel exactly what a stage
received, without writing a notebook.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nbformat
from papermill.engines import papermill_engines
from papermill.translators import translate_parameters

#: the comment papermill puts on top of the cell it injects
COMMENT = "Parameters"
#: the tag of that cell
INJECTED_TAG = "injected-parameters"


def injected_source(notebook: Path, params: Mapping[str, Any], kernel: str | None = None) -> str:
    """The source of the cell papermill injects into ``notebook`` for ``params``.

    ``kernel`` is the stage's kernel (papermill's ``kernel_name``); the
    language comes from the notebook, as papermill takes it.
    """
    nb = nbformat.read(notebook, as_version=4)
    kernel_name = papermill_engines.nb_kernel_name(None, nb, kernel)
    language = papermill_engines.nb_language(None, nb, None)
    return str(translate_parameters(kernel_name, language, dict(params), COMMENT))


def injected_cell(executed: Path) -> str | None:
    """The source of the injected parameters cell of an executed notebook, if it has one."""
    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        if INJECTED_TAG in cell.get("metadata", {}).get("tags", []):
            return str(cell.source)
    return None
