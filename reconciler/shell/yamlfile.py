"""The only reader of YAML: text -> plain Python values plus the line:col of every node.

Guarantees: a syntax error, a duplicate key or a tag we do not accept becomes ``InvalidDesiredState``
with ``FILE:LINE:COL``; the plain values hold only dict, list, str, int, float, bool and None (an
unquoted date stays the text that was written). An empty value is placed at its key.
"""

from __future__ import annotations

import datetime
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from reconciler.core.desired import Path, Positions, dotted
from reconciler.errors import InvalidDesiredState


def _plain(node: Any, path: Path, positions: Positions, unsupported: list[tuple[Path, str]]) -> Any:
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            child = (*path, key)
            try:
                key_line, key_col, value_line, value_col = node.lc.data[key]
            except (KeyError, TypeError, ValueError):
                pass
            else:
                positions.keys[child] = (key_line + 1, key_col + 1)
                # An empty value has no token of its own: ruamel places it at the next one.
                where = (key_line, key_col) if value is None else (value_line, value_col)
                positions.values[child] = (where[0] + 1, where[1] + 1)
            out[key] = _plain(value, child, positions, unsupported)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            child = (*path, index)
            try:
                line, col = node.lc.data[index]
            except (KeyError, IndexError, TypeError, ValueError):
                pass
            else:
                positions.values[child] = (line + 1, col + 1)
            items.append(_plain(value, child, positions, unsupported))
        return items
    if isinstance(node, str):
        return str(node)  # drop ruamel's scalar subclasses (quoting styles)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, datetime.date):  # `2024-01-01` unquoted: keep what was written
        return node.isoformat()
    if isinstance(node, TaggedScalar):
        unsupported.append((path, f"the YAML tag {node.tag.value} is not supported; write the value plainly"))
        return None
    return node


def parse_yaml(text: str | bytes, *, filename: str) -> tuple[Any, Positions]:
    """Parse ``text``; raise ``InvalidDesiredState`` with the place of the first syntax error."""
    yaml = YAML(typ="rt")
    positions = Positions()
    try:
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise InvalidDesiredState([f"{filename}:{line}:{col}: {problem}"]) from None
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
        raise InvalidDesiredState([f"{filename}:1:1: {first}"]) from None
    if isinstance(document, CommentedMap | CommentedSeq):
        positions.values[()] = (document.lc.line + 1, document.lc.col + 1)
    unsupported: list[tuple[Path, str]] = []
    data = _plain(document, (), positions, unsupported)
    if unsupported:
        raise InvalidDesiredState(
            [f"{filename}:{':'.join(map(str, positions.of(path)))}: {dotted(path)}: {why}" for path, why in unsupported]
        )
    return data, positions
