"""What mlnb needs to know about a notebook, read without running anything.

A stage is a plain notebook with one cell tagged ``parameters`` (papermill's
convention). The parameters are read from that cell with :mod:`ast` rather than
with papermill's inspection, so that validating a spec and linting never start
papermill (or a kernel): only top-level assignments count, the way a person
reads the cell.

The fingerprint hashes what the notebook *does* (cell types, sources and the
kernel), not what it last printed, so that running a notebook by hand in
JupyterLab does not invalidate the pipeline's cache.

:func:`inspect` reads a notebook of format 4 (what every Jupyter of the last
decade writes) as the JSON it is: importing nbformat costs more than half a
second (jsonschema builds its format grammars), which ``mlnb run`` would
pay on every command even when every stage is cached. Older formats, and
everything that writes a notebook, go through nbformat.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlnb.errors import NotebookError

if TYPE_CHECKING:
    import nbformat

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
#: papermill's markdown cells around an error (at the top, and before the failing cell)
ERROR_MARKER_TAG = "papermill-error-cell-tag"


@dataclass(frozen=True)
class NotebookInfo:
    """The facts mlnb uses about one notebook file.

    Attributes:
        path: the notebook's path.
        parameters: declared parameter names and their default source text,
            in the order of the parameters cell; empty when there is none.
        has_parameters_cell: whether a cell is tagged ``parameters``.
        parameters_cell: 1-based position of that cell, or ``None``.
        kernel_name: the kernelspec name in the notebook's metadata.
        cells_with_outputs: 1-based positions of code cells holding outputs.
        code_cells: how many code cells the notebook has.
        fingerprint: sha256 of cell types and sources plus the kernel name.
    """

    path: Path
    parameters: dict[str, str] = field(default_factory=dict)
    has_parameters_cell: bool = False
    parameters_cell: int | None = None
    kernel_name: str = "python3"
    cells_with_outputs: tuple[int, ...] = ()
    code_cells: int = 0
    fingerprint: str = ""


def read(path: Path) -> nbformat.NotebookNode:
    """Read a notebook, raising :class:`NotebookError` on anything unreadable."""
    import nbformat

    try:
        return nbformat.read(str(path), as_version=4)
    except FileNotFoundError as exc:
        raise NotebookError(path, "no such notebook") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NotebookError(path, f"not a readable notebook ({exc})") from exc


def declared_parameters(source: str) -> dict[str, str]:
    """Return the names a parameters cell assigns at top level, with their defaults.

    Raises:
        SyntaxError: when the cell is not valid Python.
    """
    tree = ast.parse(source)
    found: dict[str, str] = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = list(node.targets), node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        for target in targets:
            names = _names(target)
            values = _unpacked(value, len(names))
            for name, default in zip(names, values, strict=True):
                found[name] = (ast.get_source_segment(source, default) if default else "") or ""
    return found


def _names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple | ast.List):
        return [name for element in target.elts for name in _names(element)]
    return []


def _unpacked(value: ast.expr | None, count: int) -> list[ast.expr | None]:
    """Each name's own default where ``a, b = 1, 2`` pairs them; else the whole value."""
    if (
        isinstance(value, ast.Tuple | ast.List)
        and len(value.elts) == count
        and not any(isinstance(e, ast.Starred) for e in value.elts)
    ):
        return list(value.elts)
    return [value] * count


def _content(path: Path) -> dict[str, Any]:
    """A notebook as JSON, each cell's source one string; nbformat reads what is not format 4.

    Raises:
        NotebookError: when the file is missing or unreadable.
    """
    try:
        nb = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise NotebookError(path, "no such notebook") from exc
    except (OSError, ValueError) as exc:
        raise NotebookError(path, f"not a readable notebook ({exc})") from exc
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if (
        not isinstance(nb, dict)
        or nb.get("nbformat") != 4
        or not isinstance(cells, list)
        or not all(isinstance(cell, dict) for cell in cells)
    ):
        return dict(read(path))  # converted from an older format, or nbformat says what is wrong
    for cell in cells:
        source = cell.get("source", "")
        cell["source"] = "".join(source) if isinstance(source, list) else source
    return nb


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []) or [])


