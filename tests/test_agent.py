"""End to end: `reconcile agent` follows a branch and keeps a real Docker engine converged to it.

Every test runs the agent as a real process (`python -m reconciler agent`) against the real engine,
a real bare git repository it watches (or mirrors, for a URL), and locally built busybox images, and
asserts what a user sees: the agent's event lines on stderr, the body the app serves, `docker ps -a`,
`reconcile status` and exit codes. Each test has its own app names, state directory and reconciler
instance; the agent is always stopped when the test ends (SIGTERM, then SIGKILL).

The agent runs with `--interval 60s` unless a test needs fetches: anything that happens within a few
seconds was triggered by the watcher on the bare repository or by SIGHUP, not by the timer. Before a
test pushes, it waits for the first pass to end and the watcher to be up (`wait_watching`: an inotify
descriptor in the agent's /proc/PID/fd); a push during the first pass has a test of its own.
The engine restart test is in tests/test_agent_engine_restart.py: it disturbs the whole engine.
The `world` fixture is in tests/conftest.py; the helpers are in tests/support/agent.py and
tests/support/state.py.
"""

from __future__ import annotations

import functools
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import AppNames, ImageFactory, free_port, http_get, state
from tests.support.agent import KNOWN_EVENTS, PASS_DONE, AgentProcess, LogLine, World, wait_body
from tests.support.state import FILE, cli, desired, inspect, is_running, labels, must_inspect, names_of, show

DEPLOY_EVENTS = ("deploy.succeeded", "deploy.rolled-back", "deploy.failed", "deploy.superseded")


# -- helpers ---------------------------------------------------------------------------------------

# The apps of these tests fail their gate after 5 s unless a test says otherwise, and get 10 s to answer.
app_yaml = functools.partial(state.app_yaml, timeout="5s")
body = functools.partial(state.body, timeout=10.0)


def deploy_lines(agent: AgentProcess, app: str, since: int = 0) -> list[LogLine]:
    return [line for event in DEPLOY_EVENTS for line in agent.events(event, app=app, since=since)]


def agent_after_first_pass(world: World, *apps: str, extra: tuple[str, ...] = ()) -> AgentProcess:
    """`world.agent(*extra)`, once its first pass has deployed each of `apps` and its watcher is up; it says
    `pass.done` after each pass (``AgentProcess.pass_after``).

    From then on a push wakes the agent through the watcher; a push during the first pass has a test of
    its own (test_push_during_the_first_pass_is_not_missed).
    """
    agent = world.agent(*extra, env=PASS_DONE)
    for app in apps:
        agent.wait_for("deploy.succeeded", app=app, timeout=20)
    agent.wait_watching()
    return agent


# -- 1. deploy on push, upgrade on push --------------------------------------------------------------


