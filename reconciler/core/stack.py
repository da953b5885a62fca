"""The keys that make apps a stack: networks, start order, release commands, file secrets, and the
container options a Compose user expects (``user``, ``cap_drop``, ``memory``...). Pure records and checks.

Guarantees:
- Every record is frozen and refuses unknown keys; every value is bounded (names, paths, sizes, counts).
- ``networks:`` of an app is a list of names or a map of name -> ``{aliases: [...]}``; both read as a
  map. ``default`` is the instance's own network, always there; any other name must be declared in the
  file's top-level ``networks:``. ``depends_on:`` is a list (each ``healthy``) or a map of app ->
  ``started | healthy | completed``.
- ``problems`` finds what one app cannot say alone, each as (path into the file, message): a dependency
  on an app the file does not have, a cycle (named in full: ``web -> api -> web``), a network that is
  not declared, ``network_mode`` with ``networks:``, and a routed app with a named volume (two releases
  of it run at once while a start-first deploy overlaps them: refused unless ``route.shared_volumes``).
- ``order`` gives, for the apps of a file, each app's dependencies within it; ``waves`` sorts them so
  that an app comes after every app it depends on (independent apps in the same wave).
- A secret's ``mode`` is a quoted octal string (``"0400"``): YAML 1.2 reads an unquoted ``0400`` as the
  decimal 400, which would be a different, wrong mode.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    WithJsonSchema,
    field_validator,
)

from reconciler.core.fields import (
    MAX_PATH,
    ArgStr,
    PathStr,
    ReleaseTimeout,
    Strict,
    check_argv,
    limits,
    shown,
)

DEFAULT_NETWORK = "default"
NETWORK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DNS_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$")
_SECRET_TARGET = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
_MODE = re.compile(r"^0?[0-7]{3}$")
MAX_ID = 2**31 - 1  # the largest uid/gid Linux gives out (a 32-bit id; -1 is "no change")

Condition = Literal["started", "healthy", "completed"]


def _check_network_name(name: str) -> str:
    if not NETWORK_NAME.match(name):
        raise ValueError(f"network name {shown(name)}: lowercase letters, digits, '-' and '_', starting with one")
    return name


NetworkName = Annotated[str, AfterValidator(_check_network_name)]


def _check_dns_name(name: str) -> str:
    if not _DNS_NAME.match(name):
        raise ValueError(f"{shown(name)} is not a DNS name (letters, digits, '-', '_' and '.')")
    return name


DnsName = Annotated[str, StringConstraints(max_length=253), AfterValidator(_check_dns_name)]


class NetworkSpec(Strict):
    """One private network of the instance, beside its ``default`` one."""

    internal: bool = Field(False, description="no route out of the host: its apps reach each other only")


class Attachment(Strict):
    """How an app joins one network: under its app name, and these extra names."""

    aliases: tuple[DnsName, ...] = Field((), description="more DNS names for the app on this network")


def _names(value: list[Any] | tuple[Any, ...], written: str) -> None:
    # A list of maps or lists (`[{backend: {}}]`) cannot become the keys of a map: say what to write.
    if any(isinstance(item, Mapping | list | tuple | set) for item in value):
        raise ValueError(f"write a list of names or a map, not a list of lists or maps: {written}")
    if len(set(value)) != len(value):
        raise ValueError("a name is listed twice")


def _networks_map(value: object) -> object:
    # `networks: [default, backend]` and `networks: {backend: {aliases: [db]}, default: }` are one thing.
    if isinstance(value, list | tuple):
        _names(value, "[default, backend] or {backend: {aliases: [db]}}")
        return {name: {} for name in value}
    if isinstance(value, Mapping):
        return {name: ({} if item is None else item) for name, item in value.items()}
    return value


AppNetworks = Annotated[
    dict[NetworkName, Attachment],
    BeforeValidator(_networks_map),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                {"type": "object", "additionalProperties": {"type": ["object", "null"]}},
            ]
        }
    ),
]


def _depends_map(value: object) -> object:
    # `depends_on: [db]` is `depends_on: {db: healthy}`, as in Compose's short form.
    if isinstance(value, list | tuple):
        _names(value, "[db] or {db: healthy}")
        return {name: "healthy" for name in value}
    return value


DependsOn = Annotated[
    dict[str, Condition],
    BeforeValidator(_depends_map),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
                {
                    "type": "object",
                    "additionalProperties": {"enum": ["started", "healthy", "completed"]},
                },
            ]
        }
    ),
]


class ReleaseSpec(Strict):
    """A command run once per new release, in a throwaway container of the new image (a migration)."""

    command: tuple[ArgStr, ...] = Field(description="argv, run with the app's env, secrets, volumes and networks")
    timeout: ReleaseTimeout = Field(
        "10m", validate_default=True, description=f"killed past this: the deploy failed; {limits('release')}"
    )

    @field_validator("command")
    @classmethod
    def _command(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("command needs at least the program to run")
        checked = check_argv(value)
        assert checked is not None
        return checked


_SOPS_KEY = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")


class SopsRef(Strict):
    """A SOPS-encrypted file of the repository, read at the same commit as the file and decrypted on the
    server; ``key`` picks one value of it by its path in the tree (``db.password``)."""

    sops: str = Field(max_length=MAX_PATH, description="path of the SOPS file inside the repository")
    key: str | None = Field(None, max_length=MAX_PATH, description="one value by its path: db.password")

    @field_validator("sops")
    @classmethod
    def _path(cls, value: str) -> str:
        parts = value.split("/")
        if not value or value.startswith("/") or ".." in parts or "\0" in value:
            raise ValueError(f"{shown(value)}: a path inside the repository (relative, without '..')")
        return "/".join(part for part in parts if part not in ("", "."))

    @field_validator("key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not _SOPS_KEY.match(value):
            raise ValueError(f"{shown(value)} is not a path in the file's tree (db.password)")
        return value

    @property
    def shown(self) -> str:
        return f"sops:{self.sops}" + (f"#{self.key}" if self.key else "")


SOURCE_TAGS = ("<path>", "<sops>")  # pydantic puts the union's tag in an error's loc: it is no key of the file


def _source_kind(value: Any) -> str:
    return SOURCE_TAGS[1] if isinstance(value, (Mapping, SopsRef)) else SOURCE_TAGS[0]


# A host path, or a SOPS file of the repository: told apart by their shape, so that each has its own message.
PathOrSops = Annotated[
    Annotated[PathStr, Tag(SOURCE_TAGS[0])] | Annotated[SopsRef, Tag(SOURCE_TAGS[1])], Discriminator(_source_kind)
]


class SecretSpec(Strict):
    """A file mounted read-only at ``/run/secrets/TARGET`` with this owner and mode: a file on the server, or
    a SOPS file of the repository (whole, or one value of it)."""

    source: PathOrSops = Field(description="absolute path of the file on the server, or {sops: PATH, key}")
    target: str = Field(description="its name under /run/secrets/")
    mode: str = Field("0400", description='octal, quoted ("0400"): who may read it in the container')
    uid: int = Field(0, ge=0, le=MAX_ID, description="its owner in the container")
    gid: int = Field(0, ge=0, le=MAX_ID, description="its group in the container")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | SopsRef) -> str | SopsRef:
        if isinstance(value, str) and not value.startswith("/"):
            raise ValueError("source must be an absolute path on the server")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if not _SECRET_TARGET.match(value) or value in (".", ".."):
            raise ValueError(f"{shown(value)} is not a file name (letters, digits, '.', '-' and '_'; no '/')")
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(f'write the mode quoted ("0{value}"): YAML reads an unquoted 0{value} as {value}')
        if not isinstance(value, str) or not _MODE.match(value):
            raise ValueError(f'{shown(str(value))} is not an octal mode such as "0400" or "0440"')
        return value.rjust(4, "0")

    @property
    def permissions(self) -> int:
        return int(self.mode, 8)


ULIMIT_NAMES = frozenset(
    [
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    ]
)
MAX_ULIMIT = 2**63 - 1


class Ulimit(Strict):
    soft: int = Field(ge=-1, le=MAX_ULIMIT)
    hard: int = Field(ge=-1, le=MAX_ULIMIT)


def _ulimits(value: object) -> object:
    if isinstance(value, Mapping):
        return {
            name: {"soft": item, "hard": item} if isinstance(item, int) and not isinstance(item, bool) else item
            for name, item in value.items()
        }
    return value


def _check_ulimits(value: dict[str, Ulimit]) -> dict[str, Ulimit]:
    for name, limit in value.items():
        if name not in ULIMIT_NAMES:
            raise ValueError(f"{shown(name)} is not a ulimit: {', '.join(sorted(ULIMIT_NAMES))}")
        if limit.hard != -1 and (limit.soft == -1 or limit.soft > limit.hard):
            raise ValueError(f"{name}: soft {limit.soft} is above hard {limit.hard}")
    return value


Ulimits = Annotated[
    dict[str, Ulimit],
    BeforeValidator(_ulimits),
    AfterValidator(_check_ulimits),
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": {
                "oneOf": [
                    {"type": "integer"},
                    {
                        "type": "object",
                        "properties": {"soft": {"type": "integer"}, "hard": {"type": "integer"}},
                        "required": ["soft", "hard"],
                        "additionalProperties": False,
                    },
                ]
            },
        }
    ),
]

_DRIVER = re.compile(r"^[a-z0-9][a-z0-9_.:/-]{0,127}$")


class LoggingSpec(Strict):
    """Where the engine sends the container's output (docker's log drivers)."""

    driver: str = Field("json-file", description="json-file, local, journald, syslog, none, ...")
    options: dict[str, str] = Field(default_factory=dict, description="the driver's options (max-size: 10m, ...)")

    @field_validator("driver")
    @classmethod
    def _driver(cls, value: str) -> str:
        if not _DRIVER.match(value):
            raise ValueError(f"{shown(value)} is not a log driver name")
        return value

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: object) -> object:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(item, Mapping | list | tuple | set) or item is None:
                    raise ValueError(f"option {shown(str(key))}: a driver's option is one value (max-size: 10m)")
            return {key: str(item).lower() if isinstance(item, bool) else str(item) for key, item in value.items()}
        return value


_SIGNAL = re.compile(r"^(SIG)?[A-Z0-9+-]{2,12}$|^[0-9]{1,2}$")
_CAPABILITY = re.compile(r"^(CAP_)?[A-Z_]{2,32}$")
_EXTRA_HOST = re.compile(r"^[A-Za-z0-9_.-]{1,253}[:=]([0-9a-fA-F.:\[\]]{2,45}|host-gateway)$")
_TMPFS = re.compile(r"^(?P<path>/[^:]*)(:(?P<options>[A-Za-z0-9=,._-]*))?$")
_DEVICE = re.compile(r"^(?P<host>/[^:]+)(:(?P<container>/[^:]+))?(:(?P<perms>[rwm]{1,3}))?$")
_USER = re.compile(r"^[A-Za-z0-9_.-]{1,64}(:[A-Za-z0-9_.-]{1,64})?$")
_SYSCTL = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$")
_SECURITY_OPT = re.compile(r"^[a-z-]+([=:].{0,4095})?$")


def _pattern(regex: re.Pattern[str], what: str, length: int = MAX_PATH) -> Any:
    def check(value: str) -> str:
        if len(value) > length or not regex.match(value):
            raise ValueError(f"{shown(value)} is not {what}")
        return value

    return AfterValidator(check)


SignalStr = Annotated[str, _pattern(_SIGNAL, "a signal (SIGINT, SIGTERM, 15)")]
Capability = Annotated[str, _pattern(_CAPABILITY, "a capability (NET_BIND_SERVICE, ALL)")]
ExtraHost = Annotated[str, _pattern(_EXTRA_HOST, "NAME:IP (or NAME:host-gateway)")]
TmpfsStr = Annotated[str, _pattern(_TMPFS, "/PATH[:OPTIONS] (/run:size=64m,mode=1777)")]
DeviceStr = Annotated[str, _pattern(_DEVICE, "/dev/HOST[:/dev/CONTAINER][:rwm]")]
UserStr = Annotated[str, _pattern(_USER, "USER[:GROUP] (a name or a number)")]
SecurityOpt = Annotated[str, _pattern(_SECURITY_OPT, "a security option (no-new-privileges, seccomp=...)")]


def _sysctls(value: object) -> object:
    if isinstance(value, Mapping):
        return {key: str(item).lower() if isinstance(item, bool) else str(item) for key, item in value.items()}
    return value


def _check_sysctls(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        if not _SYSCTL.match(key):
            raise ValueError(f"{shown(key)} is not a kernel parameter (net.core.somaxconn)")
    return value


Sysctls = Annotated[dict[str, str], BeforeValidator(_sysctls), AfterValidator(_check_sysctls)]


def tmpfs_mounts(entries: Iterable[str]) -> dict[str, str]:
    """``/path[:options]`` entries as docker's ``Tmpfs`` map: path -> options."""
    found: dict[str, str] = {}
    for entry in entries:
        match = _TMPFS.match(entry)
        if match:
            found[match.group("path")] = match.group("options") or ""
    return found


