"""Benchmark of the agent's listener under hostile connections: /healthz probes and a signed push hook.

One ``reconcile agent`` follows a bare repository by URL (``file://``: only a fetch sees a push) with
``--interval 60s``, ``--listen 127.0.0.1:PORT``, ``--webhook-secret-file``, its own state directory and
``--instance bench-ll-<prefix>``, and deploys one app (host port on 127.0.0.1, an http gate of
``interval: 100ms``, ``healthy_for: 300ms``, stop-first). Three phases, each the same measurements:

- ``quiet``: nothing else talks to the listener.
- ``500 idle + 200 slow``: a separate process holds 500 connections that send nothing and 200 that send
  a request head one byte a second (each opened again as soon as the listener closes it), all from
  127.0.0.1, the probes' own address (the issue's drill).
- ``flood``: ``--flood`` idle connections (default 1,500: past the per-address bound) from 127.0.0.2, an
  attacker on another host as the listener sees it (loopback only), opened again when closed.

Per phase: ``GET /healthz`` every 250 ms for ``--seconds``, each on a new connection with a 10 s
timeout: how many answered 200, p50, p95, max (a probe that timed out counts as 10 s); then
``--rounds`` deploys, each a commit pushed to the bare repository and a signed GitHub push hook sent
right after: the hook's answer time (status 0: no answer within 5 s), hook sent -> ``commit.seen`` in
the agent's log (the pass that the hook started has fetched the commit), hook sent -> the new version
answering on its port, and hook sent -> ``deploy.succeeded`` (the gate's ``healthy_for`` included).
Targets (issue 18, item 8): under 500 idle + 200 slow, /healthz p95 <= 1 s and hook -> deploy <= 3 s.

Everything created (containers, images) is removed at the end (``cleanup_run``), the agent stopped
first. Traffic goes only to 127.0.0.1. Exit 0 whether or not the targets are met.

Run: ``.venv/bin/python bench/listener_load.py [--seconds 20] [--rounds 3] [--json]`` (needs the
Docker engine, as the tests do).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import multiprocessing.connection
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webhooks import SECRET, desired, hook, trouble, until_body, web_yaml  # noqa: E402
from tests.support import GitRemote, ImageFactory, cleanup_run, connect, free_port  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.engine import new_run_prefix  # noqa: E402
from tests.support.hostile import Hostile, probe  # noqa: E402

PROBE_TIMEOUT = 10.0


def note(text: str) -> None:
    print(f"[listener_load] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _hostile(port: int, idle: int, slow: int, seconds: float, source: str, out: Any) -> None:
    hostile = Hostile("127.0.0.1", port, idle=idle, slow=slow, seconds=seconds, source=source)
    hostile.start()
    out.send(hostile.open_now)
    out.recv()  # told to stop
    open_now = hostile.open_now
    hostile.stop()
    out.send({"open": open_now, "reopened": hostile.reopened, "refused": hostile.refused})


class HostileProcess:
    """`Hostile` in a process of its own, so that its loop never holds the probes' interpreter."""

    def __init__(self, port: int, *, idle: int, slow: int, seconds: float, source: str = "") -> None:
        ours, theirs = multiprocessing.Pipe()
        self.pipe: multiprocessing.connection.Connection = ours
        self.process = multiprocessing.get_context("fork").Process(
            target=_hostile, args=(port, idle, slow, seconds, source, theirs), daemon=True
        )

    def __enter__(self) -> HostileProcess:
        self.process.start()
        self.opened = self.pipe.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pipe.send("stop")
        self.counts = self.pipe.recv() if self.pipe.poll(20) else {}
        self.process.join(timeout=20)
        if self.process.is_alive():
            self.process.kill()


