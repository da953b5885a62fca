"""Fault drill of ``reconcile agent`` (issue 7, "Faults and hostile input"): what survives, what is lost.

Each fault runs against a real ``reconcile agent`` (a subprocess, ``--log-format json --interval 2s``)
that follows a local bare repository (tests.support.GitRemote) and deploys a small busybox web app
(tests.support.ImageFactory: ``web:v1``, ``v2``, ``v3``, ``broken`` whose /health answers 404, ``exits``
that exits at start). While a fault is on, a thread polls the app's port every 50 ms; afterwards the
drill looks at the agent, the app, the agent's log, ``reconcile history -o json``, ``reconcile status
-o json`` and the bytes of ``journal.db``. One table row per fault (some faults have several rows):

    fault | survived | down s | lost or misreported

- survived: the agent still runs (or, where the row says so, was restarted once by the drill), the
  app serves again, and the log has no ``internal error`` / ``pass.crashed`` / Traceback;
- down s: seconds the app's port refused or answered non-200 while the fault was on;
- lost or misreported: everything the drill saw that the product should not do (rows stuck at
  ``started``, ``failed`` for what runs, reasons ending in ``': '``, a secret in a log or the
  journal, a fault not refused, ...), or ``-``.

Faults: baseline (no fault: a plain deploy, the downtime of an ordinary swap), yaml-tag,
alias-bomb, huge-file, env-file, stop-timeout, secrets, two-agents, state-dir, git-corrupt,
kill-rollback, superseded, stale-next, and the rows of issue 18: long-value and yaml-escape (the
validator), listener-idle (500 idle + 200 trickling connections on the listener) and listener-edges
(a nested, a 1 MiB and a 1 MiB + 1 hook body, HEAD /healthz), secrets-at-rest, policy-symlink,
proxy-folder-lost and proxy-killed-mid-deploy (an app routed behind the proxy, on the port the
poller asks), crashloop-fix and dies-after-live (routed, a release that dies after it went live),
env-file-once, port-swap; then engine-restart and engine-restart-live-restore (restart the
machine's dockerd, which disturbs every container on it: last, and skipped with
--skip-engine-restart).

Run: ``.venv/bin/python bench/drill.py [--only NAME ...] [--skip-engine-restart]`` as root (the
state-dir fault mounts a read-only bind, the engine restart signals dockerd), with the Docker engine
the tests use. Each fault has a deadline (90 s); everything it creates is removed at the end. It is
a measurement, not a test: it exits 0 whatever it saw, and prints a summary line.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import http.client
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import GitRemote, ImageFactory, cleanup_run, connect, free_port, run_git  # noqa: E402
from tests.support.agent import AgentProcess, LogLine  # noqa: E402
from tests.support.cli import cli_env  # noqa: E402
from tests.support.dockerd import (  # noqa: E402
    DOCKER_PID,
    dockerd_command,
    dockerd_pid,
    engine_answers,
    start_dockerd,
    stop_dockerd,
    wait_engine,
)
from tests.support.engine import new_run_prefix, remove_containers  # noqa: E402
from tests.support.githttp import GitHttp  # noqa: E402
from tests.support.hostile import probe  # noqa: E402
from tests.support.net import http_get  # noqa: E402

FILE = "desired-state.yaml"
WEBHOOK_SECRET = b"drill-webhook-secret-never-printed"
MIB = 1024 * 1024
FAULT_DEADLINE = 90.0
ENGINE_FAULT_DEADLINE = 150.0  # dockerd stopping every container and coming back takes its own while
POLL_EVERY = 0.05
MEMORY_GUARD_MB = 1024  # an agent expanding an alias bomb or reading /dev/zero is killed before the machine
BAD_WORDS = ("internal error", "pass.crashed", "Traceback")
# EventLog that say "this input or this pass went wrong": what a refused fault is expected to log.
ERROR_EVENTS = frozenset(
    {
        "desired.invalid",
        "deploy.failed",
        "deploy.held",
        "deploy.rolled-back",
        "commit.blocked",
        "app.error",
        "pass.error",
        "remote.unreachable",
        "state.error",
    }
)


class FaultTimeout(RuntimeError):
    """A fault ran past its deadline."""


@dataclass
class Row:
    fault: str
    survived: bool
    down: float
    notes: list[str]  # lost or misreported
    seen: list[str] = field(default_factory=list)  # what the product did, for the reader


# -- desired-state.yaml -----------------------------------------------------------------------------------


def app_yaml(
    app: str,
    image: str,
    version: str,
    port: int,
    *,
    timeout: str = "5s",
    healthy_for: str = "500ms",
    stop_timeout: str = "2s",
    health_url: str | None = None,
    extra: Iterable[str] = (),
    env_lines: Iterable[str] = (),
) -> str:
    """A whole desired-state.yaml with one app, gated on GET /health (``extra`` lines go under the app)."""
    lines = [
        "apps:",
        f"  {app}:",
        f"    image: {image}",
        f"    version: {version}",
        f'    ports: ["127.0.0.1:{port}:8000"]',
        "    init: true",
        f"    stop_timeout: {stop_timeout}",
        *(f"    {line}" for line in extra),
    ]
    env = list(env_lines)
    if env:
        lines += ["    env:", *(f"      {line}" for line in env)]
    lines += [
        "    health:",
        f"      http: {health_url or f'http://127.0.0.1:{port}/health'}",
        "      interval: 200ms",
        f"      timeout: {timeout}",
        f"      healthy_for: {healthy_for}",
    ]
    return "\n".join(lines) + "\n"


def alias_bomb(levels: int = 10) -> str:
    """Billion laughs: each level is 9 aliases of the one before, 9**levels strings once expanded."""
    names = "abcdefghijklmnopqrstuvwxyz"[:levels]
    lines = [f'{names[0]}: &{names[0]} ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for before, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{before}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# -- the app's port ---------------------------------------------------------------------------------------


class Poller:
    """Polls http://127.0.0.1:PORT/ every 50 ms in a thread; keeps (wall time, status, body) of each try."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.samples: list[tuple[float, int, str]] = []
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            at = time.time()
            try:
                status, body = http_get(self.url, timeout=0.5)
            except OSError:
                status, body = 0, ""
            self.samples.append((at, status, body))
            time.sleep(POLL_EVERY)

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._thread.join(timeout=5)

    def down_seconds(self) -> float:
        """Time between a failed try (refused, error, non-200) and the next try."""
        samples = list(self.samples)
        down = 0.0
        for (at, status, _), (after, _, _) in itertools.pairwise(samples):
            if status != 200:
                down += after - at
        if samples and samples[-1][1] != 200:
            down += POLL_EVERY
        return down

    def served_seconds(self, body: str, *, after: float) -> float:
        """How long ``body`` was served (200) after the wall time ``after``."""
        samples = [s for s in self.samples if s[0] >= after]
        return sum(nxt[0] - cur[0] for cur, nxt in itertools.pairwise(samples) if cur[1] == 200 and cur[2] == body)


def serves(port: int) -> tuple[int, str]:
    try:
        return http_get(f"http://127.0.0.1:{port}/", timeout=1.0)
    except OSError:
        return 0, ""


# -- the Docker engine (copied from tests/test_agent_engine_restart.py) ------------------------------------


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def one_line(text: str) -> bool:
    return len([line for line in text.splitlines() if line.strip()]) == 1


def short(text: str, limit: int = 140) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def all_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from all_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from all_strings(item)


# -- the drill --------------------------------------------------------------------------------------------


class Drill:
    """What every fault shares: the engine, the images, the instance name, the planted canary."""

    def __init__(self) -> None:
        self.client = connect()
        self.prefix = new_run_prefix()
        self.instance = f"drill-{secrets.token_hex(4)}"
        self.canary = f"canary-{secrets.token_hex(8)}"
        self.images = ImageFactory(self.client, self.prefix)
        for tag in ("v1", "v2", "v3"):
            self.images.build("web", tag)
        self.images.build("web", "broken", healthy=False)
        self.images.build("web", "exits", exit_at_start=True)
        self.web = self.images.repo("web")
        self._haproxy = ""

    def haproxy(self) -> str:
        """The HAProxy image of routed faults, built on first use."""
        if not self._haproxy:
            from tests.support.haproxy import build_haproxy_image

            self._haproxy = build_haproxy_image(self.client, self.prefix)
        return self._haproxy


