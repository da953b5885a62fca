"""Plain mapping (+ where each node stood in the file) -> ``DesiredState``, or every error at once.

Guarantees: either a valid ``DesiredState`` or ``InvalidDesiredState`` whose messages read
``FILE:LINE:COL: apps.web.ports[0]: message``, sorted by position; an unknown key names the nearest
valid one. Positions come from the shell's YAML reader (1-based); a path it does not know falls back to
its nearest known parent, so every message has a place. A fleet's placements (``on:``, ``canary:``)
are checked against its ``hosts:`` (``core.fleet.problems``) and reported the same way. A message is
one line and never shows an env value: keys that are not printable are escaped, long ones cut
(``shown``), and an env value that another field's validator would quote (it got there through a
YAML alias, ``Positions.secrets``) is replaced by ``<an env value>``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from reconciler.core import fleet, stack
from reconciler.core.fields import QUOTED_MAX, shown
from reconciler.core.model import (
    AcmeSpec,
    AnalysisSpec,
    AppSpec,
    CanarySpec,
    DesiredFile,
    DesiredState,
    HealthSpec,
    HostSpec,
    PreviewSpec,
    ProxySpec,
    RolloutSpec,
    RolloutStep,
    RouteSpec,
    TlsSpec,
)
from reconciler.errors import InvalidDesiredState

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Positions:
    """Where each node of the document starts: ``values[path]`` and, for mapping entries, ``keys[path]``."""

    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    # Paths outside env that hold an env value (a YAML alias of it): a message about them never quotes it.
    secrets: set[Path] = field(default_factory=set)

    def of(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        table = self.keys if key else self.values
        for cut in range(len(path), -1, -1):
            where = table.get(path[:cut]) or self.values.get(path[:cut])
            if where is not None:
                return where
        return (1, 1)


def dotted(path: Path) -> str:
    """``("apps", "web", "ports", 0)`` -> ``apps.web.ports[0]``; a key that is empty, long (shown cut) or
    holds a character that is not printable (a newline would split the message in two) is written
    ``['a\\nb']``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not part or not part.isprintable() or len(part) > QUOTED_MAX:
            text += f"[{shown(part)}]"
        else:
            text += f".{part}" if text else part
    return text or "(top)"


def _model_at(path: Path) -> type[BaseModel] | None:
    if len(path) == 0:
        return DesiredFile
    if len(path) == 2 and path[0] == "apps":
        return AppSpec
    if len(path) == 3 and path[0] == "apps" and path[2] == "health":
        return HealthSpec
    if len(path) == 3 and path[0] == "apps" and path[2] == "route":
        return RouteSpec
    if len(path) == 3 and path[0] == "apps" and path[2] == "canary":
        return CanarySpec
    if len(path) == 3 and path[0] == "apps":
        return _APP_PARTS.get(str(path[2]))
    if len(path) == 4 and path[0] == "apps" and path[2:] == ("rollout", "analysis"):
        return AnalysisSpec
    if len(path) == 5 and path[0] == "apps" and path[2:4] == ("rollout", "steps"):
        return RolloutStep
    if len(path) == 4 and path[0] == "apps" and path[2] == "secrets":
        return stack.SecretSpec
    if len(path) == 5 and path[0] == "apps" and path[2] == "secrets" and path[4] == "source":
        return stack.SopsRef  # a map there is {sops: PATH, key}
    if len(path) == 4 and path[0] == "apps" and path[2] == "networks":
        return stack.Attachment
    if len(path) == 4 and path[0] == "apps" and path[2] == "ulimits":
        return stack.Ulimit
    if len(path) == 2 and path[0] == "networks":
        return stack.NetworkSpec
    if path == ("proxy",):
        return ProxySpec
    if len(path) == 2 and path[0] == "previews":
        return PreviewSpec
    if len(path) == 2 and path[0] == "hosts":
        return HostSpec
    if path == ("proxy", "tls"):
        return TlsSpec
    if path == ("proxy", "tls", "acme"):
        return AcmeSpec
    return None


_APP_PARTS: dict[str, type[BaseModel]] = {
    "release": stack.ReleaseSpec,
    "logging": stack.LoggingSpec,
    "env_file": stack.SopsRef,  # a map there is {sops: PATH}
    "rollout": RolloutSpec,
}

MAX_LISTED = 20  # valid keys named in an unknown key's message, at most

ModelAt = Callable[[Path], "type[BaseModel] | None"]  # the model that validates the node at a path


def data_path(data: Any, loc: tuple[str | int, ...], model_at: ModelAt | None = None) -> Path:
    """Keep the parts of a pydantic ``loc`` that index into the data (it adds union and validator tags).
    ``model_at`` says where the models of the file are (a key unknown to one is still a place)."""
    model_at = model_at or _model_at
    path: list[str | int] = []
    node = data
    for part in loc:
        if part == "[key]":
            break
        if part in stack.SOURCE_TAGS:
            continue
        if isinstance(node, Mapping):
            if part in node:
                node = node[part]
                path.append(part)
            elif isinstance(part, str) and model_at(tuple(path)) is not None:
                path.append(part)  # a missing or unknown key of a model: still a real place
                break
        elif isinstance(node, list | tuple) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
    return tuple(path)


