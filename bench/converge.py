"""Benchmark of converge-once (issue 2), ratios taken in one run against the raw docker commands.

1. Replace one app's container with a new version (pulled from a registry on loopback) until the new
   version answers HTTP: a whole ``reconcile`` process against the raw sequence
   ``docker pull && docker stop && docker rm && docker run``, same images, alternating rounds.
2. ``reconcile --dry-run`` as a whole process with 50 apps in sync, and the pass inside it.
3. ``reconcile --help`` as a whole process, and the floor under every whole process: the interpreter
   importing the chosen libraries (typer, the docker SDK, GitPython, ruamel.yaml, pydantic) and nothing
   of ours.

Each whole process is also given in CPU seconds (its user + system time, and its children's: git), which
the other work on a shared machine moves far less than the wall-clock time.

Run: ``.venv/bin/python bench/converge.py [--rounds 7] [--apps 50]`` (needs the Docker engine and
docker-registry, as the tests do). It removes what it creates.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import docker.errors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import GitRemote, ImageFactory, Registry, cleanup_run, connect, free_port  # noqa: E402
from tests.support.engine import new_run_prefix  # noqa: E402

RECONCILE = [sys.executable, "-m", "reconciler"]
LIBRARIES = [sys.executable, "-c", "import typer, docker, git, ruamel.yaml, pydantic"]


def cpu_of_children() -> float:
    """User + system seconds of the children waited for so far (and theirs)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def whole_process(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``runs`` runs of ``argv``, each a new process that must exit 0."""
    walls, cpus = [], []
    for _ in range(runs):
        cpu, started = cpu_of_children(), time.monotonic()
        done = subprocess.run(argv, capture_output=True, env=env)
        walls.append(time.monotonic() - started)
        cpus.append(cpu_of_children() - cpu)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited {done.returncode}: {done.stdout.decode()} {done.stderr.decode()}"
            )
    return statistics.median(walls), statistics.median(cpus)


def body_of(url: str) -> str:
    try:
        # A short timeout: a connection accepted while the container starts may hang; ask again instead.
        with urllib.request.urlopen(url, timeout=0.05) as response:
            return str(response.read().decode())
    except (OSError, http.client.HTTPException):
        return ""


def remove_containers(client: Any, names: list[str]) -> None:
    """Best-effort: a container that is already gone is fine."""
    for name in names:
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_container(name, force=True)


def until_body(url: str, body: str, started: float, limit: float = 60.0) -> float:
    """Seconds from ``started`` until ``url`` serves ``body`` (polled every 5 ms)."""
    while time.monotonic() - started < limit:
        if body_of(url) == body:
            return time.monotonic() - started
        time.sleep(0.005)
    raise RuntimeError(f"{url} never served {body!r}")


def app_yaml(name: str, image: str, version: str, port: int, *, healthy_for: str = "500ms") -> str:
    return (
        f"  {name}:\n    image: {image}\n    version: {version}\n    ports: ['127.0.0.1:{port}:8000']\n"
        f"    init: true\n    stop_timeout: 2s\n    health:\n      http: http://127.0.0.1:{port}/health\n"
        f"      interval: 100ms\n      timeout: 20s\n      healthy_for: {healthy_for}\n"
    )


def bench_replace(images: ImageFactory, registry: Registry, work: Path, rounds: int) -> dict[str, Any]:
    client = images.client
    repo = f"{registry.host}/{images.prefix}/bench"
    raw_name, our_name = f"{images.prefix}-raw", f"{images.prefix}-ours"
    raw_port, our_port = free_port(), free_port()
    remote = GitRemote(work / "git")
    state = work / "state"
    env = {**os.environ, "RECONCILE_INSTANCE": f"bench-{images.prefix}"}

    def publish(tag: str) -> None:
        local = images.build("bench-src", tag, body=tag)
        registry.push(local, f"{images.prefix}/bench", tag)
        registry.delete_local(f"{repo}:{tag}")

    def deploy_ours(tag: str) -> tuple[float, float, float]:
        remote.commit_file("desired-state.yaml", "apps:\n" + app_yaml(our_name, repo, tag, our_port), tag)
        cpu, started = cpu_of_children(), time.monotonic()
        process = subprocess.Popen(
            [*RECONCILE, "--repo", str(remote.bare_path), "--state-dir", str(state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        answered = until_body(f"http://127.0.0.1:{our_port}/", tag, started)
        output = process.communicate()[0].decode()
        if process.returncode != 0:
            raise RuntimeError(f"reconcile failed: {output}")
        return answered, time.monotonic() - started, cpu_of_children() - cpu

    def deploy_raw(tag: str, first: bool) -> float:
        ref = f"{repo}:{tag}"
        started = time.monotonic()
        subprocess.run(["docker", "pull", "-q", ref], check=True, capture_output=True)
        if not first:
            subprocess.run(["docker", "stop", raw_name], check=True, capture_output=True)
            subprocess.run(["docker", "rm", raw_name], check=True, capture_output=True)
        subprocess.run(
            ["docker", "run", "-d", "--init", "--name", raw_name, "-p", f"127.0.0.1:{raw_port}:8000", ref],
            check=True,
            capture_output=True,
        )
        return until_body(f"http://127.0.0.1:{raw_port}/", tag, started)

    publish("r0")
    publish("o0")
    deploy_raw("r0", first=True)
    deploy_ours("o0")
    raw, ours, ours_exit, ours_cpu = [], [], [], []
    for index in range(1, rounds + 1):
        publish(f"r{index}")
        publish(f"o{index}")
        raw.append(deploy_raw(f"r{index}", first=False))
        answered, finished, cpu = deploy_ours(f"o{index}")
        ours.append(answered)
        ours_exit.append(finished)
        ours_cpu.append(cpu)
    remove_containers(client, [raw_name, our_name, f"{our_name}.prev"])
    return {
        "raw_s": statistics.median(raw),
        "ours_answering_s": statistics.median(ours),
        "ours_process_exit_s": statistics.median(ours_exit),
        "ours_cpu_s": statistics.median(ours_cpu),
        "ratio": statistics.median(ours) / statistics.median(raw),
        "rounds": [
            f"raw {r:.3f} ours {o:.3f}/{e:.3f} (cpu {c:.3f})"
            for r, o, e, c in zip(raw, ours, ours_exit, ours_cpu, strict=True)
        ],
    }


def bench_dry_run(images: ImageFactory, work: Path, apps: int, runs: int) -> dict[str, float]:
    client = images.client
    image = images.build("bench-dry", "v1")
    repo_name, tag = image.rsplit(":", 1)
    remote = GitRemote(work / "git-dry")
    names = [f"{images.prefix}-d{index:02d}" for index in range(apps)]
    text = "apps:\n" + "".join(
        f"  {name}:\n    image: {repo_name}\n    version: {tag}\n    init: true\n    stop_timeout: 1s\n"
        "    health:\n      healthy_for: 0s\n"
        for name in names
    )
    remote.commit_file("desired-state.yaml", text, "fifty apps")
    state = work / "state-dry"
    env = {**os.environ, "RECONCILE_INSTANCE": f"bench-dry-{images.prefix}"}
    args = ["--repo", str(remote.bare_path), "--state-dir", str(state)]
    try:
        subprocess.run([*RECONCILE, *args], check=True, capture_output=True, env=env)
        # each must exit 0, in sync (2 would be drift)
        process_wall, process_cpu = whole_process([*RECONCILE, "--dry-run", *args], env, runs)
        from reconciler.converge.run import Settings, reconcile_once

        settings = Settings(repo=str(remote.bare_path), state_dir=state, instance=env["RECONCILE_INSTANCE"])
        reconcile_once(settings, dry_run=True)  # warm: imports and the git object cache
        pass_times = []
        for _ in range(runs):
            started = time.monotonic()
            result = reconcile_once(settings, dry_run=True)
            pass_times.append(time.monotonic() - started)
            assert result.plan.in_sync
    finally:
        remove_containers(client, [name + suffix for name in names for suffix in ("", ".prev")])
    return {
        "process_median_s": process_wall,
        "process_cpu_s": process_cpu,
        "pass_median_s": statistics.median(pass_times),
    }


def bench_start(runs: int) -> dict[str, float]:
    """``reconcile --help`` and the libraries alone, as whole processes, taken in turn."""
    help_wall, help_cpu, floor_wall, floor_cpu = [], [], [], []
    for _ in range(runs):
        wall, cpu = whole_process([*RECONCILE, "--help"], dict(os.environ), 1)
        help_wall.append(wall)
        help_cpu.append(cpu)
        wall, cpu = whole_process(LIBRARIES, dict(os.environ), 1)
        floor_wall.append(wall)
        floor_cpu.append(cpu)
    return {
        "help_s": statistics.median(help_wall),
        "help_cpu_s": statistics.median(help_cpu),
        "libraries_s": statistics.median(floor_wall),
        "libraries_cpu_s": statistics.median(floor_cpu),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--apps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    # As an installed reconcile runs: from bytecode. Where PYTHONDONTWRITEBYTECODE is set (these machines)
    # an editable install would otherwise compile every module of ours at every start (~50 ms).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "reconciler")], check=True)
    client = connect()
    prefix = new_run_prefix()
    images = ImageFactory(client, prefix)
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as tmp:
        work = Path(tmp)
        registry = Registry(client, work / "registry").start()
        try:
            replace = bench_replace(images, registry, work, args.rounds)
            print("\n".join(replace.pop("rounds")))
            print(
                f"replace one app until the new version answers HTTP (median of {args.rounds}):\n"
                f"  raw docker pull/stop/rm/run   {replace['raw_s']:.3f} s\n"
                f"  reconcile (answering)         {replace['ours_answering_s']:.3f} s\n"
                f"  reconcile (process exit, after a 500ms healthy_for gate) {replace['ours_process_exit_s']:.3f} s\n"
                f"  reconcile, CPU of the process {replace['ours_cpu_s']:.3f} s\n"
                f"  ratio reconcile/raw           {replace['ratio']:.2f}  (target <= 1.3)"
            )
            dry = bench_dry_run(images, work, args.apps, args.runs)
            print(
                f"reconcile --dry-run, {args.apps} apps in sync (median of {args.runs}):\n"
                f"  whole process                 {dry['process_median_s']:.3f} s  (target <= 0.3)\n"
                f"  CPU of the process            {dry['process_cpu_s']:.3f} s\n"
                f"  the pass inside it            {dry['pass_median_s']:.3f} s  (target <= 0.1)"
            )
            start = bench_start(args.runs)
            print(
                f"start-up, whole processes (median of {args.runs}):\n"
                f"  reconcile --help              {start['help_s']:.3f} s, CPU {start['help_cpu_s']:.3f} s"
                "  (target <= 0.3)\n"
                f"  python importing the libraries alone (the floor under every command)"
                f" {start['libraries_s']:.3f} s, CPU {start['libraries_cpu_s']:.3f} s"
            )
        finally:
            registry.stop()
            cleanup_run(client, prefix, registry_hosts=[registry.host])


if __name__ == "__main__":
    main()
