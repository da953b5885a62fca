"""The agent's decisions (core.holdback) over plain records: held-back releases, never half a release, drift,
what a failure records. No engine, no journal: the journal's answers are passed in as data."""

from __future__ import annotations

from typing import Any

from reconciler.core.events import Event
from reconciler.core.failures import Failure
from reconciler.core.holdback import (
    LastDeploy,
    Notice,
    Say,
    failures_of,
    heal_or_report,
    held_in,
    hold_back,
    is_drift,
    last_good,
    lost,
    restore_actions,
    whole_or_nothing,
)
from reconciler.core.model import AppSpec, DesiredState, ObservedContainer, ObservedState, Role, image_ref
from reconciler.core.plan import PRUNED, STALE_NEXT, Action, ActionKind, Change, Plan, Resolution, Target, fingerprint
from reconciler.core.report import Outcome, Result

COMMIT = "c0ffee0000000000000000000000000000000000"
OLD_COMMIT = "0dd0000000000000000000000000000000000000"


def target(app: str, version: str = "v2", image_id: str = "") -> Target:
    spec = AppSpec.model_validate({"image": f"team/{app}", "version": version})
    resolution = Resolution(ref=image_ref(spec), image_id=image_id or f"sha256:{app}-{version}")
    return Target(app=app, spec=spec, resolution=resolution, fingerprint=fingerprint(app, spec), revision=COMMIT)


def create(app: str, version: str = "v2") -> Action:
    return Action(ActionKind.CREATE, app, app, (Change("container", "missing", "created"),), target(app, version))


def replace_(app: str, version: str = "v2") -> Action:
    return Action(ActionKind.REPLACE, app, app, (Change("image", "v1", version),), target(app, version))


def start(app: str) -> Action:
    return Action(ActionKind.START, app, app, (Change("state", "exited", "running"),), target(app, "v1"))


def prune(app: str) -> Action:
    return Action(ActionKind.REMOVE, app, app, (PRUNED,))


def stale_next(app: str) -> Action:
    return Action(ActionKind.REMOVE, app, f"{app}.next", (STALE_NEXT,))


def error(app: str) -> Action:
    return Action(ActionKind.ERROR, app, app, message="tag v9 not found")


def conflict(app: str) -> Action:
    return Action(ActionKind.CONFLICT, app, app, message=f"container {app} exists and was not created by reconciler")


def plan(*actions: Action) -> Plan:
    return Plan(revision=COMMIT, actions=actions)


def container(app: str, state: str = "running", **fields: Any) -> ObservedContainer:
    return ObservedContainer(
        id=f"id-{app}", name=app, state=state, image_id="sha256:old", managed=True, app=app, role=Role.CURRENT,
        **fields,
    )  # fmt: skip


def observed(*containers: ObservedContainer) -> ObservedState:
    return ObservedState(containers=containers)


def failure(app: str, version: str = "v2", *, culprit: bool, revision: str = COMMIT) -> Failure:
    return Failure(app, target(app, version).spec_hash, revision, version, "the gate failed", culprit)


def kinds(result: Plan) -> list[tuple[str, ActionKind]]:
    return [(action.app, action.kind) for action in result.actions]


# -- held back: the culprit and its companions -------------------------------------------------------------


def test_a_culprit_is_held_while_the_file_asks_for_the_release_that_failed() -> None:
    failures = [failure("web", culprit=True)]
    assert set(held_in(plan(replace_("web")), failures)) == {"web"}
    assert held_in(plan(replace_("web", "v3")), failures) == {}  # a commit changed web: tried again


def test_a_companion_is_held_only_while_a_culprit_of_its_commit_is() -> None:
    failures = [failure("web", culprit=True), failure("api", culprit=False)]
    assert set(held_in(plan(replace_("web"), replace_("api")), failures)) == {"web", "api"}
    # web changed in a later commit: its culprit is no longer held, so api goes again with it.
    assert held_in(plan(replace_("web", "v3"), replace_("api")), failures) == {}


def test_a_companion_of_another_commit_is_not_held_by_this_culprit() -> None:
    failures = [failure("web", culprit=True), failure("api", culprit=False, revision=OLD_COMMIT)]
    assert set(held_in(plan(replace_("web"), replace_("api")), failures)) == {"web"}


