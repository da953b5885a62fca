"""Benchmark of replicated apps (issue 12) on a real two-node swarm (``tests/support/swarm.py``).

1. ``reconcile --dry-run`` with 20 services in sync (one task each, busybox ``sleep``): the whole
   process, median of ``--repeat``. Target: <= 0.8 s.
2. A service of 4 replicas (``parallelism: 2``, ``healthy_for: 1s``): a good rollout v1 -> v2 (the whole
   ``reconcile`` process, until every task runs v2 for ``healthy_for``), then a failed one v2 -> bad
   (a release that exits at start) until every task is back on v2 and the process has said so. Target:
   the failed rollout <= 2 x the good one.
3. A routed service of 4 replicas behind the proxy (``route:``, ``update: {parallelism: 1}``), under a
   constant load of new connections and keep-alive ones through the proxy: ``--rollouts`` rolling
   updates v1 <-> v2, start-first, then as many stop-first. Target: 0 failed requests.

Run: ``.venv/bin/python bench/services.py [--services 20] [--repeat 5]`` (as root, with the Docker engine
up; it removes what it made, the swarm included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleet import reconcile  # noqa: E402
from tests.support import GitRemote, ImageFactory, cleanup_run, connect  # noqa: E402
from tests.support.engine import new_run_prefix  # noqa: E402
from tests.support.haproxy import build_haproxy_image  # noqa: E402
from tests.support.load import Load, failed, summary  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.swarm import start_swarm, stop_swarm  # noqa: E402


def services_file(repo: str, count: int) -> str:
    lines = ["apps:"]
    for index in range(count):
        lines += [
            f"  svc{index:02d}:",
            f"    image: {repo}",
            "    version: v1",
            "    replicas: 1",
            '    command: ["sleep", "3600"]',
            "    init: true",
            "    stop_timeout: 1s",
            "    health: {interval: 200ms, healthy_for: 200ms}",
        ]
    return "\n".join(lines) + "\n"


def api_file(repo: str, version: str) -> str:
    return (
        f"apps:\n  api:\n    image: {repo}\n    version: {version}\n    replicas: 4\n    init: true\n"
        "    stop_timeout: 1s\n    update: {parallelism: 2}\n"
        '    health: {exec: [wget, -q, -O, /dev/null, "http://127.0.0.1:8000/health"], interval: 200ms,'
        " healthy_for: 1s, timeout: 30s}\n"
    )


def routed_file(repo: str, version: str, proxy: str, order: str) -> str:
    return (
        f"{proxy}apps:\n  api:\n    image: {repo}\n    version: {version}\n    replicas: 4\n    init: true\n"
        f"    stop_timeout: 1s\n    update: {{parallelism: 1, order: {order}}}\n    route: {{port: 8000}}\n"
        "    health: {http: /health, interval: 200ms, healthy_for: 1s, timeout: 30s}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rollouts", type=int, default=5)
    args = parser.parse_args()
    client = connect()
    prefix = new_run_prefix()
    images = ImageFactory(client, prefix)
    refs = [images.build("svc", tag) for tag in ("v1", "v2")]
    refs.append(images.build("svc", "bad", exit_at_start=True))
    repo = refs[0].rpartition(":")[0]
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as tmp:
        work = Path(tmp)
        swarm = start_swarm(prefix, 1, work / "swarm")
        try:
            for ref in refs:
                swarm.load_image(ref)
            env = {**os.environ, "RECONCILE_INSTANCE": f"bench-{prefix}"}
            many = GitRemote(work / "many")
            many.commit_file("desired-state.yaml", services_file(repo, args.services), "services")
            common = ["--repo", str(many.bare_path), "--state-dir", str(work / "state-many")]
            common += ["--docker-host", swarm.manager.host]
            reconcile(common, env)
            previews = [reconcile([*common, "--dry-run"], env) for _ in range(args.repeat)]
            print(
                f"--dry-run, {args.services} services in sync: median {statistics.median(previews):.2f} s, "
                f"max {max(previews):.2f} s of {args.repeat} (target <= 0.8 s)",
                flush=True,
            )
            many.commit_file("desired-state.yaml", "apps: {}\n", "none")
            reconcile(common, env)  # prunes them

            one = GitRemote(work / "api")
            api = ["--repo", str(one.bare_path), "--state-dir", str(work / "state-api")]
            api += ["--docker-host", swarm.manager.host]
            one.commit_file("desired-state.yaml", api_file(repo, "v1"), "v1")
            reconcile(api, env)
            one.commit_file("desired-state.yaml", api_file(repo, "v2"), "v2")
            good = reconcile(api, env)
            one.commit_file("desired-state.yaml", api_file(repo, "bad"), "bad")
            bad = reconcile(api, env, ok=(1,))
            tasks = swarm.manager.client.api.tasks(filters={"service": "api", "desired-state": "running"})
            images_now = {t["Spec"]["ContainerSpec"]["Image"].rpartition(":")[2] for t in tasks}
            assert images_now == {"v2"}, images_now
            print(
                f"4 replicas, parallelism 2: good rollout v1 -> v2 {good:.1f} s; failed rollout v2 -> bad until every"
                f" task is back on v2 {bad:.1f} s: {bad / good:.2f} x (target <= 2)",
                flush=True,
            )
            one.commit_file("desired-state.yaml", "apps: {}\n", "none")
            reconcile(api, env)

            haproxy = build_haproxy_image(client, prefix)
            swarm.load_image(haproxy)
            proxy_repo, _, proxy_tag = haproxy.rpartition(":")
            port = free_port()
            proxy = f'proxy:\n  listen: ["{swarm.manager.address}:{port}"]\n  image: {proxy_repo}\n'
            proxy += f'  version: "{proxy_tag}"\n'
            routed = GitRemote(work / "routed")
            served = ["--repo", str(routed.bare_path), "--state-dir", str(work / "state-routed")]
            served += ["--docker-host", swarm.manager.host]
            for order in ("start-first", "stop-first"):
                routed.commit_file("desired-state.yaml", routed_file(repo, "v1", proxy, order), order)
                reconcile(served, env)
                load = Load(port, host=str(swarm.manager.address), threads=4, keepalive_threads=2, rate=50).start()
                try:
                    took = []
                    for index in range(args.rollouts):
                        version = "v2" if index % 2 == 0 else "v1"
                        routed.commit_file("desired-state.yaml", routed_file(repo, version, proxy, order), version)
                        took.append(reconcile(served, env))
                finally:
                    hits = load.stop()
                each = statistics.median(took)
                print(
                    f"routed, 4 replicas, {order}: {args.rollouts} rolling updates (median {each:.1f} s each) under"
                    f" load: {len(failed(hits))} failed of {len(hits)} requests (target 0);"
                    f" {summary(hits)}",
                    flush=True,
                )
            routed.commit_file("desired-state.yaml", "apps: {}\n", "none")
            reconcile(served, env)
        finally:
            problems = stop_swarm(swarm)
            if problems:
                print("cleanup:", *problems, sep="\n  ", file=sys.stderr)
            cleanup_run(client, prefix)


if __name__ == "__main__":
    main()
