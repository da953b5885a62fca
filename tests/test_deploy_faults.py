"""End to end: deploys that something cuts short or that cannot be judged the usual way.

Against the real engine, real git repositories and busybox images built by the fixtures, asserting
what a user sees (log lines, `reconcile history`, `reconcile status`, the body the app serves):

- a rollback whose gate a newer commit abandons is a rollback (superseded), never "failed too";
- an `exec` probe that hangs fails the gate at the gate's timeout, not at the SDK's 60 s;
- the removal of an `APP.next` that an interrupted deploy left is journaled as `cleanup`;
- an agent killed at `roll-back` does not gate the failed release again: the verdict was journaled.

The engine restart mid-deploy is in tests/test_agent_engine_restart.py: it disturbs the whole engine.
"""

from __future__ import annotations

import functools
import json
import signal
import time
from typing import Any

from tests.support import AppNames, ImageFactory, free_port, state
from tests.support.agent import World, wait_body
from tests.support.state import Site, desired, inspect, is_running, labels, must_inspect, names_of, show

app_yaml = functools.partial(state.app_yaml, timeout="5s")


def history_rows(site: Site, app: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(site.history("--app", app, "--output", "json", "--limit", "100").stdout)
    return rows


def no_empty_reason(text: str) -> bool:
    """False when a message ends in a colon with nothing after it (`... failed too: `)."""
    return not any(line.rstrip().endswith(":") or ": ;" in line for line in text.splitlines())


def exec_app_yaml(name: str, image: str, version: str, port: int, argv: list[str], *, timeout: str) -> str:
    """An app entry gated by `exec: ARGV` in the container (every 200ms, passing after 500ms)."""
    return (
        "\n".join(
            [
                f"  {name}:",
                f"    image: {image}",
                f"    version: {version}",
                f'    ports: ["127.0.0.1:{port}:8000"]',
                "    init: true",
                "    stop_timeout: 2s",
                "    health:",
                f"      exec: {json.dumps(argv)}",
                "      interval: 200ms",
                f"      timeout: {timeout}",
                "      healthy_for: 500ms",
            ]
        )
        + "\n"
    )


# -- a rollback superseded by a newer commit ----------------------------------------------------------


def test_a_rollback_whose_gate_a_newer_commit_abandons_is_recorded_as_rolled_back(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v2")
    images.build("web", "v3-crash", exit_at_start=True)
    images.build("web", "v4")
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v2", port)), "v2")
    agent = world.agent()
    agent.wait_for("deploy.succeeded", app=app, timeout=20)
    agent.wait_watching()

    mark = agent.mark()
    # The crash fails its gate at once; v2 comes back and must pass the gate again, for 6 s.
    crash = world.commit(desired(app_yaml(app, world.web(), "v3-crash", port, healthy_for="6s")), "v3 crashes")
    deadline = time.monotonic() + 20
    while True:
        failed, current = inspect(world.client, app + ".failed"), inspect(world.client, app)
        if failed is not None and labels(failed)["io.reconciler.version"] == "v3-crash" and is_running(current):
            assert current is not None and labels(current)["io.reconciler.version"] == "v2"
            break
        assert time.monotonic() < deadline, f"v3-crash was not set aside within 20s\n{agent.log()}"
        time.sleep(0.05)
    wait_body(port, "v2", 5, agent)
    newest = world.commit(desired(app_yaml(app, world.web(), "v4", port)), "v4")

    back = agent.wait_for("deploy.rolled-back", app=app, since=mark, timeout=20)
    assert back.commit == crash[:8] and "rolled back to v2" in back.message, back.raw
    assert "failed too" not in back.message and "gate was abandoned" in back.message, back.raw
    done = agent.wait_for("deploy.succeeded", "v4", app=app, since=mark, timeout=20)
    assert done.commit == newest[:8], done.raw
    wait_body(port, "v4", 5, agent)
    assert not agent.events("deploy.failed", since=mark), agent.log()
    assert no_empty_reason("\n".join(line.message for line in agent.lines)), agent.log()

    rows = history_rows(world, app)
    crashed = [row for row in rows if row["to_version"] == "v3-crash"]
    assert [row["result"] for row in crashed] == ["rolled-back"], rows
    assert all(row["message"] and no_empty_reason(row["message"]) for row in crashed), rows
    assert "started" not in {row["result"] for row in rows}, rows
    text = world.history("--app", app).stdout
    assert no_empty_reason(text) and "failed" not in text.replace("failed:", ""), text
    status = world.status_of(app)
    assert status["running"] == "v4" and status["in_sync"] is True, status
    assert status["last_applied"]["commit"] == newest[:8], status
    assert no_empty_reason(world.status().stdout), world.status().stdout


# -- exec probes have a deadline ---------------------------------------------------------------------


def test_a_hung_exec_probe_fails_the_gate_at_its_timeout_not_the_sdks(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2-no-health", healthy=False)
    app, port = app_names("web"), free_port()
    # Exits 0 where /www/health exists (v1); hangs where it does not (v2-no-health).
    probe = ["sh", "-c", "test -f /www/health || sleep 100"]
    site.commit(desired(exec_app_yaml(app, site.web(), "v1", port, probe, timeout="5s")), "v1")
    site.converge()
    assert is_running(must_inspect(site.client, app))

    site.commit(desired(exec_app_yaml(app, site.web(), "v2-no-health", port, probe, timeout="2s")), "v2 hangs")
    began = time.monotonic()
    result = site.reconcile()
    took = time.monotonic() - began

    assert result.returncode == 1, show(result)
    assert "rolled back to v1" in result.stdout, show(result)
    assert "not healthy after 2s" in result.stdout and "no exit within" in result.stdout, show(result)
    # Each hung exec would otherwise hold the gate for the SDK's own timeout (60 s).
    assert took < 30, f"a gate with timeout 2s took {took:.1f}s\n{show(result)}"
    info = must_inspect(site.client, app)
    assert is_running(info) and labels(info)["io.reconciler.version"] == "v1"
    assert labels(must_inspect(site.client, app + ".failed"))["io.reconciler.version"] == "v2-no-health"


# -- what a crash leaves, and what the journal says about it ---------------------------------------------


def test_a_stale_next_is_journaled_as_a_cleanup_not_a_removal_of_the_app(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    site.commit(desired(app_yaml(app, site.web(), "v1", port)), "v1")
    site.converge()
    site.commit(desired(app_yaml(app, site.web(), "v2", port)), "v2")
    killed = site.reconcile(env={"RECONCILE_KILL_AT": f"{app}:stop-old"})
    assert killed.returncode == -signal.SIGKILL, show(killed)
    assert app + ".next" in names_of(site.client, app)

    result = site.reconcile()

    assert result.returncode == 0, show(result)
    assert state.body(port, timeout=10) == "v2"
    assert app + ".next" not in names_of(site.client, app)
    rows = history_rows(site, app)
    cleanups = [row for row in rows if row["action"] == "cleanup"]
    assert len(cleanups) == 1, rows
    assert cleanups[0]["message"] == f"removed {app}.next left by an interrupted deploy", cleanups[0]
    assert cleanups[0]["result"] == "succeeded", cleanups[0]
    assert not [row for row in rows if row["action"] == "remove"], rows
    text = site.history("--app", app).stdout
    line = next(ln for ln in text.splitlines() if " cleanup " in ln)
    assert f"removed {app}.next left by an interrupted deploy" in line, text
    assert "v2 -> -" not in line and "v1 -> -" not in line, text


def test_an_agent_killed_at_roll_back_rolls_back_at_once_without_gating_the_release_again(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2-no-health", healthy=False)
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
    world.converge()

    doomed = world.agent(env={"RECONCILE_KILL_AT": f"{app}:roll-back"})
    doomed.wait_watching()
    # A slow verdict: judging the release again would keep it serving for 10 s more.
    sha = world.commit(desired(app_yaml(app, world.web(), "v2-no-health", port, timeout="10s")), "broken")
    code = doomed.wait_exit(timeout=40)
    assert code == -signal.SIGKILL, f"exit {code}\n{doomed.log()}"
    assert world.status_of(app)["last_attempted"]["result"] == "rolling-back"

    began = time.monotonic()
    agent = world.agent()
    done = agent.wait_for("deploy.rolled-back", app=app, timeout=30)
    wait_body(port, "v1", 10, agent)
    took = time.monotonic() - began
    assert done.commit == sha[:8] and "v2-no-health" in done.message and "404" in done.message, done.raw
    assert took < 7, f"v1 answered {took:.1f}s after the agent started: the release was gated again\n{agent.log()}"

    info = must_inspect(world.client, app)
    assert is_running(info) and labels(info)["io.reconciler.version"] == "v1"
    assert names_of(world.client, app) == {app, app + ".failed"}
    rows = [row for row in history_rows(world, app) if row["to_version"] == "v2-no-health"]
    assert [row["result"] for row in rows] == ["rolled-back"], rows
    status = world.status_of(app)
    assert status["held"], status
    assert [(f["version"], f["commit"]) for f in status["failed"]] == [("v2-no-health", sha[:8])], status
