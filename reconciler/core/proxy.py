"""The proxy of routed apps, decided without I/O: its HAProxy config, who serves each route, what to change.

Guarantees:
- ``render`` is deterministic: the same routes and servers give the same text, byte for byte, so a
  config on disk that differs from it is drift (and a reload), never noise.
- Each routed app has one backend ``be_APP`` with one server ``live``; a switch is the runtime API's
  ``set server be_APP/live addr IP port P`` (no reload, no dropped request). The config always names
  the address that serves now, so that a reload or a restart of the proxy keeps the route where it is.
- Instant failover: ``live`` is checked every second (the app's ``http:`` path, else a connection) and
  marked down at its first refused connection; its backup server ``warm`` is the warm previous release
  (``backups``), which then takes the traffic by itself, the GET that met the dead release included.
  With no warm release, ``warm`` is the live release's own address again: a release whose process comes
  back inside its container is waited for (retried), as with no check, never answered 503 because it was
  marked down. (A container that Docker restarts gets a new address: ``serving`` follows it at a pass.)
- ``serving`` is the one rule for where a route points: the app's own container (``APP``) when it runs,
  else its warm previous release (``APP.prev``) when that runs, else nothing (HAProxy answers 503). A
  deploy switches only to a release that passed its gate and renames only containers that do not serve,
  so that, after any crash, this rule points at a release that passed its gate.
- Routes are matched most specific first: a named host, then a wildcard host (the one with more labels
  first: ``*.shop.example.com`` before ``*.example.com``), then every host; a longer path prefix before
  a shorter one; ties by app name.
- A request that could not reach its release (refused, unanswered within ``timeout connect``) is sent
  again, for about 3 s, to where the route points by then; a GET that got no answer at all is too.
- While the proxy cannot be brought in line, a pass deploys the apps without a route (``unrouted``).
- A routed service (``replicas:``) has a backend of ``slots`` servers (``task1`` ...), balanced round robin
  over the tasks that run (``pool``): HAProxy checks each one (the app's ``http:`` path, else a
  connection) and, as a task that Swarm stops may refuse or drop a request, sends a GET it could not
  answer once more, to another task. ``assign`` keeps each task in its slot and fills free slots with
  new ones before it frees the slots of tasks that went, so a rolling update never empties the route.
- A warm release is one that is running as ``APP.prev`` of a routed app; it is cooled (stopped, kept for
  a rollback) once ``keep_warm`` has passed since the release that replaced it was created.
- What to change in the proxy is decided here, once, from what was seen of it (``Seen``, the runtime's
  ``Points`` and ``Slot``s): ``container_change`` (remove, start, recreate, start again, reload),
  ``misrouted`` (the runtime switches of live and backup servers), ``pool_changes`` (a service's slots)
  and ``to_cool``; ``changes`` is all of them at once. ``deploy.proxy`` acts on them (``sync``, stage by
  stage, each on what the stage before left) and describes them (``drift``, the dry run): each
  ``Change`` says itself as done or as to do (``said``), the same words either way.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from reconciler.core.model import (
    AppSpec,
    DesiredState,
    ObservedContainer,
    ObservedState,
    ProxySpec,
    Role,
    container_name,
)
from reconciler.core.plan import Plan
from reconciler.core.stack import DEFAULT_NETWORK, docker_network

CONFIG_DIR = "/usr/local/etc/haproxy"  # the official image's; our test image keeps it
CONFIG_FILE = "haproxy.cfg"
SWITCHED_FILE = "switched.json"  # when each route last switched (epoch seconds): a warm window starts then
ROUTES_FILE = "routes.cfg"  # the config as rendered with no server: what a reload is needed for
ADMIN_SOCKET = "admin.sock"
MASTER_SOCKET = "master.sock"
CERTS_DIR = CONFIG_DIR + "/certs"
ACME_DIR = "acme"  # in the proxy's folder: the certificates ACME issued, one PEM per host (``deploy.certs``)
DEFAULT_CERT = "default.pem"  # a self-signed certificate served to a name no other certificate serves
CHALLENGES = "acme-challenges.map"  # HTTP-01 tokens -> key authorizations, filled by the runtime API
CHALLENGE_PATH = "/.well-known/acme-challenge/"
SERVER = "live"
BACKUP = "warm"  # the backup server of a container app's backend (see ``backups``)
# Checked every second, down after 2 failed checks or at the first connection the release refused, up at
# the first good check: a dead live release hands its traffic to the backup in well under a second.
CHECKS = " check inter 1s fall 2 rise 1 observe layer4 error-limit 1 on-error mark-down"
SLOT = "task"  # a routed service's servers: task1, task2, ...
CANARY = "canary"  # the server of a rollout's new release, beside ``live`` (apps with ``rollout:``)
FULL = 100  # the weights of an app with ``rollout:`` are percents: live 100 - w, canary w
NO_SERVER = ("127.0.0.1", 1)  # a disabled server's placeholder address: nothing serves the route
# Only what may be sent twice is retried after it reached a release: a POST that got no answer is not.
ONLY_GETS_AGAIN = "  http-request disable-l7-retry unless METH_GET"


def proxy_container(instance: str) -> str:
    """The proxy's container name: one proxy per instance on an engine."""
    return "reconciler-proxy" if instance == "default" else f"reconciler-proxy-{instance}"


