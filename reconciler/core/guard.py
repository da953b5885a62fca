"""The server's policy: what the commits of a branch may ask of this host. Pure.

Whoever can merge to the branch could otherwise mount ``/`` or the Docker socket into a container, read
any host file as an ``env_file`` and publish any port on any interface. The server names what it allows
in a policy file (``--policy /etc/reconciler/policy.yaml``); a commit that asks for more is not applied
at all, and each thing it asks for beyond the policy is one ``Violation`` placed in the file.

The policy file (every key optional; a key left out allows anything of its kind, but for the container
options under ``containers:``, each of which hands a container the host and so is refused unless the policy
allows it; an empty list allows nothing of its kind; ``key:`` with no value is an error, so that "nothing"
is never read as "anything")::

    images: ["registry.example.com/team/", "myrepo/", "haproxy"]
    volumes: ["/srv/apps/", "/var/lib/myapp"]
    env_files: ["/etc/myapp/"]
    ports:
      interfaces: ["127.0.0.1", "0.0.0.0"]
      ranges: ["8000-8999", 443]
    containers:
      host_network: true
      privileged: false
      devices: ["/dev/dri", "/dev/ttyUSB0"]
      security_opt: ["apparmor=", "seccomp=/etc/docker/seccomp/web.json"]
      cap_add: ["NET_BIND_SERVICE", "CAP_NET_RAW"]

- ``images``: repository prefixes, compared by whole name components. ``registry.example.com/team/``
  (ending in ``/``: a namespace) allows every repository under it; ``myrepo/web`` (no ``/`` at the end:
  a repository) allows ``myrepo/web`` and what lies under ``myrepo/web/``, never ``myrepo/webevil``. Docker
  Hub names are compared in full on both sides: ``nginx`` is ``docker.io/library/nginx``, so ``library/``
  or ``docker.io/library/`` allows the official images and ``docker.io/`` all of Docker Hub. A host with a
  port (``localhost:5000/``) is a prefix like any other. Checked: each app's ``image`` and, when the file
  has ``proxy:``, ``proxy.image`` (``haproxy`` unless the file names another).
- ``volumes``: host paths a bind mount may take as its source (``/SOURCE:/target``): a source is allowed
  when it is one of these or lies under one, by whole path components (``/srv/apps`` allows
  ``/srv/apps/x``, never ``/srv/appsevil``), after ``..``, ``.`` and repeated ``/`` are folded away
  (``/srv/apps/../../etc`` is ``/etc``). Named volumes (``data:/data``) are always allowed. The folder of
  ``proxy.tls.certs``, which is mounted into the proxy, is checked against the same list.
- ``env_files``: host paths an app's ``env_file`` and its secrets' ``source`` may name, compared as ``volumes``
  are (both are host files whose contents go into the container).
- Real paths: a symlink under an allowed folder can lead out of it, and a container with a bind of that
  folder can make one. So a commit is checked twice: as written (``violations``, when it is read) and, at
  apply time, by the real path of each of its host paths on the engine's host (``real_violations``: every
  component resolved, ``..`` after the link it follows), against the folders of the policy and their own
  real paths (a policy folder that is itself a link on the server is the server's own doing). The desired
  state carries the folders it passed (``limits_of``, ``DesiredState.limits``) for that second check.
- ``ports``: ``interfaces``, the host IPs a published port or a ``proxy.listen`` address may bind, and
  ``ranges``, the host ports it may take (``"8000-8999"`` or a single ``443``); either may be left out (any).
  A port written without an IP (``8080:80``) binds ``0.0.0.0``. Interfaces are compared as addresses,
  exactly: ``0.0.0.0`` in the list allows a port bound to ``0.0.0.0``, not one bound to ``10.0.0.5`` by
  name. A port with no host port (``8000``, ``127.0.0.1:8000``) is given a random host port by Docker: it
  is allowed when its interface is, whatever ``ranges`` says. Ranges hold for tcp and udp alike.

- ``containers``: the container options that hand a container the host. Unlike the keys above, what
  ``containers:`` (or the whole key) leaves out is refused, not allowed: each of these turns off a wall
  between the container and the host, a commit that asks for one is asking for the host, and a server
  that wrote a policy before these options existed must not start allowing them silently.

  - ``host_network`` (default ``false``): ``network_mode: host``, the host's own network stack: every
    service that listens on the host's loopback, every port of the host, out of the reach of
    ``ports.interfaces``/``ports.ranges``. (``network_mode: none`` takes the network away: always allowed.)
  - ``privileged`` (default ``false``): ``privileged: true``, every capability and every device of the
    host, no seccomp or AppArmor profile: root on the host.
  - ``devices`` (default none): host device paths an app's ``devices`` may pass in (``/dev/HOST[:...]``),
    compared as ``volumes`` are: ``/dev/dri`` allows ``/dev/dri/renderD128``, never ``/dev/drix``; ``..``
    is folded first (``/dev/dri/../sda`` is ``/dev/sda``).
  - ``security_opt`` (default: only ``no-new-privileges``): the options an app's ``security_opt`` may
    hold; an entry is matched exactly, or as a prefix when it ends in ``=`` or ``:`` (``apparmor=``
    allows any AppArmor profile, ``apparmor=unconfined`` too; ``label=user:`` any SELinux user).
    ``:`` and ``=`` are one separator, as Docker reads them (``label:disable`` is ``label=disable``).
    ``no-new-privileges`` (in any form) is always allowed: it only takes power away from the container.
  - ``cap_add`` (left out: any, as the keys above): the Linux capabilities an app may add; ``CAP_`` is
    folded (``CAP_NET_RAW`` is ``NET_RAW``); ``ALL`` in the list allows every one. A server that holds
    the host should list it: ``SYS_ADMIN`` alone is nearly ``privileged``.

``violations`` says what a ``DesiredState`` asks beyond a policy; ``dangerous`` says, when there is no
policy, what gives a container the host: a mount of ``/`` itself, of ``/proc`` or ``/sys`` or anything
under them, of the Docker socket (``/run/docker.sock``, ``/var/run/docker.sock``) or the folder that holds
it (``/run``, ``/var/run``); ``privileged: true``; ``network_mode: host``; any device; a security option
that turns a confinement off (``seccomp=unconfined``, ``apparmor=unconfined``, ``label=disable``,
``label=type:spc_t``, ``systempaths=unconfined``); and the capabilities that reach past the container
(``ALL``, ``SYS_ADMIN``, ``SYS_MODULE``, ``SYS_PTRACE``, ``SYS_RAWIO``, ``DAC_READ_SEARCH``,
``NET_ADMIN``). Each ``Violation`` is a path into the file (``("apps", "web", "volumes", 0)``)
and a one-line message saying what is refused and what the policy allows; no message shows an env value.
``validate_policy`` turns the policy file (plain data and positions) into a ``ServerPolicy``, or raises
``InvalidPolicy`` with every error as ``FILE:LINE:COL: path: message``.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from reconciler.core.desired import Path, Positions, data_path, dotted, message
from reconciler.core.fields import Strict
from reconciler.core.model import AppSpec, DesiredState, HostLimits, parse_port
from reconciler.core.stack import device_mapping
from reconciler.errors import CommitRefused, UserError

ANY_IPV4 = "0.0.0.0"  # what a port written without an IP binds
DOCKER_SOCKETS = ("/run/docker.sock", "/var/run/docker.sock")
_SOCKET_FOLDERS = ("/run", "/var/run")
_KERNEL = ("/proc", "/sys")

_RANGE = re.compile(r"^([0-9]{1,5})(?:-([0-9]{1,5}))?$")
_REGISTRY_HOST = re.compile(r"^[a-zA-Z0-9.-]+(:[0-9]+)?$")
_NAME_COMPONENT = re.compile(r"^[a-z0-9]+([._-]+[a-z0-9]+)*$")
_HUB = "docker.io"
_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")


class InvalidPolicy(UserError):
    """The policy file does not parse or does not validate; ``errors`` are ``FILE:LINE:COL: path: message``."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


