"""Start-first deploys of routed apps behind the real HAProxy container, under a steady load.

What a user sees, with real parts only (the engine, HAProxy built from Debian's package, busybox apps,
a bare git remote): a deploy drops no request, a release that fails its gate or exits at start never
answers one, a commit back to the warm release is a switch with no container start, a SIGKILL at any
new step leaves the route on a release that passed its gate, the proxy comes back when it is removed
or stopped by hand, a route added or removed reloads HAProxy without a failed request, TLS works with
a self-signed certificate, a listen address held by someone else is refused with the holder's name, and
a live release killed while a warm one runs hands its traffic to the warm one at once, with no pass, and
the agent, woken by the engine's die event rather than its interval, brings the app in line at once.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker.errors
import pytest

from tests.support import GitRemote
from tests.support.agent import PASS_DONE
from tests.support.cli import run_cli as cli
from tests.support.load import Hit, Load, bodies, failed, summary
from tests.support.routed import Routed, RoutedApp
from tests.support.state import show

pytestmark = pytest.mark.docker


@contextmanager
def load_on(routed: Routed, **options: object) -> Iterator[list[Hit]]:
    """A load through the proxy (new connections and keep-alive) for the block; the hits, once it ends."""
    hits: list[Hit] = []
    load = Load(routed.port, threads=2, keepalive_threads=1, rate=100, **options)  # type: ignore[arg-type]
    load.start()
    time.sleep(0.3)
    try:
        yield hits
    finally:
        time.sleep(0.3)
        hits.extend(load.stop())


def deployed(routed: Routed, app: RoutedApp, version: str) -> subprocess.CompletedProcess[str]:
    routed.world.set(app.name, version)
    return routed.world.server()


def started_at(routed: Routed, name: str) -> str:
    found = routed.container_of(name)
    assert found is not None, f"{name} is gone"
    return str(found["State"]["StartedAt"])


def state_of(routed: Routed, name: str) -> str:
    found = routed.container_of(name)
    return "missing" if found is None else str(found["State"]["Status"])


def first_v1(routed: Routed, app: RoutedApp) -> None:
    routed.world.commit_apps("v1")
    result = routed.world.server()
    assert result.returncode == 0, show(result)
    routed.wait_serving(f"{app.name} v1")


def assert_switched_once(hits: list[Hit], old: str, new: str) -> None:
    """Every request answered, by `old` until the switch and by `new` after it (by start time)."""
    assert not failed(hits), summary(hits)
    assert set(bodies(hits)) <= {old, new}, summary(hits)
    first_new = next(hit for hit in hits if hit.body == new)
    late_old = [hit for hit in hits if hit.started > first_new.ended and hit.body == old]
    assert not late_old, f"{len(late_old)} requests went to {old} after {new} answered: {summary(hits)}"


def test_a_deploy_switches_traffic_without_dropping_a_request(routed: Routed) -> None:
    web = routed.app("web", tags=("v1", "v2", "v3"))
    first_v1(routed, web)
    old_id = routed.container_of(web.name)["Id"]  # type: ignore[index]
    with load_on(routed) as hits:
        result = deployed(routed, web, "v2")
    assert result.returncode == 0, show(result)
    assert "v1 -> v2" in result.stdout
    assert_switched_once(hits, f"{web.name} v1", f"{web.name} v2")
    # The old release was never stopped: it is warm, out of rotation, as APP.prev.
    previous = routed.container_of(f"{web.name}.prev")
    assert previous is not None and previous["Id"] == old_id and previous["State"]["Running"]
    dry = routed.world.server("--dry-run")
    assert dry.returncode == 0, show(dry)
    assert f"route * / -> {web.name} v2" in dry.stdout
    assert f"warm  {web.name}.prev v1 until" in dry.stdout
    # A second deploy in the window: the release before the warm one goes, the warm one is now v2.
    with load_on(routed) as hits:
        result = deployed(routed, web, "v3")
    assert result.returncode == 0, show(result)
    assert_switched_once(hits, f"{web.name} v2", f"{web.name} v3")
    assert routed.container_of(old_id) is None


@pytest.mark.parametrize("fault", ["gate", "exit"])
def test_a_failed_release_never_answers_a_user(routed: Routed, fault: str) -> None:
    web = routed.app("web", broken=("v2",) if fault == "gate" else (), exits=("v2",) if fault == "exit" else ())
    web.timeout = "2s"
    first_v1(routed, web)
    started = started_at(routed, web.name)
    with load_on(routed) as hits:
        result = deployed(routed, web, "v2")
    assert result.returncode == 1, show(result)
    assert "traffic never moved" in result.stdout, show(result)
    assert not failed(hits), summary(hits)
    assert set(bodies(hits)) == {f"{web.name} v1"}, summary(hits)
    assert started_at(routed, web.name) == started  # the old release was never stopped or restarted
    assert state_of(routed, f"{web.name}.failed") == "exited"


def test_a_release_that_fails_during_healthy_for_never_takes_traffic(routed: Routed) -> None:
    web = routed.app("web")
    web.healthy_for = "3s"
    web.timeout = "6s"
    first_v1(routed, web)
    client = routed.world.client

    def break_health() -> None:
        # Once the new release answered its gate, its /health goes away: a failure inside healthy_for.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                found = client.api.inspect_container(f"{web.name}.next")
            except docker.errors.NotFound:  # not created yet
                time.sleep(0.05)
                continue
            if found["State"]["Running"]:
                time.sleep(0.5)
                client.api.exec_start(client.api.exec_create(found["Id"], ["rm", "/www/health"]))
                return
            time.sleep(0.05)

    breaker = threading.Thread(target=break_health)
    with load_on(routed) as hits:
        breaker.start()
        result = deployed(routed, web, "v2")
        breaker.join()
    assert result.returncode == 1, show(result)
    assert "404" in result.stdout and "traffic never moved" in result.stdout, show(result)
    assert set(bodies(hits)) == {f"{web.name} v1"} and not failed(hits), summary(hits)


def test_a_commit_back_to_the_warm_release_is_a_switch(routed: Routed) -> None:
    web = routed.app("web")
    first_v1(routed, web)
    v1_started = started_at(routed, web.name)
    assert deployed(routed, web, "v2").returncode == 0
    with load_on(routed) as hits:
        began = time.monotonic()
        result = deployed(routed, web, "v1")
        took = time.monotonic() - began
    assert result.returncode == 0, show(result)
    assert_switched_once(hits, f"{web.name} v2", f"{web.name} v1")
    # The same v1 container serves again, never restarted; v2 is the warm one now.
    assert started_at(routed, web.name) == v1_started
    assert state_of(routed, f"{web.name}.prev") == "running"
    assert took < 30, took


def test_outside_the_warm_window_a_rollback_starts_gates_and_switches(routed: Routed) -> None:
    web = routed.app("web", keep_warm="0s")
    first_v1(routed, web)
    with load_on(routed) as hits:
        assert deployed(routed, web, "v2").returncode == 0
    assert_switched_once(hits, f"{web.name} v1", f"{web.name} v2")
    assert state_of(routed, f"{web.name}.prev") == "exited"  # drained, then stopped: no warm window
    with load_on(routed) as hits:
        result = deployed(routed, web, "v1")
    assert result.returncode == 0, show(result)
    assert_switched_once(hits, f"{web.name} v2", f"{web.name} v1")


@pytest.mark.parametrize("step", ["start-next", "gate-next", "switch", "drain"])
def test_a_sigkill_at_each_new_step_leaves_the_route_on_a_release_that_passed(routed: Routed, step: str) -> None:
    web = routed.app("web")
    first_v1(routed, web)
    with load_on(routed) as hits:
        routed.world.set(web.name, "v2")
        killed = routed.world.server(env={"RECONCILE_KILL_AT": f"{web.name}:{step}"})
        assert killed.returncode == -9, show(killed)
        # Right after the crash: the route answers, from a release that passed its gate.
        status, body = routed.get()
        assert status == 200 and body == (f"{web.name} v2" if step == "drain" else f"{web.name} v1"), (status, body)
        result = routed.world.server()
        assert result.returncode == 0, show(result)
    assert not failed(hits), summary(hits)
    routed.wait_serving(f"{web.name} v2")
    assert state_of(routed, f"{web.name}.next") == "missing"
    assert state_of(routed, f"{web.name}.prev") in ("running", "exited")  # warm, or kept stopped


def test_the_proxy_comes_back_when_it_is_removed_or_stopped_by_hand(routed: Routed) -> None:
    web = routed.app("web")
    first_v1(routed, web)
    client = routed.world.client
    client.api.remove_container(routed.container, force=True)
    result = routed.world.server()
    assert result.returncode == 0, show(result)
    assert f"started the proxy {routed.container}" in result.stdout
    routed.wait_serving(f"{web.name} v1", timeout=5)
    client.api.stop(routed.container)
    result = routed.world.server()
    assert "started the proxy" in result.stdout and "again" in result.stdout, show(result)
    routed.wait_serving(f"{web.name} v1", timeout=5)
    # The agent heals it too, at its next pass.
    agent = routed.world.agent(interval="1s")
    client.api.remove_container(routed.container, force=True)
    agent.wait_for("proxy.changed", "started the proxy", timeout=30)
    routed.wait_serving(f"{web.name} v1", timeout=10)


def test_a_route_added_and_removed_reloads_without_a_failed_request(routed: Routed) -> None:
    web = routed.app("web")
    first_v1(routed, web)
    api = routed.app("api", path_prefix="/api")
    with load_on(routed) as hits:
        routed.world.commit_apps("add api")
        result = routed.world.server()
        assert result.returncode == 0, show(result)
        assert "reloaded" in result.stdout, show(result)
        status, body = routed.get("/api/")
        assert status == 404 and "404" in body  # api's httpd has no /api/ page: but it answered, not web
        del routed.world.apps[api.name]
        routed.world.commit_apps("drop api")
        result = routed.world.server()
        assert result.returncode == 0 and "reloaded" in result.stdout, show(result)
    assert not failed(hits), summary(hits)
    assert set(bodies(hits)) == {f"{web.name} v1"}, summary(hits)
    assert state_of(routed, api.name) == "missing"


def test_tls_with_a_self_signed_certificate(routed: Routed, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=shop.test",
         "-keyout", str(certs / "key"), "-out", str(certs / "crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    (certs / "shop.pem").write_bytes((certs / "crt").read_bytes() + (certs / "key").read_bytes())
    for loose in ("key", "crt"):
        (certs / loose).unlink()
    routed.tls = f"{{certs: {certs}, ports: [{routed.port}]}}"
    web = routed.app("web", hosts=("shop.test",))
    routed.world.commit_apps("v1")
    result = routed.world.server()
    assert result.returncode == 0, show(result)
    with load_on(routed, tls=True, host_header="shop.test") as hits:
        assert deployed(routed, web, "v2").returncode == 0
    assert_switched_once(hits, f"{web.name} v1", f"{web.name} v2")
    assert hits and all(hit.status == 200 for hit in hits)


def test_a_listen_address_held_by_another_process_is_refused_naming_it(routed: Routed) -> None:
    web = routed.app("web")
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", routed.port))
    holder.listen()
    try:
        routed.world.commit_apps("v1")
        result = routed.world.server()
    finally:
        holder.close()
    assert result.returncode == 1, show(result)
    assert f"127.0.0.1:{routed.port} is taken by process {os.getpid()}" in result.stderr, show(result)
    assert "Traceback" not in result.stderr
    assert state_of(routed, web.name) == "missing" and state_of(routed, routed.container) == "missing"
    result = routed.world.server()
    assert result.returncode == 0, show(result)
    routed.wait_serving(f"{web.name} v1")


def test_a_route_port_the_release_does_not_listen_on_fails_its_gate_and_nothing_switches(routed: Routed) -> None:
    web = routed.app("web")
    web.timeout = "2s"
    first_v1(routed, web)
    web.port = 9999
    with load_on(routed) as hits:
        result = deployed(routed, web, "v2")
    assert result.returncode == 1, show(result)
    assert ":9999/health" in result.stdout and "traffic never moved" in result.stdout, show(result)
    assert set(bodies(hits)) == {f"{web.name} v1"} and not failed(hits), summary(hits)


def test_a_local_rollback_of_a_routed_app_is_a_switch_and_status_shows_the_routes(routed: Routed) -> None:
    web = routed.app("web")
    first_v1(routed, web)
    assert deployed(routed, web, "v2").returncode == 0
    v1_started = started_at(routed, f"{web.name}.prev")
    with load_on(routed) as hits:
        result = routed.world.rc("rollback", web.name, "--local")
    assert result.returncode == 0, show(result)
    assert "the route switched to v1" in result.stdout and f"kept warm as {web.name}.prev" in result.stdout
    assert_switched_once(hits, f"{web.name} v2", f"{web.name} v1")
    assert started_at(routed, web.name) == v1_started  # the warm v1, never restarted
    assert state_of(routed, f"{web.name}.prev") == "running"
    text = routed.world.status_text()
    assert re.search(rf"route \* / -> {web.name} v1 \([0-9.]+:8000\), \d+ in flight", text), text
    assert f"warm  {web.name}.prev v2 until" in text, text


def test_a_release_that_dies_after_it_went_live_is_rolled_back_by_a_switch_and_held(routed: Routed) -> None:
    web = routed.app("web")
    first_v1(routed, web)
    assert deployed(routed, web, "v2").returncode == 0
    agent = routed.world.agent(interval="1s")
    client = routed.world.client
    # v2 goes bad after it went live: its /health is gone, and it stops; a restart cannot pass its gate.
    client.api.exec_start(client.api.exec_create(web.name, ["rm", "/www/health"]))
    client.api.stop(web.name, timeout=1)
    line = agent.wait_for("deploy.rolled-back", timeout=60)
    assert "v2" in line.message and "rolled back to v1" in line.message, agent.log()
    routed.wait_serving(f"{web.name} v1", timeout=10)
    assert state_of(routed, f"{web.name}.failed") == "exited"
    agent.wait_for("deploy.held", timeout=30)
    routed.wait_serving(f"{web.name} v1", timeout=5)


def test_a_live_release_killed_hands_its_traffic_to_the_warm_one_with_no_failed_request(routed: Routed) -> None:
    web = routed.app("web", keep_warm="10m")
    first_v1(routed, web)
    assert deployed(routed, web, "v2").returncode == 0
    config = (routed.world.state / f"proxy-{routed.instance}" / "haproxy.cfg").read_text()
    prev = routed.container_of(f"{web.name}.prev")
    assert prev is not None
    address = prev["NetworkSettings"]["Networks"][routed.network]["IPAddress"]
    assert f"  server warm {address}:8000 backup\n" in config, config
    with load_on(routed) as hits:
        time.sleep(0.5)
        routed.world.client.api.kill(web.name)  # no reconcile runs: HAProxy alone moves the traffic
        killed = time.monotonic()
        time.sleep(1.5)
    # A response that SIGKILL cut in the middle cannot be sent again (its head went out): the only failure
    # allowed, for a request that was in flight at the kill. Nothing else fails, the GET that met the
    # dead release included (it went to the warm one).
    cut = [hit for hit in failed(hits) if hit.error == "IncompleteRead" and hit.started < killed]
    assert len(cut) <= 2 and not [hit for hit in failed(hits) if hit not in cut], summary(hits)
    after = [hit for hit in hits if hit.started > killed + 1.0]
    assert after and set(bodies(after)) <= {f"{web.name} v1", f"{web.name} v2"}, summary(after)
    assert f"{web.name} v1" in bodies(after), summary(after)  # the warm release answered


def test_the_agent_is_woken_by_the_death_of_the_live_release_not_by_its_interval(routed: Routed) -> None:
    web = routed.app("web", keep_warm="10m")
    first_v1(routed, web)
    assert deployed(routed, web, "v2").returncode == 0
    agent = routed.world.agent(interval="300s", env=PASS_DONE)
    # While v2 earns its promotion the stable clock looks every 5 s: the kill comes just after one of those
    # passes, so that a pass within 2.5 s of it is the die event's, not the clock's (nor the interval's).
    agent.pass_after(time.time(), count=2, timeout=30)
    done = agent.pass_after(time.time(), timeout=10)
    mark = agent.mark()
    routed.world.client.api.kill(web.name)
    killed = time.time()
    switched = agent.wait_for("proxy.changed", f"route switched to {web.name}.prev", since=mark, timeout=20)
    took = switched.at - killed
    assert took < 2.5, (
        f"the pass came {took:.1f}s after the kill (the last pass ended at {done.raw[:24]})\n{agent.log()}"
    )
    healed = agent.wait_for("drift.healing", "exited -> running", app=web.name, since=mark, timeout=10)
    assert healed.at - killed < 2.5, agent.log()
    agent.wait_for("proxy.changed", f"route switched to {web.name} ", since=mark, timeout=10)
    routed.wait_serving(f"{web.name} v2", timeout=5)  # the killed release started again, and live
    assert state_of(routed, f"{web.name}.prev") == "running"  # still warm


def test_a_new_proxy_version_is_drift_and_recreates_the_proxy(routed: Routed) -> None:
    web = routed.app("web")
    first_v1(routed, web)
    assert routed.world.server("--dry-run").returncode == 0  # in sync, the proxy too
    repo, _, tag = routed.image.rpartition(":")
    routed.world.client.api.tag(routed.image, repo, f"{tag}-b")
    routed.image = f"{repo}:{tag}-b"
    routed.world.commit_apps("proxy: a new version")
    dry = routed.world.server("--dry-run")
    assert dry.returncode == 2, show(dry)
    assert f"recreate the proxy {routed.container} ({routed.image}" in dry.stdout, show(dry)
    result = routed.world.server()
    assert result.returncode == 0 and f"recreated the proxy {routed.container}" in result.stdout, show(result)
    routed.wait_serving(f"{web.name} v1", timeout=10)
    assert routed.world.server("--dry-run").returncode == 0


def test_the_agent_deploys_a_routed_app_start_first_and_heals_the_route(routed: Routed) -> None:
    web = routed.app("web")
    routed.world.commit_apps("v1")
    agent = routed.world.agent(interval="1s")
    agent.wait_for("deploy.succeeded", timeout=60)
    routed.wait_serving(f"{web.name} v1")
    with load_on(routed) as hits:
        mark = agent.mark()
        routed.world.set(web.name, "v2")
        agent.wait_for("deploy.succeeded", "v2", since=mark, timeout=60)
        routed.wait_serving(f"{web.name} v2", timeout=5)
    assert_switched_once(hits, f"{web.name} v1", f"{web.name} v2")
    # The route pointed elsewhere by hand (the runtime API, as an operator might): the next pass puts it back.
    client = routed.world.client
    previous = client.api.inspect_container(f"{web.name}.prev")
    ip = previous["NetworkSettings"]["Networks"][routed.network]["IPAddress"]
    folder = os.open(routed.world.state / f"proxy-{routed.instance}", os.O_PATH)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(f"/proc/self/fd/{folder}/admin.sock")  # a path under 108 bytes, whatever tmp_path is
            sock.sendall(f"set server be_{web.name}/live addr {ip} port 8000\n".encode())
            sock.recv(4096)
    finally:
        os.close(folder)
    agent.wait_for("proxy.changed", "route switched", timeout=30)
    routed.wait_serving(f"{web.name} v2", timeout=5)


@pytest.mark.parametrize("step", ["keep-old", "rename-new"])
def test_a_sigkill_while_names_move_keeps_the_old_release_to_drain_and_stay_warm(routed: Routed, step: str) -> None:
    web = routed.app("web", tags=("v1", "v2", "v3"))
    first_v1(routed, web)
    assert deployed(routed, web, "v2").returncode == 0  # v1 is warm as APP.prev
    with load_on(routed) as hits:
        routed.world.set(web.name, "v3")
        killed = routed.world.server(env={"RECONCILE_KILL_AT": f"{web.name}:{step}"})
        assert killed.returncode == -9, show(killed)
        status, body = routed.get()
        assert status == 200 and body in (f"{web.name} v2", f"{web.name} v3"), (status, body)
        result = routed.world.server()
        assert result.returncode == 0, show(result)
    assert not failed(hits), summary(hits)
    routed.wait_serving(f"{web.name} v3")
    previous = routed.container_of(f"{web.name}.prev")
    assert previous is not None and previous["Config"]["Labels"]["io.reconciler.version"] == "v2", previous
    assert previous["State"]["Running"]  # v2, the release v3 replaced, is the warm one
    assert state_of(routed, f"{web.name}.next") == "missing"


def test_a_routed_app_without_a_probe_is_gated_on_its_port(routed: Routed) -> None:
    web = routed.app("web")
    web.timeout = "2s"
    first_v1(routed, web)
    # No probe: the gate connects to the new release on route.port; a port it does not listen on fails it.
    web.port, web.version = 9999, "v2"
    text = routed.world.desired_text().replace("      http: /health\n", "")
    assert "http:" not in text
    routed.world.remote.write("desired-state.yaml", text)
    routed.world.remote.git("commit", "-qam", "v2 on a port it does not listen on")
    routed.world.remote.push()
    result = routed.world.server()
    assert result.returncode == 1, show(result)
    assert ":9999" in result.stdout and "traffic never moved" in result.stdout, show(result)
    routed.wait_serving(f"{web.name} v1", timeout=5)


def test_another_source_on_the_instance_leaves_the_proxy_alone_or_is_told_whose_it_is(
    routed: Routed, tmp_path: Path
) -> None:
    web = routed.app("web")
    first_v1(routed, web)
    other = GitRemote(tmp_path / "other")
    other.commit_file("desired-state.yaml", "apps: {}\n", "another source, no proxy")
    elsewhere: list[str | Path] = ["--repo", other.url, "--state-dir", tmp_path / "state-elsewhere"]
    result = cli(*elsewhere)
    assert result.returncode == 0, show(result)
    assert "removed the proxy" not in result.stdout, show(result)
    routed.wait_serving(f"{web.name} v1", timeout=5)
    # Another source with a proxy of its own on the same instance: refused, naming the owner.
    other.commit_file("desired-state.yaml", routed.proxy_yaml() + "apps: {}\n", "a proxy too")
    result = cli(*elsewhere)
    assert result.returncode == 1, show(result)
    assert f"the proxy {routed.container} is run by another source" in result.stderr, show(result)
    assert "--instance" in result.stderr and "Traceback" not in result.stderr
    routed.wait_serving(f"{web.name} v1", timeout=5)


def test_a_whole_commit_rollback_of_a_routed_app_is_a_switch(routed: Routed) -> None:
    web = routed.app("web")
    bad = routed.app("bad", exits=("v2",), path_prefix="/bad")
    first_v1(routed, web)
    agent = routed.world.agent(interval="1s")
    with load_on(routed) as hits:
        mark = agent.mark()
        routed.world.commit_apps("both to v2", {web.name: "v2", bad.name: "v2"})
        line = agent.wait_for("deploy.rolled-back", "back to v1", app=web.name, since=mark, timeout=60)
        routed.wait_serving(f"{web.name} v1", timeout=5)
    assert "rolled back with the rest of commit" in line.message, agent.log()
    assert not failed(hits), summary(hits)
    assert set(bodies(hits)) <= {f"{web.name} v1", f"{web.name} v2"}, summary(hits)
    assert state_of(routed, web.name) == "running"
