"""Routed services (``replicas:`` with ``route:``), the pure part: what the file may say, where the proxy
reaches a service's tasks, the backend ``render`` writes for it, how ``assign`` moves its slots during a
rolling update, and how a service's spec is read back so that a change made by hand is drift. Pure: no
engine, no proxy.

What these tests guarantee:

- A routed service is accepted with a bare ``health.http`` and no ``ports:`` (its probe runs in each task
  on the route's port); ``route.keep_warm`` and ``route.drain`` of a service are refused at their place.
- ``endpoints`` lists (node address, host port) of each task that runs and is meant to, on the route's
  port (or the port of the spec before, during a rollout that changes it), never one Swarm is stopping,
  one still starting, or one on a node without an address.
- ``render`` gives a routed service a round-robin backend of ``2 * replicas`` checked slots, its tasks first
  and the rest disabled, with a GET that met a refused connection or an empty answer sent once more to
  another task (never a POST); the probe's path is the check. ``with_pool`` rewrites only those slots.
- ``assign``: whatever the slots hold and whatever is wanted (no more than there are slots), applying its
  changes in order leaves exactly the wanted addresses enabled, keeps a task that stays in its slot, and
  never leaves the backend empty on the way when tasks are wanted.
- ``read_back`` gives the labels' fingerprint back for a service that runs as deployed, and each field
  changed by hand (env value, rollout, placement, grace period, ports) as it runs now.
- ``route_lines`` names a routed service's tasks and their addresses, or ``nothing (503)``.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from reconciler.converge.run import parse_desired
from reconciler.core import swarm
from reconciler.core.labels import node_from_row
from reconciler.core.model import AppSpec, DesiredState, ObservedContainer, ObservedState, ProxySpec
from reconciler.core.plan import fingerprint
from reconciler.core.proxy import Server, Slot, assign, pools, render, route_lines, routed, with_pool
from reconciler.errors import InvalidDesiredState

FILE = "desired-state.yaml"
ROUTED = (
    'proxy: {listen: ["0.0.0.0:80"]}\n'
    "apps:\n  api:\n    image: x/api\n    version: v1\n    replicas: 2\n"
    "    update: {parallelism: 1, order: start-first}\n"
    "    route: {hosts: [api.example.com], port: 8000}\n"
    "    health: {http: /health, interval: 500ms, timeout: 30s, healthy_for: 10s}\n"
)


def parse(text: str = ROUTED) -> DesiredState:
    return parse_desired(text.encode(), FILE, "c0ffee")


def error(text: str) -> str:
    try:
        parse(text)
    except InvalidDesiredState as caught:
        [only] = caught.errors
        return only
    raise AssertionError("accepted")


def spec(**fields: Any) -> AppSpec:
    base: dict[str, Any] = {"image": "x/api", "version": "v1", "replicas": 2, "route": {"port": 8000}}
    return AppSpec.model_validate(base | fields)


def task(slot: int, state: str = "running", *, node: str = "n1", port: int = 30001, desired: str = "running",
         target: int = 8000) -> swarm.Task:  # fmt: skip
    return swarm.Task(id=f"t{slot}", node=node, slot=slot, state=state, desired=desired, created=1.0, current=True,
                      ports=((target, port),))  # fmt: skip


def test_a_routed_service_is_accepted_and_its_probe_runs_in_each_task_on_the_route_port() -> None:
    api = parse().apps["api"]
    assert api.service and api.route is not None and swarm.probe_port(api) == 8000
    check = swarm.healthcheck(api)
    assert check is not None and check["Test"][-1] == "http://127.0.0.1:8000/health"


def test_keep_warm_and_drain_of_a_routed_service_are_refused_at_their_place() -> None:
    warm = ROUTED.replace("port: 8000}", "port: 8000, keep_warm: 1m}")
    assert error(warm) == (
        f"{FILE}:4:5: apps.api: route.keep_warm: a service keeps no warm release (Swarm replaces its tasks):"
        " leave it out"
    )
    drain = ROUTED.replace("port: 8000}", "port: 8000, drain: 5s}")
    assert error(drain) == (
        f"{FILE}:4:5: apps.api: route.drain: a service drains each task for stop_timeout (Swarm replaces its"
        " tasks): leave it out"
    )


def test_endpoints_are_the_tasks_that_run_and_are_meant_to_on_the_route_port() -> None:
    tasks = [
        task(1, node="n1", port=30001),
        task(2, node="n2", port=30002),
        task(3, "starting", port=30003),  # not healthy yet
        task(4, desired="shutdown", port=30004),  # Swarm is stopping it
        task(5, node="gone", port=30005),  # its node has no address
        task(6, port=30006, target=9000),  # another container port
    ]
    addresses = {"n1": "10.0.0.1", "n2": "10.0.0.2"}
    assert swarm.endpoints(tasks, addresses, {8000}) == (("10.0.0.1", 30001), ("10.0.0.2", 30002))
    assert ("10.0.0.1", 30006) in swarm.endpoints(tasks, addresses, {8000, 9000})  # the port of the spec before


def test_render_gives_a_service_a_balanced_backend_of_checked_slots_with_retries_of_gets() -> None:
    desired = parse()
    members = (Server("api", "10.0.0.1", 30001), Server("api", "10.0.0.2", 30002))
    config = render(desired.proxy or ProxySpec(), routed(desired), {}, pools={"api": members})
    backend = config.split("backend be_api\n", 1)[1].split("\n\n", 1)[0].splitlines()
    # The retries are every backend's (defaults); only GETs are sent again once a task received them.
    defaults = config.split("defaults\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert {"  retries 30", "  option redispatch 1", "  retry-on conn-failure empty-response"} <= set(defaults)
    assert backend == [
        "  balance roundrobin",
        "  http-request disable-l7-retry unless METH_GET",
        "  option httpchk GET /health",
        "  http-check expect status 200-399",
        "  default-server check inter 1s fall 2 rise 1 observe layer4 error-limit 1 on-error mark-down",
        "  server task1 10.0.0.1:30001",
        "  server task2 10.0.0.2:30002",
        "  server task3 127.0.0.1:1 disabled",
        "  server task4 127.0.0.1:1 disabled",
    ]
    # A runtime change is written back in place: the slots only.
    moved = with_pool(config, "api", members[1:])
    assert moved.replace("  server task1 10.0.0.2:30002\n  server task2 127.0.0.1:1 disabled", "X") == config.replace(
        "  server task1 10.0.0.1:30001\n  server task2 10.0.0.2:30002", "X"
    )


def test_without_an_http_probe_a_task_is_checked_by_a_connection() -> None:
    desired = DesiredState(apps={"api": spec()}, proxy=ProxySpec())
    config = render(ProxySpec(), routed(desired), {}, pools={})
    assert "httpchk" not in config and "  server task1 127.0.0.1:1 disabled" in config


def _apply(slots: list[Slot], changes: list[tuple[str, Server | None]], wanted_some: bool) -> list[Slot]:
    for name, server in changes:
        slots = [
            (Slot(name, server.ip, server.port, True) if server else Slot(name, s.ip, s.port, False))
            if s.name == name else s
            for s in slots
        ]  # fmt: skip
        assert not wanted_some or any(s.enabled for s in slots), "the backend went empty"
    return slots


ADDRESS = st.tuples(st.sampled_from(["10.0.0.1", "10.0.0.2"]), st.integers(30000, 30005))


@given(
    held=st.lists(st.tuples(ADDRESS, st.booleans()), min_size=1, max_size=8),
    wanted=st.lists(ADDRESS, unique=True, max_size=8),
)
def test_assign_ends_with_the_wanted_tasks_keeps_those_that_stay_and_never_empties_the_route(
    held: list[tuple[tuple[str, int], bool]], wanted: list[tuple[str, int]]
) -> None:
    slots = [Slot(f"task{i + 1}", ip, port, on) for i, ((ip, port), on) in enumerate(held)]
    wanted = wanted[: len(slots)]
    servers = [Server("api", ip, port) for ip, port in wanted]
    changes = assign(slots, servers)
    had_some = any(s.enabled for s in slots)
    after = _apply(slots, changes, bool(wanted) and had_some)
    assert sorted(s.address for s in after if s.enabled) == sorted(f"{ip}:{port}" for ip, port in wanted)
    first: dict[str, str] = {}
    for before in slots:
        if before.enabled:
            first.setdefault(before.address, before.name)
    for address, slot in first.items():
        if address in {s.address for s in servers}:
            assert slot not in {name for name, _ in changes}  # a task that stays keeps its (first) slot


def test_a_rolling_update_moves_slot_by_slot() -> None:
    old = [Slot("task1", "10.0.0.1", 1, True), Slot("task2", "10.0.0.2", 2, True), Slot("task3", "127.0.0.1", 1, False),
           Slot("task4", "127.0.0.1", 1, False)]  # fmt: skip
    # A new task runs beside the two old ones: it takes a free slot, nothing else moves.
    assert assign(old, [Server("api", "10.0.0.1", 1), Server("api", "10.0.0.2", 2), Server("api", "10.0.0.1", 3)]) == [
        ("task3", Server("api", "10.0.0.1", 3))
    ]
    # The first old task is being stopped: its slot is freed.
    assert assign(old, [Server("api", "10.0.0.2", 2)]) == [("task1", None)]


def test_read_back_is_the_labels_for_a_service_as_deployed_and_what_runs_for_a_field_changed_by_hand() -> None:
    api = spec(env={"MODE": "calm"}, ports=(), update={"parallelism": 1, "delay": "1s"}, stop_timeout="1s")
    labelled = fingerprint("api", api)
    deployed: dict[str, Any] = {
        "Mode": {"Replicated": {"Replicas": 2}},
        "UpdateConfig": {"Parallelism": 1, "Delay": 1_000_000_000, "FailureAction": "pause", "Order": "stop-first"},
        "TaskTemplate": {
            "ContainerSpec": {"Image": "x/api:v1", "Env": ["MODE=calm"], "StopGracePeriod": 1_000_000_000},
            "RestartPolicy": {"Condition": "any"},
        },
        "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": 8000, "PublishMode": "host"}]},
    }
    assert swarm.read_back("api", deployed, labelled) == labelled
    by_hand = {
        **deployed,
        "Mode": {"Replicated": {"Replicas": 3}},
        "UpdateConfig": {"Parallelism": 2, "Delay": 1_000_000_000},
        "TaskTemplate": {
            "ContainerSpec": {"Image": "x/api:v1", "Env": ["MODE=loud"], "StopGracePeriod": 3_000_000_000},
            "Placement": {"Constraints": ["node.role==manager"]},
            "RestartPolicy": {"Condition": "none"},
        },
        "EndpointSpec": {"Ports": [{"Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353}]},
    }
    now = swarm.read_back("api", by_hand, labelled)
    changed = {key for key in labelled if now[key] != labelled[key]}
    assert changed == {"replicas", "update", "env", "stop_timeout", "placement", "restart", "ports", "route_port"}
    assert (now["update"], now["placement"], now["ports"], now["restart"]) == (
        [2, 1.0, "stop-first"], ["node.role==manager"], ["5353:53/udp"], "no"
    )  # fmt: skip
    assert "loud" not in repr(now)


def test_route_lines_name_a_services_tasks_or_nothing() -> None:
    desired = DesiredState(apps={"api": spec()}, proxy=ProxySpec())
    running = ObservedContainer(
        id="s1", name="api", state="running", image_id="", managed=True, app="api", version="v2", kind="service",
        endpoints=("10.0.0.1:30001", "10.0.0.2:30002"),
    )  # fmt: skip
    assert pools(desired, ObservedState(containers=(running,))) == {
        "api": (Server("api", "10.0.0.1", 30001), Server("api", "10.0.0.2", 30002))
    }
    assert route_lines(desired, ObservedState(containers=(running,)), "reconciler", {}) == [
        "route * / -> 2 tasks of api v2 (10.0.0.1:30001, 10.0.0.2:30002)"
    ]
    assert route_lines(desired, ObservedState(), "reconciler", {}) == ["route * / -> nothing (503)"]


def test_a_routed_service_without_update_rolls_start_first_and_reads_back_in_sync() -> None:
    routed_spec, plain = spec(), spec(route=None, ports=("8080:8000",))
    assert (swarm.default_order(routed_spec), swarm.default_order(plain)) == ("start-first", "stop-first")
    labelled = fingerprint("api", routed_spec)
    as_sent: dict[str, Any] = {
        "Mode": {"Replicated": {"Replicas": 2}},
        "UpdateConfig": {"Parallelism": 1, "Order": "start-first"},  # Delay 0 left out by the manager
        "TaskTemplate": {"ContainerSpec": {"Image": "x/api:v1", "StopGracePeriod": 10_000_000_000}},
        "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": 8000, "PublishMode": "host"}]},
    }
    assert swarm.read_back("api", as_sent, labelled) == labelled


def test_what_the_manager_leaves_out_when_it_is_zero_or_empty_is_no_drift() -> None:
    api = spec(command=[], health={"exec": ["true"], "timeout": "0s"}, stop_timeout="0s")
    labelled = fingerprint("api", api)
    check = swarm.healthcheck(api)
    assert check is not None and labelled["healthcheck"]["StartPeriod"] == 0
    as_read: dict[str, Any] = {
        "Mode": {"Replicated": {"Replicas": 2}},
        "UpdateConfig": {"Parallelism": 1, "Order": "start-first"},
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "x/api:v1",  # no Args: an empty command is left out
                "StopGracePeriod": 0,
                "Healthcheck": {k: v for k, v in check.items() if k != "StartPeriod"},  # a zero start period too
            }
        },
        "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": 8000, "PublishMode": "host"}]},
    }
    assert swarm.read_back("api", as_read, labelled) == labelled


def test_a_route_port_taken_away_by_hand_is_drift() -> None:
    labelled = fingerprint("api", spec())
    unpublished: dict[str, Any] = {
        "Mode": {"Replicated": {"Replicas": 2}},
        "UpdateConfig": {"Parallelism": 1, "Order": "start-first"},
        "TaskTemplate": {"ContainerSpec": {"Image": "x/api:v1", "StopGracePeriod": 10_000_000_000}},
        "EndpointSpec": {},  # docker service update --publish-rm 8000
    }
    assert swarm.read_back("api", unpublished, labelled)["route_port"] is None


def test_a_manager_that_lists_itself_at_no_address_is_reached_where_it_manages_the_swarm() -> None:
    row = {
        "Description": {"Hostname": "web-1"},
        "Status": {"State": "ready", "Addr": "0.0.0.0"},
        "ManagerStatus": {"Addr": "10.0.0.1:2377"},
    }
    assert node_from_row(row) == ("web-1", "ready", "10.0.0.1")
    worker = {"Description": {"Hostname": "web-2"}, "Status": {"State": "down", "Addr": "10.0.0.2"}}
    assert node_from_row(worker) == ("web-2", "down", "10.0.0.2")


def test_a_routed_service_the_engine_did_not_list_keeps_its_backend_as_it_is() -> None:
    desired = DesiredState(apps={"api": spec()}, proxy=ProxySpec())
    # A manager without quorum lists no service: the route is left alone, not emptied.
    assert pools(desired, ObservedState()) == {}
