"""A replicated app (``replicas:``) as a Docker Swarm service, and the gate over its tasks. Pure.

Guarantees:
- ``service_fields`` is everything of a service that the file decides, as plain JSON values: the
  replicas, how an update rolls (``update:``), where tasks may run (``on:``, as node constraints) and
  how a task is judged healthy (the app's probe, run in each task as a Docker healthcheck). A change in
  any of them is drift (``core.plan``); the container-shaping fields (image, env, ports, ...) are the
  same as a container's.
- A probe runs inside each task, so every node judges its own tasks and Swarm reports each one:
  ``http: /path`` is asked of the task's own loopback on its first published container port (with the
  image's ``wget``), ``exec:`` runs as given, ``docker: true`` keeps the image's HEALTHCHECK. A task
  counts as running only once its healthcheck passed.
- ``judge`` decides a rollout from task samples with the container gate's rules (``core.health.Gate``):
  a spec is good when ``replicas`` tasks of it run, all at once, for ``healthy_for``; it fails at the
  first task of it that fails (exits, is rejected, or turns unhealthy), when Swarm pauses the update,
  or when it is not whole within ``rollout_timeout``: the probe's ``timeout`` per batch of tasks, and
  the ``delay`` between batches. Tasks still starting are waited for, not failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from reconciler.core.health import Gate, Sample, Verdict, probe_timeout
from reconciler.core.model import AppSpec, parse_port

NANOSECONDS = 1_000_000_000
# A task of the release that will not run again. Not "orphaned": a task whose node went away did not fail,
# and Swarm places its slot elsewhere.
FAILED_STATES = frozenset({"failed", "rejected"})


def constraints(spec: AppSpec) -> list[str]:
    """``on:`` as Swarm placement constraints (node labels, or one node's hostname)."""
    if spec.on is None:
        return []
    if isinstance(spec.on, tuple):
        return [f"node.hostname=={name}" for name in spec.on]
    return [f"node.labels.{key}=={value}" for key, value in sorted(spec.on.items())]


def probe_port(spec: AppSpec) -> int | None:
    """The container port an ``http: /path`` probe asks a task on: the first one published."""
    for port in spec.ports:
        return parse_port(port)[2]
    return None


def healthcheck(spec: AppSpec) -> dict[str, Any] | None:
    """The Docker healthcheck a task runs (API form); None keeps the image's own, or none at all."""
    gate = spec.health
    if gate is None or gate.probe is None or gate.probe == "docker":
        return None
    if gate.exec is not None:
        test = ["CMD", *gate.exec]
    else:
        assert gate.http is not None and gate.on_container
        test = ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{probe_port(spec)}{gate.http}"]
    return {
        "Test": test,
        "Interval": max(1, round(gate.interval * NANOSECONDS)),
        "Timeout": round(probe_timeout(gate) * NANOSECONDS),
        "Retries": 1,  # as our gate: a probe that fails after the task was healthy fails it
        "StartPeriod": round(gate.timeout * NANOSECONDS),
    }


def service_fields(spec: AppSpec) -> dict[str, Any]:
    """What the file decides of a service beyond its container's shape (its drift is a rolling update)."""
    assert spec.replicas is not None
    update = spec.update
    return {
        "replicas": spec.replicas,
        "update": [update.parallelism, update.delay, update.order] if update is not None else None,
        "placement": constraints(spec),
        "healthcheck": healthcheck(spec),
    }


def rollout_timeout(spec: AppSpec) -> float:
    """How long a rollout may take before its gate fails: the probe's ``timeout`` per batch of
    ``update.parallelism`` tasks (1 without ``update:``, all at once for 0), and ``update.delay`` between
    batches: Swarm rolls them one after another."""
    assert spec.replicas is not None
    parallelism = spec.update.parallelism if spec.update is not None else 1
    delay = spec.update.delay if spec.update is not None else 0.0
    batches = 1 if parallelism == 0 else max(1, -(-spec.replicas // parallelism))
    return batches * spec.gate.timeout + (batches - 1) * delay


@dataclass(frozen=True)
class Task:
    """One task of a service, as the manager lists it."""

    id: str
    node: str  # the node's id
    slot: int
    state: str  # new ... running, complete, failed, shutdown, rejected, orphaned
    desired: str  # running or shutdown
    created: float  # epoch seconds
    current: bool  # made from the service's spec as it is now (not a task of the spec before)
    message: str = ""  # the task's status message or error


def judge(
    gate: Gate,
    tasks: Sequence[Task],
    *,
    replicas: int,
    since: float,
    at: float,
    paused: str = "",
    down: Mapping[str, str] | None = None,
) -> Gate:
    """The rollout's gate after one look at its tasks.

    ``since``: when the new spec was sent (a task of it that failed from then on fails the rollout);
    ``paused``: Swarm's update status message, when it paused the update; ``down``: the nodes that are not
    ready (id -> hostname), named in the verdict when a task of theirs holds the rollout up."""
    if gate.verdict.done:
        return gate
    failed = [task for task in tasks if task.current and task.created >= since and task.state in FAILED_STATES]
    if failed:
        first = failed[0]
        why = f": {first.message}" if first.message else ""
        return replace(gate, verdict=Verdict.FAILED, reason=f"a task of it {first.state} (slot {first.slot}){why}")
    if paused:
        return replace(gate, verdict=Verdict.FAILED, reason=f"Swarm paused the update: {paused}")
    whole, detail = tally(tasks, replicas)
    stuck = sorted({(down or {})[task.node] for task in tasks if task.node in (down or {}) and task.created >= since})
    if stuck:  # Swarm's updater waits for a task it gave a node that went away; it is left to Swarm
        detail += f"; node {', '.join(stuck)} is down, and the rollout waits for its task"
    return gate.observe(Sample(at=at, running=True, probe_ok=whole, detail=detail))


def tally(tasks: Sequence[Task], replicas: int) -> tuple[bool, str]:
    """Whether ``replicas`` tasks of the service's spec as it is now run (and no other task is wanted), and
    how many do, with why one does not (yet)."""
    wanted = [task for task in tasks if task.desired == "running"]
    running = [task for task in wanted if task.state == "running" and task.current]
    # A task of the spec before still wanted: the rollout has not reached every slot yet. (Scaling alone
    # keeps the running tasks: they are of the spec as it is now.)
    whole = len(running) == replicas == len(wanted)
    waiting = next((task for task in wanted if task not in running), None)
    detail = f"{len(running)} of {replicas} tasks of it running"
    if waiting is not None:  # why one is not (yet): "pending: no suitable node (host-mode port already in use...)"
        detail += f"; slot {waiting.slot} is {waiting.state}" + (f": {waiting.message}" if waiting.message else "")
    return whole, detail


def failures(tasks: Sequence[Task]) -> int:
    """Tasks of the service's spec as it is now that failed (a task that dies is replaced by a new one)."""
    return sum(1 for task in tasks if task.current and task.state in FAILED_STATES)
