"""A deploy refused before its release ran is said once, not at every pass (the real agent, the real engine).

An env_file the server cannot read refuses the deploy before anything changes; the next passes meet the
same refusal: one ``deploy.failed`` line (and so one notification) per commit while it lasts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.agent import App, World, wait_body

pytestmark = pytest.mark.docker


@dataclass
class EnvFileApp(App):
    env_file: str = ""

    def yaml(self) -> str:
        text = super().yaml()
        return (
            text.replace("    init: true\n", f"    init: true\n    env_file: {self.env_file}\n")
            if self.env_file
            else text
        )


def test_an_env_file_that_cannot_be_read_is_said_once_per_commit(world: World, tmp_path: Path) -> None:
    plain = world.app("web")
    app = world.apps[plain.name] = EnvFileApp(plain.name, plain.image, plain.port, "v1")
    world.commit_apps("v1")
    agent = world.agent(interval="1s")
    agent.wait_for("deploy.succeeded", timeout=60)
    wait_body(app.port, "v1", timeout=10)
    mark = agent.mark()
    app.env_file = str(tmp_path)  # a folder: not a regular file
    world.set(app.name, "v2")
    line = agent.wait_for("deploy.failed", since=mark, timeout=30)
    assert "env_file" in line.message and "left as it was (v1)" in line.message, agent.log()
    time.sleep(5)  # several passes at a 1 s interval, each refused the same way
    assert len(agent.events("deploy.failed", since=mark)) == 1, agent.log()
    wait_body(app.port, "v1", timeout=1)
    mark = agent.mark()
    world.set(app.name, "v3")  # a new commit, still refused: said again, once
    agent.wait_for("deploy.failed", since=mark, timeout=30)
    time.sleep(3)
    assert len(agent.events("deploy.failed", since=mark)) == 1, agent.log()
