"""The only reader of YAML: text -> plain Python values plus the line:col of every node.

Guarantees:

- Every problem of the text is ``InvalidDesiredState`` whose every line is ``FILE:LINE:COL: ...``; never
  another exception, and never a value of the file in a message (keys are shown escaped, so a key
  holding a newline stays on one line).
- The plain values hold only dict (with ``str`` keys), list, str, int, finite float, bool and None.
  An unquoted date, a number Python cannot hold (``1e999``, 5,000 digits) and ``.inf``/``.nan`` stay
  the text that was written. Keys are the text written (``1:`` is the key ``"1"``); a mapping or a
  list as a key is refused. An empty value is placed at its key.
- A ``%YAML`` directive other than 1.1 or 1.2, and a ``\\u``/``\\U`` escape that names no character
  (beyond U+10FFFF, or a surrogate), are refused at their place. Anchors and tags of any length are
  shown cut to ``QUOTED_CUT`` characters.
- No Python object is ever built from a tag: the reader walks the parser's events itself. Only
  ``!!str``, ``!``, ``!!map`` and ``!!seq`` are accepted; any other tag is refused where it is written.
- Bounded work: the file is at most ``RECONCILE_MAX_FILE_BYTES`` (default 512 KiB) and is refused before
  it is parsed; at most ``MAX_DEPTH`` levels of nesting and ``MAX_NODES`` nodes, counting the nodes
  that aliases expand to (a "billion laughs" file is refused at the alias, in milliseconds). Nothing
  recurses deeper than ``MAX_DEPTH``.
- Duplicate keys are refused naming the key and both places; an anchor defined twice and an alias
  inside its own anchor are refused; ``<<`` merges are followed.
- What the reader keeps of each node (``Node``: its span, style, anchor and where aliases lead) is what
  the editor (``adapters.yamledit``) splices by: both read a file the same way.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Final

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scanner import Scanner, ScannerError

from reconciler.core.desired import Path, Positions, dotted
from reconciler.core.fields import QUOTED_CUT, QUOTED_MAX
from reconciler.errors import InvalidDesiredState, UserError

MAX_FILE_BYTES_ENV: Final = "RECONCILE_MAX_FILE_BYTES"
DEFAULT_MAX_FILE_BYTES: Final = 512 << 10
MAX_DEPTH: Final = 64  # the format needs 5 (apps.web.health.exec[0]); the reader recurses this deep at most
# With the size cap, the bound on the time to validate: the pure-Python parser reads ~30,000 nodes or
# ~1 MB of plain text a second, so any file under both validates in under 1 s whole process
# (bench/fuzz.py --big). A file of 500 apps is ~10,000 nodes and ~250 KB.
MAX_NODES: Final = 15_000
_MAX_DIGITS: Final = 64  # longer integers stay text: no port, count or id has more digits

_YAML_TAG: Final = "tag:yaml.org,2002:"
STR_TAG: Final = _YAML_TAG + "str"
_MAP: Final = _YAML_TAG + "map"
_SEQ: Final = _YAML_TAG + "seq"
_MERGE: Final = _YAML_TAG + "merge"
_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what ruamel counts as a line break
_KINDS: Final = {"map": "a mapping", "seq": "a list"}

Where = tuple[int, int]  # 1-based line and column
Use = tuple[Path, tuple[int, ...]]  # a path a node appears at, and the ids of the aliases followed to reach it


class _Refused(Exception):
    """A problem that stops the reading: the rest of the file is too big, too deep or cannot be parsed."""

    def __init__(self, where: Where, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.where, self.message, self.path = where, message, path

    def located(self, filename: str) -> InvalidDesiredState:
        at = f"{dotted(self.path)}: " if self.path else ""
        return InvalidDesiredState([f"{filename}:{self.where[0]}:{self.where[1]}: {at}{self.message}"])


@dataclass(eq=False, slots=True)
class Node:
    """A node as written. ``start``/``end`` are offsets in the text; an alias points at its anchored node."""

    kind: str  # scalar | seq | map | alias
    where: Where
    start: int
    end: int = 0
    anchor: str | None = None
    tag: str | None = None  # as written; None when the node has none
    resolved: str = STR_TAG  # a scalar's type by the YAML version's rules for plain scalars
    value: str = ""
    style: str | None = None
    items: list[Node] = field(default_factory=list)
    pairs: list[tuple[Node, Node]] = field(default_factory=list)
    target: Node | None = None


def deref(node: Node) -> tuple[Node, tuple[Node, ...]]:
    """The node an alias stands for (anchored nodes are never aliases), and the alias followed, if any."""
    if node.kind == "alias" and node.target is not None:
        return node.target, (node,)
    return node, ()


def _escaped(text: str) -> str:
    """``text`` on one line: what is not printable is written as a Python escape (``\\n``, ``\\x00``)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def shown_name(text: str) -> str:
    """An anchor's or a tag's name as ``_escaped`` writes it, cut when long: ``aaaa… (300000 characters)``."""
    if len(text) > QUOTED_MAX:
        return _escaped(text[:QUOTED_CUT]) + f"… ({len(text)} characters)"
    return _escaped(text)


