"""``mlnb init``: a new project that passes ``mlnb check``, ``mlnb test`` and ``mlnb build`` as is.

The template lives in ``mlnb/templates/project``: the example's notebooks
(prepare → train → evaluate on scikit-learn's breast-cancer data, and the
drift notebook), a training pipeline with a ``ci`` profile and a ``model:``
section, a monitor spec, ``environment.yml``, a pre-commit config and a
GitHub Actions workflow. ``{{name}}`` and ``{{mlnb_version}}`` in text files
are filled in; files named ``dot-*`` become ``.*`` (hidden files do not
travel well as package data). This repository's own example is the template
rendered with the name ``cancer`` (a test keeps the two equal).
"""

from __future__ import annotations

import re
from pathlib import Path

from mlnb import __version__
from mlnb.errors import MlnbError

TEMPLATE = Path(__file__).resolve().parent / "templates" / "project"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_TEXT = (".md", ".yml", ".yaml", ".txt", "")
#: template file → where it goes, for files whose name depends on the project
_RENAMED = {"pipelines/model.yaml": "pipelines/{name}.yaml"}


class ScaffoldError(MlnbError):
    """A project cannot be created where asked."""


def render(name: str) -> dict[str, bytes]:
    """The files of a new project named ``name``: relative path → contents."""
    files: dict[str, bytes] = {}
    for path in sorted(TEMPLATE.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(TEMPLATE).as_posix()
        target = _RENAMED.get(rel, rel).format(name=name)
        target = "/".join(
            "." + part.removeprefix("dot-") if part.startswith("dot-") else part
            for part in target.split("/")
        )
        data = path.read_bytes()
        if path.suffix in _TEXT:
            text = data.decode()
            text = text.replace("{{name}}", name).replace("{{mlnb_version}}", __version__)
            data = text.encode()
        files[target] = data
    return files


def init(directory: Path, name: str | None = None) -> list[Path]:
    """Create a project in ``directory`` (new, or empty); return the files written.

    Raises:
        ScaffoldError: the name is not usable, or the folder holds files already.
    """
    directory = Path(directory)
    name = name or directory.resolve().name
    if not _NAME.match(name):
        raise ScaffoldError(
            f"'{name}' cannot name a pipeline and its model: start with a letter and use "
            "letters, digits, '-' and '_' (give one with --name)"
        )
    if directory.exists():
        if not directory.is_dir():
            raise ScaffoldError(f"{directory} is a file; name a new or empty folder")
        present = [p.name for p in directory.iterdir() if p.name != ".git"]
        if present:
            shown = ", ".join(sorted(present)[:5])
            raise ScaffoldError(
                f"{directory} is not empty ({shown}{'…' if len(present) > 5 else ''}); "
                "mlnb init writes only into a new or empty folder, so nothing is overwritten"
            )
    written = []
    for rel, data in render(name).items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written
