"""A real multi-node Docker Swarm on this one machine: the cluster of the replicated-apps tests.

`start_swarm(prefix, workers, root)` starts `1 + workers` dockerds, each in a network namespace of its
own, joined by veth pairs to one Linux bridge of ours in the root namespace; node 0 runs
`swarm init`, the others `swarm join` (through the SDK). It returns once the manager lists every node
`Ready` (60 s at most, else `SwarmStartError` with the end of every daemon's log, and nothing left
behind). `stop_swarm` stops it and removes everything it made. Measured here (kernel 6.18, docker
20.10, a CI run busy on the main engine meanwhile): `start_swarm` with 1 or 2 workers ~1.0-1.2 s;
`stop_swarm` ~3.3 s (once 6.7 s), with or without services (their containers are force-removed first, so no stop
timeout is waited for; a dockerd in swarm mode takes ~3 s to shut down, the nodes in parallel). Other
figures from tests/test_swarm_support.py: `load_image` of a busybox image to 3 nodes ~0.4 s, a
3-replica service running on 3 nodes ~1.5 s after `services.create`, a stopped worker `Down` on the
manager ~2.5 s after SIGTERM (tasks with `init`), `Ready` again ~0.2 s after its dockerd answers.

Guarantees:
- Names: the swarm is `<prefix>-s<N>` (N the smallest free number): its bridge in the root namespace,
  its record `/tmp/rte/<name>.json`, its folder `<root>/<name>/`. Node i is `<prefix>-s<N>n<i>` (node 0
  the manager): its network namespace (`ip netns`), the root end of its veth pair, its hostname
  (own UTS namespace: `Description.Hostname` on the manager), its containerd namespace. Each node is
  an `ExtraEngine` of tests/support/engines.py (`SwarmNode`): socket `/tmp/rte/<node>.sock` (a unix
  socket in the shared filesystem: the test process reaches every node from the root namespace),
  exec root `/tmp/rte/<node>/`, data root `<root>/<name>/<node>/data`, log `.../dockerd.log`, labels
  `RUN_LABEL=<prefix>` and `tests.reconciler.engine=<node>`. Every name is at most 15 characters.
- Addresses: the swarm's /24 comes from engines.py's allocator (10.213.k.0/24, under its lock, free
  of every address, route and record on the machine); the bridge is .1, node i is .(i+2) on `eth0` in
  its namespace. The test process reaches `node.address` directly (the bridge is on-link), so a port
  a task publishes in `mode: host` answers at `node.url(port)`; `Swarm.task_endpoints(service)` says
  which node and port each running task published. Nodes reach each other on those addresses
  (swarm's TCP 2377, gossip TCP/UDP 7946, vxlan UDP 4789): overlay networks span nodes (checked:
  tasks on two nodes talk over their overlay addresses). Nodes have no default route: they reach
  the root namespace only at the bridge's address (.1), and nothing beyond it.
- `stop_node(i)` / `start_node(i)`: ExtraEngine.stop/start of node i, then wait until the manager
  lists it `Down` / `Ready`. Node 0, the manager, can be stopped too (no swarm API meanwhile);
  started again, `start_node(0)` waits until it lists every answering node Ready (measured ~5.8 s).
  A worker's running tasks are stopped by its dockerd as on any shutdown, each within its stop
  timeout (busybox httpd as PID 1 ignores SIGTERM: ~10 s unless the service runs with `init=True` or
  a short `stop_grace_period`). A restarted worker rejoins by itself (same data root). Checked: with
  a host-mode port and `maxreplicas=1`, a Down worker's task is Pending (no other node can take it)
  and runs on that worker again once it is Ready.
- `load_image(ref)` copies an image from the main engine to every node (engines.load_image), tag
  kept.
- `stop_swarm` never raises (it returns the problems): it removes the services on the manager, then
  tears every node down in parallel (ExtraEngine.teardown: containers force-removed, dockerd stopped,
  its leftover processes ended, mounts under its roots unmounted, folders and socket removed), ends
  any process still in a node's namespace, deletes the namespaces (and so the veth pairs), the
  bridge, the iptables rule, the folder and the record. `stop_leftovers(prefix)` does the same from
  the records a killed run left (scripts/clean-test-leftovers calls it for every run prefix).
- The main engine is never touched: nothing here talks to /var/run/docker.sock except
  `load_image` reading an image from it; `docker0` must still exist once each node answers (else
  `SwarmStartError`, as in engines.py).

Choices:
- The manager has a network namespace of its own too (not the root namespace, as engines.py's
  engines): then everything swarm mode makes lives in namespaces of ours: `docker_gwbridge`, the
  `ingress` sandbox, the overlay sandboxes and their vxlan devices, the sockets on 2377/7946/4789. In
  the root namespace a manager would make `docker_gwbridge` beside the main engine's `docker0`, and
  two swarms (two test sessions) would fight over the same ports and vxlan ids (VNIs are allocated
  from 4096 by every manager, and a vxlan id is unique per namespace). Every node is alike.
- `nsenter --net` (not `ip netns exec`): `ip netns exec` also makes a mount namespace and remounts
  /sys, which loses the cgroup v1 mounts under /sys/fs/cgroup ("Devices cgroup isn't mounted", checked).
  So nodes share the machine's mount namespace, as engines.py's engines do, and teardown unmounts
  what a dead one left under its roots. dockerd reads /sys for nothing that matters here (overlay's
  one sysfs write re-mounts sysfs in the sandbox; it logs "enabling default vlan on bridge br0
  failed ... permission denied", harmless).
- `--iptables=false` and `--ip-forward=false`, as in engines.py, and for the same reason: a
  dockerd with iptables enabled removes the DOCKER chains at start. In a namespace of its own it
  would only touch that namespace's tables, but nothing needs them: host-mode ports go through
  docker-proxy (the userland proxy) and overlay traffic is vxlan between the nodes' addresses
  (checked, both work). Inside each namespace dockerd makes its own `docker0`, in that namespace.
  Never `--bridge none` nor `--default-address-pool`: see engines.py.
- One iptables rule in the root namespace: traffic between two nodes crosses our bridge, and with
  br_netfilter on, the main engine's FORWARD policy (DROP) would drop it; so DOCKER-USER (the chain
  Docker leaves to the administrator) gets `-s BLOCK -d BLOCK -j ACCEPT` (comment: the swarm's name),
  as engines.py does for an engine's bridge. No DOCKER-USER chain (main engine without iptables): no rule.
- No IPVS on these machines: the routing mesh (`ingress`-mode ports, a service's virtual IP) does not
  work. Publish in `mode: host` (SDK: `EndpointSpec(ports={published: (target, "tcp", "host")})`) and
  reach tasks by node address, or by overlay address from another task. A service in the default
  `vip` endpoint mode is created and runs (only its virtual IP does not answer); `dnsrr` is the mode
  that needs no IPVS. Names through the embedded DNS were not checked (busybox-static cannot resolve
  names). The `ingress` network swarm init makes is left as it is (dockerd logs that IPVS is missing;
  nodes are Ready all the same).
- Images: no node can reach a registry (the test registry listens on the root namespace's
  127.0.0.1), so services run images preloaded on every node with `load_image`, referenced by the
  same name. Nodes run with `DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1` (`offline_images=True`, the
  default): a task never tries to pull (a tag without it is always pulled first, and the failure only
  logged). The SDK does not resolve a service's image at a registry (`services.create` sends the name
  as given and the engine, at API >= 1.30, leaves it so: the CLI's `--no-resolve-image` is the SDK's
  only behaviour; checked, the spec keeps the plain `repo:tag`). A missing image makes
  the task fail with "No such image" on that node.
- The dispatcher heartbeat is 1 s (swarm default 5 s), so a stopped worker is `Down` on the manager
  within a few seconds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from .engines import (
    _PREFIX,
    DEFAULT_BRIDGE,
    MAX_IFNAME,
    MAX_SOCKET_PATH,
    RUN_DIR,
    EngineStartError,
    ExtraEngine,
    _allocation_lock,
    _end_pid,
    _free_blocks,
    _link_exists,
    _run,
    delete_rule,
    ensure_bridge,
    load_image,
    stop_engines,
)

NETNS_DIR = Path("/run/netns")
_NO_ADDRESS = ipaddress.IPv4Address("0.0.0.0")
SWARM_PORT = 2377
HEARTBEAT_NS = 1_000_000_000  # dispatcher heartbeat: 1 s
START_TIMEOUT = 60.0
STATE_TIMEOUT = 60.0  # for a node to show Down / Ready on the manager


class SwarmStartError(EngineStartError):
    """A swarm did not start, or not every node was Ready in time."""


def _netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _ns_inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


@dataclass
class SwarmNode(ExtraEngine):
    """One node: an ExtraEngine whose dockerd runs in network namespace `name`, on `address`."""

    index: int = 0
    address: ipaddress.IPv4Address = _NO_ADDRESS
    node_id: str = ""  # its swarm node id, once it is in the swarm
    offline_images: bool = True

    @property
    def netns(self) -> str:
        return self.name

    @property
    def veth(self) -> str:
        """The root-namespace end of the node's veth pair (on the swarm's bridge)."""
        return self.name

    @property
    def hostname(self) -> str:
        return self.name

    @property
    def is_manager(self) -> bool:
        return self.index == 0

    def url(self, port: int, path: str = "/") -> str:
        """A URL the root namespace reaches: a port published in `mode: host` on this node."""
        return f"http://{self.address}:{port}{path}"

    def command(self) -> list[str]:
        args = super().command()
        at = args.index("--bridge")
        del args[at : at + 2]  # its own docker0, in its own namespace (never `--bridge none`)
        env = "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 " if self.offline_images else ""
        # nsenter and unshare exec (no fork), and so does the shell: the pid is dockerd's.
        return [
            "nsenter", f"--net={NETNS_DIR / self.netns}", "unshare", "--uts", "--",
            "sh", "-c", f'hostname "$0" && {env}exec "$@"', self.hostname, *args,
        ]  # fmt: skip

    def _ensure_bridge(self) -> None:
        """The node's namespace, veth pair and address (the swarm made the bridge and the rule)."""
        if not _netns_exists(self.netns):
            _run("ip", "netns", "add", self.netns)
        inside = ("ip", "-n", self.netns)
        if _run(*inside, "link", "show", "dev", "eth0", check=False).returncode:
            peer = f"{self.name.removesuffix(f'n{self.index}')}p{self.index}"  # briefly, in the root namespace
            if _link_exists(self.veth):
                _run("ip", "link", "delete", self.veth)
            _run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", peer)
            _run("ip", "link", "set", peer, "netns", self.netns)
            _run(*inside, "link", "set", peer, "name", "eth0")
        _run("ip", "link", "set", self.veth, "master", self.bridge, "up")
        address = f"{self.address}/{self.block.prefixlen}"
        if address not in _run(*inside, "-4", "-o", "addr", "show", "dev", "eth0").stdout:
            _run(*inside, "addr", "add", address, "dev", "eth0")
        _run(*inside, "link", "set", "eth0", "up")
        _run(*inside, "link", "set", "lo", "up")

    def _save_record(self) -> None:
        pass  # the swarm's record holds its nodes

    def _own_processes(self) -> list[int]:
        """ExtraEngine's, and every process in the node's namespace (ours alone: docker-proxy too)."""
        found = set(super()._own_processes())
        ns = _ns_inode(NETNS_DIR / self.netns)
        if ns is not None:
            for entry in Path("/proc").iterdir():
                mine = entry.name.isdigit() and int(entry.name) != os.getpid()
                if mine and _ns_inode(entry / "ns" / "net") == ns:
                    found.add(int(entry.name))
        return sorted(found)

    def _delete_bridges(self, bridges: set[str]) -> None:
        pass  # the node's bridges live in its namespace, which goes with it; never delete by name here

    def _delete_rule(self) -> None:
        pass  # the swarm's rule

    def teardown(self) -> list[str]:
        errors = super().teardown()
        for pid in self._own_processes():  # a dead dockerd's docker-proxy, say
            try:
                _end_pid(pid, 5.0)
            except Exception as exc:
                errors.append(f"{self.name}: ending process {pid}: {type(exc).__name__}: {exc}")
        if _netns_exists(self.netns):
            result = _run("ip", "netns", "delete", self.netns, check=False)
            if result.returncode and _netns_exists(self.netns):
                errors.append(f"{self.name}: ip netns delete: {result.stderr.strip()}")
        # Gone with the namespace unless a process still holds it: delete the pair from our end.
        if _link_exists(self.veth):
            result = _run("ip", "link", "delete", self.veth, check=False)
            if result.returncode and _link_exists(self.veth):  # else it went with the namespace meanwhile
                errors.append(f"{self.name}: ip link delete {self.veth}: {result.stderr.strip()}")
        return errors

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "address": str(self.address),
            "socket": str(self.socket),
            "exec_root": str(self.exec_root),
            "data_root": str(self.data_root),
            "log": str(self.log),
        }


