"""The agent's hold-back rules over a real journal of failures, with releases deployed on the in-memory engine.

A release that failed its gate (the culprit) and the releases rolled back with it (its companions) are
recorded as the agent records them (``core.holdback.failures_of`` into ``Journal.record_failure``); the
next passes of the same commit hold them back (``held_in``, ``hold_back``) until a commit changes the
culprit, or ``reconcile retry`` clears the record. What runs is asserted after each pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.events import Event
from reconciler.core.holdback import failures_of, held_in, hold_back
from reconciler.core.model import DesiredState
from reconciler.core.plan import ActionKind, Plan
from reconciler.core.report import Outcome, Result
from tests.support.fake_host import FakeHost


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    host = FakeHost(tmp_path / "state")
    for app in ("alpha", "beta"):
        host.engine.publish(f"example/{app}:v1")
        host.engine.publish(f"example/{app}:v3")
    host.engine.publish("example/alpha:v2")
    host.engine.publish("example/beta:v2", healthy=False)
    host.deploy({"alpha": "v1", "beta": "v1"})
    return host


def agent_pass(host: FakeHost, desired: DesiredState) -> tuple[Plan, list[Outcome], list[str]]:
    """What the agent's pass does with hold-back: plan, hold back what failed, apply the rest whole-commit,
    record the new failures. The plan it applied, the outcomes, and the hold-back lines it logged."""
    observed = host.engine.observe()
    planned = host.plan(desired)
    held = held_in(planned, host.journal.failures())
    kept, notices = hold_back(planned, observed, held, restore={}, said=())
    applier = host.applier()
    outcomes = applier.apply(kept, observed, atomic=True)
    for failure in failures_of(outcomes, kept, revision=desired.revision, applied={}, latest={}):
        host.journal.record_failure(
            app=failure.app, spec_hash=failure.spec_hash, revision=failure.revision, version=failure.version,
            reason=failure.reason, culprit=failure.culprit,
        )  # fmt: skip
    lines = [notice.message for notice in notices if notice.event is Event.DEPLOY_HELD]
    return kept, outcomes, lines


def test_a_failed_commit_is_recorded_culprit_and_companion(host: FakeHost) -> None:
    desired = host.commit({"alpha": "v2", "beta": "v2"})

    _, outcomes, _ = agent_pass(host, desired)

    assert {o.app: o.result for o in outcomes} == {"alpha": Result.ROLLED_BACK, "beta": Result.ROLLED_BACK}
    failures = {f.app: f for f in host.journal.failures()}
    assert set(failures) == {"alpha", "beta"}
    assert failures["beta"].culprit
    assert (failures["beta"].version, failures["beta"].revision) == ("v2", desired.revision)
    assert "not healthy after 10s" in failures["beta"].reason
    assert not failures["alpha"].culprit
    assert failures["alpha"].reason.startswith("rolled back with its commit (beta: v2 failed")
    assert (host.version_of("alpha"), host.version_of("beta")) == ("v1", "v1")


def test_the_same_commit_is_not_tried_again_and_what_runs_stays(host: FakeHost) -> None:
    desired = host.commit({"alpha": "v2", "beta": "v2"})
    agent_pass(host, desired)
    running = {name: host.engine.container(name).id for name in ("alpha", "beta")}
    host.steps.clear()

    kept, outcomes, lines = agent_pass(host, desired)

    assert [a for a in kept.actions if a.kind in (ActionKind.CREATE, ActionKind.REPLACE)] == []
    assert outcomes == []
    assert host.steps == []  # nothing was pulled, created, stopped or gated
    assert {name: host.running(name).id for name in ("alpha", "beta")} == running
    assert (host.version_of("alpha"), host.version_of("beta")) == ("v1", "v1")
    assert sorted(lines) == [
        f"alpha: release v2 of {desired.revision[:8]} was rolled back with its commit; not tried again until a"
        " commit changes alpha or `reconcile retry alpha` (`reconcile status` says why)",
        f"beta: release v2 of {desired.revision[:8]} failed; not tried again until a commit changes beta or"
        " `reconcile retry beta` (`reconcile status` says why)",
    ]


def test_a_commit_that_changes_the_culprit_releases_the_whole_commit_again(host: FakeHost) -> None:
    agent_pass(host, host.commit({"alpha": "v2", "beta": "v2"}))

    _, outcomes, lines = agent_pass(host, host.commit({"alpha": "v2", "beta": "v3"}))

    assert lines == []  # alpha's companion record no longer holds: its culprit's spec changed
    assert {o.app: (o.result, o.message) for o in outcomes} == {
        "alpha": (Result.APPLIED, "v1 -> v2"),
        "beta": (Result.APPLIED, "v1 -> v3"),
    }
    assert (host.version_of("alpha"), host.version_of("beta")) == ("v2", "v3")


def test_a_held_app_whose_container_was_stopped_is_started_not_redeployed(host: FakeHost) -> None:
    desired = host.commit({"alpha": "v2", "beta": "v2"})
    agent_pass(host, desired)
    host.engine.die("beta", exit_code=0)  # stopped by hand

    kept, outcomes, _ = agent_pass(host, desired)

    assert [(a.app, a.kind) for a in kept.actions] == [("beta", ActionKind.START)]
    assert [(o.app, o.result) for o in outcomes] == [("beta", Result.APPLIED)]
    assert host.running("beta").image.ref == "example/beta:v1"


def test_retry_clears_the_record_and_the_release_is_tried_again(host: FakeHost) -> None:
    desired = host.commit({"alpha": "v2", "beta": "v2"})
    agent_pass(host, desired)

    assert host.journal.clear_failures() == 2  # `reconcile retry`
    _, outcomes, lines = agent_pass(host, desired)

    assert lines == []
    assert {o.app: o.result for o in outcomes} == {"alpha": Result.ROLLED_BACK, "beta": Result.ROLLED_BACK}
    assert (host.version_of("alpha"), host.version_of("beta")) == ("v1", "v1")
