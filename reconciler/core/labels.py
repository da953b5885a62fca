"""The labels and rows of the Docker engine as our records, and our records as labels: pure mapping.

Guarantees:
- Every function here maps a dict the engine gives (a row of ``GET /containers/json``, ``/services``,
  ``/tasks``, ``/nodes``, or one container's inspect JSON) to a frozen record, or a ``Target`` to the
  labels a container of ours carries; none does I/O, so the real engine adapter and the in-memory one
  of the tests read the same rows the same way and cannot drift.
- A container is ours only with our labels and this instance's name (``observed_from_row``,
  ``inspected_from``): a container of another instance, or without labels, is never managed.
- Labels that do not parse (a fingerprint that is not JSON) read as absent, never as an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.core import swarm
from reconciler.core.model import DEFAULT_STOP_TIMEOUT, ObservedContainer, Owner, Role, parse_port
from reconciler.core.plan import Target

LABEL = "io.reconciler"
MANAGED = f"{LABEL}.managed"
INSTANCE = f"{LABEL}.instance"
SOURCE = f"{LABEL}.source"  # + .root, .location, .branch, .file
SECRETS_VOLUME = f"{LABEL}.secrets-volume"  # "true": its /run/secrets is a volume of its own (a read-only root)
SECRET_FILES = f"{LABEL}.secret-files"  # its decrypted SOPS file secrets: the folder of STATE/secrets it mounts
NETWORK = f"{LABEL}.network"  # a network of ours: its name in the file (default, backend, ...)


_EXITED = re.compile(r"^Exited \((-?[0-9]+)\)")  # a listing's Status: "Exited (0) 5 minutes ago"


@dataclass(frozen=True)
class NetworkRow:
    """One network of the instance, as the engine has it."""

    name: str
    labels: Mapping[str, str]
    internal: bool
    attached: tuple[str, ...]  # the names of the containers on it


@dataclass(frozen=True)
class Inspected:
    """One container as ``GET /containers/{id}/json`` reports it: the facts the shell acts on."""

    id: str
    name: str  # without docker's leading "/"
    running: bool
    restarting: bool
    paused: bool
    exit_code: int
    error: str  # why the engine could not run it ("" when it could)
    restart_count: int
    health: str  # docker's own HEALTHCHECK: "" (none), "starting", "healthy" or "unhealthy"
    started_at: float  # epoch seconds of its last start; 0.0 when it never started
    image_id: str
    image: str  # the reference it was created from: ``repo:tag`` or ``repo@sha256:...``
    labels: Mapping[str, str]
    ours: bool  # carries our labels, and this instance's
    stop_timeout: float  # what docker waits after SIGTERM, as it was created
    networks: Mapping[str, str]  # network name -> its IPv4 address there
    fingerprint: Mapping[str, Any]  # what it was created with (ours only; see ``core.plan.fingerprint``)


def inspected_from(data: Mapping[str, Any], *, instance: str = "default") -> Inspected:
    """The inspect JSON of one container as an ``Inspected``."""
    state = data.get("State") or {}
    config = data.get("Config") or {}
    labels: Mapping[str, str] = config.get("Labels") or {}
    stop_timeout = config.get("StopTimeout")
    return Inspected(
        id=str(data.get("Id", "")),
        name=str(data.get("Name", "")).lstrip("/"),
        running=bool(state.get("Running")),
        restarting=bool(state.get("Restarting")),
        paused=bool(state.get("Paused")),
        exit_code=int(state.get("ExitCode") or 0),
        error=str(state.get("Error") or ""),
        restart_count=int(data.get("RestartCount") or 0),
        health=str((state.get("Health") or {}).get("Status") or ""),
        started_at=epoch(str(state.get("StartedAt") or "")),
        image_id=str(data.get("Image", "")),
        image=str(config.get("Image", "")),
        labels=dict(labels),
        ours=labels.get(MANAGED) == "true" and labels.get(INSTANCE, "default") == instance,
        stop_timeout=float(stop_timeout) if stop_timeout is not None else DEFAULT_STOP_TIMEOUT,
        networks=addresses(data),
        fingerprint=fingerprint_of(labels),
    )


def epoch(stamp: str) -> float:
    """Docker's RFC 3339 time as epoch seconds; 0.0 for its zero time (never started) or none at all.

    Python 3.11's ``fromisoformat`` reads Docker's nanoseconds (it keeps the first six digits) and
    its ``Z``: no trimming of our own is needed.
    """
    try:
        when = datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return 0.0
    return max(when, 0.0)


def port_bindings(ports: Iterable[str]) -> dict[str, list[Any]]:
    """``[IP:]HOST:CONTAINER[/udp]`` strings as the SDK's ``port_bindings``: ``{"80/tcp": [8080, ("::1", 8081)]}``.

    Ours, not ``docker.utils.ports.build_port_bindings``: that one gives the same bindings for
    ``IP:HOST:CONTAINER`` (``[::1]`` too), ``/udp`` and one container port bound twice, but refuses
    ``IP:CONTAINER`` (a random host port on that address), which the file accepts.
    """
    bindings: dict[str, list[Any]] = {}
    for port in ports:
        ip, host_port, container_port, proto = parse_port(port)
        bindings.setdefault(f"{container_port}/{proto}", []).append((ip, host_port) if ip else host_port)
    return bindings


def observed_from_row(row: Mapping[str, Any], *, instance: str = "default") -> ObservedContainer:
    """One row of ``GET /containers/json`` as an ``ObservedContainer``; ours only with our labels and
    ``instance``."""
    labels: Mapping[str, str] = row.get("Labels") or {}
    names = row.get("Names") or ["/"]
    name = str(names[0]).lstrip("/")
    managed = (
        labels.get(MANAGED) == "true"
        and bool(labels.get(f"{LABEL}.app"))
        and labels.get(INSTANCE, "default") == instance
    )
    app = labels.get(f"{LABEL}.app") if managed else None
    role: Role | None = None
    if app is not None:
        role = next((r for r in Role if name == app + r.suffix), None)
    fingerprint = fingerprint_of(labels) if managed else {}
    return ObservedContainer(
        id=str(row.get("Id", "")),
        name=name,
        state=str(row.get("State", "")),
        image_id=str(row.get("ImageID", "")),
        managed=managed and role is not None,
        app=app if role is not None else None,
        role=role,
        fingerprint=fingerprint,
        commit=labels.get(f"{LABEL}.commit", ""),
        version=labels.get(f"{LABEL}.version", ""),
        digest=labels.get(f"{LABEL}.digest", ""),
        spec_hash=labels.get(f"{LABEL}.spec-hash", ""),
        owner=owner_of(labels),
        created=float(row.get("Created") or 0),
        networks=addresses(row),
        exit_code=int(exited.group(1)) if (exited := _EXITED.match(str(row.get("Status") or ""))) else None,
    )


def release_labels(target: Target, instance: str) -> dict[str, str]:
    """What a container or service of ours carries: whose it is, and what release of the app it runs."""
    labels = {
        MANAGED: "true",
        INSTANCE: instance,
        f"{LABEL}.app": target.app,
        f"{LABEL}.commit": target.revision,
        f"{LABEL}.version": target.spec.version,
        f"{LABEL}.digest": target.resolution.identity,
        f"{LABEL}.spec-hash": target.spec_hash,
        f"{LABEL}.fingerprint": json.dumps(target.fingerprint, sort_keys=True, separators=(",", ":")),
    }
    if target.spec.service:
        labels[f"{LABEL}.image"] = target.resolution.image_id
    if target.source is not None:
        labels.update({f"{SOURCE}.{key}": value for key, value in target.source.model_dump().items()})
    return labels


def observed_from_service(row: Mapping[str, Any], *, instance: str = "default") -> ObservedContainer:
    """One service of ``GET /services``, as the planner pairs it with an app (``kind`` "service")."""
    spec = row.get("Spec") or {}
    labels: Mapping[str, str] = spec.get("Labels") or {}
    name = str(spec.get("Name", ""))
    managed = (
        labels.get(MANAGED) == "true"
        and labels.get(f"{LABEL}.app") == name
        and labels.get(INSTANCE, "default") == instance
    )
    # What the service runs now, not only what its labels say we deployed: a change made by hand (`docker
    # service scale`, `docker service update --image`) is drift like any other.
    fingerprint = swarm.read_back(name, spec, fingerprint_of(labels)) if managed else {}
    image = str((((spec.get("TaskTemplate") or {}).get("ContainerSpec")) or {}).get("Image", ""))
    named, _, pinned = image.partition("@")
    last = named.rpartition("/")[2]
    tag = last.partition(":")[2]
    return ObservedContainer(
        id=str(row.get("ID", "")),
        name=name,
        state="running",  # Swarm keeps its tasks running; how many do is the gate's and status's business
        image_id=labels.get(f"{LABEL}.image", "") if managed else "",
        managed=managed,
        app=name if managed else None,
        role=Role.CURRENT if managed else None,
        fingerprint=fingerprint,
        commit=labels.get(f"{LABEL}.commit", ""),
        version=tag or labels.get(f"{LABEL}.version", ""),
        digest=pinned or labels.get(f"{LABEL}.digest", ""),
        spec_hash=labels.get(f"{LABEL}.spec-hash", ""),
        owner=owner_of(labels),
        created=epoch(str(row.get("CreatedAt", ""))),
        kind="service",
    )


def task_from_row(row: Mapping[str, Any], template: object) -> swarm.Task:
    """One task of ``GET /tasks``; ``current`` when it was made from ``template`` (its service's spec now)."""
    status = row.get("Status") or {}
    published = ((status.get("PortStatus") or {}).get("Ports")) or []
    return swarm.Task(
        id=str(row.get("ID", "")),
        node=str(row.get("NodeID", "")),
        slot=int(row.get("Slot") or 0),
        state=str(status.get("State", "")),
        desired=str(row.get("DesiredState", "")),
        created=epoch(str(row.get("CreatedAt", ""))),
        current=_task_spec(row.get("Spec")) == _task_spec(template),
        message=str(status.get("Err") or status.get("Message") or ""),
        ports=tuple((int(p.get("TargetPort") or 0), int(p.get("PublishedPort") or 0)) for p in published),
    )


def _task_spec(spec: object) -> object:
    """A task's spec as comparable with its service's TaskTemplate (the manager adds ``Runtime`` there)."""
    return {key: value for key, value in spec.items() if key != "Runtime"} if isinstance(spec, dict) else spec


def node_from_row(row: Mapping[str, Any]) -> tuple[str, str, str]:
    """(hostname, state, address) of one node of ``GET /nodes``. A manager may list itself at 0.0.0.0 or
    127.0.0.1 (moby#35437): its address is then the one it manages the swarm on."""
    status = row.get("Status") or {}
    hostname = str((row.get("Description") or {}).get("Hostname", "?"))
    address = str(status.get("Addr", ""))
    if address in ("", "0.0.0.0", "127.0.0.1"):
        managing = str((row.get("ManagerStatus") or {}).get("Addr", ""))
        address = managing.rpartition(":")[0].strip("[]") if managing else ""
    return hostname, str(status.get("State", "?")), address


def fingerprint_of(labels: Mapping[str, str]) -> dict[str, Any]:
    """The fingerprint a container or service of ours carries in its labels ({} when it has none)."""
    try:
        found = json.loads(labels.get(f"{LABEL}.fingerprint", "{}"))
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def addresses(row: Mapping[str, Any]) -> dict[str, str]:
    """Network name -> the IPv4 address there, of a container row or inspect JSON (none without one)."""
    networks = (row.get("NetworkSettings") or {}).get("Networks") or {}
    return {str(name): str(net.get("IPAddress")) for name, net in networks.items() if net and net.get("IPAddress")}


def owner_of(labels: Mapping[str, str]) -> Owner | None:
    """The source a container of ours records in its labels; None for one from before they did."""
    if not any(key.startswith(SOURCE + ".") for key in labels):
        return None
    return Owner(**{key: labels.get(f"{SOURCE}.{key}", "") for key in Owner.model_fields})
