"""The in-memory engine gives the records the real one gives: the same release created on a real Docker
engine and on ``tests/support/fake_engine.py`` reads back the same through ``observe`` and ``inspect``
(what only the engine decides, ids, times and addresses, aside). This is what lets the fast tests stand
for the real engine on what they assert.
"""

from __future__ import annotations

from typing import Any

from reconciler.adapters.docker import connect
from reconciler.converge.run import parse_desired, resolve
from reconciler.core.plan import plan
from tests.support import RUN_LABEL, AppNames, ImageFactory
from tests.support.fake_engine import FakeEngine

_ENGINE_OWN = {"id", "image_id", "created", "networks"}


def test_a_release_reads_back_the_same_from_the_fake_as_from_the_real_engine(
    docker_client: Any, images: ImageFactory, app_names: AppNames, run_prefix: str
) -> None:
    app = app_names("parity")
    ref = images.build(f"{run_prefix}-parity", "v1")
    repository, _, tag = ref.rpartition(":")
    text = (
        f"apps:\n  {app}:\n    image: {repository}\n    version: {tag}\n    init: true\n    stop_timeout: 1s\n"
        "    env: {MODE: zq9-fake-env}\n    health: {exec: [check], interval: 1s, timeout: 5s, healthy_for: 1s}\n"
    )
    desired = parse_desired(text.encode(), "desired-state.yaml", "a" * 40)
    real = connect(instance=f"{run_prefix}-parity")
    fake = FakeEngine(instance=real.instance)
    fake.build(ref, image_id=str(docker_client.images.get(ref).id))  # the image is the same one

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
