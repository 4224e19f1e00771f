"""YAML documents read into validated models, every problem at once with file, line and key.

Both kinds of spec (pipelines, monitors) are read here: :func:`read_document`
parses the YAML, validates it against a pydantic model and turns each
validation error into a :class:`~mlnb.errors.Problem` naming the file, the
line and the key path (``stages.train.params.C``), with "did you mean" for an
unknown key. :class:`Collector` gathers the problems found by the checks
that follow, so a user fixes a spec in one pass.

A problem that stops the reading (no file, unreadable, invalid YAML, not a
mapping) is the only one reported; past the parse, every structural problem
is reported together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mlnb.errors import Problem, SpecError, suggest

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

_M = TypeVar("_M", bound=BaseModel)

#: a key path in a document: mapping keys and sequence indexes (``["stages", "a", "needs", 0]``)
KeyPath: TypeAlias = Sequence[str | int]
#: what a document is, as messages name it
SpecKind = Literal["pipeline spec", "monitor spec"]


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a float as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`_Loader`."""
    return yaml.load(text, Loader=_Loader)


class Lines:
    """Line numbers of keys in a YAML document, by key path."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, ...], int] = {}
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            node = None
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                self.lines[sub] = key.start_mark.line + 1
                self._walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for index, value in enumerate(node.value):
                sub = (*path, str(index))
                self.lines[sub] = value.start_mark.line + 1
                self._walk(value, sub)

    def where(self, path: KeyPath) -> str:
        """``line N: a.b.c``, N the line of the key or of its nearest written parent.

        Just the dotted path when neither the key nor any parent is in the document.
        """
        keys = tuple(str(p) for p in path)
        probe = keys
        while probe and probe not in self.lines:
            probe = probe[:-1]
        dotted = ".".join(keys)
        line = self.lines.get(probe)
        return f"line {line}: {dotted}" if line else dotted


class Collector:
    """The problems found in one file, each placed by its key path."""

    def __init__(self, file: str, lines: Lines) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[Problem] = []

    def add(self, path: KeyPath, message: str, file: str | None = None) -> None:
        """Collect a problem at ``path``; ``file`` names another source (no line then)."""
        location = self.lines.where(path) if file is None else ".".join(map(str, path))
        self.problems.append(Problem(file or self.file, location, message))


def read_document(
    path: Path,
    model: type[_M],
    owner: Callable[[KeyPath], type[BaseModel]],
    kind: SpecKind,
    shape: str,
) -> tuple[_M, Lines]:
    """Parse a YAML file into ``model``, every structural problem at once.

    Args:
        path: the file.
        model: the pydantic model of the whole document.
        owner: the model that owns the key at a location (for "did you mean").
        kind: what the file is, for messages (``pipeline spec``).
        shape: what a document must look like, said when it is not a mapping.

    Raises:
        SpecError: naming the file, line and key of each problem.
    """
    file = str(path)
    text = _read_text(path, kind)
    data = _parse(text, file, kind)
    if not isinstance(data, dict):
        raise SpecError([Problem(file, "", shape)], kind)
    lines = Lines(text)
    try:
        return model.model_validate(data), lines
    except ValidationError as exc:
        collector = Collector(file, lines)
        for error in exc.errors():
            collector.add(error["loc"], _message(error, owner))
        raise SpecError(collector.problems, kind) from None


def _read_text(path: Path, kind: SpecKind) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise SpecError([Problem(str(path), "", f"no such {kind}")], kind) from None
    except OSError as exc:
        raise SpecError(
            [Problem(str(path), "", f"cannot read the {kind}: {exc.strerror}")], kind
        ) from None


def _parse(text: str, file: str, kind: SpecKind) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise SpecError([Problem(file, where, f"invalid YAML: {reason}")], kind) from None


def _message(error: ErrorDetails, owner: Callable[[KeyPath], type[BaseModel]]) -> str:
    """What one pydantic error says to a person: a near key for an unknown one."""
    loc = error["loc"]
    if error["type"] == "extra_forbidden":
        known = owner(loc).model_fields.keys()
        return f"unknown key '{loc[-1]}'{suggest(str(loc[-1]), known)}"
    if error["type"] == "missing":
        return f"required key '{loc[-1]}' is missing"
    return error["msg"].removeprefix("Value error, ")  # a validator's message
