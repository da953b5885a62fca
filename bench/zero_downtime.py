"""Benchmark of zero-downtime deploys: routed apps (start-first, behind the HAProxy container that reconcile
runs) side by side with the stop-first path of apps on a host port, in one run, under the same load.

A. A steady load through the proxy (2 threads opening a connection per request, 2 on keep-alive; 300
   requests/s in all unless told) during N deploys of a routed app (default 20, interleaved good,
   gate-fail, good, exit, ...: 10 good releases, 5 whose ``/health`` is 404, 5 that exit at start): the
   requests, the failed ones (no answer or 5xx), failed per good deploy, the requests answered by a
   release that failed its gate, the stalled ones (>= 0.5 s), and the rate the load achieved.
B. The same load, the same images and the same deploys in the same order, of the same app published on
   a host port (stop-first: stop-old, start-new, gate) and loaded there.
C. Routed: from the ``switch`` step (announced to ``on_step`` right after the gate passed) to the end of
   the first request answered by the new release; p50 and max over the good deploys (target <= 50 ms).
D. Routed: ``rollback --local`` (``swap_back``) inside the warm window after a good deploy, from just
   before the call to the end of the first request answered by the previous release; then ``resume``;
   5 rounds; p50 and max (target <= 100 ms).
E. The proxy's overhead: an unpaced load (same threads) straight at the app's container address on the
   proxy's network and through the proxy, in alternating 1 s slices, ~5 s each: p50 latency added (target
   <= 1 ms) and throughput through the proxy as a share of direct (target >= 90 %), with how busy the
   host's CPUs were (the load, HAProxy and the app share them).
E'. The same, measured fairly: a release that keeps connections alive and forks nothing per request
   (``ka``: HAProxy's own binary answering ``http-request return``, one thread), ``wrk`` (native, keep-alive,
   ``--connections``) pinned to the last CPU with ``taskset``, the app and HAProxy pinned to the others
   (``docker update --cpuset-cpus``), in alternating slices: direct, through the proxy as reconcile
   configures it (``option http-server-close``: a new server connection per request), and through a copy of
   that configuration edited by hand in this bench only (``option http-keep-alive`` + ``http-reuse
   always``: server connections reused), each with its p50 and each CPU's busy share.
F. Failover: the routed app's live release killed (``docker kill``) under the paced load while the release
   before it is warm (HAProxy's ``backup``): the failed GETs (target 0) and the time from the kill until
   every request is answered again (target <= 2 s): the end of the last request that failed or took 50 ms
   or more (0 when none did), with the slowest request of the 2 s after the kill. No pass runs meanwhile.

Each deploy is a commit to a local bare repository and a ``reconcile_once`` in this process, as an instance
of the bench's own. The load runs in a child process (``tests/support/load.py``) so that a pass's CPU does
not hold its threads back; its hits are timed on the same monotonic clock (CLOCK_MONOTONIC).

Run: ``.venv/bin/python bench/zero_downtime.py [--deploys 20] [--rollbacks 5] [--rate 300] [--overhead-seconds 5]
[--connections 32] [--quick] [--json]``
(needs the Docker engine, busybox-static and haproxy, as the tests do, and ``wrk`` and ``taskset``:
``apt-get install -y wrk util-linux``). It removes what it creates. It
reports: it exits 0 whether or not a target is met.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import http.client
import io
import json
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, ClassVar, cast

import docker.errors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler.converge.run import Settings, reconcile_once  # noqa: E402
from reconciler.core.proxy import SERVER, backend, proxy_container, proxy_network  # noqa: E402
from reconciler.errors import ReconcileError  # noqa: E402
from reconciler.ops.breakglass import swap_back  # noqa: E402
from reconciler.ops.controls import resume  # noqa: E402
from tests.support import GitRemote, ImageFactory, cleanup_run, connect, free_port, http_get  # noqa: E402
from tests.support.engine import RUN_LABEL, new_run_prefix  # noqa: E402
from tests.support.haproxy import build_haproxy_image  # noqa: E402
from tests.support.load import Hit, Load, bodies, failed  # noqa: E402

PATTERN = ("good", "gate", "good", "exit")  # the deploys, in this order, over and over
TAG_LETTER = {"good": "g", "gate": "b", "exit": "x"}
THREADS, KEEPALIVE_THREADS = 2, 2
GAP = 0.3  # seconds between two deploys, so that each failure falls in its own deploy's window
SETTLE = 0.5  # seconds of load before the first deploy and after the last
OVERHEAD_SLICE = 1.0  # seconds of one slice of E's loads
SLOW = 0.5  # seconds: a request that took this long stalled (a SYN retransmit takes 1 s)
TARGETS = {"rate": 200.0, "switch_ms": 50.0, "rollback_ms": 100.0, "added_ms": 1.0, "throughput_pct": 90.0,
           "fair_added_ms": 0.5, "failover_s": 2.0, "failover_failed": 0}  # fmt: skip
FAIR_SLICE = 2.0  # seconds of one wrk run in E'
REUSE_SOCKET = "admin.sock"
FAILOVER_AFTER = 3.0  # seconds of load after the kill in F
FAILOVER_SLOW = 0.05  # seconds: a request of F that took this long waited for the failover
KEEPALIVE_APP = """global
  nbthread 1
defaults
  mode http
  timeout client 30s
  timeout connect 5s
  timeout server 30s
  timeout http-keep-alive 30s
