"""The deploy step machine against the in-memory engine: a replace that passes its gate, one that fails and
is rolled back to the last good release, one whose release dies at start, whole-commit rollback
(``atomic=True``), and crash recovery (``Applier.verify_unfinished``) of rows a crash or an outage left
unfinished. The real ``Applier``, planner and journal; only the engine is in memory, and no test sleeps.

What a user would see is asserted: which container runs under the app's name and its version, what is
kept beside it, the outcome's result and message, the journal's row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.core.plan import ActionKind
from reconciler.core.report import Result
from reconciler.errors import EngineUnavailable
from reconciler.state.journal import JournalResult
from tests.support.fake_host import FakeHost


class Crash(BaseException):
    """The process dies at a step (SIGKILL): nothing of ours runs after it, no row is finished."""


def crash_at(step: str) -> Callable[[str, str], None]:
    """An ``on_step`` that kills the process (as SIGKILL would) when a deploy reaches ``step``."""

    def on_step(app: str, reached: str) -> None:
        if reached == step:
            raise Crash(step)

    return on_step


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    host = FakeHost(tmp_path / "state")
    for version in ("v1", "v2", "v3"):
        host.engine.publish(f"example/web:v{version[1:]}")
    host.engine.publish("example/api:v1")
    return host


def test_a_first_deploy_creates_the_app_and_a_replace_that_passes_its_gate_keeps_the_old_one(host: FakeHost) -> None:
    [first] = host.deploy({"web": "v1"})
    assert (first.kind, first.result, first.message) == (ActionKind.CREATE, Result.APPLIED, "v1")

    [outcome] = host.deploy({"web": "v2"})

    assert (outcome.kind, outcome.result, outcome.message) == (ActionKind.REPLACE, Result.APPLIED, "v1 -> v2")
    assert host.running("web").image.ref == "example/web:v2"
    assert host.version_of("web") == "v2"
    assert host.engine.names() == {"web": "running", "web.prev": "exited"}
    assert host.version_of("web.prev") == "v1"
    row = host.journal.last("web")
    assert row is not None
    assert (row.result, row.from_version, row.to_version) == (JournalResult.SUCCEEDED, "v1", "v2")
    assert [step for app, step in host.steps if app == "web"][-7:] == [
        "pull", "create", "stop-old", "keep-old", "rename-new", "start-new", "gate",
    ]  # fmt: skip
    assert "deployed web v1 -> v2" in host.lines


def test_a_release_that_fails_its_gate_is_rolled_back_to_the_last_good_one(host: FakeHost) -> None:
    host.engine.publish("example/web:v2", healthy=False)
    host.deploy({"web": "v1"})

    [outcome] = host.deploy({"web": "v2"})

    assert outcome.result is Result.ROLLED_BACK
    assert outcome.release_failed
    assert outcome.message == "v2 failed: not healthy after 10s: exec check: exit 1; rolled back to v1"
    assert host.running("web").image.ref == "example/web:v1"
    assert host.version_of("web") == "v1"
    assert host.engine.names() == {"web": "running", "web.failed": "exited"}
    assert host.version_of("web.failed") == "v2"
    row = host.journal.last("web")
    assert row is not None
    assert (row.result, row.to_version) == (JournalResult.ROLLED_BACK, "v2")
    assert "exec check: exit 1" in row.message


def test_the_gate_waits_its_timeout_on_the_clock_not_on_the_wall(host: FakeHost) -> None:
    host.engine.publish("example/web:v2", healthy=False)
    host.deploy({"web": "v1"})
    started = host.clock.now

    host.deploy({"web": "v2"})

    # The failed gate took its 10 s and the rollback's gate its 2 s of healthy_for: on the fake clock.
    assert host.clock.now - started >= 12.0


def test_a_release_that_dies_at_start_is_rolled_back_with_its_exit_code_in_the_message(host: FakeHost) -> None:
    host.engine.publish("example/web:v2", exits=3)
    host.deploy({"web": "v1"})

    [outcome] = host.deploy({"web": "v2"})

    assert outcome.result is Result.ROLLED_BACK
    assert "exited with code 3" in outcome.message
    assert host.version_of("web") == "v1"
    assert host.running("web").image.ref == "example/web:v1"


def test_a_release_that_dies_after_answering_its_first_probe_fails_its_gate(host: FakeHost) -> None:
    host.deploy({"web": "v1"})
    original = host.engine.exec_probe

    def answer_then_die(container_id: str, argv: list[str], *, timeout: float) -> tuple[bool, str]:
        answer = original(container_id, argv, timeout=timeout)
        if host.engine.container(container_id).image.ref == "example/web:v2":
            host.engine.die(container_id, exit_code=137)  # healthy once, then killed (out of memory)
        return answer

    host.engine.exec_probe = answer_then_die  # type: ignore[method-assign]

    [outcome] = host.deploy({"web": "v2"})

    assert outcome.result is Result.ROLLED_BACK
    assert "exited with code 137" in outcome.message
    assert host.version_of("web") == "v1"
    assert host.version_of("web.failed") == "v2"


def test_a_pull_of_a_tag_the_registry_does_not_have_leaves_the_app_as_it_was(host: FakeHost) -> None:
    host.deploy({"web": "v1"})
    before = host.engine.container("web").id

    [outcome] = host.deploy({"web": "v9"})

    assert outcome.result is Result.SKIPPED  # the planner cannot resolve it: nothing is touched
    assert "example/web:v9 does not exist in its registry" in outcome.message
    assert host.running("web").id == before
    assert host.engine.names() == {"web": "running"}


def test_a_failed_release_of_a_commit_takes_the_whole_commit_back_when_atomic(host: FakeHost) -> None:
    host.engine.publish("example/alpha:v1")
    host.engine.publish("example/alpha:v2")
    host.engine.publish("example/beta:v1")
    host.engine.publish("example/beta:v2", healthy=False)
    host.deploy({"alpha": "v1", "beta": "v1"})

    outcomes = host.deploy({"alpha": "v2", "beta": "v2"}, atomic=True)

    by_app = {outcome.app: outcome for outcome in outcomes}
    assert by_app["beta"].result is Result.ROLLED_BACK
    assert by_app["beta"].release_failed
    assert by_app["alpha"].result is Result.ROLLED_BACK
    assert not by_app["alpha"].release_failed
    assert "rolled back with the rest of commit" in by_app["alpha"].message
    assert "beta failed" in by_app["alpha"].message
    assert host.version_of("alpha") == "v1"
    assert host.version_of("beta") == "v1"
    assert host.running("alpha").image.ref == "example/alpha:v1"
    assert host.running("beta").image.ref == "example/beta:v1"


def test_without_atomic_the_release_that_passed_stays(host: FakeHost) -> None:
    host.engine.publish("example/alpha:v1")
    host.engine.publish("example/alpha:v2")
    host.engine.publish("example/beta:v1")
    host.engine.publish("example/beta:v2", healthy=False)
    host.deploy({"alpha": "v1", "beta": "v1"})

    outcomes = host.deploy({"alpha": "v2", "beta": "v2"})

    assert {outcome.app: outcome.result for outcome in outcomes} == {
        "alpha": Result.APPLIED,
        "beta": Result.ROLLED_BACK,
    }
    assert host.version_of("alpha") == "v2"
    assert host.version_of("beta") == "v1"


def test_a_deploy_cut_short_in_its_gate_is_verified_by_the_next_process(host: FakeHost) -> None:
    host.deploy({"web": "v1"})
    applier = host.applier()
    applier.on_step = crash_at("gate")

    with pytest.raises(Crash):
        host.deploy({"web": "v2"}, applier=applier)
    unfinished = host.journal.unverified()
    assert [(row.app, row.to_version, row.result) for row in unfinished] == [("web", "v2", JournalResult.STARTED)]
    assert host.version_of("web") == "v2"  # running, never judged

    desired = host.commit({"web": "v2"})
    outcomes = host.applier().verify_unfinished(host.engine.observe(), desired.apps)

    assert [(o.app, o.result, o.message) for o in outcomes] == [("web", Result.APPLIED, "v2")]
    assert host.journal.unverified() == []
    row = host.journal.last("web")
    assert row is not None
    assert (row.result, row.message) == (JournalResult.SUCCEEDED, "verified by a later pass")
    assert host.version_of("web") == "v2"


def test_a_deploy_cut_short_whose_release_is_bad_is_rolled_back_by_the_next_process(host: FakeHost) -> None:
    host.engine.publish("example/web:v2", healthy=False)
    host.deploy({"web": "v1"})
    applier = host.applier()
    applier.on_step = crash_at("gate")
    with pytest.raises(Crash):
        host.deploy({"web": "v2"}, applier=applier)

    desired = host.commit({"web": "v2"})
    [outcome] = host.applier().verify_unfinished(host.engine.observe(), desired.apps)

    assert outcome.result is Result.ROLLED_BACK
    assert outcome.message.startswith("v2 failed: not healthy after 10s")
    assert outcome.message.endswith("rolled back to v1")
    assert host.version_of("web") == "v1"
    assert host.running("web").image.ref == "example/web:v1"
    assert host.journal.unverified() == []


def test_a_deploy_cut_short_before_its_release_took_the_name_is_planned_again(host: FakeHost) -> None:
    host.deploy({"web": "v1"})
    applier = host.applier()
    applier.on_step = crash_at("stop-old")
    with pytest.raises(Crash):
        host.deploy({"web": "v2"}, applier=applier)
    assert host.engine.names() == {"web": "running", "web.next": "created"}

    desired = host.commit({"web": "v2"})
    outcomes = host.applier().verify_unfinished(host.engine.observe(), desired.apps)

    assert outcomes == []
    row = host.journal.last("web")
    assert row is not None
    assert (row.result, row.message) == (JournalResult.INTERRUPTED, "cut short; planned again")
    # The next pass cleans up the APP.next left behind and deploys v2 again.
    outcomes = host.applier().apply(host.plan(desired), host.engine.observe())
    assert [o.result for o in outcomes if o.app == "web" and o.kind is ActionKind.REPLACE] == [Result.APPLIED]
    assert host.version_of("web") == "v2"
    assert "web.next" not in host.engine.names()


def test_a_rollback_cut_short_is_finished_without_gating_the_failed_release_again(host: FakeHost) -> None:
    host.engine.publish("example/web:v2", healthy=False)
    host.deploy({"web": "v1"})
    applier = host.applier()
    applier.on_step = crash_at("roll-back")
    with pytest.raises(Crash):
        host.deploy({"web": "v2"}, applier=applier)
    [row] = host.journal.unverified()
    assert row.result is JournalResult.ROLLING_BACK

    asked: list[str] = []
    original = host.engine.exec_probe

    def counting(container_id: str, argv: list[str], *, timeout: float) -> tuple[bool, str]:
        asked.append(host.engine.container(container_id).image.ref)
        return original(container_id, argv, timeout=timeout)

    host.engine.exec_probe = counting  # type: ignore[method-assign]
    desired = host.commit({"web": "v2"})
    [outcome] = host.applier().verify_unfinished(host.engine.observe(), desired.apps)

    assert outcome.result is Result.ROLLED_BACK
    assert host.version_of("web") == "v1"
    assert "example/web:v2" not in asked  # the failed release is not gated again
    assert "example/web:v1" in asked  # the one brought back is
    assert host.journal.unverified() == []


def test_an_engine_that_goes_away_mid_gate_is_no_verdict_and_the_next_pass_resumes(host: FakeHost) -> None:
    host.deploy({"web": "v1"})
    applier = host.applier()

    def engine_goes(app: str, step: str) -> None:
        if step == "gate":
            host.engine.available = False

    applier.on_step = engine_goes
    with pytest.raises(EngineUnavailable, match="does not answer"):
        host.deploy({"web": "v2"}, applier=applier)
    host.engine.available = True
    [row] = host.journal.unverified()
    assert (row.to_version, row.result) == ("v2", JournalResult.STARTED)  # not a failed deploy

    desired = host.commit({"web": "v2"})
    [outcome] = host.applier().verify_unfinished(host.engine.observe(), desired.apps)

    assert (outcome.result, outcome.message) == (Result.APPLIED, "v2")
    assert host.version_of("web") == "v2"
