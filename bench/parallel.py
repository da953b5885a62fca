"""Benchmark of concurrent deploys (issue 8): a whole ``reconcile`` process deploying many apps from empty.

1. 20 apps from an empty host, no ``health:`` (so each is gated by the default "running, no restart,
   for 5 s"): with ``--parallel 1`` (the serial pass of before) and with the default. Target: <= 15 s.
2. 200 apps from an empty host, the default ``--parallel``. Target: <= 10 x the 20-app time.

The apps are tiny (busybox ``sleep``, ``init: true``, no host port), each run has its own instance,
state directory and git remote, and everything is removed after each run and at the end.

Run: ``.venv/bin/python bench/parallel.py [--apps 20] [--many 200]`` (needs the Docker engine).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker.errors  # noqa: E402

from bench.converge import remove_containers  # noqa: E402
from tests.support import GitRemote, ImageFactory, cleanup_run, connect  # noqa: E402
from tests.support.engine import new_run_prefix  # noqa: E402

RECONCILE = [sys.executable, "-m", "reconciler"]


def file_of(names: list[str], image: str) -> str:
    lines = ["apps:"]
    for name in names:
        lines += [
            f"  {name}:",
            f"    image: {image}",
            "    version: v1",
            '    command: ["sleep", "3600"]',
            "    init: true",
            "    stop_timeout: 1s",
        ]
    return "\n".join(lines) + "\n"


def clear(client: Any, prefix: str) -> None:
    """Remove every container of this run (several at once: 200 one by one take a while)."""
    names = [str(row["Names"][0]).lstrip("/") for row in client.api.containers(all=True) if row.get("Names")]
    ours = [name for name in names if name.startswith(prefix)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: remove_containers(client, [name]), ours))


def clear_networks(client: Any, prefix: str) -> None:
    """Remove the networks of this run's instances (``reconciler-bench-PREFIX-...``), once their containers are gone."""
    for network in client.api.networks():
        if f"bench-{prefix}" in str(network.get("Name", "")):
            remove_network(client, network["Id"])


def remove_network(client: Any, network_id: str) -> None:
    with contextlib.suppress(docker.errors.APIError):  # gone, or still in use: `docker network ls` says what is left
        client.api.remove_network(network_id)


def run(images: ImageFactory, work: Path, label: str, count: int, parallel: int | None) -> float:
    """Seconds of one whole ``reconcile`` process that deploys ``count`` apps from empty."""
    client, prefix = images.client, images.prefix
    names = [f"{prefix}-{label}-{index:03d}" for index in range(count)]
    remote = GitRemote(work / f"git-{label}")
    remote.commit_file("desired-state.yaml", file_of(names, images.repo("tiny")), f"{count} apps")
    args = ["--repo", str(remote.bare_path), "--state-dir", str(work / f"state-{label}")]
    if parallel is not None:
        args += ["--parallel", str(parallel)]
    env = {**os.environ, "RECONCILE_INSTANCE": f"bench-{prefix}-{label}"}
    try:
        started = time.monotonic()
        done = subprocess.run([*RECONCILE, *args], capture_output=True, text=True, env=env)
        took = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"{label}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        running = sum(1 for row in client.api.containers() if str(row["Names"][0]).lstrip("/") in set(names))
        if running != count:
            raise RuntimeError(f"{label}: {running} of {count} apps running")
        return took
    finally:
        clear(client, prefix)
        clear_networks(client, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=20)
    parser.add_argument("--many", type=int, default=200)
    parser.add_argument("--no-serial", action="store_true", help="skip the --parallel 1 run (it takes ~110 s)")
    parser.add_argument("--no-many", action="store_true", help="skip the --many run")
    args = parser.parse_args()
    client = connect()
    prefix = new_run_prefix()
    images = ImageFactory(client, prefix)
    images.build("tiny", "v1")
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as tmp:
        work = Path(tmp)
        try:
            if not args.no_serial:
                serial = run(images, work, "serial", args.apps, 1)
                print(f"{args.apps} apps from empty, --parallel 1 (before)   {serial:6.1f} s", flush=True)
            parallel = run(images, work, "parallel", args.apps, None)
            print(
                f"{args.apps} apps from empty, default --parallel      {parallel:6.1f} s  (target <= 15 s)", flush=True
            )
            if args.no_many:
                return
            many = run(images, work, "many", args.many, None)
            print(
                f"{args.many} apps from empty, default --parallel     {many:6.1f} s  "
                f"({many / parallel:.1f} x the {args.apps}-app time; target <= {args.many // args.apps} x)"
            )
        finally:
            cleanup_run(client, prefix)


if __name__ == "__main__":
    main()
