"""The deploys of one pass run concurrently (`--parallel N`), and it still reads as one pass.

Real CLI and agent, real engine, real git (as tests/test_converge.py and tests/test_agent.py).
What a user sees: how long the pass took, what each app serves, the order of the report, and that a
commit with one broken app still goes back whole when its apps were deployed side by side.
"""

from __future__ import annotations

import json
import time

from tests.support import AppNames, ImageFactory, free_port
from tests.support.agent import World
from tests.support.state import Site, app_yaml, body, desired, labels, must_inspect, show

GATE = 2.0  # seconds of good health each app's gate asks for


def test_a_pass_deploys_its_apps_side_by_side_and_reports_them_in_the_plan_s_order(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    apps = [app_names(f"p{index}") for index in range(6)]
    ports = {app: free_port() for app in apps}
    first = sorted(apps)[0]
    # The first app of the plan has the longest gate, so it finishes last: the report keeps plan order.
    entries = [
        app_yaml(app, site.web(), "v1", ports[app], healthy_for=f"{GATE + 1 if app == first else GATE:g}s")
        for app in apps
    ]
    site.commit(desired(*entries), "six apps")

    began = time.monotonic()
    result = site.reconcile("--output", "json")
    took = time.monotonic() - began

    assert result.returncode == 0, show(result)
    serial = len(apps) * GATE
    assert took < serial * 2 / 3, f"{took:.1f}s for {len(apps)} gates of {GATE:g}s: not side by side"
    report = json.loads(result.stdout)
    assert [outcome["app"] for outcome in report["outcomes"]] == sorted(apps), report["outcomes"]
    assert {outcome["result"] for outcome in report["outcomes"]} == {"applied"}, report["outcomes"]
    for app in apps:
        assert body(ports[app]) == "v1"


def test_parallel_1_deploys_one_app_after_another(site: Site, images: ImageFactory, app_names: AppNames) -> None:
    images.build("web", "v1")
    apps = [app_names(f"s{index}") for index in range(3)]
    ports = {app: free_port() for app in apps}
    site.commit(desired(*(app_yaml(app, site.web(), "v1", ports[app], healthy_for="1s") for app in apps)), "three")

    began = time.monotonic()
    result = site.reconcile("--parallel", "1", "--output", "json")
    took = time.monotonic() - began

    assert result.returncode == 0, show(result)
    assert took >= len(apps) * 1.0, f"{took:.1f}s: three 1 s gates one after another take 3 s at least"
    assert [outcome["app"] for outcome in json.loads(result.stdout)["outcomes"]] == sorted(apps)
    for app in apps:
        assert body(ports[app]) == "v1"


def test_parallel_0_is_refused(site: Site) -> None:
    result = site.reconcile("--parallel", "0")
    assert result.returncode != 0 and "--parallel" in result.stdout + result.stderr, show(result)


def test_one_broken_app_of_a_parallel_commit_takes_every_app_back(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    images.build("web", "v2-no-health", healthy=False)
    good = [app_names(f"a-good{index}") for index in range(3)]
    bad = app_names("b-bad")
    ports = {app: free_port() for app in [*good, bad]}
    world.commit(desired(*(app_yaml(app, world.web(), "v1", ports[app]) for app in ports)), "all v1")
    agent = world.agent()
    for app in ports:
        agent.wait_for("deploy.succeeded", app=app, timeout=30)
    agent.wait_watching()

    mark = agent.mark()
    began = time.monotonic()
    sha = world.commit(
        desired(
            *(app_yaml(app, world.web(), "v2", ports[app], timeout="2s") for app in good),
            app_yaml(bad, world.web(), "v2-no-health", ports[bad], timeout="2s"),
        ),
        "all v2; one is broken",
    )
    bad_line = agent.wait_for("deploy.rolled-back", app=bad, since=mark, timeout=30)
    good_lines = [agent.wait_for("deploy.rolled-back", app=app, since=mark, timeout=30) for app in good]
    took = time.monotonic() - began

    assert "v2-no-health" in bad_line.message and sha[:8] in bad_line.raw, bad_line.raw
    for line in good_lines:
        assert "rolled back with" in line.message and bad in line.message and sha[:8] in line.message, line.raw
    assert not agent.events("deploy.succeeded", since=mark), agent.log()
    for app, port in ports.items():
        assert body(port) == "v1"
        assert labels(must_inspect(world.client, app))["io.reconciler.version"] == "v1"
    # Side by side: the broken gate (2 s) and the good ones overlapped; one after another, four deploys
    # and their rollbacks take well over 12 s.
    assert took < 12, f"{took:.1f}s"
