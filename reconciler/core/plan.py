"""plan(desired, resolutions, observed) -> Plan: what to do to each container, and why. Pure.

Guarantees:
- Only containers that carry our labels are ever the subject of a change; a container with an app's
  name that is not ours is a ``conflict`` (touched only with ``adopt``).
- Only containers of the desired state's own source (repository, branch, file) are changed or pruned.
  An app's container deployed by another source is a ``conflict`` (taken over only with ``adopt``); a
  container of another source whose app is not in the file is left alone with a ``Note`` (pruned only
  with ``prune_foreign``). A container deployed before containers carried their source counts as this
  source's, with a ``Note`` saying how to label it (``relabel`` redeploys it with the label).
- Every action carries its reasons as ``Change(field, was, now)``; env changes name keys, never values;
  secrets are named by their target, never shown (``secret db_password: as deployed -> contents changed``).
- A stale ``APP.next`` or ``APP.release`` (an interrupted deploy, a release command cut short) is removed
  before the app is deployed again (never the ``APP.next`` of a weighted rollout under way: ``rolling``);
  a job (``AppSpec.completes``) that exited 0 is not started again.
- An app whose image could not be resolved gets an ``error`` action and no change.
- Planning the state that results from applying a plan (``simulate``) gives a plan with no changes.
- ``port_waits`` names, for each app a plan deploys, the other apps of the plan whose running container
  holds a host port its new release publishes (two apps that swap ports): its start waits for their stop.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from reconciler.core import swarm
from reconciler.core.fields import format_size
from reconciler.core.model import (
    AppSpec,
    DesiredState,
    ObservedContainer,
    ObservedState,
    Owner,
    Role,
    container_name,
    parse_port,
    secret_hash,
)
from reconciler.core.stack import SopsRef


class ActionKind(StrEnum):
    CREATE = "create"
    REPLACE = "replace"
    START = "start"
    REMOVE = "remove"
    CONFLICT = "conflict"
    ERROR = "error"

    @property
    def changes(self) -> bool:
        """True for kinds that change the engine; conflicts and errors are only reported."""
        return self in (ActionKind.CREATE, ActionKind.REPLACE, ActionKind.START, ActionKind.REMOVE)


@dataclass(frozen=True)
class Resolution:
    """Where an app's ``image:version`` points. ``image_id`` is empty when the image is not local yet."""

    ref: str  # what to pull or create from: repo:tag or repo@sha256:...
    image_id: str = ""  # local image id (config digest) once present
    digest: str = ""  # registry manifest digest, when known
    error: str = ""  # why it could not be resolved (tag not found, no stable version, ...)

    @property
    def identity(self) -> str:
        """What the image *is*, the same before and after a pull: the registry digest, else the local id."""
        return self.digest or self.image_id


@dataclass(frozen=True)
class Change:
    field: str
    was: str
    now: str

    def __str__(self) -> str:
        return f"{self.field}: {self.was} -> {self.now}"


@dataclass(frozen=True)
class Target:
    """Everything apply needs to create an app's container."""

    app: str
    spec: AppSpec
    resolution: Resolution
    fingerprint: Mapping[str, Any]
    revision: str
    source: Owner | None = None

    @property
    def spec_hash(self) -> str:
        """Identity of the release of this app: image identity and container-shaping fields."""
        return spec_hash(self.fingerprint, self.resolution.identity)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    app: str
    container: str  # the container acted on (or that conflicts)
    reasons: tuple[Change, ...] = ()
    target: Target | None = None
    message: str = ""
    on_service: bool = False  # a removal of a Swarm service (not a container) of that name

    @property
    def service(self) -> bool:
        """It acts on a Swarm service of the app's name, not on a container."""
        return self.on_service or (self.target is not None and self.target.spec.service)


@dataclass(frozen=True)
class Note:
    """Something a person should know that is not a change: nothing is done about it."""

    kind: str  # foreign (another source's, not removed), unlabelled, unchecked (env_file not read)
    app: str
    container: str
    message: str


@dataclass(frozen=True)
class Plan:
    revision: str
    actions: tuple[Action, ...] = field(default_factory=tuple)
    notes: tuple[Note, ...] = field(default_factory=tuple)
    # The apps of the file this plan is of (a fleet's: those placed on this host); None: not known. An app's
    # ``depends_on`` is ordered among these only: a dependency placed on another host is that host's.
    apps: frozenset[str] | None = None

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(action for action in self.actions if action.kind.changes)

    @property
    def problems(self) -> tuple[Action, ...]:
        return tuple(action for action in self.actions if not action.kind.changes)

    @property
    def in_sync(self) -> bool:
        return not self.actions


