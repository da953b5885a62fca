"""Verdicts after the fact: deploys that a crash, an outage or a newer commit left without one, and
releases that died inside their stable window.

Guarantees:
- ``verify_unfinished`` resumes each unfinished journal row as ``core.steps.RULES`` says for the step
  it reached (``Resume``), read from what the engine shows: the release still running under the app's
  name is gated now (started first when it was cut short before its start) and kept or rolled back to
  ``APP.prev``; a row whose release never took the app's name is closed as ``interrupted`` (the plan
  deploys it again); a row whose verdict was journaled (``rolling-back``) is rolled back at once, never
  gated again. A service's row is judged by ``Services.verify``. The rows of ``waiting`` apps (routed,
  while their proxy is away) are left for a later pass.
- ``verify_live`` (a one-shot pass) looks at each app's release inside its stable window: one that died
  since (``core.stable.died``) is taken back by ``fail_live``, as a failed gate is; its deploy's row
  then says rolled back. The agent watches the window itself and calls ``fail_live``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace

from reconciler.core.health import Verdict
from reconciler.core.model import AppSpec, ObservedState, Role, container_name
from reconciler.core.plan import Action, ActionKind
from reconciler.core.report import Outcome, Result
from reconciler.core.stable import StableSample, died
from reconciler.core.steps import RULES, Resume, Step
from reconciler.deploy.rollback import Rollback
from reconciler.errors import UserError
from reconciler.state.journal import Entry, JournalResult


class Recovery(Rollback):
    """The verdicts after the fact of ``Applier`` (a part of it; see the module docstring)."""

    wall: Callable[[], float]

    def verify_unfinished(
        self, observed: ObservedState, specs: Mapping[str, AppSpec], *, waiting: Collection[str] = ()
    ) -> list[Outcome]:
        """Give a verdict to deploys that never got one (a crash, SIGTERM, an engine outage, a newer
        commit mid-gate), and finish the rollbacks that were cut short.

        Each row is resumed as ``RULES`` says for the step it reached (``_reached``): the release still
        running under the app's name is gated now, and a failure rolls back to ``APP.prev``; a row whose
        release never took the app's name is closed as ``interrupted`` (the plan deploys it again); a row
        whose verdict was journaled (``rolling-back``) is rolled back at once, never gated again. The rows
        of ``waiting`` apps (routed, while their proxy is away) are left for a later pass.
        """
        outcomes: list[Outcome] = []
        for entry in self._rows.unverified():
            if entry.app in waiting:
                continue
            service = observed.service(entry.app)
            if service is not None and service.managed:
                spec = specs.get(entry.app)
                judged = self.services.verify(entry, service, spec) if spec is not None and spec.service else None
                if judged is None:  # the service holds another spec now: the plan judges what it sees again
                    self._rows.finish(entry.id, result=JournalResult.INTERRUPTED, message="cut short; planned again")
                else:
                    outcomes.append(replace(judged, revision=entry.revision))
                continue
            step = self._reached(entry, observed)
            resume = RULES[step].resume
            if resume is Resume.FINISH:
                resumed = self._resume_roll_back(entry, observed, specs)
                if resumed is not None:
                    outcomes.append(replace(resumed, revision=entry.revision))
                continue
            current = observed.named(entry.app)
            if resume is Resume.REPLAN or entry.app not in specs or current is None:
                self._rows.finish(entry.id, result=JournalResult.INTERRUPTED, message="cut short; planned again")
                continue
            self._step(entry.app, Step.VERIFY)
            if step is Step.START_NEW:  # cut short between its rename and its start
                with contextlib.suppress(UserError):  # not started: the gate sees it, and rolls back
                    self.engine.start(current.id, current.name)
            gate = self.prober.gate(current.id, specs[entry.app].gate)
            action = Action(ActionKind.REPLACE, entry.app, entry.app)
            if gate.verdict is Verdict.PENDING:
                continue
            if gate.verdict is Verdict.PASSED:
                self._rows.finish(entry.id, result=JournalResult.SUCCEEDED, message="verified by a later pass")
                self._log(f"deployed {entry.app} {entry.to_version} (verified after an interruption)")
                outcomes.append(
                    Outcome(
                        entry.app, action.kind, entry.app, Result.APPLIED, entry.to_version, revision=entry.revision
                    )
                )
                continue
            previous = observed.named(container_name(entry.app, Role.PREVIOUS))
            kept = previous if previous is not None and previous.managed else None
            released = specs[entry.app].model_copy(update={"version": entry.to_version or specs[entry.app].version})
            outcome = self._roll_back(action, entry.id, current.id, kept, released, gate.reason)
            outcomes.append(replace(outcome, revision=entry.revision))
        return outcomes

    @staticmethod
    def _reached(entry: Entry, observed: ObservedState) -> Step:
        """The step at which an unfinished row's deploy stopped, as the engine shows it."""
        if entry.result is JournalResult.ROLLING_BACK:
            return Step.ROLL_BACK
        current = observed.named(entry.app)
        if current is None or not current.managed or not entry.spec_hash or current.spec_hash != entry.spec_hash:
            return Step.RENAME_NEW  # at the latest: its release never took the app's name
        return Step.GATE if current.running else Step.START_NEW

    def _resume_roll_back(self, entry: Entry, observed: ObservedState, specs: Mapping[str, AppSpec]) -> Outcome | None:
        """Finish a rollback cut short: its release already failed, so it is not gated again.

        The failed release is found by its spec hash wherever the rollback left it (under the app's
        name, or already kept as ``APP.failed``); what it goes back to is ``APP.prev``, or what runs
        under the app's name when the rollback had already put it there.
        """
        app = entry.app
        spec = specs.get(app)
        if spec is None:  # gone from the file: the plan prunes the app, whatever runs
            self._rows.finish(
                entry.id, result=JournalResult.INTERRUPTED, message=f"{entry.message}; rollback cut short"
            )
            return None
        released = None
        for role in (Role.CURRENT, Role.NEXT, Role.FAILED):
            found = observed.named(container_name(app, role))
            if found is not None and found.managed and entry.spec_hash and found.spec_hash == entry.spec_hash:
                released = found
                break
        current = observed.named(app)
        kept = observed.named(container_name(app, Role.PREVIOUS))
        previous = kept if kept is not None and kept.managed else None
        if previous is None and current is not None and current.managed and current is not released:
            previous = current  # the rollback had put it back already; it is gated again below
        routed_old = current is not None and current.managed and current.running and current is not released
        if spec.route is not None and routed_old:
            # Routed: a release set aside before the switch left the old one serving under APP: it is what
            # the route goes back to, not the older APP.prev.
            previous = current
        self._step(app, Step.VERIFY)
        action = Action(ActionKind.REPLACE, app, app)
        failed_spec = spec.model_copy(update={"version": entry.to_version or spec.version})
        reason = entry.message or "its health gate failed"
        return self._roll_back(action, entry.id, released.id if released else "", previous, failed_spec, reason)

    def verify_live(self, observed: ObservedState, specs: Mapping[str, AppSpec]) -> list[Outcome]:
        """A one-shot pass's look at each app's release inside its stable window (its deploy, the journal's
        last row, finished less than ``stable_after`` ago): one that died since (``core.stable.died``, every
        restart of it counted) is taken back (``fail_live``). The agent watches the window itself."""
        outcomes: list[Outcome] = []
        for app, spec in specs.items():
            current = observed.named(app)
            if spec.service or current is None or not current.managed or not current.spec_hash:
                continue
            last = self._rows.last(app)
            if (
                last is None
                or last.result is not JournalResult.SUCCEEDED
                or last.spec_hash != current.spec_hash
                or last.finished_at is None
                or self.wall() - last.finished_at >= spec.stable_after
            ):
                continue
            found = self.prober.inspect(current.id)
            if found is None:
                continue
            look = StableSample(
                at=0.0, healthy=False, restarts=found.restart_count, started_at=found.started_at,
                running=found.running and not found.restarting, restarting=found.restarting,
                exit_code=found.exit_code,
            )  # fmt: skip
            why = died(0, look)
            if why:
                outcomes.append(self.fail_live(app, spec, observed, why, revision=last.revision))
        return outcomes

    def fail_live(self, app: str, spec: AppSpec, observed: ObservedState, reason: str, *, revision: str) -> Outcome:
        """Take back the release under the app's name that died inside its stable window (``core.stable.died``),
        as a gate that failed is taken back: kept stopped as APP.failed, the route (or the app's name) back
        on APP.prev, started and gated first unless it is warm. Its deploy's journal row is its row again,
        now rolled back, so that the release before it is the app's last good one."""
        current = observed.named(app)
        assert current is not None and current.managed
        kept = observed.named(container_name(app, Role.PREVIOUS))
        previous = kept if kept is not None and kept.managed else None
        last = self._rows.last(app)
        if last is not None and last.result is JournalResult.SUCCEEDED and last.spec_hash == current.spec_hash:
            entry = last.id
        else:
            entry = self._journal_start(
                current.commit or revision, app, str(ActionKind.REPLACE),
                from_version=previous.version if previous else "", to_version=current.version,
                from_image=previous.image_id if previous else "", to_image=current.image_id,
                spec_hash=current.spec_hash,
            )  # fmt: skip
        failed = spec.model_copy(update={"version": current.version or spec.version})
        action = Action(ActionKind.REPLACE, app, app)
        return replace(self._roll_back(action, entry, current.id, previous, failed, reason), revision=current.commit)
