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
- What to change is decided once, by ``core.proxy`` (``container_change``, ``misrouted``, ``pool_changes``,
  ``to_cool``) from what is read here: ``sync`` makes the changes, stage by stage, and ``drift`` (the dry
  run) says them (``core.proxy.changes``), reading without changing anything, pulling nothing, and leaving
  out a route the runtime API does not answer for. ``drift`` also says a config that differs from what
  ``sync`` would write (a hand edit it overwrites).
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from reconciler.adapters.acme import self_signed
from reconciler.adapters.docker import INSTANCE, LABEL, MANAGED, SOURCE, Inspected, owner_of
from reconciler.adapters.protocols import DockerEngine
from reconciler.core import proxy as core
from reconciler.core.canary import Counters
from reconciler.core.model import DesiredState, ObservedContainer, ObservedState, ProxySpec
from reconciler.errors import ProxyError, ProxyUnavailable, ReconcileError

PROXY_LABEL = f"{LABEL}.proxy"  # its container hash: image and listen addresses
LISTEN_LABEL = f"{LABEL}.proxy.listen"  # the addresses it binds, IP:PORT with commas
READY_TIMEOUT = 15.0  # seconds for a started or reloaded proxy to answer its runtime API
# srv_admin_state bits that stop traffic: forced, inherited and resolver maintenance. A server written
# ``disabled`` keeps its config bit (0x04) once ``set server ... state ready`` enabled it.
_MAINTENANCE = 0x23
T = TypeVar("T")
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; longer paths are reached through /proc/self/fd