def proxy_network(instance: str) -> str:
    """The Docker network that routed apps of an instance join, and that the proxy reaches them on: the
    instance's default network (``core.stack.docker_network``)."""
    return docker_network(instance, DEFAULT_NETWORK)


def backend(app: str) -> str:
    return f"be_{app}"


def routed(desired: DesiredState) -> dict[str, AppSpec]:
    return {app: spec for app, spec in sorted(desired.apps.items()) if spec.route is not None}


def unrouted(plan: Plan, desired: DesiredState) -> tuple[Plan, list[str]]:
    """``plan`` without the actions of routed apps, and those apps: what a pass does while its proxy cannot be
    brought in line. The routed apps wait for a pass that can; the others never wait on the proxy."""
    waiting = routed(desired)
    kept = tuple(action for action in plan.actions if action.app not in waiting)
    held = sorted({action.app for action in plan.actions if action.app in waiting and action.kind.changes})
    return replace(plan, actions=kept), held


@dataclass(frozen=True)
class Server:
    """Where a route sends its requests: a container's address on the proxy network, and its port."""

    container: str  # its name, for reports ("" for none)
    ip: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


def serving(app: str, spec: AppSpec, observed: ObservedState, network: str) -> Server | None:
    """The release a route points at (see the module docstring): ``APP``, else a warm ``APP.prev``."""
    for role in (Role.CURRENT, Role.PREVIOUS):
        found = observed.named(container_name(app, role))
        if found is not None and found.managed and found.state == "running" and found.networks.get(network):
            return _server(found, spec, network)
    return None


def _server(found: ObservedContainer, spec: AppSpec, network: str) -> Server:
    assert spec.route is not None
    # The port the release was deployed with: a failed deploy to a new port leaves the old one's.
    port = found.fingerprint.get("route_port")
    return Server(found.name, found.networks[network], port if isinstance(port, int) else spec.route.port)


def servers(desired: DesiredState, observed: ObservedState, network: str) -> dict[str, Server | None]:
    """Where each routed container app's route points (services have ``pools``)."""
    return {app: serving(app, spec, observed, network) for app, spec in routed(desired).items() if not spec.service}


def backups(
    desired: DesiredState, observed: ObservedState, network: str, switched: Mapping[str, float], now: float
) -> dict[str, Server | None]:
    """The backup server of each routed container app: its warm previous release while its window lasts,
    else the address that serves (a process that comes back in its container is waited for, not refused)."""
    found: dict[str, Server | None] = {}
    for app, spec in routed(desired).items():
        if spec.service:
            continue
        kept = warm(app, spec, observed, network, switched)
        if kept is not None and kept[1] > now and kept[0].networks.get(network):
            found[app] = _server(kept[0], spec, network)
        else:
            found[app] = serving(app, spec, observed, network)
    return found


def slots(spec: AppSpec) -> int:
    """The servers of a routed service's backend: twice its replicas, room for a start-first rollout of
    every task at once (a scale changes the count: a reload)."""
    assert spec.replicas is not None
    return max(1, 2 * spec.replicas)


def pool(app: str, spec: AppSpec, observed: ObservedState) -> tuple[Server, ...]:
    """The tasks of a routed service of ours that run, as servers (at most ``slots``)."""
    found = observed.service(app)
    if found is None or not found.managed:
        return ()
    members = []
    for endpoint in found.endpoints[: slots(spec)]:
        ip, _, port = endpoint.rpartition(":")
        members.append(Server(app, ip, int(port)))
    return tuple(members)


def pools(desired: DesiredState, observed: ObservedState) -> dict[str, tuple[Server, ...]]:
    """The tasks of each routed service that the engine listed as ours. One it did not list is left out
    (its backend is left as it is): a manager that cannot list services now (no quorum) must not take
    every task out of a route while they run."""
    return {
        app: pool(app, spec, observed)
        for app, spec in routed(desired).items()
        if spec.service and (found := observed.service(app)) is not None and found.managed
    }


