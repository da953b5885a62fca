"""The in-memory engine refuses what a real engine refuses, with the errors the real adapter raises, so that a
fast test that passes against it does not pass for want of a refusal. (Its records are checked against a
real engine in ``test_fake_engine_parity.py``.)
"""

from __future__ import annotations

import pytest

from reconciler.converge.run import parse_desired, resolve
from reconciler.core.plan import Target, plan
from reconciler.errors import ContainerError, EngineUnavailable, ImageError
from tests.support.fake_engine import FakeClock, FakeEngine
from tests.support.fake_host import file_of


def target_of(fake: FakeEngine, app: str, version: str) -> Target:
    desired = parse_desired(file_of({app: version}).encode(), "desired-state.yaml", "b" * 40)
    [action] = plan(desired, resolve(fake, desired), fake.observe()).actions
    assert action.target is not None
    return action.target


@pytest.fixture
def fake() -> FakeEngine:
    fake = FakeEngine(clock=FakeClock())
    fake.build("example/web:v1")
    fake.build("example/other:v1")
    return fake


def test_a_name_in_use_is_refused_at_create_and_at_rename(fake: FakeEngine) -> None:
    first = fake.create(target_of(fake, "web", "v1"), "web", env={})
    with pytest.raises(ContainerError, match=r'create web: Conflict\. The container name "/web" is already in use'):
        fake.create(target_of(fake, "web", "v1"), "web", env={})
    second = fake.create(target_of(fake, "web", "v1"), "web.next", env={})
    with pytest.raises(ContainerError, match="rename to web: Conflict"):
        fake.rename(second, "web")
    assert fake.names() == {"web": "created", "web.next": "created"}
    assert fake.container("web").id == first


def test_a_host_port_that_a_running_container_publishes_is_refused_at_start(fake: FakeEngine) -> None:
    old = fake.create(target_of(fake, "web", "v1"), "web", env={})
    new = fake.create(target_of(fake, "web", "v1"), "web.next", env={})  # the same host port, 8080
    fake.start(old, "web")
    with pytest.raises(ContainerError, match="port is already allocated"):
        fake.start(new, "web.next")
    fake.stop(old, "web", 1.0)
    fake.start(new, "web.next")
    assert fake.publishers(8080) == ["web.next"]


def test_a_missing_container_is_an_error_but_removing_one_is_not(fake: FakeEngine) -> None:
    with pytest.raises(ContainerError, match="start web: No such container: nope"):
        fake.start("nope", "web")
    assert fake.inspect("nope") is None
    fake.remove("nope", "web")  # gone already: no error, as the real adapter


def test_a_tag_the_registry_lacks_is_an_image_error(fake: FakeEngine) -> None:
    with pytest.raises(ImageError, match="does not exist in its registry"):
        fake.registry_digest("example/web:v9")
    with pytest.raises(ImageError, match="pull example/web:v9"):
        fake.pull("example/web:v9")
    fake.publish("example/web:v2")
    assert fake.pull("example/web:v2") == fake.registry["example/web:v2"].id
    assert fake.has_image("example/web:v2")


def test_an_engine_that_is_down_answers_nothing(fake: FakeEngine) -> None:
    made = fake.create(target_of(fake, "web", "v1"), "web", env={})
    with fake.down():
        for call in (fake.observe, lambda: fake.inspect(made), lambda: fake.start(made, "web"), fake.answers):
            with pytest.raises(EngineUnavailable, match="fake://engine does not answer"):
                call()
    fake.start(made, "web")
    assert fake.names() == {"web": "running"}


def test_exec_probes_answer_as_scripted_then_as_the_image_says(fake: FakeEngine) -> None:
    made = fake.create(target_of(fake, "web", "v1"), "web", env={})
    assert fake.exec_probe(made, ["check"], timeout=1.0) == (
        False,
        f"exec check: exec health probe: container {made} is not running",
    )
    fake.start(made, "web")
    fake.script_probes("web", [False, True])
    answers = [fake.exec_probe(made, ["check"], timeout=1.0)[0] for _ in range(3)]
    fake.fail_health("web")
    assert [*answers, fake.exec_probe(made, ["check"], timeout=1.0)[0]] == [False, True, True, False]
    fake.die("web", exit_code=2)
    found = fake.inspect(made)
    assert found is not None
    assert (found.running, found.exit_code) == (False, 2)
