"""``reconcile agent``: follow a branch and keep the host converged to it, for as long as it runs.

Guarantees:
- Each pass reads the tip of the branch (a URL is mirrored and fetched every ``interval``, with
  jitter; a rewritten branch is followed to its new tip). A local repository is also watched, so a
  push or commit converges at once; SIGHUP runs a pass at once.
- What cannot be reached (the git remote, the engine, the lock) changes nothing that runs: it is
  logged once, retried with backoff, and its recovery is logged once.
- Nothing the disk or git does to it stops the agent: a state directory that cannot be written
  (read-only, full) is logged once (``state.error``) and nothing changes until it can; a removed
  one is made again with its pid file; a corrupt journal or mirror is moved aside and started again
  (``journal.reset``, ``mirror.reset``); ``agent.pid`` is removed at exit only while it is ours.
- An engine outage in the middle of a deploy or a rollback is not a failed release: the pass stops
  (what it did before is reported), no ``deploy.failed`` is logged, and the engine is asked again
  every ``ENGINE_RETRY_MID_DEPLOY`` seconds, whatever the backoff, so that the next pass resumes the
  journaled deploy (``Applier.verify_unfinished``) within seconds of the engine's return.
- Deploys are atomic per commit: a release that fails its gate takes every app of its commit back.
  The failed release is remembered (``failures``) and not tried again until a commit changes that
  app or ``reconcile retry``; meanwhile the app keeps running what it rolled back to.
- Drift that was not asked for in git (a container stopped, removed or replaced by hand) is healed
  at the next pass, or only reported with ``self_heal=False``.
- An app that stays healthy ``stable_after`` after its deploy is promoted: recorded in the journal
  and tagged ``IMAGE:stable`` on the engine.
- SIGTERM ends the current step (a gate's wait is abandoned, its verdict given by the next start),
  exits 0 and leaves every container running. A deploy cut short by SIGKILL is finished or rolled
  back by the next pass (``Applier.verify_unfinished``).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler.core.failures import held_back
from reconciler.core.model import STABLE, DesiredState, ObservedState, container_name
from reconciler.core.plan import PRUNED, STALE_NEXT, Action, ActionKind, Change, Plan
from reconciler.core.report import Outcome, Result
from reconciler.errors import (
    EngineUnavailable,
    InvalidDesiredState,
    LockHeld,
    ReconcileError,
    RemoteUnavailable,
    SourceError,
    TransientError,
)
from reconciler.shell.apply import Applier
from reconciler.shell.docker import Engine, connect
from reconciler.shell.events import Events
from reconciler.shell.git import Source, open_source
from reconciler.shell.journal import SUSPENDED, Journal, claim_pid, locked, read_pid, release_pid
from reconciler.shell.loop import Settings, desired_at, plan_against
from reconciler.shell.release import publish_stable

ENGINE_RETRY_MID_DEPLOY = 2.0  # seconds: an outage cut a deploy short; the app may be down until resumed


@dataclass(frozen=True)
class AgentSettings:
    settings: Settings
    branch: str | None = None  # None: the repository's HEAD
    interval: float = 60.0
    jitter: float = 0.1  # +-10% of the interval, so that many agents do not fetch in step
    self_heal: bool = True
    watch: bool = True
    lock_timeout: float = 30.0
    publish_stable: bool = False  # push the stable git tags and IMAGE:stable on promotion

    @property
    def ref(self) -> str:
        return f"refs/heads/{self.branch}" if self.branch else self.settings.ref


@dataclass
class _Stable:
    """An app on its way to stable: healthy since when, with how many restarts."""

    spec_hash: str
    since: float
    stable_after: float
    restarts: int = -1


@dataclass
class Agent:
    config: AgentSettings
    events: Events
    on_step: Callable[[str, str], None] | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    changed: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False
    source: Source | None = None
    engine: Engine | None = None
    journal: Journal | None = None
    last_fetch: float = 0.0
    failing: dict[str, int] = field(default_factory=dict)  # what keeps failing -> how many times in a row
    stable_watch: dict[str, _Stable] = field(default_factory=dict)
    revision: str = ""
    retry_in: float = float("inf")  # a sooner pass to retry what failed in this one (the remote)
    cut_short: bool = False  # an engine outage stopped a deploy or rollback that the next pass resumes

    # -- lifecycle ---------------------------------------------------------------------------------

    def run(self) -> int:
        settings = self.config.settings
        state_dir = settings.state_dir
        pid = os.getpid()
        self._signals()

        def ready() -> float | None:
            """None when the state directory can be written (made again if it was removed, our pid file in
            it); else the wait before looking again, the trouble logged once: nothing changes meanwhile."""
            try:
                claim_pid(state_dir, pid)
                if self.journal is None:
                    self.journal = Journal(state_dir, warn=lambda line: self.events.emit("journal.reset", line))
                self.journal.check()
            except ReconcileError as exc:  # another agent took a removed directory over: it converges, not us
                return self._problem("state", "state.error", str(exc))
            self._recovered("state", "state.recovered", f"state directory {state_dir} is writable again")
            return None

        def mirror_reset(line: str) -> None:
            self.events.emit("mirror.reset", line)

        # A second agent, or a state directory that is a file, is a human's to fix: exit 1 before starting.
        # A read-only or full disk clears by itself: the loop waits for it.
        with contextlib.suppress(TransientError):
            claim_pid(state_dir, pid)
        observer = None
        try:
            self.events.emit(
                "agent.started",
                f"following {self.config.ref} of {settings.repo}",
                interval=f"{self.config.interval:g}s",
                self_heal=self.config.self_heal,
            )
            while not self.stopping:
                wait = ready()
                if wait is None:
                    if self.source is None:
                        # Opened here rather than in the pass, so that a mirror moved aside and cloned again
                        # is logged; the pass opens it again and reports what still fails.
                        with contextlib.suppress(ReconcileError):
                            self.source = open_source(
                                settings.repo, state_dir=state_dir, fetch=False, warn=mirror_reset
                            )
                    if observer is None and self.config.watch and self.source is not None:
                        # Watch before the first pass, so that a push during it is not missed.
                        observer = self._watch(self.source)
                    wait = self.tick()
                if self.stopping:
                    break
                self.wake.wait(wait)
                self.wake.clear()
        finally:
            if observer is not None:
                observer.stop()
            if self.journal is not None:
                self.journal.close()
            if self.source is not None:
                self.source.close()
            release_pid(state_dir, pid)  # only while it is ours: another agent may have started since
        self.events.emit("agent.stopped", "stopped; containers left running")
        return 0

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    def _signals(self) -> None:
        def terminate(signum: int, frame: FrameType | None) -> None:
            self.stop()

        def hangup(signum: int, frame: FrameType | None) -> None:
            self.changed.set()
            self.wake.set()

        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGINT, terminate)
        signal.signal(signal.SIGHUP, hangup)

    def _watch(self, source: Source) -> Any:
        """Wake the loop when refs change in a local repository (a push to a bare one, a commit)."""
        if source.mirrored:
            return None
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        agent = self

        class RefsChanged(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                # Only writes: our own reads of the refs raise open/close events, which must not wake us.
                if event.event_type not in ("created", "modified", "moved", "deleted", "closed"):
                    return
                path = str(event.src_path) + " " + str(getattr(event, "dest_path", ""))
                if "refs" in path or "HEAD" in path:
                    agent.changed.set()
                    agent.wake.set()

        observer = Observer()
        git_dir = Path(source.repo.git_dir)
        # refs/ for loose refs (a push renames refs/heads/x.lock into place); the git dir itself, not
        # recursively, for packed-refs and HEAD. Objects are left alone: a push writes many of them.
        observer.schedule(RefsChanged(), str(git_dir / "refs"), recursive=True)
        observer.schedule(RefsChanged(), str(git_dir), recursive=False)
        observer.daemon = True
        observer.start()
        return observer

    # -- one pass ------------------------------------------------------------------------------------

    def _problem(self, key: str, event: str, message: str) -> float:
        """Log a condition once, count it, and return how long to wait before trying again."""
        # One line per outage: the same outage reads differently from call to call (ping, list, ...).
        self.events.once(key, event, message, again_if_changed=False)
        self.failing[key] = self.failing.get(key, 0) + 1
        return float(min(self.config.interval, 2 ** min(self.failing[key], 6)))

    def _recovered(self, key: str, event: str, message: str) -> None:
        self.failing.pop(key, None)
        if self.events.clear(key):
            self.events.emit(event, message)

    def _next_interval(self) -> float:
        spread = self.config.interval * self.config.jitter
        return max(0.05, self.config.interval + random.uniform(-spread, spread))

    def tick(self) -> float:
        """One pass; returns how long to sleep before the next one (unless woken)."""
        settings = self.config.settings
        try:
            revision, desired = self._read()
        except RemoteUnavailable as exc:
            return self._problem("remote", "remote.unreachable", str(exc))
        except (InvalidDesiredState, SourceError) as exc:
            errors = exc.errors if isinstance(exc, InvalidDesiredState) else [str(exc)]
            self.events.once("invalid", "desired.invalid", f"{self.revision[:8]}: " + " | ".join(errors))
            return self._next_interval()
        self.events.clear("invalid")
        try:
            if self.engine is None:
                self.engine = connect(settings.docker_host, instance=settings.instance)
            self._recovered("engine", "engine.recovered", f"Docker engine at {self.engine.host} answers again")
            with locked(settings.state_dir, timeout=self.config.lock_timeout):
                self._recovered("lock", "lock.recovered", "state directory lock taken")
                outcomes = self._converge(revision, desired)
            self.cut_short = False
        except EngineUnavailable as exc:
            self.engine = None
            wait = self._problem("engine", "engine.unreachable", str(exc))
            return min(wait, ENGINE_RETRY_MID_DEPLOY) if self.cut_short else wait
        except LockHeld as exc:
            return self._problem("lock", "lock.held", str(exc))
        except ReconcileError as exc:
            self.events.emit("pass.error", str(exc), commit=revision[:8])
            return self._next_interval()
        except Exception as exc:  # a bug must not take the host's agent down: log it, try again later
            self.events.emit("pass.crashed", f"internal error: {type(exc).__name__}: {exc}", commit=revision[:8])
            self.engine = None
            return self._next_interval()
        for outcome in outcomes:
            if outcome.result is Result.SUPERSEDED:
                return 0.0  # a newer commit is waiting
        retry, self.retry_in = self.retry_in, float("inf")
        return min(self._next_interval(), self._stable_due(), retry)

    def _read(self) -> tuple[str, DesiredState]:
        settings = self.config.settings
        if self.source is None:
            self.source = open_source(settings.repo, state_dir=settings.state_dir, fetch=False)
            self.last_fetch = 0.0
        now = time.monotonic()
        due = now - self.last_fetch >= self.config.interval * 0.5 or self.changed.is_set() or "remote" in self.failing
        if self.source.mirrored and due:
            try:
                self.source.fetch()
            except RemoteUnavailable as exc:
                # Go on with what the mirror last fetched: drift is still healed while the remote is away.
                self.retry_in = self._problem("remote", "remote.unreachable", str(exc))
            else:
                self.last_fetch = now
                self._recovered("remote", "remote.recovered", f"git remote {settings.repo} answers again")
        self.changed.clear()
        revision = self.source.resolve(self.config.ref)
        if revision != self.revision:
            self.events.emit("commit.seen", f"{self.config.ref} is at {revision[:8]}", commit=revision[:8])
            self.revision = revision
        return revision, desired_at(self.source, self.config.ref, revision, settings.file)

    def _newer_commit(self, revision: str) -> bool:
        """True when the branch moved past ``revision`` (checked when a watcher or SIGHUP said so)."""
        if self.stopping:
            return True
        if not self.changed.is_set() or self.source is None:
            return False
        try:
            if self.source.mirrored:
                self.source.fetch()
            return self.source.resolve(self.config.ref) != revision
        except ReconcileError:
            return False

    def _converge(self, revision: str, desired: DesiredState) -> list[Outcome]:
        assert self.engine is not None and self.journal is not None
        journal = self.journal
        if journal.flag(SUSPENDED):
            self.events.once("suspended", "agent.suspended", f"suspended: {journal.flag(SUSPENDED)}; nothing changes")
            return []
        self._recovered("suspended", "agent.resumed", "resumed")
        applier = Applier(
            self.engine,
            journal,
            on_step=self.on_step or (lambda app, step: None),
            log=lambda line: None,
            interrupted=lambda: self._newer_commit(revision),
            author=desired.author,
        )
        observed = self.engine.observe()
        try:
            verified = applier.verify_unfinished(observed, desired.apps)
        except EngineUnavailable:
            self.cut_short = True
            raise
        for outcome in verified:  # each under the commit that released it, not the one being planned
            self._report([outcome], outcome.revision or revision)
            self._remember_failures([outcome], None, outcome.revision or revision)
        if verified:
            observed = self.engine.observe()
        plan, observed = plan_against(self.engine, desired, self.config.settings, observed=observed)
        self._notes(plan)
        plan = self._hold_back(plan, observed, journal)
        plan = self._whole_or_nothing(plan, journal)
        plan = self._heal_or_report(plan, observed, journal)
        if not plan.changes:
            self._report([Outcome(a.app, a.kind, a.container, Result.SKIPPED, a.message) for a in plan.problems],
                         revision)  # fmt: skip
            self._watch_stable(desired, observed, applier)
            return []
        try:
            outcomes = applier.apply(plan, observed, atomic=True)
        except EngineUnavailable:
            # Not a verdict on the release: the journal row stays unfinished for the next pass; what this
            # pass finished before the outage is told now.
            self.cut_short = True
            self._report(applier.done, revision)
            self._remember_failures(applier.done, plan, revision)
            raise
        self._report(outcomes, revision)
        self._remember_failures(outcomes, plan, revision)
        self._watch_stable(desired, self.engine.observe(), applier)
        return outcomes

    def _notes(self, plan: Plan) -> None:
        """Log each note once (another source's container, an unread env_file), and again if it comes back."""
        keys = {f"note:{note.kind}:{note.container}": note for note in plan.notes}
        for key in self.events.active("note:"):
            if key not in keys:
                self.events.clear(key)
        for key, note in keys.items():
            self.events.once(key, f"app.{note.kind}", f"{note.container}: {note.message}", app=note.app)

    # -- what not to do --------------------------------------------------------------------------

    def _hold_back(self, plan: Plan, observed: ObservedState, journal: Journal) -> Plan:
        """Drop deploys of releases that already failed; start what is stopped instead."""
        targets = {
            action.app: action.target.spec_hash
            for action in plan.actions
            if action.target is not None and action.kind in (ActionKind.CREATE, ActionKind.REPLACE)
        }
        held = held_back(journal.failures(), targets)
        for app in [key.removeprefix("held:") for key in self.events.active("held:")]:
            if app not in held:
                self.events.clear(f"held:{app}")
        if not held:
            return plan
        actions: list[Action] = []
        for action in plan.actions:
            if action.reasons[:1] == (PRUNED,):
                continue  # removing apps is part of the commit that is held back: not on its own
            failure = held.get(action.app)
            if failure is None or action.kind not in (ActionKind.CREATE, ActionKind.REPLACE):
                actions.append(action)
                continue
            role = "failed" if failure.culprit else "was rolled back with its commit"
            self.events.once(
                f"held:{action.app}",
                "deploy.held",
                f"{action.app}: release {failure.version} of {failure.revision[:8]} {role}; not tried again until"
                f" a commit changes {action.app} or `reconcile retry {action.app}` (`reconcile status` says why)",
                app=action.app,
            )
            current = observed.named(container_name(action.app))
            if current is not None and current.managed and not current.running:
                actions.append(
                    replace(action, kind=ActionKind.START, reasons=(Change("state", current.state, "running"),))
                )
            elif current is None:
                actions.extend(self._last_good(action.app, observed, journal))
        return replace(plan, actions=tuple(actions))

    def _last_good(self, app: str, observed: ObservedState, journal: Journal) -> list[Action]:
        """The create of ``app`` as its last good deploy had it (its commit's file), for a held app that
        lost its container: what ran before the failed release runs again."""
        good = journal.last(app, result="succeeded")
        if good is None or self.source is None or self.engine is None:
            return []
        settings = self.config.settings
        try:
            old = desired_at(self.source, self.config.ref, good.revision, settings.file)
        except ReconcileError:
            return []
        if app not in old.apps:
            return []
        only = old.model_copy(update={"apps": {app: old.apps[app]}})
        plan, _ = plan_against(self.engine, only, settings, observed=observed)
        return [action for action in plan.actions if action.app == app and action.kind is ActionKind.CREATE]

    def _whole_or_nothing(self, plan: Plan, journal: Journal) -> Plan:
        """While an app of the commit cannot be deployed at all (its image cannot be resolved, a stranger
        holds its name), deploy none of the commit's new releases: never half a release. Heals go on."""
        blocked = [action for action in plan.actions if action.kind in (ActionKind.ERROR, ActionKind.CONFLICT)]
        if not blocked:
            self.events.clear("blocked")
            return plan
        kept = tuple(
            action
            for action in plan.actions
            if action.kind not in (ActionKind.CREATE, ActionKind.REPLACE, ActionKind.REMOVE)
            or self._is_drift(action, journal)
            or action.reasons[:1] == (STALE_NEXT,)
        )
        if any(
            a.kind in (ActionKind.CREATE, ActionKind.REPLACE, ActionKind.REMOVE) for a in plan.actions if a not in kept
        ):
            why = "; ".join(f"{action.app}: {action.message}" for action in blocked)
            self.events.once("blocked", "commit.blocked", f"{plan.revision[:8]} not deployed while {why}")
        return replace(plan, actions=kept)

    def _heal_or_report(self, plan: Plan, observed: ObservedState, journal: Journal) -> Plan:
        """Tell drift (the host changed under us) from deploys (git changed); heal it or only report it."""
        actions: list[Action] = []
        for action in plan.actions:
            drift = self._is_drift(action, journal)
            if drift and not self.config.self_heal:
                self.events.once(
                    f"drift:{action.app}",
                    "drift.found",
                    f"{action.container}: {action.kind.value} needed ({'; '.join(map(str, action.reasons))});"
                    " not healed (--no-self-heal)",
                    app=action.app,
                )
                continue
            if drift:
                self.events.emit("drift.healing", f"{action.container}: {'; '.join(map(str, action.reasons))}",
                                 app=action.app, action=action.kind.value)  # fmt: skip
            self.events.clear(f"drift:{action.app}")
            actions.append(action)
        return replace(plan, actions=tuple(actions))

    @staticmethod
    def _is_drift(action: Action, journal: Journal) -> bool:
        if action.kind is ActionKind.START:
            return True
        if action.kind is ActionKind.CREATE and action.target is not None:
            applied = journal.last(action.app, result="succeeded")
            return applied is not None and applied.spec_hash == action.target.spec_hash
        return False

    def _remember_failures(self, outcomes: list[Outcome], plan: Plan | None, revision: str) -> None:
        """Record the release that failed (the culprit) and every other new release of its commit (the
        companions, rolled back or never tried), so that none of them deploys alone."""
        assert self.journal is not None
        culprits = {outcome.app: outcome for outcome in outcomes if outcome.release_failed}
        if not culprits:
            return
        why = "; ".join(f"{app}: {outcome.message}" for app, outcome in culprits.items())
        recorded: set[str] = set()
        for action in plan.actions if plan is not None else ():
            target = action.target
            if target is None or action.kind not in (ActionKind.CREATE, ActionKind.REPLACE):
                continue
            if action.app not in culprits and self._is_drift(action, self.journal):
                continue  # a heal of what already ran is no part of the new release
            culprit = culprits.get(action.app)
            self.journal.record_failure(
                app=action.app,
                spec_hash=target.spec_hash,
                revision=revision,
                version=target.spec.version,
                reason=culprit.message if culprit is not None else f"rolled back with its commit ({why})",
                culprit=culprit is not None,
            )
            recorded.add(action.app)
        for app, outcome in culprits.items():  # found by verify_unfinished: no plan action of its own
            last = self.journal.last(app)
            if app not in recorded and last is not None and last.spec_hash:
                self.journal.record_failure(app=app, spec_hash=last.spec_hash, revision=revision,
                                            version=last.to_version, reason=outcome.message, culprit=True)  # fmt: skip

    def _report(self, outcomes: list[Outcome], revision: str) -> None:
        events = {
            Result.APPLIED: "deploy.succeeded",
            Result.ROLLED_BACK: "deploy.rolled-back",
            Result.FAILED: "deploy.failed",
            Result.SUPERSEDED: "deploy.superseded",
        }
        for outcome in outcomes:
            if outcome.result is Result.SKIPPED:
                self.events.once(f"problem:{outcome.app}", f"app.{outcome.kind.value}", outcome.message,
                                 app=outcome.app)  # fmt: skip
                continue
            self.events.clear(f"problem:{outcome.app}")
            name = events.get(outcome.result, "deploy.done")
            if outcome.kind is ActionKind.REMOVE and outcome.result is Result.APPLIED:
                # APP.next left by an interrupted deploy is debris, not the app.
                name = "app.removed" if outcome.container == outcome.app else "deploy.cleanup"
            self.events.emit(name, f"{outcome.container}: {outcome.message or outcome.result.value}",
                             app=outcome.app, commit=revision[:8])  # fmt: skip

    # -- stable ------------------------------------------------------------------------------------

    def _watch_stable(self, desired: DesiredState, observed: ObservedState, applier: Applier) -> None:
        """Promote apps that stayed healthy ``stable_after`` since their deploy; reset the clock on trouble."""
        assert self.journal is not None and self.engine is not None
        now = time.time()
        for app, spec in desired.apps.items():
            current = observed.named(container_name(app))
            if current is None or not current.managed or not current.spec_hash:
                self.stable_watch.pop(app, None)
                continue
            promoted = self.journal.stable(app)
            if promoted is not None and promoted.image_id == current.image_id:
                self.stable_watch.pop(app, None)
                continue
            deployed = self.journal.last(app, result="succeeded")
            if deployed is None or deployed.spec_hash != current.spec_hash:
                continue
            watch = self.stable_watch.get(app)
            if watch is None or watch.spec_hash != current.spec_hash:
                watch = _Stable(current.spec_hash, deployed.finished_at or now, spec.stable_after)
                self.stable_watch[app] = watch
            sample = applier.sample(current.id, spec.gate)
            healthy = sample.running and sample.probe_ok and sample.docker_health in ("", "healthy")
            if not healthy or (watch.restarts >= 0 and sample.restarts > watch.restarts):
                watch.since = now
            # Stopped and started again (a rollback of a later release, a manual restart): the clock
            # starts over from that start.
            watch.since = max(watch.since, self.engine.started_at(current.id))
            watch.restarts = sample.restarts
            if now - watch.since >= spec.stable_after:
                self._promote(app, spec.image, current.version, current.image_id, current.commit, how="auto")
                self.stable_watch.pop(app, None)

    def _promote(self, app: str, image: str, version: str, image_id: str, revision: str, *, how: str) -> None:
        assert self.journal is not None and self.engine is not None
        concrete = version
        if version == STABLE:
            previous = self.journal.stable(app)
            concrete = previous.version if previous is not None else version
        problems = publish_stable(
            self.engine, self.journal, self.source, app=app, image=image, version=concrete, image_id=image_id,
            revision=revision, how=how, publish=self.config.publish_stable,
        )  # fmt: skip
        self.events.emit("stable.promoted", f"{app} {concrete} is stable ({image}:stable)", app=app,
                         commit=revision[:8])  # fmt: skip
        for problem in problems:
            self.events.emit("stable.unpublished", f"{app}: {problem}", app=app)

    def _stable_due(self) -> float:
        """Seconds until the next app could be promoted (the loop wakes then to look)."""
        if not self.stable_watch:
            return float("inf")
        due = min(watch.since + watch.stable_after for watch in self.stable_watch.values()) - time.time()
        # Look at least every 5 s meanwhile: staying healthy is what earns the promotion.
        return max(0.05, min(due, 5.0))


def run_agent(
    config: AgentSettings, *, log_format: str = "text", on_step: Callable[[str, str], None] | None = None
) -> int:
    return Agent(config, Events(fmt=log_format), on_step=on_step).run()


def state_pid(state_dir: Path) -> int | None:
    """The pid of the agent running on ``state_dir``, if one is."""
    return read_pid(state_dir)
