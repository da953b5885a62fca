"""What the agent holds back, keeps together, heals and records: its decisions over plain records. Pure.

Each function takes the plan and the journal's answers as data (the failures on record; per app, the
spec hash of its last succeeded deploy, ``applied``) and returns the new plan with the ``Notice``s to
log; the agent reads the journal, emits the notices and does every other I/O.

Guarantees:
- A release that already failed (the culprit) and the releases rolled back with it (its companions)
  are not deployed again while the file asks for them (``core.failures.held_back``). A held app whose
  container is stopped is started instead; one whose container is gone gets the create of its last
  good release (``last_good``, ``restore_actions``); the removals of a held commit wait with it.
- Never half a release: while an app of the commit cannot be deployed at all (an ``error`` or a
  ``conflict``), none of its creates, replaces or removals is kept; heals of what already ran and the
  cleanup of an interrupted deploy are.
- Drift is what the host changed, not git: a start, or a create of exactly the release last deployed.
  It is healed (logged each time) or, without self-heal, reported once per app.
- When a release fails, the culprit and every other new release of its plan (not its heals) are
  recorded, so that no part of that commit deploys alone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from reconciler.core.events import Event
from reconciler.core.failures import Failure, held_back
from reconciler.core.model import DesiredState, ObservedState
from reconciler.core.plan import PRUNED, STALE_NEXT, Action, ActionKind, Change, Plan
from reconciler.core.report import Outcome

DEPLOYS = (ActionKind.CREATE, ActionKind.REPLACE)  # what brings a new release
HELD = "held:"  # + app: the key of its deploy.held notice


class Say(StrEnum):
    """How a notice is logged."""

    ONCE = "once"  # once while the condition under its key lasts, again if its message changes
    EMIT = "emit"  # every time
    CLEAR = "clear"  # the condition under its key is over: the next ONCE logs again


@dataclass(frozen=True)
class Notice:
    """A line for the agent's log; ``app`` and ``fields`` become the line's fields when set. Only a
    ``Say.CLEAR`` notice has no ``event`` (it logs nothing)."""

    key: str
    event: Event | None = None
    message: str = ""
    app: str = ""
    say: Say = Say.ONCE
    fields: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if (self.event is None) != (self.say is Say.CLEAR):
            raise ValueError(f"notice {self.key}: an event is what ONCE and EMIT log, and CLEAR logs nothing")

    @classmethod
    def clear(cls, key: str) -> Notice:
        return cls(key, say=Say.CLEAR)


@dataclass(frozen=True)
class LastDeploy:
    """An app's newest deploy row, whatever its result: the release a late verdict was given on."""

    spec_hash: str
    version: str


def is_drift(action: Action, applied: Mapping[str, str]) -> bool:
    """Whether ``action`` undoes a change the host made (not one git made): ``applied`` maps app -> the
    spec hash of its last succeeded deploy."""
    if action.kind is ActionKind.START:
        return True
    if action.kind is ActionKind.CREATE and action.target is not None:
        return applied.get(action.app) == action.target.spec_hash
    return False


# -- held back ---------------------------------------------------------------------------------------


def held_in(plan: Plan, failures: Iterable[Failure]) -> dict[str, Failure]:
    """The apps whose release in ``plan`` already failed (or was rolled back with one that did), and why."""
    targets = {
        action.app: action.target.spec_hash
        for action in plan.actions
        if action.target is not None and action.kind in DEPLOYS
    }
    return held_back(failures, targets)


def lost(plan: Plan, held: Mapping[str, Failure]) -> tuple[str, ...]:
    """The held apps whose container is gone: each needs its last good release (``last_good``, ``restore_actions``)."""
    return tuple(
        action.app
        for action in plan.actions
        if action.app in held and action.kind is ActionKind.CREATE and action.reasons[:1] != (PRUNED,)
    )


def last_good(app: str, old: DesiredState) -> DesiredState | None:
    """The file of ``app``'s last succeeded deploy, narrowed to ``app``: planned against the host, it brings
    back what ran before the failed release. None when that commit had no such app."""
    if app not in old.apps:
        return None
    return old.model_copy(update={"apps": {app: old.apps[app]}})


def restore_actions(app: str, plan: Plan) -> tuple[Action, ...]:
    """From the plan of ``last_good``: only the create of ``app`` (nothing of it is replaced or removed)."""
    return tuple(action for action in plan.actions if action.app == app and action.kind is ActionKind.CREATE)


