"""The agent's loop is woken by the engine's ``die`` event for a container of its instance, not by its
interval: at once, at most once a second however many die together, again after the engine's stream broke
(what died meanwhile included), and never for another instance's container. In-memory engine, the loop's
own ``Waker``; the real engine's stream is covered by ``test_zero_downtime.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from reconciler.agent.wake import DEATH_SPACING, DeathWatch, Waker
from reconciler.converge.run import parse_desired, resolve
from reconciler.core.plan import Target, plan
from tests.support.fake_engine import FakeEngine
from tests.support.fake_host import file_of


def target_of(fake: FakeEngine, app: str, version: str) -> Target:
    desired = parse_desired(file_of({app: version}).encode(), "desired-state.yaml", "b" * 40)
    [action] = [action for action in plan(desired, resolve(fake, desired), fake.observe()).actions if action.app == app]
    assert action.target is not None
    return action.target


def running(fake: FakeEngine, app: str, name: str | None = None) -> str:
    fake.build(f"example/{app}:v1")
    container = fake.create(target_of(fake, app, "v1"), name or app, env={})
    fake.start(container, name or app)
    return container


class Wakes:
    """The loop's waker, and every time it was set (``wake`` is what the watcher calls)."""

    def __init__(self) -> None:
        self.waker = Waker()
        self.times: list[float] = []
        self._lock = threading.Lock()

    def wake(self) -> None:
        with self._lock:
            self.times.append(time.monotonic())
        self.waker.set()

    def woken_within(self, seconds: float) -> bool:
        """As the loop waits: True when the waker was set before ``seconds`` passed."""
        started = time.monotonic()
        self.waker.wait(seconds)
        woken = time.monotonic() - started < seconds
        self.waker.clear()
        return woken


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def wakes(fake: FakeEngine) -> Iterator[tuple[Wakes, DeathWatch]]:
    seen = Wakes()
    watch = DeathWatch(lambda: fake, seen.wake)
    watch.start()
    time.sleep(0.1)  # the stream is open: a die before it would be none of ours to see
    yield seen, watch
    watch.stop()


def test_a_container_that_dies_wakes_the_loop_at_once(fake: FakeEngine, wakes: tuple[Wakes, DeathWatch]) -> None:
    seen, _ = wakes
    web = running(fake, "web")
    assert not seen.woken_within(0.3)  # a start is no death
    fake.die(web)
    assert seen.woken_within(0.5)


def test_another_instances_container_wakes_nothing(wakes: tuple[Wakes, DeathWatch]) -> None:
    seen, _ = wakes
    other = FakeEngine(instance="other")
    web = running(other, "web")
    other.die(web)
    assert not seen.woken_within(0.4)


def test_the_stops_of_a_pass_are_one_more_pass_not_a_storm(fake: FakeEngine, wakes: tuple[Wakes, DeathWatch]) -> None:
    seen, watch = wakes
    for i in range(20):  # each on the same host port: one runs at a time, as a pass replacing them does
        fake.stop(running(fake, f"app{i}"), f"app{i}", 1.0)
    time.sleep(DEATH_SPACING + 0.5)
    assert watch.deaths == 20
    assert len(seen.times) == 2, seen.times  # one at once, one when the spacing ends
    assert seen.times[1] - seen.times[0] >= DEATH_SPACING - 0.05


def test_a_death_while_the_engine_was_away_wakes_the_loop_once_it_answers(
    fake: FakeEngine, wakes: tuple[Wakes, DeathWatch]
) -> None:
    seen, _ = wakes
    web = running(fake, "web")
    with fake.down():
        time.sleep(0.2)  # the stream broke
        fake.die(web)  # said by the engine while no stream was open
        assert not seen.woken_within(0.3)
    assert seen.woken_within(3.0)  # the stream opened again and the engine replayed it
    fake.kill(running(fake, "api"), "api", "KILL")
    assert seen.woken_within(DEATH_SPACING + 0.5)  # and it follows the engine again


def test_the_watcher_ends_when_the_agent_stops(fake: FakeEngine) -> None:
    seen = Wakes()
    watch = DeathWatch(lambda: fake, seen.wake)
    watch.start()
    time.sleep(0.1)
    started = time.monotonic()
    watch.stop()
    assert time.monotonic() - started < 1.0
    assert not [thread for thread in threading.enumerate() if thread.name == "deaths"]
    fake.die(running(fake, "web"))
    time.sleep(0.2)
    assert not seen.times
