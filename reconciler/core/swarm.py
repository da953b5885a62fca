"""A replicated app (``replicas:``) as a Docker Swarm service, and the gate over its tasks. Pure.

Guarantees:
- ``service_fields`` is everything of a service that the file decides, as plain JSON values: the
  replicas, how an update rolls (``update:``), where tasks may run (``on:``, as node constraints) and
  how a task is judged healthy (the app's probe, run in each task as a Docker healthcheck). A change in
  any of them is drift (``core.plan``); the container-shaping fields (image, env, ports, ...) are the
  same as a container's.
- A probe runs inside each task, so every node judges its own tasks and Swarm reports each one:
  ``http: /path`` is asked of the task's own loopback on its route's port, else its first published
  container port (with the image's ``wget``), ``exec:`` runs as given, ``docker: true`` keeps the image's
  HEALTHCHECK. A task counts as running only once its healthcheck passed.
- A routed service's tasks each publish the route's port in host mode, on a host port their node picks (two
  tasks on one node never clash, so a start-first update has room); ``endpoints`` is where the proxy
  reaches them: the node's address and that port, for each task that runs and is meant to.
- ``judge`` decides a rollout from task samples with the container gate's rules (``core.health.Gate``):
  a spec is good when ``replicas`` tasks of it run, all at once, for ``healthy_for``; it fails at the
  first task of it that fails (exits, is rejected, or turns unhealthy), when Swarm pauses the update,
  or when it is not whole within ``rollout_timeout``: the probe's ``timeout`` per batch of tasks, and
  the ``delay`` between batches. Tasks still starting are waited for, not failed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from reconciler.core.health import Gate, Sample, Verdict, probe_timeout
from reconciler.core.model import AppSpec, parse_port, secret_hash

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
    """The container port an ``http: /path`` probe asks a task on: its route's, else the first one published."""
    if spec.route is not None:
        return spec.route.port
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
        # Two probes in a row: as our gate asks a probe that got no answer once more (a busy node is slow to
        # exec one), and then fails a task that was healthy.
        "Retries": 2,
        "StartPeriod": round(gate.timeout * NANOSECONDS),
    }


def default_order(spec: AppSpec) -> str:
    """How a service without ``update:`` rolls: a routed one start-first (a task's replacement serves before it
    goes, so one replica is never a gap in its route), others stop-first (Swarm's default)."""
    return "start-first" if spec.route is not None else "stop-first"


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


def read_back(app: str, spec: Mapping[str, Any], labelled: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint of a service of ours as it runs now: ``labelled`` (what its labels say we deployed)
    with each field the file decides read back from the service's spec, so that a change made by hand
    (``docker service update --env-add``, ``--constraint-add``, ``--update-parallelism``, ...) is drift like
    any other. Env keys are read for those we set (an ``env_file``'s keys are not told apart)."""
    fields = dict(labelled)
    template = spec.get("TaskTemplate") or {}
    container = template.get("ContainerSpec") or {}
    replicated = (spec.get("Mode") or {}).get("Replicated")
    if "replicas" in fields and isinstance(replicated, dict):
        fields["replicas"] = replicated.get("Replicas", 0)
    if "update" in fields:
        rolling = spec.get("UpdateConfig") or {}
        update = [rolling.get("Parallelism", 0), rolling.get("Delay", 0) / NANOSECONDS,
                  rolling.get("Order", "stop-first")]  # fmt: skip
        default = [1, 0.0, "start-first" if "route_port" in labelled else "stop-first"]
        fields["update"] = None if labelled["update"] is None and update == default else update
    if "placement" in fields:
        fields["placement"] = list((template.get("Placement") or {}).get("Constraints") or [])
    if "healthcheck" in fields:
        check = container.get("Healthcheck")
        keys = ("Test", "Interval", "Timeout", "Retries", "StartPeriod")
        # The manager leaves out what is zero (a 0s start period), as it leaves out empty args below.
        fields["healthcheck"] = {key: check.get(key, 0) for key in keys} if check else None
    if isinstance(labelled.get("env"), dict):
        running = dict(item.partition("=")[::2] for item in container.get("Env") or [])
        fields["env"] = {key: secret_hash(app, key, running[key]) for key in labelled["env"] if key in running}
    if "command" in fields:
        args = container.get("Args")
        fields["command"] = list(args) if args else ([] if labelled["command"] == [] else None)
    if "init" in fields:
        fields["init"] = bool(container.get("Init"))
    if "stop_timeout" in fields:
        fields["stop_timeout"] = container.get("StopGracePeriod", 10 * NANOSECONDS) / NANOSECONDS
    if "restart" in fields:
        condition = (template.get("RestartPolicy") or {}).get("Condition", "any")
        kept = labelled["restart"] if labelled["restart"] in ("always", "unless-stopped") else "unless-stopped"
        fields["restart"] = {"none": "no", "on-failure": "on-failure"}.get(condition, kept)
    if "route_port" in fields:  # the port each task publishes on a port its node picks (none: nothing to route)
        dynamic = [p for p in (spec.get("EndpointSpec") or {}).get("Ports") or [] if not p.get("PublishedPort")]
        fields["route_port"] = dynamic[0].get("TargetPort") if dynamic else None
    if isinstance(labelled.get("ports"), list):
        fields["ports"] = _same_or(labelled["ports"], _ports(spec), key=_port_key)
    if isinstance(labelled.get("volumes"), list):
        fields["volumes"] = _same_or(labelled["volumes"], _volumes(container), key=_volume_key)
    return fields


def _ports(spec: Mapping[str, Any]) -> list[str]:
    """The fixed host ports a service publishes, as the file writes them (a route's port has none)."""
    found = []
    for port in (spec.get("EndpointSpec") or {}).get("Ports") or []:
        if port.get("PublishedPort"):
            udp = "/udp" if port.get("Protocol") == "udp" else ""
            found.append(f"{port['PublishedPort']}:{port.get('TargetPort')}{udp}")
    return sorted(found)


def _volumes(container: Mapping[str, Any]) -> list[str]:
    return sorted(
        f"{mount.get('Source')}:{mount.get('Target')}" + (":ro" if mount.get("ReadOnly") else "")
        for mount in container.get("Mounts") or []
    )


def _port_key(port: str) -> tuple[int | None, int, str]:
    _, host, container, proto = parse_port(port)
    return host, container, proto


def _volume_key(volume: str) -> tuple[str, str, bool]:
    source, target, *mode = volume.split(":")
    return source, target, mode == ["ro"]


def _same_or(labelled: list[str], running: list[str], *, key: Callable[[str], object]) -> list[str]:
    """``labelled`` when the service runs the same (``8080:8000/tcp`` is ``8080:8000``), else what it runs."""
    return labelled if sorted(map(key, labelled), key=str) == sorted(map(key, running), key=str) else running


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
    ports: tuple[tuple[int, int], ...] = ()  # (container port, host port) it publishes on its node


def endpoints(
    tasks: Sequence[Task], addresses: Mapping[str, str], ports: Collection[int]
) -> tuple[tuple[str, int], ...]:
    """Where a routed service is reached: (node address, host port) of each task that runs and is meant to
    (a task Swarm is stopping leaves at once), on its container port of ``ports`` (the route's, and during
    a rollout that changes it, the spec's before); sorted. ``addresses``: node id -> its address."""
    found: set[tuple[str, int]] = set()
    for task in tasks:
        address = addresses.get(task.node)
        if task.state != "running" or task.desired != "running" or not address:
            continue
        found.update((address, published) for target, published in task.ports if target in ports and published)
    return tuple(sorted(found))


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