def message(error: Any, path: Path, model_at: ModelAt | None = None) -> str:
    """One pydantic error as a person reads it: an unknown key names the nearest valid one."""
    kind = error["type"]
    if kind == "extra_forbidden":
        model = (model_at or _model_at)(path[:-1])
        valid = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(path[-1]), valid, n=1, cutoff=0.5)
        if close:
            hint = f"; did you mean {close[0]!r}?"
        elif len(valid) > MAX_LISTED:  # an app takes 40-odd keys: a list that long is not one line a person reads
            hint = f"; `reconcile schema` lists the {len(valid)} valid keys"
        else:
            hint = f"; valid keys: {', '.join(valid)}" if valid else ""
        return f"unknown key {shown(str(path[-1]))}{hint}"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _redacted(text: str, data: Mapping[Any, Any]) -> str:
    """``text`` without any env value of the file: an alias can carry an env value into a field whose
    validator quotes what it refuses (``image: *token``), and env values are never printed. Applied only
    to such fields, so that ``stop_timeout: .inf`` is still quoted when an env value is ``.inf`` too."""
    apps = data.get("apps")
    secrets: set[str] = set()
    for spec in apps.values() if isinstance(apps, Mapping) else ():
        env = spec.get("env") if isinstance(spec, Mapping) else None
        if isinstance(env, Mapping):
            secrets.update(value for value in env.values() if isinstance(value, str) and value)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(shown(secret), "<an env value>")  # validators quote with shown()
    return text


def load_desired(
    data: Any, positions: Positions, *, filename: str, revision: str = "", author: str = ""
) -> DesiredState:
    """Validate ``data`` (the file as plain Python) into a ``DesiredState``; raise with every error."""
    if data is None:
        raise InvalidDesiredState([f"{filename}:1:1: the file is empty; it needs at least 'apps:'"])
    if not isinstance(data, Mapping):
        line, col = positions.of(())
        raise InvalidDesiredState([f"{filename}:{line}:{col}: the top level must be a mapping with 'apps:'"])
    try:
        parsed = DesiredFile.model_validate(data)
    except ValidationError as exc:
        found: list[tuple[tuple[int, int], str]] = []
        for error in exc.errors():
            path = data_path(data, tuple(error["loc"]))
            key = error["type"] in ("extra_forbidden", "missing") or "[key]" in error["loc"]
            where = positions.of(path, key=key)
            if error["type"] == "missing":
                where = positions.of(path[:-1], key=True)
            text = f"{filename}:{where[0]}:{where[1]}: {dotted(path)}: {message(error, path)}"
            if any(path[:cut] in positions.secrets for cut in range(len(path) + 1)):
                text = _redacted(text, data)
            found.append((where, text))
        unique = dict.fromkeys(text for _, text in sorted(found))
        raise InvalidDesiredState(list(unique)) from None
    wrong = _route_problems(parsed, positions) + [
        (positions.of(path), path, message)
        for path, message in fleet.problems(parsed.apps, parsed.hosts)
        + stack.problems(parsed.apps, parsed.networks)
        + _preview_problems(parsed)
    ]
    problems = [f"{filename}:{line}:{col}: {dotted(path)}: {message}" for (line, col), path, message in sorted(wrong)]
    if problems:
        raise InvalidDesiredState(problems)
    return DesiredState(
        apps=parsed.apps,
        proxy=parsed.proxy,
        hosts=parsed.hosts,
        networks=parsed.networks,
        previews=parsed.previews,
        revision=revision,
        path=filename,
        author=author,
    )


def _route_problems(parsed: DesiredFile, positions: Positions) -> list[tuple[tuple[int, int], Path, str]]:
    """Routes that no proxy serves, two apps that claim the same host and path prefix, and a wildcard host that
    ACME would have to order (HTTP-01 cannot prove one) with no ``tls.certs`` folder to serve it from."""
    found: list[tuple[tuple[int, int], Path, str]] = []
    claimed: dict[tuple[str, str], str] = {}
    tls = parsed.proxy.tls if parsed.proxy is not None else None
    wildcards_refused = tls is not None and tls.acme is not None and tls.certs is None
    for app, spec in sorted(parsed.apps.items(), key=lambda item: positions.of(("apps", item[0]))):
        if spec.route is None:
            continue
        path: Path = ("apps", app, "route")
        if parsed.proxy is None:
            found.append((positions.of(path, key=True), path, "a route needs a top-level proxy: to serve it"))
        for index, host in enumerate(spec.route.hosts):
            if wildcards_refused and host.startswith("*."):
                at: Path = (*path, "hosts", index)
                found.append(
                    (
                        positions.of(at),
                        at,
                        f"{host}: ACME cannot order a wildcard certificate over HTTP-01; put its certificate in a"
                        " proxy.tls.certs folder (a PEM there serves it, and ACME orders the exact hosts)",
                    )
                )
        for host in spec.route.hosts or ("*",):
            claim = (host, spec.route.path_prefix)
            other = claimed.setdefault(claim, app)
            if other != app:
                shown = "every host" if host == "*" else host
                found.append(
                    (
                        positions.of(path),
                        path,
                        f"{shown} {spec.route.path_prefix} is already routed to {other}: two apps cannot claim"
                        " the same host and path prefix",
                    )
                )
    return found


def _preview_problems(parsed: DesiredFile) -> list[tuple[Path, str]]:
    """Previews of an app the file does not have, of one without a route (a preview is reached by its own host
    name), of a service, or that keep a secret the app does not have."""
    found: list[tuple[Path, str]] = []
    for app, preview in (parsed.previews or {}).items():
        path: Path = ("previews", app)
        spec = parsed.apps.get(app)
        if spec is None:
            close = difflib.get_close_matches(app, sorted(parsed.apps), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            found.append((path, f"no app {shown(app)} to make previews of{hint}"))
            continue
        if spec.route is None:
            found.append((path, f"{app} has no route: a preview is served by the proxy at its own host"))
        if spec.service:
            found.append((path, f"{app} is a service (replicas:): previews are made of containers only"))
        targets = {secret.target for secret in spec.secrets}
        for index, target in enumerate(preview.secrets):
            if target not in targets:
                found.append(((*path, "secrets", index), f"{app} has no secret with the target {shown(target)}"))
    return found