STALE_NEXT = Change("container", "left by an interrupted deploy", "removed")
STALE_RELEASE = Change("release command", "left running by an interrupted deploy", "removed")
PRUNED = Change("app", "not in the file", "removed")
UNLABELLED = "deployed before containers carried their source"


# The container options of a stack (``core.stack``), in a fingerprint only when set: a container made
# before they existed, which has none, is not drift.
OPTIONS = (
    "user", "entrypoint", "working_dir", "hostname", "extra_hosts", "labels", "stop_signal", "cap_add", "cap_drop",
    "read_only", "tmpfs", "sysctls", "ulimits", "shm_size", "memory", "cpus", "pids_limit", "logging",
    "network_mode", "devices", "privileged", "security_opt",
)  # fmt: skip


SIZES = ("memory", "shm_size")


def _options(spec: AppSpec) -> dict[str, Any]:
    dumped = spec.model_dump(include=set(OPTIONS), mode="json")
    return {key: value for key, value in dumped.items() if value not in (None, False, [], {}, ())}


def networks_of(spec: AppSpec) -> dict[str, list[str]]:
    """The networks a release of ``spec`` joins: name -> its extra aliases (none with ``network_mode``)."""
    if spec.network_mode is not None or spec.service:
        return {}
    return {name: sorted(attachment.aliases) for name, attachment in sorted(spec.networks.items())}


