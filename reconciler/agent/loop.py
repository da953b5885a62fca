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
  (``journal.reset``, ``mirror.reset``). ``agent.pid`` is held with ``flock`` for the agent's life (a
  second agent on the state directory exits 1 naming the holder) and removed at exit only while it is ours.
- A bug in a pass is one ``pass.crashed`` line; its traceback goes to ``STATE/crash-TIME.txt`` (the
  newest ``CRASH_FILES_KEPT`` are kept), or to stderr with ``RECONCILE_DEBUG`` set. The agent goes on.
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
  and tagged ``IMAGE:stable`` on the engine. A container release that dies inside that window (Docker
  restarts it, or it exits) is a failed release instead: taken back to the release before it
  (``Applier.fail_live``), said once (``deploy.rolled-back``) and held like a failed gate.
- What to hold back, keep together, heal and promote is decided in the core (``core.policy``,
  ``core.stable``) over the journal's answers; this module reads the journal and the engine, logs the
  notices and acts.
- The proxy comes first in a pass. One that cannot be brought in line (its port taken, its image missing)
  is said once (``proxy.failed``, again when the reason changes) and holds back only the routed apps: the
  others deploy. One that goes away mid-deploy (``ProxyUnavailable``) is like an engine outage: no verdict
  on the release; the next pass, at once, brings the proxy back and deploys the release again.
- A pass that fails as a whole is one ``pass.error`` per fault (again when the fault changes, and one
  ``pass.recovered`` when a pass goes through). ``/healthz`` says 503 ``failing`` once ``FAILED_PASSES``
  passes in a row failed (an error, an outage, a proxy that holds routed apps back); the systemd watchdog
  is fed on the loop's liveness alone.
- Between passes, a routed service's route follows its tasks every ``FOLLOW`` seconds (only while no
  pass holds the engine, here or in another process): a task Swarm replaced serves within seconds.
