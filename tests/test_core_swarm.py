"""Replicated apps, the pure part: what a service's spec is made of, when its rollout passes or fails, how
the planner sees a service, and each mistake in the file at its place. Pure: no engine."""

from __future__ import annotations

import pytest

from reconciler.converge.run import parse_desired
from reconciler.core import swarm
from reconciler.core.fleet import placed
from reconciler.core.health import Gate, Verdict
from reconciler.core.model import DesiredState, ObservedContainer, ObservedState
from reconciler.core.plan import ActionKind, Resolution, fingerprint, plan, simulate, spec_hash
from reconciler.errors import InvalidDesiredState

FILE = "desired-state.yaml"
API = (
    "apps:\n  api:\n    image: x/api\n    version: v1\n    replicas: 2\n"
    '    ports: ["8080:8000"]\n    on: {role: web}\n    update: {parallelism: 1, delay: 5s, order: start-first}\n'
    "    health: {http: /health, interval: 500ms, timeout: 30s, healthy_for: 10s}\n"
)


def desired(text: str = API) -> DesiredState:
    return parse_desired(text.encode(), FILE, "c0ffee")


def errors(text: str) -> list[str]:
    with pytest.raises(InvalidDesiredState) as caught:
        parse_desired(text.encode(), FILE, "")
    return caught.value.errors


def test_a_service_spec_is_its_replicas_rollout_placement_and_the_probe_its_tasks_run() -> None:
    spec = desired().apps["api"]
    assert spec.service and swarm.constraints(spec) == ["node.labels.role==web"]
    check = swarm.healthcheck(spec)
    assert check is not None
    assert check["Test"] == ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8000/health"]
    assert (check["Interval"], check["Timeout"], check["Retries"]) == (500_000_000, 1_000_000_000, 2)
    assert swarm.service_fields(spec) == {
        "replicas": 2, "update": [1, 5.0, "start-first"], "placement": ["node.labels.role==web"], "healthcheck": check,
    }  # fmt: skip
    one = desired(
        API.replace("on: {role: web}", "on: [node-2]").replace("health: {http: /health", 'health: {exec: ["true"]')
    )
    assert swarm.constraints(one.apps["api"]) == ["node.hostname==node-2"]
    assert swarm.healthcheck(one.apps["api"])["Test"] == ["CMD", "true"]  # type: ignore[index]
    assert swarm.healthcheck(desired(API.replace("http: /health", "docker: true")).apps["api"]) is None


def task(slot: int, state: str, *, created: float = 10.0, current: bool = True, desired: str = "running") -> swarm.Task:
    return swarm.Task(f"t{slot}{state}", f"n{slot}", slot, state, desired, created, current, message="")


def gate(healthy_for: float = 1.0, timeout: float = 30.0) -> Gate:
    spec = desired().apps["api"].gate.model_copy(update={"healthy_for": healthy_for, "timeout": timeout})
    return Gate(spec, started_at=0.0)


def test_a_rollout_passes_once_every_task_of_it_ran_together_for_healthy_for() -> None:
    starting = [task(1, "running"), task(2, "starting")]
    g = swarm.judge(gate(), starting, replicas=2, since=5.0, at=0.0)
    assert g.verdict is Verdict.PENDING  # a task still starting is waited for, not failed
    both = [task(1, "running"), task(2, "running")]
    g = swarm.judge(g, both, replicas=2, since=5.0, at=0.5)
    assert g.verdict is Verdict.PENDING
    assert swarm.judge(g, both, replicas=2, since=5.0, at=1.5).verdict is Verdict.PASSED
    old = [task(1, "running"), task(2, "running", current=False)]  # the rollout has not reached slot 2
    assert swarm.tally(old, 2) == (False, "1 of 2 tasks of it running; slot 2 is running")


def test_a_rollout_fails_at_a_task_of_it_that_fails_at_a_pause_or_at_its_timeout() -> None:
    failed = [task(1, "running"), swarm.Task("t", "n2", 2, "failed", "shutdown", 10.0, True, "task: non-zero exit (1)")]
    g = swarm.judge(gate(), failed, replicas=2, since=5.0, at=0.0)
    assert (g.verdict, g.reason) == (Verdict.FAILED, "a task of it failed (slot 2): task: non-zero exit (1)")
    earlier = [task(1, "running"), task(2, "failed", created=1.0, desired="shutdown"), task(2, "running")]
    assert swarm.judge(gate(), earlier, replicas=2, since=5.0, at=0.0).verdict is Verdict.PENDING  # before it
    paused = swarm.judge(gate(), [task(1, "running")], replicas=2, since=5.0, at=0.0, paused="update paused")
    assert paused.reason == "Swarm paused the update: update paused"
    late = swarm.judge(gate(timeout=2.0), [task(1, "running"), task(2, "pending")], replicas=2, since=5.0, at=2.0)
    assert late.verdict is Verdict.FAILED and late.reason.startswith("not healthy after 2s: 1 of 2 tasks of it running")
    stuck = swarm.judge(gate(timeout=2.0), [task(1, "running"), task(2, "ready")], replicas=2, since=5.0, at=2.0,
                        down={"n2": "worker-1"})  # fmt: skip
    assert stuck.reason.endswith("; node worker-1 is down, and the rollout waits for its task"), stuck.reason


def service(
    spec_print: dict[str, object], identity: str, *, version: str = "v1", managed: bool = True
) -> ObservedContainer:
    return ObservedContainer(
        id="svc1", name="api", state="running", image_id="", managed=managed, app="api" if managed else None,
        fingerprint=spec_print, version="v1", digest=identity, kind="service",
    )  # fmt: skip


