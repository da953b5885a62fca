"""A pass that fails, as the agent tells it: one ``pass.error`` per fault (again when it changes, and
``pass.recovered`` when a pass goes through), and ``/healthz`` that says 503 once ``FAILED_PASSES`` failed
in a row. Fast: the agent's loop runs in this process, its pass replaced by one that fails as told."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

from reconciler.agent.loop import FAILED_PASSES, Agent, AgentSettings
from reconciler.converge.run import Settings
from reconciler.core.model import DesiredState
from reconciler.core.report import Outcome
from reconciler.errors import ProxyError
from reconciler.telemetry.log import EventLog

REVISION = "a" * 40


def agent_with(tmp_path: Path, faults: list[Exception | None]) -> tuple[Agent, io.StringIO]:
    """An agent whose passes raise ``faults`` in turn (None: a pass that goes through)."""
    stream = io.StringIO()
    state = tmp_path / "state"
    state.mkdir()
    agent = Agent(AgentSettings(Settings(state_dir=state), interval=1.0), EventLog(fmt="json", stream=stream))
    agent.engine = SimpleNamespace(host="unix:///fake.sock")
    agent._read = lambda: (REVISION, DesiredState(apps={}))  # type: ignore[method-assign]
    pending = list(faults)

    def converge(revision: str, desired: DesiredState) -> list[Outcome]:
        fault = pending.pop(0)
        if fault is not None:
            raise fault
        return []

    agent._converge = converge  # type: ignore[method-assign]
    return agent, stream


def events(stream: io.StringIO) -> list[tuple[str, str]]:
    return [(line["event"], line["message"]) for line in map(json.loads, stream.getvalue().splitlines())]


def test_one_fault_is_one_pass_error_said_again_when_it_changes_and_once_when_it_clears(tmp_path: Path) -> None:
    socket = ProxyError("proxy reconciler-proxy: its runtime API does not answer (Connection refused)")
    taken = ProxyError("proxy.listen: 0.0.0.0:80 is taken by process 42 (nginx)")
    agent, stream = agent_with(tmp_path, [socket, socket, socket, taken, taken, None, None])
    for _ in range(7):
        agent.tick()
    assert events(stream) == [
        ("pass.error", str(socket)),
        ("pass.error", str(taken)),
        ("pass.recovered", "passes go through again"),
    ]


def test_healthz_says_503_after_failed_passes_in_a_row_and_200_after_one_goes_through(tmp_path: Path) -> None:
    fault = ProxyError("proxy.listen: 0.0.0.0:80 is taken by process 42 (nginx)")
    agent, _ = agent_with(tmp_path, [fault] * FAILED_PASSES + [None])
    for _ in range(FAILED_PASSES - 1):
        agent.tick()
    assert agent.health().alive  # a blip: the next pass, seconds later, often clears it
    agent.tick()
    health = agent.health()
    assert not health.alive and health.failing
    assert health.detail == f"the last {FAILED_PASSES} passes failed: {fault}"
    assert agent.liveness().alive  # the loop goes on: the systemd watchdog does not restart the agent
    agent.tick()
    assert agent.health().alive and not agent.health().failing
