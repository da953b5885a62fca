"""The proxy of routed apps on this engine: an HAProxy container that reconcile runs, and its runtime API.

Guarantees:
- The proxy is a container of ours (``reconciler-proxy``, or ``reconciler-proxy-INSTANCE``), labelled like
  an app's, in the host's network namespace: it binds exactly ``proxy.listen`` and reaches routed apps
  by their address on the instance's bridge network (routed apps publish no host port). Its config
  and admin socket live in ``STATE/proxy-INSTANCE/``, mounted at the image's config folder.
- ``sync`` makes the proxy match the file and what runs, whatever happened to it: a proxy that is gone
  or stopped is started again, one whose image or listen addresses changed is recreated, so is one whose
  runtime API does not answer (its folder or admin socket removed under it: ``rm -rf STATE``), a config that
  differs from ``core.proxy.render`` is rewritten and reloaded hitlessly (HAProxy master-worker with
  ``expose-fd listeners``: the new worker takes the listening sockets, old connections finish), and a
  route whose runtime address is not the one ``core.proxy.serving`` names is switched. It also cools
  warm releases whose window has passed, without waiting for them to stop (``cooling``; ``settle``
  waits): the deploys of the pass do not wait a stop_timeout. A file without ``proxy:`` removes our proxy.
- A routed service's backend follows its tasks (``pool``: runtime API commands, no reload), at each pass
  and at each look of a rollout's gate; a change in its number of slots (a scale) is a hitless reload.
- A switch (``switch``) is one runtime API command: no reload, no dropped request. It is made only
  after the new worker of a reload answers, so it never lands in a worker that is going away. The
  backup server of a route (``core.proxy.backups``: the warm release, else the live one's address) is
  pointed by runtime commands too, at the switch (the release switched away from) and at each ``sync``,
  before a warm release whose window passed is cooled.
- A listen address that something else holds is a ``ProxyError`` naming the holder, raised before
  anything changes (also before a stopped proxy is started again); so is a proxy that exits at start
  (its last log lines say why). A runtime API that does not answer is ``ProxyUnavailable``: an outage,
  not a verdict on the release being switched to.
- ``drift`` also says a config that differs from what ``sync`` would write (a hand edit it overwrites).
- Nothing here prints an env value: the proxy's config holds addresses and names only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.adapters.docker import INSTANCE, LABEL, MANAGED, SOURCE, Engine, Inspected, owner_of
from reconciler.core import proxy as core
from reconciler.core.model import DesiredState, ObservedContainer, ObservedState, ProxySpec
from reconciler.errors import ProxyError, ProxyUnavailable, ReconcileError

PROXY_LABEL = f"{LABEL}.proxy"  # its container hash: image and listen addresses
LISTEN_LABEL = f"{LABEL}.proxy.listen"  # the addresses it binds, IP:PORT with commas
READY_TIMEOUT = 15.0  # seconds for a started or reloaded proxy to answer its runtime API
# srv_admin_state bits that stop traffic: forced, inherited and resolver maintenance. A server written
# ``disabled`` keeps its config bit (0x04) once ``set server ... state ready`` enabled it.
_MAINTENANCE = 0x23
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; longer paths are reached through /proc/self/fd


@dataclass(frozen=True)
class Points:
    """Where a backend's server points now, as the runtime API says."""

    ip: str
    port: int
    enabled: bool


