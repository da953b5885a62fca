"""The deploy strategies as data, and the records a deploy leaves: pure, no engine, no journal.

Guarantees:
- A deploy is a sequence of ``Step`` values, one sequence per strategy: ``STOP_FIRST`` for apps with
  host ports (pull, release, create, stop-old, keep-old, rename-new, start-new, gate) and ``START_FIRST``
  for routed apps (pull, release, create, start-next, gate-next, canary, switch, keep-old, rename-new, drain,
  where canary is only for a ``rollout:`` and ends the deploy until the rollout is promoted). The
  release step runs the app's release command (when it has one) before anything of the app changes.
- ``RULES`` is the one place that says, per step, what a failure at it takes back (``Undo``) and what
  the next pass does with a deploy cut short at it (``Resume``). ``deploy.applier`` runs the sequences,
  ``deploy.rollback`` takes back what ``Undo`` says, ``deploy.recovery`` resumes as ``Resume`` says.
- On the stop-first path the steps of ``SWAP`` are one ``deploy.swap.swap_in`` call (the same swap that
  break-glass makes), which announces each of them.
- ``Deployed`` and ``Released`` are what a pass put in place (a container release, a service rollout):
  enough to take it back when its commit fails elsewhere. ``breaks_release`` says which outcomes fail
  a commit; ``why`` says, once, how a failure at a step reads in the journal and the outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.core.model import AppSpec, ObservedContainer
from reconciler.core.plan import ActionKind
from reconciler.core.report import Outcome, Result

# Said of a release whose gate a newer commit or a shutdown abandoned: pending, never failed.
ABANDONED = "its gate was abandoned for a newer commit or a shutdown"


class Step(StrEnum):
    """The named steps of what ``apply`` does (``RECONCILE_KILL_AT=APP:STEP`` names them too)."""

    PULL = "pull"
    RELEASE = "release"  # the release command ran in APP.release (a migration), before anything of the app changed
    CREATE = "create"  # as APP.next
    STOP_OLD = "stop-old"
    KEEP_OLD = "keep-old"  # the stopped one renamed to APP.prev (or APP.adopted)
    RENAME_NEW = "rename-new"  # APP.next renamed to APP
    START_NEW = "start-new"
    GATE = "gate"
    ROLL_BACK = "roll-back"
    VERIFY = "verify"  # a later pass judges a deploy that never got a verdict
    UNDO = "undo"  # a release that passed, taken back with its failed commit
    REMOVE = "remove"
    START = "start"
    # Start-first (routed apps): the new release runs and passes its gate beside the old one first.
    START_NEXT = "start-next"  # APP.next started; the old one serves on
    GATE_NEXT = "gate-next"  # APP.next gated on itself; traffic has not moved
    CANARY = "canary"  # rollout: APP.next takes its first step's share of requests beside the old release
    SWITCH = "switch"  # the proxy's server now points at APP.next
    DRAIN = "drain"  # the old one finishes its requests, then is kept warm or stopped


class Undo(StrEnum):
    """What a step that the engine refused leaves to take back (a refusal, not an outage)."""

    NOTHING = "nothing"  # nothing of the app changed: what ran runs on
    DISCARD = "discard"  # only APP.next exists: it is removed
    ROLL_BACK = "roll-back"  # the new release is on its way in: kept as APP.failed, the previous one back
    SET_ASIDE = "set-aside"  # the new release never served: kept stopped as APP.failed; the old one serves on


class Resume(StrEnum):
    """What the next pass does with a deploy that a crash or an outage cut short at a step."""

    REPLAN = "replan"  # the new release never took the app's name: the row closes, the plan runs again
    VERIFY = "verify"  # it holds the app's name: started if need be, gated, kept or rolled back
    FINISH = "finish"  # the verdict was journaled: the rollback is finished, the release not gated again


@dataclass(frozen=True)
class Rule:
    undo: Undo
    resume: Resume


RULES: Mapping[Step, Rule] = {
    Step.PULL: Rule(Undo.NOTHING, Resume.REPLAN),
    # The command's container is removed whatever became of it; cut short, the plan removes the stale one and
    # the next pass runs the command again (a release command is written to run more than once: a migration).
    Step.RELEASE: Rule(Undo.NOTHING, Resume.REPLAN),
    Step.CREATE: Rule(Undo.DISCARD, Resume.REPLAN),  # the plan cleans up a stale APP.next
    Step.STOP_OLD: Rule(Undo.ROLL_BACK, Resume.REPLAN),
    Step.KEEP_OLD: Rule(Undo.ROLL_BACK, Resume.REPLAN),
    Step.RENAME_NEW: Rule(Undo.ROLL_BACK, Resume.REPLAN),
    Step.START_NEW: Rule(Undo.ROLL_BACK, Resume.VERIFY),
    Step.GATE: Rule(Undo.ROLL_BACK, Resume.VERIFY),
    # A rollback's own steps note what the engine refuses and go on (``deploy.rollback``).
    Step.ROLL_BACK: Rule(Undo.NOTHING, Resume.FINISH),
    # Start-first: until the switch, traffic is on the old release and a crash leaves it there.
    Step.START_NEXT: Rule(Undo.SET_ASIDE, Resume.REPLAN),
    Step.GATE_NEXT: Rule(Undo.SET_ASIDE, Resume.REPLAN),
    # Its record journaled, a rollout is carried on by the passes (``deploy.canary``), not resumed as a deploy.
    Step.CANARY: Rule(Undo.SET_ASIDE, Resume.REPLAN),
    Step.SWITCH: Rule(Undo.SET_ASIDE, Resume.REPLAN),  # the route is re-derived: back on APP, the old one
    Step.DRAIN: Rule(Undo.NOTHING, Resume.VERIFY),  # APP is the new release, and it passed its gate
}

# Stop-first: the host port is free for the new release only once the old one stopped.
STOP_FIRST: tuple[Step, ...] = (
    Step.PULL,
    Step.RELEASE,  # while the old release serves: it stops only once the command succeeded
    Step.CREATE,
    Step.STOP_OLD,
    Step.KEEP_OLD,
    Step.RENAME_NEW,
    Step.START_NEW,
    Step.GATE,
)
# Start-first: nothing of the old release changes until the new one passed its gate; the proxy switches
# before any rename, so that a route only ever points at a release that passed (``core.proxy.serving``).
START_FIRST: tuple[Step, ...] = (
    Step.PULL,
    Step.RELEASE,
    Step.CREATE,
    Step.START_NEXT,
    Step.GATE_NEXT,
    Step.CANARY,  # with rollout: the deploy ends here; the steps after it run when its rollout is promoted
    Step.SWITCH,
    Step.KEEP_OLD,  # the old one renamed to APP.prev, still running: it finishes its requests
    Step.RENAME_NEW,
    Step.DRAIN,
)
# The steps ``swap.swap_in`` runs, in its order: a sequence that reaches one of them runs them all
# in that one call (it skips stop-old and keep-old itself when nothing runs under the app's name).
SWAP: tuple[Step, ...] = (Step.STOP_OLD, Step.KEEP_OLD, Step.RENAME_NEW, Step.START_NEW)


@dataclass(frozen=True)
class Deployed:
    """A release this pass put in place: enough to take it back if its commit fails elsewhere."""

    app: str
    container_id: str
    previous: ObservedContainer | None
    spec: AppSpec
    entry: int


@dataclass(frozen=True)
class Released:
    """A service rollout that passed: enough to put the service back as it was (whole-commit undo)."""

    app: str
    service_id: str
    previous: dict[str, Any] | None  # the service's spec before the rollout; None: it was new
    previous_version: str
    spec: AppSpec
    entry: int


def why(step: Step, reason: str) -> str:
    """Why a deploy failed at ``step``, as its journal row and its outcome say it."""
    if step in (Step.GATE, Step.GATE_NEXT):
        return reason
    if step is Step.SWITCH:
        return f"the proxy did not switch to it: {reason}"
    if step is Step.RELEASE:
        return f"its release command failed: {reason}"
    if step in (Step.KEEP_OLD, Step.RENAME_NEW) and reason:
        return f"it did not take the app's name ({step}): {reason}"
    return f"it did not start: {reason}"


def breaks_release(outcome: Outcome) -> bool:
    """A new release that did not come up (failed its gate, or its pull, env_file or create failed)."""
    deploy = outcome.kind in (ActionKind.CREATE, ActionKind.REPLACE)
    return outcome.release_failed or (deploy and outcome.result is Result.FAILED)
