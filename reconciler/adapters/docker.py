"""The only module that talks to the Docker engine (through the Docker SDK).

Guarantees:
- Every SDK or transport error leaves this module as a ``ReconcileError``: ``EngineUnavailable`` (names
  the host) when the engine does not answer, ``ImageError`` for a missing tag or refused pull,
  ``ContainerError`` for a create/start that the engine refused (port taken, bad mount).
- ``observe()`` is one listing call for the whole engine; ``inspect()`` is one call for one container,
  and returns an ``Inspected`` record: docker's raw inspect JSON does not leave this module.
  ``inspect`` says None only when the engine answers 404 (``docker.errors.NotFound``); any other
  refusal is a ``ContainerError``, never "gone".
- Containers are created with our labels, including the instance name: a container of another
  instance is never ours. They also carry their source (``io.reconciler.source.*``: the repository's
  root commit and location, the branch, the file), which the planner compares before it changes one.
  Nothing here decides whether a container may be touched: that is the planner's job (only containers
  with our labels are ever passed to stop, remove or rename).
- Registry credentials come from the docker CLI's ``config.json`` (``DOCKER_CONFIG``) and never leave
  the SDK; no message built here contains an env value or a credential.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types
import requests.exceptions
import urllib3.exceptions

from reconciler.adapters.envfile import EnvFiles
from reconciler.core import images as image_match
from reconciler.core import swarm
from reconciler.core.guard import HostUse, PolicyViolation, bind_source, real_binds, real_violation
from reconciler.core.model import (
    DEFAULT_STOP_TIMEOUT,
    HostLimits,
    ObservedContainer,
    ObservedState,
    Owner,
    Role,
    parse_port,
)
from reconciler.core.plan import Target
from reconciler.errors import ContainerError, EngineUnavailable, ImageError, ReconcileError

LABEL = "io.reconciler"
MANAGED = f"{LABEL}.managed"
INSTANCE = f"{LABEL}.instance"
SOURCE = f"{LABEL}.source"  # + .root, .location, .branch, .file
API_VERSION = "1.41"  # docker 20.10 and later; fixed so that connecting costs no version round-trip

T = TypeVar("T")


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)|\w+Error\(-?\d+, '([^']+)'\)")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc).strip()
    text = str(exc).strip() or type(exc).__name__
    # urllib3 wraps the one fact that matters ("Connection refused") in three layers of reprs.
    found = _ERRNO.search(text)
    if found:
        return (found.group(1) or found.group(2)).strip().rstrip(".").lower()
    return text.splitlines()[0][:300]


def _lookup_failure(ref: str, reason: str) -> str:
    """What a failed registry look-up of ``ref`` means to the user (the image is not local either)."""
    lowered = reason.lower()
    if "manifest unknown" in lowered or "not found" in lowered:
        return f"image {ref} does not exist in its registry ({reason})"
    if any(word in lowered for word in ("no basic auth credentials", "unauthorized", "denied", "authentication")):
        host = ref.split("/", 1)[0] if "/" in ref else "docker.io"
        return (
            f"image {ref}: the registry refused access ({reason}); log in with `docker login {host}`, "
            "or point DOCKER_CONFIG at a config.json that holds its credentials"
        )
    return f"image {ref} is not on this host, and its registry cannot be asked ({reason})"


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
        started_at=_epoch(str(state.get("StartedAt") or "")),
        image_id=str(data.get("Image", "")),
        image=str(config.get("Image", "")),
        labels=dict(labels),
        ours=labels.get(MANAGED) == "true" and labels.get(INSTANCE, "default") == instance,
        stop_timeout=float(stop_timeout) if stop_timeout is not None else DEFAULT_STOP_TIMEOUT,
        networks=_addresses(data),
        fingerprint=fingerprint_of(labels),
    )


def _epoch(stamp: str) -> float:
    """Docker's RFC 3339 time as epoch seconds; 0.0 for its zero time (never started) or none at all.

    Python 3.11's ``fromisoformat`` reads Docker's nanoseconds (it keeps the first six digits) and
    its ``Z``: no trimming of our own is needed.
    """
    try:
        when = datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return 0.0
    return max(when, 0.0)


class Engine:
    """A connected Docker engine. ``host`` is what the user named (or the SDK's default socket)."""

    def __init__(self, client: Any, host: str, *, instance: str = "default", files: EnvFiles | None = None) -> None:
        self.client = client
        self.api = client.api
        self.host = host
        self.instance = instance
        self.files = files if files is not None else EnvFiles()  # env_files, read on the engine's host
        self.limits: HostLimits | None = None  # the policy's host folders; the pass that plans sets them

    def real_paths(self, paths: Sequence[str]) -> tuple[dict[str, str | None], str]:
        """Each of ``paths`` as its real path on the engine's host, and why where it cannot be told.

        A local engine (a unix socket) is asked of this machine's file system: a reconciler run in a
        container sees the host's folders only where they are mounted at the same paths. An ``ssh://``
        engine's host is asked over the same login as its env_files. Any other engine's host (``tcp://``)
        cannot be asked at all: every path is None then, and a policy of host paths refuses its binds
        rather than trust a path that may be a link there."""
        if self.files.ssh is None and not self.local:
            return dict.fromkeys(paths), f"the files of {self.host}'s host cannot be read from here: use ssh://"
        return {**self.files.real_paths(paths)}, ""

    def held_binds(self, what: str, volumes: Sequence[str], limits: HostLimits | None) -> list[str]:
        """``volumes`` with each bind source as its real path on the engine's host, checked against the
        policy's ``limits`` now, just before the engine is asked to mount it; ``PolicyViolation`` when one
        leads out of them. The engine then mounts the path that was checked, with no link left to follow.
        What no check here can close: a folder on that path that a running container can write may be
        swapped for a link after this check, before Docker mounts it at the start (or at a restart of its
        own); the window is a create and a start, and the next pass refuses the commit."""
        if limits is None or limits.volumes is None:
            return list(volumes)
        held = [HostUse(("volumes", index), source, "volumes") for index, volume in enumerate(volumes)
                if (source := bind_source(volume)) is not None]  # fmt: skip
        real_of, unknown = self.real_paths([*(host.written for host in held), *limits.volumes])
        found = [real_violation(host, limits, real_of, unknown) for host in held]
        refused = [f"{what}: {violation.message}" for violation in found if violation is not None]
        if refused:
            raise PolicyViolation(refused)
        return real_binds(volumes, real_of)

    @property
    def local(self) -> bool:
        """The engine runs on this machine (a unix socket): its host's ports are ours to look at."""
        return self.host.startswith("unix://") or self.host.startswith("/")

    @contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        try:
            yield
        except ReconcileError:
            raise
        except docker.errors.APIError as exc:  # first: it is also a requests HTTPError
            if exc.status_code is not None:
                raise ContainerError(f"{what}: {_reason(exc)}") from None
            raise EngineUnavailable(f"Docker engine at {self.host}: {what}: {_reason(exc)}") from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            # Any transport failure, also mid-stream (an engine restarting during a pull): it clears.
            raise EngineUnavailable(f"Docker engine at {self.host} does not answer ({what}): {_reason(exc)}") from None
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"Docker engine at {self.host}: {what}: {_reason(exc)}") from None

    def call(self, what: str, fn: Callable[[], T]) -> T:
        with self._calls(what):
            return fn()

    # -- reading ---------------------------------------------------------------------------------

    def observe(self) -> ObservedState:
        rows = self.call("list containers", lambda: self.api.containers(all=True))
        containers = tuple(observed_from_row(row, instance=self.instance) for row in rows)
        services = tuple(observed_from_service(row, instance=self.instance) for row in self.services())
        return ObservedState(containers=containers + self._reached(services))

    def _reached(self, services: tuple[ObservedContainer, ...]) -> tuple[ObservedContainer, ...]:
        """``services`` with the endpoints of each routed one of ours (two more calls, only when there is one)."""
        routed = {s.id: port for s in services if isinstance(port := s.fingerprint.get("route_port"), int)}
        if not routed:
            return services
        rows = self.call("list tasks", lambda: self.api.tasks(filters={"desired-state": "running"}))
        addresses = {node: address for node, (_, _, address) in self.nodes().items()}
        tasks: dict[str, list[swarm.Task]] = {}
        for row in rows:
            tasks.setdefault(str(row.get("ServiceID", "")), []).append(task_from_row(row, None))
        return tuple(
            s.model_copy(update={"endpoints": tuple(f"{ip}:{port}" for ip, port in swarm.endpoints(
                tasks.get(s.id, []), addresses, {routed[s.id]}))})
            if s.id in routed else s
            for s in services
        )  # fmt: skip

    def service_image(self, service_id: str) -> str:
        """The image a service's spec runs (``repo:tag@sha256:...`` when pinned)."""
        info = self.call("inspect service", lambda: self.api.inspect_service(service_id))
        return str((((info.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", ""))

    def nodes(self) -> dict[str, tuple[str, str, str]]:
        """The swarm's nodes: id -> (hostname, state: ready, down, unknown or disconnected, address)."""
        return {str(n.get("ID")): node_from_row(n) for n in self.call("list nodes", lambda: self.api.nodes())}

    def services(self) -> list[dict[str, Any]]:
        """The Swarm services of this engine (ours and others); none when it cannot list them: not a swarm
        manager (503), a manager without quorum, an API without services. A pass of containers never
        fails for want of a swarm."""
        with self._calls("list services"):
            try:
                return list(self.api.services())
            except docker.errors.APIError as exc:
                if exc.status_code is None:
                    raise  # no answer at all: the engine's trouble (``_calls``)
                return []

    def local_images(self) -> tuple[image_match.LocalImage, ...]:
        return image_match.from_engine(self.call("list images", lambda: self.api.images()))

    def registry_digest(self, ref: str) -> str:
        """The manifest digest of ``ref`` as the registry reports it; nothing is pulled."""
        with self._calls(f"look up {ref}"):
            try:
                data = self.api.inspect_distribution(ref)
            except docker.errors.APIError as exc:
                if exc.status_code is None:
                    raise  # no answer at all: the engine's trouble, not the image's
                raise ImageError(_lookup_failure(ref, _reason(exc))) from None
        return str(data["Descriptor"]["digest"])

    def inspect(self, container: str) -> Inspected | None:
        """The container (by id or name), or None when the engine says it does not exist (404)."""
        with self._calls(f"inspect {container}"):
            try:
                data = self.api.inspect_container(container)
            except docker.errors.NotFound:
                return None
        return inspected_from(data, instance=self.instance)

    # -- changing --------------------------------------------------------------------------------

    def has_image(self, ref: str) -> bool:
        """Whether the engine holds ``ref`` (nothing is pulled)."""
        with self._calls(f"look up {ref}"):
            try:
                self.api.inspect_image(ref)
            except docker.errors.NotFound:
                return False
        return True

    def pull(self, ref: str) -> str:
        """Pull ``ref``; return the local image id. A missing tag or refused login is an ``ImageError``."""
        with self._calls(f"pull {ref}"):
            try:
                for event in self.api.pull(ref, stream=True, decode=True):
                    if "error" in event:
                        raise ImageError(f"pull {ref}: {str(event['error']).strip()}")
                return str(self.api.inspect_image(ref)["Id"])
            except docker.errors.APIError as exc:
                if exc.status_code is None:
                    raise
                raise ImageError(f"pull {ref}: {_reason(exc)}") from None

    def create(self, target: Target, name: str, *, env: Mapping[str, str], network: str | None = None) -> str:
        """Create (not start) the container for ``target`` under ``name``, on ``network`` if given; its id."""
        spec = target.spec
        resolution = target.resolution
        ports = port_bindings(spec.ports)
        restart: dict[str, Any] = {"Name": spec.restart}
        if spec.restart == "on-failure":
            restart["MaximumRetryCount"] = 0
        labels = release_labels(target, self.instance)
        with self._calls(f"create {name}"):
            host_config = self.api.create_host_config(
                port_bindings=ports,
                binds=self.held_binds(name, spec.volumes, self.limits),
                restart_policy=restart,
                init=spec.init,
            )
            created = self.api.create_container(
                image=resolution.ref,
                name=name,
                command=list(spec.command) if spec.command is not None else None,
                environment=[f"{key}={value}" for key, value in env.items()],
                ports=[_exposed(key) for key in ports],
                labels=labels,
                host_config=host_config,
                stop_timeout=math.ceil(spec.stop_timeout),
                networking_config=self.api.create_networking_config({network: self.api.create_endpoint_config()})
                if network
                else None,
            )
        return str(created["Id"])

    def ensure_network(self, name: str) -> None:
        """A bridge network of ours named ``name`` (created once; one of that name already there is used)."""
        with self._calls(f"create network {name}"):
            if not self.api.networks(names=[name]):
                try:
                    self.api.create_network(name, driver="bridge", labels={MANAGED: "true", INSTANCE: self.instance})
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:  # another pass made it meanwhile
                        raise

    def remove_network(self, name: str) -> None:
        """Remove our network ``name`` when nothing is attached to it (else it stays; no error)."""
        with self._calls(f"remove network {name}"):
            for network in self.api.networks(names=[name]):
                labels = network.get("Labels") or {}
                if labels.get(MANAGED) == "true" and labels.get(INSTANCE) == self.instance:
                    with contextlib.suppress(docker.errors.APIError):
                        self.api.remove_network(network["Id"])

    def kill(self, container_id: str, name: str, signal: str) -> None:
        with self._calls(f"signal {name}"):
            self.api.kill(container_id, signal=signal)

    def logs(self, container_id: str, *, tail: int = 20) -> str:
        with self._calls("read logs"):
            return bytes(self.api.logs(container_id, tail=tail)).decode(errors="replace")

    def publishers(self, port: int) -> list[str]:
        """Containers that publish host port ``port``: who holds it, when it is taken."""
        rows = self.call("list containers", lambda: self.api.containers())
        return sorted(
            str((row.get("Names") or ["/?"])[0]).lstrip("/")
            for row in rows
            if any(item.get("PublicPort") == port for item in row.get("Ports") or [])
        )

    def start(self, container_id: str, name: str) -> None:
        with self._calls(f"start {name}"):
            self.api.start(container_id)

    def unpause(self, container_id: str, name: str) -> None:
        with self._calls(f"unpause {name}"):
            self.api.unpause(container_id)

    def stop(self, container_id: str, name: str, timeout: float) -> None:
        with self._calls(f"stop {name}"):
            self.api.stop(container_id, timeout=math.ceil(timeout))

    def rename(self, container_id: str, name: str) -> None:
        with self._calls(f"rename to {name}"):
            self.api.rename(container_id, name)

    def remove(self, container_id: str, name: str) -> None:
        """Remove the container; one that is gone already is no error."""
        with self._calls(f"remove {name}"), contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(container_id, force=True, v=False)

    def started_at(self, container_id: str) -> float:
        """When the container last started (epoch seconds; 0 when unknown or gone)."""
        found = self.inspect(container_id)
        return found.started_at if found is not None else 0.0

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        with self._calls(f"tag {repository}:{tag}"):
            self.api.tag(image_id, repository, tag, force=True)

    def push(self, repository: str, tag: str) -> None:
        """Push ``repository:tag`` to its registry (credentials as for pulls)."""
        with self._calls(f"push {repository}:{tag}"):
            for event in self.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise ImageError(f"push {repository}:{tag}: {str(event['error']).strip()}")

    def exec_probe(self, container_id: str, argv: list[str], *, timeout: float) -> tuple[bool, str]:
        """Run ``argv`` in the container: whether it exited 0 within ``timeout`` seconds, and what happened.

        Started detached and its end polled, because an attached start waits for the process as long as
        the SDK's own timeout (60 s) and no busybox image reliably has a ``timeout`` to wrap it in. The
        engine has no call to kill an exec: one past its deadline is left to run and counts as failed.
        """
        what = f"exec {' '.join(argv)}"
        try:
            with self._calls("exec health probe"):
                exec_id = self.api.exec_create(container_id, argv, stdout=False, stderr=False)["Id"]
                self.api.exec_start(exec_id, detach=True)
                deadline = time.monotonic() + timeout
                pause = 0.01
                while True:
                    info = self.api.exec_inspect(exec_id)
                    code = info.get("ExitCode")
                    if not info.get("Running") and code is not None:
                        return int(code) == 0, f"{what}: exit {code}"
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False, f"{what}: no exit within {timeout:g}s"
                    time.sleep(min(pause, left))
                    pause = min(pause * 2, 0.1)  # quick probes answer in tens of ms; slow ones cost few calls
        except ContainerError as exc:
            return False, f"{what}: {exc}"

    # -- for deploys: the engine's answer, Swarm services, the proxy's container ------------------------
    # (the SDK's calls and its docker.types stay here: ``reconciler.deploy`` imports nothing of docker)

    def answers(self) -> None:
        """Raise ``EngineUnavailable`` unless the engine answers a ping on a new connection.

        A dockerd that is shutting down has closed its socket, then stops every container, and still
        answers on the connections already open: so the pooled ones are dropped first.
        """
        self.api.close()
        self.call("ping", self.api.ping)

    def image_id(self, ref: str) -> str:
        """The id of ``ref`` on the engine, or "" when it is not there (nothing is pulled)."""
        try:
            return str(self.call("inspect image", lambda: self.api.inspect_image(ref))["Id"])
        except ContainerError:
            return ""

    def create_in_host_network(
        self, name: str, *, image: str, entrypoint: list[str], command: list[str], user: str,
        labels: Mapping[str, str], binds: list[str],
    ) -> str:  # fmt: skip
        """Create (not start) a container in the host's network namespace, restarted unless stopped; its id."""
        created = self.call(
            f"create {name}",
            lambda: self.api.create_container(
                image=image, name=name, entrypoint=entrypoint, command=command, user=user, labels=dict(labels),
                host_config=self.api.create_host_config(
                    network_mode="host", binds=binds, restart_policy={"Name": "unless-stopped"}
                ),
            ),
        )  # fmt: skip
        return str(created["Id"])

    def inspect_service(self, service_id: str) -> dict[str, Any]:
        """The service as the manager has it (its spec, version, update status)."""
        return dict(self.call("inspect service", lambda: self.api.inspect_service(service_id)))

    def tasks_of(self, service_id: str) -> list[dict[str, Any]]:
        """The task rows of a service (``task_from_row`` reads them)."""
        return self.call("list tasks", lambda: list(self.api.tasks(filters={"service": service_id})))

    def service_arguments(self, target: Target, env: Mapping[str, str]) -> dict[str, Any]:
        """The keyword arguments of a service's create or update for ``target`` (``swarm`` decides them, the
        SDK's types carry them): the task template's ``Networks`` and its container's ``Secrets`` and
        ``Configs`` may be set on the result as on plain dicts."""
        spec = target.spec
        assert spec.replicas is not None
        check = swarm.healthcheck(spec)
        mounts = [self._service_mount(volume) for volume in spec.volumes]
        container = docker.types.ContainerSpec(
            image=self._pinned(target.resolution.ref, target.resolution.digest),
            args=list(spec.command) if spec.command is not None else None,
            env=[f"{key}={value}" for key, value in env.items()],
            mounts=mounts or None,
            stop_grace_period=round(spec.stop_timeout * swarm.NANOSECONDS),
            healthcheck=docker.types.Healthcheck(
                test=check["Test"],
                interval=check["Interval"],
                timeout=check["Timeout"],
                retries=check["Retries"],
                start_period=check["StartPeriod"],
            )
            if check is not None
            else None,
            init=spec.init,
        )
        condition = {"no": "none", "on-failure": "on-failure"}.get(spec.restart, "any")
        template = docker.types.TaskTemplate(
            container,
            restart_policy=docker.types.RestartPolicy(condition=condition),
            placement=docker.types.Placement(constraints=swarm.constraints(spec)) if spec.on is not None else None,
        )
        update = spec.update
        gate = spec.gate
        rolling = docker.types.UpdateConfig(
            parallelism=update.parallelism if update is not None else 1,
            delay=round(update.delay * swarm.NANOSECONDS) if update is not None else 0,
            failure_action="pause",  # our gate decides, and puts back the spec from before
            monitor=round(max(gate.healthy_for, 1.0) * swarm.NANOSECONDS),
            order=update.order if update is not None else swarm.default_order(spec),
        )
        ports: list[dict[str, Any]] = []  # the API's form: 53:53/tcp and 53:53/udp are two entries
        if spec.route is not None:  # on a host port each node picks: two tasks on a node never clash
            ports.append({"Protocol": "tcp", "TargetPort": spec.route.port, "PublishMode": "host"})
        for port in spec.ports:
            _, host_port, container_port, proto = parse_port(port)
            assert host_port is not None  # AppSpec: a service publishes HOST:CONTAINER
            # No routing mesh: each task publishes on its own node.
            ports.append({"Protocol": proto, "TargetPort": container_port, "PublishedPort": host_port,
                          "PublishMode": "host"})  # fmt: skip
        return {
            "task_template": template,
            "name": target.app,
            "labels": release_labels(target, self.instance),
            "mode": docker.types.ServiceMode("replicated", replicas=spec.replicas),
            "update_config": rolling,
            "endpoint_spec": docker.types.EndpointSpec(ports=ports) if ports else None,
        }

    def create_service(self, app: str, arguments: Mapping[str, Any]) -> str:
        """Create a service from ``service_arguments``; its id."""
        created = self.call(f"create service {app}", lambda: self.api.create_service(**arguments))
        return str(created["ID"])

    def update_service(self, app: str, service_id: str, version: int, arguments: Mapping[str, Any]) -> None:
        """Send a new spec (``service_arguments``) to the service at its ``version`` index."""
        self.call(f"update service {app}", lambda: self.api.update_service(service_id, version, **arguments))

    def restore_service(self, app: str, service_id: str, version: int, previous: Mapping[str, Any]) -> None:
        """Send a spec the service had (as ``inspect_service`` read it) back to it."""
        self.call(
            f"roll service {app} back",
            lambda: self.api.update_service(
                service_id, version,
                task_template=previous.get("TaskTemplate"), name=previous.get("Name"),
                labels=previous.get("Labels"), mode=previous.get("Mode"),
                update_config=previous.get("UpdateConfig"), endpoint_spec=previous.get("EndpointSpec"),
            ),
        )  # fmt: skip

    def remove_service(self, service_id: str, name: str) -> None:
        self.call(f"remove service {name}", lambda: self.api.remove_service(service_id))

    @staticmethod
    def _pinned(ref: str, digest: str) -> str:
        """``repo:tag@sha256:...`` when the registry's digest is known (as ``docker service create`` pins it):
        every node runs the same image, and a tag that moved is a new spec that Swarm rolls out."""
        return f"{ref}@{digest}" if digest and "@" not in ref else ref

    @staticmethod
    def _service_mount(volume: str) -> docker.types.Mount:
        """``NAME_OR_ABS_PATH:CONTAINER_PATH[:ro|rw]`` as a service mount (a bind for an absolute path)."""
        source, target, *mode = volume.split(":")
        kind = "bind" if source.startswith("/") else "volume"
        return docker.types.Mount(target, source, type=kind, read_only=mode == ["ro"])


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


def _exposed(key: str) -> int | tuple[str, str]:
    # The SDK reads a bare int as tcp and appends "/tcp" to any string, so udp goes as a pair.
    port, _, proto = key.partition("/")
    return (port, proto) if proto == "udp" else int(port)


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
        networks=_addresses(row),
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
        created=_epoch(str(row.get("CreatedAt", ""))),
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
        created=_epoch(str(row.get("CreatedAt", ""))),
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


def _addresses(row: Mapping[str, Any]) -> dict[str, str]:
    networks = (row.get("NetworkSettings") or {}).get("Networks") or {}
    return {str(name): str(net.get("IPAddress")) for name, net in networks.items() if net and net.get("IPAddress")}


def owner_of(labels: Mapping[str, str]) -> Owner | None:
    """The source a container of ours records in its labels; None for one from before they did."""
    if not any(key.startswith(SOURCE + ".") for key in labels):
        return None
    return Owner(**{key: labels.get(f"{SOURCE}.{key}", "") for key in Owner.model_fields})


SSH_TIMEOUT = 20.0  # seconds for an ssh:// host to log in and answer `docker version`


def _ssh_preflight(url: str) -> None:
    """Log in to an ``ssh://`` engine host once with the ssh client, as the tunnel will, and ask the far
    side's docker for its version: so that an unreachable host, a refused key or a missing docker is
    one clear line in seconds, rather than ssh's own stderr and a hang inside the SDK."""
    argv = [*_ssh_argv(url), "docker", "version", "--format", "{{.Server.Version}}"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SSH_TIMEOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise EngineUnavailable(f"Docker engine at {url}: no ssh client on this machine") from None
    except subprocess.TimeoutExpired:
        raise EngineUnavailable(
            f"Docker engine at {url} does not answer: ssh gave no answer in {SSH_TIMEOUT:g}s"
        ) from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        why = lines[-1] if lines else f"ssh exited {done.returncode}"
        raise EngineUnavailable(f"Docker engine at {url} does not answer: {why}")


class SshTunnel:
    """A private unix socket that reaches an ``ssh://`` engine: each connection to it runs
    ``ssh HOST docker system dial-stdio`` and relays bytes both ways (what ``docker -H ssh://`` does).

    By hand because the SDK's own ssh transport imports paramiko (and cryptography) into every run,
    ssh or not, which costs more than the rest of our start-up; ssh's stderr is kept out of ours.
    """

    def __init__(self, url: str) -> None:
        self.argv = [*_ssh_argv(url), "docker", "system", "dial-stdio"]
        self.dir = tempfile.mkdtemp(prefix="reconcile-ssh-")
        self.path = os.path.join(self.dir, "docker.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(8)
        atexit.register(shutil.rmtree, self.dir, True)
        threading.Thread(target=self._serve, name="ssh-tunnel", daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _serve(self) -> None:
        while True:
            conn, _ = self.server.accept()
            process = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0
            )
            threading.Thread(target=self._upstream, args=(conn, process), daemon=True).start()
            threading.Thread(target=self._downstream, args=(conn, process), daemon=True).start()

    @staticmethod
    def _upstream(conn: socket.socket, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                process.stdin.write(data)
        with contextlib.suppress(OSError):
            process.stdin.close()

    @staticmethod
    def _downstream(conn: socket.socket, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        with contextlib.suppress(OSError):
            while data := process.stdout.read(65536):
                conn.sendall(data)
        with contextlib.suppress(OSError):
            conn.close()
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


def _ssh_argv(url: str) -> list[str]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = ["-p", str(parts.port)] if parts.port else []  # none: the user's ssh config decides
    except ValueError:
        raise EngineUnavailable(f"{url}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise EngineUnavailable(f"{url}: no host; write ssh://[user@]host[:port]")
    target = f"{parts.username}@{parts.hostname}" if parts.username else parts.hostname
    return ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(SSH_TIMEOUT / 2)}", *port, "--", target]


def connect(
    host: str | None = None, *, instance: str = "default", timeout: float = 60.0, calls: float | None = None
) -> Engine:
    """Connect to ``host`` (else ``DOCKER_HOST``, else the local socket) and check that it answers within
    ``timeout``; later calls may take ``calls`` seconds (default: ``timeout``)."""
    named = host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    base_url = named
    files = EnvFiles()
    if named.startswith("ssh://"):
        _ssh_preflight(named)
        base_url = SshTunnel(named).url
        files = EnvFiles(_ssh_argv(named), host=named)
    try:
        # A pass's deploys share the client (up to 32 at once, each with a gate and a removal): a pool
        # smaller than that would open and drop a connection per request, with a warning each time.
        client = docker.DockerClient(base_url=base_url, version=API_VERSION, timeout=int(timeout), max_pool_size=64)
    except docker.errors.DockerException as exc:
        raise EngineUnavailable(f"Docker engine at {named}: {_reason(exc)}") from None
    engine = Engine(client, named, instance=instance, files=files)
    engine.call("ping", client.ping)
    if calls is not None:
        client.api.timeout = int(calls)
    return engine
