"""The editor of desired-state.yaml: new ``version:`` values spliced into the text, every other byte kept.

Guarantees:
- ``set_versions`` reads the file with the reader (``adapters.yamlfile``), so a file it cannot read is
  refused the same way, ``InvalidDesiredState`` with ``FILE:LINE:COL``; it never parses the file twice
  in different ways.
- It edits only the version scalars asked for and never changes another app: an app whose
  ``version: *v`` is an alias gets its own scalar instead; a version that other places share through
  an anchor is refused, naming the anchor and the places that share it.
- A new value is quoted when written plain it would not read back as the same string (``1.10``,
  ``true``, a date), under YAML 1.1 and 1.2 both.
"""

from __future__ import annotations

import re
import warnings

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from reconciler.adapters.yamlfile import STR_TAG, Expander, Node, Use, Where, decoded, deref, expand, shown_name
from reconciler.core.desired import dotted
from reconciler.errors import InvalidDesiredState

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


def _text_of(node: Node) -> str | None:
    """A scalar's value when the file reads it as a string."""
    if node.kind == "scalar" and (node.tag in ("!", STR_TAG) or (node.tag is None and node.resolved == STR_TAG)):
        return node.value
    return None


def _version_token(root: Node | None, app: str, expander: Expander) -> Node | None:
    """The token written for ``apps.APP.version`` (a scalar, or an alias of one), following aliases and
    merges on the way; None when there is no such scalar."""
    node = root
    for key in ("apps", app, "version"):
        if node is None:
            return None
        mapping, _ = deref(node)
        if mapping.kind != "map":
            return None
        node = next((value for name, _, value, _ in expander.pairs(mapping, (), 0) if name == key), None)
    return node if node is not None and deref(node)[0].kind == "scalar" else None


def _shared_message(app: str, token: Node, others: list[Use], own: list[Use], expander: Expander) -> str:
    anchors = {token.anchor} if token.anchor else set()
    for _, via in [*others, *own]:
        anchors.update(expander.aliases[alias].anchor or "" for alias in via)
    names = " and ".join(f"&{shown_name(name)}" for name in sorted(anchors - {""}))
    places = list(dict.fromkeys(dotted(path) for path, _ in others))
    shown = ", ".join(places[:5]) + (f" and {len(places) - 5} more" if len(places) > 5 else "")
    return (
        f"apps.{app}.version: this value is shared through the anchor {names} with {shown}; changing it would "
        f"change them too: give {app} a version of its own, or set all of them to the same version"
    )


def set_versions(text: str, versions: dict[str, str], *, filename: str) -> str:
    """``text`` with ``apps.APP.version`` replaced for each app of ``versions``, byte for byte elsewhere.

    Only the version token is spliced: comments, key order, quoting (the old value's style is kept),
    flow style, anchors and blank lines stay as they were. ``version: *v`` becomes the app's own scalar
    (the anchor and the other apps stay as they are), unless the anchor itself is set to the same value.
    A token that another place uses too (an anchored version, or an app that is an alias of another)
    changes only when every such place is an app set to the same version; otherwise it is refused.
    """
    root, _, expander = expand(decoded(text, filename, None), filename, record_uses=True)
    expander.produced = 0  # the lookups below walk what the expansion already counted
    tokens: dict[str, Node] = {}
    for app in versions:
        token = _version_token(root, app, expander)
        if token is not None:
            tokens[app] = token
    missing = sorted(set(versions) - set(tokens))
    if missing:
        raise InvalidDesiredState([f"{filename}: apps.{app}.version: not found" for app in missing])
    uses = expander.uses or {}
    edited = {id(token): versions[app] for app, token in tokens.items() if token.kind == "scalar"}
    replaced = {
        id(token)
        for app, token in tokens.items()
        if token.kind == "alias"
        and token.target is not None
        and edited.get(id(token.target), _text_of(token.target)) != versions[app]
    }
    edits: dict[tuple[int, int], str] = {}
    refused: list[tuple[Where, str]] = []
    for app, token in tokens.items():
        if token.kind == "alias" and id(token) not in replaced:
            continue  # follows its anchor, which is (or is set to) the same value
        own: list[Use] = []
        others: list[Use] = []
        for path, via in uses.get(id(token), []):
            if path == ("apps", app, "version"):
                own.append((path, via))
            elif any(alias in replaced for alias in via):
                continue  # reached through an alias that becomes a scalar of its own
            elif (
                len(path) == 3
                and path[0] == "apps"
                and path[2] == "version"
                and versions.get(str(path[1])) == versions[app]
            ):
                continue  # another app set to the same value
            else:
                others.append((path, via))
        if others:
            refused.append((token.where, _shared_message(app, token, others, own, expander)))
            continue
        start, end = token.start, token.end
        target, _ = deref(token)
        if token.kind == "scalar":
            # The span starts at the anchor or tag (`&v v1`, `!!str v1`): keep those, swap the value.
            properties = _PROPERTIES.match(text, start, end)
            start = properties.end() if properties else start
        edits[(start, end)] = _scalar(versions[app], target.style)
    if refused:
        raise InvalidDesiredState([f"{filename}:{line}:{col}: {message}" for (line, col), message in sorted(refused)])
    out = text
    for (start, end), scalar in sorted(edits.items(), reverse=True):  # from the end: earlier offsets stay valid
        out = out[:start] + scalar + out[end:]
    return out