frontend app
  bind :8000
  http-request return status 200 content-type text/plain string "ka"
"""


@dataclass(frozen=True)
class Release:
    kind: str  # good, gate (answers / but /health is 404), exit (exits 1 at start)
    tag: str  # the image's tag, and its / body


def releases(count: int) -> list[Release]:
    seen: collections.Counter[str] = collections.Counter()
    out = []
    for index in range(count):
        kind = PATTERN[index % len(PATTERN)]
        seen[kind] += 1
        out.append(Release(kind, f"{TAG_LETTER[kind]}{seen[kind]}"))
    return out


def app_yaml(name: str, repo: str, tag: str, port: int | None) -> str:
    """The app under ``apps:``: routed when ``port`` is None, else published on 127.0.0.1:port."""
    lines = [f"  {name}:", f"    image: {repo}", f"    version: '{tag}'", "    init: true", "    stop_timeout: 2s"]
    if port is None:
        lines += ["    route:", "      port: 8000"]
        health = "/health"
    else:
        lines.append(f"    ports: ['127.0.0.1:{port}:8000']")
        health = f"http://127.0.0.1:{port}/health"
    lines += ["    health:", f"      http: {health}", "      interval: 100ms", "      timeout: 2s"]
    lines.append("      healthy_for: 300ms")
    return "\n".join(lines) + "\n"


# -- the load, in a child process ---------------------------------------------------------------------------


def _load_child(conn: Connection, host: str, port: int, rate: float | None) -> None:
    load = Load(port, host=host, threads=THREADS, keepalive_threads=KEEPALIVE_THREADS, rate=rate)
    load.start()
    conn.send("started")
    conn.recv()
    conn.send(load.stop())
    conn.close()


class LoadProcess:
    """``Load`` in a child process (spawned: no threads of ours are forked); ``stop()`` returns its hits."""

    running: ClassVar[list[LoadProcess]] = []  # to end if the bench stops half-way

    def __init__(self, port: int, *, host: str = "127.0.0.1", rate: float | None) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process: BaseProcess = context.Process(
            target=_load_child, args=(child, host, port, rate), name="bench-load", daemon=True
        )
        self._process.start()
        child.close()
        LoadProcess.running.append(self)
        if self._conn.recv() != "started":
            raise RuntimeError("the load process did not start")

    def stop(self) -> list[Hit]:
        self._conn.send("stop")
        hits = cast(list[Hit], self._conn.recv())
        self._process.join(10)
        LoadProcess.running.remove(self)
        return hits

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)


# -- one path: an app, its repository, its instance ---------------------------------------------------------


@dataclass
class Deployed:
    release: Release
    started: float
    ended: float
    ok: bool
    results: list[str]
    switch_at: float | None  # when ``switch`` was announced (routed, gate passed)
    error: str = ""

    @property
    def expected(self) -> bool:
        """Whether the pass ended as the release's kind says it should."""
        if self.error:
            return False
        if self.release.kind == "good":
            return self.ok and self.results == ["applied"]
        return not self.ok and self.results == ["rolled-back"]


