"""End to end: `reconcile agent` survives a restart of the Docker engine under it.

This test stops and starts the machine's real `dockerd` (SIGTERM to the pid in /var/run/docker.pid,
then the same command line again, detached with `setsid`, its output appended to /tmp/dockerd.log).
That disturbs everything on the engine, so it lives in its own file: run it apart from other test
runs (`pytest tests/test_agent_engine_restart.py`), or deselect it with `--deselect` / `-k`.

Three restarts: with the app idle, in the middle of a health gate, and early in a deploy (while the
old container stops). An outage mid-deploy is no failed release: no `deploy.failed`, one
`engine.unreachable`, and the journaled deploy is resumed within seconds of the engine's return.

Whatever happens in the test, the `engine` fixture makes sure an engine answers again when it ends
(it starts dockerd itself when none runs), before the apps' containers are cleaned up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import AppNames, ImageFactory, free_port
from tests.support.agent import World, wait_body
from tests.support.dockerd import (
    DOCKER_PID,
    dockerd_command,
    dockerd_pid,
    engine_answers,
    start_dockerd,
    stop_dockerd,
    wait_engine,
)
from tests.support.state import app_yaml, desired, inspect, is_running, labels, must_inspect, names_of

pytestmark = pytest.mark.apart  # it restarts the machine's engine: scripts/test runs it alone


@pytest.fixture
def engine(app_names: AppNames) -> Iterator[list[str]]:
    """The dockerd command line; when the test ends an engine answers again, whatever happened.

    Requests app_names so that this runs before the apps' containers are removed.
    """
    command = dockerd_command(dockerd_pid())
    try:
        yield command
    finally:
        if not engine_answers():
            if dockerd_pid() is None:
                start_dockerd(command)
            wait_engine()


def test_agent_survives_an_engine_restart_and_the_app_answers_again(
    engine: list[str], world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    sha = world.commit(desired(app_yaml(app, world.web(), "v1", port, timeout="5s")), "v1")
    agent = world.agent(interval="3s")
    agent.wait_for("deploy.succeeded", app=app, timeout=20)
    wait_body(port, "v1", 5, agent)
    container_id = must_inspect(world.client, app)["Id"]

    pid = dockerd_pid()
    assert pid is not None, f"no running dockerd in {DOCKER_PID}"
    mark = agent.mark()
    stop_dockerd(pid)
    assert not engine_answers()

    agent.wait_for("engine.unreachable", since=mark, timeout=30)
    time.sleep(3)  # a few passes while the engine is away (checked below: still one line)
    assert agent.alive(), agent.log()
    away = len(agent.events("engine.unreachable", since=mark))

    start_dockerd(engine)
    wait_engine()

    agent.wait_for("engine.recovered", since=mark, timeout=60)
    wait_body(port, "v1", 60, agent)
    assert agent.alive(), agent.log()
    info = must_inspect(world.client, app)
    assert is_running(info) and info["Id"] == container_id, "the same container runs again (not a new deploy)"
    assert away == len(agent.events("engine.unreachable", since=mark)) == 1, agent.log()
    assert len(agent.events("engine.recovered", since=mark)) == 1, agent.log()
    assert not agent.events("deploy.rolled-back", since=mark), agent.log()
    assert not agent.events("deploy.failed", since=mark), agent.log()
    status = world.status_of(app)
    assert status["in_sync"] is True and status["health"] == "healthy", status
    assert status["last_applied"]["commit"] == sha[:8], status


# -- an engine restart in the middle of a deploy ------------------------------------------------------


def restart_engine(command: list[str]) -> None:
    """Stop dockerd (SIGTERM, wait for its exit), start it again, and wait until it answers."""
    pid = dockerd_pid()
    assert pid is not None, f"no running dockerd in {DOCKER_PID}"
    stop_dockerd(pid)
    assert not engine_answers()
    start_dockerd(command)
    wait_engine()


def history_rows(world: World, app: str) -> list[dict[str, Any]]:
    result = world.history("--app", app, "--output", "json", "--limit", "100")
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def test_an_engine_restart_during_a_gate_is_no_failed_deploy_and_the_gate_is_resumed(
    engine: list[str], world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port, timeout="5s")), "v1")
    agent = world.agent()
    agent.wait_for("deploy.succeeded", app=app, timeout=20)
    agent.wait_watching()

    mark = agent.mark()
    # A gate of 8 s of good health: the engine goes away in the middle of it.
    sha = world.commit(desired(app_yaml(app, world.web(), "v2", port, timeout="20s", healthy_for="8s")), "v2")
    wait_body(port, "v2", 15, agent)
    restart_engine(engine)
    back = time.monotonic()

    done = agent.wait_for("deploy.succeeded", "v2", app=app, since=mark, timeout=60)
    assert done.commit == sha[:8], done.raw
    wait_body(port, "v2", 10, agent)
    # The resumed gate takes its 8 s; a bound far below a pass interval (60 s) and its backoff.
    took = time.monotonic() - back
    assert took < 30, f"v2 was verified {took:.1f}s after the engine answered again\n{agent.log()}"
    assert len(agent.events("engine.unreachable", since=mark)) == 1, agent.log()
    assert agent.events("engine.recovered", since=mark), agent.log()
    for event in ("deploy.failed", "deploy.rolled-back", "pass.error"):
        assert not agent.events(event, since=mark), agent.log()
    rows = history_rows(world, app)
    assert "started" not in {row["result"] for row in rows}, rows
    assert [row["result"] for row in rows if row["revision"] == sha] == ["succeeded"], rows
    status = world.status_of(app)
    assert status["in_sync"] is True and status["running"] == "v2", status
    assert status["last_applied"]["commit"] == sha[:8] and status["failed"] == [], status


def test_an_engine_restart_early_in_a_deploy_is_ridden_out_and_the_deploy_is_finished(
    engine: list[str], world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    # v1 without --init ignores SIGTERM: stopping it takes its whole stop_timeout (2 s), the moment in
    # which the engine goes away.
    slow_stop = app_yaml(app, world.web(), "v1", port, timeout="5s").replace("init: true", "init: false")
    world.commit(desired(slow_stop), "v1, slow to stop")
    agent = world.agent(interval="60s")
    agent.wait_for("deploy.succeeded", app=app, timeout=20)
    agent.wait_watching()

    mark = agent.mark()
    sha = world.commit(desired(app_yaml(app, world.web(), "v2", port, timeout="5s")), "v2")
    deadline = time.monotonic() + 20
    while inspect(world.client, app + ".next") is None:  # created: the swap comes next
        assert time.monotonic() < deadline, f"no {app}.next within 20s\n{agent.log()}"
        time.sleep(0.01)
    restart_engine(engine)
    back = time.monotonic()

    done = agent.wait_for("deploy.succeeded", "v2", app=app, since=mark, timeout=60)
    wait_body(port, "v2", 10, agent)
    took = time.monotonic() - back
    assert done.commit == sha[:8], done.raw
    assert took < 20, f"v2 answered {took:.1f}s after the engine answered again\n{agent.log()}"
    assert len(agent.events("engine.unreachable", since=mark)) == 1, agent.log()
    assert agent.events("engine.recovered", since=mark), agent.log()
    for event in ("deploy.failed", "deploy.rolled-back", "pass.error"):
        assert not agent.events(event, since=mark), agent.log()

    info = must_inspect(world.client, app)
    assert is_running(info) and labels(info)["io.reconciler.version"] == "v2"
    assert app + ".next" not in names_of(world.client, app)
    rows = history_rows(world, app)
    assert "started" not in {row["result"] for row in rows}, rows
    # Newest first: the deploy that finished, after the one the outage cut short (closed, not left open).
    deploys = [row["result"] for row in rows if row["revision"] == sha and row["action"] != "cleanup"]
    assert deploys[:1] == ["succeeded"] and set(deploys[1:]) <= {"interrupted"}, rows
    status = world.status_of(app)
    assert status["in_sync"] is True and status["health"] == "healthy", status
    assert status["last_applied"]["commit"] == sha[:8] and status["failed"] == [], status