- SIGTERM ends the current step (a gate's wait is abandoned, its verdict given by the next start),
  exits 0 and leaves every container running. A deploy cut short by SIGKILL is finished or rolled
  back by the next pass (``Applier.verify_unfinished``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler.adapters.docker import Engine, connect
from reconciler.adapters.git import Source, open_source
from reconciler.agent.listener import Health, Listener
from reconciler.converge.run import Settings, desired_at, plan_against
from reconciler.core import policy
from reconciler.core.events import Event
from reconciler.core.model import STABLE, AppSpec, DesiredState, ObservedState
from reconciler.core.plan import Action, ActionKind, Plan
from reconciler.core.policy import Deployed, Notice, Say
from reconciler.core.proxy import routed, unrouted
from reconciler.core.report import Outcome, Result
from reconciler.core.stable import Candidate, StableSample, StableWatch, track
from reconciler.deploy.applier import Applier
from reconciler.deploy.proxy import Proxy
from reconciler.errors import (
    CommitRefused,
    EngineUnavailable,
    InvalidDesiredState,
    LockHeld,
    ProxyUnavailable,
    ReconcileError,
    RemoteUnavailable,
    TransientError,
    UserError,
)
from reconciler.ops.stable import hold, publish_stable, stable_source
from reconciler.state.journal import REFUSED, SUSPENDED, Journal, JournalResult
from reconciler.state.lock import locked
from reconciler.state.pidfile import PidFile
from reconciler.state.private import write_private
from reconciler.telemetry import sdnotify
from reconciler.telemetry.log import Events
from reconciler.telemetry.metrics import Metrics
from reconciler.telemetry.notify import Notifier
from reconciler.telemetry.scrub import scrub
from reconciler.trust import server_policy

ENGINE_RETRY_MID_DEPLOY = 2.0  # seconds: an outage cut a deploy short; the app may be down until resumed
CRASH_FILES_KEPT = 20  # a bug that crashes every pass must not fill the state directory
HOOK_SPACING = 2.0  # seconds between passes that webhooks start: 1,000 hooks in a second are two passes
FOLLOW = 2.0  # seconds between looks at a routed service's tasks between passes (``Agent._follow``)
# Passes that failed in a row (an error, an outage, a proxy that cannot be brought in line) before /healthz
# says 503: one is a blip that the next pass, seconds later, often clears; three is a fault to look at.
FAILED_PASSES = 3
_REFUSED = {
    "unsigned": Event.COMMIT_UNSIGNED,
    "bad-signature": Event.COMMIT_BAD_SIGNATURE,
    "policy": Event.COMMIT_REFUSED,
}
_VERDICT_EVENTS = {  # an outcome's line in the log; any other result of a change is deploy.done
    Result.APPLIED: Event.DEPLOY_SUCCEEDED,
    Result.ROLLED_BACK: Event.DEPLOY_ROLLED_BACK,
    Result.FAILED: Event.DEPLOY_FAILED,
    Result.SUPERSEDED: Event.DEPLOY_SUPERSEDED,
}


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
    listen: str | None = None  # HOST:PORT of the HTTP listener (metrics, healthz, webhooks); None: none
    webhook_secret: bytes = field(default=b"", repr=False)  # never printed
    notify: tuple[str, ...] = field(default=(), repr=False)  # apprise URLs: they hold tokens, never printed

    @property
    def ref(self) -> str:
        return f"refs/heads/{self.branch}" if self.branch else self.settings.ref


class _InactiveEmitter(logging.Filter):
    """Drops watchdog's "called when the thread is inactive": its reader woke after we stopped it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "thread is inactive" not in record.getMessage()


class Waker:
    """What wakes the agent's loop from its wait: a pipe, so that a signal handler may set it too.

    A ``threading.Event`` takes a lock to be set; a handler that runs while the interrupted code holds that
    lock (in ``clear()``, say) waits for itself for ever. A write to a non-blocking pipe takes no lock.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def set(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe is already set
            os.write(self._write, b"\0")

    def wait(self, timeout: float) -> None:
        select.select([self._read], [], [], max(0.0, timeout))

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._read, 4096):
                pass


@dataclass
class Agent:
    config: AgentSettings
    events: Events
    on_step: Callable[[str, str], None] | None = None
    wake: Waker = field(default_factory=Waker)
    hup_pending: bool = False  # SIGHUP came: a pass now, with a fetch (turned into ``changed`` off the handler)
    changed: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False
    source: Source | None = None
    engine: Engine | None = None
    journal: Journal | None = None
    last_fetch: float = 0.0
    failing: dict[str, int] = field(default_factory=dict)  # what keeps failing -> how many times in a row
    stable_watch: dict[str, StableWatch] = field(default_factory=dict)
    revision: str = ""
    retry_in: float = float("inf")  # a sooner pass to retry what failed in this one (the remote)
    cut_short: bool = False  # an engine outage stopped a deploy or rollback that the next pass resumes
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = field(default_factory=time.monotonic)
    pass_started: float | None = None  # monotonic; set while a pass runs
    pass_ended: float | None = None
    loop_at: float = field(default_factory=time.monotonic)  # when the loop last went round (a pass, or a wait)
    pass_cap: float = 900.0  # seconds a pass may run and still be alive: longer when the file's gates are
    verified: tuple[str, DesiredState] | None = None  # the last commit that passed --require-signed-by and --policy
    routing: DesiredState | None = None  # the last file converged to, while it routes a service (``_follow``)
    busy: threading.Lock = field(default_factory=threading.Lock)  # held while a pass uses the engine
    proxy_down: str = ""  # why the proxy could not be brought in line this pass (routed apps wait), or ""
    failed_passes: int = 0  # passes in a row that failed (``FAILED_PASSES``: /healthz says so)
    pass_failure: str = ""  # why the last one failed

    # -- lifecycle ---------------------------------------------------------------------------------

    def run(self) -> int:
        settings = self.config.settings
        state_dir = settings.state_dir
        pid_file = PidFile(state_dir, os.getpid())
        self._signals()

        def ready() -> float | None:
            """None when the state directory can be written (made again if it was removed, our pid file in
            it); else the wait before looking again, the trouble logged once: nothing changes meanwhile."""
            try:
                pid_file.claim()
                if self.journal is None:
                    self.journal = Journal(state_dir, warn=lambda line: self.events.emit(Event.JOURNAL_RESET, line))
                self.journal.check()
            except ReconcileError as exc:  # another agent took a removed directory over: it converges, not us
                return self._problem("state", Event.STATE_ERROR, str(exc))
            self._recovered("state", Event.STATE_RECOVERED, f"state directory {state_dir} is writable again")
            return None

        def mirror_reset(line: str) -> None:
            self.events.emit(Event.MIRROR_RESET, line)

        # A second agent, or a state directory that is a file, is a human's to fix: exit 1 before starting.
        # A read-only or full disk clears by itself: the loop waits for it.
        with contextlib.suppress(TransientError):
            pid_file.claim()
        self.events.listeners.append(self.metrics.on_event)
        notifier: Notifier | None = None
        listener: Listener | None = None
        watchdog_stop = threading.Event()
        observer = None
        try:
            notifier = self._notifier()
            listener = self._listen()
            sdnotify.notify("READY=1")
            sdnotify.feed_watchdog(lambda: self.liveness().alive, watchdog_stop)
            threading.Thread(target=self._follow, args=(watchdog_stop,), name="follow-routes", daemon=True).start()
            self.events.emit(
                Event.AGENT_STARTED,
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
                self.loop_at = time.monotonic()  # also while it waits for a state directory it can write
                if self.stopping:
                    break
                self.wake.wait(wait)
                self.wake.clear()
        finally:
            watchdog_stop.set()
            sdnotify.notify("STOPPING=1")
            if notifier is not None:
                notifier.close()
            if listener is not None:
                listener.stop()
            if observer is not None:
                observer.stop()
            if self.journal is not None:
                self.journal.close()
            if self.source is not None:
                self.source.close()
            pid_file.release()  # only while it is ours: another agent may have started since
        self.events.emit(Event.AGENT_STOPPED, "stopped; containers left running")
        return 0

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    def _notifier(self) -> Notifier | None:
        """``--notify`` targets, fed by the agent's events; their trouble is logged once, off the deploy path."""
        if not self.config.notify:
            return None

        def said(line: str) -> None:
            event = Event.NOTIFY_RECOVERED if line.endswith("recovered") else Event.NOTIFY_FAILED
            self.events.emit(event, line)

        notifier = Notifier(self.config.notify, log=said)
        self.events.listeners.append(notifier)
        return notifier

    def _listen(self) -> Listener | None:
        """The HTTP listener, when asked for (``--listen``); a push hook wakes the loop as SIGHUP does."""
        if self.config.listen is None:
            return None

        spacing = threading.Lock()
        timer: list[threading.Timer] = []
        last = [float("-inf")]

        def fire() -> None:
            with spacing:
                timer.clear()
                last[0] = time.monotonic()
            self.wake.set()

        def pushed() -> None:
            # A newer commit may be waiting: a gate under way sees it at once (``_newer_commit``). Passes
            # for hooks start at most every HOOK_SPACING: a flood is one pass now and one after it.
            self.changed.set()
            with spacing:
                if timer:
                    return
                delay = last[0] + HOOK_SPACING - time.monotonic()
                if delay > 0:
                    timer.append(threading.Timer(delay, fire))
                    timer[0].daemon = True
                    timer[0].start()
                    return
                last[0] = time.monotonic()
            self.wake.set()

        def refused(provider: str, message: str) -> None:
            if message:
                self.events.once(f"webhook:{provider}", Event.WEBHOOK_REFUSED, message)
            else:
                self.events.clear(f"webhook:{provider}")

        branch = self.config.branch
        listener = Listener(
            self.config.listen,
            metrics=self.metrics,
            health=self.health,
            on_push=pushed,
            on_refused=refused,
            secret=self.config.webhook_secret,
            followed=f"refs/heads/{branch}" if branch else None,
        )
        listener.start()
        return listener

    def health(self) -> Health:
        """What /healthz says: ``liveness``, and not alive when the last ``FAILED_PASSES`` passes failed (the
        loop goes on, but nothing converges: a broken proxy, an engine away, a lock held)."""
        alive = self.liveness()
        if alive.alive and self.failed_passes >= FAILED_PASSES:
            detail = f"the last {self.failed_passes} passes failed: {self.pass_failure}"
            return Health(False, alive.last_pass_age, detail, failing=True)
        return alive

    def liveness(self) -> Health:
        """Whether the loop is alive: a pass ended recently, or the one under way has not run too long (what
        the systemd watchdog is fed on: a pass that fails is no reason to restart the agent)."""
        now = time.monotonic()
        limit = max(3 * self.config.interval, 120.0)
        started, ended = self.pass_started, self.pass_ended
        age = None if ended is None else now - ended
        if started is not None and (ended is None or started > ended):
            running = now - started
            # A pass gates deploys: as long as the file's longest gate allows, twice, and some.
            return Health(running < max(limit, self.pass_cap), age, f"a pass has been running for {running:.0f}s")
        idle = now - self.loop_at
        detail = "no pass yet" if age is None else f"the last pass ended {age:.0f}s ago"
        return Health(idle < limit, age, detail if idle < limit else f"the loop has not moved for {idle:.0f}s")

    def _signals(self) -> None:
        def terminate(signum: int, frame: FrameType | None) -> None:
            self.stop()

        def hangup(signum: int, frame: FrameType | None) -> None:
            # No lock in a handler (``Waker``): ``changed`` is set by the code it interrupted, not here.
            self.hup_pending = True
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

        # watchdog 7.1 logs an error when its reader wakes after stop() (a race inside its inotify
        # emitter, harmless at shutdown); our stderr is the event stream, so that line is dropped.
        logging.getLogger("watchdog.observers.inotify").addFilter(_InactiveEmitter())
        observer = Observer()
        git_dir = Path(source.git_dir)
        # refs/ for loose refs (a push renames refs/heads/x.lock into place); the git dir itself, not
        # recursively, for packed-refs and HEAD. Objects are left alone: a push writes many of them.
        observer.schedule(RefsChanged(), str(git_dir / "refs"), recursive=True)
        observer.schedule(RefsChanged(), str(git_dir), recursive=False)
        observer.daemon = True
        observer.start()
        return observer

    # -- one pass ------------------------------------------------------------------------------------

    def _problem(self, key: str, event: Event, message: str) -> float:
        """Log a condition once, count it, and return how long to wait before trying again."""
        # One line per outage: the same outage reads differently from call to call (ping, list, ...).
        self.events.once(key, event, message, again_if_changed=False)
        self.failing[key] = self.failing.get(key, 0) + 1
        return float(min(self.config.interval, 2 ** min(self.failing[key], 6)))

    def _nodes(self) -> None:
        """Say each swarm node that is not ready, once, and when it is back: Swarm moves its tasks, we only tell."""
        assert self.engine is not None
        try:
            nodes = self.engine.nodes()
        except ReconcileError:  # not a manager (the deploy will say so), or no quorum: nothing to tell of nodes
            return
        for node, (host, state, _) in nodes.items():
            if state != "ready":
                self.events.once(f"node:{node}", Event.NODE_DOWN, f"swarm node {host} is {state}: Swarm places its"
                                 " tasks on the others", node=host)  # fmt: skip
            else:
                self._recovered(f"node:{node}", Event.NODE_RECOVERED, f"swarm node {host} is ready again")
        for key in self.events.active("node:"):
            if key.removeprefix("node:") not in nodes:  # removed from the swarm
                self.events.clear(key)

    def _follow(self, stop: threading.Event) -> None:
        """Between passes, every ``FOLLOW`` seconds: a routed service's route follows its tasks, so that a task
        Swarm replaced (a crash, a node gone) serves within seconds, not at the next pass. Only while no
        pass runs (here or in another process: the state directory's lock); any trouble is left to the next
        pass, which reports it."""
        while not stop.wait(FOLLOW):
            desired, engine = self.routing, self.engine
            if desired is None or engine is None or not self.busy.acquire(blocking=False):
                continue
            try:
                with locked(self.config.settings.state_dir):
                    proxy = Proxy(engine, self.config.settings.state_dir)
                    for change in proxy.follow(desired, engine.observe()):
                        self.events.emit(Event.PROXY_CHANGED, change, commit=self.revision[:8])
            except ReconcileError:
                pass
            finally:
                self.busy.release()

    def _recovered(self, key: str, event: Event, message: str) -> None:
        self.failing.pop(key, None)
        if self.events.clear(key):
            self.events.emit(event, message)

    def _next_interval(self) -> float:
        spread = self.config.interval * self.config.jitter
        return max(0.05, self.config.interval + random.uniform(-spread, spread))

    def tick(self) -> float:
        """One pass; returns how long to sleep before the next one (unless woken)."""
        self.pass_started = time.monotonic()
        self.pass_failure = self.proxy_down = ""
        try:
            return self._tick()
        finally:
            # An invalid or refused commit is not a failed pass: the host keeps what it runs, as it should.
            self.failed_passes = self.failed_passes + 1 if self.pass_failure else 0
            self.pass_ended = time.monotonic()
            self.metrics.passed(self.pass_ended - self.pass_started)

    def _tick(self) -> float:
        settings = self.config.settings
        try:
            revision, desired = self._read()
        except RemoteUnavailable as exc:
            self.pass_failure = str(exc)
            return self._problem("remote", Event.REMOTE_UNREACHABLE, str(exc))
        except CommitRefused:
            return self._next_interval()  # said once in _read
        except UserError as exc:  # an invalid file, a missing ref, a policy or signers file that cannot be read
            errors = exc.errors if isinstance(exc, InvalidDesiredState) else [str(exc)]
            self.events.once("invalid", Event.DESIRED_INVALID, f"{self.revision[:8]}: " + " | ".join(errors))
            return self._next_interval()
        self.events.clear("invalid")
        try:
            if self.engine is None:
                self.engine = connect(settings.docker_host, instance=settings.instance)
            self._recovered("engine", Event.ENGINE_RECOVERED, f"Docker engine at {self.engine.host} answers again")
            with self.busy, locked(settings.state_dir, timeout=self.config.lock_timeout):
                self._recovered("lock", Event.LOCK_RECOVERED, "state directory lock taken")
                outcomes = self._converge(revision, desired)
            self.cut_short = False
        except EngineUnavailable as exc:
            self.engine = None
            self.pass_failure = str(exc)
            wait = self._problem("engine", Event.ENGINE_UNREACHABLE, str(exc))
            return min(wait, ENGINE_RETRY_MID_DEPLOY) if self.cut_short else wait
        except LockHeld as exc:
            self.pass_failure = str(exc)
            return self._problem("lock", Event.LOCK_HELD, str(exc))
        except ReconcileError as exc:
            # One fault, one line: said again when it changes, and ``pass.recovered`` when a pass goes through.
            self.pass_failure = str(exc)
            self.events.once("pass", Event.PASS_ERROR, str(exc), commit=revision[:8])
            return self._next_interval()
        except Exception as exc:  # a bug must not take the host's agent down: log it, try again later
            self.pass_failure = f"internal error: {type(exc).__name__}"
            where = self._keep_traceback(exc)
            self.events.emit(Event.PASS_CRASHED, f"internal error: {type(exc).__name__}: {exc} (a bug in reconciler:"
                             f" {where}; please report it)", commit=revision[:8])  # fmt: skip
            self.engine = None
            return self._next_interval()
        self._recovered("pass", Event.PASS_RECOVERED, "passes go through again")
        self.pass_failure = self.proxy_down
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
        self._took_hangup()
        due = now - self.last_fetch >= self.config.interval * 0.5 or self.changed.is_set() or "remote" in self.failing
        # Cleared before the fetch: a push announced while it runs gets a fetch of its own.
        self.changed.clear()
        if self.source.mirrored and due:
            try:
                self.source.fetch()
            except RemoteUnavailable as exc:
                # Go on with what the mirror last fetched: drift is still healed while the remote is away.
                self.retry_in = self._problem("remote", Event.REMOTE_UNREACHABLE, str(exc))
            else:
                self.last_fetch = now
                self._recovered("remote", Event.REMOTE_RECOVERED, f"git remote {settings.repo} answers again")
        revision = self.source.resolve(self.config.ref)
        if revision != self.revision:
            self.events.emit(Event.COMMIT_SEEN, f"{self.config.ref} is at {revision[:8]}", commit=revision[:8])
            self.revision = revision
        try:
            desired = desired_at(
                self.source, self.config.ref, revision, settings.file,
                policy=settings.policy, signed_by=settings.require_signed_by, host=settings.host,
            )  # fmt: skip
        except CommitRefused as exc:
            said = str(exc).replace("\n", " | ")
            said = said if revision[:8] in said else f"commit {revision[:8]}: {said}"
            self.events.once("refused", _REFUSED.get(exc.reason, Event.COMMIT_REFUSED), said, commit=revision[:8])
            self._flag(REFUSED, said)
            if self.verified is not None and self.verified[0] == revision:
                self.verified = None  # trusted before, not now (a key revoked, the policy tightened)
            if self.verified is None:
                self.verified = self._verified_from_journal()
            if self.verified is None:
                raise  # nothing this server trusts to keep to: the pass changes nothing
            # The host keeps the last verified commit (drift is still healed) until a commit passes.
            return self.verified
        self.events.clear("refused")
        self._flag(REFUSED, None)
        if self.verified is None or self.verified[0] != revision:
            self._warn_dangerous(revision, desired)
        self.verified = (revision, desired)
        return revision, desired

    def _flag(self, key: str, value: str | None) -> None:
        """A journal flag that ``status`` reads; a journal that cannot be written is the state error's."""
        if self.journal is not None and self.journal.flag(key) != value:
            with contextlib.suppress(ReconcileError):
                self.journal.set_flag(key, value)

    def _verified_from_journal(self) -> tuple[str, DesiredState] | None:
        """After a start: the newest commit this host applied that still passes the signature rule and the
        policy, to keep to while the tip is refused."""
        if self.journal is None or self.source is None:
            return None
        settings = self.config.settings
        seen: set[str] = set()
        for entry in self.journal.history(limit=50):
            if entry.result != JournalResult.SUCCEEDED or entry.revision in seen or not entry.revision:
                continue
            seen.add(entry.revision)
            try:
                desired = desired_at(
                    self.source, self.config.ref, entry.revision, settings.file,
                    policy=settings.policy, signed_by=settings.require_signed_by, host=settings.host,
                )  # fmt: skip
            except ReconcileError:
                continue
            return entry.revision, desired
        return None

    def _warn_dangerous(self, revision: str, desired: DesiredState) -> None:
        """Without --policy: one line per mount of /, /proc, /sys or the Docker socket (once each)."""
        assert self.source is not None
        if self.config.settings.policy is not None:
            return
        file = self.config.settings.file
        for line in server_policy.check(self.source.read(revision, file), file, desired, None):
            self.events.once(f"danger:{line}", Event.POLICY_WARNING, f"warning: {line} (no --policy limits it)")

    def _took_hangup(self) -> None:
        if self.hup_pending:
            self.hup_pending = False
            self.changed.set()

    def _newer_commit(self, revision: str) -> bool:
        """True when the branch moved past ``revision`` (checked when a watcher or SIGHUP said so)."""
        if self.stopping:
            return True
        self._took_hangup()
        if not self.changed.is_set() or self.source is None:
            return False
        try:
            self.changed.clear()  # one announcement, one fetch: not one every WATCH_STEP of a gate
            if self.source.mirrored:
                self.source.fetch()
            moved = self.source.resolve(self.config.ref) != revision
        except ReconcileError:
            return False
        if moved:
            self.changed.set()  # the next pass fetches (and reads) it
        return moved

    def _converge(self, revision: str, desired: DesiredState) -> list[Outcome]:
        assert self.engine is not None and self.journal is not None
        journal = self.journal
        why = journal.flag(SUSPENDED)
        if why:
            self.events.once("suspended", Event.AGENT_SUSPENDED, f"suspended: {why}; nothing changes")
            return []
        self._recovered("suspended", Event.AGENT_RESUMED, "resumed")
        proxy = Proxy(self.engine, self.config.settings.state_dir)
        tip = self.revision  # the branch's tip as this pass saw it (a refused tip leaves a verified revision)
        applier = Applier(
            self.engine,
            journal,
            on_step=self.on_step or (lambda app, step: None),
            log=lambda line: None,
            interrupted=lambda: self._newer_commit(tip),
            author=desired.author,
            parallel=self.config.settings.parallel,
            proxy=proxy,
        )
        observed = self.engine.observe()
        # The proxy first: whatever happened to it, it routes to what runs before anything changes. One that
        # cannot be brought in line holds back the routed apps only: the others deploy.
        try:
            self._proxied(proxy.sync(desired, observed), revision)
        except UserError as exc:  # said once (and again when it changes); the next pass tries again first
            self._proxy_failed(exc)
        else:
            self.proxy_down = ""
        waiting = routed(desired) if self.proxy_down else {}
        if any(spec.service for spec in desired.apps.values()):
            self._nodes()
        routes_a_service = desired.proxy is not None and any(s.service and s.route for s in desired.apps.values())
        self.routing = desired if routes_a_service else None
        try:
            verified = applier.verify_unfinished(observed, desired.apps, waiting=waiting)
        except EngineUnavailable:
            self.cut_short = True
            raise
        for outcome in verified:  # each under the commit that released it, not the one being planned
            self._report([outcome], outcome.revision or revision)
            self._remember_failures([outcome], None, outcome.revision or revision)
        if verified:
            observed = self.engine.observe()
        plan, observed = plan_against(self.engine, desired, self.config.settings, observed=observed)
        gates = [spec.gate.timeout + spec.gate.healthy_for for spec in desired.apps.values()]
        self.pass_cap = max(900.0, 2 * max(gates, default=0.0) + 600.0)
        drifting = {action.app for action in plan.actions}
        self.metrics.observe(desired, observed, drifting)
        self._notes(plan)
        if waiting:
            plan, _ = unrouted(plan, desired)
        held = policy.held_in(plan, journal.failures())
        restore = {app: self._last_good(app, observed, journal) for app in policy.lost(plan, held)}
        plan, notices = policy.hold_back(plan, observed, held, restore=restore, said=self.events.active(policy.HELD))
        self._say(notices)
        applied = self._applied(plan.actions)
        plan, notices = policy.whole_or_nothing(plan, applied)
        self._say(notices)
        plan, notices = policy.heal_or_report(plan, applied, self_heal=self.config.self_heal)
        self._say(notices)
        if not plan.changes:
            self._report([Outcome(a.app, a.kind, a.container, Result.SKIPPED, a.message) for a in plan.problems],
                         revision)  # fmt: skip
            self._watch_stable(desired, observed, applier)
            return []
        try:
            outcomes = applier.apply(plan, observed, atomic=True)
        except (EngineUnavailable, ProxyUnavailable) as exc:
            # Not a verdict on the release: the journal row stays unfinished for the next pass; what this
            # pass finished before the outage is told now.
            self._report(applier.done, revision)
            self._remember_failures(applier.done, plan, revision)
            if isinstance(exc, EngineUnavailable):
                self.cut_short = True
                raise
            # The proxy went away mid-deploy: the next pass, soon, brings it back first and resumes.
            self.events.once("proxy", Event.PROXY_FAILED, f"{exc}; the deploy resumes when it is back")
            self.proxy_down = str(exc)
            self.retry_in = 0.0  # the route may be down: the next pass brings the proxy back at once
            return applier.done
        try:
            # The gauges before the events: what a deploy's event says is in /metrics by the time it is said.
            observed = self.engine.observe()
            self.metrics.observe(desired, observed, drifting - {o.app for o in outcomes if o.result is Result.APPLIED})
        finally:
            self._report(outcomes, revision)
            self._remember_failures(outcomes, plan, revision)
        if desired.proxy is not None and not waiting:
            try:
                self._proxied(proxy.sync(desired, observed), revision)
            except UserError as exc:  # the deploys are told; the next pass tries the proxy again first
                self._proxy_failed(exc)
        self._watch_stable(desired, observed, applier)
        return outcomes

    def _proxy_failed(self, exc: UserError) -> None:
        """The proxy cannot be brought in line: said once (again when the reason changes), whichever sync met it."""
        self.events.once("proxy", Event.PROXY_FAILED, f"{exc}; routed apps wait for it, the others deploy")
        self.proxy_down = str(exc)

    def _proxied(self, changes: list[str], revision: str) -> None:
        if self.events.clear("proxy"):
            self.events.emit(Event.PROXY_CHANGED, "the proxy is back in line: routed apps deploy again")
        for change in changes:
            self.events.emit(Event.PROXY_CHANGED, change, commit=revision[:8])

    def _notes(self, plan: Plan) -> None:
        """Log each note once (another source's container, an unread env_file), and again if it comes back."""
        keys = {f"note:{note.kind}:{note.container}": note for note in plan.notes}
        for key in self.events.active("note:"):
            if key not in keys:
                self.events.clear(key)
        for key, note in keys.items():
            self.events.once(key, Event.of_app(note.kind), f"{note.container}: {note.message}", app=note.app)

    # -- what not to do (decided in core.policy) -----------------------------------------------------

    def _say(self, notices: Iterable[Notice]) -> None:
        for notice in notices:
            fields: dict[str, Any] = ({"app": notice.app} if notice.app else {}) | dict(notice.fields)
            if notice.say is Say.CLEAR:
                self.events.clear(notice.key)
                continue
            assert notice.event is not None  # every Notice but a CLEAR has one
            if notice.say is Say.EMIT:
                self.events.emit(notice.event, notice.message, **fields)
            else:
                self.events.once(notice.key, notice.event, notice.message, **fields)

    def _applied(self, actions: Iterable[Action]) -> dict[str, str]:
        """The journal's answer for each app created by ``actions``: the spec hash of its last succeeded deploy
        (``policy.is_drift`` asks it of creates only)."""
        assert self.journal is not None
        applied: dict[str, str] = {}
        for app in dict.fromkeys(action.app for action in actions if action.kind is ActionKind.CREATE):
            entry = self.journal.last(app, result=JournalResult.SUCCEEDED)
            if entry is not None:
                applied[app] = entry.spec_hash
        return applied

    def _last_good(self, app: str, observed: ObservedState, journal: Journal) -> tuple[Action, ...]:
        """The create of ``app`` as its last good deploy had it (its commit's file), for a held app that
        lost its container: what ran before the failed release runs again."""
        good = journal.last(app, result=JournalResult.SUCCEEDED)
        if good is None or self.source is None or self.engine is None:
            return ()
        settings = self.config.settings
        try:
            committed = desired_at(
                self.source, self.config.ref, good.revision, settings.file,
                policy=settings.policy, signed_by=settings.require_signed_by, host=settings.host,
            )  # fmt: skip
            old = policy.last_good(app, committed)
        except ReconcileError:  # a commit this server does not trust now is restored by nobody
            return ()
        if old is None:
            return ()
        plan, _ = plan_against(self.engine, old, settings, observed=observed)
        return policy.restore_actions(app, plan)

    def _remember_failures(self, outcomes: list[Outcome], plan: Plan | None, revision: str) -> None:
        """Record the failed releases and their companions (``policy.failures_of``), so that none deploys alone."""
        assert self.journal is not None
        if not any(outcome.release_failed for outcome in outcomes):
            return
        latest: dict[str, Deployed] = {}
        for outcome in outcomes:
            last = self.journal.last(outcome.app) if outcome.release_failed else None
            if last is not None:
                latest[outcome.app] = Deployed(last.spec_hash, last.to_version)
        applied = self._applied(plan.actions if plan is not None else ())
        for failure in policy.failures_of(outcomes, plan, revision=revision, applied=applied, latest=latest):
            self.journal.record_failure(
                app=failure.app, spec_hash=failure.spec_hash, revision=failure.revision, version=failure.version,
                reason=failure.reason, culprit=failure.culprit,
            )  # fmt: skip

    def _keep_traceback(self, exc: Exception) -> str:
        """Put a crash's traceback where a person looks for it, and say where: too long for the event line."""
        text = scrub("".join(traceback.format_exception(exc)))
        if os.environ.get("RECONCILE_DEBUG"):
            sys.stderr.write(text)
            sys.stderr.flush()
            return "traceback above on stderr (RECONCILE_DEBUG)"
        state_dir = self.config.settings.state_dir
        now = time.time()
        path = state_dir / f"crash-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now % 1 * 1000):03d}Z.txt"
        try:
            write_private(path, text)
            for old in sorted(state_dir.glob("crash-*.txt"))[:-CRASH_FILES_KEPT]:
                old.unlink()
        except OSError as error:
            return f"traceback not written to {path} ({error.strerror or error}); RECONCILE_DEBUG=1 prints it on stderr"
        return f"traceback in {path}"

    def _report(self, outcomes: list[Outcome], revision: str) -> None:
        for outcome in outcomes:
            if outcome.result is Result.SKIPPED:
                self.events.once(f"problem:{outcome.app}", Event.of_app(outcome.kind), outcome.message,
                                 app=outcome.app)  # fmt: skip
                continue
            self.events.clear(f"problem:{outcome.app}")
            name = _VERDICT_EVENTS.get(outcome.result, Event.DEPLOY_DONE)
            if outcome.kind is ActionKind.REMOVE and outcome.result is Result.APPLIED:
                # APP.next left by an interrupted deploy is debris, not the app.
                name = Event.APP_REMOVED if outcome.container == outcome.app else Event.DEPLOY_CLEANUP
            text = f"{outcome.container}: {outcome.message or outcome.result.value}"
            refused = f"refused:{outcome.app}@"
            if name is Event.DEPLOY_FAILED and not outcome.release_failed:
                # Refused before its release ran (an env_file it cannot read, a pull refused): every pass meets
                # the same refusal, and it is not held; said (and notified) once per commit while it lasts.
                for key in self.events.active(refused):
                    if key != refused + revision:
                        self.events.clear(key)
                self.events.once(refused + revision, name, text, app=outcome.app, commit=revision[:8])
                continue
            for key in self.events.active(refused):
                self.events.clear(key)
            self.events.emit(name, text, app=outcome.app, commit=revision[:8])

    # -- stable ------------------------------------------------------------------------------------

    def _watch_stable(self, desired: DesiredState, observed: ObservedState, applier: Applier) -> None:
        """Sample the apps on their way to stable (``core.stable``) and promote those that stayed healthy."""
        assert self.journal is not None and self.engine is not None
        now = time.time()
        candidates = {app: self._candidate(app, spec, observed) for app, spec in desired.apps.items()}
        # Kept before sampling: an engine outage mid-way keeps what the clock learned so far.
        self.stable_watch, look = track(self.stable_watch, candidates, now=now)
        for app in look:
            spec = desired.apps[app]
            current = observed.of_app(app, service=spec.service)
            assert current is not None
            if spec.service:
                seen, updated = applier.services.sample(current.id, spec)
                sample = StableSample.of(seen, at=now, started_at=updated)
            else:
                sample = StableSample.of(
                    applier.sample(current.id, spec.gate), at=now, started_at=self.engine.started_at(current.id)
                )
            watch = self.stable_watch[app] = self.stable_watch[app].observe(sample)
            if watch.failure and spec.service:
                # Swarm replaces a service's dead tasks and its rollout judged them: only the clock starts over.
                watch = self.stable_watch[app] = replace(watch, failure="")
            if watch.failure:
                self.stable_watch.pop(app, None)  # judged: it is a failed release now, held as one
                self._died(app, spec, observed, applier, watch.failure)
                continue
            if watch.promote:
                self.stable_watch.pop(app, None)  # done, or tried again from the next pass on
                source = stable_source(spec.image, current)
                try:
                    hold(self.engine, source)
                    self._promote(app, spec.image, current.version, source, current.commit, how="auto")
                except EngineUnavailable:
                    raise
                except ReconcileError as exc:
                    self.events.once(f"stable:{app}", Event.STABLE_UNPUBLISHED, f"{app}: not promoted: {exc}", app=app)
                else:
                    self.events.clear(f"stable:{app}")

    def _died(self, app: str, spec: AppSpec, observed: ObservedState, applier: Applier, why: str) -> None:
        """A release that died inside its stable window (``core.stable.died``) is a failed release: taken
        back (``Applier.fail_live``), said once, and held as a failed gate is."""
        try:
            outcome = applier.fail_live(app, spec, observed, why, revision=self.revision)
        except EngineUnavailable:
            self.cut_short = True  # its verdict is journaled: the next pass finishes the rollback
            raise
        self._report([outcome], outcome.revision or self.revision)
        self._remember_failures([outcome], None, outcome.revision or self.revision)

    def _candidate(self, app: str, spec: AppSpec, observed: ObservedState) -> Candidate | None:
        """What the engine and the journal say of ``app``'s container, for the stable clock."""
        assert self.journal is not None
        if spec.canary is not None and spec.version == STABLE:
            # This host follows the stable its canary promotes and publishes: promoting (and publishing)
            # what it runs here could only put an older stable back over the canary's.
            return None
        current = observed.of_app(app, service=spec.service)
        if current is None or not current.managed or not current.spec_hash:
            return None
        image_id = stable_source(spec.image, current)
        if not image_id:
            return None
        promoted = self.journal.stable(app)
        deployed = self.journal.last(app, result=JournalResult.SUCCEEDED)
        return Candidate(
            spec_hash=current.spec_hash,
            image_id=image_id,
            stable_after=spec.stable_after,
            deployed_hash=deployed.spec_hash if deployed is not None else None,
            deployed_at=deployed.finished_at if deployed is not None else None,
            stable_image_id=promoted.image_id if promoted is not None else None,
        )

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
        self.events.emit(Event.STABLE_PROMOTED, f"{app} {concrete} is stable ({image}:stable)", app=app,
                         commit=revision[:8])  # fmt: skip
        for problem in problems:
            self.events.emit(Event.STABLE_UNPUBLISHED, f"{app}: {problem}", app=app)

    def _stable_due(self) -> float:
        """Seconds until the next app could be promoted (the loop wakes then to look)."""
        if not self.stable_watch:
            return float("inf")
        now = time.time()
        due = min(watch.due(now) for watch in self.stable_watch.values())
        # Look at least every 5 s meanwhile: staying healthy is what earns the promotion.
        return max(0.05, min(due, 5.0))


def run_agent(
    config: AgentSettings, *, log_format: str = "text", on_step: Callable[[str, str], None] | None = None
) -> int:
    return Agent(config, Events(fmt=log_format), on_step=on_step).run()