class Scenario:
    """One fault's world: a bare repository, a state directory, an app, its agents, a poller."""

    def __init__(self, drill: Drill, slug: str, deadline: float = FAULT_DEADLINE) -> None:
        self.drill = drill
        self.slug = slug
        self.ends = time.monotonic() + deadline
        self.tmp = Path(tempfile.mkdtemp(prefix=f"reconciler-drill-{slug}-"))
        self.remote = GitRemote(self.tmp / "git")
        self.state = self.tmp / "state"
        self.app = f"{drill.prefix}-{slug}"
        self.port = free_port()
        self.plain_port = 0  # a second app's, without a route (the proxy faults)
        self.agents: list[AgentProcess] = []
        self.dead: list[AgentProcess] = []  # agents that were meant to die (killed by the drill or a hook)
        self.notes: list[str] = []
        self.seen: list[str] = []
        self.secrets = [drill.canary]
        self.restarted = ""
        self.dockerd_before: list[str] = []  # dockerd's command line, when the fault changed it
        self.poller: Poller | None = None
        self.mounts: list[Path] = []
        self.views: list[tuple[Path, str]] = [(self.state, "main")]  # (state dir, branch) to check
        self._guard = True
        threading.Thread(target=self._memory_guard, daemon=True).start()

    # -- time --

    def left(self, want: float) -> float:
        left = self.ends - time.monotonic()
        if left <= 0:
            raise FaultTimeout(f"past the {self.slug} deadline")
        return min(want, left)

    def sleep(self, seconds: float) -> None:
        time.sleep(self.left(seconds))

    def note(self, text: str) -> None:
        """Something lost or misreported."""
        self.notes.append(text)

    def saw(self, text: str) -> None:
        """What the product did, for the reader: not a fault of its own."""
        self.seen.append(text)

    # -- git --

    def yaml(self, version: str, **kwargs: Any) -> str:
        return app_yaml(self.app, self.drill.web, version, self.port, **kwargs)

    def push(self, text: str, message: str = "drill") -> str:
        return self.remote.commit_file(FILE, text, message)

    # -- agents --

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str | None]:
        # The canary sits in the agent's own environment: whatever leaks it leaks the environment.
        return {"RECONCILE_INSTANCE": self.drill.instance, "DRILL_CANARY": self.drill.canary, **(extra or {})}

    def start_agent(
        self,
        *,
        env: dict[str, str] | None = None,
        repo: str | None = None,
        branch: str = "main",
        state: Path | None = None,
        wait: bool = True,
        extra: Iterable[str] = (),
    ) -> AgentProcess:
        args = [
            "--repo", repo or self.remote.url, "--branch", branch, "--state-dir", str(state or self.state),
            "--interval", "2s", "--log-format", "json", *extra,
        ]  # fmt: skip
        agent = AgentProcess(args, env=self.env(env), state_dir=state or self.state)
        self.agents.append(agent)
        agent.start()
        if wait:
            agent.wait_for("agent.started", timeout=self.left(30))
        return agent

    @property
    def agent(self) -> AgentProcess:
        return self.agents[-1]

    def wait(self, event: str, *words: str, since: int = 0, timeout: float = 30.0, agent: AgentProcess | None = None
             ) -> LogLine | None:  # fmt: skip
        """The first ``event`` line (with ``words``) after ``since``, or None (noted) after the timeout."""
        who = agent or self.agent
        try:
            return who.wait_for(event, *words, since=since, timeout=self.left(timeout))
        except AssertionError:
            self.note(
                f"no {event} {' '.join(words)} within {timeout:g}s" + (" (agent died)" if not who.alive() else "")
            )
            return None

    def wait_error(self, since: int, timeout: float = 20.0, agent: AgentProcess | None = None) -> LogLine | None:
        """The first error-ish event after ``since`` (see ERROR_EVENTS), or None (noted)."""
        who = agent or self.agent
        try:
            return who.wait_until(
                lambda: next((ln for ln in who.lines[since:] if ln.event in ERROR_EVENTS), None),
                "an error event",
                self.left(timeout),
            )
        except AssertionError:
            self.note(f"nothing logged about it within {timeout:g}s" + ("" if who.alive() else " (agent died)"))
            return None

    def errors_since(self, since: int, agent: AgentProcess | None = None) -> list[LogLine]:
        return [ln for ln in (agent or self.agent).lines[since:] if ln.event in ERROR_EVENTS]

    def wait_body(self, body: str, timeout: float) -> bool:
        deadline = time.monotonic() + self.left(timeout)
        while time.monotonic() < deadline:
            if serves(self.port) == (200, body):
                return True
            time.sleep(0.05)
        return False

    def deploy_first(self, version: str = "v1", **kwargs: Any) -> AgentProcess:
        """Push ``version``, start the agent and wait until the app serves it."""
        self.push(self.yaml(version, **kwargs), version)
        agent = self.start_agent()
        if self.wait("deploy.succeeded", version, timeout=30) is None or not self.wait_body(version, 10):
            raise RuntimeError(f"setup: {version} was never deployed:\n{agent.log()[-2000:]}")
        return agent

    def deploy(self, version: str, timeout: float = 30, **kwargs: Any) -> bool:
        """Push ``version`` and wait for its ``deploy.succeeded`` and its body (noted when it does not come)."""
        mark = self.agent.mark()
        self.push(self.yaml(version, **kwargs), version)
        return self.wait("deploy.succeeded", version, since=mark, timeout=timeout) is not None and self.wait_body(
            version, 10
        )

    def poll(self) -> Poller:
        """The fault window opens: downtime counts from here."""
        self.poller = Poller(self.port)
        return self.poller

    def end_window(self) -> None:
        """The fault window closes: a good push after it (a plain deploy's own swap) is not the fault's."""
        if self.poller is not None:
            self.poller.stop()

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            env=cli_env(self.env()),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.left(timeout),
            check=False,
        )

    def containers(self) -> dict[str, str]:
        """Name -> id of every container named APP or APP.<something>."""
        found: dict[str, str] = {}
        for info in self.drill.client.api.containers(all=True, filters={"name": self.app}):
            for name in info.get("Names") or []:
                name = name.lstrip("/")
                if name == self.app or name.startswith(self.app + "."):
                    found[name] = info["Id"]
        return found

    def running_version(self) -> str | None:
        try:
            info = self.drill.client.api.inspect_container(self.app)
        except Exception:
            return None
        if not info["State"]["Running"]:
            return None
        return str((info["Config"]["Labels"] or {}).get("io.reconciler.version", ""))

    def _memory_guard(self) -> None:
        while self._guard:
            for agent in list(self.agents):
                if agent.alive() and rss_kb(agent.pid) > MEMORY_GUARD_MB * 1024:
                    self.note(f"agent pid {agent.pid} passed {MEMORY_GUARD_MB} MB RSS: SIGKILLed by the drill")
                    with contextlib.suppress(OSError):
                        os.kill(agent.pid, signal.SIGKILL)
            time.sleep(0.1)

    # -- the verdict --

    def finish(self, expected: Iterable[str], *, settle: float = 10.0) -> Row:
        """Survived? Down for how long? What was lost or misreported? (see the module docstring)"""
        bodies = tuple(expected)
        alive = all(agent.alive() for agent in self.agents if agent not in self.dead)
        if not alive:
            codes = [str(a.returncode) for a in self.agents if a not in self.dead and not a.alive()]
            self.note(f"agent exited ({', '.join(codes)})")
        deadline = time.monotonic() + max(1.0, min(20.0, self.ends - time.monotonic()))
        app_ok = False
        while time.monotonic() < deadline:
            status, body = serves(self.port)
            if status == 200 and body in bodies:
                app_ok = True
                break
            time.sleep(0.05)
        if not app_ok:
            status, body = serves(self.port)
            self.note(f"app does not serve {'/'.join(bodies)} (HTTP {status} {body[:20]!r})")
        down = 0.0
        if self.poller is not None:
            self.poller.stop()
            down = self.poller.down_seconds()

        clean = True
        texts: list[str] = []
        for agent in self.agents:
            raws = [line.raw for line in agent.lines] + agent.stdout
            texts += raws
            for raw in raws:
                if any(word in raw for word in BAD_WORDS):
                    clean = False
                    self.note(f"log: {short(raw)}")
                    break
            for line in agent.lines:
                if re.search(r"failed too:\s*$", line.message) or line.message.rstrip().endswith(": "):
                    self.note(f"log reason ends empty: {short(line.raw)}")
                    break
        for state, branch in self.views:
            texts += self._check_journal(state, branch, settle)
        for secret in self.secrets:
            where = [name for name, text in self._secret_places(texts) if secret in text]
            if where:
                self.note(f"secret {secret[:12]}... in {', '.join(where)}")
        survived = alive and app_ok and clean
        if self.restarted:
            self.saw(self.restarted)
        return Row(self.slug, survived, down, self.notes, self.seen)

    def _secret_places(self, texts: list[str]) -> Iterator[tuple[str, str]]:
        yield "log/history/status", "\n".join(texts)
        for state, _ in self.views:
            with contextlib.suppress(OSError):
                for path in sorted(state.glob("journal.db*")):
                    yield f"{path.name} bytes", path.read_bytes().decode("latin-1")

    def _check_journal(self, state: Path, branch: str, settle: float) -> list[str]:
        """History and status of one state dir: rows left at ``started``, empty reasons, ``failed`` that runs."""
        texts: list[str] = []
        rows: list[dict[str, Any]] = []
        # A deploy may still be going on: give it ``settle`` seconds to leave ``started``.
        deadline = time.monotonic() + max(0.0, min(settle, self.ends - time.monotonic() - 5))
        while True:
            result = self.cli("history", "-o", "json", "--limit", "500", "--state-dir", str(state), timeout=30)
            texts += [result.stdout, result.stderr]
            if result.returncode != 0:
                self.note(f"history exit {result.returncode}: {short(result.stderr)}")
                break
            rows = [row for row in json.loads(result.stdout) if row.get("app") == self.app]
            if not any(row.get("result") == "started" for row in rows) or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        stuck = [row for row in rows if row.get("result") == "started"]
        if stuck:
            self.note(f"history: {len(stuck)} row(s) stuck at started ({stuck[0].get('action')} "
                      f"{stuck[0].get('from_version')} -> {stuck[0].get('to_version')})")  # fmt: skip
        for row in rows:
            message = str(row.get("message") or "")
            if message.rstrip().endswith(":") or message.endswith(": "):
                self.note(f"history: empty reason {row.get('result')}: {short(message)!r}")
                break
        newest = rows[0] if rows else None
        running = self.running_version()
        if newest and newest.get("result") == "failed" and running and newest.get("to_version") == running:
            self.note(f"history: newest row says failed for {running}, which runs")
        text = self.cli("history", "--limit", "500", "--state-dir", str(state), timeout=30)
        texts += [text.stdout, text.stderr]
        status = self.cli(
            "status", "-o", "json", "--repo", self.remote.url, "--ref", branch, "--state-dir", str(state), timeout=30
        )
        texts += [status.stdout, status.stderr]
        if status.returncode != 0:
            self.note(f"status exit {status.returncode}: {short(status.stderr)}")
        else:
            with contextlib.suppress(ValueError):
                for string in all_strings(json.loads(status.stdout)):
                    if string.endswith(": "):
                        self.note(f"status: empty reason {short(string)!r}")
                        break
        return texts

    def close(self) -> None:
        """Stop agents and poller, unmount, remove the app's containers and the temp dir; never raises."""
        self._guard = False
        if self.poller is not None:
            self.poller.stop()
        for agent in self.agents:
            agent.stop(timeout=15)
        for mount in reversed(self.mounts):
            subprocess.run(["umount", str(mount)], capture_output=True, check=False)
        with contextlib.suppress(Exception):
            remove_containers(self.drill.client, sorted(self.containers()))
        # The routed faults' proxy, network and app without a route (the instance is the drill's: the next
        # routed fault, another source, would find them).
        with contextlib.suppress(Exception):
            plain = [f"{self.app}-plain{role}" for role in ("", ".prev", ".next", ".failed")]
            remove_containers(self.drill.client, [*plain, f"reconciler-proxy-{self.drill.instance}"])
        with contextlib.suppress(Exception):
            self.drill.client.api.remove_network(f"reconciler-{self.drill.instance}")
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- the faults -------------------------------------------------------------------------------------------


