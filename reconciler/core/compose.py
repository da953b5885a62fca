"""A Compose file (compose spec; v2/v3 ``docker-compose.yml`` too) as a desired-state.yaml: pure conversion.

Guarantees:

- ``convert(compose, env, folder, profiles)`` is pure: it reads only its arguments (the file as plain
  values, the variables for interpolation, the compose file's folder, the profiles asked for) and returns
  the desired file as plain values (``apps:``, and ``networks:`` when declared) with its warnings, or raises
  ``ComposeError`` carrying every problem found, each one line naming its place (``services.api.build: ...``).
- Every string value is interpolated first as compose does (``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-d}``,
  ``${VAR-d}``, ``${VAR:?msg}``, ``${VAR?msg}``, ``${VAR:+r}``, ``${VAR+r}``); keys are not, and ``x-`` keys
  are skipped everywhere (ignored silently, as extension fields are).
- A key with no equivalent is one warning naming it (``services.web.stdin_open: not supported; ignored``);
  an input that cannot be honoured (an image built here, a port range, a secret that is not a file) is an
  error. Nothing of an ``env_file`` or a secret's file is read: their paths are written, never contents.
- Durations come out in the file's own one-unit format (``500ms``, ``90s``, ``10m``, ``1h``).
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

from reconciler.core.model import APP_NAME, CONTAINER_ONLY
from reconciler.errors import UserError

Path = tuple[str | int, ...]


class ComposeError(UserError):
    """The compose file cannot be converted: ``problems`` holds one line per problem, each naming its place."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class Converted:
    """The desired file as plain values, and one line per warning (without ``warning:``)."""

    desired: dict[str, Any]
    warnings: tuple[str, ...]


def dotted(path: Path) -> str:
    """``("services", "web", "ports", 0)`` -> ``services.web.ports[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Problems:
    """The errors and warnings of one conversion, in the order they were found."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, path: Path, message: str) -> None:
        self.errors.append(f"{dotted(path)}: {message}")

    def warn(self, path: Path, message: str) -> None:
        line = f"{dotted(path)}: {message}"
        if line not in self.warnings:
            self.warnings.append(line)

    def ignored(self, path: Path) -> None:
        self.warn(path, "not supported; ignored")


# --- interpolation ---------------------------------------------------------------------------------------

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FREE_KEYS: Final = frozenset({"environment", "labels", "sysctls", "options", "extra_hosts", "ulimits"})
_OPERATORS: Final = (":-", ":?", ":+", "-", "?", "+")


class _Missing(ValueError):
    """``${VAR:?message}`` with VAR unset (or empty): the message to say."""


MAX_NESTING: Final = 16  # ${A:-${B:-...}} this deep at most: a default is a value, not a program


def interpolate(
    text: str, env: Mapping[str, str], unset: Callable[[str], None] | None = None, *, depth: int = 0
) -> str:
    """``text`` with compose's ``$`` references replaced from ``env``; ``unset(NAME)`` is told of each plain
    reference to a variable that is not set (it becomes ""). Raises ``ValueError`` with compose's meaning
    for ``${VAR:?message}`` of a missing variable, for a ``${`` that is never closed, and for references
    nested deeper than ``MAX_NESTING``."""
    if depth > MAX_NESTING:
        raise ValueError(f"references nested deeper than {MAX_NESTING} levels")
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "$":
            out.append(char)
            index += 1
            continue
        following = text[index + 1 : index + 2]
        if following == "$":
            out.append("$")
            index += 2
        elif following == "{":
            end = _closing(text, index + 2)
            if end < 0:
                raise ValueError(f"{text[index:]!r}: '${{' is never closed by '}}'")
            out.append(_braced(text[index + 2 : end], env, unset, depth))
            index = end + 1
        else:
            match = _NAME.match(text, index + 1)
            if match is None:  # a lone $ (before a space, a digit, the end) is kept as written
                out.append("$")
                index += 1
                continue
            out.append(_lookup(match.group(), env, unset))
            index = match.end()
    return "".join(out)


def _closing(text: str, start: int) -> int:
    """The index of the ``}`` closing a ``${`` whose content starts at ``start`` (nested ``${...}`` skipped)."""
    depth = 1
    index = start
    while index < len(text):
        if text.startswith("$$", index):
            index += 2
            continue
        if text.startswith("${", index):
            depth += 1
            index += 2
            continue
        if text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return -1


