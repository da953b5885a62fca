"""Two apps that swap host ports in one commit, deployed in parallel (the real engine, the one-shot pass)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.support.agent import App, World, wait_body
from tests.support.state import show

pytestmark = pytest.mark.docker


@dataclass
class SlowToStop(App):
    """busybox httpd as PID 1 (no init) ignores SIGTERM: its stop takes the whole stop_timeout (2 s)."""

    def yaml(self) -> str:
        return super().yaml().replace("    init: true\n", "    init: false\n")


def test_two_apps_that_swap_host_ports_in_one_commit_both_deploy(world: World) -> None:
    a, plain = world.app("a"), world.app("b")
    b = world.apps[plain.name] = SlowToStop(plain.name, plain.image, plain.port, "v1")
    world.commit_apps("v1")
    result = world.server()
    assert result.returncode == 0, show(result)
    # a stops at once and would take b's port while b still stops: it waits for b, and b for a.
    a.port, b.port = b.port, a.port
    world.commit_apps("swap ports", {a.name: "v2", b.name: "v3"})
    result = world.server("--parallel", "4")
    assert result.returncode == 0, show(result)
    wait_body(a.port, "v2", timeout=5)
    wait_body(b.port, "v3", timeout=5)
