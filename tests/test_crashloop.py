"""Releases that die after they went live, on the real engine behind the real HAProxy container.

What a user sees: a fix commit replaces a release that Docker keeps restarting, while the warm release
before it stays in place and the route serves; a release that dies inside its ``stable_after`` window is
taken back by the agent (the previous release started again and switched to), kept stopped as
``APP.failed``, said once and held; a warm release whose window passed is stopped while the pass deploys,
not before it.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from tests.support.load import Load, bodies, failed, summary
from tests.support.routed import Routed, RoutedApp
from tests.support.state import show

pytestmark = pytest.mark.docker


def inspect(routed: Routed, name: str) -> dict[str, Any]:
    found = routed.container_of(name)
    assert found is not None, f"{name} is gone"
    return found


def wait_restarts(routed: Routed, name: str, count: int, timeout: float = 30.0) -> None:
    """Until Docker has restarted ``name`` ``count`` times (its restart policy, after it died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(inspect(routed, name).get("RestartCount") or 0) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} was not restarted {count} times in {timeout}s: {inspect(routed, name)['State']}")


def test_a_fix_commit_replaces_a_crash_looping_release_and_the_warm_one_serves_until_it_does(routed: Routed) -> None:
    # stable_after 1s: the window in which a one-shot pass takes a dying release back has passed by the fix.
    web = routed.app("web", tags=("v1", "v3"), dies=("v2",), dies_after=2.0, keep_warm="10m", stable_after="1s")
    routed.world.commit_apps("v1")
    assert routed.world.server().returncode == 0
    routed.wait_serving(f"{web.name} v1")
    routed.world.set(web.name, "v2")
    result = routed.world.server()
    assert result.returncode == 0, show(result)  # it passed its gate: it dies 2 s after its start
    warm = inspect(routed, f"{web.name}.prev")["Id"]
    wait_restarts(routed, web.name, 2)
    load = Load(routed.port, threads=2, keepalive_threads=1, rate=100)
    load.start()
    try:
        routed.world.set(web.name, "v3")
        result = routed.world.server()
        assert result.returncode == 0, show(result)
        routed.wait_serving(f"{web.name} v3", timeout=5)
        # The warm v1 was there, running, all along: the fix never removed it.
        kept = inspect(routed, f"{web.name}.prev")
        assert kept["Id"] == warm and kept["State"]["Status"] == "running", kept["State"]
        time.sleep(0.5)
    finally:
        hits = load.stop()
    assert "failed" not in result.stdout, show(result)
    dying = inspect(routed, f"{web.name}.failed")
    assert dying["State"]["Status"] == "exited" and dying["Config"]["Image"].endswith(":v2"), dying["State"]
    first_v3 = next(hit for hit in hits if hit.body == f"{web.name} v3")
    after = [hit for hit in hits if hit.started > first_v3.ended]
    assert after and set(bodies(after)) == {f"{web.name} v3"} and not failed(after), summary(after)


def test_a_release_that_dies_after_it_went_live_is_rolled_back_kept_as_failed_and_held(routed: Routed) -> None:
    # keep_warm 0s: v1 is stopped once v2 serves; taking v2 back starts v1 again, gates it and switches.
    web = routed.app("web", tags=("v1",), dies=("v2",), dies_after=3.0, keep_warm="0s", stable_after="1m")
    routed.world.commit_apps("v1")
    agent = routed.world.agent(interval="1s")
    agent.wait_for("deploy.succeeded", timeout=60)
    routed.wait_serving(f"{web.name} v1")
    mark = agent.mark()
    routed.world.set(web.name, "v2")
    agent.wait_for("deploy.succeeded", "v2", since=mark, timeout=60)
    line = agent.wait_for("deploy.rolled-back", since=mark, timeout=60)
    assert "v2" in line.message and "after it went live" in line.message and "rolled back to v1" in line.message, (
        agent.log()
    )
    routed.wait_serving(f"{web.name} v1", timeout=10)
    dying = inspect(routed, f"{web.name}.failed")
    assert dying["State"]["Status"] == "exited" and dying["Config"]["Image"].endswith(":v2"), dying["State"]
    agent.wait_for("deploy.held", since=mark, timeout=30)
    time.sleep(3)  # a few more passes: nothing is said again, v2 is not tried again
    assert len(agent.events("deploy.rolled-back", since=mark)) == 1, agent.log()
    assert not agent.events("deploy.failed", since=mark), agent.log()
    assert len(agent.events("deploy.succeeded", "v2", since=mark)) == 1, agent.log()
    routed.wait_serving(f"{web.name} v1", timeout=1)
    status = routed.world.server("status")
    assert "in sync" not in status.stdout, show(status)


def test_a_one_shot_pass_takes_back_a_release_that_died_inside_its_window(routed: Routed) -> None:
    web = routed.app("web", tags=("v1",), dies=("v2",), dies_after=1.0, stable_after="10m")
    routed.world.commit_apps("v1")
    assert routed.world.server().returncode == 0
    routed.world.set(web.name, "v2")
    result = routed.world.server()
    assert result.returncode == 0, show(result)
    wait_restarts(routed, web.name, 1)
    result = routed.world.server()
    assert result.returncode != 0, show(result)
    assert "v2 failed: it" in result.stdout and "after it went live" in result.stdout, show(result)
    assert "rolled back to v1" in result.stdout and "applied" not in result.stdout, show(result)  # not again
    routed.wait_serving(f"{web.name} v1", timeout=5)
    assert inspect(routed, f"{web.name}.failed")["State"]["Status"] == "exited"


@dataclass
class IgnoresSigterm(RoutedApp):
    """A routed app whose busybox httpd is PID 1 (no init): it ignores SIGTERM, so a stop waits stop_timeout."""

    def yaml(self) -> str:
        return (
            super()
            .yaml()
            .replace("    init: true\n", "    init: false\n")
            .replace("stop_timeout: 2s", "stop_timeout: 10s")
        )


def when(stamp: str) -> datetime:
    """Docker's RFC 3339 time (nanoseconds, trailing zeros dropped) as a datetime."""
    head, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(fraction or '0')[:6]:0<6}+00:00")


def test_a_warm_release_is_cooled_while_the_pass_deploys_and_stopped_before_the_run_ends(routed: Routed) -> None:
    plain = routed.app("web", tags=("v1", "v2"), keep_warm="1s")
    web = routed.world.apps[plain.name] = IgnoresSigterm(plain.name, plain.image, plain.port, "v1", keep_warm="1s")
    api = routed.app("api", tags=("v1", "v2"), hosts=("api.example",))
    routed.world.commit_apps("v1")
    assert routed.world.server().returncode == 0
    result = deployed_to(routed, web.name, "v2")
    assert result.returncode == 0, show(result)
    assert inspect(routed, f"{web.name}.prev")["State"]["Status"] == "running"  # v1, warm for 1 s
    time.sleep(1.5)
    result = deployed_to(routed, api.name, "v2")  # the pass cools v1 and deploys api
    assert result.returncode == 0, show(result)
    assert f"stopped the warm {web.name}.prev (v1)" in result.stdout, show(result)
    cooled = inspect(routed, f"{web.name}.prev")
    assert cooled["State"]["Status"] == "exited", cooled["State"]  # stopped before the run ended
    # v1 ignored SIGTERM for its 10 s stop timeout, and api's release did not wait for it.
    assert when(inspect(routed, api.name)["State"]["StartedAt"]) < when(cooled["State"]["FinishedAt"])


def deployed_to(routed: Routed, name: str, version: str) -> subprocess.CompletedProcess[str]:
    routed.world.set(name, version)
    return routed.world.server()