def fault_baseline(s: Scenario) -> Row:
    """No fault: a plain deploy, for the downtime of an ordinary swap to compare the others with."""
    s.deploy_first()
    s.poll()
    if not s.deploy("v2"):
        s.note("v2 not deployed")
    return s.finish(["v2"])


def fault_yaml_tag(s: Scenario) -> Row:
    s.deploy_first()
    s.poll()
    good = s.yaml("v1")
    for label, text in (
        ("version: !!int x", good.replace("version: v1", "version: !!int x")),
        ("apps: !!float true", "apps: !!float true\n"),
    ):
        mark = s.agent.mark()
        s.push(text, label)
        first = s.wait("desired.invalid", since=mark, timeout=15)
        s.sleep(5)  # two passes more: the same bad commit must not be logged again
        count = len(s.agent.events("desired.invalid", since=mark))
        if first is not None and count != 1:
            s.note(f"{label}: desired.invalid logged {count} times")
        if first is not None:
            s.saw(f"{label}: {short(first.message, 80)}")
    s.end_window()
    s.deploy("v2")
    return s.finish(["v2"])


def fault_alias_bomb(s: Scenario) -> Row:
    agent = s.deploy_first()
    s.poll()
    before, peak_before = rss_kb(agent.pid), rss_kb(agent.pid, "VmHWM")
    mark = agent.mark()
    bomb = alias_bomb()
    started = time.monotonic()
    s.push(bomb, "alias bomb")
    line = s.wait("desired.invalid", since=mark, timeout=30)
    took = time.monotonic() - started
    s.sleep(1)
    after, peak = rss_kb(agent.pid), rss_kb(agent.pid, "VmHWM")
    s.saw(
        f"{len(bomb)} B bomb: RSS {before / 1024:.0f} -> {after / 1024:.0f} MB, peak +{(peak - peak_before) / 1024:.0f}"
        f" MB" + (f", refused in {took:.2f}s: {short(line.message, 70)}" if line else "")
    )
    if peak - peak_before > 50 * 1024:
        s.note("memory grew by more than 50 MB")
    if line is not None and took > 5:
        s.note(f"refused only after {took:.1f}s")
    s.end_window()
    s.deploy("v2")
    return s.finish(["v2"])


def fault_huge_file(s: Scenario) -> Row:
    s.deploy_first()
    s.poll()
    comment = "# " + "x" * 97 + "\n"
    text = s.yaml("v1") + comment * (5 * 1024 * 1024 // len(comment))
    mark = s.agent.mark()
    s.remote.commit_file(FILE, text, "5 MB of comments", push=False)
    pushing = time.time()
    s.remote.push()
    pushed = time.time()
    line = s.wait("desired.invalid", since=mark, timeout=30)
    if line is not None:
        # The agent's own timestamp: it may refuse the file before `git push` has returned.
        s.saw(
            f"refused {line.at - pushing:.2f}s after the push began ({pushed - pushing:.2f}s push): "
            f"{short(line.message, 70)}"
        )
        if line.at - pushing > 5:
            s.note(f"refused only {line.at - pushing:.1f}s after the push")
    s.end_window()
    s.deploy("v2")
    return s.finish(["v2"])


def fault_env_file(s: Scenario) -> Row:
    s.deploy_first()
    s.poll()
    for path in ("/dev/zero", "/proc/self/environ"):
        mark = s.agent.mark()
        s.push(s.yaml("v2", extra=[f"env_file: {path}"]), f"env_file {path}")
        line = s.wait_error(mark, timeout=20)
        if line is not None:
            s.saw(f"{path}: {line.event}: {short(line.message, 70)}")
            if not one_line(line.message):
                s.note(f"{path}: the error has several lines")
        s.sleep(1)
        if s.running_version() != "v1" or serves(s.port) != (200, "v1"):
            s.note(f"{path}: the app does not run v1 any more ({s.running_version()})")
    s.end_window()
    s.deploy("v3")
    return s.finish(["v3"])


def fault_stop_timeout(s: Scenario) -> Row:
    s.deploy_first()
    s.poll()
    mark = s.agent.mark()
    s.push(s.yaml("v2", stop_timeout="1000000000h"), "huge stop_timeout")
    line = s.wait("desired.invalid", since=mark, timeout=15)
    if line is None:
        s.note(f"ran: {s.running_version()}")
    s.end_window()
    if not s.deploy("v3", timeout=40):
        s.note("a good push after it did not deploy (frozen?)")
    return s.finish(["v3"])


def fault_secrets(s: Scenario) -> Row:
    s.deploy_first()
    s.poll()
    token = secrets.token_hex(6)
    dup_a, dup_b = f"dupA{token}", f"dupB{token}"
    nul_head, nul_tail = f"nulhead{token}", f"nultail{token}"
    password = f"SECRETPW{token}"
    s.secrets += [dup_a, dup_b, nul_head, nul_tail, password]
    url = f"http://u:{password}@127.0.0.1:{s.port}/health"
    cases: list[tuple[str, str, str | None]] = [
        ("duplicate env key", s.yaml("v2", env_lines=[f'DRILL_DUP: "{dup_a}"', f'DRILL_DUP: "{dup_b}"']), None),
        ("NUL in env value", s.yaml("v2", env_lines=[f'DRILL_NUL: "{nul_head}\\0{nul_tail}"']), None),
        ("password in health URL, failing gate", s.yaml("broken", health_url=url, timeout="3s"), "deploy.rolled-back"),
        ("password in health URL", s.yaml("v2", health_url=url), "deploy.succeeded"),
    ]
    for label, text, wanted in cases:
        mark = s.agent.mark()
        s.push(text, label)
        if wanted is None:
            line = s.wait_error(mark, timeout=15)
            if line is not None and line.event != "desired.invalid":
                s.saw(f"{label}: {line.event}")
            if line is None:
                s.note(f"{label}: accepted?")
        else:
            s.wait(wanted, since=mark, timeout=30)
    return s.finish(["v2"])


def fault_two_agents(s: Scenario) -> Row:
    a = s.deploy_first()
    s.deploy("v2")
    mark = a.mark()
    s.push(s.yaml("broken", timeout="3s"), "broken")
    s.wait("deploy.rolled-back", since=mark, timeout=30)
    s.wait_body("v2", 10)
    before = s.containers()
    s.poll()
    # B follows another branch of the same repository, same instance, its own state directory.
    state_b = s.tmp / "state-b"
    s.views.append((state_b, "other"))
    s.remote.git("checkout", "-q", "-B", "other")
    try:
        s.remote.commit_file(FILE, "apps: {}\n", "B: nothing", push=False)
        s.remote.git("push", "-q", "origin", "HEAD:refs/heads/other")
        b = s.start_agent(branch="other", state=state_b)
        s.sleep(5)
        mark_b = b.mark()
        # Then the same app name on B's branch: another source's container, a conflict, never touched.
        s.remote.commit_file(FILE, s.yaml("v1"), "B: same app name", push=False)
        s.remote.git("push", "-q", "origin", "HEAD:refs/heads/other")
        s.sleep(5)
        b.hup()
        s.sleep(3)
        said = sorted({ln.event for ln in b.lines[mark_b:] if ln.event and ln.event != "commit.seen"})
        s.saw(f"B logged: {', '.join(said) or 'nothing'}")
    finally:
        s.remote.git("checkout", "-q", "main")
    after = s.containers()
    for name, container in before.items():
        if after.get(name) != container:
            s.note(f"{name} {'replaced' if name in after else 'removed'} while B ran")
    if s.poller is not None and s.poller.down_seconds() > 0:
        s.note("A's app went down")
    return s.finish(["v2"])


def fault_state_truncated(s: Scenario) -> Row:
    s.deploy_first()
    s.poll()
    mark = s.agent.mark()
    os.truncate(s.state / "journal.db", 0)
    if not s.deploy("v2"):
        s.note("v2 not deployed after the truncation")
    journal_lines = [ln for ln in s.agent.lines[mark:] if "journal" in ln.raw]
    if journal_lines:
        s.saw(f"{journal_lines[0].event}: {short(journal_lines[0].message, 80)}")
    else:
        s.note("no line about the journal")
    return s.finish(["v2"])


def fault_state_garbage(s: Scenario) -> Row:
    old = s.deploy_first()
    s.deploy("v2")
    s.poll()
    old.stop(timeout=15)
    s.dead.append(old)
    journal = s.state / "journal.db"
    with journal.open("r+b") as handle:
        handle.seek(4096)
        handle.write(os.urandom(16384))
    agent = s.start_agent()
    s.restarted = "(agent restarted by the drill, as the fault needs)"
    s.sleep(2)
    aside = sorted(p.name for p in s.state.iterdir() if p.name.startswith("journal.db.") and "corrupt" in p.name)
    warned = [ln for ln in agent.lines if "journal" in ln.raw and ln.event != "agent.started"]
    if aside:
        s.saw(f"moved aside: {aside[0]}")
    else:
        s.note("corrupt journal not moved aside")
    if not warned:
        s.note("no warning about the journal")
    if not s.deploy("v3"):
        s.note("v3 not deployed after the restart")
    return s.finish(["v3"])


def fault_state_removed(s: Scenario) -> Row:
    s.deploy_first()
    s.poll()
    shutil.rmtree(s.state)
    if not s.deploy("v2"):
        s.note("v2 not deployed after rm -rf of the state dir")
    if not (s.state / "journal.db").exists():
        s.note("no new journal.db")
    return s.finish(["v2"])


def fault_state_read_only(s: Scenario) -> Row:
    s.deploy_first()
    s.poll()
    # chmod does not stop root: a read-only bind mount of the state dir over itself does.
    subprocess.run(["mount", "--bind", str(s.state), str(s.state)], check=True, capture_output=True)
    s.mounts.append(s.state)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(s.state)], check=True, capture_output=True)
    result = s.cli("suspend", "--reason", "drill", "--state-dir", str(s.state))
    said = (result.stdout + result.stderr).strip()
    s.saw(f"suspend: exit {result.returncode}: {short(said, 90)}")
    if result.returncode == 0:
        s.note("suspend said it worked on a read-only state dir")
    elif not one_line(said):
        s.note("suspend: more than one line")
    if any(word in said for word in BAD_WORDS):
        s.note("suspend: internal error")
    mark = s.agent.mark()
    s.push(s.yaml("v2"), "v2 on a read-only state dir")
    s.sleep(8)
    said_agent = sorted({ln.event for ln in s.agent.lines[mark:] if ln.event})
    s.saw(f"agent on ro state: {', '.join(said_agent)}")
    subprocess.run(["umount", str(s.state)], check=False, capture_output=True)
    s.mounts.remove(s.state)
    if not s.wait("deploy.succeeded", "v2", since=mark, timeout=30):
        s.note("v2 not deployed once writable again")
    return s.finish(["v2"])


