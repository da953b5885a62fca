"""Frozen records of what should run (desired) and what runs (observed).

Guarantees: every record is immutable and validated on construction; a ``DesiredState`` that exists
satisfies the version-1 file format (strict: unknown keys are rejected). ``schemas/`` is generated from
``DesiredFile`` so editors and CI validate against exactly these rules. Durations are seconds (float)
once parsed; in the file they are ``500ms``, ``30s``, ``10m``, ``1h``. Every number is bounded and finite:
each duration has a ceiling (``DURATION_LIMITS``), ports are 1-65535 and IPv4 octets 0-255. Strings
that reach a pattern are bounded in length first (``MAX_*``), and a message quotes at most
``QUOTED_CUT`` characters of a value, with its length (``shown``). No message
of a validator shows an env value; env values and argv hold no NUL (env values: no control character
but tab), which Docker and execve could not pass on. A canary's version (``canary.version``) is a tag or
a digest, never ``stable``: it is the candidate that becomes stable. A preview's host and version
(``previews:``) hold only the ``{number}`` and ``{head_sha}`` placeholders, and are a host name and a tag
once filled with the longest values they take.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import re
import urllib.parse
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from reconciler.core.fields import (
    DURATION_PATTERN,
    MAX_ENV_KEY,
    MAX_IMAGE,
    MAX_PATH,
    MAX_PORT_MAPPING,
    ArgStr,
    Delay,
    Drain,
    EnvValue,
    HealthyFor,
    HostPortStr,
    Interval,
    KeepWarm,
    Labels,
    PathStr,
    Pause,
    Size,
    StableAfter,
    StopTimeout,
    Strict,
    Timeout,
    UrlStr,
    check_argv,
    limits,
    parse_duration,
    shown,
)
from reconciler.core.sealed import Sealed
from reconciler.core.stack import (
    DEFAULT_NETWORK,
    AppNetworks,
    Attachment,
    Capability,
    DependsOn,
    DeviceStr,
    DnsName,
    ExtraHost,
    LoggingSpec,
    NetworkName,
    NetworkSpec,
    PathOrSops,
    ReleaseSpec,
    SecretSpec,
    SecurityOpt,
    SignalStr,
    SopsRef,
    Sysctls,
    TmpfsStr,
    Ulimits,
    UserStr,
)

_CONTAINER_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,254}$")
SECRETS_DIR = "/run/secrets"  # where an app's secrets: are, as Docker and Compose put them
# What a Swarm service (replicas:) does not take (yet): the options of one container on this engine.
CONTAINER_ONLY = frozenset(
    [
        "networks",
        "secrets",
        "user",
        "entrypoint",
        "working_dir",
        "hostname",
        "extra_hosts",
        "labels",
        "stop_signal",
        "cap_add",
        "cap_drop",
        "read_only",
        "tmpfs",
        "sysctls",
        "ulimits",
        "shm_size",
        "memory",
        "cpus",
        "pids_limit",
        "logging",
        "network_mode",
        "devices",
        "privileged",
        "security_opt",
    ]
)

APP_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")  # in the file's env: and in an env_file alike
_IMAGE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$")
_IMAGE_HOST = re.compile(r"^[a-zA-Z0-9.-]+(:[0-9]+)?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_PORT = re.compile(
    r"^(?:(?P<ip>[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9a-fA-F:]+\]):)?(?:(?P<host>[0-9]{1,5}):)?"
    r"(?P<container>[0-9]{1,5})(?:/(?P<proto>tcp|udp))?$"
)
_VOLUME = re.compile(r"^(?P<source>[^:]+):(?P<target>/[^:]*)(?::(?P<mode>ro|rw))?$")
_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
STABLE = "stable"
ON_CONTAINER = "the-container.invalid"  # in a probe URL: the gated container's own address (never resolves)
DEFAULT_STOP_TIMEOUT = 10.0  # seconds: docker's own, and AppSpec's; for a container that records none


def _check_port(port: str) -> str:
    match = _PORT.match(port)
    if not match:
        raise ValueError(f"{shown(port)} is not [IP:]HOST:CONTAINER[/udp]")
    for part in ("host", "container"):
        number = match.group(part)
        if number is not None and not 0 < int(number) < 65536:
            raise ValueError(f"port {number} is out of range 1-65535")
    ip = match.group("ip")
    if ip is not None:
        try:
            ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            raise ValueError(f"{shown(ip)} is not an IP address (IPv4 parts are 0-255)") from None
    return port


# Tab and newline are text (a PEM key written with `|` has newlines); the others corrupt what they reach.


def _check_volume(volume: str) -> str:
    match = _VOLUME.match(volume)
    if not match:
        raise ValueError(f"{shown(volume)} is not SOURCE:/CONTAINER/PATH[:ro|rw]")
    source = match.group("source")
    if not source.startswith("/") and not _VOLUME_NAME.match(source):
        raise ValueError(f"{shown(source)} is neither a volume name nor an absolute path")
    return volume


def _check_app_name(name: str) -> str:
    if not APP_NAME.match(name):
        raise ValueError(
            f"app name {shown(name)}: lowercase letters, digits, '-' and '_', starting with a letter or digit"
        )
    return name


PortStr = Annotated[str, StringConstraints(max_length=MAX_PORT_MAPPING), AfterValidator(_check_port)]
VolumeStr = Annotated[str, StringConstraints(max_length=2 * MAX_PATH + 4), AfterValidator(_check_volume)]
AppName = Annotated[str, AfterValidator(_check_app_name)]


class HealthSpec(Strict):
    """How a deploy proves itself. At most one probe; none means "running, no restart, for healthy_for"."""

    http: UrlStr | None = Field(
        None,
        description="URL that must answer 2xx or 3xx, from the server; with route:, a bare /path is asked of"
        " the new container itself, on route.port",
    )
    tcp: HostPortStr | None = Field(None, description="HOST:PORT that must accept a connection")
    exec: tuple[ArgStr, ...] | None = Field(None, description="argv run in the container; exit 0 is healthy")
    docker: bool = Field(False, description="use the image's own Docker HEALTHCHECK")
    interval: Interval = Field("1s", validate_default=True, description=f"time between probes; {limits('interval')}")
    timeout: Timeout = Field(
        "30s", validate_default=True, description=f"not healthy by then: the deploy failed; {limits('timeout')}"
    )
    healthy_for: HealthyFor = Field(
        "5s",
        validate_default=True,
        description=f"must stay healthy this long to count as good; {limits('healthy_for')}",
    )

    @field_validator("http")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("/"):
            if any(char.isspace() for char in value):
                raise ValueError(f"{shown(value)} is not a URL path")
            return value  # asked of the container itself: AppSpec checks that the app has a route
        if value is not None:
            parts = urllib.parse.urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{shown(value)} is not an http(s) URL")
            try:
                parts.port  # noqa: B018 - raises on a port that is not a number in range
            except ValueError:
                raise ValueError(f"{shown(value)}: the port is not a number from 1 to 65535") from None
        return value

    @field_validator("tcp")
    @classmethod
    def _tcp(cls, value: str | None) -> str | None:
        if value is not None:
            match = re.match(r"^[^\s:]+:([0-9]{1,5})$", value)
            if not match:
                raise ValueError(f"{shown(value)} is not HOST:PORT")
            if not 0 < int(match.group(1)) < 65536:
                raise ValueError(f"port {match.group(1)} is out of range 1-65535")
        return value

    @field_validator("exec")
    @classmethod
    def _exec(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("exec needs at least the program to run")
        return check_argv(value)

    @model_validator(mode="after")
    def _one_probe(self) -> HealthSpec:
        probes = [name for name in ("http", "tcp", "exec") if getattr(self, name) is not None]
        if self.docker:
            probes.append("docker")
        if len(probes) > 1:
            raise ValueError(f"choose one probe, not {' and '.join(probes)}")
        return self

    def one_answer(self) -> HealthSpec:
        """The gate of a warm release switched back to: it served and stayed up, so one good answer is
        its fresh gate (no ``healthy_for`` again)."""
        return self.model_copy(update={"healthy_for": 0.0})

    @property
    def on_container(self) -> bool:
        """The http probe is a bare path, asked of the new container itself (routed apps)."""
        return self.http is not None and self.http.startswith("/")

    @property
    def probe(self) -> str | None:
        """``http``, ``tcp``, ``exec``, ``docker``, or None for the running-only gate."""
        for name in ("http", "tcp", "exec"):
            if getattr(self, name) is not None:
                return name
        return "docker" if self.docker else None


DEFAULT_HEALTH = HealthSpec()


def check_image(value: str) -> str:
    if "@" in value:
        raise ValueError("image is the repository only; put the digest in version: sha256:...")
    last = value.rsplit("/", 1)[-1]
    if ":" in last:
        raise ValueError(f"image is the repository only; put the tag in version: {last.split(':', 1)[1]}")
    host, _, rest = value.partition("/")
    ok = bool(_IMAGE.match(value)) or (bool(rest) and bool(_IMAGE_HOST.match(host)) and bool(_IMAGE.match(rest)))
    if not ok:
        raise ValueError(f"{shown(value)} is not an image repository")
    return value


def check_version(value: str) -> str:
    if value.startswith("sha256:"):
        if not _DIGEST.match(value):
            raise ValueError("a digest is sha256: followed by 64 hex characters")
    elif not _TAG.match(value):
        raise ValueError(f"{shown(value)} is not a tag, a sha256: digest or stable")
    return value


HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class HostSpec(Strict):
    """One host of a fleet: how to reach its engine from a workstation or CI, and labels that apps select."""

    engine: UrlStr | None = Field(
        None, description="its Docker engine as seen from elsewhere: ssh://deploy@web-1, tcp://..., unix://..."
    )
    labels: Labels = Field(default_factory=dict, description="name -> value, selected by an app's on:")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not _LABEL.match(key):
                raise ValueError(f"{shown(key)} is not a label name (letters, digits, _ . -)")
            if not isinstance(label, str) or not _LABEL.match(label):
                raise ValueError(f"label {key}: {shown(str(label))} is not a label value (letters, digits, _ . -)")
        return value


ImageStr = Annotated[str, StringConstraints(max_length=MAX_IMAGE), AfterValidator(check_image)]
VersionStr = Annotated[str, AfterValidator(check_version)]  # its patterns bound it (128, 71 characters)


_HOSTNAME = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LISTEN = re.compile(r"^(?P<ip>[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9a-fA-F:]+\]):(?P<port>[0-9]{1,5})$")
_PATH_PREFIX = re.compile(r"^/[A-Za-z0-9._~%!$&()*+,;=:@/-]*$")  # RFC 3986 path characters; nothing HAProxy reads
TLS_PORT = 443  # the listen port that serves TLS when proxy.tls names no other


class RouteSpec(Strict):
    """How the proxy sends traffic to an app: by Host header and path prefix, to one container port."""

    hosts: tuple[str, ...] = Field((), description="Host header names (lowercase; *.example.com); none: every host")
    path_prefix: UrlStr = Field(
        "/", description="/api serves /api and what lies under /api/ (never /apiary); /api/ only what lies under it"
    )
    port: int = Field(ge=1, le=65535, description="the port the container listens on")
    drain: Drain = Field(
        "10s", validate_default=True, description=f"in-flight requests of the old release finish; {limits('drain')}"
    )
    keep_warm: KeepWarm | None = Field(
        None,
        description="the previous release stays running, out of rotation, this long (a rollback is then a"
        f" switch); default: the app's stable_after; 0s stops it after drain; {limits('keep_warm')}",
    )
    shared_volumes: bool = Field(
        False,
        description="two releases may share the app's named volumes while a deploy overlaps them (never for a"
        " database); without it a routed app has no named volume",
    )

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if not _HOSTNAME.match(host) or len(host) > 253:
                raise ValueError(
                    f"{shown(host)} is not a host name (lowercase, e.g. shop.example.com or *.example.com)"
                )
        if len(set(value)) != len(value):
            raise ValueError("a host is listed twice")
        return value

    @field_validator("path_prefix")
    @classmethod
    def _path_prefix(cls, value: str) -> str:
        if not _PATH_PREFIX.match(value):
            raise ValueError(
                f"{shown(value)} is not a path prefix: it starts with / and holds letters, digits and"
                " / . _ ~ % - ! $ & ( ) * + , ; = : @ only (percent-encode the rest)"
            )
        return value


LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_HSTS_DAYS = re.compile(r"^([0-9]+)d$")
HSTS_MAX = 2 * 365 * 86400  # two years: what browsers' preload lists ask for, and more is a typo


def _hsts(value: object) -> float:
    """``180d`` (days, as HSTS is spoken of) or any duration, at most two years."""
    days = _HSTS_DAYS.match(value) if isinstance(value, str) else None
    seconds = int(days.group(1)) * 86400.0 if days else parse_duration(value)
    if seconds > HSTS_MAX:
        raise ValueError(f"{shown(str(value))} is longer than 730d, the most an HSTS max-age may be")
    return seconds


HstsAge = Annotated[
    float,
    BeforeValidator(_hsts),
    WithJsonSchema({"type": "string", "pattern": f"^[0-9]+d$|{DURATION_PATTERN}", "examples": ["180d", "1h"]}),
]


class AcmeSpec(Strict):
    """Certificates ordered from an ACME server (Let's Encrypt, its staging, step-ca, ...) for every exact host
    of every route, answered over HTTP-01 by the proxy itself, renewed before they expire."""

    email: Annotated[str, StringConstraints(max_length=254)] = Field(
        description="the ACME account's contact (the CA mails expiry warnings there)"
    )
    directory: UrlStr = Field(LETS_ENCRYPT, description="the ACME directory URL (default: Let's Encrypt production)")
    ca_file: PathStr | None = Field(
        None, description="a PEM bundle on the server that the ACME server's own TLS is verified against"
    )

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not _EMAIL.match(value):
            raise ValueError(f"{shown(value)} is not an email address")
        return value

    @field_validator("directory")
    @classmethod
    def _directory(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(f"{shown(value)} is not an https:// URL (an ACME directory is served over TLS)")
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("ca_file must be an absolute path on the server")
        return value


class TlsSpec(Strict):
    """Certificates the proxy serves by SNI on the listen addresses of ``ports``: PEM files of a folder
    (``certs``), certificates ordered by ACME (``acme``), or both (a PEM of ``certs`` wins for its names)."""

    certs: PathStr | None = Field(
        None, description="folder on the server with one PEM file (certificate + key) per name"
    )
    ports: tuple[int, ...] = Field((TLS_PORT,), description="listen ports that serve TLS (the others plain HTTP)")
    acme: AcmeSpec | None = None
    redirect: bool = Field(False, description="plain HTTP answers 308 to https:// (the ACME challenge path excepted)")
    hsts: HstsAge | None = Field(None, description="Strict-Transport-Security max-age on HTTPS answers (180d, 1h)")

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("name at least one port, or leave ports out for 443")
        for port in value:
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is out of range 1-65535")
        return value

    @field_validator("certs")
    @classmethod
    def _certs(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("certs must be an absolute path on the server")
        return value

    @model_validator(mode="after")
    def _some_certificate(self) -> TlsSpec:
        if self.certs is None and self.acme is None:
            raise ValueError("name where certificates come from: certs: (a folder of PEM files), acme:, or both")
        return self


def _check_listen(value: str) -> str:
    match = _LISTEN.match(value)
    if not match:
        raise ValueError(f"{shown(value)} is not IP:PORT (0.0.0.0:80, 127.0.0.1:8080, [::]:443)")
    if not 0 < int(match.group("port")) < 65536:
        raise ValueError(f"port {match.group('port')} is out of range 1-65535")
    try:
        ipaddress.ip_address(match.group("ip").strip("[]"))
    except ValueError:
        raise ValueError(f"{shown(match.group('ip'))} is not an IP address") from None
    return value


ListenStr = Annotated[str, AfterValidator(_check_listen)]


class ProxySpec(Strict):
    """The host's HTTP entry point: an HAProxy container that reconcile runs and drives."""

    listen: tuple[ListenStr, ...] = Field(
        ("0.0.0.0:80",), description="IP:PORT the proxy binds on the host; tls.ports serve TLS"
    )
    image: ImageStr = Field("haproxy", description="the proxy's image repository (the official haproxy, or a mirror)")
    version: VersionStr = Field("2.8", description="its tag or sha256: digest, pinned like an app's")
    tls: TlsSpec | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one address, or leave listen out for 0.0.0.0:80")
        if len(set(value)) != len(value):
            raise ValueError("an address is listed twice")
        return value

    @model_validator(mode="after")
    def _plain_for_acme(self) -> ProxySpec:
        listens = self.listens()
        if self.tls is not None and (self.tls.acme is not None or self.tls.redirect) and all(t for _, _, t in listens):
            raise ValueError(
                "tls.acme and tls.redirect need a plain HTTP listen address (port 80: ACME's HTTP-01 asks there)"
            )
        return self

    @property
    def ref(self) -> str:
        separator = "@" if self.version.startswith("sha256:") else ":"
        return f"{self.image}{separator}{self.version}"

    def listens(self) -> tuple[tuple[str, int, bool], ...]:
        """Each listen address as (ip, port, serves TLS)."""
        found = []
        for item in self.listen:
            ip, _, port = item.rpartition(":")
            found.append((ip.strip("[]"), int(port), self.tls is not None and int(port) in self.tls.ports))
        return tuple(found)


class CanarySpec(Strict):
    """The hosts of an app that run a candidate release in place of the app's ``version``; healthy for
    ``stable_after`` there, it is promoted (and, with ``--publish-stable``, pushed as ``IMAGE:stable``)."""

    on: Labels | tuple[str, ...] = Field(
        description="the app's hosts that run the candidate: {label: value, ...} (all must match) or [host, ...]"
    )
    version: VersionStr = Field(description="the candidate: a tag or sha256:<digest> (not stable)")

    @field_validator("version")
    @classmethod
    def _not_stable(cls, value: str) -> str:
        if value == STABLE:
            raise ValueError("the canary runs a candidate, not stable: give its tag or sha256: digest")
        return value


class UpdateSpec(Strict):
    """How Swarm rolls a new spec over a service's tasks (its ``update_config``)."""

    parallelism: int = Field(1, ge=0, le=1000, description="tasks updated at once; 0: all at once")
    delay: Delay = Field("0s", validate_default=True, description=f"between batches; {limits('delay')}")
    order: Literal["stop-first", "start-first"] = Field(
        "stop-first", description="start-first: a task's replacement starts before it stops (needs room for both)"
    )


class OnNoTraffic(StrEnum):
    """What a rollout step with too few requests to judge (``inconclusive``) does: said, never silent."""

    FAIL = "fail"  # aborted, as a failed step is
    ADVANCE = "advance"  # taken as passed: on to the next step
    HOLD = "hold"  # the step is judged again after another pause


class RolloutStep(Strict):
    """One step of a weighted rollout: the share of requests the new release gets, and for how long."""

    weight: int = Field(ge=1, le=99, description="percent of the route's requests sent to the new release")
    pause: Pause = Field(description=f"how long the step lasts before its traffic is judged; {limits('pause')}")


class AnalysisSpec(Strict):
    """How a rollout step is judged at its end, from the proxy's counters of the new and the serving release."""

    max_5xx_ratio: float = Field(
        0.01, ge=0, le=1, description="the new release fails when more of its answers are 5xx (and more than the old's)"
    )
    max_avg_ms: int | None = Field(
        None, ge=1, le=600_000, description="it fails when its average response time is higher (and the old's lower)"
    )
    min_requests: int = Field(100, ge=1, le=10_000_000, description="fewer answers of the new release: inconclusive")
    on_no_traffic: OnNoTraffic = Field(
        OnNoTraffic.FAIL,
        description="an inconclusive step: fail (abort), advance, or hold (judged again later)",
    )


class RolloutSpec(Strict):
    """A routed app's weighted rollout: a new release that passed its gate takes a growing share of requests,
    judged by the proxy at the end of each step, before it serves alone."""

    # At least one step: said by ``_growing``, after the steps themselves (pydantic's min_length would add a
    # second, wrong error beside a step that is itself invalid).
    steps: tuple[RolloutStep, ...] = Field(
        max_length=20, description="[{weight: 5, pause: 2m}, ...]", json_schema_extra={"minItems": 1}
    )
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec, description="how each step is judged")
    sticky: bool = Field(False, description="a client stays on the release it first got (a cookie), for sessions")

    @field_validator("steps")
    @classmethod
    def _growing(cls, value: tuple[RolloutStep, ...]) -> tuple[RolloutStep, ...]:
        if not value:
            raise ValueError("a rollout needs at least one step: [{weight: 5, pause: 2m}, ...]")
        for before, after in itertools.pairwise(value):
            if after.weight <= before.weight:
                raise ValueError(f"weights grow step by step: {after.weight} after {before.weight}")
        return value