@dataclass(frozen=True)
class Slot:
    """One server of a service's backend as the runtime API says: its name, address, and whether it serves."""

    name: str
    ip: str
    port: int
    enabled: bool
    weight: int = 1  # its user weight (``set weight``)

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


def assign(current: Sequence[Slot], wanted: Sequence[Server]) -> list[tuple[str, Server | None]]:
    """The runtime changes that make a backend's slots serve ``wanted``: (slot, server) to point a slot at a
    server, (slot, None) to take it out. A task keeps its slot; new tasks fill free slots first, then the
    slots of tasks that went, so that the route is never empty while a task comes and another goes."""
    addresses = {server.address for server in wanted}
    kept: dict[str, str] = {}  # address -> the slot that keeps it (one: a task twice in the backend is not)
    for slot in current:
        if slot.enabled and slot.address in addresses:
            kept.setdefault(slot.address, slot.name)
    going = [slot.name for slot in current if slot.enabled and kept.get(slot.address) != slot.name]
    free = [slot.name for slot in current if not slot.enabled] + going
    coming = [server for server in wanted if server.address not in kept]
    changes: list[tuple[str, Server | None]] = list(zip(free, coming, strict=False))
    taken = {name for name, _ in changes}
    changes += [(name, None) for name in going if name not in taken]
    return changes


def warm(
    app: str, spec: AppSpec, observed: ObservedState, network: str, switched: Mapping[str, float]
) -> tuple[ObservedContainer, float] | None:
    """The warm previous release of a routed app, and when its window ends (epoch seconds): ``keep_warm``
    after the route last switched away from it (``switched``), else after its successor was created.
    A previous release that serves (nothing else can) is not warm."""
    previous = observed.named(container_name(app, Role.PREVIOUS))
    current = observed.named(container_name(app))
    if previous is None or not previous.managed or previous.state != "running" or spec.route is None:
        return None
    server = serving(app, spec, observed, network)
    if current is None or server is None or server.container != current.name:
        return None
    since = max(switched.get(app, 0.0), current.created)
    return previous, since + spec.keep_warm


def to_cool(
    desired: DesiredState, observed: ObservedState, network: str, switched: Mapping[str, float], now: float
) -> list[ObservedContainer]:
    """Warm releases whose window has passed: they are stopped (and kept as ``APP.prev``)."""
    cooled = []
    for app, spec in routed(desired).items():
        found = warm(app, spec, observed, network, switched)
        if found is not None and found[1] <= now:
            cooled.append(found[0])
    return cooled


@dataclass(frozen=True)
class _Rule:
    """One ``use_backend`` line and the ACLs it needs; rules sort most specific first."""

    kind: int  # 0: named hosts, 1: wildcard hosts, 2: every host
    prefix: str
    app: str
    acls: tuple[str, ...]
    condition: str
    labels: int = 0  # a wildcard's: how many labels its suffix has (*.shop.example.com: 3), more first

    @property
    def rank(self) -> tuple[int, int, int, str, str]:
        return (self.kind, -self.labels, -len(self.prefix), self.prefix, self.app)


def _rules(app: str, spec: AppSpec) -> list[_Rule]:
    """An app's route as rules: its named hosts and its wildcard hosts apart, so that a named host of
    one app wins over another app's wildcard that also matches it."""
    assert spec.route is not None
    prefix = spec.route.path_prefix
    # /api is /api itself and what lies under /api/, never /apiary; /api/ is what lies under it.
    path_acl: tuple[str, ...] = ()
    if prefix.endswith("/") and prefix != "/":
        path_acl = (f"acl path_{app} path_beg {prefix}",)
    elif prefix != "/":
        path_acl = (f"acl path_{app} path {prefix}", f"acl path_{app} path_beg {prefix}/")
    path_term = f" path_{app}" if path_acl else ""
    exact = [host for host in spec.route.hosts if not host.startswith("*.")]
    # Wildcards by their number of labels: each count is a rule of its own, ranked apart.
    wild: dict[int, list[str]] = {}
    for host in spec.route.hosts:
        if host.startswith("*."):
            wild.setdefault(host.count("."), []).append(host[1:])
    rules = []
    # The Host header may carry a port (shop.example.com:8080): it is cut off before matching.
    if exact:
        acl = f"acl host_{app} req.hdr(host),field(1,:),lower -m str {' '.join(exact)}"
        rules.append(_Rule(0, prefix, app, (acl, *path_acl), f"host_{app}{path_term}"))
    for labels, suffixes in sorted(wild.items(), reverse=True):
        name = f"wild_{app}" if len(wild) == 1 else f"wild_{app}_{labels}"
        acl = f"acl {name} req.hdr(host),field(1,:),lower -m end {' '.join(suffixes)}"
        rules.append(_Rule(1, prefix, app, (acl, *path_acl), f"{name}{path_term}", labels))
    if not exact and not wild:
        rules.append(_Rule(2, prefix, app, path_acl, path_term.strip()))
    return rules