def fingerprint(
    app: str, spec: AppSpec, *, env_file_hash: str = "", secret_hashes: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The container-shaping fields of ``spec`` as plain JSON values; env values only as salted hashes,
    secrets only as the keyed digests of their contents (``secret_hashes``, by target).

    Health, stable_after, depends_on and release are absent on purpose: changing how we judge, order or
    prepare a release does not require a new container.
    """
    # A routed release listens on its route's port, on the proxy's network: the port is the release's own,
    # so a new port is a new release, gated on it before any traffic goes there.
    routed = {"route_port": spec.route.port} if spec.route is not None else {}
    # A service's own fields (replicas, rollout, placement, the probe its tasks run) are part of its spec.
    service = swarm.service_fields(spec) if spec.service else {}
    return (
        routed
        | service
        | {
            "env": {key: secret_hash(app, key, value) for key, value in sorted(spec.env.items())},
            "env_file": [spec.env_file_name, env_file_hash] if spec.env_file else None,
            "ports": sorted(spec.ports),
            "volumes": sorted(spec.volumes),
            "command": list(spec.command) if spec.command is not None else None,
            "restart": spec.restart,
            "init": spec.init,
            "stop_timeout": spec.stop_timeout,
        }
        | _options(spec)
        | ({"networks": networks_of(spec)} if not spec.service else {})
        | (
            {
                "secrets": {
                    secret.target: [(secret_hashes or {}).get(secret.target, ""), secret.mode, secret.uid, secret.gid]
                    for secret in spec.secrets
                }
            }
            if spec.secrets
            else {}
        )
    )


def spec_hash(print_: Mapping[str, Any], image: str) -> str:
    blob = json.dumps({"fingerprint": print_, "image": image}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return "[" + ", ".join(str(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_show(item)}" for key, item in value.items()) + "}"
    return str(value)


def _short_image(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12] or "(none)"


def _wanted_image(resolution: Resolution) -> str:
    return _short_image(resolution.image_id) if resolution.image_id else f"{resolution.ref} (to pull)"


def diff(observed: ObservedContainer, target: Target) -> tuple[Change, ...]:
    """The fields in which ``observed`` differs from ``target``, in a stable order."""
    changes: list[Change] = []
    wanted = target.resolution
    # A service's image is what its label says it was deployed as (the manager may never pull it).
    if observed.kind == "service":  # its version and digest as it runs them (``docker.observed_from_service``)
        same = observed.digest == wanted.identity and observed.version == target.spec.version
    else:
        same = bool(wanted.image_id) and wanted.image_id == observed.image_id
    if not same:
        new_image = _wanted_image(wanted)
        old_image = f"{observed.version or '?'} {_short_image(observed.image_id)}"
        changes.append(Change("image", old_image, f"{target.spec.version} {new_image}"))
    have, want = observed.fingerprint, target.fingerprint
    have_env: Mapping[str, str] = have.get("env") or {}
    want_env: Mapping[str, str] = want.get("env") or {}
    if have_env != want_env:
        added = sorted(set(want_env) - set(have_env))
        removed = sorted(set(have_env) - set(want_env))
        changed = sorted(k for k in set(want_env) & set(have_env) if want_env[k] != have_env[k])
        parts = [
            f"{label} {', '.join(keys)}"
            for label, keys in (("added", added), ("removed", removed), ("changed", changed))
            if keys
        ]
        changes.append(Change("env", "keys", "; ".join(parts)))
    for name in ("replicas", "update", "placement"):
        if have.get(name) != want.get(name):
            changes.append(Change(name, _show(have.get(name)), _show(want.get(name))))
    if have.get("healthcheck") != want.get("healthcheck"):
        changes.append(Change("health", "as deployed", "changed"))
    changes.extend(_secret_changes(have.get("secrets") or {}, want.get("secrets") or {}))
    for name in ("env_file", "ports", "volumes", "command", "restart", "init", "stop_timeout", "route_port", "networks",
                 *OPTIONS):  # fmt: skip
        if have.get(name) != want.get(name):
            was: Any = have.get(name)
            now: Any = want.get(name)
            if name == "env_file":  # the path only: the hash stands for the contents
                was = (was or [None])[0]
                now = (now or [None])[0]
                if was == now:
                    changes.append(Change("env_file", str(now), f"{now} (contents changed)"))
                    continue
            if name in SIZES:  # as the file spells them (64m), not in bytes
                was, now = (format_size(v) if isinstance(v, int) else v for v in (was, now))
            changes.append(Change(name, _show(was), _show(now)))
    return tuple(changes)


def _secret_changes(have: Mapping[str, Any], want: Mapping[str, Any]) -> list[Change]:
    """Each secret that differs, by its target name only: never a value, nor its digest."""
    changes: list[Change] = []
    for target in sorted(set(have) | set(want)):
        was, now = have.get(target), want.get(target)
        if was == now:
            continue
        if was is None or now is None:
            changes.append(
                Change(
                    f"secret {target}", "(none)" if was is None else "mounted", "added" if was is None else "removed"
                )
            )
            continue
        parts = [
            part for part, index in (("contents", 0), ("mode", 1), ("uid", 2), ("gid", 3)) if was[index] != now[index]
        ]
        changes.append(Change(f"secret {target}", "as deployed", f"{', '.join(parts)} changed"))
    return changes


def _other_source(container: ObservedContainer, source: Owner | None) -> bool:
    """Whether ``container`` (ours by its labels) was deployed by a source other than ``source``."""
    return source is not None and container.owner is not None and not source.same(container.owner)


def plan(
    desired: DesiredState,
    resolutions: Mapping[str, Resolution],
    observed: ObservedState,
    *,
    env_file_hashes: Mapping[str, str | None] | None = None,
    secret_hashes: Mapping[str, Mapping[str, str | None]] | None = None,
    adopt: bool = False,
    prune_foreign: bool = False,
    relabel: bool = False,
    rolling: Mapping[str, str] | None = None,
) -> Plan:
    """Pair each app of ``desired`` with its containers in ``observed`` and decide what to do.

    An env_file or secret hash of None means its contents could not be read here: they are not compared.
    ``rolling`` names the apps whose weighted rollout is under way (the spec hash of its new release): an app
    whose file still asks for that release is left to its rollout (a ``rollout`` note, no action), its
    ``APP.next`` included; one whose file asks for another has its rollout aborted by the pass first.
    """
    actions: list[Action] = []
    notes: list[Note] = []
    hashes = env_file_hashes or {}
    source = desired.source
    unlabelled: list[ObservedContainer] = []
    for app, spec in sorted(desired.apps.items()):
        resolution = resolutions.get(app) or Resolution(ref="", error="not resolved")
        current = observed.of_app(app, service=spec.service)
        kept = [c for c in (observed.named(container_name(app, role)) for role in Role) if c is not None]
        if spec.service:  # a service has no APP.prev and the like; a container of its name is another thing
            kept = [current] if current is not None else []
        foreign = [c for c in kept if not c.managed]
        # --adopt takes over the app's own container; a stranger under one of the names we keep
        # (APP.prev, APP.next, APP.failed) is never ours to move.
        blocking = [c for c in foreign if not adopt or c.name != container_name(app)]
        for container in blocking:
            hint = (
                "remove or rename it, or pass --adopt to take it over"
                if container.name == container_name(app)
                else f"remove or rename it: reconciler keeps {app}'s containers under that name"
            )
            actions.append(
                Action(
                    ActionKind.CONFLICT,
                    app,
                    container.name,
                    message=f"{container.kind} {container.name} exists and was not created by reconciler; {hint}",
                )
            )
        # Another source's APP.prev or APP.failed under our own running app is what an adopted app
        # left: it goes at our next deploy. Without our app, another source is at work on that name.
        others = [
            c
            for c in kept
            if c.managed and _other_source(c, source) and (c is current or current is None or c.role is Role.NEXT)
        ]
        if not adopt:
            for container in others:
                assert container.owner is not None
                actions.append(
                    Action(
                        ActionKind.CONFLICT,
                        app,
                        container.name,
                        message=f"container {container.name} was deployed by another source: "
                        f"{container.owner.describe()}; not changed (--adopt to take it over)",
                    )
                )
        if blocking or (others and not adopt):
            continue
        other = observed.of_app(app, service=not spec.service)
        if other is not None and other.managed:
            want = "service" if spec.service else "container"
            why = f"{app} runs as a {other.kind} of reconciler's and the file makes it a {want}: remove {app} first"
            actions.append(Action(ActionKind.ERROR, app, app, message=why))
            continue
        if current is not None and current.managed and current.owner is None:
            unlabelled.append(current)  # its kept .prev/.failed go with it at its next deploy
        if resolution.error:
            actions.append(Action(ActionKind.ERROR, app, container_name(app), message=resolution.error))
            continue
        target = Target(
            app=app,
            spec=spec,
            resolution=resolution,
            fingerprint=fingerprint(
                app,
                spec,
                env_file_hash=hashes.get(app) or "",
                secret_hashes={target: digest or "" for target, digest in (secret_hashes or {}).get(app, {}).items()},
            ),
            revision=desired.revision,
            source=source,
        )
        if spec.env_file and app in hashes and hashes[app] is None:
            # Unreadable here (a dry run far from the server): its contents are not compared; say so.
            seen = current.fingerprint.get("env_file") if current is not None else None
            if isinstance(seen, list) and seen[:1] == [spec.env_file_name]:
                target = replace(target, fingerprint={**target.fingerprint, "env_file": seen})
            where = "no key here opens it" if isinstance(spec.env_file, SopsRef) else "it cannot be read from here"
            why = f"env_file {spec.env_file_name}: not checked ({where})"
            notes.append(Note("unchecked", app, app, why))
        unread = sorted(target for target, digest in (secret_hashes or {}).get(app, {}).items() if digest is None)
        if unread:
            seen_secrets = current.fingerprint.get("secrets") if current is not None else None
            wanted = dict(target.fingerprint.get("secrets") or {})
            for name in unread:
                if isinstance(seen_secrets, dict) and isinstance(seen_secrets.get(name), list):
                    wanted[name] = [seen_secrets[name][0], *wanted[name][1:]]
            target = replace(target, fingerprint={**target.fingerprint, "secrets": wanted})
            sealed = {x.target for x in spec.secrets if isinstance(x.source, SopsRef)}
            where = "no key here opens them" if set(unread) <= sealed else "cannot be read from here"
            why = f"secrets {', '.join(unread)}: contents not checked ({where})"
            notes.append(Note("unchecked", app, app, why))
        stale_next = observed.named(container_name(app, Role.NEXT))
        if (
            stale_next is not None
            and stale_next.managed
            and (rolling or {}).get(app) == target.spec_hash == stale_next.spec_hash
        ):
            notes.append(Note("rollout", app, stale_next.name, f"{spec.version}: its weighted rollout is under way"))
            continue
        if stale_next is not None:
            actions.append(
                Action(
                    ActionKind.REMOVE,
                    app,
                    stale_next.name,
                    (STALE_NEXT,),
                )
            )
        stale_job = observed.named(container_name(app, Role.RELEASE))
        if stale_job is not None and stale_job.managed:
            actions.append(Action(ActionKind.REMOVE, app, stale_job.name, (STALE_RELEASE,)))
        if current is None:
            image = Change("image", "(none)", f"{spec.version} {_wanted_image(resolution)}")
            created = (Change("container", "missing", "created"), image)
            actions.append(Action(ActionKind.CREATE, app, container_name(app), created, target))
        elif not current.managed:
            actions.append(
                Action(ActionKind.REPLACE, app, current.name, (Change("owner", "not reconciler", "adopted"),), target)
            )
        elif reasons := _owner_change(current, source, relabel) + diff(current, target):
            actions.append(Action(ActionKind.REPLACE, app, current.name, reasons, target))
        elif not current.running and not (spec.completes and current.state == "exited" and current.exit_code == 0):
            actions.append(
                Action(ActionKind.START, app, current.name, (Change("state", current.state, "running"),), target)
            )
    for container in observed.containers:
        if not container.managed or container.app is None or container.app in desired.apps:
            continue
        if _other_source(container, source) and not prune_foreign:
            assert container.owner is not None
            notes.append(
                Note(
                    "foreign",
                    container.app,
                    container.name,
                    f"owned by another source: {container.owner.describe()}; not removed (--prune-foreign to"
                    " remove it)",
                )
            )
            continue
        if container.owner is None:
            unlabelled.append(container)
        actions.append(
            Action(ActionKind.REMOVE, container.app, container.name, (PRUNED,), on_service=container.kind == "service")
        )
    if source is not None:
        for container in unlabelled:
            if not (relabel and container.app in desired.apps):
                why = f"{UNLABELLED}; treated as this source's (`reconcile --relabel` redeploys it with its label)"
                notes.append(Note("unlabelled", container.app or "", container.name, why))
    return Plan(revision=desired.revision, actions=tuple(actions), notes=tuple(notes), apps=frozenset(desired.apps))


def _owner_change(current: ObservedContainer, source: Owner | None, relabel: bool) -> tuple[Change, ...]:
    """Taking over another source's container (--adopt), or labelling an old one (--relabel)."""
    if source is None or (current.owner is None and not relabel):
        return ()
    if current.owner is None:
        return (Change("source", "(none)", source.describe()),)
    if not source.same(current.owner):
        return (Change("source", current.owner.describe(), source.describe()),)
    return ()


def simulate(result_of: Plan, observed: ObservedState) -> ObservedState:
    """The observed state that a fully successful apply of ``result_of`` leaves behind (for tests)."""
    # By name and kind: a container and a Swarm service may share a name.
    containers: dict[tuple[str, str], ObservedContainer] = {(c.name, c.kind): c for c in observed.containers}
    for action in result_of.changes:
        key = (action.container, "service" if action.service else "container")
        if action.kind is ActionKind.REMOVE:
            containers.pop(key, None)
        elif action.kind is ActionKind.START:
            containers[key] = containers[key].model_copy(update={"state": "running"})
        else:
            assert action.target is not None
            target = action.target
            old = containers.pop(key, None)
            if old is not None and not action.service:  # a service is updated in place: no APP.prev
                previous = container_name(action.app, Role.PREVIOUS)
                containers[(previous, "container")] = old.model_copy(
                    update={"name": previous, "state": "exited", "role": Role.PREVIOUS}
                )
            containers[key] = ObservedContainer(
                id=f"sim-{action.app}",
                name=action.container,
                state="running",
                image_id=target.resolution.image_id or f"pulled:{target.resolution.ref}",
                managed=True,
                app=action.app,
                role=Role.CURRENT,
                fingerprint=dict(target.fingerprint),
                commit=target.revision,
                version=target.spec.version,
                digest=target.resolution.identity if action.service else "",
                kind="service" if action.service else "container",
            )
    return ObservedState(containers=tuple(containers.values()))


def _host_port(port: str) -> tuple[int, str] | None:
    """(host port, protocol) that ``port`` takes on the host; None for one Docker picks."""
    try:
        _, host, _, proto = parse_port(port)
    except ValueError:
        return None
    return (host, proto) if host is not None else None


def port_waits(plan: Plan, observed: ObservedState) -> dict[str, frozenset[str]]:
    """For each app that ``plan`` deploys: the other apps of the plan whose container, running now and stopped
    or removed by this plan, holds a host port that its new release publishes. Its start waits until they
    stopped: two apps that swap host ports in one commit both start, whichever stops first."""
    held: dict[tuple[int, str], str] = {}
    for action in plan.actions:
        if action.service or action.container != action.app:
            continue
        if action.kind not in (ActionKind.REPLACE, ActionKind.REMOVE):
            continue
        current = observed.named(action.app)
        if current is None or not current.managed or not current.running:
            continue
        for port in current.fingerprint.get("ports") or ():
            taken = _host_port(str(port))
            if taken is not None:
                held[taken] = action.app
    waits: dict[str, frozenset[str]] = {}
    for action in plan.actions:
        if action.kind not in (ActionKind.CREATE, ActionKind.REPLACE) or action.target is None or action.service:
            continue
        wanted = {taken for port in action.target.spec.ports if (taken := _host_port(port)) is not None}
        others = frozenset(held[taken] for taken in wanted if held.get(taken, action.app) != action.app)
        if others:
            waits[action.app] = others
    return waits
