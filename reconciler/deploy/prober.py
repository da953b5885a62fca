"""One prober of releases on an engine: a sample of a container or a service, and a health gate over them.

It needs the engine only (and, for a gate, a clock, a sleep and an ``stale`` question): no journal, no
lock, no proxy, so read-only code (``ops.status``, break-glass, the agent's stable clock) probes what a
deploy probes, the same way.

Guarantees:
- ``sample`` is one look at a container: not running, restarted, Docker's own healthcheck, and the app's
  http, tcp or exec probe. Each probe has its own deadline (``core.health.probe_timeout``): a hung probe
  is one failed sample; an http or tcp probe that nothing answered in time is asked once more first.
  ``on-container`` addresses are the container's own (on the proxy's network first, at the port the
  release was deployed with).
- ``gate`` probes until ``core.health.Gate`` decides, or ``stale()`` (the gate stays pending then); each of
  its samples is told to ``heard`` with the container's id and the gate's start (the dashboard shows them). It
  looks at the container every ``WATCH_STEP`` between samples, so a release that exits fails at once. A
  gate that fails first checks that the engine still answers (``engine_answers``): an engine going away
  raises ``EngineUnavailable``, it is no verdict on the release.
- ``look``, ``service_sample`` and ``task_lines`` are the same for a Swarm service (its tasks).
- ``stable_sample`` is one look for the stable clock (``core.stable``), container or service alike.
- A container the engine refuses to describe (not an outage) reads as "not there" (``inspect``).
"""

from __future__ import annotations

import http.client
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.adapters.docker import Inspected, task_from_row
from reconciler.adapters.protocols import DockerEngine
from reconciler.core import swarm
from reconciler.core.health import Gate, Sample, Verdict, probe_timeout
from reconciler.core.labels import epoch as _epoch
from reconciler.core.model import ON_CONTAINER, AppSpec, HealthSpec, ObservedContainer
from reconciler.core.proxy import proxy_network
from reconciler.core.stable import StableSample
from reconciler.errors import ContainerError

WATCH_STEP = 0.1  # seconds between looks at a gated container's state


