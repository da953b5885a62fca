"""Benchmark of a weighted rollout (``rollout:``) under load: how fast a bad release is taken out, and how
many requests it saw.

The real proxy (the HAProxy image the tests build), one routed app whose ``v1`` answers every request and
whose ``v2`` answers 5 % of them with a 500 (the test image's ``/cgi-bin/app``). A load of new connections
runs throughout (``--rate`` requests a second in each of ``--threads`` threads). Each round: a commit to
``v2``, a pass (``reconcile_once``) that starts its rollout at ``--weight`` percent, ``--pause`` later a
pass that judges the step and aborts it. Reported per round and overall:

- the share of the step's requests that reached ``v2`` (target: at most its weight), and how many;
- from the start of the judging pass to the start of the last request ``v2`` answered (target: every
  request back on ``v1`` within 1 s of the verdict; the pass's start is before the verdict, so this is an
  upper bound), and the judging pass's own time;
- requests that got no answer (target 0).

Run: ``.venv/bin/python bench/rollout.py [--rounds 3] [--pause 10] [--weight 10] [--json]`` (needs the
Docker engine, busybox-static and haproxy, as the tests do). It removes what it creates and exits 0
whether or not a target is met.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler.converge.run import Settings, reconcile_once  # noqa: E402
from reconciler.core.proxy import proxy_container, proxy_network  # noqa: E402
from reconciler.core.report import Result  # noqa: E402
from tests.support import GitRemote, ImageFactory, cleanup_run, connect, free_port  # noqa: E402
from tests.support.engine import new_run_prefix  # noqa: E402
from tests.support.haproxy import build_haproxy_image  # noqa: E402
from tests.support.load import Load  # noqa: E402

BACK_TARGET_S = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="bad releases rolled out and aborted")
    parser.add_argument("--pause", type=float, default=10.0, help="seconds of the first step")
    parser.add_argument("--weight", type=int, default=10, help="percent of the first step")
    parser.add_argument("--threads", type=int, default=4, help="load threads (a new connection per request)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests a second per thread")
    parser.add_argument("--json", action="store_true", help="also print every figure as one JSON line")
    args = parser.parse_args()
    client = connect()
    prefix = new_run_prefix()
    instance = f"bench-rollout-{prefix}"
    images = ImageFactory(client, prefix)
    app = f"{prefix}-web"
    repo = images.repo("web")
    rounds: list[dict[str, Any]] = []
    try:
        haproxy = build_haproxy_image(client, prefix)
        images.build("web", "v1", body="v1")
        images.build("web", "v2", body="v2", faults=0.05)
        haproxy_repo, _, haproxy_tag = haproxy.rpartition(":")
        with tempfile.TemporaryDirectory(prefix="reconciler-bench-rollout-") as tmp:
            work = Path(tmp)
            port = free_port()
            remote = GitRemote(work / "git")
            settings = Settings(repo=str(remote.bare_path), state_dir=work / "state", instance=instance)

            def commit(version: str) -> None:
                remote.commit_file(
                    "desired-state.yaml",
                    f'proxy:\n  listen: ["127.0.0.1:{port}"]\n  image: {haproxy_repo}\n  version: "{haproxy_tag}"\n'
                    f"apps:\n  {app}:\n    image: {repo}\n    version: {version}\n    init: true\n"
                    "    route: {port: 8000, drain: 0s}\n"
                    "    health: {http: /health, interval: 100ms, timeout: 10s, healthy_for: 200ms}\n"
                    f"    rollout: {{steps: [{{weight: {args.weight}, pause: {args.pause:g}s}}, {{weight: 50,"
                    f" pause: {args.pause:g}s}}], analysis: {{min_requests: 20}}}}\n",
                    version,
                )

            commit("v1")
            assert reconcile_once(settings).ok
            try:
                for _ in range(args.rounds):
                    commit("v2")
                    load = Load(port, path="/cgi-bin/app", threads=args.threads, rate=args.rate, timeout=5.0)
                    with load:
                        time.sleep(0.5)
                        started = reconcile_once(settings)
                        assert any(o.result is Result.ROLLING_OUT for o in started.outcomes), started.outcomes
                        begun = time.monotonic()
                        time.sleep(max(0.0, args.pause + 0.2))
                        judging = time.monotonic()
                        judged = reconcile_once(settings)
                        took = time.monotonic() - judging
                        time.sleep(2.0)
                    aborted = any(o.result is Result.ROLLED_BACK for o in judged.outcomes)
                    hits = load.hits
                    step = [hit for hit in hits if begun <= hit.started <= judging]
                    on_bad = [hit for hit in step if hit.body.endswith("v2")]
                    last_bad = max((hit.started for hit in hits if hit.body.endswith("v2")), default=judging)
                    rounds.append(
                        {
                            "aborted": aborted,
                            "step_requests": len(step),
                            "on_bad": len(on_bad),
                            "share": len(on_bad) / len(step) if step else 0.0,
                            "back_s": max(0.0, last_bad - judging),
                            "judging_pass_s": took,
                            "unanswered": sum(1 for hit in hits if hit.status == 0),
                            "requests": len(hits),
                        }
                    )
            finally:
                with contextlib.suppress(Exception):
                    client.api.remove_container(proxy_container(instance), force=True)
                cleanup_run(client, prefix)
                with contextlib.suppress(Exception):
                    client.api.remove_network(proxy_network(instance))
    finally:
        cleanup_run(client, prefix)
    load_rate = args.threads * args.rate
    print(f"rollout: a release answering 5% 500s, first step {args.weight}% for {args.pause:g} s, {load_rate:g} req/s")
    for index, found in enumerate(rounds, 1):
        print(
            f"  round {index}: aborted={found['aborted']}, {found['on_bad']} of the step's {found['step_requests']}"
            f" requests reached it ({100 * found['share']:.1f}%, weight {args.weight}%); all back on v1"
            f" {found['back_s']:.2f} s after the judging pass began (that pass took {found['judging_pass_s']:.2f} s);"
            f" {found['unanswered']} of {found['requests']} unanswered"
        )
    if rounds:
        back = max(found["back_s"] for found in rounds)
        share = max(found["share"] for found in rounds)
        print(
            f"  worst: back on v1 within {back:.2f} s (target <= {BACK_TARGET_S:g} s:"
            f" {'met' if back <= BACK_TARGET_S else 'MISSED'}); share {100 * share:.1f}% (target <= {args.weight}%:"
            f" {'met' if share <= args.weight / 100 else 'MISSED'}); median share"
            f" {100 * statistics.median(found['share'] for found in rounds):.1f}%"
        )
    if args.json:
        print(json.dumps({"rounds": rounds, "weight": args.weight, "pause": args.pause}, sort_keys=True))


if __name__ == "__main__":
    main()