@dataclass
class Swarm:
    """A running swarm; see the module docstring. `nodes[0]` is the manager."""

    name: str
    prefix: str
    bridge: str
    block: ipaddress.IPv4Network
    home: Path  # <root>/<name>
    nodes: list[SwarmNode] = field(default_factory=list)

    @property
    def record(self) -> Path:
        return RUN_DIR / f"{self.name}.json"

    @property
    def manager(self) -> SwarmNode:
        return self.nodes[0]

    @property
    def workers(self) -> list[SwarmNode]:
        return self.nodes[1:]

    def node_by_id(self, node_id: str) -> SwarmNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(f"no node {node_id} in swarm {self.name}")

    def node_states(self) -> dict[str, str]:
        """Node name -> its state as the manager lists it ("ready", "down", "unknown", ...)."""
        states: dict[str, str] = {}
        for info in self.manager.client.api.nodes():
            hostname = info.get("Description", {}).get("Hostname", "")
            states[hostname] = info.get("Status", {}).get("State", "")
        return states

    def wait_node_state(self, index: int, state: str, timeout: float = STATE_TIMEOUT) -> None:
        """Wait until the manager lists node `index` in `state` ("ready", "down"), else TimeoutError."""
        node = self.nodes[index]
        deadline = time.monotonic() + timeout
        seen = ""
        while True:
            try:
                seen = self.node_states().get(node.hostname, "")
            except docker.errors.APIError as exc:  # a manager just started may have no leader yet (503)
                seen = f"unlisted ({exc})"
            if seen == state:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{node.name} is {seen!r} on the manager, not {state!r}, after {timeout:.0f}s")
            time.sleep(0.1)

    def stop_node(self, index: int, *, wait: bool = True) -> None:
        """Stop node `index`'s dockerd; with `wait`, return once it has exited and the manager says Down.

        Node 0 is the manager: while it is stopped there is no swarm API (and no Down to wait for).
        """
        self.nodes[index].stop(wait=wait)
        if wait and index != 0:
            self.wait_node_state(index, "down")

    def start_node(self, index: int, *, timeout: float = STATE_TIMEOUT) -> None:
        """Start node `index`'s dockerd again; return once the manager lists it Ready.

        For the manager (node 0): once it lists every node whose dockerd answers Ready (they reconnect).
        """
        self.nodes[index].start()
        if not self.manager.answers():
            return
        for other in [node for node in self.nodes if node.index == index or (index == 0 and node.answers())]:
            self.wait_node_state(other.index, "ready", timeout)

    def load_image(self, ref: str, source_client: Any = None) -> None:
        """Copy image `ref` from the main engine (or `source_client`'s) to every node, in parallel."""
        source = source_client if source_client is not None else docker.from_env(timeout=120)
        try:
            with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
                for future in [pool.submit(load_image, source, node, ref) for node in self.nodes]:
                    future.result()
        finally:
            if source_client is None:
                source.close()

    def task_endpoints(self, service: str) -> list[tuple[SwarmNode, int]]:
        """(node, published port) of the running tasks of `service` that publish a port in host mode.

        Each pair once (a task's status may list a port twice), ordered by node.
        """
        found: set[tuple[int, int]] = set()
        tasks = self.manager.client.api.tasks(filters={"service": service, "desired-state": "running"})
        for task in tasks:
            status = task.get("Status") or {}
            if status.get("State") != "running":
                continue
            for port in (status.get("PortStatus") or {}).get("Ports") or []:
                if port.get("PublishMode") == "host" and port.get("PublishedPort"):
                    found.add((self.node_by_id(task["NodeID"]).index, int(port["PublishedPort"])))
        return [(self.nodes[index], port) for index, port in sorted(found)]

    def log_tails(self, size: int = 2000) -> str:
        return "\n".join(f"--- {node.log}:\n{node._log_tail(size)}" for node in self.nodes)

    def _save_record(self) -> None:
        record = {
            "name": self.name,
            "prefix": self.prefix,
            "bridge": self.bridge,
            "block": str(self.block),  # engines.py's allocator reads it: the block stays ours
            "home": str(self.home),
            "nodes": [node.to_record() for node in self.nodes],
        }
        self.record.write_text(json.dumps(record, indent=1) + "\n")

    @classmethod
    def _from_record(cls, path: Path) -> Swarm:
        record = json.loads(path.read_text())
        swarm = cls(
            name=record["name"],
            prefix=record["prefix"],
            bridge=record["bridge"],
            block=ipaddress.IPv4Network(record["block"]),
            home=Path(record["home"]),
        )
        for entry in record["nodes"]:
            swarm.nodes.append(swarm._node(int(entry["index"]), swarm.home.parent))
        return swarm

    def _node(self, index: int, root: Path, offline_images: bool = True) -> SwarmNode:
        name = f"{self.name}n{index}"
        sock = RUN_DIR / f"{name}.sock"
        if len(name) > MAX_IFNAME:
            raise ValueError(f"node name {name!r} is longer than {MAX_IFNAME} characters (an interface name)")
        if len(str(sock)) > MAX_SOCKET_PATH:
            raise ValueError(f"socket path {sock} is too long for AF_UNIX")
        return SwarmNode(
            name=name,
            socket=sock,
            host=f"unix://{sock}",
            client=None,
            prefix=self.prefix,
            bridge=self.bridge,
            block=self.block,
            exec_root=RUN_DIR / name,
            data_root=root / self.name / name / "data",
            log=root / self.name / name / "dockerd.log",
            index=index,
            address=self.block.network_address + 2 + index,
            offline_images=offline_images,
        )

    def _ensure_bridge(self) -> None:
        ensure_bridge(self.bridge, self.block, self.name)

    def _remove_services(self) -> None:
        if not self.manager.client.info().get("Swarm", {}).get("ControlAvailable"):
            return  # not (yet) a manager: no services
        for service in self.manager.client.api.services():
            with contextlib.suppress(docker.errors.NotFound):
                self.manager.client.api.remove_service(service["ID"])


