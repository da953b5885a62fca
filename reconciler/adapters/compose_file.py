"""The files of ``reconcile import compose``: the compose YAML and its ``.env`` read, the desired file written.

Guarantees:

- ``read_compose`` reads a compose file through the project's one YAML reader (``adapters.yamlfile``: the same
  caps on size, depth and aliases, ``<<`` merges followed, every problem ``FILE:LINE:COL: ...``), with one
  difference that compose makes: a plain integer with a leading zero is octal (``mode: 0400`` is 256), as
  compose's YAML library reads it in a YAML 1.2 file too.
- ``read_env_file`` reads ``KEY=VALUE`` lines as compose does (python-dotenv's ``dotenv_values``); a key
  without a value is left out. A file that cannot be read is one ``SourceError`` naming it, never its content.
- ``render`` writes plain values as YAML that the reader reads back to the same values: a header comment,
  keys in the order given, ``version:`` and file modes always double-quoted, short lists of scalars in flow
  style, no line wrapped.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from dotenv import dotenv_values
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from reconciler.adapters.yamlfile import Expander, Node, decoded, expand
from reconciler.core.desired import Path as DataPath
from reconciler.errors import SourceError

_LEADING_ZERO_OCTAL: Final = re.compile(r"^[-+]?0[0-7_]+$")
_QUOTED_KEYS: Final = frozenset({"version", "mode"})
_FLOW_MAX: Final = 100  # a list of scalars shorter than this, written on one line, stays on one line


class _ComposeExpander(Expander):
    """The reader's expander, with compose's octal integers (``0400``) in a YAML 1.2 file too."""

    def scalar(self, node: Node, path: DataPath) -> Any:
        value = super().scalar(node, path)
        if isinstance(value, int) and not isinstance(value, bool) and node.tag is None and node.style is None:
            text = node.value.replace("_", "")
            if _LEADING_ZERO_OCTAL.match(node.value) and len(text.lstrip("+-")) > 1:
                return int(text, 8)
        return value


def read_compose(path: Path) -> Any:
    """The compose file at ``path`` as plain values; ``InvalidDesiredState`` (``FILE:LINE:COL``) when it is not
    YAML, ``SourceError`` when it cannot be read."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from None
    filename = str(path)
    root, _, first = expand(decoded(raw, filename, None), filename)
    if root is None:
        return None
    # The first reading refused whatever is wrong (caps, tags, duplicates); this one only reads ints anew.
    return _ComposeExpander((1, 1) if first.yaml11 else (1, 2)).value(root, (), 0)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` of a ``.env`` file, read as compose reads it; keys without a value are left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SourceError(f"{path}: {reason or exc}") from None
    values = dotenv_values(stream=io.StringIO(text), interpolate=True)
    return {key: value for key, value in values.items() if value is not None}


def _styled(value: Any, key: str | None = None) -> Any:
    if isinstance(value, Mapping):
        out = CommentedMap()
        for name, item in value.items():
            out[name] = _styled(item, str(name))
        return out
    if isinstance(value, list | tuple):
        seq = CommentedSeq(_styled(item) for item in value)
        scalars = all(not isinstance(item, Mapping | list | tuple) for item in value)
        if scalars and len(", ".join(str(item) for item in value)) < _FLOW_MAX:
            seq.fa.set_flow_style()
        return seq
    if isinstance(value, str) and key in _QUOTED_KEYS:
        return DoubleQuotedScalarString(value)
    return value


def render(data: Mapping[str, Any], header: str) -> str:
    """``data`` as YAML text under the comment line ``header``."""
    yaml = YAML()
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    out = io.StringIO()
    out.write(f"# {header}\n")
    yaml.dump(_styled(data), out)
    return out.getvalue()