def test_push_deploys_and_upgrades_within_seconds_and_status_shows_it(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    first = world.commit(desired(app_yaml(app, world.web(), "v1", port)), "deploy v1")
    agent = world.agent()

    line = agent.wait_for("deploy.succeeded", app=app, timeout=20)
    assert line.commit == first[:8], line.raw
    assert body(port) == "v1"
    # The first pass is over and the watcher is up (a push during the first pass: see the next test).
    agent.wait_watching()

    mark = agent.mark()
    pushed = time.monotonic()
    second = world.commit(desired(app_yaml(app, world.web(), "v2", port)), "upgrade to v2")
    seen = agent.wait_for("commit.seen", second[:8], since=mark, timeout=10)
    done = agent.wait_for("deploy.succeeded", app=app, since=mark, timeout=15)
    took = time.monotonic() - pushed
    assert second[:8] in done.raw and "v2" in done.message, done.raw
    assert took < 10, f"a push converged in {took:.1f}s with --interval 60s\n{agent.log()}"
    assert seen is not None
    assert body(port) == "v2"
    assert is_running(must_inspect(world.client, app))
    assert labels(must_inspect(world.client, app))["io.reconciler.commit"] == second

    text = world.status().stdout
    mine = [ln for ln in text.splitlines() if ln.startswith(app + ":")]
    assert mine, text
    assert "desired v2" in mine[0] and "running v2" in mine[0] and "in sync" in mine[0], text
    assert "healthy" in mine[0], text
    assert f"agent running (pid {agent.pid})" in text, text
    assert f"last applied: v2 @ {second[:8]} succeeded" in text, text

    status = world.status_of(app)
    assert status["in_sync"] is True
    assert status["desired"] == status["running"] == "v2"
    assert status["health"] == "healthy"
    assert status["last_applied"]["commit"] == second[:8]
    assert status["last_attempted"]["commit"] == second[:8]
    assert status["held"] is None and status["failed"] == []
    assert status["_top"]["revision"] == second
    assert status["_top"]["agent_pid"] == agent.pid


def test_push_during_the_first_pass_is_not_missed(world: World, images: ImageFactory, app_names: AppNames) -> None:
    """A push that lands while the agent's first pass is still deploying converges within seconds too."""
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port, healthy_for="3s")), "v1, slow gate")
    agent = world.agent()
    wait_body(port, "v1", 15, agent)  # the first pass is in v1's gate
    assert not agent.events("deploy.succeeded", app=app), agent.log()

    second = world.commit(desired(app_yaml(app, world.web(), "v2", port)), "v2")

    first_pass_over = agent.wait_for("deploy.succeeded", "v1", app=app, timeout=20)
    seen = agent.wait_for("commit.seen", second[:8], timeout=70)
    done = agent.wait_for("deploy.succeeded", "v2", app=app, timeout=20)
    assert done.commit == second[:8], done.raw
    wait_body(port, "v2", 5, agent)
    late = seen.at - first_pass_over.at
    assert late < 2, f"the push was seen {late:.1f}s after the first pass ended (--interval 60s)\n{agent.log()}"


# -- 2. broken releases: rolled back, held, retried on demand, fixed by a commit ---------------------