def render(
    proxy: ProxySpec,
    routes: Mapping[str, AppSpec],
    live: Mapping[str, Server | None],
    *,
    pools: Mapping[str, Sequence[Server]] | None = None,
    backup: Mapping[str, Server | None] | None = None,
    canaries: Mapping[str, Canary | None] | None = None,
    uid: int = 0,
) -> str:
    """The whole haproxy.cfg: one frontend per listen address, one backend per routed app (``live`` and its
    ``backup`` for a container app, with its rollout's ``canary`` when it has ``rollout:``; ``pools`` for a
    service)."""
    drains = [spec.route.drain for spec in routes.values() if spec.route is not None]
    lines = [
        "# Written by reconciler from desired-state.yaml and what runs; it is rewritten at every pass.",
        "global",
        "  master-worker",
        # expose-fd: a reload hands the listening sockets to the new worker, so no connection is refused.
        f"  stats socket {CONFIG_DIR}/{ADMIN_SOCKET} mode 600 uid {uid} level admin expose-fd listeners",
        f"  hard-stop-after {int(max(drains, default=0.0)) + 30}s",
        "",
        "defaults",
        "  mode http",
        # A release is a container on this host's bridge: the kernel completes its handshake in well under a
        # millisecond, busy app or not (it answers the SYN, not the app), so 100 ms is room for a starved host.
        # A release that died leaves an address nothing answers (a connect to it fails "no route to host" after
        # ~4 s here), and this is what the first request after its death waits before it goes to the backup
        # (at 500 ms, that GET went over a client's 0.5 s timeout); one that restarts refuses at once.
        "  timeout connect 100ms",
        # Sent again up to 30 times (each after a pause of the connect timeout): about 3 s, enough for a
        # restarted release to listen or a route to switch, and a retry goes to where the route points then
        # (the backup once live is down). Only what was never received is retried for every method; see
        # disable-l7-retry.
        "  retries 30",
        "  option redispatch 1",
        "  retry-on conn-failure empty-response",
        "  timeout client 60s",
        "  timeout server 60s",
        "  timeout http-request 10s",
        "  timeout http-keep-alive 10s",
        # A new server connection per request: after a switch no request reuses one to the old release.
        "  option http-server-close",
        "  option forwardfor",
        "",
    ]
    rules = sorted((rule for app, spec in routes.items() for rule in _rules(app, spec)), key=lambda rule: rule.rank)
    acls = list(dict.fromkeys(acl for rule in rules for acl in rule.acls))
    for index, (ip, port, tls) in enumerate(proxy.listens()):
        host = f"[{ip}]" if ":" in ip else ip
        lines.append(f"frontend listen_{index}")
        lines.append(f"  bind {host}:{port}" + (f" ssl {_certificates(proxy)}" if tls else ""))
        lines.extend(_tls_lines(proxy, tls=tls))
        lines.extend(f"  {acl}" for acl in acls)
        for rule in rules:
            lines.append(f"  use_backend {backend(rule.app)}" + (f" if {rule.condition}" if rule.condition else ""))
        lines.append("")
    for app in sorted(routes):
        spec = routes[app]
        if spec.service:
            lines += [f"backend {backend(app)}", *_balanced(spec), *slot_lines(spec, (pools or {}).get(app, ())), ""]
        else:
            lines += [
                f"backend {backend(app)}",
                *_check(spec),
                *_weighed(app, spec, live.get(app), (canaries or {}).get(app)),
                server_line((backup or {}).get(app), BACKUP),
                ONLY_GETS_AGAIN,
                "",
            ]
    return "\n".join(lines)


def _certificates(proxy: ProxySpec) -> str:
    """A TLS bind's certificates. The first one loaded is what a client without SNI (or with an unknown name) gets:
    a PEM of ``tls.certs``, else the self-signed default; ACME's come last, and never win over a PEM of
    ``tls.certs`` (no order is made for its names)."""
    tls = proxy.tls
    assert tls is not None
    if tls.acme is None:
        return f"crt {CERTS_DIR}"
    found = [f"crt {CERTS_DIR}"] if tls.certs is not None else []
    return " ".join([*found, f"crt {CONFIG_DIR}/{DEFAULT_CERT}", f"crt {CONFIG_DIR}/{ACME_DIR}"])


