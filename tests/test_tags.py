"""Every tag name mlnb writes lives once in mlnb.tags, and no value is defined twice."""

from __future__ import annotations

import ast
from pathlib import Path

from mlnb import tags
from tests.helpers import REPO


def test_every_tag_name_is_an_mlnb_name_defined_once() -> None:
    names = {k: v for k, v in vars(tags).items() if k.isupper() and isinstance(v, str)}
    assert len(names) > 50
    values = [v for k, v in names.items() if k != "VALUE_LIMIT"]
    assert all(v.startswith("mlnb.") for v in values), values
    assert len(values) == len(set(values)), "a tag value is defined twice"


def test_no_module_writes_a_tag_name_of_its_own() -> None:
    """Outside mlnb/tags.py no string literal in the package is an mlnb.* tag name."""
    known = {v for v in vars(tags).values() if isinstance(v, str) and v.startswith("mlnb.")}
    found = []
    for path in sorted((REPO / "mlnb").rglob("*.py")):
        if path.name == "tags.py" and path.parent.name == "mlnb":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in known:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)
    assert Path(tags.__file__).name == "tags.py"