def device_mapping(entry: str) -> tuple[str, str, str]:
    """``/dev/x[:/dev/y][:rwm]`` -> (host path, container path, permissions)."""
    match = _DEVICE.match(entry)
    if match is None:
        raise ValueError(f"{shown(entry)} is not a device")
    host = match.group("host")
    return host, match.group("container") or host, match.group("perms") or "rwm"


Path = tuple[str | int, ...]


def _named_volume(volume: str) -> bool:
    return not volume.split(":", 1)[0].startswith("/")


def problems(apps: Mapping[str, Any], networks: Mapping[str, NetworkSpec] | None) -> list[tuple[Path, str]]:
    """What the apps of a file ask of each other that cannot be: (path into the file, message) each."""
    found: list[tuple[Path, str]] = []
    declared = set(networks or {}) | {DEFAULT_NETWORK}
    if networks and DEFAULT_NETWORK in networks:
        found.append((("networks", DEFAULT_NETWORK), "default is the instance's own network: it is not declared"))
    for app, spec in sorted(apps.items()):
        for name in sorted(spec.depends_on):
            if name == app:
                found.append((("apps", app, "depends_on", name), f"{app} cannot depend on itself"))
            elif name not in apps:
                close = [other for other in sorted(apps) if other != app]
                hint = f" (apps: {', '.join(close)})" if close else ""
                found.append((("apps", app, "depends_on", name), f"{shown(name)} is not an app of this file{hint}"))
        for name in sorted(spec.networks):
            if name not in declared:
                close = difflib.get_close_matches(name, sorted(declared), n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else f" (declared: {', '.join(sorted(declared))})"
                found.append(
                    (("apps", app, "networks", name), f"network {shown(name)} is not declared in networks:{hint}")
                )
        if spec.network_mode is not None and "networks" in spec.model_fields_set:
            found.append((("apps", app, "network_mode"), "network_mode: and networks: exclude each other"))
        if spec.network_mode is not None and spec.route is not None:
            found.append((("apps", app, "network_mode"), "a routed app is on the instance's network: no network_mode"))
        if spec.network_mode is not None and spec.ports:
            found.append(
                (("apps", app, "ports"), f"network_mode {spec.network_mode}: the app publishes no ports (drop them)")
            )
        if spec.route is not None and spec.network_mode is None and DEFAULT_NETWORK not in spec.networks:
            found.append(
                (("apps", app, "networks"), "a routed app is reached by the proxy on the default network: list default")
            )
        if spec.route is not None:
            for name, attachment in sorted(spec.networks.items()):
                if attachment.aliases:
                    found.append(
                        (
                            ("apps", app, "networks", name, "aliases"),
                            "a routed app's releases overlap while it deploys, and an alias would name both: it is"
                            f" reached by its name, {app}, which only the serving release holds",
                        )
                    )
        if spec.route is not None and not spec.route.shared_volumes:
            named = [volume for volume in spec.volumes if _named_volume(volume)]
            if named:
                found.append(
                    (
                        ("apps", app, "route"),
                        f"a routed app is deployed start-first, two releases at once, and {named[0].split(':')[0]}"
                        " is a named volume: two releases of a database on one volume corrupt it; serve it without"
                        " a route, or say route.shared_volumes: true if the app allows it",
                    )
                )
    for app, spec in sorted(apps.items()):
        for name, condition in sorted(spec.depends_on.items()):
            other = apps.get(name)
            if condition == "completed" and other is not None and not other.completes:
                found.append(
                    (
                        ("apps", app, "depends_on", name),
                        f"{name} runs until it is stopped (restart: {other.restart}): completed waits for a job that"
                        ' exits, with restart: "no" and no health probe',
                    )
                )
    for cycle in _cycles({app: tuple(sorted(spec.depends_on)) for app, spec in apps.items()}):
        found.append((("apps", cycle[0], "depends_on"), f"depends_on makes a cycle: {' -> '.join(cycle)}"))
    return found


def _cycles(edges: Mapping[str, tuple[str, ...]]) -> list[list[str]]:
    """Each cycle of ``edges`` once, from its smallest app, in the order it is walked."""
    found: list[list[str]] = []
    seen_cycles: set[frozenset[str]] = set()
    state: dict[str, int] = {}  # 1: on the walk, 2: done

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        trail.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in edges or nxt == node:  # unknown, or itself: each said once, by ``problems``
                continue
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt) :]
                if frozenset(cycle) not in seen_cycles:
                    seen_cycles.add(frozenset(cycle))
                    start = cycle.index(min(cycle))
                    ordered = cycle[start:] + cycle[:start]
                    found.append([*ordered, ordered[0]])
            elif nxt not in state:
                walk(nxt, trail)
        trail.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node, [])
    return found