def hold_back(
    plan: Plan,
    observed: ObservedState,
    held: Mapping[str, Failure],
    *,
    restore: Mapping[str, Sequence[Action]],
    said: Collection[str],
) -> tuple[Plan, list[Notice]]:
    """Drop the deploys of held releases: a stopped container of the app is started instead, a missing one
    is created as ``restore`` has it. ``said`` are the notice keys now in effect (to clear the stale ones)."""
    notices = [Notice.clear(key) for key in said if key.startswith(HELD) and key.removeprefix(HELD) not in held]
    if not held:
        return plan, notices
    actions: list[Action] = []
    for action in plan.actions:
        if action.reasons[:1] == (PRUNED,):
            continue  # removing apps is part of the commit that is held back: not on its own
        failure = held.get(action.app)
        if failure is None or action.kind not in DEPLOYS:
            actions.append(action)
            continue
        role = "failed" if failure.culprit else "was rolled back with its commit"
        notices.append(
            Notice(
                f"{HELD}{action.app}",
                Event.DEPLOY_HELD,
                f"{action.app}: release {failure.version} of {failure.revision[:8]} {role}; not tried again until"
                f" a commit changes {action.app} or `reconcile retry {action.app}` (`reconcile status` says why)",
                app=action.app,
            )
        )
        current = observed.ours(action.app)
        if current is not None and current.managed and not current.running:
            actions.append(replace(action, kind=ActionKind.START, reasons=(Change("state", current.state, "running"),)))
        elif current is None:
            actions.extend(restore.get(action.app, ()))
    return replace(plan, actions=tuple(actions)), notices


# -- never half a release ------------------------------------------------------------------------------


def whole_or_nothing(plan: Plan, applied: Mapping[str, str]) -> tuple[Plan, list[Notice]]:
    """While an app of the commit cannot be deployed at all (its image cannot be resolved, a stranger holds
    its name), keep none of the commit's new releases or removals; heals and cleanups go on."""
    blocked = [action for action in plan.actions if action.kind in (ActionKind.ERROR, ActionKind.CONFLICT)]
    if not blocked:
        return plan, [Notice.clear("blocked")]
    changes = (*DEPLOYS, ActionKind.REMOVE)
    kept = tuple(
        action
        for action in plan.actions
        if action.kind not in changes or is_drift(action, applied) or action.reasons[:1] == (STALE_NEXT,)
    )
    if not any(action.kind in changes for action in plan.actions if action not in kept):
        return plan, []
    why = "; ".join(f"{action.app}: {action.message}" for action in blocked)
    return replace(plan, actions=kept), [
        Notice("blocked", Event.COMMIT_BLOCKED, f"{plan.revision[:8]} not deployed while {why}")
    ]


# -- drift -----------------------------------------------------------------------------------------------


def heal_or_report(plan: Plan, applied: Mapping[str, str], *, self_heal: bool) -> tuple[Plan, list[Notice]]:
    """Tell drift from deploys; keep the heals (each logged) or, without ``self_heal``, drop and report them."""
    actions: list[Action] = []
    notices: list[Notice] = []
    for action in plan.actions:
        drift = is_drift(action, applied)
        reasons = "; ".join(map(str, action.reasons))
        if drift and not self_heal:
            message = f"{action.container}: {action.kind.value} needed ({reasons}); not healed (--no-self-heal)"
            notices.append(Notice(f"drift:{action.app}", Event.DRIFT_FOUND, message, app=action.app))
            continue
        if drift:
            notices.append(
                Notice(
                    f"drift:{action.app}",
                    Event.DRIFT_HEALING,
                    f"{action.container}: {reasons}",
                    app=action.app,
                    say=Say.EMIT,
                    fields=(("action", action.kind.value),),
                )
            )
        notices.append(Notice.clear(f"drift:{action.app}"))
        actions.append(action)
    return replace(plan, actions=tuple(actions)), notices


# -- what a failure holds back -----------------------------------------------------------------------------


def failures_of(
    outcomes: Iterable[Outcome],
    plan: Plan | None,
    *,
    revision: str,
    applied: Mapping[str, str],
    latest: Mapping[str, LastDeploy],
) -> list[Failure]:
    """The failures to record when releases of ``outcomes`` failed: the culprits, and every other new release
    of ``plan`` (its companions: rolled back or never tried). A culprit with no action in the plan (a late
    verdict; ``plan`` None) is recorded as ``latest`` has its release; ``at`` is left to the journal."""
    culprits = {outcome.app: outcome for outcome in outcomes if outcome.release_failed}
    if not culprits:
        return []
    why = "; ".join(f"{app}: {outcome.message}" for app, outcome in culprits.items())
    failures: list[Failure] = []
    for action in plan.actions if plan is not None else ():
        target = action.target
        if target is None or action.kind not in DEPLOYS:
            continue
        if action.app not in culprits and is_drift(action, applied):
            continue  # a heal of what already ran is no part of the new release
        culprit = culprits.get(action.app)
        failures.append(
            Failure(
                app=action.app,
                spec_hash=target.spec_hash,
                revision=revision,
                version=target.spec.version,
                reason=culprit.message if culprit is not None else f"rolled back with its commit ({why})",
                culprit=culprit is not None,
            )
        )
    recorded = {failure.app for failure in failures}
    for app, outcome in culprits.items():
        last = latest.get(app)
        if app not in recorded and last is not None and last.spec_hash:
            failures.append(Failure(app=app, spec_hash=last.spec_hash, revision=revision, version=last.version,
                                    reason=outcome.message, culprit=True))  # fmt: skip
    return failures
