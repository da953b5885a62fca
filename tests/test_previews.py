"""Pull-request previews end to end, with real parts only: the engine, HAProxy, busybox images built here, a bare
git remote, and a real agent with ``--listen`` and a webhook secret, sent the bodies GitHub sends
(``tests/data/previews``), signed as GitHub signs them.

What a user sees: an opened pull request is served at its preview host through the proxy, after its gate, while
the app it was made from keeps its container and its answers; ``reconcile previews`` and ``status`` list it; a
pull request whose image CI has not pushed is held and said once, the rest going on; a wrong signature changes
nothing; a close (merged) removes the preview and its route.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest

from tests.support.agent import PASS_DONE, AgentProcess
from tests.support.net import free_port
from tests.support.routed import Routed
from tests.support.state import show

pytestmark = pytest.mark.docker

DATA = Path(__file__).parent / "data" / "previews"
SECRET = b"previews-hook-secret-never-printed"


def post(port: int, name: str, *, number: int | None = None, secret: bytes = SECRET) -> int:
    import http.client

    payload = json.loads((DATA / name).read_text())
    if number is not None:
        payload["number"] = payload["pull_request"]["number"] = number
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "pull_request",
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest(),
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/hooks/github", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_a_pull_request_is_previewed_at_its_host_held_without_its_image_and_removed_when_merged(
    routed: Routed,
) -> None:
    world = routed.world
    web = routed.app("web", tags=("v1", "pr-7"), hosts=("shop.test",))
    preview = f"{web.name}-pr-7"
    previews_yaml = (
        "previews:\n"
        f"  {web.name}:\n"
        '    host: "pr-{number}.preview.test"\n'
        '    version: "pr-{number}"\n'
        "    env: {FEATURE_FLAGS: all}\n"
        "    max: 3\n"
        "    ttl: 5d\n"
    )
    world.header = lambda: routed.proxy_yaml() + previews_yaml
    world.commit_apps("web with previews")
    secret = world.tmp / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")
    port = free_port()
    agent: AgentProcess = world.agent(
        "--listen",
        f"127.0.0.1:{port}",
        "--webhook-secret-file",
        str(secret),
        repo=f"file://{world.repo}",
        env=PASS_DONE,
    )
    routed.wait_serving(f"{web.name} v1", host="shop.test")
    serving = routed.container_of(web.name)
    assert serving is not None

    assert post(port, "github-opened.json", secret=b"a-guess") == 401
    assert post(port, "github-opened.json") == 202
    routed.wait_serving(f"{web.name} pr-7", host="pr-7.preview.test", timeout=30)
    agent.wait_for("deploy.succeeded", preview, timeout=10)
    assert routed.get(host="shop.test") == (200, f"{web.name} v1")
    after = routed.container_of(web.name)
    assert after is not None and after["Id"] == serving["Id"]  # the app it was made from was never touched
    made = routed.container_of(preview)
    assert made is not None and "FEATURE_FLAGS=all" in made["Config"]["Env"]

    listed = world.server("previews", "-o", "json", "--instance", routed.instance)
    assert listed.returncode == 0, show(listed)
    [row] = json.loads(listed.stdout)
    assert (row["number"], row["app"], row["state"], row["host"]) == (7, preview, "running", "pr-7.preview.test")
    status = world.server("status", "--instance", routed.instance)
    assert status.returncode == 0 and preview in status.stdout, show(status)

    # CI has not pushed pr-9: held and said once, while #7 and the app serve on.
    mark = agent.mark()
    assert post(port, "github-opened.json", number=9) == 202
    agent.wait_for("preview.held", f"{web.name}-pr-9", timeout=20)
    agent.hup()
    agent.pass_after(time.time(), count=1, timeout=20)
    assert len(agent.events("preview.held", since=mark)) == 1
    assert routed.get(host="pr-7.preview.test") == (200, f"{web.name} pr-7")

    assert post(port, "github-closed-merged.json") == 202
    agent.wait_for("preview.closed", "#7 closed (merged)", timeout=10)
    deadline = time.monotonic() + 30
    while routed.container_of(preview) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert routed.container_of(preview) is None
    assert routed.get(host="pr-7.preview.test")[0] != 200
    assert routed.get(host="shop.test") == (200, f"{web.name} v1")
    assert SECRET.decode() not in agent.log()