def fault_git_blob(s: Scenario) -> Row:
    agent = s.deploy_first()
    s.poll()
    # Freeze the agent so that it cannot read the new blob before it is corrupted (its watcher queues).
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        mark = agent.mark()
        s.push(s.yaml("v2") + "# this blob gets corrupted\n", "v2, corrupt blob")
        blob = run_git("--git-dir", str(s.remote.bare_path), "rev-parse", f"main:{FILE}")
        loose = s.remote.bare_path / "objects" / blob[:2] / blob[2:]
        original = loose.read_bytes() if loose.exists() else None
        if original is None:
            s.note("the blob is not loose in the bare repo: not corrupted")
        else:
            loose.chmod(0o644)
            loose.write_bytes(b"drill garbage, not zlib " + os.urandom(64))
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    line = s.wait_error(mark, timeout=15)
    s.sleep(6)  # three passes: one line, not one per pass
    lines = s.errors_since(mark)
    if line is not None:
        s.saw(f"agent: {line.event}: {short(line.message, 70)}")
        if len(lines) > 1:
            s.note(f"logged {len(lines)} times in 6s")
        if not one_line(line.message):
            s.note("agent: the line has several lines")
    if s.running_version() != "v1":
        s.note(f"runs {s.running_version()} with a corrupt file")
    for label, args in (
        ("validate", ["validate", "--repo", s.remote.url, "--ref", "main"]),
        ("--dry-run", ["--dry-run", "--repo", s.remote.url, "--ref", "main", "--state-dir", str(s.state)]),
    ):
        result = s.cli(*args)
        said = (result.stdout + result.stderr).strip()
        s.saw(f"{label}: exit {result.returncode}: {short(said, 50)}")
        if result.returncode != 1 or not one_line(said) or any(word in said for word in BAD_WORDS):
            s.note(f"{label}: exit {result.returncode}, {len(said.splitlines())} lines: {short(said, 60)}")
    s.end_window()
    if original is not None:
        loose.write_bytes(original)
    if not s.deploy("v3"):
        s.note("v3 not deployed once the blob was repaired")
    return s.finish(["v3"])


def fault_git_mirror(s: Scenario) -> Row:
    url = f"file://{s.remote.bare_path}"
    s.push(s.yaml("v1"), "v1")
    s.start_agent(repo=url)
    if s.wait("deploy.succeeded", "v1", timeout=30) is None or not s.wait_body("v1", 10):
        raise RuntimeError(f"setup: v1 was never deployed:\n{s.agent.log()[-2000:]}")
    s.poll()
    mirrors = [p.parent for p in (s.state / "mirrors").glob("*/HEAD") if (p.parent / "objects").is_dir()]
    if not mirrors:
        s.note("no mirror found in the state dir")

    def damage_objects(mirror: Path) -> None:
        (mirror / "packed-refs").write_bytes(b"")
        for path in (mirror / "objects").rglob("*"):
            if path.is_file():
                path.chmod(0o644)
                path.write_bytes(b"drill garbage " + os.urandom(32))

    def damage_repository(mirror: Path) -> None:
        damage_objects(mirror)
        (mirror / "HEAD").write_bytes(b"drill garbage\n")
        (mirror / "config").write_bytes(b"[drill garbage\n")

    # First its refs and objects (a fetch may heal that by itself), then it is no repository at all.
    for label, damage, version in (("objects", damage_objects, "v2"), ("HEAD+config", damage_repository, "v3")):
        for mirror in mirrors:
            damage(mirror)
        mark = s.agent.mark()
        if not s.deploy(version, timeout=40):
            s.note(f"{label}: {version} not deployed from the corrupt mirror")
        said = [f"{ln.event}" for ln in s.agent.lines[mark:] if ln.event not in ("commit.seen", "deploy.succeeded")]
        s.saw(f"{label} damaged: {', '.join(said) or 'deployed, nothing said'}")
    return s.finish(["v3"])


def fault_kill_rollback(s: Scenario) -> Row:
    s.push(s.yaml("v1"), "v1")
    agent = s.start_agent(env={"RECONCILE_KILL_AT": f"{s.app}:roll-back"})
    if s.wait("deploy.succeeded", "v1", timeout=30) is None or not s.wait_body("v1", 10):
        raise RuntimeError(f"setup: v1 was never deployed:\n{agent.log()[-2000:]}")
    poller = s.poll()
    # A 6 s gate: a restarted agent that gated the failed release again would serve it >= 6 s more.
    s.push(s.yaml("broken", timeout="6s"), "broken")
    try:
        code = agent.wait_exit(s.left(30))
        s.saw(f"killed at roll-back (exit {code})")
    except AssertionError:
        s.note("the agent did not die at roll-back")
    s.dead.append(agent)
    at_death = serves(s.port)
    restart = time.time()
    again = s.start_agent(wait=False)
    s.restarted = "(agent restarted once by the drill after the hook killed it)"
    if not s.wait_body("v1", 30):
        s.note("v1 not back after the restart")
    broken = poller.served_seconds("broken", after=restart)
    started = next((ln.at for ln in again.lines if ln.event == "agent.started"), restart)
    after_start = poller.served_seconds("broken", after=started)
    s.saw(
        f"broken release served {broken:.2f}s after the restart, {after_start:.2f}s after agent.started "
        f"(at the kill: {at_death[1] or at_death[0]!r})"
    )
    if after_start > 2.0:
        s.note(f"the failed release served {after_start:.1f}s more after the restart (gated again?)")
    # v1 answers before its gate ends: wait for the verdict line before reading what the agent said.
    with contextlib.suppress(AssertionError):
        again.wait_until(
            lambda: next((ln for ln in again.lines if ln.event in ("deploy.failed", "deploy.rolled-back")), None),
            "a verdict on the broken release",
            s.left(15),
        )
    gated = [ln for ln in again.lines if ln.event in ("deploy.failed", "deploy.rolled-back")]
    if gated:
        s.saw(f"after the restart: {gated[0].event} {short(gated[0].message, 60)}")
    return s.finish(["v1"])


def fault_superseded(s: Scenario) -> Row:
    # healthy_for 2s: the previous version's second gate lasts long enough to push into it.
    s.deploy_first(healthy_for="2s")
    s.deploy("v2", healthy_for="2s")
    s.poll()
    mark = s.agent.mark()
    s.push(s.yaml("exits", healthy_for="2s"), "exits")
    deadline = time.monotonic() + s.left(15)
    while f"{s.app}.failed" not in s.containers() and time.monotonic() < deadline:
        time.sleep(0.02)
    if f"{s.app}.failed" not in s.containers():
        s.note("no .failed container: the crash release was not rolled back")
    s.push(s.yaml("v3", healthy_for="2s"), "v3 while v2 is gated again")
    s.wait("deploy.succeeded", "v3", since=mark, timeout=40)
    s.sleep(1)
    result = s.cli("history", "-o", "json", "--app", s.app, "--limit", "50", "--state-dir", str(s.state))
    if result.returncode == 0:
        rows = [row for row in json.loads(result.stdout) if row.get("to_version") == "exits"]
        said = ", ".join(f"{row['result']} {short(str(row.get('message') or ''), 50)!r}" for row in rows)
        s.saw(f"exits release: {said or 'no row'}")
        if any(row.get("result") == "failed" for row in rows):
            s.note("the crash release recorded as failed")
    events = [ln.event for ln in s.agent.lines[mark:] if ln.event.startswith("deploy.")]
    s.saw(f"log: {' '.join(events)}")
    return s.finish(["v3"])


