"""Benchmark of the agent's dashboard: the overview of many apps, page sizes, event latency, memory.

Real parts: ``--apps`` (default 200) containers of one tiny image (``sleep``, a "running for 300 ms" gate)
committed to a real bare repository, and ``reconcile agent`` processes on it (``--instance
bench-dash-<prefix>``, a state directory of their own). In order:

1. an agent without ``--listen`` deploys every app, and is stopped;
2. ``baseline``: an agent without ``--listen`` is started again on the same state (nothing to deploy): its
   RSS (``VmRSS`` of ``/proc/PID/status``) once its first pass is done and it has idled ``--idle`` seconds;
3. ``dashboard idle``: the same with ``--listen`` (the dashboard served, never asked for);
4. the overview ``/``: ``--views`` sequential GETs after 10 of warm-up (p50, p95, max, each on a new
   connection), then 4 clients at once doing as many; the size of ``/``, of an app's page and of
   ``/pending``;
5. ``dashboard after use``: RSS after those views and ``--idle`` seconds of nothing;
6. event latency, over ``--rounds`` deploys of one app (v1 <-> v2, each a commit pushed to the bare
   repository, which the agent watches): the agent's own ``deploy.succeeded`` line (its timestamp, in ms)
   -> that event read by an ``/events`` client; and ``pass.done`` -> the ``board`` event that follows it.

Targets (issue 23): overview p95 <= 100 ms with 200 apps, a page <= 150 KB, event latency <= 1 s, the
dashboard idle <= +10 MB of RSS. Everything made (containers, images) is removed at the end, the agents
stopped first. Exit 0 whether or not the targets are met.

Run: ``.venv/bin/python bench/dashboard.py [--apps 200] [--views 200] [--rounds 10] [--idle 30] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webhooks import GATE, desired, trouble  # noqa: E402
from tests.support import GitRemote, ImageFactory, cleanup_run, connect, free_port  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.engine import new_run_prefix  # noqa: E402


def note(text: str) -> None:
    print(f"[dashboard] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def tiny(name: str, image: str, version: str) -> str:
    return (
        f"  {name}:\n    image: {image}\n    version: {version}\n    command: ['sleep', '3600']\n"
        f"    init: true\n    stop_timeout: 1s\n    stable_after: 1h\n    env: {{GREETING: hello}}\n"
        f"    health:\n{GATE}"
    )


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def get(port: int, path: str) -> tuple[int, int, float]:
    """One GET on a new connection: (status, bytes, seconds)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        return response.status, len(body), time.perf_counter() - started
    finally:
        connection.close()


