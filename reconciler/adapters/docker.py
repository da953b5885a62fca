"""The only module that calls the Docker SDK: the real ``adapters.protocols.DockerEngine``.

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
- A file secret is copied into a new container before it starts (a tar with its owner and mode); a SOPS
  file's secret on an engine of this host is written under the pass's ``files_dir`` instead
  (``state.secret_files``) and bind-mounted read-only, its folder named by the container's
  ``io.reconciler.secret-files`` label, so that ``prune_secret_files`` removes it once no container
  mounts it.
- Rows and labels become records, and records labels, only by the core's mapping (``core.labels``), the
  one the in-memory engine of the tests uses too; an ``ssh://`` engine is reached by ``adapters.ssh``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types
import requests.exceptions
import urllib3.exceptions

from reconciler.adapters.envfile import EnvFiles
from reconciler.core import guard, swarm
from reconciler.core import images as image_match
from reconciler.core.labels import (
    INSTANCE,
    LABEL,
    MANAGED,
    SECRET_FILES,
    SECRETS_VOLUME,
    SOURCE,
    Inspected,
    NetworkRow,
    fingerprint_of,
    inspected_from,
    node_from_row,
    observed_from_row,
    observed_from_service,
    owner_of,
    port_bindings,
    release_labels,
    task_from_row,
)
from reconciler.core.model import SECRETS_DIR, AppSpec, HostLimits, ObservedContainer, ObservedState, parse_port
from reconciler.core.plan import Target
from reconciler.core.stack import SecretSpec, SopsRef, device_mapping, tmpfs_mounts
from reconciler.errors import ContainerError, EngineUnavailable, ImageError, ReconcileError
from reconciler.state import secret_files
from reconciler.state.secret_files import SecretFile

# Re-exported: the layers above read these names from the engine's module (the mapping itself is the core's).
__all__ = [
    "API_VERSION", "INSTANCE", "LABEL", "MANAGED", "SOURCE", "Engine", "Inspected", "connect", "fingerprint_of",
    "inspected_from", "node_from_row", "observed_from_row", "observed_from_service", "owner_of", "port_bindings",
    "release_labels", "task_from_row",
]  # fmt: skip

API_VERSION = "1.41"  # docker 20.10 and later; fixed so that connecting costs no version round-trip

T = TypeVar("T")
DIE_SETTLE = 1.0  # seconds a die event waits for the engine's listing to say the container no longer runs
REMOVAL_WAIT = 2.0  # seconds a listing waits for a container of ours that the engine is removing to be gone
OWN_DEATH_WINDOW = 120.0  # seconds a container this process stopped may take to die (a stop_timeout) and not be news


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


class Engine:
    """A connected Docker engine. ``host`` is what the user named (or the SDK's default socket)."""

    def __init__(self, client: Any, host: str, *, instance: str = "default", files: EnvFiles | None = None) -> None:
        self.client = client
        self.api = client.api
        self.host = host
        self.instance = instance
        self.files = files if files is not None else EnvFiles()  # env_files, read on the engine's host
        self.limits: HostLimits | None = None  # the policy's host folders; the pass that plans sets them
        # Containers this process stopped, killed or removed (id -> when): their die is no news (``deaths``).
        self._ending: dict[str, float] = {}
        self._ending_lock = threading.Lock()

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
        return guard.held_binds(what, volumes, limits, self.real_paths)

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
        """What runs. A container of this instance that the engine is removing (a ``docker rm -f`` under way)
        is waited for, at most ``REMOVAL_WAIT`` s: planned on, it would be started as it goes."""
        deadline = time.monotonic() + REMOVAL_WAIT
        while True:
            rows = self.call("list containers", lambda: self.api.containers(all=True))
            if time.monotonic() >= deadline or not any(self._removing(row) for row in rows):
                break
            time.sleep(0.05)
        containers = tuple(observed_from_row(row, instance=self.instance) for row in rows)
        services = tuple(observed_from_service(row, instance=self.instance) for row in self.services())
        return ObservedState(containers=containers + self._reached(services))

    def _removing(self, row: Mapping[str, Any]) -> bool:
        labels = row.get("Labels") or {}
        ours = labels.get(MANAGED) == "true" and labels.get(INSTANCE) == self.instance
        return ours and row.get("State") == "removing"

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
        """Create (not start) the container for ``target`` under ``name``; its id.

        ``networks`` maps each Docker network it joins to its extra aliases there (its own name resolves on
        each of them). ``secrets`` are copied in at ``/run/secrets/TARGET`` with their owner and mode before it
        ever starts; but with ``files_dir`` (an engine on this host), a secret of a SOPS file is written there
        (``state.secret_files``) and bind-mounted read-only, so that its plaintext never lands in the
        container's layer. ``job`` makes it a release command's throwaway container instead: that argv, no
        ports, no restart, no aliases."""
        spec = target.spec
        ports = port_bindings(spec.ports) if job is None else {}
        restart: dict[str, Any] = {"Name": spec.restart if job is None else "no"}
        if restart["Name"] == "on-failure":
            restart["MaximumRetryCount"] = 0
        labels = {**spec.labels, **release_labels(target, self.instance)}
        joined = list((networks or {}).items())
        mounted = [item for item in secrets if isinstance(item[0].source, SopsRef)] if self._local(files_dir) else []
        copied = [item for item in secrets if item not in mounted]
        # A read-only root takes no copy: the secrets go on a volume of the container's own (removed with it).
        secret_volume = bool(copied) and spec.read_only
        if secret_volume:
            labels[SECRETS_VOLUME] = "true"
        mounts: list[docker.types.Mount] = []
        if mounted:
            assert files_dir is not None
            folder, paths = secret_files.write(
                files_dir,
                [SecretFile(s.target, data, s.permissions, s.uid, s.gid) for s, data in mounted],
            )
            labels[SECRET_FILES] = folder
            mounts = [
                docker.types.Mount(f"{SECRETS_DIR}/{target}", str(path), type="bind", read_only=True)
                for target, path in paths.items()
            ]
        with self._calls(f"create {name}"), self._dropped_on_failure(files_dir, labels.get(SECRET_FILES)):
            host_config = self.api.create_host_config(
                port_bindings=ports,
                binds=self.held_binds(name, spec.volumes, self.limits),
                restart_policy=restart,
                init=spec.init,
                mounts=mounts or None,
                **_host_options(spec),
            )
            first = joined[0] if joined else None
            created = self.api.create_container(
                image=target.resolution.ref,
                name=name,
                command=list(job) if job is not None else list(spec.command) if spec.command is not None else None,
                environment=[f"{key}={value}" for key, value in env.items()],
                ports=[_exposed(key) for key in ports],
                labels=labels,
                host_config=host_config,
                stop_timeout=math.ceil(spec.stop_timeout),
                volumes=[SECRETS_DIR] if secret_volume else None,
                networking_config=self.api.create_networking_config(
                    {first[0]: self.api.create_endpoint_config(aliases=list(first[1]) if job is None else None)}
                )
                if first is not None
                else None,
                **_create_options(spec),
            )
            container_id = str(created["Id"])
            for network, aliases in joined[1:]:
                self.api.connect_container_to_network(
                    container_id, network, aliases=list(aliases) if job is None and aliases else None
                )
            if copied:
                where = SECRETS_DIR if secret_volume else "/"
                self.api.put_archive(container_id, where, secrets_tar(copied, volume=secret_volume))
        return container_id

    def _local(self, files_dir: Path | None) -> bool:
        """Whether secrets can be bind-mounted from ``files_dir``: the engine runs on this host."""
        return files_dir is not None and self.files.ssh is None

    @contextmanager
    def _dropped_on_failure(self, files_dir: Path | None, folder: str | None) -> Iterator[None]:
        """The secrets' folder of a container whose create failed is removed with it."""
        try:
            yield
        except BaseException:
            if files_dir is not None and folder:
                secret_files.remove(files_dir, folder)
            raise

    def prune_secret_files(self, files_dir: Path) -> list[str]:
        """Remove the folders of ``files_dir`` that no container of this engine mounts any more."""
        with self._calls("list containers"):
            rows = self.api.containers(all=True, filters={"label": SECRET_FILES})
        keep = {str((row.get("Labels") or {}).get(SECRET_FILES, "")) for row in rows}
        return secret_files.prune(files_dir, keep)

    def ensure_network(self, name: str, *, internal: bool = False, labels: Mapping[str, str] | None = None) -> None:
        """A bridge network of ours named ``name`` (created once; one of that name already there is used)."""
        with self._calls(f"create network {name}"):
            if not self.api.networks(names=[name]):
                try:
                    self.api.create_network(
                        name,
                        driver="bridge",
                        internal=internal,
                        labels={**(labels or {}), MANAGED: "true", INSTANCE: self.instance},
                    )
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:  # another pass made it meanwhile
                        raise

    def networks_of_instance(self) -> list[NetworkRow]:
        """Every network labelled with this instance: its name, labels, whether internal, who is on it."""
        with self._calls("list networks"):
            rows = self.api.networks(filters={"label": [f"{MANAGED}=true", f"{INSTANCE}={self.instance}"]})
            found = []
            for row in rows:
                # Every container on it, stopped ones too (a kept APP.prev): the network's own inspect lists only
                # those that run, and a network removed under a stopped container would break its next start.
                on_it = self.api.containers(all=True, filters={"network": row["Id"]})
                found.append(
                    NetworkRow(
                        name=str(row.get("Name", "")),
                        labels=dict(row.get("Labels") or {}),
                        internal=bool(row.get("Internal")),
                        attached=tuple(sorted(str((c.get("Names") or ["/?"])[0]).lstrip("/") for c in on_it)),
                    )
                )
            return found

    def remove_network(self, name: str) -> None:
        """Remove our network ``name`` when nothing is attached to it (else it stays; no error)."""
        with self._calls(f"remove network {name}"):
            for network in self.api.networks(names=[name]):
                labels = network.get("Labels") or {}
                if labels.get(MANAGED) == "true" and labels.get(INSTANCE) == self.instance:
                    with contextlib.suppress(docker.errors.APIError):
                        self.api.remove_network(network["Id"])

    def _ends(self, container_id: str) -> None:
        """``container_id`` is about to die by our hand: ``deaths`` does not report it."""
        with self._ending_lock:
            now = time.monotonic()
            self._ending = {key: at for key, at in self._ending.items() if now - at < OWN_DEATH_WINDOW}
            self._ending[container_id] = now

    def _ours_ended(self, container_id: str) -> bool:
        with self._ending_lock:
            return any(
                container_id.startswith(key) or key.startswith(container_id)
                for key, at in self._ending.items()
                if key and container_id and time.monotonic() - at < OWN_DEATH_WINDOW
            )

    def kill(self, container_id: str, name: str, signal: str) -> None:
        self._ends(container_id)
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
        self._ends(container_id)
        with self._calls(f"stop {name}"):
            self.api.stop(container_id, timeout=math.ceil(timeout))

    def rename(self, container_id: str, name: str) -> None:
        with self._calls(f"rename to {name}"):
            self.api.rename(container_id, name)

    def remove(self, container_id: str, name: str) -> None:
        """Remove the container; one that is gone already is no error. Its volumes stay (a database's data
        outlives its releases), but for the one that held its secrets (a read-only root's)."""
        self._ends(container_id)
        with self._calls(f"remove {name}"), contextlib.suppress(docker.errors.NotFound):
            held = self._secrets_volume(container_id)
            self.api.remove_container(container_id, force=True, v=False)
            if held:
                with contextlib.suppress(docker.errors.APIError):
                    self.api.remove_volume(held)

    def _secrets_volume(self, container_id: str) -> str:
        """The anonymous volume at /run/secrets of a container of ours with a read-only root ("" for none)."""
        data = self.api.inspect_container(container_id)
        if ((data.get("Config") or {}).get("Labels") or {}).get(SECRETS_VOLUME) != "true":
            return ""
        for mount in data.get("Mounts") or ():
            if mount.get("Destination") == SECRETS_DIR and mount.get("Type") == "volume":
                return str(mount.get("Name", ""))
        return ""

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

    def deaths(self, stop: threading.Event, *, since: float | None = None) -> Iterator[str]:
        """The name of each container of this instance (our labels) that dies from now on (from ``since``,
        epoch seconds, when given: the engine replays what it said meanwhile), as the engine says it (its
        ``die`` event), until ``stop`` is set: then it ends. A stream the engine closes (a dockerd
        restarting) is ``EngineUnavailable``, as a refused connection is; the caller connects again.

        Each is yielded once the engine's listing (what ``observe`` reads) no longer shows it running, or
        after ``DIE_SETTLE`` seconds (a restart policy may have started it again): the engine says ``die``
        a few milliseconds before its listing says so, and a pass woken at once would see it still running.

        A container this process stopped, killed or removed (a deploy's old release, a cooled warm one)
        is no news: its death is not yielded.
        """
        filters = {"type": "container", "event": "die", "label": [f"{MANAGED}=true", f"{INSTANCE}={self.instance}"]}
        with self._calls("follow die events"):
            stream = self.api.events(decode=True, filters=filters, since=None if since is None else int(since))
        done = threading.Event()

        def closer() -> None:
            # The stream blocks in a socket read: closing it from here is the one way to end that read.
            while not done.is_set() and not stop.wait(0.2):
                pass
            with contextlib.suppress(Exception):
                stream.close()

        threading.Thread(target=closer, name="deaths-closer", daemon=True).start()
        try:
            with self._calls("follow die events"):
                for event in stream:
                    if stop.is_set():
                        return
                    attributes = (event.get("Actor") or {}).get("Attributes") or {}
                    if self._ours_ended(str(event.get("id") or "")):
                        continue  # a release a pass stopped (a deploy, a cooled warm one): no pass for it
                    self._settled(str(event.get("id") or ""), stop)
                    yield str(attributes.get("name") or event.get("id") or "")
            if not stop.is_set():
                raise EngineUnavailable(f"Docker engine at {self.host} closed its event stream")
        except Exception:
            if stop.is_set():  # our own close of the stream (whatever the read raised then), not the engine's
                return
            raise
        finally:
            done.set()

    def _settled(self, container_id: str, stop: threading.Event) -> None:
        """Wait until the listing shows ``container_id`` not running (see ``deaths``), at most ``DIE_SETTLE`` s."""
        deadline = time.monotonic() + DIE_SETTLE
        while container_id and time.monotonic() < deadline and not stop.is_set():
            rows = self.api.containers(all=True, filters={"id": container_id})
            if not rows or rows[0].get("State") != "running":
                return
            stop.wait(0.02)

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


def _host_options(spec: AppSpec) -> dict[str, Any]:
    """The container options of ``spec`` that go in its HostConfig, in the SDK's terms (none when unset)."""
    options: dict[str, Any] = {
        "cap_add": list(spec.cap_add) or None,
        "cap_drop": list(spec.cap_drop) or None,
        "read_only": spec.read_only or None,
        "tmpfs": tmpfs_mounts(spec.tmpfs) or None,
        "sysctls": dict(spec.sysctls) or None,
        "ulimits": [docker.types.Ulimit(name=n, soft=u.soft, hard=u.hard) for n, u in spec.ulimits.items()] or None,
        "shm_size": spec.shm_size,
        "mem_limit": spec.memory,
        "nano_cpus": round(spec.cpus * 1e9) if spec.cpus is not None else None,
        "pids_limit": spec.pids_limit,
        "log_config": docker.types.LogConfig(type=spec.logging.driver, config=dict(spec.logging.options))
        if spec.logging is not None
        else None,
        "network_mode": spec.network_mode,
        "devices": [":".join(device_mapping(device)) for device in spec.devices] or None,
        "privileged": spec.privileged or None,
        "security_opt": list(spec.security_opt) or None,
        "extra_hosts": [entry.replace("=", ":", 1) for entry in spec.extra_hosts] or None,
    }
    return {key: value for key, value in options.items() if value is not None}


def _create_options(spec: AppSpec) -> dict[str, Any]:
    """The container options of ``spec`` that go in its Config (none when unset)."""
    options: dict[str, Any] = {
        "user": spec.user,
        "entrypoint": list(spec.entrypoint) if spec.entrypoint is not None else None,
        "working_dir": spec.working_dir,
        "hostname": spec.hostname,
        "stop_signal": spec.stop_signal,
    }
    return {key: value for key, value in options.items() if value is not None}


def secrets_tar(secrets: Sequence[tuple[SecretSpec, bytes]], *, volume: bool) -> bytes:
    """A tar of ``/run/secrets/TARGET`` files with their owner and mode (docker applies a tar's headers as they
    are), to unpack at ``/``; with ``volume``, of the bare names, to unpack in the volume at /run/secrets."""
    buffer = io.BytesIO()
    prefix = "" if volume else "run/secrets/"
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        if not volume:
            for folder in ("run", "run/secrets"):
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
        for secret, data in secrets:
            info = tarfile.TarInfo(prefix + secret.target)
            info.size, info.mode, info.uid, info.gid, info.mtime = (
                len(data),
                secret.permissions,
                secret.uid,
                secret.gid,
                0,
            )
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _exposed(key: str) -> int | tuple[str, str]:
    # The SDK reads a bare int as tcp and appends "/tcp" to any string, so udp goes as a pair.
    port, _, proto = key.partition("/")
    return (port, proto) if proto == "udp" else int(port)


def connect(
    host: str | None = None, *, instance: str = "default", timeout: float = 60.0, calls: float | None = None
) -> Engine:
    """Connect to ``host`` (else ``DOCKER_HOST``, else the local socket) and check that it answers within
    ``timeout``; later calls may take ``calls`` seconds (default: ``timeout``)."""
    named = host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    base_url = named
    files = EnvFiles()
    if named.startswith("ssh://"):
        from reconciler.adapters import ssh  # only for an ssh:// engine: its subprocess and threads

        ssh.preflight(named)
        base_url = ssh.SshTunnel(named).url
        files = EnvFiles(ssh.ssh_argv(named), host=named)
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