def history_rows(world: World, app: str) -> list[dict[str, Any]]:
    result = world.history("--app", app, "--output", "json", "--limit", "100")
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def test_broken_releases_roll_back_are_held_and_retried_only_on_demand(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2-crash", exit_at_start=True)
    images.build("web", "v3-no-health", healthy=False)
    images.build("web", "v4")
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port, timeout="2s")), "v1")
    agent = agent_after_first_pass(world, app)
    v1_id = must_inspect(world.client, app)["Id"]

    # A release that exits at start.
    mark = agent.mark()
    crash = world.commit(desired(app_yaml(app, world.web(), "v2-crash", port, timeout="2s")), "v2 crashes")
    line = agent.wait_for("deploy.rolled-back", app=app, since=mark, timeout=20)
    assert crash[:8] in line.raw and "v2-crash" in line.message and "v1" in line.message, line.raw
    assert body(port) == "v1"
    current = must_inspect(world.client, app)
    assert current["Id"] == v1_id and is_running(current)
    failed = must_inspect(world.client, app + ".failed")
    assert labels(failed)["io.reconciler.version"] == "v2-crash" and not is_running(failed)

    # Not tried again in a loop: passes (SIGHUP) hold it back, one `deploy.held` line, no new attempt.
    attempts = len(history_rows(world, app))
    agent.hup()
    held = agent.wait_for("deploy.held", app=app, since=mark, timeout=10)
    assert "v2-crash" in held.message and f"reconcile retry {app}" in held.message, held.raw
    for _ in range(3):
        asked = time.time()
        agent.hup()
        agent.pass_after(asked)  # the pass the hangup asked for went through, and nothing happened
        assert len(history_rows(world, app)) == attempts, history_rows(world, app)
    assert len(deploy_lines(agent, app, since=mark)) == 1, agent.log()
    assert len(agent.events("deploy.held", app=app, since=mark)) == 1, agent.log()
    assert must_inspect(world.client, app)["Id"] == v1_id
    assert body(port) == "v1"

    status = world.status_of(app)
    assert status["desired"] == "v2-crash" and status["running"] == "v1", status
    assert status["held"], status
    assert [(f["version"], f["commit"], f["culprit"]) for f in status["failed"]] == [("v2-crash", crash[:8], True)]
    assert status["last_attempted"]["commit"] == crash[:8] and status["last_attempted"]["result"] == "rolled-back"
    assert status["last_applied"]["version"] == "v1"
    text = world.status().stdout
    assert "held back:" in text and f"reconcile retry {app}" in text, text
    assert f"failed: v2-crash @ {crash[:8]}" in text, text

    # `reconcile retry` forgets the failure and wakes the agent: one more attempt, rolled back again.
    mark = agent.mark()
    retry = cli("retry", app, "--state-dir", world.state)
    assert retry.returncode == 0, show(retry)
    assert f"pid {agent.pid}" in retry.stdout, show(retry)
    again = agent.wait_for("deploy.rolled-back", app=app, since=mark, timeout=20)
    assert crash[:8] in again.raw
    assert body(port) == "v1"
    assert len(deploy_lines(agent, app, since=mark)) == 1, agent.log()
    nothing = cli("retry", app_names("nothing-failed"), "--state-dir", world.state)
    assert nothing.returncode == 1 and "nothing to retry" in nothing.stderr, show(nothing)

    # A release that answers 404 on its health URL.
    mark = agent.mark()
    no_health = world.commit(desired(app_yaml(app, world.web(), "v3-no-health", port, timeout="2s")), "v3 404")
    line = agent.wait_for("deploy.rolled-back", app=app, since=mark, timeout=20)
    assert no_health[:8] in line.raw and "v3-no-health" in line.message and "404" in line.message, line.raw
    assert body(port) == "v1"
    assert must_inspect(world.client, app)["Id"] == v1_id
    failed = must_inspect(world.client, app + ".failed")
    assert labels(failed)["io.reconciler.version"] == "v3-no-health" and not is_running(failed)
    assert {n for n in names_of(world.client, app) if ".failed" in n} == {app + ".failed"}

    # A commit that fixes the app deploys at once.
    mark = agent.mark()
    fixed = world.commit(desired(app_yaml(app, world.web(), "v4", port, timeout="2s")), "v4 fixes it")
    done = agent.wait_for("deploy.succeeded", app=app, since=mark, timeout=20)
    assert fixed[:8] in done.raw
    assert body(port) == "v4"
    status = world.status_of(app)
    assert status["in_sync"] is True and status["held"] is None, status
    assert status["last_applied"]["commit"] == fixed[:8]


# -- 3. force push to an older commit -----------------------------------------------------------------