@dataclass
class Site:
    """An app deployed by its own instance from its own repository: routed (``port`` None) or on a port."""

    name: str
    repo: str
    work: Path
    instance: str
    header: str  # the ``proxy:`` mapping, or ""
    port: int | None  # the host port of the stop-first app
    steps: list[tuple[float, str, str]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.remote = GitRemote(self.work / "git")
        self.settings = Settings(repo=str(self.remote.bare_path), state_dir=self.work / "state", instance=self.instance)

    def record(self, app: str, step: str) -> None:
        self.steps.append((time.monotonic(), app, step))

    def deploy(self, release: Release) -> Deployed:
        text = self.header + "apps:\n" + app_yaml(self.name, self.repo, release.tag, self.port)
        self.remote.commit_file("desired-state.yaml", text, release.tag)
        seen = len(self.steps)
        started = time.monotonic()
        try:
            result = reconcile_once(self.settings, on_step=self.record, log=self.log.append)
        except ReconcileError as exc:
            ended = time.monotonic()
            self.log.append(f"{release.tag}: reconcile_once raised {type(exc).__name__}: {exc}")
            return Deployed(release, started, ended, False, [], None, error=f"{type(exc).__name__}: {exc}")
        ended = time.monotonic()
        switch_at = next((at for at, _, step in self.steps[seen:] if step == "switch"), None)
        outcomes = [str(outcome.result) for outcome in result.outcomes]
        deployed = Deployed(release, started, ended, result.ok, outcomes, switch_at)
        if not deployed.expected:
            messages = "; ".join(outcome.message for outcome in result.outcomes)
            self.log.append(f"{release.tag} ({release.kind}): unexpected outcome {outcomes}: {messages}")
        return deployed


def wait_body(url: str, body: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = http_get(url, timeout=1.0)
        except OSError as exc:
            last = exc
        if last == (200, body):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not serve {body!r} within {timeout}s (last: {last})")


# -- figures ------------------------------------------------------------------------------------------------


def span(hits: Sequence[Hit]) -> float:
    return max(hit.ended for hit in hits) - min(hit.started for hit in hits) if hits else 0.0


def first_answer(hits: Sequence[Hit], body: str, after: float) -> float | None:
    """The earliest end of a request answered with ``body`` that ended after ``after``."""
    ends = [hit.ended for hit in hits if hit.body == body and hit.ended > after and 0 < hit.status < 500]
    return min(ends) if ends else None


def p50_max(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None}
    return {"p50": statistics.median(values), "max": max(values)}


def deploy_figures(hits: list[Hit], deploys: list[Deployed], serving_before: str, notes: list[str]) -> dict[str, Any]:
    """A and B for one path (and C's samples when the deploys switched)."""
    bad = failed(hits)
    starts = [deployed.started for deployed in deploys]
    during: collections.Counter[str] = collections.Counter()
    for hit in bad:
        index = bisect.bisect_right(starts, hit.started) - 1
        during["before the first" if index < 0 else deploys[index].release.kind] += 1
    answered = bodies(hits)
    gate_failed = {deployed.release.tag for deployed in deploys if deployed.release.kind == "gate"}
    good = [deployed for deployed in deploys if deployed.release.kind == "good"]
    switch_ms: list[float] = []
    late_old = 0
    serving = serving_before
    for deployed in deploys:
        if deployed.release.kind != "good" or not deployed.ok:
            continue
        tag = deployed.release.tag
        new_end = first_answer(hits, tag, deployed.started)
        if new_end is None:
            notes.append(f"{tag} passed its gate but answered no request (the load stalled or failed all its life)")
        else:
            late = [hit for hit in hits if hit.body == serving and hit.started > new_end]
            late_old += len(late)
            if deployed.switch_at is not None:
                switch_ms.append((new_end - deployed.switch_at) * 1000)
        serving = tag
    durations: dict[str, list[float]] = collections.defaultdict(list)
    for deployed in deploys:
        durations[deployed.release.kind].append(deployed.ended - deployed.started)
    return {
        "requests": len(hits),
        "rate": len(hits) / span(hits) if hits else 0.0,
        "failed": len(bad),
        "failed_during": dict(during),
        "failed_per_good_deploy": during["good"] / len(good) if good else 0.0,
        "stalled": sum(hit.ended - hit.started >= SLOW for hit in hits),
        "failure_reasons": dict(collections.Counter(hit.error or str(hit.status) for hit in bad)),
        "answered_by_gate_failed": sum(answered[tag] for tag in gate_failed),
        "old_after_new": late_old,
        "switch_to_first_ms": switch_ms,
        "deploy_s": {kind: statistics.median(values) for kind, values in durations.items()},
        "unexpected_outcomes": [f"{d.release.tag}: {d.results or d.error}" for d in deploys if not d.expected],
        "serving_after": serving,
    }


def run_deploys(site: Site, url: str, load_port: int, plan: list[Release], rate: float) -> dict[str, Any]:
    """A or B: a first release, then the load during every deploy of ``plan``."""
    first = site.deploy(Release("good", "g0"))
    if not first.ok:
        raise RuntimeError(f"the first deploy of {site.name} failed: {site.log[-5:]}")
    wait_body(url, "g0")
    load = LoadProcess(load_port, rate=rate / (THREADS + KEEPALIVE_THREADS))
    time.sleep(SETTLE)
    deploys = []
    for release in plan:
        deploys.append(site.deploy(release))
        time.sleep(GAP)
    time.sleep(SETTLE)
    hits = load.stop()
    notes: list[str] = []
    figures = deploy_figures(hits, deploys, "g0", notes)
    figures["notes"] = notes
    return figures


def run_rollbacks(site: Site, load_port: int, rounds: int, rate: float, serving: str, first_tag: int) -> dict[str, Any]:
    """D: deploy a good release (the one before it stays warm), roll back locally, resume; ``rounds`` times."""
    load = LoadProcess(load_port, rate=rate / (THREADS + KEEPALIVE_THREADS))
    time.sleep(SETTLE)
    timed: list[tuple[str, float, float]] = []  # (previous release, before the call, after it)
    notes: list[str] = []
    for index in range(rounds):
        previous = serving
        deployed = site.deploy(Release("good", f"g{first_tag + index}"))
        if not deployed.ok:
            notes.append(f"round {index + 1}: the deploy of {deployed.release.tag} failed: {site.log[-3:]}")
            continue
        time.sleep(GAP)
        before = time.monotonic()
        try:
            said, version = swap_back(site.settings, site.name)
        except ReconcileError as exc:
            notes.append(f"round {index + 1}: swap_back raised {type(exc).__name__}: {exc}")
            serving = deployed.release.tag
            continue
        after = time.monotonic()
        resume(state_dir=site.settings.state_dir)
        if version != previous:
            notes.append(f"round {index + 1}: swap_back put back {version}, not {previous} ({said})")
        timed.append((previous, before, after))
        serving = version
        time.sleep(GAP)
    time.sleep(SETTLE)
    hits = load.stop()
    rollback_ms, call_ms = [], []
    for previous, before, after in timed:
        answered = first_answer(hits, previous, before)
        if answered is None:
            notes.append(f"the rollback to {previous} at {before:.3f}: no request was answered by it")
            continue
        rollback_ms.append((answered - before) * 1000)
        call_ms.append((after - before) * 1000)
    bad = failed(hits)
    return {
        "rounds": rounds,
        "rollback_to_first_ms": rollback_ms,
        "swap_back_call_ms": call_ms,
        "requests": len(hits),
        "failed": len(bad),
        "failure_reasons": dict(collections.Counter(hit.error or str(hit.status) for hit in bad)),
        "notes": notes,
        "serving_after": serving,
    }


def cpu_jiffies() -> tuple[int, int]:
    """The host's CPU time so far, all and idle (iowait included), from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


def run_overhead(direct: tuple[str, int], proxy_port: int, seconds: float) -> dict[str, Any]:
    """E: unpaced load straight at the container and through the proxy, in alternating slices of ~1 s (so
    that a noisy second of the host weighs on both), ``seconds`` in all for each."""
    slices = max(1, round(seconds / OVERHEAD_SLICE))
    hits: dict[str, list[Hit]] = {"direct": [], "proxy": []}
    spans = {"direct": 0.0, "proxy": 0.0}
    jiffies = {"direct": [0, 0], "proxy": [0, 0]}  # all, idle
    for _ in range(slices):
        for which, (host, port) in (("direct", direct), ("proxy", ("127.0.0.1", proxy_port))):
            load = LoadProcess(port, host=host, rate=None)
            before = cpu_jiffies()
            time.sleep(seconds / slices)
            after = cpu_jiffies()
            got = load.stop()
            hits[which] += got
            spans[which] += span(got)
            jiffies[which][0] += after[0] - before[0]
            jiffies[which][1] += after[1] - before[1]
    out: dict[str, Any] = {}
    for which, got in hits.items():
        good = [hit for hit in got if 0 < hit.status < 500]
        latencies = [(hit.ended - hit.started) * 1000 for hit in good]
        out[which] = {
            "requests": len(got),
            "failed": len(got) - len(good),
            "p50_ms": statistics.median(latencies) if latencies else None,
            "rate": len(good) / spans[which] if spans[which] else 0.0,
            "host_cpu_busy_pct": 100 * (1 - jiffies[which][1] / jiffies[which][0]) if jiffies[which][0] else None,
        }
    direct_p50, proxy_p50 = out["direct"]["p50_ms"], out["proxy"]["p50_ms"]
    out["added_ms"] = proxy_p50 - direct_p50 if direct_p50 is not None and proxy_p50 is not None else None
    out["throughput_pct"] = 100 * out["proxy"]["rate"] / out["direct"]["rate"] if out["direct"]["rate"] else None
    return out


# -- E': the fair overhead (wrk pinned to its own CPU, a keep-alive release) ---------------------------------


def keepalive_image(client: Any, haproxy: str, repo: str) -> str:
    """``repo:ka``: the HAProxy image with ``KEEPALIVE_APP`` as its configuration (keep-alive, no fork)."""
    container = client.api.create_container(haproxy, command=["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"])
    try:
        data = KEEPALIVE_APP.encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo("usr/local/etc/haproxy/haproxy.cfg")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        client.api.put_archive(container["Id"], "/", buffer.getvalue())
        client.api.commit(container["Id"], repository=repo, tag="ka")
    finally:
        remove_quietly(client.api.remove_container, container["Id"], force=True)
    return f"{repo}:ka"


def cpu_each() -> list[tuple[int, int]]:
    """Each CPU's time so far, all and idle (iowait included), from /proc/stat."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d+ ", line):
            fields = [int(value) for value in line.split()[1:]]
            out.append((sum(fields), fields[3] + fields[4]))
    return out


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, seconds: float, connections: int, cpu: int) -> dict[str, Any]:
    """One ``wrk`` run pinned to ``cpu``: requests/s, p50 in ms, the errors it counted, each CPU's busy %."""
    before = cpu_each()
    argv = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    after = cpu_each()
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    p50 = re.search(r"^\s+50%\s+([0-9.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rate is None or p50 is None:
        raise RuntimeError(f"wrk said nothing to read: {out}")
    busy = [
        100 * (1 - (a[1] - b[1]) / (a[0] - b[0])) if a[0] > b[0] else 0.0
        for a, b in zip(after, before, strict=True)
    ]  # fmt: skip
    return {
        "rate": float(rate[1]),
        "p50_ms": float(p50[1]) * _UNITS[p50[2]],
        "errors": (errors[1].strip() if errors else "") + (f" non-2xx {non2xx[1]}" if non2xx else ""),
        "cpu_busy_pct": busy,
    }


def reuse_config(config: str, port: int) -> str:
    """The proxy's own configuration edited by hand for E' only: server connections kept alive and reused,
    bound to ``port``, its admin socket in its own folder."""
    lines = []
    for line in config.splitlines():
        if line.strip().startswith("stats socket"):
            line = f"  stats socket /usr/local/etc/haproxy/{REUSE_SOCKET} mode 600 level admin"
        elif line.strip() == "master-worker":
            continue
        if line.strip() == "option http-server-close":
            lines += ["  option http-keep-alive", "  http-reuse always"]
            continue
        if line.strip().startswith("bind "):
            line = f"  bind 127.0.0.1:{port}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def established(ip: str) -> int:
    """TCP connections of this host (HAProxy runs in its network) established to ``ip``:8000."""
    argv = ["ss", "-Htn", "state", "established", "dst", f"{ip}:8000"]
    return len(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines())


def reuse_switch(sock: Path, port: int, app: str, old: str, new: str) -> dict[str, Any]:
    """With server connections reused: does a request after a switch (reconcile's runtime commands: maint,
    addr, ready) ever go over an idle connection to the old release? 200 requests on 4 keep-alive client
    connections before and after; their bodies, and the connections established to each address."""

    def command(line: str) -> str:
        with socket.socket(socket.AF_UNIX) as admin:
            admin.connect(str(sock))
            admin.sendall(line.encode() + b"\n")
            return b"".join(iter(lambda: admin.recv(4096), b"")).decode().strip()

    clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(4)]

    def burst() -> dict[str, int]:
        bodies: collections.Counter[str] = collections.Counter()
        for index in range(200):
            conn = clients[index % len(clients)]
            conn.request("GET", "/")
            bodies[conn.getresponse().read().decode().strip()] += 1
        return dict(bodies)

    try:
        before = {"bodies": burst(), "to_old": established(old), "to_new": established(new)}
        target = f"{backend(app)}/{SERVER}"
        said = [command(f"set server {target} state maint"), command(f"set server {target} addr {new} port 8000"),
                command(f"set server {target} state ready")]  # fmt: skip
        after = {"bodies": burst(), "to_old": established(old), "to_new": established(new)}
    finally:
        for conn in clients:
            conn.close()
    return {"before": before, "after": after, "said": [line for line in said if line]}


def run_fair_overhead(
    client: Any, *, app: str, proxy: str, haproxy: str, config: Path, direct: str, warm_ip: str, proxy_port: int,
    seconds: float, connections: int, work: Path, prefix: str,
) -> dict[str, Any]:  # fmt: skip
    """E': wrk on the last CPU, the app and HAProxy on the others; direct, proxied, proxied with reuse."""
    cpus = os.cpu_count() or 1
    load_cpu, others = cpus - 1, f"0-{cpus - 2}" if cpus > 2 else "0"
    reuse_port = free_port()
    folder = work / "reuse"
    folder.mkdir()
    (folder / "haproxy.cfg").write_text(reuse_config(config.read_text(), reuse_port))
    reuse = client.api.create_container(
        haproxy, name=f"{prefix}-reuse-proxy", labels={RUN_LABEL: prefix},
        command=["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"],
        host_config=client.api.create_host_config(
            network_mode="host", cpuset_cpus=others,
            binds={str(folder): {"bind": "/usr/local/etc/haproxy", "mode": "rw"}},
        ),
    )  # fmt: skip
    client.api.start(reuse["Id"])
    for container in (app, proxy):
        client.api.update_container(container, cpuset_cpus=others)
    urls = {
        "direct": f"http://{direct}/",
        "proxy": f"http://127.0.0.1:{proxy_port}/",
        "proxy_reuse": f"http://127.0.0.1:{reuse_port}/",
    }
    wait_body(urls["proxy_reuse"], "ka", timeout=10)
    runs: dict[str, list[dict[str, Any]]] = {which: [] for which in urls}
    try:
        for _ in range(max(1, round(seconds / FAIR_SLICE))):
            for which, url in urls.items():
                runs[which].append(wrk(url, FAIR_SLICE, connections, load_cpu))
        # One connection, one request at a time: the latency a request gains, with no queue in front of it.
        alone = {which: wrk(url, FAIR_SLICE, 1, load_cpu) for which, url in urls.items()}
        switch = reuse_switch(folder / REUSE_SOCKET, reuse_port, app, direct.partition(":")[0], warm_ip)
    finally:
        for container in (app, proxy):
            remove_quietly(client.api.update_container, container, cpuset_cpus=f"0-{cpus - 1}")
        remove_quietly(client.api.remove_container, reuse["Id"], force=True)
    out: dict[str, Any] = {"connections": connections, "load_cpu": load_cpu, "server_cpus": others, "switch": switch}
    for which, got in runs.items():
        out[which] = {
            "rate": statistics.mean(run["rate"] for run in got),
            "p50_ms": statistics.median(run["p50_ms"] for run in got),
            "errors": "; ".join(sorted({run["errors"] for run in got if run["errors"]})),
            "cpu_busy_pct": [statistics.mean(run["cpu_busy_pct"][cpu] for run in got) for cpu in range(cpus)],
            "alone_rate": alone[which]["rate"],
            "alone_p50_ms": alone[which]["p50_ms"],
        }
    for which in ("proxy", "proxy_reuse"):
        out[which]["share_pct"] = 100 * out[which]["rate"] / out["direct"]["rate"] if out["direct"]["rate"] else None
        out[which]["added_ms"] = out[which]["p50_ms"] - out["direct"]["p50_ms"]
        out[which]["alone_added_ms"] = out[which]["alone_p50_ms"] - out["direct"]["alone_p50_ms"]
    return out


# -- F: failover to the warm release ------------------------------------------------------------------------


def run_failover(site: Site, client: Any, load_port: int, rate: float, tags: tuple[str, str]) -> dict[str, Any]:
    """F: ``tags[0]`` then ``tags[1]`` deployed (the first stays warm), the live one killed under the load."""
    notes: list[str] = []
    for tag in tags:
        deployed = site.deploy(Release("good", tag))
        if not deployed.ok:
            raise RuntimeError(f"F: the deploy of {tag} failed: {site.log[-3:]}")
    warm, live = tags
    wait_body(f"http://127.0.0.1:{load_port}/", live)
    load = LoadProcess(load_port, rate=rate / (THREADS + KEEPALIVE_THREADS))
    time.sleep(1.0)
    killed = time.monotonic()
    client.api.kill(site.name)
    time.sleep(FAILOVER_AFTER)
    hits = load.stop()
    after = [hit for hit in hits if hit.ended > killed]
    bad = failed(after)
    stalled = [hit for hit in after if hit not in bad and hit.ended - max(hit.started, killed) >= SLOW]
    # Every request is answered again once the last one that failed or waited (for the dead release's
    # connect timeout, say: FAILOVER_SLOW is 50 times the p50 here) has ended.
    waited = [hit for hit in after if hit.ended - hit.started >= FAILOVER_SLOW]
    last = max((hit.ended for hit in [*bad, *waited]), default=killed)
    window = [hit for hit in after if hit.started < killed + 2.0 and hit not in bad]
    late = [hit for hit in hits if hit.started > killed + 1.0 and hit.body not in (warm,) and hit not in bad]
    if late:
        notes.append(f"{len(late)} requests answered by another than {warm} more than 1 s after the kill")
    return {
        "requests": len(hits),
        "after_kill": len(after),
        "failed": len(bad),
        "failed_gets": len([hit for hit in bad if hit.started >= killed]),  # the load sends GETs only
        "cut_in_flight": len([hit for hit in bad if hit.started < killed]),
        "failure_reasons": dict(collections.Counter(hit.error or str(hit.status) for hit in bad)),
        "stalled": len(stalled),
        "answered_again_s": last - killed,
        "slowest_ms": max(((hit.ended - hit.started) * 1000 for hit in window), default=None),
        "served_by_warm": len([hit for hit in after if hit.body == warm]),
        "notes": notes,
    }


# -- the report ---------------------------------------------------------------------------------------------


def verdict(value: float | None, target: float, *, at_most: bool) -> str:
    if value is None:
        return "no figure"
    met = value <= target if at_most else value >= target
    return "met" if met else "MISSED"


def both(figures: dict[str, float | None], target: float) -> str:
    """The verdicts of a p50 and a max against one upper bound."""
    return f"p50 {verdict(figures['p50'], target, at_most=True)}, max {verdict(figures['max'], target, at_most=True)}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} %"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def fine_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def report(results: dict[str, Any], plan: list[Release], rate: float, took: float) -> str:
    routed, ported = results["routed"], results["stop_first"]
    kinds = collections.Counter(release.kind for release in plan)
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, key: Callable[[dict[str, Any]], str], target: str = "") -> None:
        rows.append((label, key(routed), key(ported), target))

    def during(figures: dict[str, Any]) -> str:
        counts = figures["failed_during"]
        return " / ".join(str(counts.get(kind, 0)) for kind in ("good", "gate", "exit"))

    def durations(figures: dict[str, Any]) -> str:
        return " / ".join(f"{figures['deploy_s'].get(kind, 0.0):.2f}" for kind in ("good", "gate", "exit"))

    rate_verdicts = " / ".join(verdict(f["rate"], TARGETS["rate"], at_most=False) for f in (routed, ported))
    row("requests", lambda f: str(f["requests"]))
    row("achieved req/s", lambda f: f"{f['rate']:.1f}", f">= {TARGETS['rate']:.0f}: {rate_verdicts}")
    row(f"stalled requests (>= {SLOW:g} s, answered or not)", lambda f: str(f["stalled"]))
    row("failed requests during the deploys", lambda f: str(f["failed"]),
        f"0 (routed): {'met' if routed['failed'] == 0 else 'MISSED'}")  # fmt: skip
    row("  of them in good / gate-fail / exit deploys", during)
    row("failed per good deploy", lambda f: f"{f['failed_per_good_deploy']:.2f}",
        f"0 (routed): {'met' if routed['failed_per_good_deploy'] == 0 else 'MISSED'}")  # fmt: skip
    row("answered by a release that failed its gate", lambda f: str(f["answered_by_gate_failed"]),
        f"0 (routed): {'met' if routed['answered_by_gate_failed'] == 0 else 'MISSED'}")  # fmt: skip
    row("answered by the old release after the new", lambda f: str(f["old_after_new"]))
    row("deploy s, median good / gate-fail / exit", durations)
    widths = [max(len(r[i]) for r in [("", "routed (start-first)", "ports (stop-first)", "target"), *rows])
              for i in range(4)]  # fmt: skip
    lines = [
        f"zero-downtime bench: {len(plan)} deploys per path ({kinds['good']} good, {kinds['gate']} failing their"
        f" HTTP gate, {kinds['exit']} exiting at start), in the order {' '.join(r.tag for r in plan)}",
        f"load: {THREADS} new-connection + {KEEPALIVE_THREADS} keep-alive threads, {rate:.0f} req/s asked in all",
        "",
    ]
    for r in [("", "routed (start-first)", "ports (stop-first)", "target"), *rows]:
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip())
    lines.append("")
    switch = p50_max(routed["switch_to_first_ms"])
    lines.append(
        f"C gate passed -> first request on the new release ({len(routed['switch_to_first_ms'])} good deploys):"
        f" p50 {ms(switch['p50'])}, max {ms(switch['max'])}  (target <= {TARGETS['switch_ms']:.0f} ms:"
        f" {both(switch, TARGETS['switch_ms'])})"
    )
    rollback = results["rollback"]
    back = p50_max(rollback["rollback_to_first_ms"])
    call = p50_max(rollback["swap_back_call_ms"])
    lines.append(
        f"D rollback --local in the warm window -> previous release serving ({len(rollback['rollback_to_first_ms'])}"
        f" rounds): p50 {ms(back['p50'])}, max {ms(back['max'])}  (target <= {TARGETS['rollback_ms']:.0f} ms:"
        f" {both(back, TARGETS['rollback_ms'])}); swap_back returned after p50 {ms(call['p50'])}, max"
        f" {ms(call['max'])}; {rollback['failed']} of {rollback['requests']} requests failed meanwhile"
    )
    over = results["overhead"]
    direct, proxied = over["direct"], over["proxy"]
    lines.append(
        f"E proxy overhead (unpaced, {direct['requests']} direct / {proxied['requests']} proxied requests):"
        f" p50 direct {ms(direct['p50_ms'])}, through the proxy {ms(proxied['p50_ms'])}, added"
        f" {ms(over['added_ms'])}  (target <= {TARGETS['added_ms']:.0f} ms:"
        f" {verdict(over['added_ms'], TARGETS['added_ms'], at_most=True)})"
    )
    pct = over["throughput_pct"]
    lines.append(
        f"  throughput direct {direct['rate']:.0f} req/s, through the proxy {proxied['rate']:.0f} req/s ="
        f" {'-' if pct is None else f'{pct:.1f}'} %  (target >= {TARGETS['throughput_pct']:.0f} %:"
        f" {verdict(pct, TARGETS['throughput_pct'], at_most=False)}); failed {direct['failed']} / {proxied['failed']};"
        f" host CPU busy {percent(direct['host_cpu_busy_pct'])} / {percent(proxied['host_cpu_busy_pct'])}"
        f" of {os.cpu_count()} CPUs"
    )
    fair = results.get("fair")
    if fair is None:
        lines.append("E' fair overhead: not measured (no wrk or taskset: apt-get install -y wrk util-linux)")
    else:
        direct = fair["direct"]

        def cpus(figures: dict[str, Any]) -> str:
            return "/".join(f"{busy:.0f}" for busy in figures["cpu_busy_pct"])

        lines.append(
            f"E' fair overhead (wrk -c{fair['connections']} keep-alive on CPU {fair['load_cpu']}, app and HAProxy on"
            f" CPU {fair['server_cpus']}; a keep-alive release that forks nothing): direct {direct['rate']:.0f} req/s,"
            f" p50 {fine_ms(direct['p50_ms'])}, CPU busy % {cpus(direct)}; at one connection p50"
            f" {fine_ms(direct['alone_p50_ms'])}"
        )
        for which, label in (("proxy", "through the proxy"), ("proxy_reuse", "through the proxy, server reuse")):
            got = fair[which]
            share = "-" if got["share_pct"] is None else f"{got['share_pct']:.1f} %"
            lines.append(
                f"  {label}: {got['rate']:.0f} req/s = {share} of direct (target >= {TARGETS['throughput_pct']:.0f}"
                f" %: {verdict(got['share_pct'], TARGETS['throughput_pct'], at_most=False)}),"
                f" p50 {fine_ms(got['p50_ms'])}, added {fine_ms(got['added_ms'])}"
                f" (target <= {TARGETS['fair_added_ms']} ms:"
                f" {verdict(got['added_ms'], TARGETS['fair_added_ms'], at_most=True)}), CPU busy % {cpus(got)}"
                + (f", errors {got['errors']}" if got["errors"] else "")
            )
            lines.append(
                f"    at one connection (no queue): p50 {fine_ms(got['alone_p50_ms'])},"
                f" added {fine_ms(got['alone_added_ms'])}"
                f" (target <= {TARGETS['fair_added_ms']} ms:"
                f" {verdict(got['alone_added_ms'], TARGETS['fair_added_ms'], at_most=True)})"
            )
        switch = fair["switch"]
        lines.append(
            f"  server reuse across a switch (maint, addr, ready): before {switch['before']['bodies']},"
            f" {switch['before']['to_old']} connections to the old release; after {switch['after']['bodies']},"
            f" {switch['after']['to_old']} to the old, {switch['after']['to_new']} to the new"
        )
    fail = results["failover"]
    lines.append(
        f"F failover (live release killed, warm one present, {fail['after_kill']} requests after the kill): all"
        f" answered again {fail['answered_again_s']:.2f} s after it (target <= {TARGETS['failover_s']:.0f} s:"
        f" {verdict(fail['answered_again_s'], TARGETS['failover_s'], at_most=True)}); failed GETs started after"
        f" it {fail['failed_gets']} (target 0: {verdict(fail['failed_gets'], 0, at_most=True)}), cut in flight"
        f" {fail['cut_in_flight']}, stalled {fail['stalled']}, slowest of the next 2 s {ms(fail['slowest_ms'])},"
        f" answered by the warm release {fail['served_by_warm']}"
    )
    for name, figures in (("routed", routed), ("stop-first", ported), ("rollback", rollback), ("failover", fail)):
        if figures["failure_reasons"]:
            lines.append(f"failures ({name}): {figures['failure_reasons']}")
    # What the product did against what it says (a pass that ended otherwise, a failed request or a failed
    # release's answer on the routed path), then what the numbers need read with them.
    anomalies = [
        *(f"routed: unexpected outcome {item}" for item in routed["unexpected_outcomes"]),
        *(f"stop-first: unexpected outcome {item}" for item in ported["unexpected_outcomes"]),
        *([f"routed: {routed['failed']} failed requests"] if routed["failed"] else []),
        *([f"routed: {routed['answered_by_gate_failed']} answers from a failed release"]
          if routed["answered_by_gate_failed"] else []),
        *([f"routed: {routed['old_after_new']} answers from the old release after the new"]
          if routed["old_after_new"] else []),
        *([f"rollback: {rollback['failed']} failed requests"] if rollback["failed"] else []),
        *(f"routed: {note}" for note in routed["notes"]),
        *(f"rollback: {note}" for note in rollback["notes"]),
        *(f"failover: {note}" for note in fail["notes"]),
    ]  # fmt: skip
    lines.append("anomalies: " + ("none" if not anomalies else "\n  " + "\n  ".join(anomalies)))
    if ported["notes"]:
        lines.append("notes (stop-first): " + "; ".join(ported["notes"]))
    lines.append(f"took {took:.1f} s")
    return "\n".join(lines)


