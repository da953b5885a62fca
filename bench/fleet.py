"""Benchmark of a fleet from one place (issue 11): preview, status and a push rollout over many engines.

Ten more real ``dockerd`` processes on this machine (``tests/support/engines.py``), each a host of one
committed file with 20 tiny apps (busybox ``sleep``, ``init: true``, no host port):

1. ``reconcile --dry-run --all-hosts`` with every host in sync: the whole process, median of
   ``--repeat`` runs. Target: <= 1.5 s.
2. ``reconcile status --all-hosts --host-timeout 2`` while one engine does not answer: its dockerd is
   stopped with SIGSTOP, so its socket still accepts and nothing answers (the worst case: a refused
   connection fails at once). Target: <= the host timeout + 0.5 s.
3. A push rollout of a release that changes ``--changed`` apps of each host (v1 -> v2; the rest in sync):
   to one host (``--rollout e01``), then to all ten with ``--parallel 5``. Target: ten hosts / one host
   <= 2.5. Twice: with the default gate (no ``health:``: running, no restart, for 5 s) and with a 1 s
   one (``healthy_for: 1s``). All the engines share this machine's CPUs, which a real fleet does not:
   the shorter the gate, the more the figure measures 50 container replacements on 2 cores.

Run: ``.venv/bin/python bench/fleet.py [--engines 10] [--apps 20] [--changed 2] [--repeat 5]`` (as root,
with the Docker engine up; it removes what it made, engines included).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import GitRemote, ImageFactory, cleanup_run, connect  # noqa: E402
from tests.support.engine import new_run_prefix  # noqa: E402
from tests.support.engines import ExtraEngine, load_image, start_engines, stop_engines  # noqa: E402

RECONCILE = [sys.executable, "-m", "reconciler"]


def fleet_file(
    engines: list[ExtraEngine], repo: str, apps: int, version: str, changed: int | None = None, gate: str = "1s"
) -> str:
    """``apps`` apps on every host; the first ``changed`` (default: all) at ``version``, the rest at v1;
    gated ``healthy_for: GATE``, or by the default gate when ``gate`` is "default"."""
    lines = ["hosts:"]
    lines += [f'  e{index:02d}: {{engine: "{engine.host}"}}' for index, engine in enumerate(engines, start=1)]
    lines.append("apps:")
    for index in range(apps):
        lines += [
            f"  app{index:02d}:",
            f"    image: {repo}",
            f"    version: {version if changed is None or index < changed else 'v1'}",
            '    command: ["sleep", "3600"]',
            "    init: true",
            "    stop_timeout: 1s",
        ]
        if gate != "default":
            lines.append(f"    health: {{interval: 200ms, healthy_for: {gate}, timeout: 20s}}")
    return "\n".join(lines) + "\n"


def reconcile(args: list[str], env: dict[str, str], *, ok: tuple[int, ...] = (0,)) -> float:
    """Seconds of one whole ``reconcile`` process; its exit code must be one of ``ok``."""
    started = time.monotonic()
    done = subprocess.run([*RECONCILE, *args], capture_output=True, text=True, env=env, timeout=900)
    took = time.monotonic() - started
    if done.returncode not in ok:
        raise RuntimeError(f"reconcile {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=10)
    parser.add_argument("--apps", type=int, default=20)
    parser.add_argument("--changed", type=int, default=2, help="apps of each host a pushed release changes")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    client = connect()
    prefix = new_run_prefix()
    images = ImageFactory(client, prefix)
    refs = [images.build("tiny", tag) for tag in ("v1", "v2")]
    repo = refs[0].rpartition(":")[0]
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as tmp:
        work = Path(tmp)
        engines = start_engines(prefix, args.engines, work / "engines")
        try:
            for engine in engines:
                for ref in refs:
                    load_image(client, engine, ref)
            remote = GitRemote(work / "git")
            env = {**os.environ, "RECONCILE_INSTANCE": f"bench-{prefix}"}
            common = ["--repo", str(remote.bare_path), "--state-dir", str(work / "state")]
            remote.commit_file("desired-state.yaml", fleet_file(engines, repo, args.apps, "v1"), "v1")
            reconcile([*common, "--all-hosts", "--parallel", "5"], env)
            total = args.engines * args.apps

            previews = [reconcile([*common, "--dry-run", "--all-hosts"], env) for _ in range(args.repeat)]
            print(
                f"--dry-run --all-hosts, {args.engines} engines x {args.apps} apps in sync ({total} containers): "
                f"median {statistics.median(previews):.2f} s, max {max(previews):.2f} s of {args.repeat} "
                "(target <= 1.5 s)",
                flush=True,
            )

            hung = engines[-1]
            pid = int(hung.pidfile.read_text().strip())
            os.kill(pid, signal.SIGSTOP)
            try:
                statuses = [
                    reconcile([*common, "status", "--all-hosts", "--host-timeout", "2"], env, ok=(1,))
                    for _ in range(args.repeat)
                ]
            finally:
                os.kill(pid, signal.SIGCONT)
            print(
                f"status --all-hosts --host-timeout 2, one engine stopped (SIGSTOP): median "
                f"{statistics.median(statuses):.2f} s, max {max(statuses):.2f} s (target <= 2.5 s)",
                flush=True,
            )

            push = [*common, "--all-hosts", "--parallel", "5"]
            for gate in ("default", "1s"):

                def release(version: str, message: str, gate: str = gate) -> None:
                    text = fleet_file(engines, repo, args.apps, version, changed=args.changed, gate=gate)
                    remote.commit_file("desired-state.yaml", text, message)

                release("v1", f"v1, {gate} gate")
                reconcile(push, env)
                release("v2", "v2")
                one = reconcile([*push, "--rollout", "e01"], env)
                # Every host v1 -> v2 next: e01 back to v1 first, so that it has the same work as the others.
                release("v1", "v1 again")
                reconcile([*push, "--rollout", "e01"], env)
                release("v2", "v2 again")
                every = reconcile(push, env)
                print(
                    f"push rollout v1 -> v2 of {args.changed} of {args.apps} apps per host, {gate} gate: one host "
                    f"{one:.1f} s, {args.engines} hosts with --parallel 5 {every:.1f} s: {every / one:.2f} x "
                    "(target <= 2.5)",
                    flush=True,
                )
        finally:
            problems = stop_engines(engines)
            if problems:
                print("cleanup:", *problems, sep="\n  ", file=sys.stderr)
            cleanup_run(client, prefix)


if __name__ == "__main__":
    main()
