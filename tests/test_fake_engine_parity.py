"""The in-memory engine gives the records the real one gives: the same release created on a real Docker
engine and on ``tests/support/fake_engine.py`` reads back the same through ``observe`` and ``inspect``
(what only the engine decides, ids, times and addresses, aside). This is what lets the fast tests stand
for the real engine on what they assert.
"""

from __future__ import annotations

from typing import Any

from reconciler.adapters.docker import Engine, connect
from reconciler.converge.run import parse_desired, resolve
from reconciler.core.plan import plan
from tests.support import RUN_LABEL, AppNames, ImageFactory
from tests.support.fake_engine import FakeEngine, FakeImage

_ENGINE_OWN = {"id", "image_id", "created", "networks"}


def both_engines(
    docker_client: Any, images: ImageFactory, run_prefix: str, instance: str
) -> tuple[Engine, FakeEngine, str, FakeImage]:
    """The real engine and the in-memory one as ``instance``, both holding the same test image: its ref, and
    the fake's record of it (to script what its containers do)."""
    ref = images.build(f"{run_prefix}-parity", "v1")
    real = connect(instance=instance)
    fake = FakeEngine(instance=instance)
    return real, fake, ref, fake.build(ref, image_id=str(docker_client.images.get(ref).id))


def test_a_release_reads_back_the_same_from_the_fake_as_from_the_real_engine(
    docker_client: Any, images: ImageFactory, app_names: AppNames, run_prefix: str
) -> None:
    app = app_names("parity")
    real, fake, ref, _ = both_engines(docker_client, images, run_prefix, f"{run_prefix}-parity")
    repository, _, tag = ref.rpartition(":")
    text = (
        f"apps:\n  {app}:\n    image: {repository}\n    version: {tag}\n    init: true\n    stop_timeout: 1s\n"
        "    env: {MODE: zq9-fake-env}\n    health: {exec: [check], interval: 1s, timeout: 5s, healthy_for: 1s}\n"
    )
    desired = parse_desired(text.encode(), "desired-state.yaml", "a" * 40)

    made: dict[str, str] = {}
    for name, engine in (("real", real), ("fake", fake)):
        [action] = plan(desired, resolve(engine, desired), engine.observe()).actions
        assert action.target is not None
        made[name] = engine.create(action.target, app, env=dict(action.target.spec.env))
        engine.start(made[name], app)
    try:
        seen_real, seen_fake = real.observe().named(app), fake.observe().named(app)
        assert seen_real is not None and seen_fake is not None
        assert seen_fake.model_dump(exclude=_ENGINE_OWN) == seen_real.model_dump(exclude=_ENGINE_OWN)
        assert (seen_real.managed, seen_real.version, seen_real.state) == (True, tag, "running")
        assert set(seen_fake.networks) == set(seen_real.networks) == {"bridge"}

        inspected_real, inspected_fake = real.inspect(made["real"]), fake.inspect(made["fake"])
        assert inspected_real is not None and inspected_fake is not None
        fields = ("name", "running", "restarting", "paused", "exit_code", "image", "ours", "stop_timeout")
        assert [getattr(inspected_fake, f) for f in fields] == [getattr(inspected_real, f) for f in fields]
        # The test images carry the run's label (containers inherit it): the only label not written by us.
        assert inspected_fake.labels == {k: v for k, v in inspected_real.labels.items() if k != RUN_LABEL}
        assert inspected_fake.fingerprint == inspected_real.fingerprint
    finally:
        real.remove(made["real"], app)


def test_networks_and_a_release_command_read_back_the_same_from_the_fake_as_from_the_real_engine(
    docker_client: Any, images: ImageFactory, app_names: AppNames, run_prefix: str
) -> None:
    import time

    from reconciler.core.stack import docker_network
    from reconciler.deploy import networks

    app = app_names("parity")
    # Its instance's networks hold the app's name: the test's cleanup removes them.
    real, fake, ref, image = both_engines(docker_client, images, run_prefix, f"{app}-i")
    image.job_exits = 3
    repository, _, tag = ref.rpartition(":")
    text = (
        f"networks:\n  back: {{internal: true}}\napps:\n  {app}:\n    image: {repository}\n    version: {tag}\n"
        "    networks: {default: {}, back: {aliases: [also-known-as]}}\n    init: true\n    stop_timeout: 1s\n"
    )
    desired = parse_desired(text.encode(), "desired-state.yaml", "a" * 40)
    joined = {docker_network(real.instance, "default"): [], docker_network(real.instance, "back"): ["also-known-as"]}
    job = f"{app}.release"
    for engine in (real, fake):
        assert networks.ensure(engine, desired) == [f"network back ({docker_network(real.instance, 'back')}): created"]
        [action] = plan(desired, resolve(engine, desired), engine.observe()).actions
        assert action.target is not None
        made = engine.create(action.target, app, env={}, networks=joined)
        engine.start(made, app)
        engine.stop(made, app, 1)  # stopped, it is still on its networks
        ran = engine.create(action.target, job, env={}, networks=joined, job=["sh", "-c", "exit 3"])
        engine.start(ran, job)
    deadline = time.monotonic() + 10
    while (found := real.observe().named(job)) is not None and found.running and time.monotonic() < deadline:
        time.sleep(0.05)

    for name in (app, job):
        seen_real, seen_fake = real.observe().named(name), fake.observe().named(name)
        assert seen_real is not None and seen_fake is not None
        assert seen_fake.model_dump(exclude=_ENGINE_OWN) == seen_real.model_dump(exclude=_ENGINE_OWN)
    released = real.observe().named(job)
    assert released is not None and (released.state, released.exit_code, released.role) == ("exited", 3, "release")
    real_rows = sorted((r.name, r.internal, r.attached, r.labels.get("io.reconciler.network"))
                       for r in real.networks_of_instance())  # fmt: skip
    fake_rows = sorted((r.name, r.internal, r.attached, r.labels.get("io.reconciler.network"))
                       for r in fake.networks_of_instance())  # fmt: skip
    assert fake_rows == real_rows
    assert real_rows == [
        (docker_network(real.instance, "default"), False, tuple(sorted((app, job))), "default"),
        (docker_network(real.instance, "back"), True, tuple(sorted((app, job))), "back"),
    ]