def _tls_lines(proxy: ProxySpec, *, tls: bool) -> list[str]:
    """A frontend's answers before any route: an ACME challenge (from the map the runtime API fills), the
    redirect of plain HTTP to https://, and HSTS on what HTTPS answers."""
    spec = proxy.tls
    if spec is None:
        return []
    found = []
    if spec.acme is not None:
        found += [
            f"  http-request set-var(txn.acme) path,field(4,/),map({CONFIG_DIR}/{CHALLENGES})"
            f" if {{ path_beg {CHALLENGE_PATH} }}",
            '  http-request return status 200 content-type text/plain lf-string "%[var(txn.acme)]"'
            " if { var(txn.acme) -m found }",
        ]
    if spec.redirect and not tls:
        secure = next((port for _, port, serves in proxy.listens() if serves), 443)
        at = "" if secure == 443 else f":{secure}"
        found.append(
            f"  http-request redirect location https://%[req.hdr(host),field(1,:)]{at}%[capture.req.uri] code 308"
            f" unless {{ path_beg {CHALLENGE_PATH} }}"
        )
    if spec.hsts is not None and tls:
        found.append(f'  http-response set-header Strict-Transport-Security "max-age={int(spec.hsts)}"')
    return found


def _balanced(spec: AppSpec) -> list[str]:
    """A service's backend settings: round robin over its tasks, each checked, a GET sent once more to another
    task when the one it went to refused it or closed without an answer (a task that Swarm stops)."""
    return ["  balance roundrobin", ONLY_GETS_AGAIN, *_check(spec), "  default-server" + CHECKS]


def _check(spec: AppSpec) -> list[str]:
    """How HAProxy checks a release: the app's ``http:`` path when it has one, else (none) a connection."""
    if spec.health is not None and spec.health.on_container and spec.health.http is not None:
        return ["  option httpchk GET " + spec.health.http, "  http-check expect status 200-399"]
    return []


def slot_lines(spec: AppSpec, members: Sequence[Server]) -> list[str]:
    """A service's server lines: its tasks first, the rest of its ``slots`` disabled."""
    return _slot_lines(slots(spec), members)


def _slot_lines(count: int, members: Sequence[Server]) -> list[str]:
    ip, port = NO_SERVER
    named = [f"  server {SLOT}{index + 1} {server.address}" for index, server in enumerate(members[:count])]
    return named + [f"  server {SLOT}{index + 1} {ip}:{port} disabled" for index in range(len(named), count)]


def with_pool(text: str, app: str, members: Sequence[Server]) -> str:
    """``text`` with a service's server lines (as many as it has) for ``members``: what runtime changes made
    of its backend, so that a proxy restarted before the next pass routes where they did."""
    lines = text.split("\n")
    try:
        start = lines.index(f"backend {backend(app)}")
    except ValueError:
        return text
    first = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(f"  server {SLOT}")), None)
    if first is None:
        return text
    end = first
    while end < len(lines) and lines[end].startswith(f"  server {SLOT}"):
        end += 1
    return "\n".join(lines[:first] + _slot_lines(end - first, members) + lines[end:])


@dataclass(frozen=True)
class Canary:
    """A rollout's new release in its app's backend, and the percent of the route's requests it gets."""

    server: Server
    weight: int


def _weighed(app: str, spec: AppSpec, live: Server | None, canary: Canary | None) -> list[str]:
    """A container app's active servers: ``live`` alone, or, with ``rollout:``, ``live`` and ``canary`` weighed
    in percents (the canary disabled between rollouts), with a cookie per release when ``sticky``."""
    if spec.rollout is None:
        return [server_line(live)]
    share = canary.weight if canary is not None else 0
    sticky = spec.rollout.sticky
    found = [f"  cookie {cookie_name(app)} insert indirect nocache httponly"] if sticky else []
    return [
        *found,
        server_line(live, weight=FULL - share, cookie=SERVER if sticky else ""),
        server_line(canary.server if canary else None, CANARY, weight=share, cookie=CANARY if sticky else ""),
    ]


def cookie_name(app: str) -> str:
    """The cookie that keeps a client on the release it got (``rollout.sticky``)."""
    return f"rcv_{app}"


def server_line(server: Server | None, name: str = SERVER, *, weight: int | None = None, cookie: str = "") -> str:
    """A container app's ``live`` server (checked), a rollout's ``canary`` (checked), or its ``warm`` backup
    (not checked: it is only used once ``live`` is down)."""
    ip, port = NO_SERVER if server is None else (server.ip, server.port)
    state = " disabled" if server is None else ""
    extra = (f" weight {weight}" if weight is not None else "") + (f" cookie {cookie}" if cookie else "")
    return f"  server {name} {ip}:{port}{extra}" + (f" backup{state}" if name == BACKUP else f"{state}{CHECKS}")