class AppSpec(Strict):
    """One app: one container named after the app, or with ``replicas:`` one Swarm service."""

    image: ImageStr = Field(description="repository, no tag, e.g. registry.example.com/team/myapp")
    version: VersionStr = Field(description="tag | sha256:<digest> | stable")
    ports: tuple[PortStr, ...] = Field((), description="[IP:]HOST:CONTAINER[/udp]")
    env: dict[str, EnvValue] = Field(default_factory=dict, repr=False, description="values are never printed")
    env_file: PathOrSops | None = Field(
        None, description="KEY=VALUE file read on the server when applying, or {sops: PATH} of the repository"
    )
    volumes: tuple[VolumeStr, ...] = Field((), description="NAME_OR_ABS_PATH:CONTAINER_PATH[:ro|rw]")
    command: tuple[ArgStr, ...] | None = Field(None, description="argv; default: the image's CMD")
    restart: Literal["no", "always", "unless-stopped", "on-failure"] = "unless-stopped"
    init: bool = Field(False, description="run an init as PID 1 (docker --init)")
    stop_timeout: StopTimeout = Field(
        "10s", validate_default=True, description=f"SIGTERM, then SIGKILL after this long; {limits('stop_timeout')}"
    )
    health: HealthSpec | None = None
    route: RouteSpec | None = Field(
        None, description="served through the proxy instead of a host port; deployed start-first"
    )
    stable_after: StableAfter = Field(
        "10m",
        validate_default=True,
        description=f"healthy this long after a deploy: promoted to stable; {limits('stable_after')}",
    )
    on: Labels | tuple[str, ...] | None = Field(
        None, description="the hosts it runs on: {label: value, ...} (all must match) or [host, ...]; none: every host"
    )
    canary: CanarySpec | None = Field(
        None, description="hosts (of those the app runs on) that run a candidate version instead; needs hosts:"
    )
    replicas: int | None = Field(
        None, ge=0, le=1000, description="present: a Docker Swarm service of this many tasks (the engine is a manager)"
    )
    update: UpdateSpec | None = Field(None, description="how a service rolls out a new spec; needs replicas:")
    rollout: RolloutSpec | None = Field(
        None, description="a routed app's new release takes a growing share of requests, judged step by step"
    )
    # A stack: names, order, a release command, file secrets (``core.stack``).
    networks: AppNetworks = Field(
        default_factory=lambda: {DEFAULT_NETWORK: Attachment()},
        description="the instance's networks it joins, reached there by its app name; default: [default]",
    )
    depends_on: DependsOn = Field(
        default_factory=dict,
        description="apps deployed (healthy, started or completed) before it: [db] or {db: healthy}",
    )
    release: ReleaseSpec | None = Field(
        None, description="run once per new release, before it starts or takes traffic (a migration)"
    )
    secrets: tuple[SecretSpec, ...] = Field((), description="files on the server, mounted at /run/secrets/TARGET")
    # Container options, as Docker and Compose name them.
    user: UserStr | None = Field(None, description="USER[:GROUP] the process runs as")
    entrypoint: tuple[ArgStr, ...] | None = Field(None, description="argv; default: the image's ENTRYPOINT")
    working_dir: PathStr | None = Field(None, description="absolute path in the container")
    hostname: DnsName | None = Field(None, description="the container's own host name")
    extra_hosts: tuple[ExtraHost, ...] = Field((), description="NAME:IP lines added to /etc/hosts (IP: host-gateway)")
    labels: Labels = Field(
        default_factory=dict, description="Docker labels of the container (io.reconciler.* are ours)"
    )
    stop_signal: SignalStr | None = Field(None, description="the signal that stops it (default SIGTERM)")
    cap_add: tuple[Capability, ...] = Field((), description="Linux capabilities added")
    cap_drop: tuple[Capability, ...] = Field((), description="Linux capabilities dropped (ALL)")
    read_only: bool = Field(False, description="the root filesystem is read-only")
    tmpfs: tuple[TmpfsStr, ...] = Field((), description="/PATH[:OPTIONS] mounted as tmpfs")
    sysctls: Sysctls = Field(default_factory=dict, description="namespaced kernel parameters")
    ulimits: Ulimits = Field(default_factory=dict, description="name -> N or {soft, hard}")
    shm_size: Size | None = Field(None, description="size of /dev/shm (64m)")
    memory: Size | None = Field(None, description="memory limit (512m, 1g)")
    cpus: float | None = Field(None, gt=0, le=1024, description="CPUs it may use (1.5)")
    pids_limit: int | None = Field(None, ge=-1, le=4_194_304, description="most processes at once (-1: no limit)")
    logging: LoggingSpec | None = Field(None, description="log driver and its options")
    network_mode: Literal["host", "none"] | None = Field(
        None, description="host: the host's network stack (refused by a policy unless allowed); none: no network"
    )
    devices: tuple[DeviceStr, ...] = Field((), description="/dev/HOST[:/dev/CONTAINER][:rwm] passed in")
    privileged: bool = Field(
        False, description="every capability and device of the host (refused by a policy unless allowed)"
    )
    security_opt: tuple[SecurityOpt, ...] = Field((), description="no-new-privileges, seccomp=..., apparmor=...")

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if len(key) > MAX_ENV_KEY:
                raise ValueError(
                    f"{shown(key)} is longer than {MAX_ENV_KEY} characters: not an environment variable name"
                )
            if not ENV_KEY.match(key):
                raise ValueError(f"{shown(key)} is not an environment variable name")
        return value

    @field_validator("command", "entrypoint")
    @classmethod
    def _command(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return check_argv(value)

    @field_validator("working_dir")
    @classmethod
    def _working_dir(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("working_dir must be an absolute path in the container")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _CONTAINER_LABEL.match(key):
                raise ValueError(f"{shown(key)} is not a label name (letters, digits, '.', '-', '_' and '/')")
            if key == "io.reconciler" or key.startswith("io.reconciler."):
                raise ValueError(f"{shown(key)}: io.reconciler.* labels are reconciler's own")
        return value

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: tuple[SecretSpec, ...]) -> tuple[SecretSpec, ...]:
        targets = [secret.target for secret in value]
        for target in targets:
            if targets.count(target) > 1:
                raise ValueError(f"two secrets have the target {shown(target)}")
        return value

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for volume in value:
            target = volume.split(":")[1]
            if target.rstrip("/") == SECRETS_DIR or target.startswith(SECRETS_DIR + "/"):
                raise ValueError(f"{shown(volume)}: {SECRETS_DIR} holds the app's secrets: mount elsewhere")
        return value

    @field_validator("env_file")
    @classmethod
    def _env_file(cls, value: str | SopsRef | None) -> str | SopsRef | None:
        if isinstance(value, str) and not value.startswith("/"):
            raise ValueError("env_file must be an absolute path on the server, or {sops: PATH}")
        if isinstance(value, SopsRef) and value.key is not None:
            raise ValueError("env_file takes a whole SOPS file (KEY=VALUE pairs): no key")
        return value

    @property
    def env_file_name(self) -> str:
        """The env_file as messages and labels name it: its host path, or ``sops:PATH``."""
        return self.env_file.shown if isinstance(self.env_file, SopsRef) else self.env_file or ""

    def sops_refs(self) -> list[SopsRef]:
        """The SOPS files of the repository this app reads: its env_file's, its secrets'."""
        found = [self.env_file] if isinstance(self.env_file, SopsRef) else []
        return found + [secret.source for secret in self.secrets if isinstance(secret.source, SopsRef)]

    @model_validator(mode="after")
    def _service(self) -> AppSpec:
        if self.replicas is None:
            if self.update is not None:
                raise ValueError("update: is how a service rolls out: it needs replicas:")
            return self
        if self.route is not None:
            # Swarm replaces tasks in place: there is no previous release to keep warm or to drain by hand.
            for key, why in (("keep_warm", "keeps no warm release"), ("drain", "drains each task for stop_timeout")):
                if key in self.route.model_fields_set:
                    raise ValueError(f"route.{key}: a service {why} (Swarm replaces its tasks): leave it out")
        if self.canary is not None:
            raise ValueError("canary: of a replicated app (replicas:) is not supported: a service runs one spec")
        if self.rollout is not None:
            raise ValueError("rollout: of a replicated app (replicas:) is not supported: Swarm replaces its tasks")
        for key in sorted(self.model_fields_set & CONTAINER_ONLY):
            raise ValueError(f"{key}: is not supported for a service (replicas:) yet: leave it out, or run a container")
        for port in self.ports:
            ip, host_port, _, _ = parse_port(port)
            if ip or host_port is None:
                raise ValueError(
                    f"{port}: a service publishes HOST:CONTAINER on every address of the node its task runs on"
                    " (mode host): write it without an address, with its host port"
                )
        if isinstance(self.on, tuple) and len(self.on) > 1:
            raise ValueError(
                "on: of a service names the one node its tasks run on (Swarm's constraints are all required):"
                " for several nodes, give them a label and write on: {label: value}"
            )
        gate = self.health
        # The probe runs inside each task (a Docker healthcheck), so it names no address of the server.
        if gate is not None and ((gate.http is not None and not gate.on_container) or gate.tcp is not None):
            raise ValueError(
                "health: a service's probe runs in each of its tasks: write http: /path (asked on the task's first"
                " published container port), exec: [...] or docker: true"
            )
        if gate is not None and gate.on_container and not self.ports and self.route is None:
            raise ValueError(f"health.http {shown(gate.http)} is asked on the task's first published port: add ports:")
        return self

    @property
    def service(self) -> bool:
        """A Swarm service rather than a container."""
        return self.replicas is not None

    @property
    def completes(self) -> bool:
        """A job: not restarted on a clean exit and with no probe, so that exiting 0 is its success (its gate
        passes, and what ``depends_on: {APP: completed}`` waits for); it is not started again once done."""
        return self.restart in ("no", "on-failure") and (self.health is None or self.health.probe is None)

    @model_validator(mode="after")
    def _routed(self) -> AppSpec:
        if self.rollout is not None and self.route is None:
            raise ValueError("rollout: weighs the proxy's requests between two releases: it needs route:")
        if self.health is not None and self.health.on_container and self.route is None and self.replicas is None:
            raise ValueError(f"health.http {shown(self.health.http)} is a bare path: it needs route: (or a full URL)")
        if self.route is not None and self.health is not None:
            # A fixed address reaches the release that serves now (through the proxy), not the new one.
            if self.health.http is not None and not self.health.on_container:
                raise ValueError(
                    f"health.http {shown(self.health.http)}: with route:, write the path alone (/health); it is asked"
                    " of the new release itself, on route.port, before any traffic goes to it"
                )
            if self.health.tcp is not None:
                raise ValueError(
                    "health.tcp: with route:, leave it out; without a probe the gate connects to the new release"
                    " itself on route.port (or write http: /path)"
                )
        if self.route is not None:
            for port in self.ports:
                _, host_port, container_port, proto = parse_port(port)
                if container_port == self.route.port and proto == "tcp" and host_port is not None:
                    raise ValueError(
                        f"port {self.route.port} is both routed and published as {port}: a routed app publishes"
                        " no host port for it (drop it from ports:)"
                    )
                if host_port is not None:
                    raise ValueError(
                        f"{port}: a routed app is deployed start-first, two releases at once, so it cannot"
                        " hold a fixed host port; publish it without one (IP:CONTAINER) or serve it by a route"
                    )
        return self

    @property
    def gate(self) -> HealthSpec:
        """The health gate; a bare http path of a routed app is asked of the container itself, on its route's
        port, and a routed app with no probe is gated on a connection to that port (``ON_CONTAINER`` stands for
        the container's address until the shell knows it)."""
        gate = self.health or DEFAULT_HEALTH
        if self.route is not None and gate.on_container:
            return gate.model_copy(update={"http": f"http://{ON_CONTAINER}:{self.route.port}{gate.http}"})
        if self.route is not None and gate.probe is None:
            # Running is not enough for a route: the new release must accept connections on its port.
            return gate.model_copy(update={"tcp": f"{ON_CONTAINER}:{self.route.port}"})
        return gate

    @property
    def keep_warm(self) -> float:
        """How long the previous release stays running out of rotation (routed apps)."""
        if self.route is None:
            return 0.0
        return self.route.keep_warm if self.route.keep_warm is not None else self.stable_after


# -- pull-request previews (``previews:``; decided in ``core.previews``) ----------------------------------

PREVIEW_FIELDS = ("number", "head_sha")  # the placeholders a preview's host and version may hold
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TTL = re.compile(r"^([0-9]+)d$")
TTL_MAX = 365 * 86400.0
_TTL_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d)$"
_SAMPLE = {"number": "99999999", "head_sha": "0" * 64}  # the longest values a placeholder takes, to check the result