def test_force_push_to_an_older_commit_runs_the_older_version(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    first = world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
    agent = world.agent()
    agent.wait_for("deploy.succeeded", first[:8], app=app, timeout=20)
    agent.wait_watching()  # first pass over, watcher up: see test_push_during_the_first_pass_is_not_missed
    world.commit(desired(app_yaml(app, world.web(), "v2", port)), "v2")
    agent.wait_for("deploy.succeeded", "v2", app=app, timeout=20)
    assert body(port) == "v2"

    mark = agent.mark()
    assert world.remote.reset_hard("HEAD~1") == first
    world.remote.push(force=True)

    agent.wait_for("commit.seen", first[:8], since=mark, timeout=10)
    done = agent.wait_for("deploy.succeeded", app=app, since=mark, timeout=20)
    assert first[:8] in done.raw
    wait_body(port, "v1", 5, agent)
    assert labels(must_inspect(world.client, app))["io.reconciler.commit"] == first
    assert world.status_of(app)["in_sync"] is True


# -- 4. a newer commit while a gate waits -----------------------------------------------------------


def test_newer_commit_during_a_gate_supersedes_it(world: World, images: ImageFactory, app_names: AppNames) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    images.build("web", "v3")
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
    agent = agent_after_first_pass(world, app)

    mark = agent.mark()
    slow = world.commit(desired(app_yaml(app, world.web(), "v2", port, healthy_for="4s")), "v2, slow gate")
    wait_body(port, "v2", 10, agent)  # v2 runs; its gate waits 4 s of good health
    newest = world.commit(desired(app_yaml(app, world.web(), "v3", port)), "v3")

    superseded = agent.wait_for("deploy.superseded", app=app, since=mark, timeout=10)
    assert "v2" in superseded.message and superseded.commit == slow[:8], superseded.raw
    done = agent.wait_for("deploy.succeeded", "v3", app=app, since=mark, timeout=20)
    assert done.commit == newest[:8], done.raw
    wait_body(port, "v3", 5, agent)
    assert labels(must_inspect(world.client, app))["io.reconciler.version"] == "v3"
    assert not agent.events("deploy.rolled-back", app=app, since=mark), agent.log()
    assert world.status_of(app)["in_sync"] is True
    # Whatever is said about v2 (its gate, abandoned, may be given a verdict later) names v2's commit.
    for line in agent.events(None, app=app, since=mark):
        if line.event.startswith("deploy.") and "v3" not in line.message:
            assert line.commit == slow[:8], f"{line.raw}\n(v2 is commit {slow[:8]}, v3 is {newest[:8]})"


# -- 5. one app of a commit fails: the whole commit goes back -------------------------------------------


def test_multi_app_commit_with_one_failure_takes_every_app_back(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    images.build("web", "v2-no-health", healthy=False)
    good, bad = app_names("a-good"), app_names("b-bad")  # sorted: the good one deploys first
    good_port, bad_port = free_port(), free_port()
    world.commit(
        desired(app_yaml(good, world.web(), "v1", good_port), app_yaml(bad, world.web(), "v1", bad_port)), "both v1"
    )
    agent = agent_after_first_pass(world, good, bad)

    mark = agent.mark()
    sha = world.commit(
        desired(
            app_yaml(good, world.web(), "v2", good_port, timeout="2s"),
            app_yaml(bad, world.web(), "v2-no-health", bad_port, timeout="2s"),
        ),
        "both v2; one is broken",
    )
    bad_line = agent.wait_for("deploy.rolled-back", app=bad, since=mark, timeout=20)
    good_line = agent.wait_for("deploy.rolled-back", app=good, since=mark, timeout=20)

    assert sha[:8] in bad_line.raw and "v2-no-health" in bad_line.message, bad_line.raw
    assert "rolled back with" in good_line.message and sha[:8] in good_line.message, good_line.raw
    assert bad in good_line.message and "v1" in good_line.message, good_line.raw
    assert body(good_port) == "v1"
    assert body(bad_port) == "v1"
    for app in (good, bad):
        info = must_inspect(world.client, app)
        assert is_running(info) and labels(info)["io.reconciler.version"] == "v1"
    assert not agent.events("deploy.succeeded", since=mark), agent.log()

    good_status, bad_status = world.status_of(good), world.status_of(bad)
    assert good_status["running"] == bad_status["running"] == "v1"
    assert bad_status["held"] and [f["culprit"] for f in bad_status["failed"]] == [True], bad_status
    assert [f["culprit"] for f in good_status["failed"]] == [False], good_status


def test_a_commit_with_an_app_that_cannot_be_resolved_deploys_none_of_its_apps(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    good, bad = app_names("a-good"), app_names("b-bad")
    good_port, bad_port = free_port(), free_port()
    world.commit(
        desired(app_yaml(good, world.web(), "v1", good_port), app_yaml(bad, world.web(), "v1", bad_port)), "both v1"
    )
    agent = agent_after_first_pass(world, good, bad)

    mark = agent.mark()
    sha = world.commit(
        desired(app_yaml(good, world.web(), "v2", good_port), app_yaml(bad, world.web(), "v404", bad_port)),
        "both move on; one to a tag that does not exist",
    )
    blocked = agent.wait_for("commit.blocked", since=mark, timeout=20)
    assert sha[:8] in blocked.message and bad in blocked.message and "v404" in blocked.message, blocked.raw
    for _ in range(2):
        asked = time.time()
        agent.hup()
        agent.pass_after(asked)  # the pass the hangup asked for went through
    assert body(good_port) == "v1" and body(bad_port) == "v1", agent.log()
    assert not agent.events("deploy.succeeded", since=mark), agent.log()
    assert len(agent.events("commit.blocked", since=mark)) == 1, agent.log()  # logged once, not every pass

    mark = agent.mark()
    world.commit(
        desired(app_yaml(good, world.web(), "v2", good_port), app_yaml(bad, world.web(), "v2", bad_port)), "fixed"
    )
    agent.wait_for("deploy.succeeded", app=good, since=mark, timeout=20)
    agent.wait_for("deploy.succeeded", app=bad, since=mark, timeout=20)
    assert body(good_port) == "v2" and body(bad_port) == "v2"


# -- 6. self-heal -------------------------------------------------------------------------------------------


def test_stopped_or_removed_container_is_healed_at_the_next_pass(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
    agent = agent_after_first_pass(world, app)
    first_id = must_inspect(world.client, app)["Id"]

    mark = agent.mark()
    world.client.api.stop(app, timeout=2)
    assert not is_running(inspect(world.client, app))
    agent.hup()
    healing = agent.wait_for("drift.healing", app=app, since=mark, timeout=15)
    assert "start" in healing.raw, healing.raw
    agent.wait_for("deploy.succeeded", app=app, since=mark, timeout=15)  # the heal passed its gate
    wait_body(port, "v1", 10, agent)
    info = must_inspect(world.client, app)
    assert is_running(info) and info["Id"] == first_id

    mark = agent.mark()
    world.client.api.remove_container(app, force=True)
    agent.hup()
    healing = agent.wait_for("drift.healing", app=app, since=mark, timeout=15)
    assert "create" in healing.raw, healing.raw
    agent.wait_for("deploy.succeeded", app=app, since=mark, timeout=15)
    wait_body(port, "v1", 10, agent)
    info = must_inspect(world.client, app)
    assert is_running(info) and info["Id"] != first_id
    assert not agent.events("drift.found"), agent.log()
    assert not agent.events("deploy.failed") and not agent.events("deploy.rolled-back"), agent.log()


def test_no_self_heal_only_reports_drift(world: World, images: ImageFactory, app_names: AppNames) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
    agent = agent_after_first_pass(world, app, extra=("--no-self-heal",))  # deploys from git still happen
    assert body(port) == "v1"

    mark = agent.mark()
    world.client.api.stop(app, timeout=2)
    agent.hup()
    found = agent.wait_for("drift.found", app=app, since=mark, timeout=15)
    assert "--no-self-heal" in found.message, found.raw
    for _ in range(2):
        asked = time.time()
        agent.hup()
        agent.pass_after(asked)  # the pass the hangup asked for went through, and nothing happened
    assert not is_running(must_inspect(world.client, app))
    assert len(agent.events("drift.found", app=app, since=mark)) == 1, agent.log()
    assert not agent.events("drift.healing", since=mark), agent.log()
    assert not deploy_lines(agent, app, since=mark), agent.log()
    status = world.status_of(app)
    assert status["in_sync"] is False and status["state"] == "exited", status


# -- 7. the git remote goes away and comes back ---------------------------------------------------------


def test_remote_unreachable_is_logged_once_and_its_return_deploys_what_was_pushed_meanwhile(
    world: World, images: ImageFactory, app_names: AppNames, tmp_path: Path
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    bare = world.remote.bare_path
    url = bare.as_uri()
    world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
    agent = world.agent(repo=url, interval="1s", env=PASS_DONE)
    agent.wait_for("deploy.succeeded", app=app, timeout=20)

    away = tmp_path / "remote-away.git"
    mark = agent.mark()
    bare.rename(away)
    try:
        gone = agent.wait_for("remote.unreachable", since=mark, timeout=10)
        # A commit pushed while the agent cannot see the remote.
        world.remote.write(FILE, desired(app_yaml(app, world.web(), "v2", port)))
        meanwhile = world.remote.commit("v2 while the remote is away")
        pushed = time.time()
        world.remote.git("push", "-q", str(away), "HEAD:refs/heads/main")
        agent.pass_after(pushed, count=3)  # several passes go by: still one line, the app untouched
        assert len(agent.events("remote.unreachable", since=mark)) == 1, agent.log()
        assert body(port) == "v1"
        assert is_running(must_inspect(world.client, app))
        assert agent.alive()
    finally:
        if away.exists():
            away.rename(bare)

    agent.wait_for("remote.recovered", since=mark, timeout=20)
    # The line says which remote and why, in git's words (not the tail of a longer message).
    assert url in gone.message, gone.raw
    assert any(
        why in gone.message
        for why in ("does not appear to be a git repository", "Could not read from remote", "No such file")
    ), gone.raw
    done = agent.wait_for("deploy.succeeded", meanwhile[:8], app=app, since=mark, timeout=20)
    assert "v2" in done.message
    wait_body(port, "v2", 5, agent)
    assert len(agent.events("remote.unreachable", since=mark)) == 1, agent.log()
    assert len(agent.events("remote.recovered", since=mark)) == 1, agent.log()


# -- 8. SIGKILL at any step of a deploy: the next agent converges ------------------------------------------


UPGRADE_STEPS = ("create", "stop-old", "keep-old", "rename-new", "start-new", "gate")


def assert_keeps_serving(port: int, expected: str, seconds: float, agent: AgentProcess) -> None:
    """For `seconds`, every request gets `expected` (the app is never without a running container)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got = http_get(f"http://127.0.0.1:{port}/", timeout=1.0)
        except OSError as exc:
            got = (0, f"{type(exc).__name__}: {exc}")
        assert got == (200, expected), f"port {port} answered {got}, expected {expected!r}\n{agent.log()}"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("step", "broken"),
    [*((step, "") for step in UPGRADE_STEPS), ("roll-back", "no-health"), ("roll-back", "crash")],
    ids=[*UPGRADE_STEPS, "roll-back-404", "roll-back-crash"],
)
def test_agent_killed_at_a_step_of_a_deploy_is_converged_by_the_next_agent(
    world: World, images: ImageFactory, app_names: AppNames, step: str, broken: str
) -> None:
    images.build("web", "v1")
    new_version = {"": "v2", "no-health": "v2-no-health", "crash": "v2-crash"}[broken]
    images.build("web", new_version, healthy=broken != "no-health", exit_at_start=broken == "crash")
    expected = "v1" if broken else "v2"
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port, timeout="2s")), "v1")
    world.converge()
    assert body(port) == "v1"

    doomed = world.agent(env={"RECONCILE_KILL_AT": f"{app}:{step}"})
    doomed.wait_watching()
    sha = world.commit(desired(app_yaml(app, world.web(), new_version, port, timeout="2s")), new_version)
    code = doomed.wait_exit(timeout=30)
    assert code == -signal.SIGKILL, f"exit {code}\n{doomed.log()}"
    left = sorted(names_of(world.client, app))

    agent = world.agent()
    event = "deploy.rolled-back" if broken else "deploy.succeeded"
    done = agent.wait_for(event, app=app, timeout=30)
    assert new_version in done.message, f"{done.raw}\n(the crash left {left})"
    wait_body(port, expected, 10, agent)
    agent.wait_watching()
    agent.hup()  # one more pass: nothing is left to do
    assert_keeps_serving(port, expected, 1.5, agent)

    info = must_inspect(world.client, app)
    assert is_running(info) and labels(info)["io.reconciler.version"] == expected
    names = names_of(world.client, app)
    assert app + ".next" not in names, f"{names} (the crash left {left})"
    if broken:
        assert names == {app, app + ".failed"}, f"{names} (the crash left {left})"
        assert labels(must_inspect(world.client, app + ".failed"))["io.reconciler.version"] == new_version
        status = world.status_of(app)
        assert status["held"], f"the failed release is remembered, not tried again: {status}"
        assert [(f["version"], f["commit"]) for f in status["failed"]] == [(new_version, sha[:8])], status
        for held in agent.events("deploy.held", app=app):
            assert f"release {new_version} of {sha[:8]}" in held.message, held.raw
    else:
        assert names == {app, app + ".prev"}, f"{names} (the crash left {left})"
        prev = must_inspect(world.client, app + ".prev")
        assert labels(prev)["io.reconciler.version"] == "v1" and not is_running(prev)
        status = world.status_of(app)
        assert status["in_sync"] is True and status["health"] == "healthy", status
        assert status["last_applied"]["commit"] == sha[:8], status
    assert len(deploy_lines(agent, app)) == 1, agent.log()


# -- 9. SIGTERM -------------------------------------------------------------------------------------------------


def test_sigterm_exits_0_and_leaves_containers_running_even_mid_gate(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
    agent = world.agent()
    agent.wait_for("deploy.succeeded", app=app, timeout=20)
    assert (world.state / "agent.pid").read_text().strip() == str(agent.pid)

    assert agent.terminate(timeout=15) == 0, agent.log()
    assert agent.events("agent.stopped"), agent.log()
    assert agent.lines[-1].event == "agent.stopped", agent.log()
    assert is_running(must_inspect(world.client, app))
    assert body(port) == "v1"
    assert not (world.state / "agent.pid").exists()
    assert f"pid {agent.pid}" not in world.status().stdout

    # Mid-gate: the wait is abandoned, the new release keeps running, the next agent gives the verdict.
    agent = world.agent()
    agent.wait_watching()
    sha = world.commit(desired(app_yaml(app, world.web(), "v2", port, healthy_for="6s")), "v2, slow gate")
    wait_body(port, "v2", 10, agent)
    asked = time.monotonic()
    assert agent.terminate(timeout=15) == 0, agent.log()
    took = time.monotonic() - asked
    assert took < 4, f"SIGTERM mid-gate took {took:.1f}s (the gate had ~6s to go)\n{agent.log()}"
    assert agent.lines[-1].event == "agent.stopped", agent.log()
    assert not agent.events("deploy.rolled-back", app=app), agent.log()
    info = must_inspect(world.client, app)
    assert is_running(info) and labels(info)["io.reconciler.version"] == "v2"
    assert body(port) == "v2"

    agent = world.agent()
    done = agent.wait_for("deploy.succeeded", "v2", app=app, timeout=30)
    assert done.commit == sha[:8], done.raw
    assert body(port) == "v2"
    assert world.status_of(app)["last_applied"]["commit"] == sha[:8]


# -- 10. stable ---------------------------------------------------------------------------------------------------


def test_release_healthy_for_stable_after_is_promoted_and_version_stable_runs_it(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    app, port = app_names("web"), free_port()
    repo = images.repo(app)  # the app's own image repository: its :stable tag is this test's alone
    images.build(repo, "v1")
    images.build(repo, "v2")
    world.commit(desired(app_yaml(app, repo, "v1", port, stable_after="2s")), "v1")
    agent = world.agent()
    agent.wait_for("deploy.succeeded", app=app, timeout=20)

    promoted = agent.wait_for("stable.promoted", app=app, timeout=20)
    assert "v1" in promoted.message and f"{repo}:stable" in promoted.message, promoted.raw
    assert images.image_id(f"{repo}:stable") == images.image_id(f"{repo}:v1")
    assert world.status_of(app)["stable"] == "v1"
    agent.wait_watching()

    mark = agent.mark()
    world.commit(desired(app_yaml(app, repo, "v2", port, stable_after="10m")), "v2, not stable yet")
    agent.wait_for("deploy.succeeded", "v2", app=app, since=mark, timeout=20)
    assert body(port) == "v2"

    mark = agent.mark()
    back = world.commit(desired(app_yaml(app, repo, "stable", port, stable_after="10m")), "back to stable")
    done = agent.wait_for("deploy.succeeded", app=app, since=mark, timeout=20)
    assert done.commit == back[:8], done.raw
    wait_body(port, "v1", 5, agent)
    assert must_inspect(world.client, app)["Image"] == images.image_id(f"{repo}:v1")
    status = world.status_of(app)
    assert status["stable"] == "v1" and status["in_sync"] is True, status
    assert len(agent.events("stable.promoted", app=app)) == 1, agent.log()
    assert not agent.events("stable.unpublished"), "a promotion by the agent reports no problem\n" + agent.log()


# -- 11. JSON log lines ---------------------------------------------------------------------------------------------


def test_log_format_json_every_line_is_an_event_object(world: World, images: ImageFactory, app_names: AppNames) -> None:
    images.build("web", "v1")
    images.build("web", "v2-no-health", healthy=False)
    app, port = app_names("web"), free_port()
    first = world.commit(desired(app_yaml(app, world.web(), "v1", port, timeout="1s")), "v1")
    agent = agent_after_first_pass(world, app, extra=("--log-format", "json"))
    broken = world.commit(desired(app_yaml(app, world.web(), "v2-no-health", port, timeout="1s")), "broken")
    agent.wait_for("deploy.rolled-back", app=app, timeout=20)
    agent.hup()
    agent.wait_for("deploy.held", app=app, timeout=10)
    assert agent.terminate(timeout=15) == 0

    assert agent.lines, agent.log()
    for line in agent.lines:
        data = json.loads(line.raw)
        assert isinstance(data, dict), line.raw
        assert isinstance(data.get("event"), str) and data["event"] in KNOWN_EVENTS, line.raw
        assert isinstance(data.get("message"), str) and data["message"], line.raw
        assert isinstance(data.get("time"), str), line.raw
    assert agent.lines[0].event == "agent.started"
    assert agent.lines[-1].event == "agent.stopped"
    succeeded = agent.events("deploy.succeeded", app=app)[0].data
    rolled_back = agent.events("deploy.rolled-back", app=app)[0].data
    assert succeeded["app"] == app and succeeded["commit"] == first[:8], succeeded
    assert rolled_back["app"] == app and rolled_back["commit"] == broken[:8], rolled_back
    assert "v2-no-health" in rolled_back["message"], rolled_back
    assert [line.data["commit"] for line in agent.events("commit.seen")] == [first[:8], broken[:8]]
    assert agent.stdout == [], "events go to stderr; stdout stays empty"


# -- 12. crash at start-new, and one agent per state directory ----------------------------------------


def test_agent_killed_at_start_new_of_a_broken_release_is_rolled_back_by_the_next_agent(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2-no-health", healthy=False)
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port, timeout="2s")), "v1")
    world.converge()
    assert body(port) == "v1"

    doomed = world.agent(env={"RECONCILE_KILL_AT": "start-new"})
    doomed.wait_watching()
    sha = world.commit(desired(app_yaml(app, world.web(), "v2-no-health", port, timeout="2s")), "broken")
    code = doomed.wait_exit(timeout=30)
    assert code == -signal.SIGKILL, f"exit {code}\n{doomed.log()}"
    left = sorted(names_of(world.client, app))

    agent = world.agent()
    done = agent.wait_for("deploy.rolled-back", app=app, timeout=30)
    assert "v2-no-health" in done.message, f"{done.raw}\n(the crash left {left})"
    wait_body(port, "v1", 10, agent)
    info = must_inspect(world.client, app)
    assert is_running(info) and labels(info)["io.reconciler.version"] == "v1"
    status = world.status_of(app)
    assert status["held"], f"the failed release is held back: {status}"
    assert [(f["version"], f["commit"]) for f in status["failed"]] == [("v2-no-health", sha[:8])], status


def test_a_second_agent_on_the_same_state_dir_exits_1_and_the_first_keeps_running(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
    first = agent_after_first_pass(world, app)
    pid_file = world.state / "agent.pid"
    assert pid_file.read_text().strip() == str(first.pid)

    second = cli("agent", "--repo", world.repo, "--branch", "main", "--state-dir", world.state, "--interval", "60s")

    assert second.returncode == 1, show(second)
    assert "already runs" in second.stdout + second.stderr, show(second)
    assert first.alive(), first.log()
    assert pid_file.exists() and pid_file.read_text().strip() == str(first.pid)
    assert body(port) == "v1"
    asked = time.time()
    first.hup()  # the first agent still works
    first.pass_after(asked)
    assert first.alive(), first.log()