def _lookup(name: str, env: Mapping[str, str], unset: Callable[[str], None] | None) -> str:
    if name in env:
        return env[name]
    if unset is not None:
        unset(name)
    return ""


def _braced(inner: str, env: Mapping[str, str], unset: Callable[[str], None] | None, depth: int) -> str:
    match = _NAME.match(inner)
    if match is None:
        raise ValueError(f"'${{{inner}}}' is not a variable reference")
    name, rest = match.group(), inner[match.end() :]
    if not rest:
        return _lookup(name, env, unset)
    operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
    if operator is None:
        raise ValueError(f"'${{{inner}}}' is not a variable reference")
    word = rest[len(operator) :]
    value = env.get(name)
    present = value is not None and (value != "" or not operator.startswith(":"))
    if operator in (":-", "-"):
        return value if present and value is not None else interpolate(word, env, unset, depth=depth + 1)
    if operator in (":+", "+"):
        return interpolate(word, env, unset, depth=depth + 1) if present else ""
    if not present or value is None:
        said = interpolate(word, env, unset, depth=depth + 1)
        raise _Missing(f"required variable {name} is missing a value" + (f": {said}" if said else ""))
    return value


def _interpolated(value: Any, env: Mapping[str, str], path: Path, problems: _Problems) -> Any:
    """Every string of ``value`` interpolated (keys not); ``x-`` keys dropped, but for the keys of the user's
    own mappings (``environment``, ``labels``...), where ``x-`` is a name like any other."""
    if isinstance(value, str):

        def unset(name: str) -> None:
            problems.warn(path, f"the variable {name} is not set; a blank string is used")

        try:
            return interpolate(value, env, unset)
        except _Missing as exc:
            problems.error(path, str(exc))
        except ValueError as exc:
            problems.error(path, f"invalid interpolation: {exc}")
        return value
    if isinstance(value, Mapping):
        return {
            key: _interpolated(item, env, (*path, key), problems)
            for key, item in value.items()
            if not str(key).startswith("x-") or (path and path[-1] in _FREE_KEYS)
        }
    if isinstance(value, list):
        return [_interpolated(item, env, (*path, index), problems) for index, item in enumerate(value)]
    return value


# --- durations and sizes ---------------------------------------------------------------------------------

_GO_DURATION_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(h|ms|m|s|us|µs|μs|ns)")
_NANOS: Final = {
    "h": 3_600_000_000_000, "m": 60_000_000_000, "s": 1_000_000_000, "ms": 1_000_000,
    "us": 1_000, "µs": 1_000, "μs": 1_000, "ns": 1,
}  # fmt: skip


def compose_millis(value: Any) -> int:
    """A compose duration (Go's ``1m30s``, ``1.5s``, ``500ms``; an int is nanoseconds) in milliseconds, rounded
    up (a wait is never made shorter). ``ValueError`` when it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int):
        nanos = Fraction(value)
    elif isinstance(value, str):
        text = value.strip()
        if text in ("0", ""):
            return 0
        position, nanos = 0, Fraction(0)
        while position < len(text):
            match = _GO_DURATION_PART.match(text, position)
            if match is None:
                raise ValueError(f"{value!r} is not a duration (such as 1m30s, 10s, 500ms)")
            nanos += Fraction(match.group(1)) * _NANOS[match.group(2)]
            position = match.end()
    else:
        raise ValueError(f"{value!r} is not a duration")
    if nanos < 0:
        raise ValueError(f"{value!r} is negative")
    return math.ceil(nanos / 1_000_000)


def our_duration(millis: int) -> str:
    """Milliseconds in the file's format, one unit only, the largest that is exact: 90000 -> ``90s``."""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if millis >= size and millis % size == 0:
            return f"{millis // size}{unit}"
    return "0s" if millis == 0 else f"{millis}ms"


_SIZE: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([bkmg])b?$", re.IGNORECASE)