class PolicyViolation(CommitRefused):
    """A commit asks for more than the server's policy allows; nothing of it is applied.
    ``lines`` are ``FILE:LINE:COL: path: message``, one per violation."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("policy", "\n".join(lines))


@dataclass(frozen=True)
class Violation:
    """Something the file asks for beyond the policy: where (a path into the file) and what, on one line.

    ``message`` starts with ``quoted``, the part that shows what the file holds there (``8080:80 binds
    0.0.0.0``); a value that came from an env value through a YAML alias is never shown, so the shell puts
    ``<an env value>`` in its place then."""

    path: Path
    message: str
    quoted: str = ""

    @classmethod
    def of(cls, path: Path, quoted: str, rest: str) -> Violation:
        return cls(path, quoted + rest, quoted)


# --- paths ---------------------------------------------------------------------------------------------


def normalize_path(path: str) -> str:
    """``path`` with ``..``, ``.`` and repeated ``/`` folded away (``//x`` is ``/x``; ``/..`` is ``/``)."""
    folded = posixpath.normpath(path)
    return "/" + folded.lstrip("/") if folded.startswith("/") else folded


def path_under(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, by whole components, both normalised first."""
    path, folder = normalize_path(path), normalize_path(folder)
    return folder == "/" or path == folder or path.startswith(folder + "/")


def _check_host_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path: host paths start with /")
    if "\x00" in value:
        raise ValueError("a path holds no NUL character")
    return value


# --- images --------------------------------------------------------------------------------------------


def _is_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def image_parts(name: str, *, namespace: bool = False) -> tuple[str, ...]:
    """``name`` in full, as components: ``nginx`` -> ``("docker.io", "library", "nginx")``.

    A ``namespace`` (a prefix written with ``/`` at the end) gets no ``library/``: ``myrepo/`` is
    ``("docker.io", "myrepo")``, ``docker.io/`` is ``("docker.io",)``.
    """
    parts = name.strip("/").split("/")
    if (len(parts) > 1 or namespace) and _is_host(parts[0]):
        host, rest = parts[0].lower(), parts[1:]
    else:
        host, rest = _HUB, parts
    if host in _HUB_ALIASES:
        host = _HUB
        if not namespace and len(rest) == 1:
            rest = ["library", *rest]
    return (host, *rest)


def image_allowed(image: str, prefix: str) -> bool:
    """Whether repository ``image`` lies under the policy's ``prefix``, by whole name components."""
    wanted = image_parts(prefix, namespace=prefix.endswith("/"))
    return image_parts(image)[: len(wanted)] == wanted


def _check_image_prefix(value: str) -> str:
    bare = value[:-1] if value.endswith("/") else value
    parts = bare.split("/")
    host = _is_host(parts[0]) and (len(parts) > 1 or value.endswith("/"))
    names = parts[1:] if host else parts
    if (
        not bare
        or (host and not _REGISTRY_HOST.match(parts[0]))
        or not all(_NAME_COMPONENT.match(name) for name in names)
    ):
        raise ValueError(
            f"{value!r} is not a repository prefix (registry.example.com/team/, localhost:5000/, myrepo/, nginx)"
        )
    return value


# --- ports ---------------------------------------------------------------------------------------------


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text.strip("[]"))


def _check_interface(value: str) -> str:
    try:
        _address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (127.0.0.1, 0.0.0.0, ::1)") from None
    return value


def port_range(text: str) -> tuple[int, int]:
    """``"8000-8999"`` -> ``(8000, 8999)``; ``"443"`` -> ``(443, 443)`` (a validated range)."""
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def _check_range(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return value  # the str type refuses it
    match = _RANGE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a port or a range of ports (443, 8000-8999)")
    low, high = port_range(value)
    for number in (low, high):
        if not 0 < number < 65536:
            raise ValueError(f"port {number} is out of range 1-65535")
    if low > high:
        raise ValueError(f"{value!r} runs backwards: write {high}-{low}")
    return value


def _not_null(value: object) -> object:
    if value is None:
        raise ValueError("no value: write [] to allow none, or leave the key out to allow any")
    return value


ImagePrefix = Annotated[str, AfterValidator(_check_image_prefix)]
HostPath = Annotated[str, AfterValidator(_check_host_path)]
Interface = Annotated[str, AfterValidator(_check_interface)]
PortRange = Annotated[str, BeforeValidator(_check_range)]


class PortPolicy(Strict):
    """Which host IPs and host ports a published port or a proxy listen address may take."""

    interfaces: tuple[Interface, ...] | None = None
    ranges: tuple[PortRange, ...] | None = None

    @field_validator("interfaces", "ranges", mode="before")
    @classmethod
    def _given(cls, value: object) -> object:
        return _not_null(value)

    @model_validator(mode="after")
    def _something(self) -> PortPolicy:
        if self.interfaces is None and self.ranges is None:
            raise ValueError("name interfaces or ranges (or leave ports out to allow any)")
        return self

    def interface_allowed(self, ip: str) -> bool:
        return self.interfaces is None or any(_address(ip) == _address(allowed) for allowed in self.interfaces)

    def port_allowed(self, port: int) -> bool:
        return self.ranges is None or any(low <= port <= high for low, high in map(port_range, self.ranges))


# --- container options ---------------------------------------------------------------------------------

NO_NEW_PRIVILEGES = "no-new-privileges"  # only takes power away: always allowed
_SECURITY_OPT = re.compile(r"^[a-z-]+([=:].{0,4095})?$")
_CAPABILITY = re.compile(r"^(CAP_)?[A-Z_]{2,32}$")


def capability(name: str) -> str:
    """``CAP_NET_RAW`` and ``NET_RAW`` are one capability: ``NET_RAW``."""
    return name.removeprefix("CAP_")


def security_option(option: str) -> str:
    """``option`` as Docker reads it: ``name=value``, split at the first ``=``, or at the first ``:`` when
    there is no ``=`` (``label:disable`` is ``label=disable``, ``apparmor:p`` is ``apparmor=p``)."""
    if "=" not in option and ":" in option:
        name, _, value = option.partition(":")
        return f"{name}={value}"
    return option


def security_opt_allowed(option: str, entry: str) -> bool:
    """Whether the policy's ``entry`` allows ``option``: exactly, or as a prefix when it ends in = or :."""
    option, entry = security_option(option), security_option(entry)
    return option.startswith(entry) if entry.endswith(("=", ":")) else option == entry


def _check_security_entry(value: str) -> str:
    if not _SECURITY_OPT.match(value):
        raise ValueError(f"{value[:80]!r} is not a security option (no-new-privileges, seccomp=, apparmor=PROFILE)")
    return value


def _check_capability(value: str) -> str:
    if not _CAPABILITY.match(value):
        raise ValueError(f"{value[:80]!r} is not a capability in capitals (NET_BIND_SERVICE, CAP_NET_RAW, ALL)")
    return value


SecurityEntry = Annotated[str, AfterValidator(_check_security_entry)]
CapabilityName = Annotated[str, AfterValidator(_check_capability)]


class ContainerPolicy(Strict):
    """The container options that hand a container the host: each refused unless allowed here. Left out,
    ``cap_add`` allows any capability (None)."""

    host_network: StrictBool = False
    privileged: StrictBool = False
    devices: tuple[HostPath, ...] = ()
    security_opt: tuple[SecurityEntry, ...] = ()
    cap_add: tuple[CapabilityName, ...] | None = None

    @field_validator("host_network", "privileged", mode="before")
    @classmethod
    def _flag(cls, value: object) -> object:
        if value is None:
            raise ValueError("no value: write true or false (left out: false)")
        return value

    @field_validator("devices", "security_opt", mode="before")
    @classmethod
    def _listed(cls, value: object) -> object:
        if value is None:
            raise ValueError("no value: write the list of what to allow (left out or []: none)")
        return value

    @field_validator("cap_add", mode="before")
    @classmethod
    def _given(cls, value: object) -> object:
        return _not_null(value)

    def device_allowed(self, host_path: str) -> bool:
        return any(path_under(host_path, allowed) for allowed in self.devices)

    def security_opt_allowed(self, option: str) -> bool:
        if security_option(option).partition("=")[0] == NO_NEW_PRIVILEGES:
            return True
        return any(security_opt_allowed(option, entry) for entry in self.security_opt)

    def capability_allowed(self, name: str) -> bool:
        if self.cap_add is None:
            return True
        allowed = {capability(entry) for entry in self.cap_add}
        return "ALL" in allowed or capability(name) in allowed


class ServerPolicy(Strict):
    """What the commits may ask of this host. A field left out (None) allows anything of its kind, but
    ``containers``, whose defaults refuse what hands a container the host."""

    images: tuple[ImagePrefix, ...] | None = None
    volumes: tuple[HostPath, ...] | None = None
    env_files: tuple[HostPath, ...] | None = None
    ports: PortPolicy | None = None
    containers: ContainerPolicy = ContainerPolicy()

    @field_validator("images", "volumes", "env_files", "ports", mode="before")
    @classmethod
    def _given(cls, value: object) -> object:
        return _not_null(value)

    @field_validator("containers", mode="before")
    @classmethod
    def _containers(cls, value: object) -> object:
        if value is None:
            raise ValueError("no value: write what to allow (host_network: true, ...), or leave the key out")
        return value


# --- checking a desired state --------------------------------------------------------------------------


def _allows(name: str, entries: Iterable[str | int]) -> str:
    shown = ", ".join(str(entry) for entry in entries)
    return f"(policy {name}: {shown or 'none'})"


def bind_source(volume: str) -> str | None:
    """The host path of a bind mount (``/SOURCE:/target[:ro]``); None for a named volume."""
    source = volume.split(":", 1)[0]
    return source if source.startswith("/") else None


def _shown_path(path: str) -> str:
    folded = normalize_path(path)
    return path if folded == path else f"{path} (that is {folded})"


def _path_violation(path: Path, host_path: str, allowed: tuple[str, ...], name: str) -> Violation | None:
    if any(path_under(host_path, folder) for folder in allowed):
        return None
    return Violation.of(path, _shown_path(host_path), f" is not under an allowed host path {_allows(name, allowed)}")


def _image_violation(path: Path, image: str, allowed: tuple[str, ...], note: str = "") -> Violation | None:
    if any(image_allowed(image, prefix) for prefix in allowed):
        return None
    return Violation.of(path, image + note, f" is not under an allowed repository prefix {_allows('images', allowed)}")


def _binding_violations(path: Path, shown: str, ip: str, port: int | None, policy: PortPolicy) -> list[Violation]:
    found = []
    if not policy.interface_allowed(ip or ANY_IPV4):
        binds = ip if ip else f"{ANY_IPV4} (no IP given)"
        allowed = _allows("ports.interfaces", policy.interfaces or ())
        found.append(Violation.of(path, f"{shown} binds {binds}", f", which is not an allowed interface {allowed}"))
    if port is not None and not policy.port_allowed(port):
        allowed = _allows("ports.ranges", policy.ranges or ())
        found.append(Violation.of(path, f"{shown}: host port {port}", f" is not in an allowed range {allowed}"))
    return found


def _device_shown(entry: str) -> tuple[str, str]:
    """A ``devices`` entry as the message quotes it, and its host path (normalised)."""
    host = device_mapping(entry)[0]
    folded = normalize_path(host)
    if entry == host == folded:
        return entry, folded
    return f"{entry} (host device {folded})", folded


def _container_violations(at: Path, spec: AppSpec, policy: ContainerPolicy) -> list[Violation]:
    """What ``spec`` (at ``at``) asks of the host beyond ``policy.containers``: one ``Violation`` each."""
    written = policy.model_fields_set
    found = []

    def allows(key: str, entries: Iterable[str | int] | bool) -> str:
        default = "" if key in written else " by default"
        if isinstance(entries, bool):
            return f"(policy containers.{key}: {str(entries).lower()}{default})"
        return _allows(f"containers.{key}", entries).removesuffix(")") + default + ")"

    if spec.network_mode == "host" and not policy.host_network:
        rest = f" (the host's own network stack) is not allowed {allows('host_network', False)}"
        found.append(Violation.of((*at, "network_mode"), "host", rest))
    if spec.privileged and not policy.privileged:
        rest = f" (every capability and device of the host) is not allowed {allows('privileged', False)}"
        found.append(Violation.of((*at, "privileged"), "true", rest))
    for index, entry in enumerate(spec.devices):
        shown, host = _device_shown(entry)
        if not policy.device_allowed(host):
            rest = f" is not under an allowed device path {allows('devices', policy.devices)}"
            found.append(Violation.of((*at, "devices", index), shown, rest))
    for index, option in enumerate(spec.security_opt):
        if not policy.security_opt_allowed(option):
            entries = (NO_NEW_PRIVILEGES, *policy.security_opt)
            rest = f" is not an allowed security option {allows('security_opt', entries)}"
            found.append(Violation.of((*at, "security_opt", index), option, rest))
    for index, name in enumerate(spec.cap_add):
        if not policy.capability_allowed(name):
            rest = f" is not an allowed capability {allows('cap_add', policy.cap_add or ())}"
            found.append(Violation.of((*at, "cap_add", index), name, rest))
    return found


def violations(desired: DesiredState, policy: ServerPolicy) -> list[Violation]:
    """Everything ``desired`` asks for beyond ``policy``, in the order of the file's apps, then the proxy."""
    found: list[Violation | None] = []
    for app, spec in desired.apps.items():
        at: Path = ("apps", app)
        found.extend(_container_violations(at, spec, policy.containers))
        if policy.images is not None:
            found.append(_image_violation((*at, "image"), spec.image, policy.images))
        if policy.volumes is not None:
            for index, volume in enumerate(spec.volumes):
                source = bind_source(volume)
                if source is not None:
                    found.append(_path_violation((*at, "volumes", index), source, policy.volumes, "volumes"))
        # A secret's host source is read into the container, as an env_file; a SOPS file of the repository is
        # no host path (the commit holds it).
        if policy.env_files is not None and isinstance(spec.env_file, str):
            found.append(_path_violation((*at, "env_file"), spec.env_file, policy.env_files, "env_files"))
        if policy.env_files is not None:
            for index, secret in enumerate(spec.secrets):
                if isinstance(secret.source, str):
                    found.append(
                        _path_violation((*at, "secrets", index, "source"), secret.source, policy.env_files, "env_files")
                    )
        if policy.ports is not None:
            for index, port in enumerate(spec.ports):
                ip, host_port, _, _ = parse_port(port)
                found.extend(_binding_violations((*at, "ports", index), port, ip, host_port, policy.ports))
    proxy = desired.proxy
    if proxy is not None:
        if policy.images is not None:
            written = "image" in proxy.model_fields_set
            note = "" if written else " (the default proxy image)"
            found.append(_image_violation(("proxy", "image"), proxy.image, policy.images, note))
        if policy.volumes is not None and proxy.tls is not None and proxy.tls.certs is not None:
            found.append(_path_violation(("proxy", "tls", "certs"), proxy.tls.certs, policy.volumes, "volumes"))
        if policy.ports is not None:
            written = "listen" in proxy.model_fields_set
            for index, (address, (ip, number, _)) in enumerate(zip(proxy.listen, proxy.listens(), strict=True)):
                path: Path = ("proxy", "listen", index) if written else ("proxy", "listen")
                shown = address if written else f"{address} (the default listen address)"
                found.extend(_binding_violations(path, shown, ip, number, policy.ports))
    return [violation for violation in found if violation is not None]


# --- real paths, at apply time -------------------------------------------------------------------------


def limits_of(policy: ServerPolicy) -> HostLimits | None:
    """The host folders of ``policy`` that apply checks real paths against; None when it limits none."""
    if policy.volumes is None and policy.env_files is None:
        return None
    return HostLimits(volumes=policy.volumes, env_files=policy.env_files)


@dataclass(frozen=True)
class HostUse:
    """A host path of the file, held to one list of the policy (``kind``: ``volumes`` or ``env_files``)."""

    at: Path
    written: str
    kind: str

    @property
    def app(self) -> str:
        """The app it belongs to; "" for the proxy's ``tls.certs``."""
        return str(self.at[1]) if self.at[0] == "apps" else ""


def host_paths(desired: DesiredState) -> list[HostUse]:
    """The host paths of ``desired`` that its ``limits`` hold (bind sources, ``tls.certs``, env_files)."""
    limits = desired.limits
    if limits is None:
        return []
    found = []
    for app, spec in desired.apps.items():
        if limits.volumes is not None:
            for index, volume in enumerate(spec.volumes):
                source = bind_source(volume)
                if source is not None:
                    found.append(HostUse(("apps", app, "volumes", index), source, "volumes"))
        if limits.env_files is not None and isinstance(spec.env_file, str):
            found.append(HostUse(("apps", app, "env_file"), spec.env_file, "env_files"))
        if limits.env_files is not None:
            for index, secret in enumerate(spec.secrets):
                if isinstance(secret.source, str):
                    found.append(HostUse(("apps", app, "secrets", index, "source"), secret.source, "env_files"))
    tls = desired.proxy.tls if desired.proxy is not None else None
    if limits.volumes is not None and tls is not None and tls.certs is not None:
        found.append(HostUse(("proxy", "tls", "certs"), tls.certs, "volumes"))
    return found


def to_resolve(desired: DesiredState) -> list[str]:
    """Every path whose real path ``real_violations`` needs: the host paths, and the folders they may be under."""
    limits = desired.limits or HostLimits()
    folders = (*(limits.volumes or ()), *(limits.env_files or ()))
    return list(dict.fromkeys([*(host.written for host in host_paths(desired)), *folders]))


def real_allowed(real: str, folders: Iterable[str], real_of: Mapping[str, str | None]) -> bool:
    """Whether ``real`` lies under one of ``folders`` or under the real path of one (``real_of``)."""
    for folder in folders:
        folder_real = real_of.get(folder)
        if path_under(real, folder) or (folder_real is not None and path_under(real, folder_real)):
            return True
    return False


def real_violation(
    host: HostUse, limits: HostLimits, real_of: Mapping[str, str | None], unknown: str
) -> Violation | None:
    """What is wrong with ``host``'s real path (``real_of``, None when the engine's host cannot tell it, for
    the reason ``unknown``), or None when it stays under an allowed folder."""
    folders = (limits.volumes if host.kind == "volumes" else limits.env_files) or ()
    real = real_of.get(host.written)
    if real is None:
        return Violation.of(
            host.at, host.written, f": its real path on the engine's host cannot be checked ({unknown})"
        )
    if not real_allowed(real, folders, real_of):
        how = "is" if real == normalize_path(host.written) else "leads through a symlink to"
        allows = _allows(host.kind, folders)
        rest = f" {how} {real} on the engine's host, which is not under an allowed host path {allows}"
        return Violation.of(host.at, host.written, rest)
    if host.kind == "volumes" and ":" in real:
        return Violation.of(host.at, host.written, f" leads to {real} on the engine's host: a ':' cannot be bound")
    return None


def real_violations(desired: DesiredState, real_of: Mapping[str, str | None], *, unknown: str = "") -> list[Violation]:
    """Each host path of ``desired`` whose real path on the engine's host (``real_of``: path -> its real path,
    None when it cannot be told there, for the reason ``unknown``) is not under a folder of ``desired.limits``."""
    limits = desired.limits
    if limits is None:
        return []
    found = (real_violation(host, limits, real_of, unknown) for host in host_paths(desired))
    return [violation for violation in found if violation is not None]


def real_binds(volumes: Iterable[str], real_of: Mapping[str, str | None]) -> list[str]:
    """``volumes`` with each bind source replaced by its real path (as checked), so that the engine mounts
    the path that was checked, not one it finds by following a link; named volumes as they are."""
    binds = []
    for volume in volumes:
        source = bind_source(volume)
        real = real_of.get(source) if source is not None else None
        binds.append(real + volume[len(source) :] if source is not None and real is not None else volume)
    return binds


def _danger(host_path: str) -> str | None:
    folded = normalize_path(host_path)
    if folded == "/":
        return "the host's whole file system"
    if any(path_under(folded, kernel) for kernel in _KERNEL):
        return "the host kernel's own files (/proc, /sys)"
    if folded in DOCKER_SOCKETS:
        return "the Docker socket: the container can run anything on the host"
    if folded in _SOCKET_FOLDERS:
        return "the folder of the Docker socket: the container can run anything on the host"
    return None


# What each unconfining security option turns off (as ``security_option`` writes it).
_UNCONFINED = {
    "seccomp=unconfined": "turns off the container's system-call filter (seccomp)",
    "apparmor=unconfined": "turns off the container's AppArmor profile",
    "label=disable": "turns off the container's SELinux labels",
    "label=type:spc_t": "runs the container as an unconfined SELinux process (spc_t)",
    "label=type:unconfined_t": "runs the container as an unconfined SELinux process",
    "systempaths=unconfined": "unmasks the host kernel's /proc and /sys paths in the container",
}
# The capabilities that reach past the container, and how.
_POWERFUL = {
    "ALL": "gives the container every capability, SYS_ADMIN and SYS_MODULE among them",
    "SYS_ADMIN": "gives the container mounts, namespaces and most of root's power over the host kernel",
    "SYS_MODULE": "lets the container load modules into the host's kernel",
    "SYS_PTRACE": "lets the container trace and read the memory of the processes it can see",
    "SYS_RAWIO": "gives the container raw access to the host's memory and I/O ports",
    "DAC_READ_SEARCH": "lets the container open any file of the host by its handle (open_by_handle_at)",
    "NET_ADMIN": "lets the container rewrite its network (interfaces, routes, firewall); the host's, if shared",
}


def _container_dangers(at: Path, spec: AppSpec) -> list[Violation]:
    found = []
    if spec.network_mode == "host":
        rest = " shares the host's own network stack: every service on its loopback, every port of the host"
        found.append(Violation.of((*at, "network_mode"), "host", rest))
    if spec.privileged:
        rest = " gives the container every capability and device of the host: root on the host"
        found.append(Violation.of((*at, "privileged"), "true", rest))
    for index, entry in enumerate(spec.devices):
        shown, _ = _device_shown(entry)
        found.append(Violation.of((*at, "devices", index), shown, " passes a device of the host into the container"))
    for index, option in enumerate(spec.security_opt):
        unconfined = _UNCONFINED.get(security_option(option))
        if unconfined is not None:
            found.append(Violation.of((*at, "security_opt", index), option, f" {unconfined}"))
    for index, name in enumerate(spec.cap_add):
        power = _POWERFUL.get(capability(name))
        if power is not None:
            found.append(Violation.of((*at, "cap_add", index), name, f" {power}"))
    return found


def dangerous(desired: DesiredState) -> list[Violation]:
    """With no policy: each mount and container option that gives a container the host (see the module's
    docstring), one each."""
    found = []
    for app, spec in desired.apps.items():
        for index, volume in enumerate(spec.volumes):
            source = bind_source(volume)
            danger = _danger(source) if source is not None else None
            if source is not None and danger is not None:
                found.append(Violation.of(("apps", app, "volumes", index), _shown_path(source), f" mounts {danger}"))
        found.extend(_container_dangers(("apps", app), spec))
    tls = desired.proxy.tls if desired.proxy is not None else None
    if tls is not None and tls.certs is not None:
        danger = _danger(tls.certs)
        if danger is not None:
            found.append(Violation.of(("proxy", "tls", "certs"), _shown_path(tls.certs), f" mounts {danger}"))
    return found


# --- reading the policy file ---------------------------------------------------------------------------


_MODELS: dict[Path, type[BaseModel]] = {(): ServerPolicy, ("ports",): PortPolicy, ("containers",): ContainerPolicy}
_MAPPINGS: dict[Path, str] = {
    ("ports",): "interfaces: [...], ranges: [...]",
    ("containers",): "host_network: true, privileged: true, devices: [...], security_opt: [...], cap_add: [...]",
}


def _model_at(path: Path) -> type[BaseModel] | None:
    return _MODELS.get(path)


def _message(error: Any, path: Path) -> str:
    kind = error["type"]
    if kind == "tuple_type":
        return "write a list ([...])"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"write a mapping ({_MAPPINGS.get(path, '...')})"
    if kind == "bool_type":
        return "write true or false"
    return message(error, path, _model_at)


def validate_policy(data: Any, positions: Positions, *, filename: str) -> ServerPolicy:
    """The policy file (as plain data, with where each node stood) as a ``ServerPolicy``, or ``InvalidPolicy``
    with every error, sorted by place."""
    if data is None:
        raise InvalidPolicy(
            [
                f"{filename}:1:1: the policy file is empty; write {{}} to allow any image, host path and port"
                " (containers: keeps its defaults)"
            ]
        )
    if not isinstance(data, Mapping):
        line, col = positions.of(())
        raise InvalidPolicy(
            [
                f"{filename}:{line}:{col}: the top level must be a mapping"
                " (images, volumes, env_files, ports, containers)"
            ]
        )
    try:
        return ServerPolicy.model_validate(data)
    except ValidationError as exc:
        found = []
        for error in exc.errors():
            path = data_path(data, tuple(error["loc"]), _model_at)
            where = positions.of(path, key=error["type"] == "extra_forbidden")
            found.append((where, f"{filename}:{where[0]}:{where[1]}: {dotted(path)}: {_message(error, path)}"))
        raise InvalidPolicy(list(dict.fromkeys(text for _, text in sorted(found)))) from None


def held_binds(
    what: str,
    volumes: Sequence[str],
    limits: HostLimits | None,
    real_paths: Callable[[Sequence[str]], tuple[dict[str, str | None], str]],
) -> list[str]:
    """``volumes`` with each host path as ``real_paths`` resolved it, once every one was checked against
    ``limits``: ``PolicyViolation`` (each line prefixed by ``what``) when one leads out of them. The engine
    adapter and the tests' in-memory engine differ only in how a path is resolved."""
    if limits is None or limits.volumes is None:
        return list(volumes)
    held = [HostUse(("volumes", index), source, "volumes") for index, volume in enumerate(volumes)
            if (source := bind_source(volume)) is not None]  # fmt: skip
    real_of, unknown = real_paths([*(host.written for host in held), *limits.volumes])
    found = [real_violation(host, limits, real_of, unknown) for host in held]
    refused = [f"{what}: {violation.message}" for violation in found if violation is not None]
    if refused:
        raise PolicyViolation(refused)
    return real_binds(volumes, real_of)