def test_held_deploys_are_dropped_and_logged_once_per_app_with_their_role() -> None:
    failures = {"web": failure("web", culprit=True), "api": failure("api", culprit=False)}
    new, notices = hold_back(
        plan(replace_("web"), replace_("api"), replace_("db")), observed(container("web"), container("api")),
        failures, restore={}, said=(),
    )  # fmt: skip
    assert kinds(new) == [("db", ActionKind.REPLACE)]
    assert [(n.key, n.event, n.say, n.app) for n in notices] == [
        ("held:web", "deploy.held", Say.ONCE, "web"),
        ("held:api", "deploy.held", Say.ONCE, "api"),
    ]
    assert "release v2 of c0ffee00 failed" in notices[0].message
    assert "was rolled back with its commit" in notices[1].message
    assert "`reconcile retry api`" in notices[1].message


def test_a_held_app_whose_container_is_stopped_is_started_instead() -> None:
    new, _ = hold_back(
        plan(replace_("web")), observed(container("web", "exited")), {"web": failure("web", culprit=True)},
        restore={}, said=(),
    )  # fmt: skip
    assert kinds(new) == [("web", ActionKind.START)]
    assert new.actions[0].reasons == (Change("state", "exited", "running"),)


def test_a_held_app_whose_container_is_gone_gets_its_last_good_release() -> None:
    the_plan = plan(create("web"))
    failures = {"web": failure("web", culprit=True)}
    assert lost(the_plan, failures) == ("web",)
    good = create("web", "v1")
    new, _ = hold_back(the_plan, observed(), failures, restore={"web": (good,)}, said=())
    assert new.actions == (good,)
    # Without a last good release (none journaled, or its commit cannot be read): nothing is created.
    new, _ = hold_back(the_plan, observed(), failures, restore={}, said=())
    assert new.actions == ()


def test_last_good_narrows_the_old_file_to_the_app_and_restore_keeps_only_its_create() -> None:
    spec = AppSpec.model_validate({"image": "team/web", "version": "v1"})
    other = AppSpec.model_validate({"image": "team/api", "version": "v1"})
    old = DesiredState(apps={"web": spec, "api": other}, revision=OLD_COMMIT)
    narrowed = last_good("web", old)
    assert narrowed is not None and list(narrowed.apps) == ["web"] and narrowed.revision == OLD_COMMIT
    assert last_good("db", old) is None  # that commit had no such app
    old_plan = plan(stale_next("web"), create("web", "v1"), create("api", "v1"))
    assert restore_actions("web", old_plan) == (create("web", "v1"),)


def test_the_removals_of_a_held_commit_wait_with_it() -> None:
    new, _ = hold_back(
        plan(replace_("web"), prune("old"), stale_next("api")), observed(container("web")),
        {"web": failure("web", culprit=True)}, restore={}, said=(),
    )  # fmt: skip
    assert kinds(new) == [("api", ActionKind.REMOVE)]  # the cleanup of an interrupted deploy goes on


def test_held_notices_that_no_longer_apply_are_cleared_and_nothing_else_changes() -> None:
    the_plan = plan(replace_("web"), prune("old"))
    new, notices = hold_back(the_plan, observed(container("web")), {}, restore={}, said=("held:web", "held:api"))
    assert new == the_plan  # nothing held: the removal goes on too
    assert notices == [Notice.clear("held:web"), Notice.clear("held:api")]


# -- never half a release -------------------------------------------------------------------------------


def test_a_blocked_app_keeps_every_new_release_and_removal_of_its_commit_back() -> None:
    the_plan = plan(error("api"), replace_("web"), create("db"), prune("old"), start("cache"), stale_next("web"))
    new, notices = whole_or_nothing(the_plan, applied={})
    assert kinds(new) == [("api", ActionKind.ERROR), ("cache", ActionKind.START), ("web", ActionKind.REMOVE)]
    assert notices == [Notice("blocked", Event.COMMIT_BLOCKED, "c0ffee00 not deployed while api: tag v9 not found")]


def test_a_blocked_commit_still_heals_what_ran_before() -> None:
    heal = create("db", "v1")  # the container of the release last deployed was removed by hand
    new, _ = whole_or_nothing(plan(conflict("api"), heal, replace_("web")), applied={"db": heal.target.spec_hash})  # type: ignore[union-attr]
    assert kinds(new) == [("api", ActionKind.CONFLICT), ("db", ActionKind.CREATE)]


