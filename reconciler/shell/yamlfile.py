"""The only reader of YAML: text -> plain Python values plus the line:col of every node.

Guarantees: a syntax error, a duplicate key or a tag we do not accept becomes ``InvalidDesiredState``
with ``FILE:LINE:COL``; the plain values hold only dict, list, str, int, float, bool and None (an
unquoted date stays the text that was written). An empty value is placed at its key.
"""

from __future__ import annotations

import datetime
import re
import warnings
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


_PROPERTIES = re.compile(r"(?:[&!]\S*\s+)+")


def _reads_back(value: str, version: tuple[int, int]) -> bool:
    """Whether ``value`` written plain reads back as that string under YAML ``version``.

    Both 1.1 and 1.2 are asked: a file may declare ``%YAML 1.1``, where ``yes`` and ``on`` are booleans.
    """
    loader = YAML(typ="safe", pure=True)
    loader.version = version
    try:
        with warnings.catch_warnings():  # ruamel warns about 1.1 spellings such as 1e5: that is the question
            warnings.simplefilter("ignore")
            plain = loader.load(f"k: {value}\n")
    except YAMLError:
        return False
    return isinstance(plain, dict) and isinstance(plain.get("k"), str) and plain["k"] == value


def _scalar(value: str, style: str | None) -> str:
    """``value`` as a YAML scalar in ``style`` (the one the file used), quoted when plain would not read
    back as the same string (``1.10``, ``true``, ``2024-01-01``)."""
    if style == "'":
        return "'" + value.replace("'", "''") + "'"
    if style == '"':
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if all(_reads_back(value, version) for version in ((1, 1), (1, 2))):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_versions(text: str, versions: dict[str, str], *, filename: str) -> str:
    """``text`` with ``apps.APP.version`` replaced for each app of ``versions``, byte for byte elsewhere.

    Only the version scalar is spliced: comments, key order, quoting (the old value's style is kept),
    flow style and blank lines stay as they were.
    """
    try:
        root = YAML(typ="rt").compose(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise InvalidDesiredState([f"{filename}:{where}: {exc.problem or 'invalid YAML'}"]) from None
    spans: dict[str, Any] = {}
    for key, value in getattr(root, "value", None) or ():
        if getattr(key, "value", None) == "apps" and isinstance(value.value, list):
            for app_key, app_node in value.value:
                for field_key, field_node in getattr(app_node, "value", None) or ():
                    if getattr(field_key, "value", None) == "version" and not isinstance(field_node.value, list):
                        spans[app_key.value] = field_node
    missing = sorted(set(versions) - set(spans))
    if missing:
        raise InvalidDesiredState([f"{filename}: apps.{app}.version: not found" for app in missing])
    out = text
    # Splice from the end so earlier offsets stay valid.
    for app in sorted(versions, key=lambda name: spans[name].start_mark.index, reverse=True):
        node = spans[app]
        start, end = node.start_mark.index, node.end_mark.index
        # The node's span starts at its anchor or tag (`&v v1`, `!!str v1`): keep those, swap the value.
        properties = _PROPERTIES.match(out, start, end)
        start = properties.end() if properties else start
        out = out[:start] + _scalar(versions[app], node.style) + out[end:]
    return out
