"""Benchmark of certificates by ACME: a route's new host -> its first HTTPS answer with a fresh certificate.

A real ACME server (Debian's pebble, with pebble-challtestsrv answering every name with 127.0.0.1,
``PEBBLE_VA_NOSLEEP=1``) and the real proxy (the HAProxy image the tests build). One routed app is deployed
first, with a certificate for its first host. Then, N times: a commit adds a host to the app's route, and
the clock starts as ``reconcile_once`` is called; a prober asks HTTPS for the new name (SNI) every 10 ms
until the answer is 200 with a certificate that verifies against pebble's root for that name. Reported:
p50 and max of that time (target <= 5 s), and the pass's own time.

Also: ``--renewals N`` renewals under a steady HTTPS load (renewal forced by the record's renewal time),
with the requests that failed (target 0) and whether the proxy restarted (it must not).

Run: ``.venv/bin/python bench/certificates.py [--rounds 5] [--renewals 3] [--json]`` (needs the Docker engine,
busybox-static, haproxy and pebble, as the tests do). It removes what it creates; it exits 0 whether or
not a target is met.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler.converge.run import Settings, reconcile_once  # noqa: E402
from reconciler.core.proxy import proxy_container, proxy_network  # noqa: E402
from tests.support import GitRemote, ImageFactory, cleanup_run, connect, free_port  # noqa: E402
from tests.support.engine import new_run_prefix  # noqa: E402
from tests.support.haproxy import build_haproxy_image  # noqa: E402
from tests.support.load import Load  # noqa: E402
from tests.support.pebble import Pebble  # noqa: E402

TARGET_S = 5.0


def https_ok(port: int, host: str, root: str) -> bool:
    """Whether HTTPS for ``host`` answers 200 with a certificate that verifies against ``root`` for that name."""
    context = ssl.create_default_context(cadata=root)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            head = tls.recv(64)
            return head.startswith(b"HTTP/1.1 200")
    except (OSError, ssl.SSLError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="hosts added, one commit and one pass each")
    parser.add_argument("--renewals", type=int, default=3, help="renewals forced under load")
    parser.add_argument("--json", action="store_true", help="also print every figure as one JSON line")
    args = parser.parse_args()
    client = connect()
    prefix = new_run_prefix()
    instance = f"bench-acme-{prefix}"
    images = ImageFactory(client, prefix)
    repo = images.repo("web")
    results: dict[str, Any] = {"added_s": [], "pass_s": [], "renewals": []}
    try:
        haproxy = build_haproxy_image(client, prefix)
        images.build("web", "v1", body="v1")
        haproxy_repo, _, haproxy_tag = haproxy.rpartition(":")
        with tempfile.TemporaryDirectory(prefix="reconciler-bench-acme-") as tmp:
            work = Path(tmp)
            plain, secure = free_port(), free_port()
            server = Pebble(work / "pebble", plain)
            try:
                remote = GitRemote(work / "git")
                settings = Settings(repo=str(remote.bare_path), state_dir=work / "state", instance=instance)

                def commit(hosts: list[str]) -> None:
                    text = (
                        f'proxy:\n  listen: ["127.0.0.1:{plain}", "127.0.0.1:{secure}"]\n  image: {haproxy_repo}\n'
                        f'  version: "{haproxy_tag}"\n  tls: {{ports: [{secure}], acme: {{email: ops@example.com,'
                        f" directory: '{server.directory}', ca_file: {server.ca_file}}}}}\n"
                        f"apps:\n  {prefix}-web:\n    image: {repo}\n    version: v1\n    init: true\n"
                        f"    route: {{port: 8000, drain: 0s, hosts: [{', '.join(hosts)}]}}\n"
                        "    health: {http: /health, interval: 100ms, timeout: 10s, healthy_for: 200ms}\n"
                    )
                    remote.commit_file("desired-state.yaml", text, f"{len(hosts)} hosts")

                hosts = ["shop.test"]
                commit(hosts)
                first = reconcile_once(settings)
                assert first.ok and not first.cert_errors, (first.outcomes, first.cert_errors)
                root = server.root()
                for index in range(args.rounds):
                    host = f"new{index}.shop.test"
                    hosts.append(host)
                    commit(hosts)
                    seen: list[float] = []
                    stop = threading.Event()

                    def probe(host: str = host, seen: list[float] = seen, stop: threading.Event = stop) -> None:
                        while not stop.is_set():
                            if https_ok(secure, host, root):
                                seen.append(time.monotonic())
                                return
                            time.sleep(0.01)

                    prober = threading.Thread(target=probe, daemon=True)
                    started = time.monotonic()
                    prober.start()
                    result = reconcile_once(settings)
                    passed = time.monotonic() - started
                    prober.join(30)
                    stop.set()
                    if result.cert_errors or not seen:
                        print(f"round {index}: no certificate: {result.cert_errors}", file=sys.stderr)
                        continue
                    results["added_s"].append(seen[0] - started)
                    results["pass_s"].append(passed)
                proxy_started = client.api.inspect_container(proxy_container(instance))["State"]["StartedAt"]
                records = sorted((work / "state" / "acme").rglob("shop.test.json"))
                for _ in range(args.renewals):
                    record = json.loads(records[0].read_text())
                    records[0].write_text(json.dumps({**record, "renew_at": 1.0}))
                    with Load(secure, tls=True, host_header="shop.test", threads=2, keepalive_threads=2) as load:
                        time.sleep(0.3)
                        result = reconcile_once(settings)
                        time.sleep(0.3)
                    hits = load.stop()
                    renewed = any("shop.test: renewed" in line for line in result.proxy)
                    failed = sum(1 for hit in hits if hit.status != 200)
                    results["renewals"].append({"renewed": renewed, "requests": len(hits), "failed": failed})
                results["proxy_restarted"] = (
                    client.api.inspect_container(proxy_container(instance))["State"]["StartedAt"] != proxy_started
                )
            finally:
                server.close()
                with contextlib.suppress(Exception):
                    client.api.remove_container(proxy_container(instance), force=True)
                cleanup_run(client, prefix)
                with contextlib.suppress(Exception):
                    client.api.remove_network(proxy_network(instance))
    finally:
        cleanup_run(client, prefix)
    added, passes = results["added_s"], results["pass_s"]
    print("ACME: a route's new host -> first HTTPS answer with a fresh certificate from pebble")
    if added:
        p50, worst = statistics.median(added), max(added)
        met = "met" if worst <= TARGET_S else "MISSED"
        print(f"  {len(added)} hosts: p50 {p50:.2f} s, max {worst:.2f} s (target <= {TARGET_S:.0f} s: {met})")
        print(f"  the pass that ordered it: p50 {statistics.median(passes):.2f} s, max {max(passes):.2f} s")
    for index, renewal in enumerate(results["renewals"]):
        print(f"  renewal {index + 1} under load: renewed={renewal['renewed']}, {renewal['requests']} requests,"
              f" {renewal['failed']} failed")  # fmt: skip
    print(f"  proxy restarted: {results.get('proxy_restarted')}")
    if args.json:
        print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