def fill(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``{number}`` and ``{head_sha}`` replaced."""
    return _PLACEHOLDER.sub(lambda found: values[found.group(1)], template)


def _template(kind: str, check: Any) -> Any:
    def validate(value: str) -> str:
        names = _PLACEHOLDER.findall(value)
        for name in names:
            if name not in PREVIEW_FIELDS:
                raise ValueError(
                    f"{shown(value)}: {{{name[:20]}}} is not a placeholder: use {{number}} or {{head_sha}}"
                )
        if not names:
            raise ValueError(
                f"{shown(value)}: a preview's {kind} differs per pull request: put {{number}} or {{head_sha}} in it"
            )
        if "{" in _PLACEHOLDER.sub("", value) or "}" in _PLACEHOLDER.sub("", value):
            raise ValueError(f"{shown(value)}: a brace outside a placeholder ({{number}}, {{head_sha}})")
        check(fill(value, _SAMPLE))
        return value

    return AfterValidator(validate)


def _preview_host(value: str) -> str:
    if not _HOSTNAME.match(value) or len(value) > 253 or value.startswith("*."):
        raise ValueError(f"{shown(value)} is not a host name once filled (lowercase, e.g. pr-7.preview.example.com)")
    return value


def _ttl(value: object) -> float:
    days = _TTL.match(value) if isinstance(value, str) else None
    seconds = float(days.group(1)) * 86400 if days else parse_duration(value)
    if not 0 < seconds <= TTL_MAX:
        raise ValueError(f"{shown(str(value))}: a preview's ttl is more than 0s and at most 365d")
    return seconds


class PreviewSpec(Strict):
    """A preview per open pull request of the repository, made from one routed app of the file."""

    host: Annotated[str, StringConstraints(max_length=253), _template("host", _preview_host)] = Field(
        description="the preview's host name: pr-{number}.preview.example.com ({number}, {head_sha})"
    )
    version: Annotated[str, StringConstraints(max_length=128), _template("version", check_version)] = Field(
        description="the image tag CI pushes for the pull request: pr-{number} or pr-{head_sha}"
    )
    env: dict[str, EnvValue] = Field(
        default_factory=dict, repr=False, description="env overrides of the app's env; values are never printed"
    )
    secrets: tuple[Annotated[str, StringConstraints(max_length=MAX_PATH)], ...] = Field(
        (), description="targets of the app's secrets: a preview gets these (none unless listed)"
    )
    env_file: bool = Field(False, description="true: the preview reads the app's env_file too (default: not)")
    max: int = Field(5, ge=1, le=100, description="previews of this app at once: the oldest pull requests get them")
    ttl: Annotated[float, BeforeValidator(_ttl), WithJsonSchema({"type": "string", "pattern": _TTL_PATTERN})] = Field(
        "7d", validate_default=True, description="a preview not updated this long is removed (5d, 12h)"
    )
    forks: bool = Field(False, description="true: pull requests from forks get previews too (they run their code)")

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return AppSpec._env(value)


class Previewed(Strict):
    """What ``core.previews`` added to a desired state: each preview app's source app, and what it said."""

    of: dict[str, str] = Field(default_factory=dict)  # preview app -> the app it was made from
    pulls: dict[str, int] = Field(default_factory=dict)  # preview app -> its pull request's number
    notes: tuple[tuple[str, str, str], ...] = ()  # (key, event, message) to say once: refused, expired


class DesiredFile(Strict):
    """The whole desired-state.yaml, version 1."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="reconciler desired-state.yaml",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    hosts: dict[str, HostSpec] | None = Field(
        None, description="a fleet: host name -> its engine and labels; each host's agent runs the apps placed on it"
    )
    proxy: ProxySpec | None = Field(None, description="the HAProxy that routed apps are served through")
    networks: dict[NetworkName, NetworkSpec] | None = Field(
        None, description="private networks of this instance beside its default one: name -> {internal: bool}"
    )
    apps: dict[AppName, AppSpec] = Field(description="app name (also the container name) -> what runs")
    previews: dict[AppName, PreviewSpec] | None = Field(
        None, description="pull-request previews: app (with a route:) -> how its preview per open pull request runs"
    )

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: dict[str, HostSpec] | None) -> dict[str, HostSpec] | None:
        for name in value or {}:
            if not HOST_NAME.match(name):
                raise ValueError(f"host name {shown(name)}: lowercase letters, digits, '-', '_' and '.'")
        return value


class HostLimits(Strict):
    """The host folders a server's policy allows bind sources and env_files under (None: any). The desired
    state that passed the policy carries them, so that apply checks the real path of each host path, on the
    engine's host, against them (``core.guard.real_violations``)."""

    volumes: tuple[str, ...] | None = None
    env_files: tuple[str, ...] | None = None


class DesiredState(Strict):
    """A validated file at one commit. ``revision`` is the full commit sha (empty for a plain file)."""

    apps: dict[str, AppSpec]
    proxy: ProxySpec | None = None
    hosts: dict[str, HostSpec] | None = None
    networks: dict[str, NetworkSpec] | None = None
    host: str | None = None  # the host whose apps ``apps`` holds (a fleet's file, placed); None: every app
    revision: str = ""
    path: str = "desired-state.yaml"
    author: str = ""  # of the commit, "Name <email>"
    source: Owner | None = None  # where it was read from; what its containers are labelled with
    limits: HostLimits | None = None  # the --policy's host folders it passed: apply checks real paths against them
    previews: dict[str, PreviewSpec] | None = None  # the file's previews: (the apps they make: ``previewed``)
    previewed: Previewed | None = None  # the preview apps ``core.previews`` added to ``apps``, and their notes
    # The SOPS files of the commit as this server opened them: never validated, dumped or printed.
    _sealed: Sealed = PrivateAttr(default_factory=Sealed)

    @property
    def sealed(self) -> Sealed:
        return self._sealed

    def with_sealed(self, sealed: Sealed) -> DesiredState:
        """This state with the SOPS files of its commit opened (``sealed``)."""
        copy = self.model_copy()
        copy._sealed = sealed
        return copy

    def sops_paths(self) -> list[str]:
        """Each SOPS file of the repository the apps read, once, in the order they name them."""
        return list(dict.fromkeys(ref.sops for spec in self.apps.values() for ref in spec.sops_refs()))

    @property
    def short(self) -> str:
        return self.revision[:8] if self.revision else "(no commit)"


class Owner(Strict):
    """The source that deployed a container: one repository, one branch, one file.

    A repository is known by the root commit of the branch's first-parent history (a clone moved to
    another folder is the same source) or by where it lives (history rewritten from the root at the same
    place is still the same source). A pass changes only containers of its own source.
    """

    root: str = ""  # root commit of the branch's first-parent history
    location: str = ""  # the URL, or the absolute path of the repository
    branch: str = ""
    file: str = ""

    def same(self, other: Owner) -> bool:
        if self.file != other.file or self.branch != other.branch:
            return False
        return (bool(self.root) and self.root == other.root) or (
            bool(self.location) and self.location == other.location
        )

    def describe(self) -> str:
        branch = f" ({self.branch})" if self.branch else ""
        return f"{self.location or self.root[:12] or '?'}{branch} {self.file}"


class Role(StrEnum):
    """Where a container of ours stands, read from its name: ``app``, ``app.prev``, ``app.next``, ``app.failed``,
    ``app.release``."""

    CURRENT = "current"
    PREVIOUS = "previous"
    NEXT = "next"
    FAILED = "failed"  # the last release that failed its gate, kept stopped for its logs
    RELEASE = "release"  # a release command's throwaway container, while it runs

    @property
    def suffix(self) -> str:
        return {
            Role.CURRENT: "",
            Role.PREVIOUS: ".prev",
            Role.NEXT: ".next",
            Role.FAILED: ".failed",
            Role.RELEASE: ".release",
        }[self]


def container_name(app: str, role: Role = Role.CURRENT) -> str:
    return app + role.suffix


class ObservedContainer(Strict):
    """A container (or, ``kind`` "service", a Swarm service) as the engine lists it. ``managed`` only when it
    carries our labels."""

    id: str
    name: str
    state: str  # created | running | paused | restarting | removing | exited | dead
    image_id: str
    managed: bool = False
    app: str | None = None
    role: Role | None = None
    fingerprint: dict[str, Any] = Field(default_factory=dict)
    commit: str = ""
    version: str = ""
    digest: str = ""
    spec_hash: str = ""
    owner: Owner | None = None  # None: deployed before containers carried their source
    created: float = 0.0  # epoch seconds
    networks: dict[str, str] = Field(default_factory=dict)  # network name -> its IPv4 address there
    exit_code: int | None = None  # of its last exit, when it exited (the engine's listing says it)
    kind: Literal["container", "service"] = "container"  # a service: a Swarm service named after the app
    # A routed service: "IP:PORT" of each task that runs, on its route's port (``core.swarm.endpoints``).
    endpoints: tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        return self.state in ("running", "restarting")

    @property
    def stop_timeout(self) -> float:
        """The stop timeout it was deployed with (its fingerprint); docker's default when it has none."""
        value = self.fingerprint.get("stop_timeout")
        # Not ``or``: a ``0s`` stop timeout is the user's choice, not a missing one.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return DEFAULT_STOP_TIMEOUT


class ObservedState(Strict):
    """Every container on the engine (ours and others), from one listing call, and its Swarm services
    when it is a manager (from one more)."""

    containers: tuple[ObservedContainer, ...] = ()

    def named(self, name: str) -> ObservedContainer | None:
        """The container named ``name`` (a service of that name is another thing: ``service``)."""
        for container in self.containers:
            if container.name == name and container.kind == "container":
                return container
        return None

    def service(self, name: str) -> ObservedContainer | None:
        """The Swarm service named ``name``."""
        for container in self.containers:
            if container.name == name and container.kind == "service":
                return container
        return None

    def of_app(self, app: str, *, service: bool) -> ObservedContainer | None:
        """What runs under an app's name in the kind the file gives it: its service, or its container."""
        return self.service(app) if service else self.named(app)

    def ours(self, app: str) -> ObservedContainer | None:
        """Our container or service of ``app``, whichever kind it is; else whatever has its name."""
        found = [c for c in (self.named(app), self.service(app)) if c is not None]
        return next((c for c in found if c.managed), found[0] if found else None)


def secret_hash(app: str, key: str, value: str) -> str:
    """An env value as labels carry it. Salted with app and key so equal values in two places do not look
    alike."""
    return hashlib.sha256(f"{app}\0{key}\0{value}".encode()).hexdigest()[:16]


def parse_port(port: str) -> tuple[str, int | None, int, str]:
    """``"[IP:]HOST:CONTAINER[/udp]"`` -> (ip or "", host port or None, container port, "tcp"|"udp")."""
    match = _PORT.match(port)
    if not match:
        raise ValueError(f"{shown(port)} is not [IP:]HOST:CONTAINER[/udp]")
    host = match.group("host")
    return (
        (match.group("ip") or "").strip("[]"),
        int(host) if host else None,
        int(match.group("container")),
        match.group("proto") or "tcp",
    )


def image_ref(spec: AppSpec) -> str:
    """The reference docker pulls: ``repo:tag`` or ``repo@sha256:...`` (``stable`` is a local tag)."""
    separator = "@" if spec.version.startswith("sha256:") else ":"
    return f"{spec.image}{separator}{spec.version}"
