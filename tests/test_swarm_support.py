"""tests/support/swarm.py: a real three-node Swarm (a manager and two workers, each in a network
namespace of its own) on this machine, checked from the root namespace as the replicated-apps tests
will use it: a service spread over every node answers on each node's address, its tasks talk across
nodes over an overlay network (vxlan), a stopped worker goes Down on the manager and comes back Ready,
and once the swarm is stopped nothing of it is left while the main engine keeps its docker0 and stays
out of swarm mode. Run apart from the parallel suite (`scripts/test`): it starts engines.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from docker.types import EndpointSpec, ServiceMode

from tests.support import ImageFactory, http_get, wait_http
from tests.support.engines import RUN_DIR
from tests.support.swarm import Swarm, SwarmNode, start_swarm, stop_swarm

pytestmark = [pytest.mark.docker, pytest.mark.apart]

PUBLISHED = 18080  # in each node's own namespace: no clash with anything on the machine


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, check=False).returncode == 0


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _swarm_state(client: Any) -> str:
    return str(client.info()["Swarm"]["LocalNodeState"])


def _overlay_address(node_client: Any, service: str, network: str) -> tuple[Any, str]:
    """(container, its address on `network`) of the one task of `service` on a node."""
    [container] = node_client.containers.list(filters={"label": f"com.docker.swarm.service.name={service}"})
    return container, container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]


def _wait_endpoints(swarm: Swarm, service: str, count: int, timeout: float = 60.0) -> list[tuple[SwarmNode, int]]:
    deadline = time.monotonic() + timeout
    while len(found := swarm.task_endpoints(service)) < count:
        if time.monotonic() >= deadline:
            tasks = swarm.manager.client.api.tasks(filters={"service": service})
            states = [(t.get("NodeID"), t["Status"].get("State"), t["Status"].get("Err")) for t in tasks]
            raise AssertionError(f"{service}: {len(found)} of {count} tasks running after {timeout}s: {states}")
        time.sleep(0.1)
    return found


def test_a_three_node_swarm_runs_a_spread_service_and_leaves_nothing(
    docker_client: Any, run_prefix: str, images: ImageFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    had_docker0 = _link_exists("docker0")
    assert _swarm_state(docker_client) == "inactive"
    ref = images.build("swarmweb", "v1")

    started = time.monotonic()
    swarm = start_swarm(run_prefix, 2, tmp_path_factory.mktemp("swarm"))
    start_seconds = time.monotonic() - started
    try:
        assert [node.name for node in swarm.nodes] == [f"{swarm.name}n{i}" for i in range(3)]
        assert swarm.node_states() == {node.hostname: "ready" for node in swarm.nodes}
        assert swarm.manager.client.info()["Swarm"]["ControlAvailable"]
        assert all(node.node_id for node in swarm.nodes)
        assert {node.netns for node in swarm.nodes} <= _netns()
        assert _swarm_state(docker_client) == "inactive", "the main engine must stay out of swarm mode"

        swarm.load_image(ref, docker_client)
        network = f"{run_prefix}-overlay"
        service = f"{run_prefix}-web"
        swarm.manager.client.networks.create(network, driver="overlay", attachable=True)
        created = swarm.manager.client.services.create(
            ref,
            name=service,
            networks=[network],
            mode=ServiceMode("replicated", replicas=3),
            endpoint_spec=EndpointSpec(ports={PUBLISHED: (8000, "tcp", "host")}),
            preferences=[("spread", "node.id")],
            maxreplicas=1,  # one task per node: the spread is certain, not likely
            init=True,  # busybox httpd as PID 1 ignores SIGTERM; stopping a worker would wait 10 s
            hostname="{{.Node.Hostname}}",
        )

        # No registry was asked for a digest: the spec names the image as given (nodes have it preloaded).
        assert created.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == ref

        # Each task answers from the root namespace, on its node's address, and is that node's.
        endpoints = _wait_endpoints(swarm, service, 3)
        assert [(node.index, port) for node, port in endpoints] == [(0, PUBLISHED), (1, PUBLISHED), (2, PUBLISHED)]
        for node, port in endpoints:
            assert wait_http(node.url(port)) == "v1"
            assert f"HOSTNAME={node.hostname}\n" in wait_http(node.url(port, "/cgi-bin/env"))

        # The overlay spans nodes: the manager's task reaches each worker's task at its overlay address
        # (vxlan over UDP 4789 between the nodes' addresses; peers learnt by gossip on 7946).
        on_manager, _ = _overlay_address(swarm.manager.client, service, network)
        for worker in swarm.workers:
            _, address = _overlay_address(worker.client, service, network)
            exit_code, output = on_manager.exec_run(
                ["sh", "-c", f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 {address} 8000']
            )
            assert exit_code == 0 and output.decode().endswith("\r\n\r\nv1"), (worker.name, exit_code, output)

        # A stopped worker is Down on the manager and answers no more; started again, it is Ready and
        # the service's third task comes back on it.
        swarm.stop_node(1)
        assert swarm.node_states()[swarm.nodes[1].hostname] == "down"
        assert not swarm.nodes[1].answers()
        with pytest.raises(OSError):
            http_get(swarm.nodes[1].url(PUBLISHED))
        swarm.start_node(1)
        assert swarm.node_states()[swarm.nodes[1].hostname] == "ready"
        assert [node.index for node, _ in _wait_endpoints(swarm, service, 3)] == [0, 1, 2]
        assert wait_http(swarm.nodes[1].url(PUBLISHED)) == "v1"
    finally:
        stopped = time.monotonic()
        problems = stop_swarm(swarm)
        stop_seconds = time.monotonic() - stopped
    print(f"\n[swarm] start_swarm (3 nodes) {start_seconds:.2f}s, stop_swarm {stop_seconds:.2f}s")
    assert not problems, problems

    # Nothing left: daemons, namespaces, veths, bridge, iptables rule, record, sockets.
    assert not (_netns() & {node.netns for node in swarm.nodes})
    assert not any(_link_exists(name) for name in [swarm.bridge, *(node.veth for node in swarm.nodes)])
    assert swarm.name not in subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    assert not swarm.record.exists()
    assert not any(node.socket.exists() or node.exec_root.exists() for node in swarm.nodes)
    assert not any(node.answers() for node in swarm.nodes)
    assert not list(RUN_DIR.glob(f"{run_prefix}-s*.json"))
    # The main engine is untouched.
    assert _link_exists("docker0") == had_docker0
    assert _swarm_state(docker_client) == "inactive"