def measure(
    agent: AgentProcess,
    remote: GitRemote,
    listen: int,
    web: tuple[str, str, int],
    args: argparse.Namespace,
    state: dict[str, str],
) -> dict[str, Any]:
    probes: list[tuple[int, float]] = []
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        status, took = probe("127.0.0.1", listen, "GET", "/healthz", timeout=PROBE_TIMEOUT)
        probes.append((status, took if status else PROBE_TIMEOUT))
        time.sleep(max(0.0, 0.25 - (time.monotonic() - started)))
    times = [took for _, took in probes]
    name, repo, port = web
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        tag = state["version"] = "v2" if state["version"] == "v1" else "v1"
        remote.commit_file("desired-state.yaml", desired(web_yaml(name, repo, tag, port)), tag, push=False)
        mark = agent.mark()
        remote.push()
        sent, sent_wall = time.monotonic(), time.time()
        try:
            status = hook(listen)
        except (OSError, http.client.HTTPException):  # unanswered in 5 s: the agent's 60 s poll deploys it
            status = 0
        answered = time.monotonic() - sent
        answering = until_body(port, tag, sent, limit=120)
        end = time.monotonic() + 60
        while time.monotonic() < end and not [
            line for line in agent.events("deploy.succeeded", since=mark) if line.app == name
        ]:
            time.sleep(0.05)
        seen = agent.events("commit.seen", since=mark)
        done = [line for line in agent.events("deploy.succeeded", since=mark) if line.app == name]
        rounds.append(
            {
                "hook_status": status,
                "hook_answer_s": answered,
                "hook_to_commit_seen_s": seen[0].at - sent_wall if seen else float("nan"),
                "hook_to_answering_s": answering,
                "hook_to_deploy_s": done[0].at - sent_wall if done else float("nan"),
            }
        )
        time.sleep(1.0)
    return {
        "probes": len(probes),
        "answered": sum(1 for status, _ in probes if status == 200),
        "p50_s": statistics.median(times),
        "p95_s": percentile(times, 0.95),
        "max_s": max(times),
        "rounds": rounds,
        "hook_to_deploy_max_s": max(r["hook_to_deploy_s"] for r in rounds),
        "hook_to_answering_max_s": max(r["hook_to_answering_s"] for r in rounds),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    client = connect()
    prefix = new_run_prefix()
    instance = f"bench-ll-{prefix}"
    images = ImageFactory(client, prefix)
    repo = images.repo("llbench")
    for tag in ("v1", "v2"):
        images.build("llbench", tag, body=tag)
    name, port, listen = f"{prefix}-web", free_port(), free_port()
    results: dict[str, Any] = {"prefix": prefix, "instance": instance, "phases": {}}
    agent: AgentProcess | None = None
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-listener-") as tmp:
        work = Path(tmp)
        secret = work / "webhook.secret"
        secret.write_bytes(SECRET + b"\n")
        remote = GitRemote(work / "git")
        remote.commit_file("desired-state.yaml", desired(web_yaml(name, repo, "v1", port)), "v1")
        state = {"version": "v1"}
        try:
            agent = AgentProcess(
                ["--repo", f"file://{remote.bare_path}", "--branch", "main", "--interval", "60s",
                 "--state-dir", str(work / "state"), "--instance", instance,
                 "--listen", f"127.0.0.1:{listen}", "--webhook-secret-file", str(secret)],
                env={"RECONCILE_INSTANCE": instance},
            ).start()  # fmt: skip
            agent.wait_for("deploy.succeeded", app=name, timeout=120)
            until_body(port, "v1", time.monotonic())
            web = (name, repo, port)
            note("phase quiet")
            results["phases"]["quiet"] = measure(agent, remote, listen, web, args, state)
            loads = {
                f"{args.idle} idle + {args.slow} slow": {"idle": args.idle, "slow": args.slow, "source": ""},
                f"flood: {args.flood} idle from 127.0.0.2": {"idle": args.flood, "slow": 0, "source": "127.0.0.2"},
            }
            for label, load in loads.items():
                if not load["idle"] and not load["slow"]:
                    continue
                note(f"phase {label}")
                seconds = args.seconds + args.rounds * 30 + 60
                with HostileProcess(listen, seconds=seconds, **load) as hostile:
                    time.sleep(1.0)
                    phase = measure(agent, remote, listen, web, args, state)
                phase["hostile"] = {"opened": hostile.opened, **hostile.counts}
                results["phases"][label] = phase
        except BaseException:
            if agent is not None:
                note("failed; the agent's log:\n" + agent.log()[-8000:])
            raise
        finally:
            if agent is not None:
                agent.stop()
                results["agent_exit"] = agent.returncode
                results["agent_trouble"] = trouble(agent.lines)
            results["cleanup_errors"] = cleanup_run(client, prefix)
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'phase':<36} {'/healthz 200':>12} {'p50':>7} {'p95':>7} {'max':>7}  {'hook answer':>11} "
        f"{'->commit.seen':>13} {'->answering':>11} {'->deploy.ok':>11}"
    ]
    for label, phase in results["phases"].items():
        rounds = phase["rounds"]

        def worst(key: str, rounds: list[dict[str, float]] = rounds) -> str:
            values = [r[key] for r in rounds]
            return f"{statistics.median(values):.2f}/{max(values):.2f}"

        lines.append(
            f"{label:<36} {phase['answered']:>5} of {phase['probes']:<4} {phase['p50_s']:>6.3f}s"
            f" {phase['p95_s']:>6.3f}s {phase['max_s']:>6.3f}s"
            f"  {worst('hook_answer_s'):>11} {worst('hook_to_commit_seen_s'):>13}"
            f" {worst('hook_to_answering_s'):>11} {worst('hook_to_deploy_s'):>11}"
        )
    lines.append("(hook columns: seconds, median/worst of the phase's rounds; hooks answered " + ", ".join(
        f"{label}: {sorted({r['hook_status'] for r in phase['rounds']})}" for label, phase in results["phases"].items()
    ) + ")")  # fmt: skip
    for label, phase in results["phases"].items():
        if "hostile" in phase:
            lines.append(f"{label}: hostile connections {phase['hostile']}")
    lines.append(
        f"run prefix {results['prefix']}; agent exit {results['agent_exit']}; log trouble: "
        f"{results['agent_trouble'] or 'none'}; cleanup errors: {results['cleanup_errors'] or 'none'}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of /healthz probes per phase")
    parser.add_argument("--rounds", type=int, default=3, help="commit + hook deploys per phase")
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--flood", type=int, default=1500, help="idle connections from 127.0.0.2 (0: no flood)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = parser.parse_args()
    started = time.monotonic()
    results = run(args)
    results["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(results) if args.json else table(results) + f"\nwhole run: {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