def fingerprint(nb: Mapping[str, Any]) -> str:
    """Hash a notebook's cell types, sources and kernel, ignoring outputs and metadata."""
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name", "")
    payload = [kernel] + [
        [cell.get("cell_type"), cell.get("source", ""), PARAMETERS_TAG in _tags(cell)]
        for cell in nb["cells"]
    ]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def inspect(path: Path) -> NotebookInfo:
    """Read a notebook and return its :class:`NotebookInfo`.

    Raises:
        NotebookError: when the file is missing or unreadable, or its
            parameters cell is not valid Python.
    """
    path = Path(path)
    stat = path.stat() if path.exists() else None
    key = (stat.st_mtime_ns, stat.st_size) if stat else None
    return _inspect_cached(path.resolve(), key)


@lru_cache(maxsize=256)
def _inspect_cached(path: Path, _stamp: tuple[int, int] | None) -> NotebookInfo:
    nb = _content(path)
    params: dict[str, str] = {}
    params_cell: int | None = None
    with_outputs: list[int] = []
    code_cells = 0
    for position, cell in enumerate(nb["cells"], start=1):
        if cell.get("cell_type") != "code":
            continue
        code_cells += 1
        if cell.get("outputs") or cell.get("execution_count"):
            with_outputs.append(position)
        if PARAMETERS_TAG in _tags(cell) and params_cell is None:
            params_cell = position
            try:
                params = declared_parameters(cell["source"])
            except SyntaxError as exc:
                raise NotebookError(
                    path, f"the parameters cell (cell {position}) is not valid Python: {exc.msg}"
                ) from exc
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name") or "python3"
    return NotebookInfo(
        path=path,
        parameters=params,
        has_parameters_cell=params_cell is not None,
        parameters_cell=params_cell,
        kernel_name=kernel,
        cells_with_outputs=tuple(with_outputs),
        code_cells=code_cells,
        fingerprint=fingerprint(nb),
    )


def _strip(nb: nbformat.NotebookNode) -> bool:
    """Remove outputs, execution counts and run metadata; whether anything went."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.get("outputs") or cell.get("execution_count") is not None:
            cell.outputs = []
            cell.execution_count = None
            changed = True
        if "papermill" in cell.get("metadata", {}) or "execution" in cell.get("metadata", {}):
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
            changed = True
    for key in ("papermill", "widgets"):
        if key in nb.metadata:
            nb.metadata.pop(key)
            changed = True
    return changed


def strip_outputs(path: Path) -> bool:
    """Remove outputs and execution counts from a notebook in place.

    Returns:
        Whether the file changed.
    """
    import nbformat

    nb = read(path)
    changed = _strip(nb)
    if changed:
        tmp = path.with_name(f".{path.name}.tmp")
        nbformat.write(nb, str(tmp))
        tmp.replace(path)
    return changed


def stripped_text(path: Path) -> str:
    """A notebook's text without outputs, as nbformat writes it (the same input, the same text)."""
    import nbformat

    nb = read(path)
    _strip(nb)
    return nbformat.writes(nb)


def source_position(executed: nbformat.NotebookNode, index: int) -> int:
    """Map a cell index of an executed notebook to its 1-based position in the source.

    papermill inserts an ``injected-parameters`` cell; positions reported to a
    user must be those of the notebook they edit. When a cell fails, papermill
    also writes two error marker cells into the notebook, after computing the
    index it reports; they are left out before the index is applied.
    """
    cells = [cell for cell in executed.cells if ERROR_MARKER_TAG not in _tags(cell)]
    injected_before = sum(1 for cell in cells[:index] if INJECTED_TAG in _tags(cell))
    return index - injected_before + 1


def imported_modules(path: Path) -> list[str]:
    """The modules a notebook's code cells import at top level, in order of appearance.

    ``import a.b`` gives ``a.b``; ``from a.b import c`` gives ``a.b``. Cells
    that are not valid Python (magics, say) are skipped.
    """
    found: dict[str, None] = {}
    for cell in _content(path)["cells"]:
        if cell.get("cell_type") != "code":
            continue
        try:
            tree = ast.parse(cell["source"])
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                found.update((alias.name, None) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found[node.module] = None
    return list(found)
