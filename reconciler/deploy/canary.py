"""Weighted rollouts carried on by the passes: each under way is looked at once per pass and moved as
``core.canary.decide`` says.

Guarantees:
- The rollouts under way are the journal's ``rollout:APP`` flags (``records``), one per app. A record that
  cannot be read is dropped with a line saying so: its ``APP.next`` is then a stale one, which the plan
  removes, and the file's release is deployed again.
- ``tend`` moves each rollout once: ``WAIT`` changes nothing; ``ADVANCE`` and ``HOLD`` journal the new
  record first and then set the proxy's weights (a crash between the two is put right by the next pass's
  proxy sync, which weighs from the record); ``PROMOTE``, ``ABORT`` and ``SUPERSEDE`` end it through
  ``Applier.end_rollout``; a superseded one is said, not an outcome (the newer commit's deploy is the
  verdict). The counters are read from the proxy only when a step is judged. A proxy whose counters cannot
  be read is no verdict: the step is judged at the next pass.
- Every move is said in one line naming the app, the step, its weight and what each release answered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.core import canary
from reconciler.core.model import DesiredState, ObservedState, Role, container_name
from reconciler.core.plan import Plan
from reconciler.core.proxy import CANARY, SERVER
from reconciler.core.report import Outcome, Result
from reconciler.deploy.applier import Applier
from reconciler.errors import ProxyError, ReconcileError, UserError
from reconciler.state.journal import JOURNAL_FILE, Journal


def _read(journal: Journal) -> tuple[dict[str, canary.Rollout], dict[str, str]]:
    """The journal's rollout records by app, and why each one that cannot be read cannot."""
    found: dict[str, canary.Rollout] = {}
    broken: dict[str, str] = {}
    for app, text in journal.flags(canary.FLAG).items():
        try:
            found[app] = canary.Rollout.from_json(text)
        except ValueError as exc:
            broken[app] = str(exc)
    return found, broken


def records(journal: Journal, *, warn: Callable[[str], None] = lambda line: None) -> dict[str, canary.Rollout]:
    """The rollouts under way, by app (see the module docstring)."""
    found, broken = _read(journal)
    for app, why in broken.items():
        warn(f"{app}: its rollout's record cannot be read ({why}): dropped; its new release is deployed again")
        journal.set_flag(canary.FLAG + app, None)
    return found


def peek(state_dir: Path) -> dict[str, canary.Rollout]:
    """The rollouts under way, read without writing anything (a dry run, ``status``): none without a journal, or
    with one that cannot be read (``status`` says that of it)."""
    if not (state_dir / JOURNAL_FILE).exists():
        return {}
    try:
        journal = Journal(state_dir, repair=False)
    except ReconcileError:
        return {}
    try:
        return _read(journal)[0]
    except ReconcileError:
        return {}
    finally:
        journal.close()


def rolling(found: Mapping[str, canary.Rollout]) -> dict[str, str]:
    """What ``core.plan.plan`` takes: each app under rollout, and its new release's spec hash."""
    return {app: record.spec_hash for app, record in found.items()}


@dataclass
class Tended:
    """What ``tend`` did: the rollouts it ended (their outcomes), and what it said of the others."""

    outcomes: list[Outcome] = field(default_factory=list)
    said: list[str] = field(default_factory=list)
    ended: bool = False  # a rollout ended (its containers moved): the pass plans again


def tend(applier: Applier, desired: DesiredState, observed: ObservedState, plan: Plan) -> Tended:
    """Move each rollout under way once (see the module docstring). ``plan`` was planned with ``rolling``: an
    app it left to its rollout (a ``rollout`` note) still asks for the rollout's release; any other is
    superseded."""
    done = Tended()
    left_alone = {note.app for note in plan.notes if note.kind == "rollout"}
    now = applier.wall()
    for app, record in sorted(records(applier.journal, warn=done.said.append).items()):
        spec = desired.apps.get(app)
        release = observed.named(container_name(app, Role.NEXT))
        running = release is not None and release.id == record.canary and release.running
        judged_now = (
            spec is not None
            and spec.rollout is not None
            and app in left_alone
            and running
            and not record.asked
            and now >= canary.ends(spec, record)
        )
        counted: dict[str, canary.Counters] | None = None
        if judged_now and applier.proxy is not None:
            try:
                counted = applier.proxy.counters(app)
            except ProxyError:
                counted = None
        # The file asks for another release (the plan did not leave it alone) while this one is there to go.
        superseded = app not in left_alone and release is not None and release.id == record.canary
        decision = canary.decide(
            record, spec, superseded=superseded, running=running, now=now,
            canary=(counted or {}).get(CANARY), stable=(counted or {}).get(SERVER),
        )  # fmt: skip
        if decision.move is canary.Move.WAIT:
            if decision.reason:
                done.said.append(f"{app}: {decision.reason}")
            continue
        if decision.move in (canary.Move.ADVANCE, canary.Move.HOLD):
            assert spec is not None and counted is not None
            moved = canary.moved(
                record, decision, now=now, canary=counted.get(CANARY, canary.Counters()),
                stable=counted.get(SERVER, canary.Counters()),
            )  # fmt: skip
            applier.journal.set_flag(canary.FLAG + app, moved.to_json())
            try:
                applier.weigh(app, record.canary, spec, canary.weight(spec, moved))
            except UserError as exc:  # the next pass's proxy sync weighs from the record
                done.said.append(f"{app}: the proxy did not take the rollout's weights: {exc}")
            assert decision.judged is not None
            next_step = (
                f"{canary.weight(spec, moved)}% of requests to {record.to_version} now"
                if decision.move is canary.Move.ADVANCE
                else "judged again after another pause"
            )
            done.said.append(f"{app}: {decision.judged.said(record.from_version)}; {next_step}")
            continue
        if decision.judged is not None:
            done.said.append(f"{app}: {decision.judged.said(record.from_version)}")
        done.ended = True
        if spec is None:
            # The app left the file: the plan prunes its containers; the rollout's record goes now.
            applier.journal.set_flag(canary.FLAG + app, None)
            continue
        outcome = applier.end_rollout(record, spec, observed, decision)
        if outcome.result is Result.SUPERSEDED:
            done.said.append(f"{app}: {outcome.message}")  # the newer commit's deploy is this pass's verdict
        else:
            done.outcomes.append(outcome)
    return done