def _allocate(prefix: str, workers: int, root: Path, offline_images: bool) -> Swarm:
    """Pick a free name and block, write the record and make the bridge (under engines.py's lock)."""
    with _allocation_lock():
        number = 0
        while True:
            number += 1
            name = f"{prefix}-s{number}"
            if len(name) > MAX_IFNAME:
                raise ValueError(f"swarm name {name!r} is longer than {MAX_IFNAME} characters (a bridge name)")
            taken = (RUN_DIR / f"{name}.json").exists() or _link_exists(name)
            if not taken and not any(_netns_exists(f"{name}n{i}") for i in range(workers + 1)):
                break
        block = next(_free_blocks(), None)
        if block is None:
            raise SwarmStartError(f"no free /24 left for swarm {name}")
        if workers + 3 > block.num_addresses:
            raise ValueError(f"{workers} workers do not fit in {block}")
        swarm = Swarm(name=name, prefix=prefix, bridge=name, block=block, home=root / name)
        swarm.nodes = [swarm._node(i, root, offline_images) for i in range(workers + 1)]
        swarm._save_record()
        swarm._ensure_bridge()  # the bridge's address is the claim other runs see
        return swarm


def start_swarm(
    prefix: str, workers: int, root: Path, *, timeout: float = START_TIMEOUT, offline_images: bool = True
) -> Swarm:
    """Start a manager and `workers` workers; every node is Ready when this returns (else SwarmStartError)."""
    if not _PREFIX.match(prefix):
        raise ValueError(f"prefix must be lowercase letters, digits and '-': {prefix!r}")
    if workers < 0:
        raise ValueError("workers must be >= 0")
    swarm: Swarm | None = None
    try:
        swarm = _allocate(prefix, workers, root, offline_images)
        deadline = time.monotonic() + timeout
        for node in swarm.nodes:
            node._launch()
        for node in swarm.nodes:
            node._wait_answers(deadline)
        _form(swarm, deadline)
    except BaseException as exc:
        tails = swarm.log_tails() if swarm is not None else ""
        problems = stop_swarm(swarm) if swarm is not None else []
        if isinstance(exc, Exception) and not isinstance(exc, ValueError):
            left = f"\ncleanup problems: {problems}" if problems else ""
            raise SwarmStartError(
                f"swarm of {prefix} did not start: {type(exc).__name__}: {exc}\n{tails}{left}"
            ) from exc
        raise
    return swarm