@dataclass
class Prober:
    """Samples and gates of the releases on ``engine``; see the module docstring."""

    engine: DockerEngine
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    stale: Callable[[], bool] = field(default=lambda: False)  # a gate abandons its wait once it says so
    # A gate's samples: the container's id, when the gate started (its clock), the sample.
    heard: Callable[[str, float, Sample], None] = field(default=lambda container_id, started_at, sample: None)

    # -- containers ----------------------------------------------------------------------------------

    def sample(self, container_id: str, spec: HealthSpec) -> Sample:
        """One look at the container, its probe run (see the module docstring)."""
        now = self.clock()
        try:
            found = self.engine.inspect(container_id)
        except ContainerError as exc:  # the engine answers, but not about this container: not running
            return Sample(at=now, running=False, detail=str(exc))
        if found is None:
            return Sample(at=now, running=False, detail="the container is gone")
        health, restarts = found.health, found.restart_count
        if not found.running or found.restarting:
            detail = f"the container exited with code {found.exit_code}"
            if found.error:
                detail += f" ({found.error})"
            return Sample(
                at=now, running=False, restarts=restarts, docker_health=health, detail=detail,
                restarting=found.restarting, exit_code=found.exit_code,
            )  # fmt: skip
        ok: bool | None = True
        detail = ""
        deadline = probe_timeout(spec)
        # A probe that nothing answers in time is asked once more before the sample counts as failed: on a
        # busy host a healthy release answered a probe late (seen in CI), and one late answer after healthy
        # would fail its gate. A refusal or an error status counts at once.
        for _ in range(2):
            if spec.http is not None:
                ok, detail = _probe_http(self._addressed(spec.http, found), deadline)
            elif spec.tcp is not None:
                address = urllib.parse.urlsplit(self._addressed(f"tcp://{spec.tcp}", found)).netloc
                ok, detail = _probe_tcp(address, deadline)
            if ok is not None:
                break
        if spec.exec is not None:
            ok, detail = self.engine.exec_probe(container_id, list(spec.exec), timeout=deadline)
        return Sample(
            at=self.clock(), running=True, restarts=restarts, probe_ok=bool(ok), docker_health=health, detail=detail
        )

    def _addressed(self, url: str, found: Inspected) -> str:
        """``url`` with ``ON_CONTAINER`` replaced by the container's address (on the proxy's network first)."""
        if urllib.parse.urlsplit(url).hostname != ON_CONTAINER:
            return url
        parts = urllib.parse.urlsplit(url)
        networks = found.networks
        ip = networks.get(proxy_network(self.engine.instance)) or next(iter(networks.values()), "0.0.0.0")
        # The release's own route port: an older release, gated for a rollback, may listen on another.
        port = route_port(found, parts.port or 80)
        return parts._replace(netloc=f"{ip}:{port}").geturl()

    def gate(
        self, container_id: str, spec: HealthSpec, *, started_at: float | None = None, completes: bool = False
    ) -> Gate:
        """Probe the container until the gate decides, or ``stale()`` (then it stays pending). ``completes``: a
        job, whose exit 0 passes."""
        found = self.inspect(container_id)
        gate = Gate(
            completes=completes,
            spec=spec,
            started_at=self.clock() if started_at is None else started_at,
            restarts_at_start=found.restart_count if found is not None else 0,  # none: the first sample says why
        )
        while True:
            sample = self.sample(container_id, spec)
            self.heard(container_id, gate.started_at, sample)
            gate = gate.observe(sample)
            if gate.verdict is Verdict.FAILED:
                # An engine going away looks like a container that is gone or exited: that judges
                # the engine, not the release.
                self.engine_answers()
            if gate.verdict.done or self.stale():
                return gate
            self._wait_watching(container_id, gate.next_sample_at(self.clock()), gate.restarts_at_start)

    def engine_answers(self) -> None:
        """Raise ``EngineUnavailable`` unless the engine answers a ping on a new connection (``answers``)."""
        self.engine.answers()

    def _wait_watching(self, container_id: str, until: float, restarts: int) -> None:
        """Sleep until ``until``, but look at the container every 100 ms and return early when it stopped
        or restarted: a release that exits fails its gate at once, not one probe interval later."""
        while (left := until - self.clock()) > 0:
            self.sleep(min(left, WATCH_STEP))
            if self.stale():
                return
            found = self.inspect(container_id)
            if found is None or not found.running or found.restart_count > restarts:
                return

    def inspect(self, container: str) -> Inspected | None:
        """``engine.inspect``, with a refusal (not an outage) read as "not there": whatever comes next (a
        sample, a rename) meets the same refusal and says why."""
        try:
            return self.engine.inspect(container)
        except ContainerError:
            return None

    def dying(self, container_id: str) -> bool:
        """The container does not run now, Docker is restarting it, or it restarted since it was started."""
        found = self.inspect(container_id)
        return found is None or not found.running or found.restarting or found.restart_count > 0

    # -- services ------------------------------------------------------------------------------------

    def look(self, service_id: str) -> tuple[dict[str, Any], list[swarm.Task]]:
        """The service as the manager has it, and its tasks."""
        info = self.engine.inspect_service(service_id)
        template = (info.get("Spec") or {}).get("TaskTemplate")
        rows = self.engine.tasks_of(service_id)
        return info, [task_from_row(row, template) for row in rows]

    def service_sample(self, service_id: str, spec: AppSpec) -> tuple[Sample, float]:
        """One look for status and the stable clock: healthy when every task of the spec runs; and since
        when the spec is the service's (its last update)."""
        assert spec.replicas is not None
        info, tasks = self.look(service_id)
        whole, detail = swarm.tally(tasks, spec.replicas)
        sample = Sample(at=self.clock(), running=True, restarts=swarm.failures(tasks), probe_ok=whole, detail=detail)
        return sample, _epoch(str(info.get("UpdatedAt", "")))

    def task_lines(self, service_id: str) -> list[str]:
        """Each wanted task by node (``web-2: running``), then each node that is not ready."""
        _, tasks = self.look(service_id)
        nodes = self.engine.nodes()
        lines = []
        for task in sorted(tasks, key=lambda t: (t.slot, t.created)):
            if task.desired != "running":
                continue
            host, state, _ = nodes.get(task.node, (task.node[:12] or "(no node yet)", "", ""))
            why = f": {task.message}" if task.message and task.state != "running" else ""
            down = f" (node {state})" if state and state != "ready" else ""
            lines.append(f"slot {task.slot} on {host}{down}: {task.state}{why}")
        lines += [f"node {host} is {state}" for host, state, _ in sorted(nodes.values()) if state != "ready"]
        return lines

    # -- the stable clock ----------------------------------------------------------------------------

    def stable_sample(self, current: ObservedContainer, spec: AppSpec, *, at: float) -> StableSample:
        """One look at the app's release (a container, or a service's tasks) for ``core.stable``, taken ``at``
        (epoch seconds, the stable clock's time)."""
        if spec.service:
            seen, updated = self.service_sample(current.id, spec)
            return StableSample.of(seen, at=at, started_at=updated)
        return StableSample.of(self.sample(current.id, spec.gate), at=at, started_at=self.engine.started_at(current.id))


def route_port(found: Inspected, default: int) -> int:
    """The port a routed release was deployed with (its fingerprint), else ``default``."""
    port = found.fingerprint.get("route_port")
    return port if isinstance(port, int) and not isinstance(port, bool) else default


def _probe_http(url: str, timeout: float) -> tuple[bool | None, str]:
    """(healthy, what it saw); None for healthy when nothing answered within ``timeout``."""
    parts = urllib.parse.urlsplit(url)
    conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        conn = conn_type(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    except ValueError as exc:  # a port out of range; validation refuses it, a probe never raises
        return False, f"GET {url}: {exc}"
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return None if isinstance(exc, TimeoutError) else False, f"GET {url}: {exc.__class__.__name__}: {exc}"
    finally:
        conn.close()
    return status < 400, f"GET {url}: {status}"


def _probe_tcp(address: str, timeout: float) -> tuple[bool | None, str]:
    """(healthy, what it saw); None for healthy when nothing answered within ``timeout``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True, f"tcp {address}: open"
    except OSError as exc:
        return None if isinstance(exc, TimeoutError) else False, f"tcp {address}: {exc.strerror or exc}"
