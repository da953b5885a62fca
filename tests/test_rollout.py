"""Weighted rollouts (``rollout:``) behind the real HAProxy container, under a real load.

What a user sees: a release that passed its gate takes a share of the route's requests beside the old
one, step by step, judged at each step's end from the proxy's own counters. A release that answers 5xx is
aborted at its first step (every request back on the old release at once, the new one kept as APP.failed
and held), a slow one is aborted by latency, a good one is promoted (it serves alone, the old one warm). A
step without enough requests says what ``on_no_traffic`` made of it. A sticky client stays on the release
it got. The agent owns the clock: it wakes for a step's end, and a SIGKILL at any step resumes that step,
at its weight. ``reconcile rollout promote|abort`` ends one early. ``status``, ``--dry-run`` and
``/metrics`` show the step and the weights.
"""

from __future__ import annotations

import http.client
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.load import Hit, Load, failed, summary
from tests.support.net import free_port, http_get
from tests.support.routed import Routed, RoutedApp
from tests.support.state import show

pytestmark = pytest.mark.docker

APP_PATH = "/cgi-bin/app"  # the test image's program: errs or is slow as its tag was built to


@contextmanager
def load_on(routed: Routed, rate: float = 60, threads: int = 2) -> Iterator[list[Hit]]:
    """New connections, ``rate`` requests a second in each of ``threads`` threads, on the app's program."""
    hits: list[Hit] = []
    load = Load(routed.port, path=APP_PATH, threads=threads, rate=rate, timeout=5.0)
    load.start()
    try:
        yield hits
    finally:
        hits.extend(load.stop())


def rollout_yaml(*steps: tuple[int, str], **analysis: object) -> str:
    said = ", ".join(f"{{weight: {weight}, pause: {pause}}}" for weight, pause in steps)
    judged = ", ".join(f"{key}: {value}" for key, value in analysis.items())
    return f"{{steps: [{said}], analysis: {{{judged}}}}}"


def first_v1(routed: Routed, app: RoutedApp) -> None:
    routed.world.commit_apps("v1")
    result = routed.world.server()
    assert result.returncode == 0, show(result)
    routed.wait_serving(f"{app.name} v1")


def answered_by(hits: list[Hit], body: str) -> list[Hit]:
    return [hit for hit in hits if hit.body.endswith(body)]


def test_a_release_that_answers_5xx_is_aborted_at_its_first_step_and_held(routed: Routed) -> None:
    # A release that errs on a fifth of its requests: about ten of the fifty or so it gets at 5 %, so that the
    # verdict is never a coin toss (bench/rollout.py measures one that errs on 5 % under more requests).
    web = routed.app("web", faulty={"v2": (0.2, 0.0)})
    web.rollout = rollout_yaml((5, "5s"), (50, "4s"), min_requests=10)
    first_v1(routed, web)
    with load_on(routed, threads=3) as hits:
        routed.world.set(web.name, "v2")
        started = routed.world.server()
        assert started.returncode == 0, show(started)
        assert "rolling-out" in started.stdout and "rollout step 1/2, 5% of requests" in started.stdout, show(started)
        begun = time.monotonic()
        status = routed.world.status_text()
        assert f"rollout {web.name} v1 -> v2: step 1/2, 5% of requests to v2, 95% to v1" in status, status
        dry = routed.world.server("--dry-run")
        assert dry.returncode == 2 and f"rollout {web.name} v1 -> v2: step 1/2" in dry.stdout, show(dry)
        assert f"{web.name}.next: v2: its weighted rollout is under way" in dry.stdout, show(dry)
        assert f"replace  {web.name}" not in dry.stdout, show(dry)
        time.sleep(max(0.0, begun + 5.2 - time.monotonic()))
        judged = routed.world.server()
        verdict_at = time.monotonic()
        time.sleep(1.5)
    assert judged.returncode == 1, show(judged)
    assert "rolled-back" in judged.stdout and "every request is back on v1" in judged.stdout, show(judged)
    assert "step 1 (5%): failed: " in judged.stdout and "> max_5xx_ratio 1%" in judged.stdout, show(judged)
    assert not failed([hit for hit in hits if hit.status == 0]), summary(hits)
    step = [hit for hit in hits if begun <= hit.started <= verdict_at]
    on_v2 = answered_by(step, f"{web.name} v2")
    # The new release got its weight of the step's requests (under 6 %), and none once the verdict was given.
    assert 0 < len(on_v2) < 0.06 * len(step), summary(step)
    late = [hit for hit in answered_by(hits, f"{web.name} v2") if hit.started > verdict_at + 1.0]
    assert not late, summary(late)
    assert routed.container_of(f"{web.name}.failed") is not None
    assert routed.container_of(f"{web.name}.next") is None
    assert "rollout " not in routed.world.status_text()