def fault_stale_next(s: Scenario) -> Row:
    s.push(s.yaml("v1"), "v1")
    s.start_agent()
    if s.wait("deploy.succeeded", "v1", timeout=30) is None or not s.wait_body("v1", 10):
        raise RuntimeError("setup: v1 was never deployed")
    s.agent.stop(timeout=15)
    s.dead.append(s.agent)
    agent = s.start_agent(env={"RECONCILE_KILL_AT": f"{s.app}:create"})
    s.poll()
    s.push(s.yaml("v3"), "v3")
    try:
        agent.wait_exit(s.left(30))
    except AssertionError:
        s.note("the agent did not die at create")
    s.dead.append(agent)
    if f"{s.app}.next" not in s.containers():
        # The hook fires before the step: killed at `create`, nothing was created. The step after it
        # (`stop-old`) comes once APP.next exists, and the restarted agent resumes the journaled deploy.
        s.saw(f"killed at create: no {s.app}.next; killed again at stop-old")
        agent = s.start_agent(env={"RECONCILE_KILL_AT": f"{s.app}:stop-old"}, wait=False)
        try:
            agent.wait_exit(s.left(30))
        except AssertionError:
            s.note("the agent did not die at stop-old")
        s.dead.append(agent)
    if f"{s.app}.next" not in s.containers():
        s.note(f"no {s.app}.next left by the kill: the drill could not stage it")
    else:
        s.saw(f"{s.app}.next left behind")
    s.start_agent(wait=False)
    s.restarted = "(agent restarted once by the drill after the hook killed it)"
    if s.wait("deploy.succeeded", "v3", timeout=30) is None:
        s.note("v3 not deployed after the restart")
    result = s.cli("history", "-o", "json", "--app", s.app, "--limit", "50", "--state-dir", str(s.state))
    if result.returncode == 0:
        rows = json.loads(result.stdout)
        s.saw("history: " + ", ".join(f"{r['action']} {r['from_version'] or '-'}->{r['to_version'] or '-'} "
                                      f"{r['result']}" for r in reversed(rows)))  # fmt: skip
        removes = [row for row in rows if row.get("action") == "remove"]
        for row in removes:
            s.note(f"history: {row['action']} {row['from_version']} -> {row['to_version'] or '-'} ({row['result']})")
    text = s.cli("history", "--app", s.app, "--state-dir", str(s.state)).stdout
    if re.search(rf"{re.escape(s.app)}\s+remove", text):
        s.note("history text reads like the app was removed")
    return s.finish(["v3"])


def fault_long_value(s: Scenario) -> Row:
    """Issue 18, item 7: a commit with a 150 KB env value and a 100,000-character health URL (the agent
    froze ~60 s on one; validate took 13.5 s and printed a 100,000-character line). Refused in seconds,
    in one short line, the app untouched."""
    s.deploy_first()
    s.poll()
    value = "v" * 150_000
    text = s.yaml("v1", env_lines=[f"BIG: {value}"], health_url=f"http://127.0.0.1:{s.port}/" + "h" * 100_000)
    mark = s.agent.mark()
    pushing = time.time()
    s.push(text, "150 KB env value, 100,000-character URL")
    line = s.wait("desired.invalid", since=mark, timeout=30)
    if line is not None:
        s.saw(
            f"{len(text)} B file refused {line.at - pushing:.2f}s after the push, a {len(line.raw)}-character log line"
        )
        if line.at - pushing > 5:
            s.note(f"refused only {line.at - pushing:.1f}s after the push")
        if len(line.raw) > 2000:
            s.note(f"a log line of {len(line.raw)} characters")
        if value[:100] in line.raw:
            s.note("the env value is in the log")
    s.end_window()
    s.deploy("v2")
    return s.finish(["v2"])


def fault_yaml_escape(s: Scenario) -> Row:
    """Issue 18, item 9: ``version: "\\UFFFFFFFF"`` (OverflowError) and a second ``%YAML 9.9`` directive
    (KeyError) were internal errors; each must be one located ``desired.invalid``."""
    s.deploy_first()
    s.poll()
    good = s.yaml("v1")
    for label, text in (
        ("\\UFFFFFFFF", good.replace("version: v1", 'version: "\\UFFFFFFFF"')),
        ("second %YAML 9.9", "%YAML 1.1\n---\n" + good + "...\n%YAML 9.9\n---\napps: {}\n"),
    ):
        mark = s.agent.mark()
        s.push(text, label)
        line = s.wait("desired.invalid", since=mark, timeout=15)
        if line is not None:
            s.saw(f"{label}: {short(line.message, 90)}")
            if not re.search(r"desired-state\.yaml:\d+:\d+: ", line.message):
                s.note(f"{label}: no FILE:LINE:COL in {short(line.message, 60)!r}")
    s.end_window()
    s.deploy("v2")
    return s.finish(["v2"])


def fault_policy_symlink(s: Scenario) -> Row:
    """Issue 18, item 5: under ``--policy``, commit 1 runs the app with a rw bind of an allowed folder and a
    command that links a folder outside to it; commit 2 binds through the link and publishes it; commit 3
    names an env_file that links out. Both are refused (said once), the app keeps v1, the planted file is
    never served; a link that stays inside the allowed folder still deploys (v3)."""
    allowed, outside = s.tmp / "allowed", s.tmp / "outside"
    (allowed / "data").mkdir(parents=True)
    (allowed / "pages").mkdir()
    (allowed / "pages" / "index.html").write_text("inside")
    (allowed / "link").symlink_to(allowed / "pages")
    outside.mkdir()
    planted = f"planted-{secrets.token_hex(8)}"
    s.secrets.append(planted)
    (outside / "shadow").write_text(planted)
    (outside / "secret.env").write_text(f"TOKEN={planted}\n")
    (allowed / "app.env").symlink_to(outside / "secret.env")
    policy = s.tmp / "policy.yaml"
    policy.write_text(f'volumes: ["{allowed}/"]\nenv_files: ["{allowed}/"]\n')
    link = f"ln -sfn {outside} /www/data/esc && exec httpd -f -p 8000 -h /www"
    maker = [f'command: ["sh", "-c", "{link}"]']
    data = f"{allowed}/data:/www/data"
    s.push(s.yaml("v1", extra=[*maker, f'volumes: ["{data}"]']), "v1: a rw bind of the allowed folder")
    s.start_agent(env={"RECONCILE_POLICY": str(policy)})
    if s.wait("deploy.succeeded", "v1", timeout=30) is None or not s.wait_body("v1", 10):
        raise RuntimeError(f"setup: v1 was never deployed:\n{s.agent.log()[-2000:]}")
    if not (allowed / "data" / "esc").is_symlink():
        raise RuntimeError("setup: the app did not make its link")
    s.poll()
    leak = f"{allowed}/data/esc:/www/leak:ro"
    for what, extra in (
        ("bind through the link", [*maker, f'volumes: ["{data}", "{leak}"]']),
        ("env_file linked out", [*maker, f'volumes: ["{data}"]', f"env_file: {allowed}/app.env"]),
    ):
        mark = s.agent.mark()
        s.push(s.yaml("v2", extra=extra), what)
        line = s.wait_error(mark, timeout=20)
        if line is not None:
            s.saw(f"{what}: {line.event}")
            if "symlink" not in line.message or str(outside) not in line.message:
                s.note(f"{what}: the refusal does not say where the link leads: {short(line.message, 80)}")
        s.sleep(2)
        if s.running_version() != "v1":
            s.note(f"{what}: the app does not run v1 any more ({s.running_version()})")
        with contextlib.suppress(OSError):
            status, body = http_get(f"http://127.0.0.1:{s.port}/leak/shadow", timeout=1.0)
            if planted in body:
                s.note(f"{what}: the host's planted file is served (HTTP {status})")
        env = s.drill.client.api.inspect_container(s.app)["Config"]["Env"] or []
        if any(planted in item for item in env):
            s.note(f"{what}: the env_file out of the allowed folder was loaded")
    s.end_window()
    if not s.deploy("v3", extra=[*maker, f'volumes: ["{data}", "{allowed}/link:/www/inside:ro"]']):
        s.note("a link that stays inside the allowed folder was not deployed")
    elif http_get(f"http://127.0.0.1:{s.port}/inside/index.html", timeout=1.0) != (200, "inside"):
        s.note("a link that stays inside the allowed folder does not serve its folder")
    return s.finish(["v3"])


# -- the proxy of routed apps (issue 18, items 3 and 4) ----------------------------------------------------


def routed_yaml(s: Scenario, version: str, *, healthy_for: str = "500ms", plain: str | None = None) -> str:
    """The app routed behind the proxy, which listens on the scenario's port (what the poller asks); with
    ``plain``, a second app without a route, on its own port (``s.plain_port``), at that version."""
    repo, _, tag = s.drill.haproxy().rpartition(":")
    lines = [
        "proxy:",
        f'  listen: ["127.0.0.1:{s.port}"]',
        f"  image: {repo}",
        f'  version: "{tag}"',
        "apps:",
        f"  {s.app}:",
        f"    image: {s.drill.web}",
        f"    version: {version}",
        "    init: true",
        "    stop_timeout: 2s",
        "    route: {port: 8000, drain: 300ms}",
        "    health: {http: /health, interval: 200ms, timeout: 5s, healthy_for: " + healthy_for + "}",
    ]
    text = "\n".join(lines) + "\n"
    if plain is not None:
        text += app_yaml(f"{s.app}-plain", s.drill.web, plain, s.plain_port).split("apps:\n", 1)[1]
    return text


def routed_first(s: Scenario, **kwargs: Any) -> AgentProcess:
    s.push(routed_yaml(s, "v1", **kwargs), "v1")
    agent = s.start_agent()
    if s.wait("deploy.succeeded", s.app, "v1", timeout=40) is None or not s.wait_body("v1", 15):
        raise RuntimeError(f"setup: v1 was never deployed behind the proxy:\n{agent.log()[-2000:]}")
    return agent