def _edit_server(text: str, app: str, name: str, edit: Callable[[str], str]) -> str:
    """``text`` (a config ``render`` wrote) with the line of ``app``'s server ``name`` as ``edit`` makes it."""
    lines = text.split("\n")
    try:
        index = lines.index(f"backend {backend(app)}") + 1
    except ValueError:
        return text
    while index < len(lines) and lines[index]:
        if lines[index].startswith(f"  server {name} "):
            lines[index] = edit(lines[index])
        index += 1
    return "\n".join(lines)


def with_server(text: str, app: str, server: Server | None, name: str = SERVER, *, weight: int | None = None) -> str:
    """``text`` (a config ``render`` wrote) with ``app``'s server ``name`` pointing at ``server`` (and at
    ``weight``, else the weight it had): what a runtime switch changed, so that a proxy restarted before
    the next pass routes where the switch did."""

    def pointed(line: str) -> str:
        words = line.split()
        had = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i] in ("weight", "cookie")}
        kept = int(had["weight"]) if "weight" in had else None
        return server_line(server, name, weight=weight if weight is not None else kept, cookie=had.get("cookie", ""))

    return _edit_server(text, app, name, pointed)


def with_weight(text: str, app: str, name: str, weight: int) -> str:
    """``text`` with the weight of ``app``'s server ``name`` set to ``weight`` (a runtime ``set weight``)."""

    def weighed(line: str) -> str:
        words = line.split(" ")
        if "weight" not in words:
            return line
        at = words.index("weight")
        return " ".join([*words[: at + 1], str(weight), *words[at + 2 :]])

    return _edit_server(text, app, name, weighed)


def with_canary(text: str, app: str, server: Server | None, weight: int) -> str:
    """``text`` with ``app``'s rollout weighed as ``Proxy.weigh`` makes it: ``canary`` at ``server`` (None: out of
    use) with ``weight``, ``live`` with the rest."""
    return with_weight(with_server(text, app, server, CANARY, weight=weight), app, SERVER, FULL - weight)


