"""The agent's HTTP listener with real parts: push webhooks, /metrics scraped by a real Prometheus, /healthz.

What a user sees: with the repository followed by URL (mirrored, so only a fetch sees a push) and a 60 s
interval, a signed GitHub, GitLab or Gitea push hook deploys at once; a wrong signature is 401, logged
once, and fetches nothing; another branch is acknowledged and ignored; a flood of valid hooks is
rate-limited and runs at most two passes; /metrics counts the deploy (and Prometheus reads it back
from its own API); /healthz answers while the loop is alive; the secret is never printed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess, World, wait_body
from tests.support.net import free_port, http_request

pytestmark = pytest.mark.docker

SECRET = b"s3cr3t-hook-token-do-not-print"


def start_agent(world: World, port: int) -> AgentProcess:
    secret = world.tmp / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")
    return world.agent(
        "--listen", f"127.0.0.1:{port}", "--webhook-secret-file", str(secret), repo=f"file://{world.repo}"
    )


def hook(port: int, provider: str, payload: dict[str, object], *, secret: bytes = SECRET, event: str = "push") -> int:
    body = json.dumps(payload).encode()
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    headers = {
        "github": {"X-GitHub-Event": event, "X-Hub-Signature-256": f"sha256={digest}"},
        "gitea": {"X-Gitea-Event": event, "X-Gitea-Signature": digest},
        "gitlab": {"X-Gitlab-Event": "Push Hook" if event == "push" else event, "X-Gitlab-Token": secret.decode()},
    }[provider]
    status, _ = post(port, f"/hooks/{provider}", body, headers)
    return status


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def metric(port: int, name: str, **labels: str) -> float | None:
    text = http_request(f"http://127.0.0.1:{port}/metrics").body
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.parametrize("provider", ["github", "gitlab", "gitea"])
def test_a_signed_push_hook_deploys_at_once_and_a_wrong_one_fetches_nothing(world: World, provider: str) -> None:
    web = world.app()
    world.commit_apps("v1")
    port = free_port()
    agent = start_agent(world, port)
    agent.wait_for("deploy.succeeded", app=web.name, timeout=60)
    world.set(web.name, "v2")
    mark = agent.mark()
    assert hook(port, provider, {"ref": "refs/heads/main"}, secret=b"wrong") == 401
    assert hook(port, provider, {"ref": "refs/heads/main"}, secret=b"wrong") == 401
    assert hook(port, provider, {"ref": "refs/heads/other"}) == 202  # another branch: ignored
    assert hook(port, provider, {"zen": "hi"}, event="ping") == 202
    time.sleep(1.0)
    assert not agent.events("commit.seen", since=mark), agent.log()  # nothing fetched on any of those
    assert len(agent.events("webhook.refused", since=mark)) == 1, agent.log()  # once per source
    started = time.monotonic()
    assert hook(port, provider, {"ref": "refs/heads/main"}) == 202
    wait_body(web.port, "v2", timeout=30, agent=agent)
    took = time.monotonic() - started
    assert took < 15, took  # at once, not at the 60 s interval; the figure is bench/webhooks.py's
    assert SECRET.decode() not in agent.log()


def test_a_flood_of_hooks_is_rate_limited_and_runs_at_most_two_passes(world: World) -> None:
    web = world.app()
    world.commit_apps("v1")
    port = free_port()
    agent = start_agent(world, port)
    agent.wait_for("deploy.succeeded", app=web.name, timeout=60)
    time.sleep(0.5)
    before = metric(port, "reconciler_pass_duration_seconds_count") or 0
    world.set(web.name, "v2")
    statuses = [hook(port, "github", {"ref": "refs/heads/main"}) for _ in range(200)]
    assert statuses.count(202) >= 1 and statuses.count(429) > 100, statuses
    wait_body(web.port, "v2", timeout=30, agent=agent)
    time.sleep(1.5)
    passes = (metric(port, "reconciler_pass_duration_seconds_count") or 0) - before
    assert 1 <= passes <= 2, passes
    assert (metric(port, "reconciler_webhooks_total", provider="github", result="rate-limited") or 0) > 100


def test_metrics_and_healthz_and_a_real_prometheus_reads_a_deploy_counter(world: World, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "no prometheus: apt-get install -y prometheus"
    web = world.app()
    world.commit_apps("v1")
    port = free_port()
    agent = start_agent(world, port)
    agent.wait_for("deploy.succeeded", app=web.name, timeout=60)
    health = http_request(f"http://127.0.0.1:{port}/healthz")
    assert health.status == 200 and json.loads(health.body)["status"] == "ok", health
    text = http_request(f"http://127.0.0.1:{port}/metrics").body
    assert metric(port, "reconciler_deploys_total", app=web.name, result="succeeded") == 1.0, text
    assert metric(port, "reconciler_app_info", app=web.name, version="v1") == 1.0, text
    assert metric(port, "reconciler_app_healthy", app=web.name) == 1.0, text
    assert metric(port, "reconciler_engine_up") == 1.0 and metric(port, "reconciler_remote_up") == 1.0
    assert SECRET.decode() not in text
    with prometheus(binary, port, tmp_path) as api:
        deadline = time.monotonic() + 60
        found: list[dict[str, object]] = []
        while time.monotonic() < deadline and not found:
            try:
                answer = http_request(f"http://127.0.0.1:{api}/api/v1/query?query=reconciler_deploys_total")
            except OSError:  # not listening yet
                time.sleep(0.5)
                continue
            if answer.status == 200:
                found = [
                    item
                    for item in json.loads(answer.body)["data"]["result"]
                    if item["metric"].get("app") == web.name and item["metric"].get("result") == "succeeded"
                ]
            time.sleep(0.5)
        assert found and found[0]["value"][1] == "1", found  # type: ignore[index]


@contextmanager
def prometheus(binary: str, target: int, tmp_path: Path) -> Iterator[int]:
    """A real Prometheus scraping the agent every second; the port of its HTTP API."""
    api = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: reconciler\n    static_configs: [{{targets: ['127.0.0.1:{target}']}}]\n"
    )
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{api}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield api
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_listen_address_in_use_is_one_clear_error(world: World) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        world.app()
        world.commit_apps("v1")
        result = world.server("agent", "--listen", f"127.0.0.1:{port}", "--interval", "60s")
    assert result.returncode == 1, result
    assert re.search(rf"--listen 127\.0\.0\.1:{port}: cannot listen there", result.stderr), result.stderr
    assert "Traceback" not in result.stderr


class _Receiver:
    """A local HTTP endpoint for apprise's json:// that records each body (or never answers: `hang`)."""

    def __init__(self, *, hang: bool = False) -> None:
        import http.server
        import threading

        self.bodies: list[dict[str, object]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length)
                if hang:
                    time.sleep(30)
                    return
                receiver.bodies.append(json.loads(data))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_failed_deploy_is_notified_and_a_hanging_target_delays_nothing(world: World) -> None:
    web = world.app()
    world.images.build(web.name, "v2", healthy=False)
    world.commit_apps("v1")
    good, hanging = _Receiver(), _Receiver(hang=True)
    try:
        token = "tok3n-never-printed"
        agent = world.agent(
            "--notify", f"json://127.0.0.1:{hanging.port}/{token}",
            "--notify", f"json://127.0.0.1:{good.port}/{token}",
            interval="1s",
        )  # fmt: skip
        agent.wait_for("deploy.succeeded", app=web.name, timeout=60)
        started = time.monotonic()
        world.set(web.name, "v2")
        agent.wait_for("deploy.rolled-back", app=web.name, timeout=60)
        assert time.monotonic() - started < 30  # the hanging target held nothing up
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("rolled-back" in str(b.get("title")) for b in good.bodies):
            time.sleep(0.1)
        titles = [str(body.get("title")) for body in good.bodies]
        assert any("deploy.rolled-back" in title and web.name in title for title in titles), titles
        assert not any("deploy.succeeded" in title for title in titles), titles  # only what a person must know
        agent.wait_for("notify.failed", "target 1 (json)", timeout=30)
        written = agent.log().splitlines()[1:]  # the first line is the test's own record of the command
        assert written and not any(token in line for line in written), written
    finally:
        good.close()
        hanging.close()
