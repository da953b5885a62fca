"""More real Docker engines on this one machine, beside the main one: the hosts of fleet tests.

Each `ExtraEngine` is a `dockerd` of its own (`--data-root`, `--exec-root`, `--pidfile`, `-H unix://`,
its own managed containerd under its exec root, in containerd namespace NAME) on a Linux bridge of its
own. `start_engines(prefix, count, root)` starts `count` of them in parallel and returns once each
answers `/_ping` (30 s at most, else `EngineStartError` with the end of its log, and nothing left
behind); `stop_engines` stops them and removes everything they made. Measured: 3 engines in ~0.35 s.

Guarantees:
- Names: `<prefix>-e<N>` (N the smallest free number), at most 15 characters (it is the bridge's name
  too). The socket is `/tmp/rte/<name>.sock` (AF_UNIX paths are limited to 108 bytes), the exec root
  `/tmp/rte/<name>/`, the data root `<root>/<name>/data`, the log `<root>/<name>/dockerd.log`, and
  `/tmp/rte/<name>.json` records all of it, so `stop_leftovers(prefix)` can remove what a killed test
  run left behind. The daemon carries the labels `RUN_LABEL=<prefix>` and
  `tests.reconciler.engine=<name>` (`docker info`).
- Addresses: engine k's bridge is 10.213.k.1/24, a /24 chosen under a lock (/tmp/rte/.lock) so that it
  overlaps no address or route on the machine nor another engine's record. Networks created on an
  extra engine come from Docker's default pools (172.18.0.0/16 and up), like the main engine's:
  dockerd skips any subnet a route on the machine already covers, so they do not overlap.
- `stop()` sends SIGTERM and waits until dockerd has exited (SIGKILL after 20 s, then its containerd
  too); from its first moment on the socket is gone and a client fails at once (no timeout to wait
  for), and the engine's published ports refuse connections. Running containers are stopped by
  dockerd as on any shutdown, each within its stop timeout (10 s by default, and busybox httpd as
  PID 1 ignores SIGTERM: ~11 s), so `stop(wait=False)` returns as soon as the engine no longer answers
  and leaves the rest of the shutdown running; `start()` and `stop_engines` wait for it. `stop()` is
  idempotent. `start()` starts it again on the same data root (containers with a restart policy come
  back, as on a rebooted host) and returns once it answers; the same `client` works again.
- `stop_engines` never raises (it returns the problems it met): it force-removes the engine's
  containers and networks while it still answers, stops it, kills any process left that belongs to
  it (containerd, shims, docker-proxy), unmounts whatever is mounted under its roots, deletes its
  bridges (its own, and the `br-<id>` of networks made on it, found through the API or else in its
  network store), its iptables rule, its folders, socket and record. It never deletes docker0.
- If docker0 existed before an extra dockerd started and is gone once it answers, `start()` raises
  `EngineStartError` at once (see below for why that cannot be taken for granted).
- `load_image` copies an image from the main engine to an extra one (`docker save | docker load`
  through the SDK) and keeps its tag.

Choices:
- Own bridge, made here (`ip link add NAME type bridge`, `--bridge NAME`; dockerd takes the address
  already on it): dockerd's default would use docker0 itself. dockerd deletes the interface named
  docker0 (`removeDefaultBridgeInterface`) with `--bridge none` at every start, and, with
  `--default-address-pool` given, at every restart (when its store holds a stale default network):
  checked, the second deleted this machine's docker0. Neither option is used. The bridge is ours,
  so dockerd never deletes it: `stop_engines` does.
- `--iptables=false` (and `--ip-forward=false`): a dockerd with iptables enabled starts by removing
  the DOCKER and DOCKER-ISOLATION chains (libnetwork's `removeIPChains`), so it would wipe the main
  engine's port and isolation rules. Without iptables, published ports still work through
  docker-proxy (the userland proxy, on by default): `-p 127.0.0.1:PORT:8000` on an extra engine
  answers from this host (checked), and the host reaches an extra engine's containers by address on
  any of its networks (routed apps behind a host-network proxy do that). What is lost: containers on
  an extra engine have no NAT to the outside world and cannot reach the main engine's containers or
  another extra engine's; and the FORWARD policy the main engine sets (DROP, br_netfilter is on)
  drops even traffic between two containers on one extra engine's bridge. So one rule goes into
  DOCKER-USER, the chain Docker leaves to the administrator: `-s BLOCK -d BLOCK -j ACCEPT` (comment:
  the engine's name), which lets containers on the engine's own bridge reach each other and nothing
  else; `stop_engines` deletes it. Containers on a network created on an extra engine still cannot
  reach each other (their subnet is not known in advance); the host reaches them. No DOCKER-USER
  chain (the main engine runs without iptables): no rule.
- A managed containerd per engine (no `--containerd`): the main engine's is managed too (there is
  no system containerd socket), and each one lives in its engine's exec root; its namespace is the
  engine's name (`--containerd-namespace`), so even its shims' command lines say whose they are.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from .dockerd import process_alive
from .engine import RUN_LABEL

RUN_DIR = Path("/tmp/rte")
ENGINE_LABEL = "tests.reconciler.engine"
DEFAULT_BRIDGE = "docker0"  # the main engine's: never touched here
ADDRESS_SPACE = ipaddress.IPv4Network("10.213.0.0/16")
BLOCK_PREFIX = 24  # per engine: its bridge's subnet
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
CLIENT_TIMEOUT = 120
MAX_IFNAME = 15  # IFNAMSIZ - 1
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes, NUL included

_ENGINE_PROGRAMS = frozenset(
    {"dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v1", "containerd-shim-runc-v2", "runc",
     "docker-proxy", "docker-init"}
)  # fmt: skip
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_STORED_BRIDGE = re.compile(rb'"BridgeName":"([A-Za-z0-9_.-]{1,15})"')


class EngineStartError(RuntimeError):
    """An extra engine did not start, or did not answer in time."""


def _run(*args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, check=check, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _pings(path: Path, timeout: float = 2.0) -> bool:
    """True when an engine answers `GET /_ping` with 200 OK on the unix socket `path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        return False
    status = data.split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[1] == b"200" and data.endswith(b"OK")


def _argv(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _end_pid(pid: int, timeout: float) -> None:
    """SIGTERM `pid`, SIGKILL it after `timeout` s; returns once it is gone (or 5 s after SIGKILL)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not process_alive(pid):
            return


def _unescape_mount(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _mounts_under(roots: Iterable[Path]) -> list[str]:
    """Mount points at or under any of `roots`, deepest first."""
    prefixes = [str(r) for r in roots]
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4:
                point = _unescape_mount(fields[4])
                if any(point == p or point.startswith(p + "/") for p in prefixes):
                    found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def _ipv4_interfaces() -> list[tuple[str, ipaddress.IPv4Interface]]:
    """(interface, address/prefix) for every IPv4 address on the machine."""
    out = _run("ip", "-4", "-o", "addr", "show").stdout
    found: list[tuple[str, ipaddress.IPv4Interface]] = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet":
            found.append((fields[1].split("@")[0], ipaddress.IPv4Interface(fields[3])))
    return found


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every network an address or a route on this machine covers."""
    used = [iface.network for _, iface in _ipv4_interfaces()]
    for line in _run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        fields = line.split()
        if fields and fields[0] in ("local", "broadcast", "unicast", "blackhole", "unreachable", "prohibit"):
            fields = fields[1:]
        if fields and fields[0] != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(fields[0], strict=False))
    return used


def _link_exists(name: str) -> bool:
    return _run("ip", "link", "show", "dev", name, check=False).returncode == 0


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return _run("iptables", "-w", "10", *args, check=False)


@dataclass
class ExtraEngine:
    """One extra dockerd; see the module docstring. Build them with `start_engines`."""

    name: str
    socket: Path
    host: str
    client: Any  # docker.DockerClient on `host` (None until the engine first answered)
    prefix: str
    bridge: str
    block: ipaddress.IPv4Network  # the bridge's /24 (its address is the first host)
    exec_root: Path
    data_root: Path
    log: Path
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _had_docker0: bool = field(default=False, repr=False, compare=False)

    @property
    def record(self) -> Path:
        return RUN_DIR / f"{self.name}.json"

    @property
    def pidfile(self) -> Path:
        return self.exec_root / "dockerd.pid"

    def answers(self, timeout: float = 2.0) -> bool:
        return _pings(self.socket, timeout)

    def command(self) -> list[str]:
        # Never add `--bridge none` or `--default-address-pool` here: with either, dockerd deletes the
        # interface named docker0 (`removeDefaultBridgeInterface`; with pools, on every restart).
        return [
            "dockerd",
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "-H", self.host,
            "--bridge", self.bridge,
            "--iptables=false",
            "--ip-forward=false",
            "--containerd-namespace", self.name,
            "--containerd-plugins-namespace", f"{self.name}-plugins",
            "--label", f"{RUN_LABEL}={self.prefix}",
            "--label", f"{ENGINE_LABEL}={self.name}",
        ]  # fmt: skip

    def _dockerd_pid(self) -> int | None:
        """The pid of this engine's dockerd while it runs (ours, or one a killed run left)."""
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        pid = _read_pid(self.pidfile)
        if pid is not None and process_alive(pid) and self.host in _argv(pid):
            return pid
        return None

    def _ensure_bridge(self) -> None:
        ensure_bridge(self.bridge, self.block, self.name)

    def _launch(self) -> None:
        """Start dockerd (detached in its own session, output appended to the log); do not wait."""
        self._had_docker0 = _link_exists(DEFAULT_BRIDGE)
        self._ensure_bridge()
        self.exec_root.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _log_tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def _wait_answers(self, deadline: float) -> None:
        started = time.monotonic()
        while not self.answers():
            if self._process is not None and self._process.poll() is not None:
                raise EngineStartError(
                    f"dockerd {self.name} exited ({self._process.returncode}) before it answered; "
                    f"{self.log}:\n{self._log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise EngineStartError(
                    f"dockerd {self.name} did not answer on {self.socket} within {time.monotonic() - started:.0f}s; "
                    f"{self.log}:\n{self._log_tail()}"
                )
            time.sleep(0.05)
        if self._had_docker0 and not _link_exists(DEFAULT_BRIDGE):
            raise EngineStartError(
                f"{DEFAULT_BRIDGE} disappeared while dockerd {self.name} started: the main engine's containers "
                f"have no network until it is recreated (restart the main dockerd); {self.log}:\n{self._log_tail()}"
            )
        if self.client is None:
            self._connect()

    def _connect(self) -> None:
        self.client = docker.DockerClient(base_url=self.host, timeout=CLIENT_TIMEOUT)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the engine again (same data root) and return once it answers; a running one is left as is."""
        if self._dockerd_pid() is not None:
            if self.answers():
                return
            self.stop()  # hung, or still shutting down after `stop(wait=False)`
        self._finish_stop()
        self._launch()
        self._wait_answers(time.monotonic() + timeout)

    def stop(self, *, wait: bool = True) -> None:
        """SIGTERM dockerd: from then on the engine does not answer. With `wait`, return once it has exited."""
        pid = self._dockerd_pid()
        if pid is None:
            self._finish_stop()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while self.answers(timeout=0.5) and time.monotonic() < deadline:
            time.sleep(0.05)
        if wait:
            self._finish_stop()

    def _finish_stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Wait for a stopping dockerd to exit (SIGKILL after `timeout`), then end its containerd if it is left."""
        pid = self._dockerd_pid()
        if pid is not None:
            if self._process is not None and self._process.pid == pid:
                try:
                    self._process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(5.0)
            else:
                _end_pid(pid, timeout)
        if self._process is not None:
            self._process.poll()  # reap
        containerd = _read_pid(self.exec_root / "containerd" / "containerd.pid")
        ours = containerd is not None and any(str(self.exec_root) in a for a in _argv(containerd))
        if containerd is not None and ours and process_alive(containerd):
            _end_pid(containerd, 5.0)

    def _save_record(self) -> None:
        record = {
            "name": self.name,
            "prefix": self.prefix,
            "socket": str(self.socket),
            "bridge": self.bridge,
            "block": str(self.block),
            "exec_root": str(self.exec_root),
            "data_root": str(self.data_root),
            "log": str(self.log),
        }
        self.record.write_text(json.dumps(record, indent=1) + "\n")

    @classmethod
    def _from_record(cls, path: Path) -> ExtraEngine:
        record = json.loads(path.read_text())
        sock = Path(record["socket"])
        return cls(
            name=record["name"],
            socket=sock,
            host=f"unix://{sock}",
            client=None,
            prefix=record["prefix"],
            bridge=record["bridge"],
            block=ipaddress.IPv4Network(record["block"]),
            exec_root=Path(record["exec_root"]),
            data_root=Path(record["data_root"]),
            log=Path(record["log"]),
        )

    def _own_processes(self) -> list[int]:
        """Processes left that belong to this engine: its dockerd, containerd, shims and docker-proxies."""
        root = str(self.exec_root)
        found: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            argv = _argv(int(entry.name))
            if not argv or Path(argv[0]).name not in _ENGINE_PROGRAMS:
                continue  # a client of the engine (say, an agent under test) is not the engine's to end
            mine = any(a in (root, self.host, str(self.socket)) or a.startswith(root + "/") for a in argv)
            if not mine and Path(argv[0]).name == "docker-proxy" and "-container-ip" in argv:
                at = argv.index("-container-ip") + 1
                with contextlib.suppress(IndexError, ValueError):
                    mine = ipaddress.IPv4Address(argv[at]) in self.block
            if mine and process_alive(int(entry.name)):
                found.append(int(entry.name))
        return found

    def teardown(self) -> list[str]:
        """Stop the engine and remove everything it made; never raises, returns the problems."""
        errors: list[str] = []

        def attempt(what: str, action: Callable[..., object], *args: Any) -> None:
            try:
                action(*args)
            except Exception as exc:
                errors.append(f"{self.name}: {what}: {type(exc).__name__}: {exc}")

        bridges: set[str] = set()
        if self.client is None and self.answers():  # one a killed run left: empty it first, it stops faster
            attempt("connecting", self._connect)
        if self.client is not None and self.answers():
            attempt("removing containers", self._remove_containers)
            attempt("listing networks", self._api_network_bridges, bridges)
            attempt("pruning networks", self.client.api.prune_networks)
        attempt("reading the network store", self._stored_network_bridges, bridges)
        attempt("stopping dockerd", self.stop)
        for pid in self._own_processes():
            attempt(f"ending process {pid} ({' '.join(_argv(pid))[:80]})", _end_pid, pid, 5.0)
        for point in _mounts_under([self.exec_root, self.data_root]):
            result = _run("umount", "-l", point, check=False)
            if result.returncode and point in _mounts_under([Path(point)]):
                errors.append(f"{self.name}: umount {point}: {result.stderr.strip()}")
        attempt("deleting bridges", self._delete_bridges, bridges)
        attempt("deleting the iptables rule", self._delete_rule)
        home = self.log.parent  # <root>/<name>: the data root and the log
        for folder in (self.exec_root, self.data_root, *([home] if home.name == self.name else [])):
            shutil.rmtree(folder, ignore_errors=True)
            if folder.exists():
                errors.append(f"{self.name}: {folder} is still there")
        for path in (self.socket, self.record):
            attempt(f"removing {path}", path.unlink, True)
        if self.client is not None:
            attempt("closing the client", self.client.close)
        return errors

    def _remove_containers(self) -> None:
        for info in self.client.api.containers(all=True):
            try:
                self.client.api.remove_container(info["Id"], force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                # A swarm task's container that the engine is removing already (its service was removed).
                if exc.status_code != 409 or "already in progress" not in str(exc):
                    raise

    def _api_network_bridges(self, into: set[str]) -> None:
        """The bridges of the networks created on this engine, as it reports them."""
        for network in self.client.api.networks():
            if network.get("Driver") == "bridge":
                options = network.get("Options") or {}
                into.add(options.get("com.docker.network.bridge.name") or f"br-{network['Id'][:12]}")

    def _stored_network_bridges(self, into: set[str]) -> None:
        """The bridges named in the engine's network store (what a dead engine leaves to find them by)."""
        store = self.data_root / "network" / "files" / "local-kv.db"
        if store.exists():
            into.update(m.decode() for m in _STORED_BRIDGE.findall(store.read_bytes()))

    def _delete_bridges(self, bridges: set[str]) -> None:
        doomed = {*bridges, self.bridge, *(name for name, iface in _ipv4_interfaces() if iface.ip in self.block)}
        for name in sorted(doomed):
            # Only our own bridge and networks' `br-<id>` ones (ids are random): never docker0 or another engine's.
            if name != DEFAULT_BRIDGE and (name == self.bridge or name.startswith("br-")) and _link_exists(name):
                result = _run("ip", "link", "delete", name, check=False)
                if result.returncode and _link_exists(name):
                    raise RuntimeError(f"ip link delete {name}: {result.stderr.strip()}")

    def _delete_rule(self) -> None:
        delete_rule(self.block, self.name)


def accept_rule(block: ipaddress.IPv4Network, name: str) -> list[str]:
    """The DOCKER-USER rule that lets the containers on ``block`` reach each other (commented ``name``)."""
    return ["-s", str(block), "-d", str(block), "-m", "comment", "--comment", name, "-j", "ACCEPT"]


def ensure_bridge(bridge: str, block: ipaddress.IPv4Network, name: str) -> None:
    """Our bridge ``bridge`` up with the first address of ``block``, and its ``accept_rule``."""
    if not _link_exists(bridge):
        _run("ip", "link", "add", bridge, "type", "bridge")
    address = f"{block.network_address + 1}/{block.prefixlen}"
    if address not in _run("ip", "-4", "-o", "addr", "show", "dev", bridge).stdout:
        _run("ip", "addr", "add", address, "dev", bridge)
    _run("ip", "link", "set", bridge, "up")
    rule = accept_rule(block, name)
    if _iptables("-n", "-L", "DOCKER-USER").returncode == 0 and _iptables("-C", "DOCKER-USER", *rule).returncode:
        _iptables("-I", "DOCKER-USER", *rule)


def delete_rule(block: ipaddress.IPv4Network, name: str) -> None:
    """Every copy of ``accept_rule(block, name)``."""
    rule = accept_rule(block, name)
    for _ in range(10):
        if _iptables("-C", "DOCKER-USER", *rule).returncode:
            return
        _iptables("-D", "DOCKER-USER", *rule)


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    with (RUN_DIR / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_blocks() -> Iterator[ipaddress.IPv4Network]:
    used = _used_networks()
    claimed = []
    for record in RUN_DIR.glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            claimed.append(ipaddress.IPv4Network(json.loads(record.read_text())["block"]))
    for block in ADDRESS_SPACE.subnets(new_prefix=BLOCK_PREFIX):
        if not any(block.overlaps(net) for net in [*used, *claimed]):
            yield block


def _allocate(prefix: str, count: int, root: Path, engines: list[ExtraEngine]) -> None:
    """Pick free names and address blocks, make the bridges and write the records (under the lock).

    Appends each engine to `engines` as soon as it has made something, so a failure can be cleaned up.
    """
    with _allocation_lock():
        blocks = _free_blocks()
        number = 0
        while len(engines) < count:
            number += 1
            name = f"{prefix}-e{number}"
            if len(name) > MAX_IFNAME:
                raise ValueError(f"engine name {name!r} is longer than {MAX_IFNAME} characters (a bridge name)")
            sock = RUN_DIR / f"{name}.sock"
            if len(str(sock)) > MAX_SOCKET_PATH:
                raise ValueError(f"socket path {sock} is too long for AF_UNIX")
            if (RUN_DIR / f"{name}.json").exists() or sock.exists() or (RUN_DIR / name).exists() or _link_exists(name):
                continue
            block = next(blocks, None)
            if block is None:
                raise EngineStartError(f"no free /{BLOCK_PREFIX} left in {ADDRESS_SPACE} for {name}")
            engine = ExtraEngine(
                name=name,
                socket=sock,
                host=f"unix://{sock}",
                client=None,
                prefix=prefix,
                bridge=name,
                block=block,
                exec_root=RUN_DIR / name,
                data_root=root / name / "data",
                log=root / name / "dockerd.log",
            )
            engine._save_record()
            engines.append(engine)
            engine._ensure_bridge()  # the bridge's address is the claim other runs see


def start_engines(prefix: str, count: int, root: Path, *, timeout: float = START_TIMEOUT) -> list[ExtraEngine]:
    """Start `count` extra engines in parallel; each answers when this returns (else EngineStartError)."""
    if not _PREFIX.match(prefix):
        raise ValueError(f"prefix must be lowercase letters, digits and '-': {prefix!r}")
    engines: list[ExtraEngine] = []
    try:
        _allocate(prefix, count, root, engines)
        for engine in engines:
            engine._launch()
        deadline = time.monotonic() + timeout
        for engine in engines:
            engine._wait_answers(deadline)
    except BaseException:
        stop_engines(engines)
        raise
    return engines


def stop_engines(engines: Iterable[ExtraEngine]) -> list[str]:
    """Stop the engines (in parallel) and remove everything they made. Never raises; returns the problems."""
    todo = list(engines)
    if not todo:
        return []
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        for engine, future in [(e, pool.submit(e.teardown)) for e in todo]:
            try:
                errors += future.result()
            except Exception as exc:
                errors.append(f"{engine.name}: {type(exc).__name__}: {exc}")
    return errors


def stop_leftovers(prefix: str) -> list[str]:
    """Tear down every engine recorded under /tmp/rte for `prefix` (say, by a killed run). Never raises."""
    engines: list[ExtraEngine] = []
    errors: list[str] = []
    pattern = re.compile(rf"^{re.escape(prefix)}-e\d+\.json$")
    for path in sorted(RUN_DIR.glob("*.json")) if RUN_DIR.is_dir() else []:
        if pattern.match(path.name):
            try:
                engines.append(ExtraEngine._from_record(path))
            except (OSError, ValueError, KeyError) as exc:
                errors.append(f"{path}: {exc}")
    return errors + stop_engines(engines)


def load_image(source_client: Any, target: ExtraEngine, ref: str) -> None:
    """Copy image `ref` from the engine of `source_client` to `target` (save, load), tagged `ref` there too."""
    source_id = source_client.api.inspect_image(ref)["Id"]
    for message in target.client.api.load_image(source_client.api.get_image(ref)):
        if isinstance(message, dict) and (message.get("error") or message.get("errorDetail")):
            raise RuntimeError(f"loading {ref} into {target.name}: {message.get('error') or message['errorDetail']}")
    if target.client.api.inspect_image(source_id)["Id"] != source_id:
        raise RuntimeError(f"loading {ref} into {target.name} did not give image {source_id}")
    tags = target.client.api.inspect_image(source_id).get("RepoTags") or []
    if ref not in tags and ":" in ref.rsplit("/", 1)[-1]:
        repo, _, tag = ref.rpartition(":")
        target.client.api.tag(source_id, repo, tag)