def test_a_good_release_is_promoted_step_by_step_and_the_old_one_stays_warm(routed: Routed) -> None:
    web = routed.app("web")
    web.rollout = rollout_yaml((20, "2s"), (60, "2s"), min_requests=10)
    first_v1(routed, web)
    with load_on(routed) as hits:
        routed.world.set(web.name, "v2")
        assert routed.world.server().returncode == 0
        time.sleep(2.2)
        second = routed.world.server()
        assert second.returncode == 0, show(second)
        assert "step 1 (20%): passed" in second.stdout and "60% of requests to v2 now" in second.stdout, show(second)
        time.sleep(2.2)
        done = routed.world.server()
        promoted_at = time.monotonic()
        time.sleep(1.0)
    assert done.returncode == 0, show(done)
    assert "applied" in done.stdout and "v1 -> v2" in done.stdout, show(done)
    assert not failed(hits), summary(hits)
    late = [hit for hit in answered_by(hits, f"{web.name} v1") if hit.started > promoted_at + 0.5]
    assert not late, summary(late)
    assert routed.container_of(f"{web.name}.prev") is not None  # warm
    routed.wait_serving(f"{web.name} v2")
    history = routed.world.server("history", "--app", web.name)
    assert "succeeded" in history.stdout, show(history)


def test_the_agent_owns_the_clock_and_a_sigkill_resumes_the_step(routed: Routed) -> None:
    web = routed.app("web", tags=("v1", "v2"))
    web.rollout = rollout_yaml((25, "6s"), (50, "3s"), min_requests=5, on_no_traffic="advance")
    routed.world.commit_apps("v1")
    port = free_port()
    agent = routed.world.agent("--listen", f"127.0.0.1:{port}", interval="300s")
    agent.wait_for("deploy.succeeded", timeout=60)
    mark = agent.mark()
    routed.world.set(web.name, "v2")
    agent.hup()
    agent.wait_for("rollout.started", "v2", since=mark, timeout=60)
    gauge = f'reconciler_rollout_weight_percent{{app="{web.name}"}} 25.0'
    deadline = time.monotonic() + 10  # set as the pass ends, just after its events
    while gauge not in (metrics := http_get(f"http://127.0.0.1:{port}/metrics")[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gauge in metrics and f'reconciler_rollout_step{{app="{web.name}"}} 1.0' in metrics, metrics[-2000:]
    # The dashboard's page of the app says it too (its board is taken once a page is asked for).
    wanted = f"rollout {web.name} v1 -&gt; v2: step 1/2, 25% of requests to v2"
    deadline = time.monotonic() + 10
    while wanted not in (page := http_get(f"http://127.0.0.1:{port}/apps/{web.name}")[1]):
        assert time.monotonic() < deadline, page[-3000:]
        time.sleep(0.2)
    assert 'id="rollout"' in page
    agent.signal(signal.SIGKILL)
    agent.wait_exit(10)
    agent = routed.world.agent(interval="300s")
    # Restarted mid-step: the same step at its weight, judged at its own end (woken for it, not by the interval).
    agent.wait_for("rollout.step", "step 1 (25%)", timeout=30)
    agent.wait_for("deploy.succeeded", "v2", timeout=30)
    routed.wait_serving(f"{web.name} v2")


def test_a_slow_release_is_aborted_by_latency_and_one_without_traffic_as_on_no_traffic_says(routed: Routed) -> None:
    slow = routed.app("slow", faulty={"v2": (0.0, 0.3)}, hosts=("slow.test",))
    quiet = routed.app("quiet", hosts=("quiet.test",))
    slow.rollout = rollout_yaml((30, "3s"), (60, "3s"), min_requests=10, max_avg_ms=150)
    quiet.rollout = rollout_yaml((30, "3s"), (60, "3s"), min_requests=10)
    routed.world.commit_apps("v1")
    assert routed.world.server().returncode == 0
    routed.wait_serving(f"{slow.name} v1", host="slow.test")
    load = Load(routed.port, path=APP_PATH, threads=2, rate=40, host_header="slow.test")
    with load:
        routed.world.commit_apps("v2 of both", {slow.name: "v2", quiet.name: "v2"})
        started = routed.world.server()
        assert started.returncode == 0 and started.stdout.count("rolling-out") == 2, show(started)
        time.sleep(3.3)
        judged = routed.world.server()
    assert judged.returncode == 1, show(judged)
    assert f"{slow.name}: step 1 (30%): failed: " in judged.stdout and "> max_avg_ms 150" in judged.stdout, show(judged)
    # Said, not silent: too few answers, and what on_no_traffic made of it.
    assert f"{quiet.name}: step 1 (30%): inconclusive: 0 answers" in judged.stdout, show(judged)
    assert "0 answers < min_requests 10; on_no_traffic: fail" in judged.stdout, show(judged)
    for app in (slow, quiet):
        assert routed.container_of(f"{app.name}.failed") is not None, app.name
        assert routed.container_of(app.name) is not None
    assert not failed(load.hits), summary(load.hits)


def sticky_client(routed: Routed) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", routed.port, timeout=5)


def ask(conn: http.client.HTTPConnection, cookie: str) -> tuple[str, str]:
    """One GET of the app on a client's own connection, its cookie sent; (body, the cookie it holds after)."""
    conn.request("GET", APP_PATH, headers={"Cookie": cookie} if cookie else {})
    answer = conn.getresponse()
    body = answer.read().decode().strip()
    given = answer.getheader("Set-Cookie") or ""
    return body, given.split(";", 1)[0] or cookie


def test_sticky_clients_never_flap_and_a_rollout_is_promoted_or_aborted_by_hand(routed: Routed) -> None:
    web = routed.app("web", tags=("v1", "v2", "v3"))
    web.rollout = "{steps: [{weight: 50, pause: 1h}], sticky: true}"
    first_v1(routed, web)
    routed.world.set(web.name, "v2")
    assert routed.world.server().returncode == 0
    seen: dict[int, set[str]] = {}
    for client in range(12):
        conn, cookie = sticky_client(routed), ""
        for _ in range(6):
            body, cookie = ask(conn, cookie)
            seen.setdefault(client, set()).add(body)
        conn.close()
    assert all(len(bodies) == 1 for bodies in seen.values()), seen  # each client on one release
    assert {body for bodies in seen.values() for body in bodies} == {f"{web.name} v1", f"{web.name} v2"}, seen
    # A newer commit mid-rollout: the rollout of v2 is aborted first (not held), v3's begins.
    routed.world.set(web.name, "v3")
    newer = routed.world.server()
    assert newer.returncode == 0, show(newer)
    assert "the rollout of v2 ended at step 1: a newer commit changes" in newer.stdout, show(newer)
    assert "rolling-out" in newer.stdout and "v1 -> v3" in newer.stdout, show(newer)
    asked = routed.world.server("rollout", "promote", web.name)
    assert asked.returncode == 0 and "promote of its rollout v1 -> v3 asked" in asked.stdout, show(asked)
    done = routed.world.server()
    assert done.returncode == 0 and "promoted by hand" in done.stdout, show(done)
    routed.wait_serving(f"{web.name} v3")
    conn = sticky_client(routed)
    assert {ask(conn, "")[0] for _ in range(10)} == {f"{web.name} v3"}
    nothing = routed.world.server("rollout", "abort", web.name)
    assert nothing.returncode == 1 and f"{web.name}: no rollout under way" in nothing.stderr, show(nothing)


@pytest.mark.parametrize("step", ["canary", "rename-new"])
def test_a_sigkill_at_a_rollout_step_resumes_it_never_at_full_weight(routed: Routed, step: str) -> None:
    web = routed.app("web")
    web.rollout = rollout_yaml((20, "2s"), min_requests=1, on_no_traffic="advance")
    first_v1(routed, web)
    routed.world.set(web.name, "v2")
    kill = {"RECONCILE_KILL_AT": f"{web.name}:{step}"}
    if step == "canary":
        killed = routed.world.server(env=kill)
    else:
        assert routed.world.server().returncode == 0
        time.sleep(2.2)
        killed = routed.world.server(env=kill)  # judged, promoted, killed while names move
    assert killed.returncode < 0 or killed.returncode == 137, show(killed)
    with load_on(routed, rate=30) as hits:
        again = routed.world.server()
        assert again.returncode == 0, show(again)
        if step == "canary":
            # The rollout had not begun: it begins again, at its first step, never at full weight.
            assert "rollout step 1/1, 20% of requests" in again.stdout, show(again)
            time.sleep(2.2)
            assert routed.world.server().returncode == 0
        routed.wait_serving(f"{web.name} v2")
    assert not failed(hits), summary(hits)
    assert routed.container_of(f"{web.name}.next") is None
    assert routed.container_of(f"{web.name}.prev") is not None


def test_a_rollout_begun_by_a_commit_that_fails_elsewhere_is_taken_back_with_it(routed: Routed) -> None:
    web = routed.app("web")
    bad = routed.app("bad", exits=("v2",), path_prefix="/bad")
    web.rollout = rollout_yaml((20, "1h"))
    first_v1(routed, web)
    agent = routed.world.agent(interval="300s")
    with load_on(routed, rate=30) as hits:
        mark = agent.mark()
        routed.world.commit_apps("both to v2", {web.name: "v2", bad.name: "v2"})
        line = agent.wait_for("deploy.rolled-back", "every request is back on v1", app=web.name, since=mark, timeout=60)
    assert "rolled back with the rest of commit" in line.message, agent.log()
    assert not failed(hits), summary(hits)
    assert routed.container_of(f"{web.name}.next") is None
    assert "rollout " not in routed.world.status_text()
    routed.wait_serving(f"{web.name} v1")