def _size(value: Any) -> int | str:
    """``64M``/``1gb``/``512k`` -> ``64m``/``1g``/``512k``; bytes as an int stay an int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (such as 64m, 1g, 512k)")
    number, unit = match.groups()
    return int(number) if unit.lower() == "b" and "." not in number else f"{number}{unit.lower()}"


# --- the conversion --------------------------------------------------------------------------------------

_TOP_IGNORED_SILENTLY: Final = frozenset({"version"})  # v2/v3 files: obsolete in the compose spec
_RESTARTS: Final = ("no", "always", "unless-stopped", "on-failure")
_DEPENDENCY: Final = {
    "service_started": "started",
    "service_healthy": "healthy",
    "service_completed_successfully": "completed",
}
_SAME_STRINGS: Final = ("user", "working_dir", "hostname", "stop_signal")
_SAME_BOOLS: Final = ("init", "privileged", "read_only")
_SAME_LISTS: Final = ("cap_add", "cap_drop", "security_opt")
HEALTH_CAP_MS: Final = 24 * 3_600_000  # our health timeout's ceiling


def convert(
    compose: Mapping[str, Any], env: Mapping[str, str], folder: str, profiles: Collection[str] = ()
) -> Converted:
    """The desired file for ``compose`` (its variables from ``env``; relative paths against ``folder``, an
    absolute path; only the services of the given ``profiles`` and those with none). ``ComposeError``: every
    problem."""
    problems = _Problems()
    if not isinstance(compose, Mapping):
        raise ComposeError(["the file is not a mapping with services:"])
    data = _interpolated(compose, env, (), problems)
    for key in data:
        if key == "include":
            problems.error((key,), "not supported: bring the included services into this file")
        elif key not in ("services", "networks", "volumes", "secrets", *_TOP_IGNORED_SILENTLY):
            problems.ignored((key,))
    services = data.get("services")
    if not isinstance(services, Mapping) or not services:
        problems.error(("services",), "no services: a compose file needs at least one")
        raise ComposeError(problems.errors)
    chosen = {name: spec for name, spec in services.items() if _included(spec, profiles)}
    left_out = set(services) - set(chosen)
    context = _Context(problems, folder, env, _as_map(data.get("secrets")), set(chosen), left_out)
    apps: dict[str, Any] = {}
    for name, spec in chosen.items():
        path: Path = ("services", name)
        if not APP_NAME.match(str(name)):
            problems.error(
                path, f"the name {name!r} is not an app name: lowercase letters, digits, '-' and '_' (up to 63)"
            )
            continue
        if not isinstance(spec, Mapping):
            problems.error(path, "a service is a mapping")
            continue
        apps[name] = context.service(path, spec)
    networks = _networks(data.get("networks"), problems)
    _volumes(data.get("volumes"), problems)
    for name, secret in _as_map(data.get("secrets")).items():
        if isinstance(secret, Mapping):
            for key in secret:
                if key not in ("file", "environment", "external", "name"):
                    problems.ignored(("secrets", name, key))
    if problems.errors:
        raise ComposeError(problems.errors)
    desired: dict[str, Any] = {}
    if networks:
        desired["networks"] = networks
    desired["apps"] = apps
    return Converted(desired, tuple(problems.warnings))


def _included(spec: Any, profiles: Collection[str]) -> bool:
    if not isinstance(spec, Mapping):
        return True
    wanted = spec.get("profiles")
    if not wanted:
        return True
    return "*" in profiles or any(str(profile) in profiles for profile in wanted)


def _as_map(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _strings(value: Any, path: Path, problems: _Problems) -> list[str] | None:
    """A string or a list of scalars as a list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(_scalar(item) for item in value):
        return [_text(item) for item in value]
    problems.error(path, "expected a string or a list of strings")
    return None


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _text(value: Any) -> str:
    """A scalar as compose writes it into a string: ``true``, not ``True``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _pairs(value: Any, path: Path, problems: _Problems, separator: str = "=") -> dict[str, str | None] | None:
    """A mapping, or a list of ``KEY=VALUE`` (a bare ``KEY`` is None), as an ordered mapping."""
    if isinstance(value, Mapping):
        return {str(key): None if item is None else _text(item) for key, item in value.items()}
    if isinstance(value, list):
        out: dict[str, str | None] = {}
        for index, item in enumerate(value):
            if not isinstance(item, str):
                problems.error((*path, index), f"expected KEY{separator}VALUE")
                continue
            key, found, rest = item.partition(separator)
            out[key] = rest if found else None
        return out
    problems.error(path, f"expected a mapping or a list of KEY{separator}VALUE")
    return None


class _Context:
    """What every service's conversion shares: the problems, the folder, the declared secrets, the services."""

    def __init__(
        self,
        problems: _Problems,
        folder: str,
        env: Mapping[str, str],
        secrets: dict[str, Any],
        services: set[str],
        left_out: set[str],
    ) -> None:
        self.problems, self.folder, self.env, self.declared = problems, folder, env, secrets
        self.services, self.left_out = services, left_out

    def absolute(self, path: Path, written: str, what: str) -> str:
        """``written`` as an absolute path on the server; a relative one is made so, with a warning."""
        if written.startswith("/"):
            return posixpath.normpath(written)
        if written.startswith("~"):
            self.problems.error(path, f"{what} {written!r}: '~' is the home of whoever runs docker; write the path")
            return written
        made = posixpath.normpath(posixpath.join(self.folder, written))
        self.problems.warn(path, f"{what} {written!r} is relative: written as {made} (it must exist on the server)")
        return made

    def service(self, path: Path, spec: Mapping[str, Any]) -> dict[str, Any]:
        app: dict[str, Any] = {}
        if "image" not in spec:
            if "build" in spec:
                self.problems.error((*path, "build"), "images come from a registry; add image: with a tag")
            else:
                self.problems.error(path, "no image: add image: with a tag")
        else:
            self.image((*path, "image"), spec["image"], app)
            if "build" in spec:
                self.problems.warn((*path, "build"), "ignored: the image comes from the registry (push it there)")
        for key, value in spec.items():
            here: Path = (*path, key)
            handler = _HANDLERS.get(key)
            if key in ("image", "build", "profiles", "expose"):
                continue  # expose: on the app's networks every port is reachable
            if handler is not None:
                handler(self, here, value, app)
            else:
                self.problems.ignored(here)
        if "replicas" in app:
            refused = [key for key in app if key in CONTAINER_ONLY]
            if refused:
                self.problems.error(
                    (*path, "deploy", "replicas"),
                    f"a Swarm service (replicas:) cannot have {', '.join(refused)} yet: remove deploy.replicas to run"
                    " one container, or remove those",
                )
        return app

    def image(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        if not isinstance(value, str) or not value:
            self.problems.error(path, "expected an image reference such as registry.example.com/app:1.2")
            return
        reference, _, digest = value.partition("@")
        slash = reference.rfind("/")
        colon = reference.rfind(":")
        tag = reference[colon + 1 :] if colon > slash else ""
        repository = reference[:colon] if colon > slash else reference
        if digest:
            if tag:
                self.problems.warn(path, f"the tag {tag} is dropped: the digest pins the image")
            version = digest
        elif tag:
            version = tag
        else:
            self.problems.warn(path, f"{value} has no tag: version: latest is written; pin a tag")
            version = "latest"
        app["image"], app["version"] = repository, version

    # --- handlers, one per compose key (in the order of the compose file) ---

    def ports(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        if not isinstance(value, list):
            self.problems.error(path, "expected a list")
            return
        out = []
        for index, item in enumerate(value):
            port = self.port((*path, index), item)
            if port is not None:
                out.append(port)
        app["ports"] = out

    def port(self, path: Path, item: Any) -> str | None:
        if isinstance(item, Mapping):
            for key in item:
                if key not in ("target", "published", "host_ip", "protocol", "mode", "name", "app_protocol"):
                    self.problems.ignored((*path, key))
            target, published = item.get("target"), item.get("published")
            if target is None:
                self.problems.error(path, "target: (the container's port) is missing")
                return None
            text = str(target)
            if published not in (None, ""):
                text = f"{published}:{text}"
            if item.get("host_ip"):
                text = f"{item['host_ip']}:{text}" if published not in (None, "") else f"{item['host_ip']}::{text}"
            if item.get("protocol"):
                text += f"/{item['protocol']}"
            item = text
        if isinstance(item, bool) or not isinstance(item, str | int):
            self.problems.error(path, "expected [IP:]HOST:CONTAINER[/udp] or a mapping with target:")
            return None
        text = str(item)
        body, _, protocol = text.partition("/")
        if protocol not in ("", "tcp", "udp"):
            self.problems.error(path, f"{text}: the protocol {protocol} is not supported (tcp or udp)")
            return None
        ip = ""
        if body.startswith("["):  # [::1]:8080:80
            close = body.find("]")
            ip, body = body[: close + 1], body[close + 2 :]
        parts = body.split(":")
        if len(parts) == 3:
            ip, parts = parts[0], parts[1:]
        if "-" in body:
            self.problems.error(path, f"{text}: port ranges are not supported; list each port")
            return None
        if len(parts) > 2 or not all(part.isdigit() for part in parts if part) or not parts[-1]:
            self.problems.error(path, f"{text} is not [IP:]HOST:CONTAINER[/udp]")
            return None
        host = parts[0] if len(parts) == 2 and parts[0] else ""
        mapped = ":".join(part for part in (ip, host, parts[-1]) if part)
        return mapped + ("/udp" if protocol == "udp" else "")

    def environment(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        pairs = _pairs(value, path, self.problems)
        if pairs is None:
            return
        env: dict[str, str] = {}
        for key, item in pairs.items():
            if item is not None:
                env[key] = item
            elif key in self.env:
                env[key] = self.env[key]
            else:
                self.problems.warn((*path, key), "no value here, in --env-file or in the environment; dropped")
        app["env"] = env

    def env_file(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        files = value if isinstance(value, list) else [value]
        paths = []
        for index, item in enumerate(files):
            written = item.get("path") if isinstance(item, Mapping) else item
            if not isinstance(written, str):
                self.problems.error((*path, index) if isinstance(value, list) else path, "expected a path")
                return
            paths.append(written)
        if len(paths) > 1:
            self.problems.error(path, "several env files: reconciler reads one per app; merge them into one file")
            return
        if paths:
            app["env_file"] = self.absolute(path, paths[0], "env file")

    def volumes(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        if not isinstance(value, list):
            self.problems.error(path, "expected a list")
            return
        for index, item in enumerate(value):
            self.volume((*path, index), item, app)

    def volume(self, path: Path, item: Any, app: dict[str, Any]) -> None:
        if isinstance(item, str):
            parts = item.split(":")
            if len(parts) == 1:
                self.problems.warn(path, f"{item}: an anonymous volume is not supported; ignored (give it a name)")
                return
            source, target = parts[0], parts[1]
            options = parts[2].split(",") if len(parts) > 2 else []
            read_only = "ro" in options
            for option in options:
                if option not in ("ro", "rw"):
                    self.problems.warn(path, f"the mount option {option} is not supported; ignored")
            kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
        elif isinstance(item, Mapping):
            kind = str(item.get("type", "volume"))
            source, target = str(item.get("source", "") or ""), str(item.get("target", "") or "")
            read_only = bool(item.get("read_only", False))
            for key in item:
                if key not in ("type", "source", "target", "read_only", "tmpfs"):
                    self.problems.warn((*path, key), "not supported; ignored")
            if kind == "tmpfs":
                size = _as_map(item.get("tmpfs")).get("size")
                entry = target
                if size is not None:
                    try:
                        entry += f":size={_size(size)}"
                    except ValueError as exc:
                        self.problems.error((*path, "tmpfs", "size"), str(exc))
                app.setdefault("tmpfs", []).append(entry)
                return
            if kind not in ("bind", "volume"):
                self.problems.error(path, f"type: {kind} is not supported (bind, volume or tmpfs)")
                return
            if not source:
                self.problems.warn(path, f"{target}: an anonymous volume is not supported; ignored (give it a name)")
                return
        else:
            self.problems.error(path, "expected SOURCE:TARGET[:ro] or a mapping with type:")
            return
        if not target.startswith("/"):
            self.problems.error(path, f"the target {target!r} is not an absolute path in the container")
            return
        if kind == "bind":
            source = self.absolute(path, source, "the bind source")
        app.setdefault("volumes", []).append(f"{source}:{target}" + (":ro" if read_only else ""))

    def argv(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        if value is None:
            return
        if isinstance(value, str):
            try:
                argv = shlex.split(value)
            except ValueError as exc:
                self.problems.error(path, f"cannot be split into arguments: {exc}")
                return
        elif isinstance(value, list) and all(_scalar(item) for item in value):
            argv = [_text(item) for item in value]
        else:
            self.problems.error(path, "expected a string or a list of strings")
            return
        app[str(path[-1])] = argv

    def restart(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        text = "no" if value is False else _text(value)
        if text.startswith("on-failure:"):
            self.problems.warn(path, f"{text}: the retry count is not supported; written as on-failure")
            text = "on-failure"
        if text not in _RESTARTS:
            self.problems.error(path, f"{text!r} is not one of {', '.join(_RESTARTS)}")
            return
        app["restart"] = text

    def stop_grace_period(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        millis = self.millis(path, value)
        if millis is None:
            return
        if millis > 3_600_000:
            self.problems.error(path, f"{value} is longer than 1h, the most stop_timeout may be")
            return
        app["stop_timeout"] = our_duration(millis)

    def millis(self, path: Path, value: Any) -> int | None:
        try:
            return compose_millis(value)
        except ValueError as exc:
            self.problems.error(path, str(exc))
            return None

    def healthcheck(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        if not isinstance(value, Mapping):
            self.problems.error(path, "expected a mapping")
            return
        if value.get("disable") is True:
            return
        test = value.get("test")
        health: dict[str, Any] = {}
        if isinstance(test, str):
            health["exec"] = ["/bin/sh", "-c", test]
        elif isinstance(test, list) and test and all(_scalar(item) for item in test):
            kind, rest = _text(test[0]), [_text(item) for item in test[1:]]
            if kind == "NONE":
                return
            if kind == "CMD" and rest:
                health["exec"] = rest
            elif kind == "CMD-SHELL" and rest:
                health["exec"] = ["/bin/sh", "-c", " ".join(rest)]
            else:
                self.problems.error(
                    (*path, "test"), 'expected ["CMD", ...], ["CMD-SHELL", "..."], ["NONE"] or a string'
                )
                return
        elif test is None:
            health["docker"] = True  # the image's own HEALTHCHECK, with these timings
        else:
            self.problems.error((*path, "test"), 'expected ["CMD", ...], ["CMD-SHELL", "..."] or a string')
            return
        for key in value:
            if key not in ("test", "interval", "timeout", "retries", "start_period", "disable"):
                self.problems.ignored((*path, key))
        interval = self.millis((*path, "interval"), value.get("interval", "30s"))
        timeout = self.millis((*path, "timeout"), value.get("timeout", "30s"))
        start = self.millis((*path, "start_period"), value.get("start_period", "0s"))
        retries = value.get("retries", 3)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            self.problems.error((*path, "retries"), "expected a whole number")
            return
        if interval is None or timeout is None or start is None:
            return
        if not 0 < interval <= 3_600_000:
            self.problems.error((*path, "interval"), f"{value.get('interval')} is not between 1ms and 1h")
            return
        # Ours is the whole gate's deadline: what compose would wait before it calls the container unhealthy.
        gate = start + (interval + timeout) * max(retries, 1)
        seconds = min(math.ceil(gate / 1000) * 1000, HEALTH_CAP_MS)
        health["interval"] = our_duration(interval)
        health["timeout"] = our_duration(seconds)
        app["health"] = health

    def depends_on(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        if isinstance(value, list):
            names = [_text(item) for item in value]
            conditions: dict[str, str] | None = None
        elif isinstance(value, Mapping):
            names, conditions = [str(name) for name in value], {}
            for name, spec in value.items():
                condition = _as_map(spec).get("condition", "service_started")
                if condition not in _DEPENDENCY:
                    self.problems.error(
                        (*path, name, "condition"), f"{condition!r} is not one of {', '.join(_DEPENDENCY)}"
                    )
                    continue
                conditions[str(name)] = _DEPENDENCY[condition]
        else:
            self.problems.error(path, "expected a list or a mapping of services")
            return
        for name in names:
            if name in self.left_out:
                self.problems.error(path, f"{name} is left out by the profiles given: add its --profile")
            elif name not in self.services:
                self.problems.error(path, f"{name} is not a service of this file")
        app["depends_on"] = names if conditions is None else conditions

    def networks(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        if isinstance(value, list):
            app["networks"] = [_text(item) for item in value]
            return
        if not isinstance(value, Mapping):
            self.problems.error(path, "expected a list or a mapping of networks")
            return
        out: dict[str, dict[str, Any]] = {}
        for name, spec in value.items():
            entry: dict[str, Any] = {}
            for key, item in _as_map(spec).items():
                if key == "aliases":
                    entry["aliases"] = [_text(alias) for alias in item or []]
                else:
                    self.problems.ignored((*path, name, key))
            out[str(name)] = entry
        app["networks"] = out if any(out.values()) else list(out)

    def network_mode(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        text = _text(value)
        if text in ("host", "none"):
            app["network_mode"] = text
        elif text == "bridge":
            self.problems.warn(path, "bridge: ignored; the app is on the instance's own network")
        else:
            self.problems.error(path, f"{text}: only host or none (an app has its own network stack)")

    def secrets(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        if not isinstance(value, list):
            self.problems.error(path, "expected a list")
            return
        out = []
        for index, item in enumerate(value):
            here: Path = (*path, index)
            given = dict(item) if isinstance(item, Mapping) else {"source": item}
            name = _text(given.get("source", ""))
            declared = self.declared.get(name)
            if not isinstance(declared, Mapping):
                self.problems.error(here, f"the secret {name!r} is not declared in the top-level secrets:")
                continue
            if "file" not in declared:
                kind = next((key for key in ("environment", "external") if key in declared), "no file")
                self.problems.error(
                    ("secrets", name), f"{kind}: secrets come from a file on the server; give file: its path"
                )
                continue
            secret: dict[str, Any] = {
                "source": self.absolute(("secrets", name, "file"), _text(declared["file"]), "the secret file"),
                "target": _text(given.get("target", name)),
            }
            mode = self.mode((*here, "mode"), given.get("mode", 0o444))
            if mode is not None:
                secret["mode"] = mode
            for key in ("uid", "gid"):
                number = _text(given.get(key, "0"))
                if not number.isdigit():
                    self.problems.error((*here, key), f"{number!r} is not a number")
                    continue
                secret[key] = int(number)
            for key in given:
                if key not in ("source", "target", "mode", "uid", "gid"):
                    self.problems.ignored((*here, key))
            out.append(secret)
        app["secrets"] = out

    def mode(self, path: Path, value: Any) -> str | None:
        """A file mode as a quoted octal string: YAML's ``0400`` was read as octal already (256)."""
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
            return format(value, "04o")
        if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
            return format(int(value, 8), "04o")
        self.problems.error(path, f"{value!r} is not a file mode such as 0400")
        return None

    def deploy(self, path: Path, value: Any, app: dict[str, Any]) -> None:
        for key, item in _as_map(value).items():
            here: Path = (*path, key)
            if key == "replicas":
                app["replicas"] = item
                self.problems.warn(here, "makes a Docker Swarm service: the engine must be a Swarm manager")
            elif key == "update_config":
                update: dict[str, Any] = {}
                for name, setting in _as_map(item).items():
                    if name == "parallelism":
                        update["parallelism"] = setting
                    elif name == "delay":
                        millis = self.millis((*here, name), setting)
                        if millis is not None:
                            update["delay"] = our_duration(millis)
                    elif name == "order":
                        update["order"] = setting
                    else:
                        self.problems.ignored((*here, name))
                app["update"] = update
            elif key == "resources":
                for kind, resources in _as_map(item).items():
                    if kind != "limits":
                        self.problems.ignored((*here, kind))
                        continue
                    for name, limit in _as_map(resources).items():
                        handler = {"memory": "memory", "cpus": "cpus", "pids": "pids_limit"}.get(name)
                        if handler is None:
                            self.problems.ignored((*here, kind, name))
                        else:
                            self.option((*here, kind, name), handler, limit, app)
            elif key != "mode" or item != "replicated":
                self.problems.ignored(here)

    def option(self, path: Path, name: str, value: Any, app: dict[str, Any]) -> None:
        """The container options whose name (or meaning) is the same in ours."""
        try:
            if name in _SAME_STRINGS:
                app[name] = _text(value)
            elif name in _SAME_BOOLS:
                if not isinstance(value, bool):
                    raise ValueError("expected true or false")
                app[name] = value
            elif name in _SAME_LISTS:
                listed = _strings(value, path, self.problems)
                if listed is not None:  # docker takes capabilities in any case: ours are written in capitals
                    app[name] = [item.upper() for item in listed] if name != "security_opt" else listed
            elif name in ("memory", "shm_size"):
                app[name] = _size(value)
            elif name == "cpus":
                app[name] = float(value)
            elif name == "pids_limit":
                app[name] = int(value)
            elif name == "tmpfs":
                listed = _strings(value, path, self.problems)
                if listed is not None:
                    app.setdefault("tmpfs", []).extend(listed)
            elif name in ("labels", "sysctls"):
                pairs = _pairs(value, path, self.problems)
                if pairs is not None:
                    app[name] = {key: item or "" for key, item in pairs.items()}
            elif name == "extra_hosts":
                app[name] = self.extra_hosts(path, value)
            elif name == "ulimits":
                app[name] = self.ulimits(path, value)
            elif name == "logging":
                app[name] = self.logging(path, value)
            elif name == "devices":
                app[name] = self.devices(path, value)
        except (ValueError, TypeError, KeyError) as exc:
            self.problems.error(path, str(exc) if isinstance(exc, ValueError) else "not a value of the right kind")

    def extra_hosts(self, path: Path, value: Any) -> list[str]:
        if isinstance(value, Mapping):
            return [f"{name}:{_text(address)}" for name, address in value.items()]
        out = []
        for item in _strings(value, path, self.problems) or []:
            name, equals, address = item.partition("=")
            out.append(f"{name}:{address}" if equals else item)
        return out

    def ulimits(self, path: Path, value: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, limit in _as_map(value).items():
            if isinstance(limit, Mapping):
                out[name] = {"soft": int(limit["soft"]), "hard": int(limit["hard"])}
            else:
                out[name] = int(limit)
        return out

    def logging(self, path: Path, value: Any) -> dict[str, Any]:
        spec = _as_map(value)
        out: dict[str, Any] = {}
        if "driver" in spec:
            out["driver"] = _text(spec["driver"])
        if spec.get("options"):
            out["options"] = {str(key): _text(item) for key, item in _as_map(spec["options"]).items()}
        for key in spec:
            if key not in ("driver", "options"):
                self.problems.ignored((*path, key))
        return out

    def devices(self, path: Path, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise ValueError("expected a list")
        out = []
        for item in value:
            if isinstance(item, Mapping):
                parts = [_text(item.get("source", "")), _text(item.get("target", item.get("source", "")))]
                if item.get("permissions"):
                    parts.append(_text(item["permissions"]))
                out.append(":".join(parts))
            else:
                out.append(_text(item))
        return out


def _same(name: str) -> Callable[[_Context, Path, Any, dict[str, Any]], None]:
    return lambda context, path, value, app: context.option(path, name, value, app)


def _extends(context: _Context, path: Path, value: Any, app: dict[str, Any]) -> None:
    context.problems.error(path, "not supported: write the service out in full")


_HANDLERS: Final[dict[str, Callable[[_Context, Path, Any, dict[str, Any]], None]]] = {
    "ports": _Context.ports,
    "environment": _Context.environment,
    "env_file": _Context.env_file,
    "volumes": _Context.volumes,
    "command": _Context.argv,
    "entrypoint": _Context.argv,
    "restart": _Context.restart,
    "stop_grace_period": _Context.stop_grace_period,
    "healthcheck": _Context.healthcheck,
    "depends_on": _Context.depends_on,
    "networks": _Context.networks,
    "network_mode": _Context.network_mode,
    "secrets": _Context.secrets,
    "deploy": _Context.deploy,
    "extends": _extends,
    "mem_limit": _same("memory"),
    **{
        name: _same(name)
        for name in (
            *_SAME_STRINGS,
            *_SAME_BOOLS,
            *_SAME_LISTS,
            "shm_size",
            "cpus",
            "pids_limit",
            "tmpfs",
            "labels",
            "sysctls",
            "extra_hosts",
            "ulimits",
            "logging",
            "devices",
        )
    },
}


def _networks(value: Any, problems: _Problems) -> dict[str, Any]:
    """Top-level networks: ``internal`` kept; ``driver: bridge`` is ours; anything else warned about."""
    out: dict[str, Any] = {}
    for name, spec in _as_map(value).items():
        internal = False
        for key, item in _as_map(spec).items():
            if key == "internal":
                internal = bool(item)
            elif key == "driver" and item == "bridge":
                continue
            else:
                problems.ignored(("networks", name, key))
        if name != "default":  # ours: the instance's own network, always there
            out[str(name)] = {"internal": internal}
    return out


def _volumes(value: Any, problems: _Problems) -> None:
    """Named volumes are created on first use: a declaration's options have nowhere to go."""
    for name, spec in _as_map(value).items():
        for key in _as_map(spec):
            problems.ignored(("volumes", name, key))
