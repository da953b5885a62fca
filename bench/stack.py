"""Benchmark of stacks (issue 20): whole ``reconcile`` processes on the real engine.

1. A ``depends_on`` chain of 3 apps (c needs b, b needs a) from an empty host, each gated by an exec probe
   that passes at once and must stay healthy ``--healthy-for`` (default 1 s). The chain's gates run one after
   another, so the floor is 3 x healthy_for; target: the whole process takes at most the sum of the chain's
   gates + 2 s. Each app's deploy (create to verdict, from the journal) is shown too.
2. 20 independent apps from an empty host (``bench/parallel.py``'s case, with the stack code): target <= 15 s.
3. A release command's overhead: v1 -> v2 of an app whose release command is ``sleep 1``, against the same
   deploy without one; overhead = (with - without) - 1 s, the median and the worst of ``--runs``; target
   <= 0.5 s.

Each run has its own instance, state directory and git remote; what it made (containers, networks) is
removed after it, and the images at the end.

Run: ``.venv/bin/python bench/stack.py [--runs 5] [--healthy-for 1]`` (needs the Docker engine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.parallel import clear, clear_networks  # noqa: E402
from bench.parallel import run as run_parallel  # noqa: E402
from tests.support import GitRemote, ImageFactory, cleanup_run, connect  # noqa: E402
from tests.support.engine import new_run_prefix  # noqa: E402

RECONCILE = [sys.executable, "-m", "reconciler"]


def app(name: str, image: str, version: str, healthy_for: float, extra: str = "") -> str:
    return (
        f"  {name}:\n    image: {image}\n    version: {version}\n"
        '    command: ["sleep", "3600"]\n    init: true\n    stop_timeout: 1s\n'
        f'    health: {{exec: ["true"], interval: 100ms, timeout: 30s, healthy_for: {int(healthy_for * 1000)}ms}}\n'
        + extra
    )


class Run:
    """One instance's git remote and state directory, and its ``reconcile`` processes."""

    def __init__(self, images: ImageFactory, work: Path, label: str) -> None:
        self.images, self.label = images, label
        self.remote = GitRemote(work / f"git-{label}")
        self.state = work / f"state-{label}"
        self.env = {**os.environ, "RECONCILE_INSTANCE": f"bench-{images.prefix}-{label}"}

    def commit(self, text: str) -> None:
        self.remote.commit_file("desired-state.yaml", "apps:\n" + text, self.label)

    def reconcile(self) -> float:
        args = ["--repo", str(self.remote.bare_path), "--state-dir", str(self.state)]
        started = time.monotonic()
        done = subprocess.run([*RECONCILE, *args], capture_output=True, text=True, env=self.env)
        took = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"{self.label}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return took

    def history(self) -> list[dict[str, Any]]:
        done = subprocess.run(
            [*RECONCILE, "history", "--state-dir", str(self.state), "-o", "json"],
            capture_output=True, text=True, env=self.env, check=True,
        )  # fmt: skip
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows


def chain(images: ImageFactory, work: Path, healthy_for: float) -> tuple[float, dict[str, float]]:
    prefix, image = images.prefix, images.repo("tiny")
    a, b, c = (f"{prefix}-chain-{x}" for x in "abc")
    run = Run(images, work, "chain")
    run.commit(
        app(c, image, "v1", healthy_for, f"    depends_on: [{b}]\n")
        + app(b, image, "v1", healthy_for, f"    depends_on: [{a}]\n")
        + app(a, image, "v1", healthy_for)
    )
    try:
        took = run.reconcile()
        deploys = {row["app"]: row["finished_at"] - row["started_at"] for row in run.history()}
        return took, deploys
    finally:
        clear(images.client, prefix)
        clear_networks(images.client, prefix)


def release(images: ImageFactory, work: Path, runs: int, healthy_for: float) -> tuple[list[float], list[float]]:
    prefix, image = images.prefix, images.repo("tiny")
    timed: dict[bool, list[float]] = {True: [], False: []}
    for index in range(runs):
        for with_command in (False, True):
            name = f"{prefix}-rel-{index}-{int(with_command)}"
            run = Run(images, work, f"rel-{index}-{int(with_command)}")
            extra = '    release: {command: ["sleep", "1"]}\n' if with_command else ""
            try:
                run.commit(app(name, image, "v1", healthy_for, extra))
                run.reconcile()
                run.commit(app(name, image, "v2", healthy_for, extra))
                timed[with_command].append(run.reconcile())
            finally:
                clear(images.client, prefix)
                clear_networks(images.client, prefix)
    return timed[True], timed[False]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="deploys with and without a release command")
    parser.add_argument("--healthy-for", type=float, default=1.0, help="each chain app's healthy_for, seconds")
    parser.add_argument("--apps", type=int, default=20)
    args = parser.parse_args()
    client = connect()
    prefix = new_run_prefix()
    images = ImageFactory(client, prefix)
    for tag in ("v1", "v2"):
        images.build("tiny", tag)
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as tmp:
        work = Path(tmp)
        try:
            took, deploys = chain(images, work, args.healthy_for)
            gates = 3 * args.healthy_for
            summed = sum(deploys.values())
            print(
                f"chain of 3 from empty            {took:6.2f} s  (3 gates of healthy_for {args.healthy_for:g} s ="
                f" {gates:g} s; + 2 s = {gates + 2:g} s: {'PASS' if took <= gates + 2 else 'MISS'})",
                flush=True,
            )
            print(
                "  each deploy, create to verdict: "
                + ", ".join(f"{name.rsplit('-', 1)[1]} {seconds:.2f} s" for name, seconds in sorted(deploys.items()))
                + f" (sum {summed:.2f} s; the process beyond them: {took - summed:.2f} s)",
                flush=True,
            )
            parallel = run_parallel(images, work, "parallel", args.apps, None)
            print(
                f"{args.apps} independent apps from empty  {parallel:6.2f} s  (target <= 15 s:"
                f" {'PASS' if parallel <= 15 else 'MISS'})",
                flush=True,
            )
            with_command, without = release(images, work, args.runs, 0.2)
            overheads = sorted(w - wo - 1.0 for w, wo in zip(with_command, without, strict=True))
            median = statistics.median(overheads)
            print(
                f"release command overhead         {median:6.2f} s median, {overheads[-1]:.2f} s worst of {args.runs}"
                f" (deploy v1 -> v2: {statistics.median(without):.2f} s without, {statistics.median(with_command):.2f}"
                f" s with `sleep 1`; target <= 0.5 s: {'PASS' if overheads[-1] <= 0.5 else 'MISS'})",
                flush=True,
            )
        finally:
            clear_networks(client, prefix)
            cleanup_run(client, prefix)


if __name__ == "__main__":
    main()
