"""An in-memory Docker engine: the ``DockerEngine`` interface with no daemon, for tests that run in milliseconds.

Guarantees:
- It keeps containers as the engine reports them (a ``GET /containers/json`` row and an inspect JSON)
  and reads them back with the core's mapping (``core.labels``), the same functions the real adapter
  uses: ``observe()`` and ``inspect()`` give the records the real engine gives for the same containers.
- It refuses what the engine refuses, with the project's errors: a name in use, a container or an image
  that is not there, a host port another running container publishes (``ContainerError``), a tag the
  registry does not have (``ImageError``); every call while ``unavailable`` is ``EngineUnavailable``.
- Nothing runs: a container's life is what the test scripts. An image says whether its exec probe
  passes (``healthy``) and whether a start dies at once (``exits``); ``die``, ``fail_health`` and
  ``script_probes`` change one container after it started.
- A container of this instance that stops running (``die``, ``kill``, ``stop``, a start that exits) is a
  ``die`` event that ``deaths`` yields, as the real engine's event stream does; the stream breaks
  (``EngineUnavailable``) while the engine is ``down``, and ``since`` replays what was said meanwhile.
- Time comes from ``clock`` (epoch seconds): pass the test's clock so that started-at times follow it.

Differences from the real engine (which the end-to-end tests still cover): no restart policy (a dead
container stays dead, its restart count never grows), no Swarm (no services, tasks or nodes), no
http/tcp health (no process listens: use ``exec`` or ``docker`` health), no logs but a release command's
(``FakeImage.job_output``; it ends at once with ``job_exits``), no bind-mount checks of
real paths (a host path is its own real path), a stop is instant (no stop timeout is waited), and ids
are counters, not digests. ``tests/test_fake_engine_parity.py`` checks the records against a real engine.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from reconciler.adapters.envfile import EnvFiles
from reconciler.adapters.protocols import DockerEngine
from reconciler.core import guard
from reconciler.core import images as image_match
from reconciler.core.labels import (
    INSTANCE,
    MANAGED,
    SECRET_FILES,
    Inspected,
    NetworkRow,
    inspected_from,
    observed_from_row,
    port_bindings,
    release_labels,
)
from reconciler.core.model import HostLimits, ObservedState, parse_port
from reconciler.core.plan import Target
from reconciler.core.stack import SecretSpec, SopsRef
from reconciler.errors import ContainerError, EngineUnavailable, ImageError
from reconciler.state import secret_files
from reconciler.state.secret_files import SecretFile

T = TypeVar("T")
_NEVER = "0001-01-01T00:00:00Z"  # docker's StartedAt of a container that never started


@dataclass
class FakeImage:
    """An image the registry holds (``publish``) or the engine holds (``build``, or pulled)."""

    ref: str  # repo:tag
    id: str  # the local image id (config digest)
    digest: str  # the registry's manifest digest ("" for an image only built here)
    healthy: bool = True  # what an exec probe in a container of it answers
    exits: int | None = None  # a start exits at once with this code (a release that crashes)
    job_exits: int = 0  # a release command run in a container of it exits at once with this code
    job_output: str = ""  # ... after printing this (its logs)

    @property
    def repository(self) -> str:
        return self.ref.rpartition(":")[0] if ":" in self.ref.rpartition("/")[2] else self.ref


@dataclass
class FakeNetwork:
    name: str
    labels: dict[str, str]
    internal: bool


@dataclass
class FakeContainer:
    id: str
    name: str
    image: FakeImage
    ref: str  # what it was created from
    labels: dict[str, str]
    ports: tuple[str, ...]
    stop_timeout: float
    created: float
    networks: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # network -> its extra names there
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, tuple[bytes, str, int, int]] = field(default_factory=dict)  # target -> data, mode, uid, gid
    job: tuple[str, ...] | None = None  # a release command's container: its argv
    state: str = "created"  # created | running | exited
    exit_code: int = 0
    error: str = ""
    started: float = 0.0  # epoch seconds of its last start; 0.0 never
    paused: bool = False
    docker_health: str = ""
    probes: list[bool] = field(default_factory=list)  # scripted answers of its exec probe, first first
    healthy: bool | None = None  # once set (``fail_health``), what its probe answers after the scripted ones

    def _networks(self) -> dict[str, dict[str, str]]:
        # As docker: attached to its networks always, an address on them only while it runs.
        running = self.state == "running"
        return {name: {"IPAddress": ip if running else ""} for name, ip in self.networks.items()}

    def row(self) -> dict[str, Any]:
        """As one row of ``GET /containers/json?all=1``."""
        running = self.state == "running"
        published = [
            {"PrivatePort": container, "PublicPort": host, "Type": proto}
            for _, host, container, proto in (parse_port(port) for port in self.ports)
            if running and host
        ]
        return {
            "Id": self.id,
            "Names": [f"/{self.name}"],
            "Image": self.ref,
            "ImageID": self.image.id,
            "State": self.state,
            "Status": f"Exited ({self.exit_code}) 1 second ago" if self.state == "exited" else self.state.title(),
            "Labels": dict(self.labels),
            "Created": int(self.created),
            "Ports": published,
            "NetworkSettings": {"Networks": self._networks()},
        }

    def inspect_json(self) -> dict[str, Any]:
        """As ``GET /containers/{id}/json``."""
        started = datetime.fromtimestamp(self.started, UTC).isoformat() if self.started else _NEVER
        return {
            "Id": self.id,
            "Name": f"/{self.name}",
            "Image": self.image.id,
            "RestartCount": 0,
            "State": {
                "Running": self.state == "running",
                "Restarting": False,
                "Paused": self.paused,
                "ExitCode": self.exit_code,
                "Error": self.error,
                "StartedAt": started,
                **({"Health": {"Status": self.docker_health}} if self.docker_health else {}),
            },
            "Config": {"Image": self.ref, "Labels": dict(self.labels), "StopTimeout": int(self.stop_timeout)},
            "NetworkSettings": {"Networks": self._networks()},
        }


class FakeEngine:
    """A Docker engine in memory (see the module's docstring for what it does and does not do)."""

    def __init__(self, *, instance: str = "default", clock: Callable[[], float] = time.time) -> None:
        self.host = "fake://engine"
        self.instance = instance
        self.files = EnvFiles()
        self.limits: HostLimits | None = None
        self.clock = clock
        self.available = True
        self.registry: dict[str, FakeImage] = {}
        self.images: dict[str, FakeImage] = {}  # by every ref it is tagged as, here
        self.containers: dict[str, FakeContainer] = {}  # by id
        self.networks: dict[str, FakeNetwork] = {}
        self.calls: list[str] = []  # what was asked, in order ("start web", "rename web.next web", ...)
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._died: list[tuple[float, str]] = []  # every die event: when (``clock``), which container
        self._said = threading.Condition(self._lock)

    # -- what a test sets up ------------------------------------------------------------------------

    def publish(self, ref: str, *, healthy: bool = True, exits: int | None = None) -> FakeImage:
        """An image the registry holds under ``ref`` (repo:tag): pulled on demand."""
        number = next(self._ids)
        image = FakeImage(ref, f"sha256:{number:064x}", f"sha256:{number + 10**6:064x}", healthy, exits)
        self.registry[ref] = image
        return image

    def build(
        self, ref: str, *, healthy: bool = True, exits: int | None = None, image_id: str | None = None
    ) -> FakeImage:
        """An image the engine holds under ``ref`` and no registry has (as ``docker build``/``import``); its id
        is ``image_id`` when given (the id a real engine gave the same image)."""
        image = FakeImage(ref, image_id or f"sha256:{next(self._ids):064x}", "", healthy, exits)
        self.images[ref] = image
        return image

    def container(self, name_or_id: str) -> FakeContainer:
        """The container of that name or id (the test's own look: no call of the engine)."""
        found = self._find(name_or_id)
        assert found is not None, f"no container {name_or_id}: {sorted(c.name for c in self.containers.values())}"
        return found

    def names(self) -> dict[str, str]:
        """Every container's name and state, as ``docker ps -a`` shows them."""
        return {c.name: c.state for c in self.containers.values()}

    def die(self, name_or_id: str, exit_code: int = 1) -> None:
        """The container's process exits (a crash): it stays exited."""
        with self._lock:
            found = self.container(name_or_id)
            found.state, found.exit_code = "exited", exit_code
            self._die(found)

    def fail_health(self, name_or_id: str, healthy: bool = False) -> None:
        """From now on the container's exec probe answers ``healthy`` (after any scripted answers)."""
        self.container(name_or_id).healthy = healthy

    def script_probes(self, name_or_id: str, answers: Sequence[bool]) -> None:
        """The container's next exec probes answer these, in order; then its image's (or ``fail_health``'s)."""
        self.container(name_or_id).probes.extend(answers)

    @contextmanager
    def down(self) -> Iterator[None]:
        """The engine does not answer while in this block (a dockerd restarting)."""
        self.available = False
        try:
            yield
        finally:
            self.available = True

    def answer(self, what: str) -> None:
        """Raise as the real adapter does when the engine does not answer ``what``."""
        if not self.available:
            raise EngineUnavailable(f"Docker engine at {self.host} does not answer ({what}): connection refused")

    # -- the interface: what the deploys ask besides containers -----------------------------------

    def answers(self) -> None:
        self.answer("ping")

    def image_id(self, ref: str) -> str:
        self.answer("inspect image")
        image = self.images.get(ref)
        return image.id if image is not None else ""

    def create_in_host_network(
        self, name: str, *, image: str, entrypoint: list[str], command: list[str], user: str,
        labels: Mapping[str, str], binds: list[str],
    ) -> str:  # fmt: skip
        raise NotImplementedError("the fake engine has no host network (the proxy runs on the real engine)")

    # No Swarm here: a service is the real engine's (tests/test_services.py).
    def inspect_service(self, service_id: str) -> dict[str, Any]:
        raise NotImplementedError("the fake engine runs no services")

    def tasks_of(self, service_id: str) -> list[dict[str, Any]]:
        raise NotImplementedError("the fake engine runs no services")

    def service_arguments(self, target: Target, env: Mapping[str, str]) -> dict[str, Any]:
        raise NotImplementedError("the fake engine runs no services")

    def create_service(self, app: str, arguments: Mapping[str, Any]) -> str:
        raise NotImplementedError("the fake engine runs no services")

    def update_service(self, app: str, service_id: str, version: int, arguments: Mapping[str, Any]) -> None:
        raise NotImplementedError("the fake engine runs no services")

    def restore_service(self, app: str, service_id: str, version: int, previous: Mapping[str, Any]) -> None:
        raise NotImplementedError("the fake engine runs no services")

    def remove_service(self, service_id: str, name: str) -> None:
        raise NotImplementedError("the fake engine runs no services")

    # -- the interface: reading ---------------------------------------------------------------------

    @property
    def local(self) -> bool:
        return True

    def real_paths(self, paths: Sequence[str]) -> tuple[dict[str, str | None], str]:
        return {path: path for path in paths}, ""

    def held_binds(self, what: str, volumes: Sequence[str], limits: HostLimits | None) -> list[str]:
        return guard.held_binds(what, volumes, limits, self.real_paths)

    def observe(self) -> ObservedState:
        with self._lock:
            self._asked("list containers")
            rows = [c.row() for c in self.containers.values()]
        return ObservedState(containers=tuple(observed_from_row(row, instance=self.instance) for row in rows))

    def service_image(self, service_id: str) -> str:
        self._asked("inspect service")
        raise ContainerError(f"inspect service: service {service_id} not found (this engine is no swarm manager)")

    def nodes(self) -> dict[str, tuple[str, str, str]]:
        self._asked("list nodes")
        return {}

    def services(self) -> list[dict[str, Any]]:
        self._asked("list services")
        return []

    def local_images(self) -> tuple[image_match.LocalImage, ...]:
        with self._lock:
            self._asked("list images")
            by_id: dict[str, list[str]] = {}
            for ref, image in self.images.items():
                by_id.setdefault(image.id, []).append(ref)
            rows = [
                {
                    "Id": image.id,
                    "RepoTags": by_id[image.id],
                    "RepoDigests": [f"{image.repository}@{image.digest}"] if image.digest else [],
                }
                for image in {image.id: image for image in self.images.values()}.values()
            ]
        return image_match.from_engine(rows)

    def registry_digest(self, ref: str) -> str:
        self._asked(f"look up {ref}")
        found = self.registry.get(ref)
        if found is None:
            raise ImageError(f"image {ref} does not exist in its registry (manifest unknown)")
        return found.digest

    def inspect(self, container: str) -> Inspected | None:
        with self._lock:
            self._asked(f"inspect {container}")
            found = self._find(container)
            data = found.inspect_json() if found is not None else None
        return inspected_from(data, instance=self.instance) if data is not None else None

    def has_image(self, ref: str) -> bool:
        self._asked(f"look up {ref}")
        return self._local(ref) is not None

    def logs(self, container_id: str, *, tail: int = 20) -> str:
        with self._lock:
            self._asked("read logs")
            found = self._find(container_id)
            if found is None or found.job is None or not found.started:
                return ""
            return "\n".join(found.image.job_output.splitlines()[-tail:])

    def publishers(self, port: int) -> list[str]:
        with self._lock:
            self._asked("list containers")
            return sorted(c.name for c in self.containers.values() if port in self._host_ports(c))

    def started_at(self, container_id: str) -> float:
        found = self.inspect(container_id)
        return found.started_at if found is not None else 0.0

    def exec_probe(self, container_id: str, argv: list[str], *, timeout: float) -> tuple[bool, str]:
        what = f"exec {' '.join(argv)}"
        with self._lock:
            self._asked("exec health probe")
            found = self._find(container_id)
            if found is None:
                return False, f"{what}: exec health probe: No such container: {container_id}"
            if found.state != "running":
                return False, f"{what}: exec health probe: container {found.id} is not running"
            if found.probes:
                ok = found.probes.pop(0)
            else:
                ok = found.image.healthy if found.healthy is None else found.healthy
        return ok, f"{what}: exit {0 if ok else 1}"

    # -- the interface: changing --------------------------------------------------------------------

    def pull(self, ref: str) -> str:
        with self._lock:
            self._asked(f"pull {ref}")
            found = self.registry.get(ref)
            if found is None:
                raise ImageError(f"pull {ref}: manifest for {ref} not found: manifest unknown")
            self.images[ref] = found
            return found.id

    def create(
        self,
        target: Target,
        name: str,
        *,
        env: Mapping[str, str],
        networks: Mapping[str, Sequence[str]] | None = None,
        secrets: Sequence[tuple[SecretSpec, bytes]] = (),
        job: Sequence[str] | None = None,
        files_dir: Path | None = None,
    ) -> str:
        spec = target.spec
        labels = {**spec.labels, **release_labels(target, self.instance)}
        mounted = [(s, data) for s, data in secrets if isinstance(s.source, SopsRef)] if files_dir else []
        if mounted:  # as the real engine on this host: written under files_dir, its folder a label
            assert files_dir is not None
            labels[SECRET_FILES], _ = secret_files.write(
                files_dir, [SecretFile(s.target, data, s.permissions, s.uid, s.gid) for s, data in mounted]
            )
        with self._lock:
            self._asked(f"create {name}")
            image = self._local(target.resolution.ref)
            if image is None:
                raise ContainerError(f"create {name}: No such image: {target.resolution.ref}")
            if self._find_named(name) is not None:
                raise ContainerError(f'create {name}: Conflict. The container name "/{name}" is already in use')
            for network in networks or {}:
                if network not in self.networks:
                    raise ContainerError(f"create {name}: network {network} not found")
            port_bindings(spec.ports)  # refuses what the real create refuses to bind
            self.held_binds(name, spec.volumes, self.limits)
            container = FakeContainer(
                id=f"{next(self._ids):064x}",
                name=name,
                image=image,
                ref=target.resolution.ref,
                labels=labels,
                ports=tuple(spec.ports) if job is None else (),
                stop_timeout=spec.stop_timeout,
                created=self.clock(),
                env=dict(env),
                secrets={s.target: (data, s.mode, s.uid, s.gid) for s, data in secrets},
                job=tuple(job) if job is not None else None,
            )
            # Docker's default bridge when no network is named, as ``docker run`` without ``--network``.
            for network, aliases in (networks or {"bridge": ()}).items():
                subnet = "172.17.0" if network == "bridge" else "172.30.0"
                container.networks[network] = f"{subnet}.{len(self.containers) + 2}"
                if aliases and job is None:
                    container.aliases[network] = tuple(aliases)
            self.containers[container.id] = container
            self.calls.append(f"create {name}")
            return container.id

    def prune_secret_files(self, files_dir: Path) -> list[str]:
        with self._lock:
            keep = {c.labels[SECRET_FILES] for c in self.containers.values() if SECRET_FILES in c.labels}
        return secret_files.prune(files_dir, keep)

    def ensure_network(self, name: str, *, internal: bool = False, labels: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self._asked(f"create network {name}")
            if name not in self.networks:
                self.networks[name] = FakeNetwork(
                    name, {**(labels or {}), MANAGED: "true", INSTANCE: self.instance}, internal
                )

    def networks_of_instance(self) -> list[NetworkRow]:
        with self._lock:
            self._asked("list networks")
            return [
                NetworkRow(
                    name=net.name,
                    labels=dict(net.labels),
                    internal=net.internal,
                    attached=tuple(sorted(c.name for c in self.containers.values() if net.name in c.networks)),
                )
                for net in self.networks.values()
                if net.labels.get(INSTANCE) == self.instance and net.labels.get(MANAGED) == "true"
            ]

    def remove_network(self, name: str) -> None:
        with self._lock:
            self._asked(f"remove network {name}")
            if not any(name in c.networks for c in self.containers.values()):
                self.networks.pop(name, None)

    def kill(self, container_id: str, name: str, signal: str) -> None:
        with self._lock:
            found = self._existing(container_id, f"signal {name}")
            if found.state != "running":
                raise ContainerError(f"signal {name}: Container {container_id} is not running")
            found.state, found.exit_code = "exited", 137
            self._die(found)

    def start(self, container_id: str, name: str) -> None:
        with self._lock:
            found = self._existing(container_id, f"start {name}")
            if found.state == "running":
                return
            for port in self._host_ports(found, running=False):
                holders = [c.name for c in self.containers.values() if c is not found and port in self._host_ports(c)]
                if holders:
                    raise ContainerError(
                        f"start {name}: driver failed programming external connectivity: "
                        f"Bind for 0.0.0.0:{port} failed: port is already allocated"
                    )
            found.started = self.clock()
            if found.job is not None:  # a release command: it ran, and ended
                found.state, found.exit_code = "exited", found.image.job_exits
                self._die(found)
            elif found.image.exits is not None:
                found.state, found.exit_code = "exited", found.image.exits
                self._die(found)
            else:
                found.state, found.exit_code = "running", 0
            self.calls.append(f"start {found.name}")

    def unpause(self, container_id: str, name: str) -> None:
        with self._lock:
            self._existing(container_id, f"unpause {name}").paused = False

    def stop(self, container_id: str, name: str, timeout: float) -> None:
        with self._lock:
            found = self._existing(container_id, f"stop {name}")
            if found.state == "running":
                found.state, found.exit_code = "exited", 143  # as a process that SIGTERM ended (128 + 15)
                self._die(found)
            self.calls.append(f"stop {found.name}")

    def rename(self, container_id: str, name: str) -> None:
        with self._lock:
            found = self._existing(container_id, f"rename to {name}")
            other = self._find_named(name)
            if other is not None and other is not found:
                raise ContainerError(
                    f'rename to {name}: Conflict. The container name "/{name}" is already in use by {other.id}'
                )
            self.calls.append(f"rename {found.name} {name}")
            found.name = name

    def remove(self, container_id: str, name: str) -> None:
        with self._lock:
            self._asked(f"remove {name}")
            found = self._find(container_id)
            if found is not None:
                del self.containers[found.id]
                self.calls.append(f"remove {found.name}")

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        with self._lock:
            self._asked(f"tag {repository}:{tag}")
            image = next((i for i in self.images.values() if i.id == image_id), None)
            if image is None:
                raise ContainerError(f"tag {repository}:{tag}: No such image: {image_id}")
            self.images[f"{repository}:{tag}"] = image

    def push(self, repository: str, tag: str) -> None:
        with self._lock:
            self._asked(f"push {repository}:{tag}")
            image = self.images.get(f"{repository}:{tag}")
            if image is None:
                raise ImageError(f"push {repository}:{tag}: An image does not exist locally with the tag")
            self.registry[f"{repository}:{tag}"] = image

    def deaths(self, stop: threading.Event, *, since: float | None = None) -> Iterator[str]:
        self._asked("follow die events")
        with self._lock:
            seen = len(self._died) if since is None else next(
                (i for i, (when, _) in enumerate(self._died) if when >= since), len(self._died)
            )  # fmt: skip
        while not stop.is_set():
            with self._said:
                if not self.available:
                    raise EngineUnavailable(f"Docker engine at {self.host} closed its event stream")
                if seen == len(self._died):
                    self._said.wait(0.05)
                new, seen = self._died[seen:], len(self._died)
            for _, name in new:
                if stop.is_set():
                    return
                yield name

    # -- inside ---------------------------------------------------------------------------------------

    def _die(self, found: FakeContainer) -> None:
        """A container that stopped running: a die event, when it is one of this instance's."""
        if found.labels.get(MANAGED) == "true" and found.labels.get(INSTANCE) == self.instance:
            self._died.append((self.clock(), found.name))
            self._said.notify_all()

    def _asked(self, what: str) -> None:
        self.answer(what)

    def _find(self, name_or_id: str) -> FakeContainer | None:
        """By id, a unique id prefix, or name: as the engine resolves a container reference."""
        if name_or_id in self.containers:
            return self.containers[name_or_id]
        named = self._find_named(name_or_id)
        if named is not None:
            return named
        prefixed = [c for key, c in self.containers.items() if key.startswith(name_or_id)]
        return prefixed[0] if len(prefixed) == 1 else None

    def _find_named(self, name: str) -> FakeContainer | None:
        return next((c for c in self.containers.values() if c.name == name), None)

    def _existing(self, container_id: str, what: str) -> FakeContainer:
        self._asked(what)
        found = self._find(container_id)
        if found is None:
            raise ContainerError(f"{what}: No such container: {container_id}")
        return found

    def _local(self, ref: str) -> FakeImage | None:
        if ref in self.images:
            return self.images[ref]
        digest = ref.partition("@")[2]
        return next((i for i in self.images.values() if digest and i.digest == digest), None)

    @staticmethod
    def _host_ports(container: FakeContainer, *, running: bool = True) -> set[int]:
        if running and container.state != "running":
            return set()
        return {host for _, host, _, _ in (parse_port(port) for port in container.ports) if host}


def _is_a_docker_engine(fake: FakeEngine) -> DockerEngine:
    """mypy's structural check that the fake implements the interface the real adapter does."""
    return fake


@dataclass
class FakeClock:
    """Monotonic time that moves only when something sleeps: a 30 s health gate passes in microseconds."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
