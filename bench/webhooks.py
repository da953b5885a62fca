"""Benchmark of the agent's HTTP listener: push webhooks, a flood of them, and ``/metrics``, in one run.

One ``reconcile agent`` follows a bare repository by URL (``file://``, so it is mirrored and only a
fetch sees a push) with ``--interval 60s``, ``--listen 127.0.0.1:PORT``, ``--webhook-secret-file``,
``--parallel 16``, its own state directory and ``--instance bench-wh-<prefix>``.

1. Push -> new version answering HTTP, a signed GitHub push hook (``X-Hub-Signature-256``, body
   ``{"ref": "refs/heads/main"}``) sent right after ``git push`` returned; against the raw
   ``docker stop && docker rm && docker run`` of the same image swap (local images built by
   ``ImageFactory``, host ports on 127.0.0.1, no pull either way). Rounds alternate v1/v2 and take
   raw then ours; the figures are medians and the target is on the difference (ours - raw <= 1 s).
   The app has an http gate (``interval: 100ms``, ``healthy_for: 300ms``). With a host port the
   deploy is stop-first, so the new version answers before its gate ends: the gate's ``healthy_for``
   is part of the deploy time (push -> ``deploy.succeeded``, also shown), not of the answer time.
2. A flood of valid, signed hooks for the followed branch (1,000 in one second, scheduled evenly,
   from 16 client threads, each on one keep-alive connection opened before the flood; or a new
   connection per hook with ``--new-connections``), nothing changed in git: the passes it ran
   (``reconciler_pass_duration_seconds_count`` from /metrics before the flood and a few seconds
   after it), the agent's RSS growth (``VmRSS`` of /proc/PID/status, same two moments) and the p99
   of the hooks' answer times (from sending a request to having read its answer; all answers, 202
   and 429 alike, with how many of each).
3. ``GET /metrics`` with 50 tiny apps deployed (busybox ``sleep``, no host port, ``init: true``, a
   running-only gate with ``healthy_for: 300ms``) besides the app of part 1: median and p95 of 50
   scrapes, each a fresh connection and a whole answer read.

Everything created (containers, images) is removed at the end (``cleanup_run``), the agent stopped
first. Exit 0 whether or not the targets are met. ``--quick`` is a short trial (fewer rounds and apps).

Run: ``.venv/bin/python bench/webhooks.py [--quick] [--json]`` (needs the Docker engine, as the tests do).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import GitRemote, ImageFactory, cleanup_run, connect, free_port  # noqa: E402
from tests.support.agent import AgentProcess, LogLine  # noqa: E402
from tests.support.engine import new_run_prefix  # noqa: E402

SECRET = b"bench-webhook-secret"
PUSH_BODY = json.dumps({"ref": "refs/heads/main"}).encode()
GATE = "      interval: 100ms\n      timeout: 20s\n      healthy_for: 300ms\n"


def signed_headers(body: bytes) -> dict[str, str]:
    digest = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": f"sha256={digest}",
    }


def web_yaml(name: str, image: str, version: str, port: int) -> str:
    return (
        f"  {name}:\n    image: {image}\n    version: {version}\n    ports: ['127.0.0.1:{port}:8000']\n"
        f"    init: true\n    stop_timeout: 2s\n    stable_after: 1h\n"
        f"    health:\n      http: http://127.0.0.1:{port}/health\n{GATE}"
    )


def tiny_yaml(name: str, image: str) -> str:
    return (
        f"  {name}:\n    image: {image}\n    version: v1\n    command: ['sleep', '3600']\n"
        f"    init: true\n    stop_timeout: 1s\n    stable_after: 1h\n    health:\n{GATE}"
    )


def desired(*entries: str) -> str:
    return "apps:\n" + "".join(entries)


# -- HTTP, straight to loopback (no proxy from the environment) -----------------------------------------


def request(port: int, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 5.0) -> tuple[int, bytes]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def hook(port: int) -> int:
    return request(port, "POST", "/hooks/github", body=PUSH_BODY, headers=signed_headers(PUSH_BODY))[0]


def body_at(port: int) -> str:
    try:
        # A short timeout: a connection accepted while the container starts may hang; ask again instead.
        status, body = request(port, "GET", "/", timeout=0.05)
    except (OSError, http.client.HTTPException):
        return ""
    return body.decode(errors="replace") if status == 200 else ""


def until_body(port: int, body: str, started: float, limit: float = 60.0) -> float:
    """Seconds from ``started`` (monotonic) until the app on ``port`` serves ``body`` (polled every 5 ms)."""
    while time.monotonic() - started < limit:
        if body_at(port) == body:
            return time.monotonic() - started
        time.sleep(0.005)
    raise RuntimeError(f"127.0.0.1:{port} never served {body!r} within {limit:g} s")


def metric(port: int, name: str, **labels: str) -> float:
    """The value of one sample on /metrics (0 when absent)."""
    status, text = request(port, "GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    for line in text.decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def note(text: str) -> None:
    print(f"[webhooks] {text}", file=sys.stderr, flush=True)


# -- the flood -------------------------------------------------------------------------------------------


@dataclass
class Flood:
    answers: list[tuple[int, float]] = field(default_factory=list)  # (HTTP status or 0 for an error, seconds)
    reconnects: int = 0
    took: float = 0.0  # from the first scheduled send to the last answer
    errors: list[str] = field(default_factory=list)


def flood(port: int, count: int, threads: int, seconds: float, *, new_connections: bool) -> Flood:
    """``count`` signed push hooks, due evenly over ``seconds``, hook k sent by thread k mod ``threads``."""
    headers = signed_headers(PUSH_BODY)
    result = Flood()
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)
    start = [0.0]

    def worker(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        if not new_connections:
            conn.connect()
        mine: list[tuple[int, float]] = []
        reconnects = 0
        errors: list[str] = []
        barrier.wait()
        t0 = start[0]
        for k in range(index, count, threads):
            wait = t0 + k * seconds / count - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sent = time.perf_counter()
            try:
                if new_connections:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", "/hooks/github", body=PUSH_BODY, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                if new_connections or response.will_close:
                    conn.close()
                    reconnects += 0 if new_connections else 1
            except (OSError, http.client.HTTPException) as exc:
                status = 0
                errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                reconnects += 0 if new_connections else 1
            mine.append((status, time.perf_counter() - sent))
        conn.close()
        with lock:
            result.answers += mine
            result.reconnects += reconnects
            result.errors += errors

    workers = [threading.Thread(target=worker, args=(index,), daemon=True) for index in range(threads)]
    for thread in workers:
        thread.start()
    start[0] = time.perf_counter() + 0.2
    barrier.wait()
    for thread in workers:
        thread.join()
    result.took = time.perf_counter() - start[0]
    return result


# -- the run ---------------------------------------------------------------------------------------------


def wait_succeeded(agent: AgentProcess, apps: set[str], since: int, timeout: float) -> float:
    """Wait for ``deploy.succeeded`` of every app in ``apps`` after ``since``; the wall time of the last one."""
    deadline = time.monotonic() + timeout
    while True:
        done = [line for line in agent.events("deploy.succeeded", since=since) if line.app in apps]
        if len({line.app for line in done}) == len(apps):
            return max(line.at for line in done)
        bad = [line for line in agent.events(since=since) if line.event in ("deploy.failed", "deploy.rolled-back")]
        if bad or not agent.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{len(done)} of {len(apps)} apps deployed; {bad[:3]}\n{agent.log()[-4000:]}")
        time.sleep(0.05)


def trouble(lines: list[LogLine]) -> list[str]:
    """Lines of the agent's log that say something went wrong in the product."""
    bad_events = {"pass.crashed", "pass.error", "deploy.failed", "deploy.rolled-back", "state.error", "app.error"}
    return [
        line.raw
        for line in lines
        if line.event in bad_events or "Traceback" in line.raw or "internal error" in line.raw or not line.event
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    client = connect()
    prefix = new_run_prefix()
    instance = f"bench-wh-{prefix}"
    images = ImageFactory(client, prefix)
    repo = images.repo("whbench")
    for tag in ("v1", "v2"):
        images.build("whbench", tag, body=tag)
    images.build("tiny", "v1")
    web, raw_name = f"{prefix}-web", f"{prefix}-raw"
    web_port, raw_port, listen = free_port(), free_port(), free_port()
    results: dict[str, Any] = {"prefix": prefix, "instance": instance}
    agent: AgentProcess | None = None
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-webhooks-") as tmp:
        work = Path(tmp)
        secret = work / "webhook.secret"
        secret.write_bytes(SECRET + b"\n")
        remote = GitRemote(work / "git")
        remote.commit_file("desired-state.yaml", desired(web_yaml(web, repo, "v1", web_port)), "v1")
        try:
            # -- 1. push -> new version answering, against raw docker --------------------------------
            agent = AgentProcess(
                ["--repo", f"file://{remote.bare_path}", "--branch", "main", "--interval", "60s",
                 "--state-dir", str(work / "state"), "--instance", instance, "--parallel", "16",
                 "--listen", f"127.0.0.1:{listen}", "--webhook-secret-file", str(secret)],
                env={"RECONCILE_INSTANCE": instance},
            ).start()  # fmt: skip
            agent.wait_for("deploy.succeeded", app=web, timeout=120)
            until_body(web_port, "v1", time.monotonic())
            run_raw = ["docker", "run", "-d", "--init", "--name", raw_name, "-p", f"127.0.0.1:{raw_port}:8000"]
            subprocess.run([*run_raw, f"{repo}:v1"], check=True, capture_output=True)
            until_body(raw_port, "v1", time.monotonic())
            time.sleep(0.5)
            raw, ours, deploy, hook_statuses = [], [], [], []
            current = "v1"
            for round_ in range(args.rounds):
                tag = current = "v2" if round_ % 2 == 0 else "v1"
                note(f"part 1: round {round_ + 1}/{args.rounds} -> {tag}")
                started = time.monotonic()
                subprocess.run(["docker", "stop", raw_name], check=True, capture_output=True)
                subprocess.run(["docker", "rm", raw_name], check=True, capture_output=True)
                subprocess.run([*run_raw, f"{repo}:{tag}"], check=True, capture_output=True)
                raw.append(until_body(raw_port, tag, started))
                remote.commit_file("desired-state.yaml", desired(web_yaml(web, repo, tag, web_port)), tag, push=False)
                mark = agent.mark()
                remote.push()
                pushed, pushed_wall = time.monotonic(), time.time()
                hook_statuses.append(hook(listen))
                ours.append(until_body(web_port, tag, pushed))
                deploy.append(wait_succeeded(agent, {web}, mark, 60) - pushed_wall)
                time.sleep(0.5)  # the pass ends after its last deploy
            results["push"] = {
                "rounds": args.rounds,
                "raw_s": statistics.median(raw),
                "ours_s": statistics.median(ours),
                "difference_s": statistics.median(ours) - statistics.median(raw),
                "deploy_s": statistics.median(deploy),
                "raw_all_s": [round(value, 3) for value in raw],
                "ours_all_s": [round(value, 3) for value in ours],
                "hook_statuses": dict(Counter(hook_statuses)),
            }

            # -- 2. a flood of hooks, nothing changed in git ------------------------------------------
            time.sleep(2.0)
            note(f"part 2: {args.hooks} hooks in {args.flood_seconds:g} s from {args.threads} threads")
            passes_before = metric(listen, "reconciler_pass_duration_seconds_count")
            pass_seconds_before = metric(listen, "reconciler_pass_duration_seconds_sum")
            counted_before = {
                result: metric(listen, "reconciler_webhooks_total", provider="github", result=result)
                for result in ("push", "rate-limited")
            }
            rss_before = rss_mb(agent.pid)
            mark = agent.mark()
            sent = flood(listen, args.hooks, args.threads, args.flood_seconds, new_connections=args.new_connections)
            passes_at_end = metric(listen, "reconciler_pass_duration_seconds_count") - passes_before
            time.sleep(args.settle)
            rss_after = rss_mb(agent.pid)
            passes = metric(listen, "reconciler_pass_duration_seconds_count") - passes_before
            pass_seconds = metric(listen, "reconciler_pass_duration_seconds_sum") - pass_seconds_before
            counted = {
                result: metric(listen, "reconciler_webhooks_total", provider="github", result=result) - before
                for result, before in counted_before.items()
            }
            statuses = Counter(status for status, _ in sent.answers)
            times = [seconds for _, seconds in sent.answers]
            results["flood"] = {
                "hooks": args.hooks,
                "threads": args.threads,
                "connections": "new per hook" if args.new_connections else "keep-alive, one per thread",
                "took_s": sent.took,
                "passes": passes,
                "passes_at_flood_end": passes_at_end,
                "pass_mean_s": pass_seconds / passes if passes else 0.0,
                "commits_seen": len(agent.events("commit.seen", since=mark)),
                "rss_before_mb": rss_before,
                "rss_after_mb": rss_after,
                "rss_growth_mb": rss_after - rss_before,
                "answer_p50_ms": 1000 * statistics.median(times),
                "answer_p99_ms": 1000 * percentile(times, 0.99),
                "answer_max_ms": 1000 * max(times),
                "statuses": {str(status): number for status, number in sorted(statuses.items())},
                "metrics_counted": counted,
                "reconnects": sent.reconnects,
                "errors": sent.errors[:5],
            }

            # -- 3. /metrics with many apps -----------------------------------------------------------
            names = [f"{prefix}-t{index:03d}" for index in range(args.apps)]
            note(f"part 3: deploying {args.apps} tiny apps")
            tinies = (tiny_yaml(name, images.repo("tiny")) for name in names)
            text = desired(web_yaml(web, repo, current, web_port), *tinies)
            remote.commit_file("desired-state.yaml", text, f"{args.apps} tiny apps", push=False)
            mark = agent.mark()
            remote.push()
            pushed_wall = time.time()
            hook(listen)
            last = wait_succeeded(agent, set(names), mark, 600)
            time.sleep(1.0)
            scrapes, sizes = [], []
            for _ in range(args.scrapes):
                started_perf = time.perf_counter()
                status, body = request(listen, "GET", "/metrics")
                scrapes.append(time.perf_counter() - started_perf)
                if status != 200:
                    raise RuntimeError(f"/metrics answered {status}")
                sizes.append(len(body))
            info = sum(1 for line in body.decode().splitlines() if line.startswith("reconciler_app_info{"))
            results["metrics"] = {
                "apps": args.apps,
                "deploy_s": last - pushed_wall,
                "scrapes": args.scrapes,
                "median_ms": 1000 * statistics.median(scrapes),
                "p95_ms": 1000 * percentile(scrapes, 0.95),
                "max_ms": 1000 * max(scrapes),
                "bytes": statistics.median(sizes),
                "app_info_series": info,
            }
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
    push, hooks, scrape = results["push"], results["flood"], results["metrics"]

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    rows: list[tuple[str, str, str, str]] = [
        (f"push -> new version answering, raw docker stop/rm/run (median of {push['rounds']})",
         f"{push['raw_s']:.3f} s", "", ""),
        ("push -> new version answering, agent, signed hook after the push", f"{push['ours_s']:.3f} s", "", ""),
        ("  difference (agent - raw)", f"{push['difference_s']:+.3f} s", "<= 1 s",
         verdict(push["difference_s"] <= 1.0)),
        ("  push -> deploy.succeeded (gate healthy_for 300ms included)", f"{push['deploy_s']:.3f} s", "", ""),
        (f"{hooks['hooks']} hooks in {hooks['took_s']:.2f} s ({hooks['threads']} threads, {hooks['connections']}):"
         " passes", f"{hooks['passes']:g}", "<= 2", verdict(hooks["passes"] <= 2)),
        ("  agent RSS growth", f"{hooks['rss_growth_mb']:+.2f} MB", "<= 5 MB", verdict(hooks["rss_growth_mb"] <= 5)),
        ("  hook answer time p99 (all answers)", f"{hooks['answer_p99_ms']:.1f} ms", "<= 50 ms",
         verdict(hooks["answer_p99_ms"] <= 50)),
        ("  answers by status", ", ".join(f"{k}: {v}" for k, v in hooks["statuses"].items()), "", ""),
        (f"/metrics scrape, {scrape['apps']} tiny apps + 1 deployed, median of {scrape['scrapes']}",
         f"{scrape['median_ms']:.1f} ms", "<= 20 ms", verdict(scrape["median_ms"] <= 20)),
        ("  p95", f"{scrape['p95_ms']:.1f} ms", "<= 20 ms", verdict(scrape["p95_ms"] <= 20)),
    ]  # fmt: skip
    width = max(len(row[0]) for row in rows)
    lines = [f"{'figure':<{width}}  {'measured':>14}  {'target':<9} verdict"]
    lines += [f"{a:<{width}}  {b:>14}  {c:<9} {d}".rstrip() for a, b, c, d in rows]
    lines += [
        "",
        f"raw rounds (s): {push['raw_all_s']}",
        f"agent rounds (s): {push['ours_all_s']}; hooks answered {push['hook_statuses']}",
        f"flood: answer p50 {hooks['answer_p50_ms']:.1f} ms, max {hooks['answer_max_ms']:.1f} ms; RSS "
        f"{hooks['rss_before_mb']:.1f} -> {hooks['rss_after_mb']:.1f} MB; passes by its end "
        f"{hooks['passes_at_flood_end']:g} (mean pass {1000 * hooks['pass_mean_s']:.0f} ms);"
        f" commit.seen during it: {hooks['commits_seen']};"
        f" the agent counted {hooks['metrics_counted']}; reconnects {hooks['reconnects']}"
        + (f"; client errors {hooks['errors']}" if hooks["errors"] else ""),
        f"/metrics: max {scrape['max_ms']:.1f} ms, {scrape['bytes']:.0f} bytes, {scrape['app_info_series']} "
        f"reconciler_app_info series; the {scrape['apps']} apps deployed in {scrape['deploy_s']:.1f} s",
        f"run prefix {results['prefix']}, --instance {results['instance']}; agent exit {results['agent_exit']};"
        f" log trouble: {results['agent_trouble'] or 'none'}; "
        f"cleanup errors: {results['cleanup_errors'] or 'none'}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="push rounds (alternating v1/v2)")
    parser.add_argument("--hooks", type=int, default=1000, help="hooks in the flood")
    parser.add_argument("--flood-seconds", type=float, default=1.0, help="the flood's length")
    parser.add_argument("--threads", type=int, default=16, help="client threads of the flood")
    parser.add_argument("--new-connections", action="store_true", help="a new connection per hook")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait after the flood")
    parser.add_argument("--apps", type=int, default=50, help="tiny apps deployed for the scrapes")
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="a short trial: 2 rounds, 10 apps, 20 scrapes")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.apps, args.scrapes, args.settle = 2, 10, 20, 3.0
    started = time.monotonic()
    results = run(args)
    results["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(results))
    else:
        print(table(results))
        print(f"whole run: {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
