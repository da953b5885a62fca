"""End to end: `reconcile agent` survives a restart of the Docker engine under it.

This test stops and starts the machine's real `dockerd` (SIGTERM to the pid in /var/run/docker.pid,
then the same command line again, detached with `setsid`, its output appended to /tmp/dockerd.log).
That disturbs everything on the engine, so it lives in its own file: run it apart from other test
runs (`pytest tests/test_agent_engine_restart.py`), or deselect it with `--deselect` / `-k`.

Whatever happens in the test, the `engine` fixture makes sure an engine answers again when it ends
(it starts dockerd itself when none runs), before the apps' containers are cleaned up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import AppNames, ImageFactory, free_port
from tests.support.agent import World, wait_body
from tests.support.state import app_yaml, desired, is_running, must_inspect

DOCKER_PID = Path("/var/run/docker.pid")
DOCKERD_LOG = Path("/tmp/dockerd.log")
ENGINE_TIMEOUT = 60.0


def engine_answers() -> bool:
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def dockerd_pid() -> int | None:
    """The pid of the running dockerd, from its pid file (None when there is none)."""
    try:
        pid = int(DOCKER_PID.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie left for an init that does not reap counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def dockerd_command(pid: int | None) -> list[str]:
    """The command line `pid` was started with, else plain `dockerd`."""
    if pid is not None:
        try:
            argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            argv = []
        if argv and Path(argv[0]).name == "dockerd":
            return argv
    return ["dockerd"]


def stop_dockerd(pid: int, timeout: float = ENGINE_TIMEOUT) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            raise AssertionError(f"dockerd (pid {pid}) did not exit within {timeout}s of SIGTERM")
        time.sleep(0.1)


def start_dockerd(command: list[str]) -> None:
    """Start dockerd detached from this process (its own session), output appended to DOCKERD_LOG."""
    with DOCKERD_LOG.open("ab") as log:
        subprocess.run(
            ["setsid", "-f", *command], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=True
        )


def wait_engine(timeout: float = ENGINE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not engine_answers():
        if time.monotonic() >= deadline:
            tail = DOCKERD_LOG.read_text(errors="replace")[-3000:] if DOCKERD_LOG.exists() else ""
            raise AssertionError(f"the Docker engine did not answer within {timeout}s; {DOCKERD_LOG}:\n{tail}")
        time.sleep(0.2)


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