def proxy_container(s: Scenario) -> str:
    return f"reconciler-proxy-{s.drill.instance}"


def say_verdicts(s: Scenario, mark: int, what: str) -> None:
    """Note every verdict on a release, and every pass.error, after ``mark``: the fault was the proxy's."""
    for event in ("deploy.failed", "deploy.rolled-back", "deploy.held", "pass.error"):
        for line in s.agent.events(event, since=mark):
            s.note(f"{what}: {event} {short(line.message, 90)}")


def fault_proxy_folder_lost(s: Scenario) -> Row:
    """``rm -rf STATE/proxy-INSTANCE``, then ``rm -rf STATE``, under a running agent; then a listen port taken
    while the proxy is gone: the app without a route must deploy anyway."""
    s.plain_port = free_port()
    routed_first(s, plain="v1")
    s.poll()
    for label, target, version in (
        ("folder", s.state / f"proxy-{s.drill.instance}", "v2"),
        ("state", s.state, "v3"),
    ):
        mark = s.agent.mark()
        shutil.rmtree(target, ignore_errors=True)
        back = s.wait("proxy.changed", "recreated the proxy", since=mark, timeout=30)
        if back is not None:
            s.saw(f"rm -rf {label}: {short(back.message, 70)}")
        if not s.wait_body("v1" if version == "v2" else "v2", 15):
            s.note(f"rm -rf {label}: the route does not serve again")
        s.push(routed_yaml(s, version, plain=version), version)
        if s.wait("deploy.succeeded", s.app + ":", version, since=mark, timeout=40) is None:
            s.note(f"rm -rf {label}: {version} not deployed behind the proxy")
        say_verdicts(s, mark, f"rm -rf {label}")
    s.end_window()
    # The proxy cannot run (removed, its port held by another process): the app without a route deploys.
    mark = s.agent.mark()
    with socket.socket() as holder:
        s.drill.client.api.remove_container(proxy_container(s), force=True)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", s.port))
        holder.listen()
        s.push(routed_yaml(s, "v1", plain="v1"), "both back to v1")
        if s.wait("deploy.succeeded", f"{s.app}-plain", "v1", since=mark, timeout=40) is None:
            s.note("the app without a route waited on the proxy")
        s.sleep(4)  # passes more: the same fault is said once
        failed = s.agent.events("proxy.failed", since=mark)
        if len(failed) != 1:
            s.note(f"proxy.failed said {len(failed)} times for one taken port")
        elif "taken by process" not in failed[0].message:
            s.note(f"the holder is not named: {short(failed[0].message, 90)}")
        else:
            s.saw(f"port held: {short(failed[0].message, 70)}")
    if s.wait("deploy.succeeded", s.app + ":", "v1", since=mark, timeout=40) is None:
        s.note("the routed app did not deploy once the port was free")
    say_verdicts(s, mark, "port held")
    return s.finish(["v1"])


def fault_proxy_killed_mid_deploy(s: Scenario) -> Row:
    """``docker kill`` (then ``docker rm -f``) of the proxy during a routed deploy's gate; then ``docker rm -f``
    of the serving container: no failed release, the deploy completes once the proxy is back."""
    routed_first(s, healthy_for="2s")
    s.poll()
    for label, version in (("kill", "v2"), ("rm -f", "v3")):
        mark = s.agent.mark()
        s.push(routed_yaml(s, version, healthy_for="2s"), version)
        deadline = time.monotonic() + s.left(30)
        while f"{s.app}.next" not in s.containers() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.6)
        if label == "kill":
            s.drill.client.api.kill(proxy_container(s))
        else:
            s.drill.client.api.remove_container(proxy_container(s), force=True)
        started = time.monotonic()
        if s.wait("deploy.succeeded", version, since=mark, timeout=40) is None or not s.wait_body(version, 10):
            s.note(f"{label} of the proxy: {version} not deployed")
        else:
            s.saw(f"{label} of the proxy: {version} served {time.monotonic() - started:.1f}s later")
        say_verdicts(s, mark, f"{label} of the proxy")
    mark = s.agent.mark()
    s.drill.client.api.remove_container(s.app, force=True)
    if not s.wait_body("v3", 30):
        s.note("rm -f of the serving container: not served again")
    s.sleep(2)
    say_verdicts(s, mark, "rm -f of the serving container")
    return s.finish(["v3"])


DIES_AFTER = 8.0  # seconds a dying release serves before it exits 3 (the release)