def container_hash(proxy: ProxySpec, image_id: str) -> str:
    """What shapes the proxy's container (its image and where it listens): a change recreates it."""
    blob = json.dumps(
        {
            "ref": proxy.ref,
            "image": image_id,
            "listen": list(proxy.listen),
            "certs": (proxy.tls.certs or "") if proxy.tls else "",
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def route_lines(
    desired: DesiredState,
    observed: ObservedState,
    network: str,
    switched: Mapping[str, float],
    in_flight: Mapping[str, int] | None = None,
) -> list[str]:
    """Each route and the release that serves it (with its requests in flight, when HAProxy said), and
    each warm release with the end of its window."""
    lines = []
    for app, spec in routed(desired).items():
        assert spec.route is not None
        where = ",".join(spec.route.hosts) or "*"
        flight = f", {in_flight[app]} in flight" if in_flight is not None and app in in_flight else ""
        if spec.service:
            members = pool(app, spec, observed)
            found = observed.service(app)
            version = f" {found.version}" if found is not None and found.version else ""
            tasks = f"{len(members)} task{'s' if len(members) != 1 else ''} of {app}{version}" if members else ""
            shown = f" ({', '.join(m.address for m in members)})" if members else ""
            lines.append(f"route {where} {spec.route.path_prefix} -> {tasks or 'nothing (503)'}{shown}{flight}")
            continue
        server = serving(app, spec, observed, network)
        served = "nothing (503)"
        if server is not None:
            found = observed.named(server.container)
            version = f" {found.version}" if found is not None and found.version else ""
            served = f"{server.container}{version} ({server.address})"
        lines.append(f"route {where} {spec.route.path_prefix} -> {served}{flight}")
        kept = warm(app, spec, observed, network, switched)
        if kept is not None:
            until = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(kept[1]))
            lines.append(
                f"warm  {kept[0].name} {kept[0].version} until {until}"
                f" (serves if {app} dies; a rollback to it is a switch)"
            )
    return lines


# -- what to change --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Points:
    """Where a backend's server points now, as the runtime API says."""

    ip: str
    port: int
    enabled: bool


def same(points: Points, server: Server | None) -> bool:
    """Whether a server pointing at ``points`` serves ``server`` (None: out of use)."""
    if server is None:
        return not points.enabled
    return points.enabled and points.ip == server.ip and points.port == server.port


@dataclass(frozen=True)
class Seen:
    """What was seen of the proxy's container and config before anything changes."""

    ours: bool  # a proxy container of ours exists (another's is refused before this)
    prunable: bool = False  # ours and this source's: a file without ``proxy:`` removes it
    current: bool = True  # its container hash (image, listen addresses) is the one the file asks for
    running: bool = True
    answers: bool = True  # its runtime API answers
    rerouted: bool = False  # the routes it runs differ from the file's (``routes.cfg``)
    unrouted: bool = False  # a route's backend is missing from the runtime (sync reloads for it)
    edited: bool = False  # its config differs from the one written, once the runtime's switches are in


class Do(StrEnum):
    REMOVE = "remove"  # no proxy: in the file
    START = "start"  # none of ours exists
    RECREATE = "recreate"  # its image or listen addresses changed
    REVIVE = "revive"  # runs, but its runtime API does not answer: made again
    RESTART = "restart"  # stopped: started again
    RELOAD = "reload"  # its routes changed: rewritten and reloaded (hitless)
    REWRITE = "rewrite"  # its config was edited by hand: rewritten
    SWITCH = "switch"  # a route's live server to where ``serving`` says
    BACKUP = "backup"  # a route's backup server to where ``backups`` says
    POOL = "pool"  # a service's slots to its tasks
    WEIGH = "weigh"  # a rollout's canary server and the weights of live and canary
    COOL = "cool"  # a warm release whose window passed, stopped


@dataclass(frozen=True)
class Change:
    """One change of the proxy; ``said`` words it as done (``sync``) or to do (``drift``)."""

    do: Do
    proxy: str = ""  # the proxy's container name
    what: str = ""  # its image and listen addresses, as the file says them
    app: str = ""
    server: Server | None = None
    members: tuple[Server, ...] = ()
    assigned: tuple[tuple[str, Server | None], ...] = ()  # POOL: (slot, server) as ``assign`` gives them
    cooled: ObservedContainer | None = None
    config: str = ""  # REWRITE: the config file's path
    weight: int = 0  # WEIGH: the canary's percent of the route's requests

    def said(self, *, done: bool) -> str | None:
        """The change in words, as done or to do; None where that side says nothing of it (a backup server
        pointed or a config rewritten by a pass, a release cooled by a dry run: each as it always was)."""
        served = self.server.container if self.server is not None else ""
        words: dict[Do, tuple[str | None, str | None]] = {
            Do.REMOVE: (f"removed the proxy {self.proxy} (no proxy: in the file)",
                        f"remove the proxy {self.proxy} (no proxy: in the file)"),
            Do.START: (f"started the proxy {self.proxy} ({self.what})", f"start the proxy {self.proxy} ({self.what})"),
            Do.RECREATE: (f"recreated the proxy {self.proxy} ({self.what})",
                          f"recreate the proxy {self.proxy} ({self.what}): its image or listen addresses changed"),
            Do.REVIVE: (f"recreated the proxy {self.proxy}: its runtime API did not answer (its folder or admin.sock"
                        " gone?)",
                        f"recreate the proxy {self.proxy}: its runtime API does not answer (its folder or admin.sock"
                        " gone?)"),
            Do.RESTART: (f"started the proxy {self.proxy} again", f"start the proxy {self.proxy} again"),
            Do.RELOAD: ("reloaded the proxy's config (routes changed)",
                        "rewrite and reload the proxy's config (routes changed)"),
            Do.REWRITE: (None, f"rewrite the proxy's config {self.config}: it differs from the file and what runs"
                               " (edited by hand?)"),
            Do.SWITCH: (f"{self.app}: route switched to {served or 'nothing (503)'}",
                        f"{self.app}: switch its route to {served or 'nothing (503)'}"),
            Do.BACKUP: (None, f"{self.app}: point its backup server at {served or 'nothing'}"),
            Do.POOL: (f"{self.app}: route follows its tasks: {addresses(self.members)}",
                      f"{self.app}: point its route at its tasks: {addresses(self.members)}"),
            Do.WEIGH: (f"{self.app}: {self.weight}% of its requests to {served}" if served else
                       f"{self.app}: its rollout's new release takes no request",
                       f"{self.app}: send {self.weight}% of its requests to {served}" if served else
                       f"{self.app}: take its rollout's new release out of rotation"),
            Do.COOL: (f"{self.cooled.app}: stopped the warm {self.cooled.name} ({self.cooled.version}): its window"
                      " passed" if self.cooled is not None else None, None),
        }  # fmt: skip
        return words[self.do][0 if done else 1]


def addresses(members: Sequence[Server]) -> str:
    return ", ".join(member.address for member in members) or "none (503)"


def container_change(proxy: ProxySpec | None, seen: Seen, *, name: str, config: str = "") -> list[Change]:
    """What the proxy's container (and its config) needs, first: the route changes follow it. At most one of
    remove, start, recreate and revive, each alone; a restart, then a reload or a rewrite of its config."""
    if proxy is None:
        return [Change(Do.REMOVE, name)] if seen.ours and seen.prunable else []
    what = f"{proxy.ref}, {', '.join(proxy.listen)}"
    if not seen.ours:
        return [Change(Do.START, name, what)]
    if not seen.current:
        return [Change(Do.RECREATE, name, what)]
    if seen.running and not seen.answers:
        return [Change(Do.REVIVE, name, what)]
    found = [Change(Do.RESTART, name, what)] if not seen.running else []
    if seen.rerouted or seen.unrouted:
        found.append(Change(Do.RELOAD, name, what))
    elif seen.edited:
        found.append(Change(Do.REWRITE, name, what, config=config))
    return found


def misrouted(
    wanted: Mapping[str, Server | None], points: Mapping[str, Points | None], *, backup: bool = False
) -> list[Change]:
    """The routes whose live (or backup) server does not point where ``wanted`` says: ``points`` as the runtime
    said them (an app it has no server for, or was not asked about, is left as it is)."""
    found = []
    for app, server in wanted.items():
        seen = points.get(app)
        if seen is not None and not same(seen, server):
            found.append(Change(Do.BACKUP if backup else Do.SWITCH, app=app, server=server))
    return found


def weighed(wanted: Mapping[str, Canary | None], seen: Mapping[str, Sequence[Slot]]) -> list[Change]:
    """The apps with ``rollout:`` whose ``canary`` server, or the weights of ``live`` and ``canary``, are not as
    ``wanted`` says (None: no rollout, the canary out of use and ``live`` at full weight); ``seen`` is each
    backend's servers as the runtime said them (an app not asked, or without a canary server, is left out)."""
    found = []
    for app, canary in wanted.items():
        by_name = {slot.name: slot for slot in seen.get(app, ())}
        live, look = by_name.get(SERVER), by_name.get(CANARY)
        if live is None or look is None:
            continue
        share = canary.weight if canary is not None else 0
        server = canary.server if canary is not None else None
        points = Points(look.ip, look.port, look.enabled)
        if not same(points, server) or live.weight != FULL - share or (server is not None and look.weight != share):
            found.append(Change(Do.WEIGH, app=app, server=server, weight=share))
    return found


def pool_changes(pools: Mapping[str, tuple[Server, ...]], slots: Mapping[str, Sequence[Slot]]) -> list[Change]:
    """The routed services whose slots (as the runtime said them; one not asked is left out) do not serve their
    tasks: each with the runtime changes ``assign`` makes."""
    found = []
    for app, members in pools.items():
        if app in slots and (assigned := assign(slots[app], members)):
            found.append(Change(Do.POOL, app=app, members=members, assigned=tuple(assigned)))
    return found


def changes(
    proxy: ProxySpec | None,
    seen: Seen,
    *,
    name: str,
    config: str = "",
    live: Mapping[str, Server | None] | None = None,
    live_points: Mapping[str, Points | None] | None = None,
    backups: Mapping[str, Server | None] | None = None,
    backup_points: Mapping[str, Points | None] | None = None,
    pools: Mapping[str, tuple[Server, ...]] | None = None,
    slots: Mapping[str, Sequence[Slot]] | None = None,
    canaries: Mapping[str, Canary | None] | None = None,
    weights: Mapping[str, Sequence[Slot]] | None = None,
    cool: Sequence[ObservedContainer] = (),
) -> list[Change]:
    """Every change the proxy needs, in the order ``sync`` makes them: its container (and config) first; then,
    unless the container is removed, started, recreated or revived (its new config routes as the file says),
    the live servers, the backup servers, the rollouts' weights, the services' slots, and the warm releases to
    cool."""
    first = container_change(proxy, seen, name=name, config=config)
    if any(change.do in (Do.REMOVE, Do.START, Do.RECREATE, Do.REVIVE) for change in first) or proxy is None:
        return first
    return [
        *first,
        *misrouted(live or {}, live_points or {}),
        *misrouted(backups or {}, backup_points or {}, backup=True),
        *weighed(canaries or {}, weights or {}),
        *pool_changes(pools or {}, slots or {}),
        *(Change(Do.COOL, cooled=container) for container in cool),
    ]