def _quoted(text: str) -> str:
    if len(text) > QUOTED_MAX:
        return _quoted(text[:QUOTED_CUT] + "…") + f" ({len(text)} characters)"
    return '"' + _escaped(text).replace('"', '\\"') + '"'


def _show_tag(tag: str) -> str:
    return shown_name("!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag)


def _line_col(text: str, index: int) -> Where:
    """The 1-based place of ``text[index]``, counting line breaks as ruamel's marks do."""
    line, start = 1, 0
    for match in _LINE_BREAK.finditer(text, 0, index):
        line, start = line + 1, match.end()
    return line, index - start + 1


def max_file_bytes() -> int:
    """The size limit: ``RECONCILE_MAX_FILE_BYTES`` when set, else 512 KiB."""
    raw = os.environ.get(MAX_FILE_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_FILE_BYTES
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise UserError(f"{MAX_FILE_BYTES_ENV}={_escaped(raw)!r} is not a number of bytes above 0")
    return limit


def decoded(text: str | bytes, filename: str, max_bytes: int | None) -> str:
    """``text`` as str, refused at 1:1 when it is bigger than the limit (before any parsing)."""
    limit = max_file_bytes() if max_bytes is None else max_bytes
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise InvalidDesiredState(
            [f"{filename}:1:1: the file is {size} bytes; the limit is {limit} ({MAX_FILE_BYTES_ENV})"]
        )
    if isinstance(text, str):
        return text
    encoding, name = ("utf-16", "UTF-16") if text.startswith((b"\xff\xfe", b"\xfe\xff")) else ("utf-8-sig", "UTF-8")
    try:
        return text.decode(encoding)
    except UnicodeDecodeError as exc:
        good = text[: exc.start].decode(encoding, "replace")
        line, col = _line_col(good, len(good))
        raise InvalidDesiredState(
            [f"{filename}:{line}:{col}: the file is not {name} text (byte 0x{text[exc.start]:02x})"]
        ) from None


_YAML_VERSIONS: Final = ((1, 1), (1, 2))


class _Scanner(Scanner):
    """ruamel's scanner, with the two inputs it does not refuse itself refused as located errors.

    A ``%YAML`` directive of another version than 1.1 or 1.2 (or one whose numbers Python's ``int``
    will not read): the scanner records the version as soon as it reads it, and ruamel's resolver has
    rules only for 1.1 and 1.2, so a later ``%YAML 9.9`` could reach the resolver (a ``KeyError``) and
    ``%YAML 1.9`` fails an ``assert``. A ``\\U`` escape beyond U+10FFFF, or one that names a surrogate,
    is not a character (``chr`` raises ``OverflowError``, or builds a string no encoder can write).
    """

    def scan_yaml_directive_value(self, start_mark: Any) -> Any:
        try:
            version = super().scan_yaml_directive_value(start_mark)
        except ValueError:  # thousands of digits: more than int() reads
            version = None
        if version not in _YAML_VERSIONS:
            raise ScannerError(
                None, None, "this YAML version is not supported: write %YAML 1.2 (or 1.1), or no directive", start_mark
            )
        return version

    def scan_flow_scalar_non_spaces(self, double: Any, start_mark: Any) -> Any:
        mark = self.reader.get_mark()
        try:
            chunks = super().scan_flow_scalar_non_spaces(double, start_mark)
        except (OverflowError, ValueError):
            chunks = None
        if chunks is None or any(
            0xD800 <= ord(char) <= 0xDFFF for chunk in chunks if len(chunk) == 1 for char in chunk
        ):
            raise ScannerError(
                "while scanning a double-quoted scalar",
                start_mark,
                "an escape names no Unicode character (\\u and \\U take U+0000 to U+10FFFF, not surrogates)",
                mark,
            )
        return chunks


def _compose(text: str) -> tuple[Node | None, tuple[int, int]]:
    """The document's node tree and its YAML version; walks the parser's events without recursion."""
    yaml = YAML(typ="safe", pure=True)
    yaml.Scanner = _Scanner
    resolver = yaml.resolver
    anchors: dict[str, Node] = {}
    opened: dict[str, Where] = {}  # anchors of collections not yet closed: an alias to one would loop
    stack: list[Node] = []
    keys: list[Node | None] = []  # per open collection: a mapping's key waiting for its value
    root: Node | None = None
    version: tuple[int, int] = (1, 2)
    documents = nodes = 0

    def attach(node: Node) -> None:
        nonlocal root
        if not stack:
            root = node
        elif stack[-1].kind == "seq":
            stack[-1].items.append(node)
        elif keys[-1] is None:
            keys[-1] = node
        else:
            key, keys[-1] = keys[-1], None
            stack[-1].pairs.append((key, node))

    for event in yaml.parse(text):
        if isinstance(event, DocumentStartEvent):
            documents += 1
            if documents > 1:
                where = (event.start_mark.line + 1, event.start_mark.column + 1)
                raise _Refused(where, "a second YAML document: the file holds one document (remove this '---')")
            continue
        if isinstance(event, MappingEndEvent | SequenceEndEvent):
            node = stack.pop()
            keys.pop()
            node.end = event.end_mark.index
            if node.anchor is not None:
                del opened[node.anchor]
                anchors[node.anchor] = node
            attach(node)
            continue
        if not isinstance(event, ScalarEvent | AliasEvent | MappingStartEvent | SequenceStartEvent):
            continue
        where = (event.start_mark.line + 1, event.start_mark.column + 1)
        nodes += 1
        if nodes > MAX_NODES:
            raise _Refused(where, f"the file has more than {MAX_NODES} YAML nodes")
        if nodes == 1:
            version = tuple(resolver.processing_version)
        anchor = event.anchor
        if isinstance(event, AliasEvent):
            assert anchor is not None
            if anchor in opened:
                raise _Refused(where, f"the alias *{shown_name(anchor)} is inside the node it stands for")
            target = anchors.get(anchor)
            if target is None:
                raise _Refused(where, f"the alias *{shown_name(anchor)} has no anchor &{shown_name(anchor)} before it")
            attach(Node("alias", where, event.start_mark.index, event.end_mark.index, anchor=anchor, target=target))
            continue
        if anchor is not None and (anchor in anchors or anchor in opened):
            first = anchors[anchor].where if anchor in anchors else opened[anchor]
            raise _Refused(
                where, f"the anchor &{shown_name(anchor)} is defined twice (first at {first[0]}:{first[1]}); rename one"
            )
        tag = event.tag
        if isinstance(event, ScalarEvent):
            resolved = STR_TAG if tag is not None else str(resolver.resolve(ScalarNode, event.value, event.implicit))
            node = Node(
                "scalar", where, event.start_mark.index, event.end_mark.index, anchor, tag, resolved,
                value=event.value, style=event.style,
            )  # fmt: skip
            if anchor is not None:
                anchors[anchor] = node
            attach(node)
            continue
        if len(stack) >= MAX_DEPTH:
            raise _Refused(where, f"nested deeper than {MAX_DEPTH} levels")
        kind = "map" if isinstance(event, MappingStartEvent) else "seq"
        stack.append(Node(kind, where, event.start_mark.index, anchor=anchor, tag=tag))
        keys.append(None)
        if anchor is not None:
            opened[anchor] = where
    return root, version


def _read(text: str, filename: str) -> tuple[Node | None, tuple[int, int]]:
    """``_compose`` with every parser error located and on one line."""
    try:
        return _compose(text)
    except _Refused as exc:
        raise exc.located(filename) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = _escaped(str(exc.problem or exc.context or "invalid YAML"))
        raise InvalidDesiredState([f"{filename}:{line}:{col}: {problem}"]) from None
    except ReaderError as exc:
        line, col = _line_col(text, exc.position) if isinstance(exc.position, int) else (1, 1)
        character = f"U+{exc.character:04X}" if isinstance(exc.character, int) else "a character"
        raise InvalidDesiredState([f"{filename}:{line}:{col}: {character} is not allowed in a YAML file"]) from None
    except YAMLError as exc:
        first = (str(exc).strip().splitlines() or ["invalid YAML"])[0]
        raise InvalidDesiredState([f"{filename}:1:1: {_escaped(first)}"]) from None


def _integer(text: str, yaml11: bool) -> int | None:
    """A plain scalar the resolver calls an int, as ruamel's constructor reads it; None when it cannot."""
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits[1:] if digits[:1] in ("-", "+") else digits
    if not digits or len(digits) > _MAX_DIGITS:
        return None
    try:
        if digits[:2] in ("0b", "0x", "0o"):
            return sign * int(digits[2:], {"0b": 2, "0x": 16, "0o": 8}[digits[:2]])
        if yaml11 and ":" in digits:  # 1.1 sexagesimal, 1:30 == 90
            number = 0
            for part in digits.split(":"):
                number = number * 60 + int(part)
            return sign * number
        if yaml11 and len(digits) > 1 and digits[0] == "0":
            return sign * int(digits, 8)
        return sign * int(digits)
    except ValueError:
        return None


def _real(text: str) -> float | None:
    """A plain scalar the resolver calls a float, when it is a finite one (``.inf``, ``1e999``: None)."""
    try:
        number = float(text.replace("_", ""))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


class Expander:
    """Node tree -> plain values and positions, following aliases and merges within the caps."""

    def __init__(self, version: tuple[int, int], *, record_uses: bool = False) -> None:
        self.yaml11 = version < (1, 2)
        self.positions = Positions()
        self.problems: dict[tuple[Where, str], str] = {}  # one line per place and problem, however reached
        self.produced = 0
        self.via: list[Node] = []  # the aliases being expanded, outermost first
        self.uses: dict[int, list[Use]] | None = {} if record_uses else None
        self.aliases: dict[int, Node] = {}
        self.shared: dict[int, list[Path]] = {}  # scalars reached through an alias: every path they have

    def problem(self, node: Node, path: Path, message: str) -> None:
        self.problems.setdefault((node.where, message), f"{dotted(path)}: {message}")

    def count(self, node: Node, path: Path) -> None:
        self.produced += 1
        if self.produced > MAX_NODES:
            if self.via:  # the place to fix is where the expansion starts
                alias = self.via[0]
                raise _Refused(
                    alias.where, f"the alias *{shown_name(alias.anchor or '')} expands to more than {MAX_NODES} nodes"
                )
            raise _Refused(node.where, f"the file has more than {MAX_NODES} nodes", path)

    def record(self, node: Node, path: Path) -> None:
        if self.uses is not None:
            self.uses.setdefault(id(node), []).append((path, tuple(id(alias) for alias in self.via)))

    def value(self, node: Node, path: Path, depth: int, where: Where | None = None) -> Any:
        self.positions.values[path] = where or node.where
        self.record(node, path)
        if node.kind == "alias" and node.target is not None:
            self.aliases[id(node)] = node
            self.via.append(node)
            try:
                return self.value(node.target, path, depth, where or node.where)
            finally:
                self.via.pop()
        self.count(node, path)
        if node.kind == "scalar":
            if node.anchor is not None:
                self.shared.setdefault(id(node), []).append(path)
            return self.scalar(node, path)
        if depth >= MAX_DEPTH:  # aliases can nest what the text does not
            where = (self.via[0] if self.via else node).where
            raise _Refused(where, f"nested deeper than {MAX_DEPTH} levels", path[:4])  # the field, not 64 [0]s
        self.check_tag(node, path)
        if node.kind == "seq":
            return [self.value(item, (*path, index), depth + 1) for index, item in enumerate(node.items)]
        out: dict[str, Any] = {}
        for key, key_node, value_node, via in self.pairs(node, path, depth):
            child = (*path, key)
            self.positions.keys[child] = key_node.where
            empty = value_node.kind == "scalar" and value_node.value == "" and value_node.style is None
            self.via.extend(via)
            self.aliases.update((id(alias), alias) for alias in via)
            try:
                # An empty value has no token of its own: the parser places it at the next one.
                out[key] = self.value(value_node, child, depth + 1, key_node.where if empty else None)
            finally:
                del self.via[len(self.via) - len(via) :]
        return out

    def check_tag(self, node: Node, path: Path) -> None:
        allowed = {"scalar": STR_TAG, "seq": _SEQ, "map": _MAP}[node.kind]
        if node.tag is not None and node.tag not in ("!", allowed):
            self.problem(node, path, f"the YAML tag {_show_tag(node.tag)} is not supported; write the value plainly")

    def scalar(self, node: Node, path: Path) -> Any:
        if node.tag is not None:
            self.check_tag(node, path)
            return node.value if node.tag in ("!", STR_TAG) else None
        kind = node.resolved.removeprefix(_YAML_TAG)
        if kind == "null":
            return None
        if kind == "bool":
            return node.value.lower() in ("true", "yes", "on", "y")
        if kind == "int":
            number = _integer(node.value, self.yaml11)
            return node.value if number is None else number
        if kind == "float":
            real = _real(node.value)
            return node.value if real is None else real
        return node.value  # str; a timestamp, `<<` or `=` as a value stay the text that was written

    def key(self, node: Node, path: Path) -> str | None:
        """A key's text, or None (and a problem) for a key that is not a plain string."""
        target, _ = deref(node)
        if target.kind != "scalar":
            self.problem(node, path, f"keys must be plain strings, not {_KINDS.get(target.kind, 'a node')}")
            return None
        if target.tag is not None and target.tag not in ("!", STR_TAG):
            self.problem(node, path, f"the YAML tag {_show_tag(target.tag)} is not supported: keys are plain strings")
            return None
        return target.value

    def pairs(
        self, node: Node, path: Path, depth: int, via: tuple[Node, ...] = ()
    ) -> list[tuple[str, Node, Node, tuple[Node, ...]]]:
        """A mapping's entries as the document means them: its own keys, then keys merged in by ``<<``
        that it does not have (earlier merges win), each with the aliases followed to reach it."""
        if depth >= MAX_DEPTH:
            raise _Refused(node.where, f"'<<' merges nest deeper than {MAX_DEPTH} levels", path)
        own: dict[str, tuple[Node, Node, tuple[Node, ...]]] = {}
        sources: list[tuple[Node, tuple[Node, ...]]] = []
        for key_node, value_node in node.pairs:
            written, _ = deref(key_node)
            if written.kind == "scalar" and written.tag is None and written.resolved == _MERGE:
                sources.extend(self.merge_sources(value_node, path, via))
                continue
            key = self.key(key_node, path)
            if key is None:
                continue
            if key in own:
                first = own[key][0].where
                self.problem(
                    key_node,
                    (*path, key),
                    f"duplicate key {_quoted(key)}: it is also at line {first[0]}, column {first[1]}; keep one",
                )
                continue
            own[key] = (key_node, value_node, via)
        entries = [(key, *entry) for key, entry in own.items()]
        for source, source_via in sources:
            for key, key_node, value_node, entry_via in self.pairs(source, path, depth + 1, source_via):
                self.count(key_node, path)  # flattening chains of merges is work too
                if key not in own:
                    own[key] = (key_node, value_node, entry_via)
                    entries.append((key, key_node, value_node, entry_via))
        return entries

    def merge_sources(self, value: Node, path: Path, via: tuple[Node, ...]) -> list[tuple[Node, tuple[Node, ...]]]:
        target, followed = deref(value)
        candidates = [value] if target.kind == "map" else target.items if target.kind == "seq" else []
        if not candidates:
            self.problem(value, path, "'<<' merges a mapping or a list of mappings (<<: *defaults)")
        sources = []
        for candidate in candidates:
            source, more = deref(candidate)
            if source.kind != "map":
                self.problem(candidate, path, "'<<' merges a mapping or a list of mappings (<<: *defaults)")
                continue
            sources.append((source, (*via, *followed, *more) if candidate is not value else (*via, *followed)))
        return sources


def _is_env(path: Path) -> bool:
    return len(path) == 4 and path[0] == "apps" and path[2] == "env"


def expand(text: str, filename: str, *, record_uses: bool = False) -> tuple[Node | None, Any, Expander]:
    root, version = _read(text, filename)
    expander = Expander(version, record_uses=record_uses)
    data = None
    if root is not None:
        try:
            data = expander.value(root, (), 0)
        except _Refused as exc:
            raise exc.located(filename) from None
    for paths in expander.shared.values():
        if any(_is_env(path) for path in paths):
            expander.positions.secrets.update(path for path in paths if not _is_env(path))
    if expander.problems:
        lines = [f"{filename}:{where[0]}:{where[1]}: {text}" for (where, _), text in expander.problems.items()]
        positions = [where for where, _ in expander.problems]
        raise InvalidDesiredState([line for _, line in sorted(zip(positions, lines, strict=True))])
    return root, data, expander


def parse_yaml(text: str | bytes, *, filename: str, max_bytes: int | None = None) -> tuple[Any, Positions]:
    """Parse ``text``; raise ``InvalidDesiredState`` with the place of every problem of the YAML itself.

    ``max_bytes`` overrides ``RECONCILE_MAX_FILE_BYTES`` (default 512 KiB).
    """
    _, data, expander = expand(decoded(text, filename, max_bytes), filename)
    return data, expander.positions
