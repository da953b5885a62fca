"""Benchmark of ``reconcile agent`` (issue 3), taken in one run next to the raw docker commands.

1. Push to a local bare repository -> the new version answers HTTP, with the agent running; against
   the raw ``docker stop && docker rm && docker run`` on the same local images (no pull either way).
   The figure is the overhead: ours minus raw (medians).
2. A release that exits at start -> the previous version answers again, timed from the exit.
3. A release that fails its HTTP gate -> rolled back to the kept previous container, timed from the
   moment the rollback stopped the failed one to the previous version answering.
4. The agent idle: resident memory, and CPU seconds used over an idle stretch.

Run: ``.venv/bin/python bench/agent.py [--rounds 7]`` (needs the Docker engine, as the tests do).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.converge import body_of, remove_containers, until_body  # noqa: E402
from tests.support import GitRemote, ImageFactory, cleanup_run, connect, free_port  # noqa: E402
from tests.support.engine import new_run_prefix  # noqa: E402


def app_yaml(name: str, repo: str, version: str, port: int) -> str:
    # The defaults of the file format but for a shorter gate and stable_after, so rounds stay short.
    return (
        f"apps:\n  {name}:\n    image: {repo}\n    version: '{version}'\n    ports: ['127.0.0.1:{port}:8000']\n"
        f"    init: true\n    stop_timeout: 2s\n    health:\n      http: http://127.0.0.1:{port}/health\n"
        f"      interval: 1s\n      timeout: 10s\n      healthy_for: 1s\n    stable_after: 1h\n"
    )


def docker_time(stamp: str) -> float:
    head, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(fraction + '000000')[:6]}+00:00").timestamp()


class AgentProcess:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "agent", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, after: int = 0, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index in range(after, len(self.lines)):
                if text in self.lines[index]:
                    return index
            time.sleep(0.01)
        raise RuntimeError(f"agent never logged {text!r}:\n" + "\n".join(self.lines[-20:]))

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Poller:
    """Polls a URL every ~5 ms in a thread and keeps (wall time, body) of every change."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.changes: list[tuple[float, str]] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last = None
        while self.running:
            body = body_of(self.url)
            if body != last:
                self.changes.append((time.time(), body))
                last = body
            time.sleep(0.005)

    def stop(self) -> None:
        self.running = False
        self.thread.join()

    def first(self, body: str, *, after: float) -> float:
        """When ``body`` was served again after the wall time ``after`` (it was not being served then)."""
        before = [seen for stamp, seen in self.changes if stamp <= after]
        if before and before[-1] == body:
            raise RuntimeError(f"{self.url} still served {body!r} at {after}")
        for stamp, seen in self.changes:
            if stamp > after and seen == body:
                return stamp
        raise RuntimeError(f"{self.url} never served {body!r} again after {after}: {self.changes[-5:]}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle to measure CPU over")
    args = parser.parse_args()
    client = connect()
    prefix = new_run_prefix()
    images = ImageFactory(client, prefix)
    repo = images.repo("agentbench")
    tags = [f"v{index}" for index in range(args.rounds + 1)]
    for tag in tags:
        images.build("agentbench", tag, body=tag)
    images.build("agentbench", "exits", exit_at_start=True)
    images.build("agentbench", "404", healthy=False)
    our_name, raw_name = f"{prefix}-agent", f"{prefix}-raw"
    our_port, raw_port = free_port(), free_port()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-agent-") as tmp:
        remote = GitRemote(Path(tmp) / "git")
        remote.commit_file("desired-state.yaml", app_yaml(our_name, repo, tags[0], our_port), "first")
        env = {**os.environ, "RECONCILE_INSTANCE": f"bench-{prefix}"}
        agent = AgentProcess(
            ["--repo", str(remote.bare_path), "--branch", "main", "--state-dir", f"{tmp}/state", "--interval", "60s"],
            env,
        )
        try:
            until_body(f"http://127.0.0.1:{our_port}/", tags[0], time.monotonic())
            subprocess.run(
                ["docker", "run", "-d", "--init", "--name", raw_name, "-p", f"127.0.0.1:{raw_port}:8000",
                 f"{repo}:{tags[0]}"],
                check=True, capture_output=True,
            )  # fmt: skip
            raw, ours = [], []
            for tag in tags[1:]:
                seen = len(agent.lines)
                agent.wait_for("deploy.succeeded", after=max(0, seen - 5))
                started = time.monotonic()
                subprocess.run(["docker", "stop", raw_name], check=True, capture_output=True)
                subprocess.run(["docker", "rm", raw_name], check=True, capture_output=True)
                subprocess.run(
                    ["docker", "run", "-d", "--init", "--name", raw_name, "-p", f"127.0.0.1:{raw_port}:8000",
                     f"{repo}:{tag}"],
                    check=True, capture_output=True,
                )  # fmt: skip
                raw.append(until_body(f"http://127.0.0.1:{raw_port}/", tag, started))
                remote.commit_file("desired-state.yaml", app_yaml(our_name, repo, tag, our_port), tag, push=False)
                seen = len(agent.lines)
                remote.push()
                pushed = time.monotonic()
                ours.append(until_body(f"http://127.0.0.1:{our_port}/", tag, pushed))
                agent.wait_for("deploy.succeeded", after=seen)
            results["raw_s"] = statistics.median(raw)
            results["ours_s"] = statistics.median(ours)
            good = tags[-1]

            for broken, key in (("exits", "exit_to_answer_s"), ("404", "rollback_to_answer_s")):
                poller = Poller(f"http://127.0.0.1:{our_port}/")
                seen = len(agent.lines)
                remote.commit_file("desired-state.yaml", app_yaml(our_name, repo, broken, our_port), broken)
                agent.wait_for("deploy.rolled-back", after=seen, timeout=60)
                poller.stop()
                failed = client.api.inspect_container(f"{our_name}.failed")
                ended = docker_time(failed["State"]["FinishedAt"])
                results[key] = poller.first(good, after=ended) - ended
                remote.commit_file("desired-state.yaml", app_yaml(our_name, repo, good, our_port), f"back to {good}")
                time.sleep(0.5)

            time.sleep(2.0)
            pid = agent.process.pid
            before = cpu_seconds(pid)
            time.sleep(args.idle)
            results["idle_cpu_s"] = cpu_seconds(pid) - before
            results["idle_rss_mb"] = rss_mb(pid)
        finally:
            agent.stop()
            remove_containers(client, [our_name, f"{our_name}.prev", f"{our_name}.failed", raw_name])
            cleanup_run(client, prefix)
    overhead = results["ours_s"] - results["raw_s"]
    print(
        f"push to a local bare repo -> new version answering (median of {args.rounds}):\n"
        f"  raw docker stop/rm/run        {results['raw_s']:.3f} s\n"
        f"  agent, from the push          {results['ours_s']:.3f} s\n"
        f"  overhead                      {overhead:+.3f} s  (target <= 0.15)\n"
        f"release that exits at start -> previous answering: {results['exit_to_answer_s']:.3f} s after the exit"
        f"  (target <= 2)\n"
        f"release failing its HTTP gate -> kept previous answering: {results['rollback_to_answer_s']:.3f} s after"
        f" the rollback stopped the failed one  (target <= 1)\n"
        f"agent idle: RSS {results['idle_rss_mb']:.1f} MB (target <= 60), CPU {results['idle_cpu_s']:.3f} s over"
        f" {args.idle:g} s idle"
    )


if __name__ == "__main__":
    main()