def test_a_blocked_app_with_nothing_to_keep_back_logs_nothing() -> None:
    the_plan = plan(error("api"), start("web"))
    assert whole_or_nothing(the_plan, applied={}) == (the_plan, [])


def test_a_commit_that_is_not_blocked_goes_whole_and_clears_the_notice() -> None:
    the_plan = plan(replace_("web"), create("db"), prune("old"))
    assert whole_or_nothing(the_plan, applied={}) == (the_plan, [Notice.clear("blocked")])


# -- drift --------------------------------------------------------------------------------------------


def test_drift_is_a_start_or_a_create_of_the_release_last_deployed() -> None:
    again = create("web", "v1")
    applied = {"web": again.target.spec_hash}  # type: ignore[union-attr]
    assert is_drift(start("web"), {})
    assert is_drift(again, applied)
    assert not is_drift(create("web", "v2"), applied)  # git asks for another release: a deploy
    assert not is_drift(again, {})  # never deployed here: a deploy
    assert not is_drift(replace_("web", "v1"), applied)  # a replace is a change of the file, or --adopt
    assert not is_drift(prune("web"), applied)


def test_drift_is_healed_and_logged_each_time() -> None:
    the_plan = plan(start("web"), replace_("api"))
    new, notices = heal_or_report(the_plan, {}, self_heal=True)
    assert new == the_plan
    assert notices == [
        Notice(
            "drift:web",
            Event.DRIFT_HEALING,
            "web: state: exited -> running",
            app="web",
            say=Say.EMIT,
            fields=(("action", "start"),),
        ),
        Notice.clear("drift:web"),
        Notice.clear("drift:api"),
    ]


def test_without_self_heal_drift_is_reported_once_and_not_healed() -> None:
    new, notices = heal_or_report(plan(start("web"), replace_("api")), {}, self_heal=False)
    assert kinds(new) == [("api", ActionKind.REPLACE)]
    assert notices[0] == Notice(
        "drift:web", Event.DRIFT_FOUND, "web: start needed (state: exited -> running); not healed (--no-self-heal)",
        app="web",
    )  # fmt: skip
    assert notices[1:] == [Notice.clear("drift:api")]


# -- what a failure records ------------------------------------------------------------------------------


def failed(app: str, message: str = "not healthy after 2s") -> Outcome:
    return Outcome(app, ActionKind.REPLACE, app, Result.ROLLED_BACK, message, release_failed=True)


def rolled_back(app: str) -> Outcome:
    return Outcome(app, ActionKind.REPLACE, app, Result.ROLLED_BACK, "rolled back with its commit")


def test_the_culprit_and_every_other_new_release_of_its_plan_are_recorded() -> None:
    the_plan = plan(replace_("web"), create("db"), start("cache"), prune("old"))
    recorded = failures_of([failed("web"), rolled_back("db")], the_plan, revision=COMMIT, applied={}, latest={})
    assert [(f.app, f.culprit, f.version, f.revision) for f in recorded] == [
        ("web", True, "v2", COMMIT),
        ("db", False, "v2", COMMIT),
    ]
    assert recorded[0].spec_hash == target("web").spec_hash and recorded[0].reason == "not healthy after 2s"
    assert recorded[1].reason == "rolled back with its commit (web: not healthy after 2s)"


def test_a_heal_is_no_part_of_the_failed_release() -> None:
    heal = create("db", "v1")
    recorded = failures_of(
        [failed("web")], plan(replace_("web"), heal), revision=COMMIT,
        applied={"db": heal.target.spec_hash}, latest={},  # type: ignore[union-attr]
    )  # fmt: skip
    assert [f.app for f in recorded] == ["web"]


def test_nothing_is_recorded_when_no_release_failed() -> None:
    assert failures_of([rolled_back("web")], plan(replace_("web")), revision=COMMIT, applied={}, latest={}) == []


def test_a_late_verdict_is_recorded_as_the_journal_last_had_the_release() -> None:
    latest = {"web": LastDeploy("abc123", "v2")}
    recorded = failures_of([failed("web")], None, revision=OLD_COMMIT, applied={}, latest=latest)
    assert [(f.app, f.spec_hash, f.version, f.revision, f.culprit) for f in recorded] == [
        ("web", "abc123", "v2", OLD_COMMIT, True)
    ]
    # A journal row without a release (nothing was created yet) holds nothing back.
    assert failures_of([failed("web")], None, revision=COMMIT, applied={}, latest={"web": LastDeploy("", "v2")}) == []