class Proxy:
    """The proxy of one instance on one engine; see the module docstring."""

    def __init__(self, engine: Engine, state_dir: Path) -> None:
        self.engine = engine
        self.name = core.proxy_container(engine.instance)
        self.network = core.proxy_network(engine.instance)
        self.dir = state_dir.resolve() / f"proxy-{engine.instance}"
        self._switching = threading.Lock()  # deploys of a pass switch routes at once; one writes the file
        self.cooling: set[str] = set()  # ids of warm releases being stopped (``_cool``): no rollback target now
        self._coolers: list[threading.Thread] = []

    # -- the runtime API ---------------------------------------------------------------------------

    def ask(self, command: str, *, timeout: float = 5.0) -> str:
        """One runtime API command over the admin socket; its answer."""
        path = self.dir / core.ADMIN_SOCKET
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                if len(str(path)) > _SOCKET_PATH_MAX:
                    folder = os.open(self.dir, os.O_PATH)
                    try:
                        sock.connect(f"/proc/self/fd/{folder}/{core.ADMIN_SOCKET}")
                    finally:
                        os.close(folder)
                else:
                    sock.connect(str(path))
                sock.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise ProxyUnavailable(
                f"proxy {self.name}: its runtime API does not answer ({exc.strerror or exc})"
            ) from None
        return b"".join(chunks).decode(errors="replace")

    def answers(self) -> bool:
        try:
            return "Pid:" in self.ask("show info", timeout=1.0)
        except ProxyError:
            return False

    def worker(self) -> int:
        """The pid of the worker that answers the runtime API (a reload starts a new one)."""
        for line in self.ask("show info").splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        return 0

    def points(self, app: str, name: str = core.SERVER) -> Points | None:
        """Where ``be_APP/live`` (or its backup ``warm``) points now; None when the proxy has no such server."""
        for slot in self.slots(app):
            if slot.name == name:
                return Points(slot.ip, slot.port, slot.enabled)
        return None

    def slots(self, app: str) -> list[core.Slot]:
        """The servers of ``be_APP`` as the runtime API says; none when the proxy has no such backend."""
        found = []
        for line in self.ask(f"show servers state {core.backend(app)}").splitlines():
            fields = line.split()
            # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ... srv_port is field 18
            if len(fields) > 18 and fields[1] == core.backend(app):
                found.append(core.Slot(fields[3], fields[4], int(fields[18]), not int(fields[6]) & _MAINTENANCE))
        return found

    def follow(self, desired: DesiredState, observed: ObservedState) -> list[str]:
        """Point each routed service's backend at the tasks ``observed`` lists; what changed."""
        return [
            f"{app}: route follows its tasks: {_addresses(members)}"
            for app, members in core.pools(desired, observed).items()
            if self.pool(app, members)
        ]

    def pool(self, app: str, members: Sequence[core.Server]) -> bool:
        """Point a routed service's backend at ``members`` (``core.proxy.assign``); whether anything changed."""
        changes = core.assign(self.slots(app), members)
        for name, server in changes:
            target = f"{core.backend(app)}/{name}"
            if server is None:
                self._command(f"set server {target} state maint")
            else:
                self._command(f"set server {target} addr {server.ip} port {server.port}")
                # Swarm counts a task as running once its healthcheck passed: it serves at once, and
                # HAProxy's own checks go on from there (a slot that was disabled would wait for one).
                self._command(f"set server {target} health up")
                self._command(f"set server {target} state ready")
        if changes:
            with self._switching:
                config = _read(self.dir / core.CONFIG_FILE)
                if config is not None:
                    self._write(core.CONFIG_FILE, core.with_pool(config, app, members))
        return bool(changes)

    def switch(self, app: str, server: core.Server | None) -> None:
        """Point ``app``'s route at ``server`` (None: nothing serves it, its backup neither; HAProxy answers
        503). The release switched away from becomes the backup (it is warm now; ``sync`` then points the
        backup where ``core.proxy.backups`` says); with none, the backup is ``server`` itself."""
        before = {slot.name: slot for slot in self.slots(app)}  # one read: live and backup as they were
        self._point(app, core.SERVER, server)
        with self._switching:
            switched = self.switched()
            switched[app] = time.time()
            self._write(core.SWITCHED_FILE, json.dumps(switched, sort_keys=True))
        live, backup = before.get(core.SERVER), before.get(core.BACKUP)
        if server is None:
            self._point(app, core.BACKUP, None)
        elif live is not None and live.enabled and live.address != server.address:
            self._point(app, core.BACKUP, core.Server("", live.ip, live.port))
        elif backup is not None and not backup.enabled:
            self._point(app, core.BACKUP, server)

    def _point(self, app: str, name: str, server: core.Server | None) -> None:
        """Point server ``name`` of ``app``'s backend at ``server`` (None: out of use), and say so in the config."""
        target = f"{core.backend(app)}/{name}"
        if server is None:
            self._command(f"set server {target} state maint")
        else:
            self._command(f"set server {target} addr {server.ip} port {server.port}")
            if name == core.SERVER:
                # It passed its gate (or it serves already): it serves at once, not after HAProxy's first check,
                # even when the release it replaces had been marked down.
                self._command(f"set server {target} health up")
            self._command(f"set server {target} state ready")
        with self._switching:
            config = _read(self.dir / core.CONFIG_FILE)
            if config is not None:
                self._write(core.CONFIG_FILE, core.with_server(config, app, server, name))

    def switched(self) -> dict[str, float]:
        """When each route last switched (``core.proxy.warm`` counts a warm window from then)."""
        try:
            data = json.loads(_read(self.dir / core.SWITCHED_FILE) or "{}")
        except ValueError:
            return {}
        return {str(app): float(at) for app, at in data.items()} if isinstance(data, dict) else {}

    def _command(self, command: str) -> None:
        answer = self.ask(command).strip()
        if answer and not any(word in answer for word in ("changed", "no need to change")):
            raise ProxyError(f"proxy {self.name}: {command}: {answer.splitlines()[0]}")

    def sessions(self) -> dict[str, int]:
        """Requests in flight per routed app (``show stat``'s current sessions of its backend)."""
        found: dict[str, int] = {}
        lines = self.ask("show stat -1 2 -1").splitlines()
        header = lines[0].lstrip("# ").split(",") if lines else []
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname", "").startswith("be_") and row.get("svname") == "BACKEND":
                found[row["pxname"].removeprefix("be_")] = int(row.get("scur") or 0)
        return found

    # -- the container -------------------------------------------------------------------------------

    def _ours(self, found: Inspected | None, desired: DesiredState) -> bool:
        """Whether ``found`` is our proxy, deployed by this source; another source's is a ``ProxyError``."""
        if found is None:
            return False
        if not (found.ours and found.labels.get(PROXY_LABEL)):
            raise ProxyError(
                f"container {self.name} exists and was not created by reconciler; remove or rename it"
                " (reconciler runs its proxy under that name)"
            )
        owner = owner_of(found.labels)
        if desired.source is not None and owner is not None and not desired.source.same(owner):
            raise ProxyError(
                f"the proxy {self.name} is run by another source: {owner.describe()}; one proxy serves one source"
                " per instance (give this one its own --instance)"
            )
        return True

    @staticmethod
    def _prunable(found: Inspected, desired: DesiredState) -> bool:
        """Our proxy, deployed by this source (or before proxies recorded one): a file without ``proxy:``
        removes it. Another source's proxy is that source's business."""
        if not (found.ours and found.labels.get(PROXY_LABEL)):
            return False
        owner = owner_of(found.labels)
        return desired.source is None or owner is None or desired.source.same(owner)

    def sync(self, desired: DesiredState, observed: ObservedState, *, now: float | None = None) -> list[str]:
        """Make the proxy match the file and what runs (see the module docstring); what it changed."""
        spec = desired.proxy
        found = self.engine.inspect(self.name)
        if spec is None:
            if found is not None and self._prunable(found, desired):
                self.engine.remove(found.id, self.name)
                self.engine.remove_network(self.network)
                return [f"removed the proxy {self.name} (no proxy: in the file)"]
            return []
        self._local()
        running = self._ours(found, desired)
        done: list[str] = []
        self.engine.ensure_network(self.network)
        self.dir.mkdir(parents=True, exist_ok=True)
        now = time.time() if now is None else now
        live = core.servers(desired, observed, self.network)
        backups = core.backups(desired, observed, self.network, self.switched(), now)
        pools = core.pools(desired, observed)
        routes = _routes(desired, spec)
        # The routes decide a reload (``routes.cfg`` is written once the proxy runs them); the addresses in
        # the config only follow the runtime's switches.
        rerouted = _read(self.dir / core.ROUTES_FILE) != routes
        config = core.render(spec, core.routed(desired), live, pools=pools, backup=backups, uid=os.getuid())
        self._write(core.CONFIG_FILE, config)
        image_id = self._image(spec.ref)
        wanted = core.container_hash(spec, image_id)
        if running and found is not None and found.labels.get(PROXY_LABEL) != wanted:
            # Checked before the proxy that serves goes: a new address someone else holds changes nothing.
            self._check_free(spec, keep=found.labels.get(LISTEN_LABEL, "").split(","))
            self.engine.remove(found.id, self.name)
            done.append(f"recreated the proxy {self.name} ({_what(spec)})")
            found = None
        elif found is not None and found.running and not self._answering():
            # Its folder (or admin socket) was removed under it: the runtime API is out of reach and its bind
            # mount holds a folder that is gone; or it restarts for ever (its port taken: ``_create`` names the
            # holder). It is ours: made again from the file and what runs.
            self.engine.remove(found.id, self.name)
            done.append(
                f"recreated the proxy {self.name}: its runtime API did not answer (its folder or admin.sock gone?)"
            )
            found = None
        if found is None or not found.running:
            self._write(core.CONFIG_FILE, config)  # again: the folder may have gone since (``rm -rf STATE``)
        if found is None:
            self._create(spec, wanted, desired)
            if not done:
                done.append(f"started the proxy {self.name} ({_what(spec)})")
        elif not found.running:
            self._check_free(spec)  # named now, not after a start that waits for a port it cannot bind
            self._start(found.id, spec)
            done.append(f"started the proxy {self.name} again")
        elif rerouted or any(self.points(app) is None for app in live) or any(not self.slots(app) for app in pools):
            self.reload()
            done.append("reloaded the proxy's config (routes changed)")
        self._write(core.ROUTES_FILE, routes)
        for app, server in self._misrouted(live):
            self.switch(app, server)
            done.append(f"{app}: route switched to {server.container if server else 'nothing (503)'}")
        # Before a warm release is cooled: the backup no longer points at it once its window has passed.
        for app, server in self._misrouted(backups, core.BACKUP):
            self._point(app, core.BACKUP, server)
        done += self.follow(desired, observed)
        for container in core.to_cool(desired, observed, self.network, self.switched(), now):
            if container.id in self.cooling:
                continue  # stopping since this pass's first sync
            self._cool(container)
            done.append(f"{container.app}: stopped the warm {container.name} ({container.version}): its window passed")
        return done

    def _answering(self) -> bool:
        """Whether the runtime API answers, given a moment (a proxy the engine just restarted binds it soon)."""
        deadline = time.monotonic() + 2.0
        while not self.answers():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def _cool(self, container: ObservedContainer) -> None:
        """Stop a warm release in a thread of its own: out of rotation since its window began, it has nothing
        to finish, and the pass goes on meanwhile. A stop the engine refuses (it is gone) is no trouble."""

        def stop() -> None:
            with contextlib.suppress(ReconcileError):
                self.engine.stop(container.id, container.name, container.stop_timeout)

        self.cooling.add(container.id)
        thread = threading.Thread(target=stop, name=f"cool {container.name}", daemon=True)
        self._coolers.append(thread)
        thread.start()

    def settle(self) -> None:
        """Wait until the warm releases this proxy cooled have stopped (a one-shot run, before it exits)."""
        for thread in self._coolers:
            thread.join()

    def drift(self, desired: DesiredState, observed: ObservedState) -> list[str]:
        """What ``sync`` would change, read without changing anything (for a dry run)."""
        spec = desired.proxy
        found = self.engine.inspect(self.name)
        if spec is None:
            prunable = found is not None and self._prunable(found, desired)
            return [f"remove the proxy {self.name} (no proxy: in the file)"] if prunable else []
        self._local()
        if not self._ours(found, desired) or found is None:
            return [f"start the proxy {self.name} ({_what(spec)})"]
        said: list[str] = []
        if found.labels.get(PROXY_LABEL) != core.container_hash(spec, self._local_image(spec.ref)):
            return [f"recreate the proxy {self.name} ({_what(spec)}): its image or listen addresses changed"]
        if not found.running:
            said.append(f"start the proxy {self.name} again")
        elif not self.answers():
            return [f"recreate the proxy {self.name}: its runtime API does not answer (its folder or admin.sock gone?)"]
        live = core.servers(desired, observed, self.network)
        backups = core.backups(desired, observed, self.network, self.switched(), time.time())
        pools = core.pools(desired, observed)
        misrouted = self._misrouted(live, quiet=True) if found.running else []
        misbacked = self._misrouted(backups, core.BACKUP, quiet=True) if found.running else []
        # The config as the switches of the next pass leave it: what differs then was edited by hand.
        config = _read(self.dir / core.CONFIG_FILE)
        for name, wrong in ((core.SERVER, misrouted), (core.BACKUP, misbacked)):
            for app, server in wrong:
                config = None if config is None else core.with_server(config, app, server, name)
        if _read(self.dir / core.ROUTES_FILE) != _routes(desired, spec):
            said.append("rewrite and reload the proxy's config (routes changed)")
        elif config != core.render(spec, core.routed(desired), live, pools=pools, backup=backups, uid=os.getuid()):
            said.append(
                f"rewrite the proxy's config {self.dir / core.CONFIG_FILE}: it differs from the file and what runs"
                " (edited by hand?)"
            )
        for app, server in misrouted:
            said.append(f"{app}: switch its route to {server.container if server else 'nothing (503)'}")
        for app, server in misbacked:
            said.append(f"{app}: point its backup server at {server.container if server else 'nothing'}")
        for app, members in pools.items() if found.running else []:
            with contextlib.suppress(ProxyError):  # a dry run does not fail on a runtime API that is away
                if core.assign(self.slots(app), members):
                    said.append(f"{app}: point its route at its tasks: {_addresses(members)}")
        return said

    def _misrouted(
        self, live: Mapping[str, core.Server | None], name: str = core.SERVER, *, quiet: bool = False
    ) -> list[tuple[str, core.Server | None]]:
        """The routes whose runtime address (of server ``name``) is not the one in ``live`` (``quiet``: a route
        the runtime API does not answer for is left out, as a dry run must not fail on it)."""
        wrong = []
        for app, server in live.items():
            try:
                points = self.points(app, name)
            except ProxyError:
                if not quiet:
                    raise
                continue
            if points is not None and not _same(points, server):
                wrong.append((app, server))
        return wrong

    def _local(self) -> None:
        """The proxy's config and admin socket are files here: its engine must run on this machine."""
        if not self.engine.local:
            raise ProxyError(
                f"proxy: needs the Docker engine on this machine (not {self.engine.host}): its config and admin"
                " socket are files of the state directory; run reconcile (or its agent) on the server"
            )

    def reload(self) -> None:
        """Hitless: the master starts a new worker on the new config; wait until that worker answers."""
        before = self.worker()
        self.engine.kill(self.name, self.name, "SIGUSR2")
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(ProxyError, ValueError):
                if self.worker() not in (0, before):
                    return
            time.sleep(0.02)
        raise ProxyError(f"proxy {self.name}: no new worker {READY_TIMEOUT:.0f} s after a reload: {self._last_words()}")

    def _write(self, name: str, text: str) -> bool:
        """Write a file of the proxy's folder when it differs (atomically: a reload never reads half a file)."""
        path = self.dir / name
        if _read(path) == text:
            return False
        self.dir.mkdir(parents=True, exist_ok=True)  # removed under a running agent: made again, not a crash
        scratch = path.with_name(path.name + ".new")
        scratch.write_text(text)
        scratch.replace(path)
        return True

    def _image(self, ref: str) -> str:
        # Not here: pulled, and a pull's own error says why.
        return self._local_image(ref) or self.engine.pull(ref)

    def _local_image(self, ref: str) -> str:
        """The id of ``ref`` on the engine, or "" when it is not there (nothing is pulled)."""
        return self.engine.image_id(ref)

    def _check_free(self, spec: ProxySpec, *, keep: Sequence[str] = ()) -> None:
        """A ``ProxyError`` naming the holder of a listen address (``keep``: ours already, not checked)."""
        taken = self._holders([item for item in spec.listens() if f"{item[0]}:{item[1]}" not in keep])
        if taken:
            raise ProxyError(f"proxy.listen: {'; '.join(taken)}; free it or listen elsewhere")

    def _holders(self, spec_listen: list[tuple[str, int, bool]]) -> list[str]:
        """Who holds a listen address, checked before the proxy starts (this host's engine only)."""
        taken = []
        for ip, port, _ in spec_listen:
            owners = [name for name in self.engine.publishers(port) if name != self.name]
            if owners:
                taken.append(f"{ip}:{port} is published by container {', '.join(owners)}")
                continue
            if not self.engine.local:
                continue
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((ip, port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        taken.append(f"{ip}:{port} is taken by {_listener(port)}")
        return taken

    def _create(self, spec: ProxySpec, wanted: str, desired: DesiredState) -> None:
        self._check_free(spec)
        listen = ",".join(f"{ip}:{port}" for ip, port, _ in spec.listens())
        labels = {MANAGED: "true", INSTANCE: self.engine.instance, PROXY_LABEL: wanted, LISTEN_LABEL: listen}
        if desired.source is not None:
            labels.update({f"{SOURCE}.{key}": value for key, value in desired.source.model_dump().items()})
        binds = [f"{self.dir}:{core.CONFIG_DIR}:rw"]
        if spec.tls is not None:
            binds += self.engine.held_binds(self.name, [f"{spec.tls.certs}:{core.CERTS_DIR}:ro"], desired.limits)
        created = self.engine.create_in_host_network(
            self.name,
            image=spec.ref,
            entrypoint=["haproxy"],
            command=["-W", "-db", "-f", f"{core.CONFIG_DIR}/{core.CONFIG_FILE}"],
            user="0",  # binds :80 and :443 in the host's namespace; the official image is USER haproxy
            labels=labels,
            binds=binds,
        )
        self._start(created, spec)

    def _start(self, container_id: str, spec: ProxySpec) -> None:
        (self.dir / core.ADMIN_SOCKET).unlink(missing_ok=True)
        self.engine.start(container_id, self.name)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.answers():
                return
            found = self.engine.inspect(self.name)
            if found is None or not found.running or found.restarting:
                break
            time.sleep(0.05)
        raise ProxyError(f"proxy {self.name} ({spec.ref}) did not start: {self._last_words()}")

    def _last_words(self) -> str:
        try:
            lines = [line for line in self.engine.logs(self.name, tail=5).splitlines() if line.strip()]
        except ReconcileError:  # the logs only explain; the failure is reported anyway
            return "(no logs)"
        return " / ".join(lines[-3:]) or "(no logs)"


def _routes(desired: DesiredState, spec: ProxySpec) -> str:
    """The config as rendered with no server: what decides a reload (the addresses follow switches, a
    service's tasks the runtime API; its number of slots is a route's shape)."""
    return core.render(spec, core.routed(desired), {}, uid=os.getuid())


def _addresses(members: Sequence[core.Server]) -> str:
    return ", ".join(member.address for member in members) or "none (503)"


def _what(spec: ProxySpec) -> str:
    return f"{spec.ref}, {', '.join(spec.listen)}"


def _same(points: Points, server: core.Server | None) -> bool:
    if server is None:
        return not points.enabled
    return points.enabled and points.ip == server.ip and points.port == server.port


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _listener(port: int) -> str:
    """The process that listens on ``port`` on this host, by the socket inode /proc lists (root sees all)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f"process {pid} ({comm})"
    return "another process"