def _form(swarm: Swarm, deadline: float) -> None:
    """swarm init on the manager, join every worker, wait until the manager lists them all Ready."""
    manager = swarm.manager
    manager.client.swarm.init(
        advertise_addr=str(manager.address),
        listen_addr=f"{manager.address}:{SWARM_PORT}",
        dispatcher_heartbeat_period=HEARTBEAT_NS,
    )
    manager.client.swarm.reload()
    token = manager.client.swarm.attrs["JoinTokens"]["Worker"]

    def join(node: SwarmNode) -> None:
        node.client.swarm.join(
            remote_addrs=[f"{manager.address}:{SWARM_PORT}"],
            join_token=token,
            listen_addr=f"{node.address}:{SWARM_PORT}",
            advertise_addr=str(node.address),
        )

    if swarm.workers:
        with ThreadPoolExecutor(max_workers=len(swarm.workers)) as pool:
            for future in [pool.submit(join, node) for node in swarm.workers]:
                future.result()
    for node in swarm.nodes:
        node.node_id = node.client.info()["Swarm"]["NodeID"]
    while True:
        states = swarm.node_states()
        if len(states) == len(swarm.nodes) and all(states.get(n.hostname) == "ready" for n in swarm.nodes):
            return
        if time.monotonic() >= deadline:
            raise SwarmStartError(f"not every node of {swarm.name} is Ready: {states}")
        time.sleep(0.1)