def docker_network(instance: str, name: str) -> str:
    """The Docker network of an instance's network ``name``: ``reconciler`` (or ``reconciler-INSTANCE``) for its
    default one, which the proxy reaches routed apps on too, ``reconciler_backend`` for ``backend``."""
    base = "reconciler" if instance == "default" else f"reconciler-{instance}"
    return base if name == DEFAULT_NETWORK else f"{base}_{name}"


def wanted_networks(
    apps: Mapping[str, Any], declared: Mapping[str, NetworkSpec] | None, instance: str
) -> dict[str, tuple[str, bool]]:
    """The Docker networks the apps of a pass join: Docker name -> (name in the file, internal)."""
    found: dict[str, tuple[str, bool]] = {}
    for spec in apps.values():
        if spec.network_mode is not None or spec.service:
            continue
        for name in spec.networks:
            internal = bool(declared and name in declared and declared[name].internal)
            found[docker_network(instance, name)] = (name, internal)
    return found


def order(apps: Mapping[str, Any]) -> dict[str, dict[str, Condition]]:
    """Each app's dependencies among ``apps`` (a placed fleet file may hold only some of them)."""
    return {app: {name: cond for name, cond in spec.depends_on.items() if name in apps} for app, spec in apps.items()}


def waves(dependencies: Mapping[str, Mapping[str, Condition]]) -> list[list[str]]:
    """The apps in start order: each wave after every wave it depends on; a cycle (refused by validation)
    ends in one last wave rather than never."""
    left = {app: set(deps) & set(dependencies) for app, deps in dependencies.items()}
    found: list[list[str]] = []
    while left:
        ready = sorted(app for app, deps in left.items() if not deps)
        if not ready:
            found.append(sorted(left))
            break
        found.append(ready)
        for app in ready:
            del left[app]
        for deps in left.values():
            deps.difference_update(ready)
    return found
