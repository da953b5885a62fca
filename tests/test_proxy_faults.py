"""Faults of the proxy itself, under the agent, with real parts (the engine, HAProxy, busybox apps, git).

What a user sees: a proxy whose folder (config, admin socket) was removed under it is made again by the
next pass and the route serves; while the proxy cannot run (its listen address taken) the apps without a
route deploy anyway, the routed ones wait, the fault is said once and named, and /healthz says 503; a
proxy killed or removed in the middle of a routed deploy is no failed release: the deploy completes once
the proxy is back.
"""

from __future__ import annotations

import json
import shutil
import socket
import time

import pytest

from tests.support.agent import AgentProcess, wait_body
from tests.support.net import free_port, http_request
from tests.support.routed import Routed
from tests.support.state import show

pytestmark = pytest.mark.docker


def healthz(port: int) -> tuple[int, dict[str, object]]:
    answer = http_request(f"http://127.0.0.1:{port}/healthz", timeout=2.0)
    return answer.status, json.loads(answer.body)


def wait_healthz(port: int, status: int, timeout: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    last: tuple[int, dict[str, object]] = (0, {})
    while time.monotonic() < deadline:
        last = healthz(port)
        if last[0] == status:
            return last[1]
        time.sleep(0.2)
    raise AssertionError(f"/healthz did not answer {status} within {timeout}s (last: {last})")


def no_verdicts(agent: AgentProcess, since: int) -> None:
    """The proxy's fault was judged as nobody's release: no failed, rolled back or held deploy."""
    for event in ("deploy.failed", "deploy.rolled-back", "deploy.held", "pass.error"):
        assert not agent.events(event, since=since), agent.log()


def test_a_lost_proxy_folder_is_made_again_and_apps_without_a_route_never_wait_on_the_proxy(routed: Routed) -> None:
    web = routed.app("web", tags=("v1", "v2", "v3"))
    plain = routed.world.app("plain")
    routed.world.commit_apps("v1")
    listen = free_port()
    agent = routed.world.agent("--listen", f"127.0.0.1:{listen}", interval="1s")
    agent.wait_for("deploy.succeeded", web.name, timeout=60)
    routed.wait_serving(f"{web.name} v1")
    wait_body(plain.port, "v1", 30, agent)

    # `rm -rf STATE/proxy-INSTANCE` under a running agent: the next pass makes the proxy again.
    mark = agent.mark()
    folder = routed.world.state / f"proxy-{routed.instance}"
    for _ in range(50):  # as `rm -rf` again would: the running proxy may write into it while it is removed
        try:
            shutil.rmtree(folder)
            break
        except OSError:
            time.sleep(0.1)
    agent.wait_for("proxy.changed", "recreated the proxy", since=mark, timeout=30)
    routed.wait_serving(f"{web.name} v1", timeout=10)
    routed.world.set(web.name, "v2")
    agent.wait_for("deploy.succeeded", "v2", since=mark, timeout=60)
    routed.wait_serving(f"{web.name} v2", timeout=10)
    no_verdicts(agent, mark)

    # The proxy cannot start again (stopped, and its listen address held by another process meanwhile): the app
    # without a route deploys, the routed one waits; the fault is said once, at once, with the holder's name,
    # and /healthz says so.
    mark = agent.mark()
    with socket.socket() as holder:
        routed.world.client.api.stop(routed.container)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", routed.port))
        holder.listen()
        routed.world.commit_apps("both move", {web.name: "v3", plain.name: "v2"})
        agent.wait_for("deploy.succeeded", plain.name, "v2", since=mark, timeout=60)
        wait_body(plain.port, "v2", 10, agent)
        body = wait_healthz(listen, 503)
        assert body["status"] == "failing" and "passes failed" in str(body["detail"]), body
        # A pass between the stop and the bind may say first that the runtime API does not answer: each
        # fault once.
        failed = agent.events("proxy.failed", since=mark)
        assert len({line.message for line in failed}) == len(failed), agent.log()
        assert f"127.0.0.1:{routed.port} is taken by process" in failed[-1].message, failed[-1].message
        assert "routed apps wait" in failed[-1].message
        assert not agent.events("deploy.succeeded", web.name, since=mark), agent.log()
        found = routed.container_of(routed.container)  # gone when a pass started it before the bind: it exited
        assert found is None or not found["State"]["Running"], found["State"]
    # Freed: the proxy is back, the routed app deploys, /healthz is 200 again.
    agent.wait_for("deploy.succeeded", "v3", since=mark, timeout=60)
    routed.wait_serving(f"{web.name} v3", timeout=10)
    agent.wait_for("proxy.changed", "back in line", since=mark, timeout=10)
    wait_healthz(listen, 200)
    no_verdicts(agent, mark)


@pytest.mark.parametrize("fault", ["kill", "rm"])
def test_a_proxy_killed_mid_deploy_is_no_failed_release_and_the_deploy_completes(routed: Routed, fault: str) -> None:
    web = routed.app("web")
    web.healthy_for = "3s"  # the gate of v2 is under way when the proxy goes
    routed.world.commit_apps("v1")
    agent = routed.world.agent(interval="1s")
    agent.wait_for("deploy.succeeded", web.name, timeout=60)
    routed.wait_serving(f"{web.name} v1")
    mark = agent.mark()
    routed.world.set(web.name, "v2")
    deadline = time.monotonic() + 30
    while (found := routed.container_of(f"{web.name}.next")) is None or not found["State"]["Running"]:
        assert time.monotonic() < deadline, f"{web.name}.next never ran\n{agent.log()}"
        time.sleep(0.05)
    client = routed.world.client
    if fault == "kill":
        client.api.kill(routed.container)
    else:
        client.api.remove_container(routed.container, force=True)
    # The switch finds no proxy: the deploy is cut short, said once, and resumed by the next pass.
    agent.wait_for("proxy.failed", "the deploy resumes", since=mark, timeout=30)
    agent.wait_for("deploy.succeeded", "v2", since=mark, timeout=60)
    routed.wait_serving(f"{web.name} v2", timeout=10)
    no_verdicts(agent, mark)
    history = routed.world.server("history", "-o", "json", "--app", web.name)
    rows = [row for row in json.loads(history.stdout) if row["to_version"] == "v2"]
    assert rows and rows[0]["result"] == "succeeded", history.stdout
    assert all(row["result"] in ("succeeded", "interrupted") for row in rows), history.stdout
    assert routed.container_of(f"{web.name}.failed") is None


def test_a_dry_run_says_that_a_hand_edited_proxy_config_will_be_rewritten(routed: Routed) -> None:
    web = routed.app("web")
    routed.world.commit_apps("v1")
    assert routed.world.server().returncode == 0
    routed.wait_serving(f"{web.name} v1")
    config = routed.world.state / f"proxy-{routed.instance}" / "haproxy.cfg"
    written = config.read_text()
    config.write_text(written.replace("timeout client 60s", "timeout client 1s"))
    dry = routed.world.server("--dry-run")
    assert dry.returncode == 2, show(dry)
    assert (
        f"rewrite the proxy's config {config}: it differs from the file and what runs (edited by hand?)" in dry.stdout
    )
    assert routed.world.server().returncode == 0
    assert config.read_text() == written
    assert routed.world.server("--dry-run").returncode == 0