def stop_swarm(swarm: Swarm) -> list[str]:
    """Stop every node and remove everything the swarm made. Never raises; returns the problems."""
    errors: list[str] = []

    def attempt(what: str, action: Callable[..., object], *args: Any) -> None:
        try:
            action(*args)
        except Exception as exc:
            errors.append(f"{swarm.name}: {what}: {type(exc).__name__}: {exc}")

    if swarm.nodes:
        manager = swarm.manager
        if manager.client is None and manager.answers():
            attempt("connecting to the manager", manager._connect)
        if manager.client is not None and manager.answers():
            # Else the manager reschedules tasks on the nodes still up while they go.
            attempt("removing services", swarm._remove_services)
    errors += stop_engines(swarm.nodes)
    delete_rule(swarm.block, swarm.name)
    # Only our bridge, by its name: never docker0.
    if swarm.bridge != DEFAULT_BRIDGE and _link_exists(swarm.bridge):
        result = _run("ip", "link", "delete", swarm.bridge, check=False)
        if result.returncode and _link_exists(swarm.bridge):
            errors.append(f"{swarm.name}: ip link delete {swarm.bridge}: {result.stderr.strip()}")
    if swarm.home.name == swarm.name:
        shutil.rmtree(swarm.home, ignore_errors=True)
        if swarm.home.exists():
            errors.append(f"{swarm.name}: {swarm.home} is still there")
    attempt(f"removing {swarm.record}", swarm.record.unlink, True)
    return errors


def stop_leftovers(prefix: str) -> list[str]:
    """Tear down every swarm recorded under /tmp/rte for `prefix` (say, by a killed run). Never raises."""
    errors: list[str] = []
    pattern = re.compile(rf"^{re.escape(prefix)}-s\d+\.json$")
    for path in sorted(RUN_DIR.glob("*.json")) if RUN_DIR.is_dir() else []:
        if pattern.match(path.name):
            try:
                swarm = Swarm._from_record(path)
            except (OSError, ValueError, KeyError) as exc:
                errors.append(f"{path}: {exc}")
                continue
            errors += stop_swarm(swarm)
    return errors


def recorded_prefixes() -> list[str]:
    """The run prefixes of every swarm recorded under /tmp/rte (for scripts/clean-test-leftovers)."""
    found: set[str] = set()
    for path in RUN_DIR.glob("*-s*.json") if RUN_DIR.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads(path.read_text())
            if "nodes" in record:
                found.add(str(record["prefix"]))
    return sorted(found)