class Proxy:
    """The proxy of one instance on one engine; see the module docstring."""

    def __init__(self, engine: DockerEngine, state_dir: Path) -> None:
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

    def ask_ok(self, command: str, expect: Sequence[str]) -> str:
        """A runtime API command whose answer holds one of ``expect`` ("": an empty answer); a ``ProxyError``
        naming the command (its first line: never a payload) and the answer otherwise."""
        answer = self.ask(command).strip()
        if any(word in answer if word else not answer for word in expect):
            return answer
        said = answer.splitlines()[0] if answer else "no answer"
        raise ProxyError(f"proxy {self.name}: {command.splitlines()[0]}: {said}")

    def write_private(self, name: str, data: bytes) -> None:
        """A key's file of the proxy's folder (``0600``), written when it differs."""
        self._write(name, data.decode(), private=True)

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

    def points(self, app: str, name: str = core.SERVER) -> core.Points | None:
        """Where ``be_APP/live`` (or its backup ``warm``) points now; None when the proxy has no such server."""
        for slot in self.slots(app):
            if slot.name == name:
                return core.Points(slot.ip, slot.port, slot.enabled)
        return None

    def slots(self, app: str) -> list[core.Slot]:
        """The servers of ``be_APP`` as the runtime API says; none when the proxy has no such backend."""
        found = []
        for line in self.ask(f"show servers state {core.backend(app)}").splitlines():
            fields = line.split()
            # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight ... srv_port is 18
            if len(fields) > 18 and fields[1] == core.backend(app):
                enabled = not int(fields[6]) & _MAINTENANCE
                found.append(core.Slot(fields[3], fields[4], int(fields[18]), enabled, int(fields[7])))
        return found

    def follow(self, desired: DesiredState, observed: ObservedState) -> list[str]:
        """Point each routed service's backend at the tasks ``observed`` lists; what changed."""
        pools = core.pools(desired, observed)
        found = core.pool_changes(pools, {app: self.slots(app) for app in pools})
        for change in found:
            self._assign(change.app, change.members, change.assigned)
        return [said for change in found if (said := change.said(done=True))]

    def pool(self, app: str, members: Sequence[core.Server]) -> bool:
        """Point a routed service's backend at ``members`` (``core.proxy.assign``); whether anything changed."""
        changes = core.assign(self.slots(app), members)
        self._assign(app, members, changes)
        return bool(changes)

    def _assign(
        self, app: str, members: Sequence[core.Server], changes: Sequence[tuple[str, core.Server | None]]
    ) -> None:
        """The runtime commands of ``changes`` (slot, server), and the config written to say so."""
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

    def weigh(self, app: str, server: core.Server | None, weight: int) -> None:
        """A rollout's weights: ``weight`` percent of ``app``'s requests to ``server`` as its ``canary``, the rest to
        ``live``; None takes the canary out at once (maintenance: a sticky client of it is sent to ``live`` too)
        and gives ``live`` the full weight."""
        backend = core.backend(app)
        if server is None:
            self._command(f"set server {backend}/{core.CANARY} state maint")
            self._command(f"set weight {backend}/{core.CANARY} 0")
            self._command(f"set weight {backend}/{core.SERVER} {core.FULL}")
        else:
            self._command(f"set server {backend}/{core.CANARY} addr {server.ip} port {server.port}")
            self._command(f"set server {backend}/{core.CANARY} health up")  # it passed its gate: it serves at once
            self._command(f"set weight {backend}/{core.SERVER} {core.FULL - weight}")
            self._command(f"set weight {backend}/{core.CANARY} {weight}")
            self._command(f"set server {backend}/{core.CANARY} state ready")
        with self._switching:
            config = _read(self.dir / core.CONFIG_FILE)
            if config is not None:
                self._write(core.CONFIG_FILE, core.with_canary(config, app, server, weight if server else 0))

    def counters(self, app: str) -> dict[str, Counters]:
        """The answers of each server of ``be_APP`` as ``show stat`` counts them (``core.canary.Counters``)."""
        found: dict[str, Counters] = {}
        codes = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
        for row in self._stat(f"show stat {core.backend(app)} 4 -1"):
            if row.get("pxname") == core.backend(app):
                responses = sum(int(row.get(code) or 0) for code in codes)
                found[row["svname"]] = Counters(responses, int(row.get("hrsp_5xx") or 0), int(row.get("rtime") or 0))
        return found

    def _stat(self, command: str) -> list[dict[str, str]]:
        """The rows of a ``show stat`` answer (CSV under a ``# name,...`` header), by column name."""
        lines = self.ask(command).splitlines()
        header = lines[0].lstrip("# ").split(",") if lines else []
        return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]

    def _command(self, command: str) -> None:
        answer = self.ask(command).strip()
        if answer and not any(word in answer for word in ("changed", "no need to change")):
            raise ProxyError(f"proxy {self.name}: {command}: {answer.splitlines()[0]}")

    def sessions(self) -> dict[str, int]:
        """Requests in flight per routed app (``show stat``'s current sessions of its backend)."""
        found: dict[str, int] = {}
        for row in self._stat("show stat -1 2 -1"):
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

    def sync(
        self,
        desired: DesiredState,
        observed: ObservedState,
        *,
        now: float | None = None,
        canaries: Mapping[str, core.Canary | None] | None = None,
    ) -> list[str]:
        """Make the proxy match the file and what runs (see the module docstring); what it changed. Each stage
        is decided by ``core.proxy`` on what the one before it left: the container, then the live servers,
        the backup servers, the rollouts' weights (``canaries``: each app with ``rollout:``, its new release and
        weight or None; an app left out keeps what it has), the services' slots and the warm releases to cool."""
        spec = desired.proxy
        found = self.engine.inspect(self.name)
        if spec is None:
            prunable = found is not None and self._prunable(found, desired)
            seen = core.Seen(ours=found is not None, prunable=prunable)
            removal = core.container_change(None, seen, name=self.name)
            if removal and found is not None:
                self.engine.remove(found.id, self.name)
                self.engine.remove_network(self.network)
            return [said for change in removal if (said := change.said(done=True))]
        self._local()
        ours = self._ours(found, desired)
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
        config = core.render(
            spec, core.routed(desired), live, pools=pools, backup=backups, canaries=canaries, uid=os.getuid()
        )
        self._write(core.CONFIG_FILE, config)
        self._tls_files(spec)
        wanted = core.container_hash(spec, self._image(spec.ref))
        current = found is None or found.labels.get(PROXY_LABEL) == wanted
        # Asked only of a proxy that runs as the file says, in that order: each look needs the one before.
        answers = not (ours and current and found is not None and found.running) or self._answering()
        runs = found is not None and found.running and current and answers
        unrouted = runs and (any(self.points(app) is None for app in live) or any(not self.slots(app) for app in pools))
        seen = core.Seen(
            ours=ours, current=current, running=found is not None and found.running, answers=answers,
            rerouted=rerouted, unrouted=unrouted,
        )  # fmt: skip
        first = core.container_change(spec, seen, name=self.name)
        done = [said for change in first[:1] if (said := change.said(done=True))]
        kinds = {change.do for change in first}
        if found is not None and core.Do.RECREATE in kinds:
            # Checked before the proxy that serves goes: a new address someone else holds changes nothing.
            self._check_free(spec, keep=found.labels.get(LISTEN_LABEL, "").split(","))
        if found is not None and kinds & {core.Do.RECREATE, core.Do.REVIVE}:
            # REVIVE: its folder (or admin socket) was removed under it: the runtime API is out of reach and
            # its bind mount holds a folder that is gone; or it restarts for ever (its port taken: ``_create``
            # names the holder). It is ours: made again from the file and what runs.
            self.engine.remove(found.id, self.name)
            found = None
        if found is None or not found.running:
            self._write(core.CONFIG_FILE, config)  # again: the folder may have gone since (``rm -rf STATE``)
            self._tls_files(spec)
        if found is None:
            self._create(spec, wanted, desired)
        elif core.Do.RESTART in kinds:
            self._check_free(spec)  # named now, not after a start that waits for a port it cannot bind
            self._start(found.id, spec)
        elif core.Do.RELOAD in kinds:
            self.reload()
        self._write(core.ROUTES_FILE, routes)
        switches = core.misrouted(live, {app: self.points(app) for app in live})
        for change in switches:
            self.switch(change.app, change.server)
        # Before a warm release is cooled: the backup no longer points at it once its window has passed.
        for change in core.misrouted(backups, {app: self.points(app, core.BACKUP) for app in backups}, backup=True):
            self._point(change.app, core.BACKUP, change.server)
        weights = core.weighed(canaries or {}, {app: self.slots(app) for app in canaries or {}})
        for change in weights:
            self.weigh(change.app, change.server, change.weight)
        done += [said for change in [*switches, *weights] if (said := change.said(done=True))]
        done += self.follow(desired, observed)
        for container in core.to_cool(desired, observed, self.network, self.switched(), now):
            if container.id in self.cooling:
                continue  # stopping since this pass's first sync
            self._cool(container)
            said = core.Change(core.Do.COOL, cooled=container).said(done=True)
            done += [said] if said else []
        return done

    def _tls_files(self, spec: ProxySpec) -> None:
        """What the config names for ACME, before HAProxy reads it: the self-signed default certificate (made
        once), the folder of ACME's certificates and the map of HTTP-01 challenges (empty: the runtime API
        fills it while an order runs)."""
        if spec.tls is None or spec.tls.acme is None:
            return
        default = self.dir / core.DEFAULT_CERT
        if not default.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            self._write(core.DEFAULT_CERT, self_signed().decode(), private=True)
        (self.dir / core.ACME_DIR).mkdir(mode=0o700, exist_ok=True)
        if not (self.dir / core.CHALLENGES).exists():
            self._write(core.CHALLENGES, "")

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

    def drift(
        self,
        desired: DesiredState,
        observed: ObservedState,
        *,
        canaries: Mapping[str, core.Canary | None] | None = None,
    ) -> list[str]:
        """What ``sync`` would change (``core.proxy.changes``), read without changing anything (for a dry run):
        nothing is pulled, and a route the runtime API does not answer for is left out."""
        spec = desired.proxy
        found = self.engine.inspect(self.name)
        if spec is None:
            prunable = found is not None and self._prunable(found, desired)
            seen = core.Seen(ours=found is not None, prunable=prunable)
            return [said for change in core.changes(None, seen, name=self.name) if (said := change.said(done=False))]
        self._local()
        ours = self._ours(found, desired) and found is not None
        current = (
            ours
            and found is not None
            and found.labels.get(PROXY_LABEL) == core.container_hash(spec, self._local_image(spec.ref))
        )
        running = found is not None and found.running
        # Each look only when the one before it leaves something to say: a stopped proxy's API is not asked.
        answers = not (ours and current and running) or self.answers()
        live = core.servers(desired, observed, self.network)
        backups = core.backups(desired, observed, self.network, self.switched(), time.time())
        pools = core.pools(desired, observed)
        look = ours and current and answers
        asked = look and running
        live_points = self._quietly(lambda app: self.points(app), live) if asked else {}
        backup_points = self._quietly(lambda app: self.points(app, core.BACKUP), backups) if asked else {}
        slots = self._quietly(self.slots, pools) if asked else {}
        weights = self._quietly(self.slots, canaries or {}) if asked else {}
        edited = False
        if look:
            # The config as the switches of the next pass leave it: what differs then was edited by hand.
            config = _read(self.dir / core.CONFIG_FILE)
            for name, wrong in (
                (core.SERVER, core.misrouted(live, live_points)),
                (core.BACKUP, core.misrouted(backups, backup_points)),
            ):
                for change in wrong:
                    config = None if config is None else core.with_server(config, change.app, change.server, name)
            for change in core.weighed(canaries or {}, weights):
                config = None if config is None else core.with_canary(config, change.app, change.server, change.weight)
            rendered = core.render(
                spec, core.routed(desired), live, pools=pools, backup=backups, canaries=canaries, uid=os.getuid()
            )
            edited = config != rendered
        seen = core.Seen(
            ours=ours, current=current, running=running, answers=answers,
            rerouted=look and _read(self.dir / core.ROUTES_FILE) != _routes(desired, spec), edited=edited,
        )  # fmt: skip
        found_changes = core.changes(
            spec, seen, name=self.name, config=str(self.dir / core.CONFIG_FILE), live=live, live_points=live_points,
            backups=backups, backup_points=backup_points, pools=pools, slots=slots, canaries=canaries, weights=weights,
        )  # fmt: skip
        return [said for change in found_changes if (said := change.said(done=False))]

    @staticmethod
    def _quietly(read: Callable[[str], T], apps: Mapping[str, object]) -> dict[str, T]:
        """``read`` of each app, leaving out those the runtime API does not answer for (a dry run does not fail
        on a runtime API that is away)."""
        found = {}
        for app in apps:
            with contextlib.suppress(ProxyError):
                found[app] = read(app)
        return found

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

    def _write(self, name: str, text: str, *, private: bool = False) -> bool:
        """Write a file of the proxy's folder when it differs (atomically: a reload never reads half a file);
        ``private``: ``0600`` (a key)."""
        path = self.dir / name
        if _read(path) == text:
            return False
        self.dir.mkdir(parents=True, exist_ok=True)  # removed under a running agent: made again, not a crash
        scratch = path.with_name(path.name + ".new")
        scratch.unlink(missing_ok=True)
        with os.fdopen(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644), "w") as out:
            out.write(text)
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
        if spec.tls is not None and spec.tls.certs is not None:
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