def test_the_planner_pairs_a_service_with_its_app_and_names_what_changed() -> None:
    state = desired()
    spec = state.apps["api"]
    resolution = Resolution(ref="x/api:v1", image_id="sha256:aaa", digest="sha256:d1")
    same = fingerprint("api", spec)
    in_sync = plan(state, {"api": resolution}, ObservedState(containers=(service(same, "sha256:d1"),)))
    assert in_sync.in_sync, in_sync.actions  # the image as its label says: the manager need not hold it
    scaled = plan(
        state, {"api": resolution}, ObservedState(containers=(service({**same, "replicas": 4}, "sha256:d1"),))
    )
    [action] = scaled.actions
    assert action.kind is ActionKind.REPLACE and [str(c) for c in action.reasons] == ["replicas: 4 -> 2"]
    container = ObservedContainer(id="c1", name="api", state="running", image_id="sha256:aaa", managed=True, app="api")
    [wrong] = plan(state, {"api": resolution}, ObservedState(containers=(container,))).actions
    assert wrong.kind is ActionKind.ERROR
    assert wrong.message == "api runs as a container of reconciler's and the file makes it a service: remove api first"
    assert spec_hash(same, "sha256:d1") != spec_hash(
        fingerprint("api", spec.model_copy(update={"replicas": 3})), "sha256:d1"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (API.replace("    replicas: 2\n", ""), f"{FILE}:3:5: apps.api: update: is how a service rolls out: it needs"
         " replicas:"),
        (API.replace('"8080:8000"', '"127.0.0.1:8080:8000"'), f"{FILE}:3:5: apps.api: 127.0.0.1:8080:8000: a service"
         " publishes HOST:CONTAINER on every address of the node its task runs on (mode host): write it without an"
         " address, with its host port"),
        (API.replace("on: {role: web}", "on: [a, b]"), f"{FILE}:3:5: apps.api: on: of a service names the one node"
         " its tasks run on (Swarm's constraints are all required): for several nodes, give them a label and write"
         " on: {label: value}"),
        (API.replace("http: /health", 'tcp: "127.0.0.1:8000"'), f"{FILE}:3:5: apps.api: health: a service's probe"
         " runs in each of its tasks: write http: /path (asked on the task's first published container port), exec:"
         " [...] or docker: true"),
        (API.replace('    ports: ["8080:8000"]\n', ""), f"{FILE}:3:5: apps.api: health.http '/health' is asked on the"
         " task's first published port: add ports:"),
        (API.replace("parallelism: 1", "parallelism: -1"), f"{FILE}:8:27: apps.api.update.parallelism: Input should be"
         " greater than or equal to 0"),
    ],
)  # fmt: skip
def test_each_mistake_of_a_service_is_said_at_its_place(text: str, expected: str) -> None:
    assert errors(text) == [expected]


def test_a_container_app_and_a_service_of_its_name_are_two_things() -> None:
    web = desired('apps:\n  web: {image: x/web, version: v1, ports: ["8080:8000"]}\n')
    resolution = Resolution(ref="x/web:v1", image_id="sha256:aaa")
    stranger = service({}, "", managed=False).model_copy(update={"name": "web"})
    [action] = plan(web, {"web": resolution}, ObservedState(containers=(stranger,))).actions
    assert action.kind is ActionKind.CREATE and not action.service  # a service named web is not in the way


def test_applying_a_plan_of_services_leaves_nothing_to_do() -> None:
    state = desired()
    resolutions = {"api": Resolution(ref="x/api:v1", image_id="sha256:aaa", digest="sha256:d1")}
    first = plan(state, resolutions, ObservedState())
    [create] = first.actions
    assert create.kind is ActionKind.CREATE and create.service
    after = simulate(first, ObservedState())
    assert [(c.name, c.kind) for c in after.containers] == [("api", "service")]
    assert plan(state, resolutions, after).in_sync
    gone = plan(desired("apps: {}\n"), {}, after)
    [remove] = gone.actions
    assert remove.kind is ActionKind.REMOVE and remove.service
    assert simulate(gone, after).containers == ()


def test_a_service_runs_on_one_swarm_of_a_fleet_and_has_no_canary() -> None:
    fleet = "hosts:\n  m1: {labels: {role: web}}\n  m2: {labels: {role: web}}\n" + API
    assert errors(fleet) == [
        f"{FILE}:10:9: apps.api.on: a service (replicas:) runs on one swarm: place it on the one host that is its"
        " manager (on: [host])"
    ]
    one = desired(fleet.replace("on: {role: web}", "on: [m1]"))
    assert placed(one, "m1").apps["api"].on is None  # on: chose the host; no task is placed by it
    assert errors(API + "    canary: {on: [m1], version: v2}\n")[0].endswith(
        "canary: of a replicated app (replicas:) is not supported: a service runs one spec"
    )


def test_a_rollout_has_the_probe_s_timeout_per_batch_and_the_delay_between_batches() -> None:
    spec = desired().apps["api"]  # 2 replicas, parallelism 1, delay 5s, timeout 30s
    assert swarm.rollout_timeout(spec) == 2 * 30 + 5
    four = spec.model_copy(update={"replicas": 4, "update": spec.update.model_copy(update={"parallelism": 2})})  # type: ignore[union-attr]
    assert swarm.rollout_timeout(four) == 2 * 30 + 5
    at_once = spec.model_copy(update={"update": spec.update.model_copy(update={"parallelism": 0})})  # type: ignore[union-attr]
    assert swarm.rollout_timeout(at_once) == 30
    assert swarm.rollout_timeout(spec.model_copy(update={"update": None, "replicas": 3})) == 3 * 30
