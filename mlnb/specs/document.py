"""YAML documents read into validated models, every problem at once with file, line and key.

Both kinds of spec (pipelines, monitors) are read here: :func:`read_document`
parses the YAML, validates it against a pydantic model and turns each
validation error into a :class:`~mlnb.errors.Problem` naming the file, the
line and the key path (``stages.train.params.C``), with "did you mean" for an
unknown key. :class:`Collector` gathers the problems found by the checks
that follow, so a user fixes a spec in one pass.

A problem that stops the reading (no file, unreadable, not UTF-8, invalid
YAML, beyond the limits of a spec, not a mapping) is the only one reported;
past the parse, every structural problem is reported together.

A spec is small, so its YAML is read within limits checked while the document
is composed, before a Python object is built: at most :data:`MAX_BYTES`,
nested at most :data:`MAX_DEPTH` deep, holding at most :data:`MAX_VALUES`
values with every alias counted as the values it repeats (a "billion laughs"
document is refused at its first few aliases). A key written twice in one
mapping is an error rather than the last one silently winning.
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


#: the largest spec file read, in bytes
MAX_BYTES = 1_000_000
#: how deep mappings and sequences may nest in a spec
MAX_DEPTH = 64
#: how many values (mappings, sequences, scalars) a spec may hold, aliases expanded
MAX_VALUES = 100_000

_MERGE = "tag:yaml.org,2002:merge"


class RefusedError(yaml.MarkedYAMLError):
    """Valid YAML that a spec must not be: too deep, too large, or with a key written twice."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader within a spec's limits, reading ``1e-3`` as a float as YAML 1.2 does.

    The limits are checked while nodes are composed: each node's size (itself
    and every value below it, an alias counting the values it repeats) is known
    when it is complete, so a document that would expand beyond
    :data:`MAX_VALUES` is refused at the node that crosses the limit.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def fetch_flow_collection_start(self, TokenClass: type[yaml.Token]) -> None:
        # the scanner looks ahead across open brackets, in time quadratic in their
        # depth: count them here, before the composer sees them
        if self.flow_level >= MAX_DEPTH:
            raise _too_deep(self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        mark = self.peek_event().start_mark
        alias = self.check_event(yaml.AliasEvent)
        collection = self.check_event(yaml.CollectionStartEvent)
        if collection:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _too_deep(mark)
        node = super().compose_node(parent, index)
        if collection:
            self._depth -= 1
        if node is not None:
            self._measure(node, mark, alias)
        return node

    def _measure(self, node: yaml.Node, mark: yaml.Mark, alias: bool) -> None:
        """Record the size of a node just composed; refuse a document grown too large."""
        if alias:
            size = self._sizes.get(id(node))
            if size is None:  # its anchor is still open: the alias is inside it
                raise RefusedError("an alias repeats the collection it is in", mark)
        else:
            size = 1 + sum(self._sizes[id(child)] for child in _children(node))
            self._sizes[id(node)] = size
        if size > MAX_VALUES:
            raise RefusedError(
                f"holds more than {MAX_VALUES:,} values once its aliases are expanded; "
                "a spec is smaller (write the values out, or repeat fewer aliases)",
                mark,
            )

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], yaml.Node] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
                continue
            seen = first.setdefault((key.tag, key.value), key)
            if seen is not key:
                raise RefusedError(
                    f"duplicate key '{key.value}' (first at line {seen.start_mark.line + 1}); "
                    "keep one of them",
                    key.start_mark,
                )
        return node


def _too_deep(mark: yaml.Mark) -> RefusedError:
    return RefusedError(f"nested more than {MAX_DEPTH} levels deep; a spec is shallower", mark)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text within the limits of a spec.

    Raises:
        yaml.YAMLError: invalid YAML, or :class:`RefusedError` for a document
            beyond the limits or with a duplicate key.
    """
    return yaml.load(text, Loader=_Loader)


class Lines:
    """Line numbers of keys in a YAML document, by key path."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, ...], int] = {}
        try:
            node = yaml.compose(text, Loader=_Loader)
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
            error["loc"] = _keys(error["loc"])
            collector.add(error["loc"], _message(error, owner))
        raise SpecError(collector.problems, kind) from None


def read_yaml(path: Path, kind: SpecKind) -> Any:
    """The YAML document in a spec file, read within the limits of a spec.

    Raises:
        SpecError: the file is missing, unreadable, larger than :data:`MAX_BYTES`,
            not UTF-8, invalid YAML or refused by :func:`load_yaml`; one problem
            naming the file (and the line when there is one).
    """
    return _parse(_read_text(path, kind), str(path), kind)


def _read_text(path: Path, kind: SpecKind) -> str:
    def refuse(message: str, where: str = "") -> SpecError:
        return SpecError([Problem(str(path), where, message)], kind)

    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise refuse(f"no such {kind}") from None
    except OSError as exc:
        raise refuse(f"cannot read the {kind}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise refuse(f"larger than the {MAX_BYTES:,} bytes a {kind} may be; is it one?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise refuse(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the {kind} as UTF-8",
            f"line {line}",
        ) from None


def _parse(text: str, file: str, kind: SpecKind) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        message = reason if isinstance(exc, RefusedError) else f"invalid YAML: {reason}"
        raise SpecError([Problem(file, where, message)], kind) from None


def _keys(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """A pydantic location as keys of the document: without the tags of tagged unions.

    A spec names its tags ``<like-this>`` (no key of a document looks so).
    """
    return tuple(
        k for k in loc if not (isinstance(k, str) and k.startswith("<") and k.endswith(">"))
    )


def _message(error: ErrorDetails, owner: Callable[[KeyPath], type[BaseModel]]) -> str:
    """What one pydantic error says to a person: a near key for an unknown one."""
    loc = error["loc"]
    if error["type"] == "extra_forbidden":
        known = owner(loc).model_fields.keys()
        return f"unknown key '{loc[-1]}'{suggest(str(loc[-1]), known)}"
    if error["type"] == "missing":
        return f"required key '{loc[-1]}' is missing"
    return error["msg"].removeprefix("Value error, ")  # a validator's message