def remove_quietly(remove: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        remove(*args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploys", type=int, default=20, help="deploys per path (good, gate-fail, good, exit, ...)")
    parser.add_argument("--rollbacks", type=int, default=5, help="rounds of deploy + rollback --local + resume")
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s of the load, all threads together")
    parser.add_argument("--overhead-seconds", type=float, default=5.0, help="seconds of each unpaced load (E)")
    parser.add_argument("--connections", type=int, default=32, help="wrk's keep-alive connections (E')")
    parser.add_argument("--quick", action="store_true", help="a short trial: 4 deploys, 2 rollbacks, 2 s loads")
    parser.add_argument("--json", action="store_true", help="also print every figure as one JSON line")
    args = parser.parse_args()
    if args.quick:
        args.deploys, args.rollbacks, args.overhead_seconds = 4, 2, 2.0
    began = time.monotonic()
    plan = releases(args.deploys)
    goods = sum(release.kind == "good" for release in plan)
    client = connect()
    prefix = new_run_prefix()
    instance = f"bench-zd-{prefix}"
    images = ImageFactory(client, prefix)
    repo = images.repo("zd")
    results: dict[str, Any] = {}
    try:
        haproxy = build_haproxy_image(client, prefix)
        for tag in ["g0", *(f"g{goods + 1 + index}" for index in range(args.rollbacks))]:
            images.build("zd", tag, body=tag)
        for release in plan:
            images.build("zd", release.tag, healthy=release.kind != "gate", exit_at_start=release.kind == "exit")
        for tag in ("f1", "f2"):
            images.build("zd", tag, body=tag)
        keepalive_image(client, haproxy, repo)
        with tempfile.TemporaryDirectory(prefix="reconciler-bench-zd-") as tmp:
            work = Path(tmp)
            proxy_port, host_port = free_port(), free_port()
            haproxy_repo, _, haproxy_tag = haproxy.rpartition(":")
            header = (
                f'proxy:\n  listen: ["127.0.0.1:{proxy_port}"]\n  image: {haproxy_repo}\n  version: "{haproxy_tag}"\n'
            )
            routed = Site(f"{prefix}-routed", repo, work / "routed", instance, header, None)
            ported = Site(f"{prefix}-ported", repo, work / "ported", f"{instance}-sf", "", host_port)
            proxy_url, port_url = f"http://127.0.0.1:{proxy_port}/", f"http://127.0.0.1:{host_port}/"
            try:
                results["routed"] = run_deploys(routed, proxy_url, proxy_port, plan, args.rate)
                results["rollback"] = run_rollbacks(
                    routed, proxy_port, args.rollbacks, args.rate, results["routed"]["serving_after"], goods + 1
                )
                found = client.api.inspect_container(routed.name)
                ip = found["NetworkSettings"]["Networks"][proxy_network(instance)]["IPAddress"]
                results["overhead"] = run_overhead((ip, 8000), proxy_port, args.overhead_seconds)
                if shutil.which("wrk") and shutil.which("taskset"):
                    if not routed.deploy(Release("good", "ka")).ok:
                        raise RuntimeError(f"the keep-alive release was not deployed: {routed.log[-3:]}")
                    wait_body(proxy_url, "ka")
                    found = client.api.inspect_container(routed.name)
                    ip = found["NetworkSettings"]["Networks"][proxy_network(instance)]["IPAddress"]
                    warm = client.api.inspect_container(f"{routed.name}.prev")
                    warm_ip = warm["NetworkSettings"]["Networks"][proxy_network(instance)]["IPAddress"]
                    results["fair"] = run_fair_overhead(
                        client, app=routed.name, proxy=proxy_container(instance), haproxy=haproxy,
                        config=routed.settings.state_dir / f"proxy-{instance}" / "haproxy.cfg",
                        direct=f"{ip}:8000", warm_ip=warm_ip, proxy_port=proxy_port, seconds=3 * args.overhead_seconds,
                        connections=args.connections, work=work, prefix=prefix,
                    )  # fmt: skip
                results["failover"] = run_failover(routed, client, proxy_port, args.rate, ("f1", "f2"))
                results["stop_first"] = run_deploys(ported, port_url, host_port, plan, args.rate)
            finally:
                for load in list(LoadProcess.running):
                    load.kill()
                # The proxies first, then the apps (cleanup_run), then the networks nothing is on any more.
                for name in (instance, f"{instance}-sf"):
                    remove_quietly(client.api.remove_container, proxy_container(name), force=True)
                cleanup_run(client, prefix)
                for name in (instance, f"{instance}-sf"):
                    remove_quietly(client.api.remove_network, proxy_network(name))
    finally:
        failures = cleanup_run(client, prefix)
        if failures:
            print("cleanup: " + "; ".join(failures), file=sys.stderr)
    took = time.monotonic() - began
    print(report(results, plan, args.rate, took))
    if args.json:
        results["deploys"] = [f"{release.kind}:{release.tag}" for release in plan]
        results["took_s"] = took
        results["run_prefix"], results["instance"] = prefix, instance
        results["targets"] = TARGETS
        print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