def dying_yaml(s: Scenario, version: str, *, keep_warm: str, stable_after: str) -> str:
    """desired-state.yaml with a proxy listening on the scenario's port and the app routed behind it."""
    repo, _, tag = s.drill.haproxy().rpartition(":")
    lines = [
        "proxy:", f'  listen: ["127.0.0.1:{s.port}"]', f"  image: {repo}", f'  version: "{tag}"',
        "apps:", f"  {s.app}:", f"    image: {s.drill.web}", f"    version: {version}", "    init: true",
        "    stop_timeout: 2s", "    route:", "      port: 8000", "      drain: 300ms", f"      keep_warm: {keep_warm}",
        "    health:", "      http: /health", "      interval: 200ms", "      timeout: 5s", "      healthy_for: 500ms",
        f"    stable_after: {stable_after}",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def routed_world(s: Scenario) -> Iterator[None]:
    """The scenario's proxy (this instance's) and its network are removed when the fault ends."""
    s.drill.images.build("web", "dies", body="dies", dies_after=DIES_AFTER)
    try:
        yield
    finally:
        for agent in s.agents:
            agent.stop(timeout=15)  # first: an agent would bring the proxy back
        client = s.drill.client
        with contextlib.suppress(Exception):
            remove_containers(client, [f"reconciler-proxy-{s.drill.instance}", *sorted(s.containers())])
        with contextlib.suppress(Exception):
            client.api.remove_network(f"reconciler-{s.drill.instance}")


def restart_count(s: Scenario, name: str) -> int:
    try:
        return int(s.drill.client.api.inspect_container(name).get("RestartCount") or 0)
    except Exception:
        return -1


def container_id(s: Scenario, name: str) -> str:
    try:
        info = s.drill.client.api.inspect_container(name)
    except Exception:
        return ""
    return str(info["Id"]) if info["State"]["Running"] else ""


def failed_polls(s: Scenario) -> str:
    samples = list(s.poller.samples) if s.poller is not None else []
    bad = sum(1 for _, status, _ in samples if status != 200)
    window = samples[-1][0] - samples[0][0] if samples else 0.0
    return f"{bad} of {len(samples)} GETs failed in {window:.0f}s"


def fault_crashloop_fix(s: Scenario) -> Row:
    """Issue 18 item 1: a release that Docker restarts for ever (it serves 8 s, then exits 3), and a fix commit
    after it, with keep_warm 10m: the fix must deploy and the warm release must stay until it serves."""
    with routed_world(s):
        # stable_after 1s: its window is over before it first dies, so the agent does not take it back
        # (``dies-after-live``): the fix commit must replace it.
        def yaml(version: str) -> str:
            return dying_yaml(s, version, keep_warm="10m", stable_after="1s")

        s.push(yaml("v1"), "v1")
        s.start_agent()
        if s.wait("deploy.succeeded", "v1", timeout=40) is None or not s.wait_body("v1", 10):
            raise RuntimeError(f"setup: v1 was never deployed:\n{s.agent.log()[-2000:]}")
        mark = s.agent.mark()
        s.push(yaml("dies"), "dies")
        s.wait("deploy.succeeded", "dies", since=mark, timeout=30)
        deadline = time.monotonic() + s.left(40)
        while restart_count(s, s.app) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        s.saw(f"dies restarted {restart_count(s, s.app)}x before the fix")
        warm = container_id(s, f"{s.app}.prev")
        if not warm:
            s.note("setup: no warm .prev before the fix")
        s.poll()
        mark = s.agent.mark()
        s.push(yaml("v2"), "v2 fixes it")
        if s.wait("deploy.succeeded", "v2", since=mark, timeout=40) is not None and s.wait_body("v2", 10):
            s.saw("the fix deployed and serves")
        if warm and container_id(s, f"{s.app}.prev") != warm:
            s.note("the warm v1 is gone from .prev (removed or replaced)")
        for line in s.errors_since(mark):
            s.note(f"{line.event}: {short(line.message)}")
        s.sleep(2)
        s.saw(failed_polls(s))
        return s.finish(["v2"])


def fault_dies_after_live(s: Scenario, keep_warm: str = "0s") -> Row:
    """Issue 18 item 2: a release that passes its gate, then exits 3 after 8 s (Docker restarts it): inside its
    stable_after window it is a failed release: rolled back, kept as .failed, held, said once."""
    with routed_world(s):
        s.push(dying_yaml(s, "v1", keep_warm=keep_warm, stable_after="10m"), "v1")
        s.start_agent()
        if s.wait("deploy.succeeded", "v1", timeout=40) is None or not s.wait_body("v1", 10):
            raise RuntimeError(f"setup: v1 was never deployed:\n{s.agent.log()[-2000:]}")
        s.poll()
        mark = s.agent.mark()
        s.push(dying_yaml(s, "dies", keep_warm=keep_warm, stable_after="10m"), "dies")
        s.wait("deploy.succeeded", "dies", since=mark, timeout=30)
        line = s.wait("deploy.rolled-back", since=mark, timeout=40)
        if line is not None:
            s.saw(f"rolled back: {short(line.message, 110)}")
        if not s.wait_body("v1", 10):
            s.note("v1 does not serve after the rollback")
        held = s.wait("deploy.held", since=mark, timeout=20)
        s.sleep(10)  # passes go by: nothing is said again, the failed release is not tried again
        said = [ln.event for ln in s.errors_since(mark)]
        if said.count("deploy.rolled-back") != 1 or "deploy.failed" in said:
            s.note(f"said: {said}")
        if held is not None and said.count("deploy.held") != 1:
            s.note(f"deploy.held said {said.count('deploy.held')}x")
        tries = len(s.agent.events("deploy.succeeded", "dies", since=mark))
        if tries != 1:
            s.note(f"dies deployed {tries}x")
        if container_id(s, f"{s.app}.failed") or f"{s.app}.failed" not in s.containers():
            s.note(".failed is not the stopped dying release")
        s.saw(failed_polls(s))
        return s.finish(["v1"])


def fault_env_file_once(s: Scenario) -> Row:
    """An env_file the server cannot read, left for several passes: one deploy.failed per commit, not one
    per pass (each pass still tries, so fixing the file on the server is enough)."""
    s.deploy_first()
    s.poll()
    mark = s.agent.mark()
    s.push(s.yaml("v2", extra=["env_file: /dev/zero"]), "env_file /dev/zero")
    s.wait_error(mark, timeout=20)
    s.sleep(8)  # four passes at a 2 s interval
    said = [ln.event for ln in s.errors_since(mark)]
    s.saw(f"{len(said)} error line(s) in 8 s: {', '.join(said)}")
    if said.count("deploy.failed") != 1:
        s.note(f"deploy.failed said {said.count('deploy.failed')}x for one commit")
    s.end_window()
    s.deploy("v3")
    return s.finish(["v3"])


def fault_port_swap(s: Scenario) -> Row:
    """Two apps that swap host ports in one commit (one of them slow to stop: no init, so its stop takes its
    stop_timeout), deployed in parallel: both must deploy."""
    other_port = free_port()
    first, second = s.app, f"{s.app}-b"

    def yaml(ports: tuple[int, int], versions: tuple[str, str]) -> str:
        a = app_yaml(first, s.drill.web, versions[0], ports[0])
        b = app_yaml(second, s.drill.web, versions[1], ports[1]).replace("    init: true\n", "    init: false\n")
        return a + b.removeprefix("apps:\n")

    try:
        s.push(yaml((s.port, other_port), ("v1", "v1")), "v1")
        s.start_agent()
        setup = [s.wait("deploy.succeeded", f"{app}: ", timeout=40) for app in (first, second)]
        if None in setup:
            raise RuntimeError(f"setup: v1 was never deployed:\n{s.agent.log()[-2000:]}")
        mark = s.agent.mark()
        s.push(yaml((other_port, s.port), ("v2", "v3")), "swap ports")
        for app, version in ((first, "v2"), (second, "v3")):
            s.wait("deploy.succeeded", f"{app}: ", version, since=mark, timeout=40)
        ok = s.wait_body("v3", 10) and serves(other_port) == (200, "v2")
        s.saw("both deployed on the swapped ports" if ok else "not both serve on the swapped ports")
        for line in s.errors_since(mark):
            s.note(f"{line.event}: {short(line.message)}")
        return s.finish(["v3"])
    finally:
        for agent in s.agents:
            agent.stop(timeout=15)
        with contextlib.suppress(Exception):
            names = [second + suffix for suffix in ("", ".prev", ".next", ".failed", ".swap")]
            remove_containers(s.drill.client, names)


def fault_engine_restart(s: Scenario) -> Row:
    command = dockerd_command(dockerd_pid())
    s.deploy_first()
    s.poll()
    mark = s.agent.mark()
    s.push(s.yaml("v2"), "v2")
    if s.wait("commit.seen", since=mark, timeout=15) is not None:
        time.sleep(0.2)
    pid = dockerd_pid()
    if pid is None:
        raise RuntimeError(f"no running dockerd in {DOCKER_PID}")
    try:
        stop_dockerd(pid)
    finally:
        if dockerd_pid() is None:
            start_dockerd(command)
    wait_engine()
    back = time.monotonic()
    if s.wait_body("v2", 60):
        s.saw(f"v2 answered {time.monotonic() - back:.1f}s after the engine answered")
    else:
        s.note(f"v2 not answering 60s after the engine answered (serves {serves(s.port)})")
    for event in ("deploy.failed", "deploy.rolled-back", "pass.error"):
        found = s.agent.events(event, since=mark)
        if found:
            s.note(f"{event}: {short(found[0].message, 60)}")
    unreachable = len(s.agent.events("engine.unreachable", since=mark))
    if unreachable != 1:
        s.note(f"engine.unreachable logged {unreachable} times")
    return s.finish(["v2"], settle=20)


def fault_engine_restart_live_restore(s: Scenario) -> Row:
    """The engine restart again, with dockerd's ``--live-restore`` on (the README's server set-up):
    the containers keep running while dockerd is away. dockerd is restarted with the flag first, and
    put back as it was afterwards (``run_one``)."""
    command = dockerd_command(dockerd_pid())
    if "--live-restore" not in command:
        s.dockerd_before = command
        restart_dockerd([*command, "--live-restore"])
        s.saw("dockerd restarted with --live-restore before the fault")
    return fault_engine_restart(s)


def listening_agent(s: Scenario) -> int:
    """Deploy v1 with an agent that listens (``--listen``, a webhook secret) and polls only every 60 s,
    so that what deploys a commit quickly is its hook; the listener's port."""
    listen = free_port()
    secret = s.tmp / "webhook.secret"
    secret.write_bytes(WEBHOOK_SECRET + b"\n")
    s.secrets.append(WEBHOOK_SECRET.decode())
    s.push(s.yaml("v1"), "v1")
    s.start_agent(extra=["--interval", "60s", "--listen", f"127.0.0.1:{listen}", "--webhook-secret-file", str(secret)])
    if s.wait("deploy.succeeded", "v1", timeout=30) is None or not s.wait_body("v1", 10):
        raise RuntimeError(f"setup: v1 was never deployed:\n{s.agent.log()[-2000:]}")
    return listen


def signed_hook(listen: int, body: bytes, *, method: str = "POST", path: str = "/hooks/github") -> tuple[int, bytes]:
    digest = hmac.new(WEBHOOK_SECRET, body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, str(exc).encode()
    finally:
        conn.close()


def fault_listener_idle(s: Scenario) -> Row:
    """Issue 18 item 8: 500 connections that send nothing and 200 that trickle a byte a second, held
    (reopened when closed) from the probes' own address; /healthz probed, then a commit and its hook."""
    from bench.listener_load import HostileProcess

    listen = listening_agent(s)
    s.poll()
    with HostileProcess(listen, idle=500, slow=200, seconds=80) as hostile:
        times = []
        for _ in range(12):
            status, took = probe("127.0.0.1", listen, timeout=10)
            times.append(took if status == 200 else 10.0)
            time.sleep(max(0.0, 0.5 - took))
        answered = sum(1 for took in times if took < 10.0)
        p95 = sorted(times)[round(0.95 * len(times)) - 1]
        s.saw(f"/healthz {answered} of {len(times)} answered under {hostile.opened} connections, p95 {p95:.3f}s")
        if answered < len(times) or p95 > 1.0:
            s.note(f"/healthz answered {answered} of {len(times)}, p95 {p95:.2f}s (target <= 1 s)")
        mark = s.agent.mark()
        s.push(s.yaml("v2"), "v2")
        sent = time.time()
        status, _ = signed_hook(listen, b'{"ref": "refs/heads/main"}')
        done = s.wait("deploy.succeeded", "v2", since=mark, timeout=30)
        if status != 202:
            s.note(f"the hook answered {status}")
        if done is not None:
            s.saw(f"hook -> deploy.succeeded {done.at - sent:.2f}s")
            if done.at - sent > 3.0:
                s.note(f"hook -> deploy {done.at - sent:.1f}s (target <= 3 s)")
    return s.finish(["v2"])


def fault_listener_edges(s: Scenario) -> Row:
    """Issue 18 item 10: a signed body of 100,000 nested ``[``, a body of exactly 1 MiB and one byte more,
    ``HEAD /healthz``."""
    listen = listening_agent(s)
    s.poll()
    mark = s.agent.mark()
    status, answer = signed_hook(listen, b"[" * 100_000)
    s.saw(f"nested: {status} {answer.decode(errors='replace').strip()[:80]}")
    if status != 400:
        s.note(f"a signed body of 100,000 nested [ answered {status}")
    time.sleep(0.5)
    refused = s.agent.events("webhook.refused", since=mark)
    if len(refused) != 1:
        s.note(f"webhook.refused logged {len(refused)} times for it")
    start = b'{"ref": "refs/heads/other", "pad": "'
    for size, want in ((MIB, 202), (MIB + 1, 413)):
        status, _ = signed_hook(listen, start + b"x" * (size - len(start) - 2) + b'"}')
        s.saw(f"a body of {size} bytes: {status}")
        if status != want:
            s.note(f"a body of {size} bytes answered {status}, not {want}")
    status, answer = signed_hook(listen, b"", method="HEAD", path="/healthz")
    s.saw(f"HEAD /healthz: {status}, {len(answer)} bytes of body")
    if (status, answer) != (200, b""):
        s.note(f"HEAD /healthz answered {status} with {len(answer)} bytes")
    return s.finish(["v1"])


def fault_secrets_at_rest(s: Scenario) -> Row:
    """Secrets planted in the agent's command line (the repository URL's password over HTTP with basic auth,
    a Slack token, a ``json://`` password): none in any file under the state directory (its lock owner, its
    mirror and the copy moved aside when the mirror broke) nor in any output (the agent's log, a second
    ``reconcile`` refused by the lock, a wrong password); the directory 0700, nothing in it open to others."""
    token = secrets.token_hex(6)
    password, slack_c, hook_password = f"repoPW{token}", f"xoxbSLACK{token}", f"hookPW{token}"
    slack = f"slack://T0DRILL{token}/B0DRILL{token}/{slack_c}"
    hook = f"json://bob:{hook_password}@127.0.0.1:{free_port()}/hook"
    s.secrets += [password, slack_c, f"T0DRILL{token}", hook_password]
    server = GitHttp(s.remote.bare_path.parent, "alice", password)
    try:
        url = server.url("remote.git")
        s.push(s.yaml("v1"), "v1")
        args = ["--repo", url, "--branch", "main", "--state-dir", str(s.state), "--interval", "2s",
                "--log-format", "json", "--notify", slack, "--notify", hook]  # fmt: skip
        agent = AgentProcess(args, env=s.env(), state_dir=s.state)
        s.agents.append(agent)
        agent.start()
        agent.wait_for("agent.started", timeout=s.left(30))
        if s.wait("deploy.succeeded", "v1", timeout=30) is None or not s.wait_body("v1", 10):
            raise RuntimeError(f"setup: v1 was never deployed:\n{agent.log()[-2000:]}")
        s.poll()
        outputs: list[str] = []

        # The mirror breaks: it is moved aside (with its config) and cloned again.
        for head in (s.state / "mirrors").glob("*.git/HEAD"):
            head.unlink()
        mark = agent.mark()
        s.deploy("v2")
        if not agent.events("mirror.reset", since=mark):
            s.note("the broken mirror was not moved aside")

        # A second reconcile while the agent holds the lock (its gate of v3 lasts 4 s).
        mark = agent.mark()
        s.push(s.yaml("v3", healthy_for="4s", timeout="15s"), "v3")
        agent.hup()
        refused = None
        while refused is None and time.monotonic() < s.ends - 30 and not agent.events("deploy.succeeded", since=mark):
            result = s.cli("--repo", url, "--state-dir", str(s.state), "--lock-timeout", "0")
            outputs += [result.stdout, result.stderr]
            if "is locked by" in result.stderr:
                refused = result
        if refused is None:
            s.note("no reconcile was refused by the lock")
        else:
            s.saw(f"refused: {short(refused.stderr.split(' is locked by ')[1], 110)}")
        s.wait("deploy.succeeded", "v3", since=mark, timeout=30)

        wrong = s.cli("--repo", server.url("remote.git", password="not-the-password"), "--state-dir",
                      str(s.tmp / "other-state"), "--dry-run")  # fmt: skip
        outputs += [wrong.stdout, wrong.stderr]
        if wrong.returncode != 1 or "refused the credentials" not in wrong.stderr or not one_line(wrong.stderr):
            s.note(f"wrong password: exit {wrong.returncode}, {short(wrong.stderr, 100)}")
        else:
            s.saw(f"wrong password: {short(wrong.stderr, 90)}")
        s.end_window()

        held = [f"{path.relative_to(s.state)}" for path in sorted(s.state.rglob("*"))
                if path.is_file() and any(x.encode() in path.read_bytes() for x in s.secrets)]  # fmt: skip
        if held:
            s.note(f"secrets in {', '.join(held)}")
        said = "\n".join(outputs)
        for secret in s.secrets:
            if secret in said:
                s.note(f"secret {secret[:12]}... in a command's output")
        loose = [f"{path.relative_to(s.tmp)} {path.stat().st_mode & 0o777:o}"
                 for path in [s.state, *s.state.rglob("*")] if path.stat().st_mode & 0o077]  # fmt: skip
        if loose:
            s.note(f"open to others: {', '.join(loose[:3])}" + (f" (+{len(loose) - 3})" if len(loose) > 3 else ""))
        files = sum(1 for path in s.state.rglob("*") if path.is_file())
        s.saw(f"{files} files under the state dir grepped for {len(s.secrets)} secrets")
        s.saw("down s: the stop-first swaps of v2 and v3, as baseline's")
        return s.finish(["v3"])
    finally:
        server.stop()


def restart_dockerd(command: list[str]) -> None:
    pid = dockerd_pid()
    if pid is not None:
        stop_dockerd(pid)
    start_dockerd(command)
    wait_engine()


FAULTS: dict[str, list[tuple[str, Callable[[Scenario], Row]]]] = {
    "baseline": [("baseline", fault_baseline)],
    "yaml-tag": [("yaml-tag", fault_yaml_tag)],
    "alias-bomb": [("alias-bomb", fault_alias_bomb)],
    "huge-file": [("huge-file", fault_huge_file)],
    "env-file": [("env-file", fault_env_file)],
    "stop-timeout": [("stop-timeout", fault_stop_timeout)],
    "secrets": [("secrets", fault_secrets)],
    "two-agents": [("two-agents", fault_two_agents)],
    "state-dir": [
        ("state-truncated", fault_state_truncated),
        ("state-garbage", fault_state_garbage),
        ("state-removed", fault_state_removed),
        ("state-read-only", fault_state_read_only),
    ],
    "git-corrupt": [("git-blob", fault_git_blob), ("git-mirror", fault_git_mirror)],
    "kill-rollback": [("kill-rollback", fault_kill_rollback)],
    "superseded": [("superseded", fault_superseded)],
    "stale-next": [("stale-next", fault_stale_next)],
    "long-value": [("long-value", fault_long_value)],
    "yaml-escape": [("yaml-escape", fault_yaml_escape)],
    "listener-idle": [("listener-idle", fault_listener_idle)],
    "listener-edges": [("listener-edges", fault_listener_edges)],
    "secrets-at-rest": [("secrets-at-rest", fault_secrets_at_rest)],
    "policy-symlink": [("policy-symlink", fault_policy_symlink)],
    "proxy-folder-lost": [("proxy-folder-lost", fault_proxy_folder_lost)],
    "proxy-killed-mid-deploy": [("proxy-killed-mid-deploy", fault_proxy_killed_mid_deploy)],
    "crashloop-fix": [("crashloop-fix", fault_crashloop_fix)],
    "dies-after-live": [
        ("dies-after-live", fault_dies_after_live),
        ("dies-after-live-warm", lambda s: fault_dies_after_live(s, keep_warm="10m")),
    ],
    "env-file-once": [("env-file-once", fault_env_file_once)],
    "port-swap": [("port-swap", fault_port_swap)],
    "engine-restart": [
        ("engine-restart", fault_engine_restart),
        ("engine-restart-live-restore", fault_engine_restart_live_restore),
    ],
}


def run_one(drill: Drill, slug: str, fault: Callable[[Scenario], Row]) -> Row:
    engine = slug.startswith("engine-restart")
    deadline = ENGINE_FAULT_DEADLINE if engine else FAULT_DEADLINE
    scenario = Scenario(drill, slug, deadline)
    started = time.monotonic()
    try:
        row = fault(scenario)
    except Exception as exc:
        # The drill's own trouble (a setup that failed, the deadline): still a row, with what was seen.
        scenario.note(f"drill stopped: {type(exc).__name__}: {short(str(exc), 160)}")
        if not isinstance(exc, FaultTimeout | RuntimeError):
            traceback.print_exc()
        scenario.ends = max(scenario.ends, time.monotonic() + 15)
        try:
            row = scenario.finish(["v1", "v2", "v3"], settle=0)
        except Exception as again:
            row = Row(slug, False, 0.0, [*scenario.notes, f"verdict failed: {again}"], scenario.seen)
        row.survived = False
    finally:
        if engine and not engine_answers():
            with contextlib.suppress(Exception):
                if dockerd_pid() is None:
                    start_dockerd(dockerd_command(None))
                wait_engine()
        if scenario.dockerd_before:
            # The live-restore row changed how dockerd runs: put it back as it was.
            with contextlib.suppress(Exception):
                restart_dockerd(scenario.dockerd_before)
        log_dir = Path(tempfile.gettempdir()) / f"reconciler-drill-{drill.instance}"
        log_dir.mkdir(exist_ok=True)
        (log_dir / f"{slug}.log").write_text("\n\n".join(agent.log() for agent in scenario.agents))
        scenario.close()
    print(f"  {slug}: {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return row


def print_table(rows: list[Row]) -> None:
    width = max([len("fault"), *(len(row.fault) for row in rows)])
    print(f"{'fault':<{width}} | survived | down s | lost or misreported")
    print(f"{'-' * width}-+----------+--------+--------------------")
    for row in rows:
        notes = "; ".join(row.notes) or "-"
        if row.seen:
            notes += "  [seen: " + "; ".join(row.seen) + "]"
        print(f"{row.fault:<{width}} | {'yes' if row.survived else 'NO':<8} | {row.down:6.2f} | {notes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(FAULTS), metavar="NAME", help=", ".join(FAULTS))
    parser.add_argument("--skip-engine-restart", action="store_true", help="do not restart dockerd (fault 7)")
    args = parser.parse_args()
    names = [name for name in FAULTS if not args.only or name in args.only]
    if args.skip_engine_restart and "engine-restart" in names:
        names.remove("engine-restart")
    drill = Drill()
    print(f"instance {drill.instance}, run prefix {drill.prefix}", file=sys.stderr, flush=True)
    rows: list[Row] = []
    try:
        for name in names:
            for slug, fault in FAULTS[name]:
                rows.append(run_one(drill, slug, fault))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        errors = cleanup_run(drill.client, drill.prefix)
        if errors:
            print(f"cleanup: {errors}", file=sys.stderr)
    print_table(rows)
    survived = sum(row.survived for row in rows)
    clean = sum(row.survived and not row.notes for row in rows)
    print(
        f"\n{survived}/{len(rows)} faults survived, {clean} with nothing lost or misreported; "
        f"total downtime {sum(row.down for row in rows):.2f}s; agent logs in "
        f"{Path(tempfile.gettempdir()) / f'reconciler-drill-{drill.instance}'}"
    )


if __name__ == "__main__":
    main()