class Events:
    """An ``/events`` client on a thread: each event with the wall time it was read."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[float, str, dict[str, Any]]] = []
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.connection.request("GET", "/events")
        self.response = self.connection.getresponse()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        kind = ""
        try:
            while line := self.response.readline():
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    kind = text.removeprefix("event: ")
                elif text.startswith("data: "):
                    self.got.append((time.time(), kind, json.loads(text.removeprefix("data: "))))
        except (OSError, ValueError, AttributeError):
            pass

    def close(self) -> None:
        self.connection.close()


def settled(agent: AgentProcess, idle: float) -> int:
    agent.wait_for("pass.done", timeout=300)
    time.sleep(idle)
    return rss_kb(agent.pid)


def run(args: argparse.Namespace) -> dict[str, Any]:
    client = connect()
    prefix = new_run_prefix()
    instance = f"bench-dash-{prefix}"
    images = ImageFactory(client, prefix)
    repo = images.repo("dash")
    for tag in ("v1", "v2"):
        images.build("dash", tag, body=tag)
    names = [f"{prefix}-app-{n:03d}" for n in range(args.apps)]
    results: dict[str, Any] = {"prefix": prefix, "apps": args.apps, "trouble": []}
    agents: list[AgentProcess] = []
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-dashboard-") as tmp:
        work = Path(tmp)
        remote = GitRemote(work / "git")
        versions = dict.fromkeys(names, "v1")

        def commit(message: str) -> None:
            text = desired(*(tiny(name, repo, version) for name, version in versions.items()))
            remote.commit_file("desired-state.yaml", text, message)

        commit("v1 of every app")
        base = ["--repo", str(remote.bare_path), "--branch", "main", "--interval", "600s",
                "--state-dir", str(work / "state"), "--instance", instance]  # fmt: skip
        env = {"RECONCILE_INSTANCE": instance, "RECONCILE_PASS_DONE": "1"}

        def start(*extra: str) -> AgentProcess:
            agent = AgentProcess([*base, *extra], env=env).start()
            agents.append(agent)
            return agent

        try:
            note(f"deploying {args.apps} apps")
            first = start()
            first.wait_for("pass.done", timeout=900)
            deployed = len({line.app for line in first.events("deploy.succeeded")})
            first.stop()
            results["deployed"] = deployed
            note("baseline: an agent without --listen")
            agent = start()
            results["rss_baseline_kb"] = settled(agent, args.idle)
            agent.stop()
            note("an agent with --listen, the dashboard never asked for")
            listen = free_port()
            agent = start("--listen", f"127.0.0.1:{listen}")
            results["rss_dashboard_idle_kb"] = settled(agent, args.idle)

            note(f"{args.views} views of / (after 10 of warm-up), then 4 clients at once")
            for _ in range(10):
                get(listen, "/")
            views = [get(listen, "/") for _ in range(args.views)]
            assert all(status == 200 for status, _, _ in views), {status for status, _, _ in views}
            times = [took for _, _, took in views]
            with ThreadPoolExecutor(4) as pool:
                together = list(pool.map(lambda _: get(listen, "/"), range(args.views)))
            both = [took for _, _, took in together]
            results["overview"] = {
                "bytes": views[0][1],
                "p50_ms": 1000 * statistics.median(times), "p95_ms": 1000 * percentile(times, 0.95),
                "max_ms": 1000 * max(times),
                "4_clients_p50_ms": 1000 * statistics.median(both), "4_clients_p95_ms": 1000 * percentile(both, 0.95),
            }  # fmt: skip
            results["app_page_bytes"] = get(listen, f"/apps/{names[0]}")[1]
            results["pending_bytes"] = get(listen, "/pending")[1]
            note(f"idle {args.idle:g}s after the views")
            time.sleep(args.idle)
            results["rss_dashboard_used_kb"] = rss_kb(agent.pid)

            note(f"{args.rounds} deploys, read from /events")
            events = Events(listen)
            rounds: list[dict[str, float]] = []
            target = names[0]
            for round_ in range(args.rounds):
                mark, before = agent.mark(), len(events.got)
                versions[target] = "v2" if versions[target] == "v1" else "v1"
                commit(f"round {round_}: {versions[target]}")
                done = agent.wait_for("deploy.succeeded", app=target, since=mark, timeout=60)
                passed = agent.wait_for("pass.done", since=mark, timeout=60)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    new = events.got[before:]
                    seen = [at for at, kind, data in new if kind == "agent" and data.get("event") ==
                            "deploy.succeeded" and data.get("app") == target]  # fmt: skip
                    boards = [at for at, kind, _ in new if kind == "board" and at >= passed.at]
                    if seen and boards:
                        rounds.append({"event_s": seen[0] - done.at, "board_s": boards[0] - passed.at})
                        break
                    time.sleep(0.01)
                else:
                    rounds.append({"event_s": float("nan"), "board_s": float("nan")})
                time.sleep(0.5)
            events.close()
            results["events"] = rounds
        finally:
            for agent in agents:
                agent.stop()
                results["trouble"] += trouble(agent.lines)
            results["cleanup_errors"] = cleanup_run(client, prefix)
            with contextlib.suppress(Exception):  # the instance's network, which its passes made
                client.api.remove_network(f"reconciler-{instance}")
    return results


def table(results: dict[str, Any]) -> str:
    overview = results["overview"]
    base, idle, used = results["rss_baseline_kb"], results["rss_dashboard_idle_kb"], results["rss_dashboard_used_kb"]
    event = [r["event_s"] for r in results["events"]]
    board = [r["board_s"] for r in results["events"]]
    lines = [
        f"apps: {results['apps']} (deployed by the first agent: {results['deployed']})",
        f"overview /: {overview['bytes'] / 1024:.1f} KB; one client p50 {overview['p50_ms']:.1f} ms, p95 "
        f"{overview['p95_ms']:.1f} ms, max {overview['max_ms']:.1f} ms; 4 clients p50 "
        f"{overview['4_clients_p50_ms']:.1f} ms, p95 {overview['4_clients_p95_ms']:.1f} ms",
        f"an app's page: {results['app_page_bytes'] / 1024:.1f} KB; /pending: {results['pending_bytes'] / 1024:.1f} KB",
        f"event latency (deploy.succeeded said -> read from /events), {len(event)} deploys: p50 "
        f"{1000 * statistics.median(event):.0f} ms, max {1000 * max(event):.0f} ms",
        f"board latency (pass.done said -> board event read): p50 {1000 * statistics.median(board):.0f} ms, max "
        f"{1000 * max(board):.0f} ms",
        f"agent RSS: without --listen {base / 1024:.1f} MB; with the dashboard idle {idle / 1024:.1f} MB "
        f"({(idle - base) / 1024:+.1f} MB); after the views and {results.get('idle', 0)} s idle {used / 1024:.1f} MB "
        f"({(used - base) / 1024:+.1f} MB)",
        f"run prefix {results['prefix']}; log trouble: {results['trouble'] or 'none'}; cleanup errors: "
        f"{results['cleanup_errors'] or 'none'}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", type=int, default=200)
    parser.add_argument("--views", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args)
    results["idle"] = args.idle
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
