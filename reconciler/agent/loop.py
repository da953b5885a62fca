"""``reconcile agent``: follow a branch and keep the host converged to it, for as long as it runs.

This module is the process and its tick; each pass is the one pass (``converge.run.apply_pass``) with the
agent's rules and notices as its hooks. What wakes it is in ``agent.wake``, the stable clock in
``agent.promotion``, the trust fallback in ``agent.fallback``, the route follower in ``agent.routes``,
crash files in ``state.crash``. The guarantees below are the agent's, whichever of them keeps each.

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
- A bug in a pass is one ``pass.crashed`` line; its traceback goes to ``STATE/crash-TIME.txt``
  (``state.crash``), or to stderr with ``RECONCILE_DEBUG`` set. The agent goes on. So does a bug in the
  listener's answer to one request: one line, its traceback kept the same way.
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
- What to hold back, keep together, heal and promote is decided in the core (``core.holdback``,
  ``core.stable``) over the journal's answers; this module reads the journal and the engine, logs the
  notices and acts.
- The proxy comes first in a pass. One that cannot be brought in line (its port taken, its image missing)
  is said once (``proxy.failed``, again when the reason changes) and holds back only the routed apps: the
  others deploy. One that goes away mid-deploy (``ProxyUnavailable``) is like an engine outage: no verdict
  on the release; the next pass, at once, brings the proxy back and deploys the release again.
- With ``RECONCILE_PASS_DONE`` set, every pass ends with one ``pass.done`` line (when it started, in
  ``started``): a fact for tests and drills to wait on. Without it nothing is said every pass.
- A pass that fails as a whole is one ``pass.error`` per fault (again when the fault changes, and one
  ``pass.recovered`` when a pass goes through). ``/healthz`` says 503 ``failing`` once ``FAILED_PASSES``
  passes in a row failed (an error, an outage, a proxy that holds routed apps back); the systemd watchdog
  is fed on the loop's liveness alone.
- Between passes, a routed service's route follows its tasks every ``routes.FOLLOW`` seconds (only while no
  pass holds the engine, here or in another process): a task Swarm replaced serves within seconds.
- With ``--listen``, the dashboard (``agent.dashboard``) hears every event, each gate's samples and the end
  of each pass; what it does never holds a pass up (its board is taken on a thread of its own).
- SIGTERM ends the current step (a gate's wait is abandoned, its verdict given by the next start),
  exits 0 and leaves every container running. A deploy cut short by SIGKILL is finished or rolled
  back by the next pass (``Applier.verify_unfinished``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.adapters.docker import connect
from reconciler.adapters.git import Source, open_source
from reconciler.adapters.protocols import DockerEngine
from reconciler.agent.dashboard import Dashboard, Facts
from reconciler.agent.fallback import TrustFallback
from reconciler.agent.listener import AgentHealth, Listener
from reconciler.agent.promotion import StableClock
from reconciler.agent.routes import follow_routes
from reconciler.agent.wake import DeathWatch, HookWake, Wakes, on_signals, watch_refs
from reconciler.converge.run import (
    PassHooks,
    Settings,
    Trust,
    apply_pass,
    desired_at,
    new_applier,
    plan_against,
    read_at,
)
from reconciler.core import holdback
from reconciler.core.events import Event
from reconciler.core.holdback import LastDeploy, Notice, Say
from reconciler.core.model import AppSpec, DesiredState, ObservedState
from reconciler.core.plan import Action, ActionKind, Plan
from reconciler.core.report import Outcome, Result
from reconciler.core.webhooks import PullEvent
from reconciler.deploy.applier import Applier
from reconciler.deploy.certs import CertReport
from reconciler.errors import (
    CommitRefused,
    EngineUnavailable,
    InvalidDesiredState,
    LockHeld,
    ReconcileError,
    RemoteUnavailable,
    TransientError,
    UserError,
)
from reconciler.state.crash import keep_traceback
from reconciler.state.journal import REFUSED, SUSPENDED, Journal, JournalResult
from reconciler.state.lock import locked
from reconciler.state.pidfile import PidFile
from reconciler.telemetry import sdnotify
from reconciler.telemetry.log import EventLog
from reconciler.telemetry.metrics import Metrics
from reconciler.telemetry.notify import Notifier

ENGINE_RETRY_MID_DEPLOY = 2.0  # seconds: an outage cut a deploy short; the app may be down until resumed
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
    Result.ROLLING_OUT: Event.ROLLOUT_STARTED,
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
    ui_token: bytes = field(default=b"", repr=False)  # the dashboard's actions log in with it; empty: read-only

    @property
    def ref(self) -> str:
        return f"refs/heads/{self.branch}" if self.branch else self.settings.ref


@dataclass
class Agent:
    """The agent's process: its collaborators, what its passes learned, and its liveness. What wakes it
    (``wakes``), the trust fallback (``fallback``) and the stable clock (``stable``) are records of their own."""

    config: AgentSettings
    events: EventLog
    on_step: Callable[[str, str], None] | None = None
    wakes: Wakes = field(default_factory=Wakes)
    stopping: bool = False
    # what it reads and acts on, opened (again) by the loop
    source: Source | None = None
    engine: DockerEngine | None = None
    journal: Journal | None = None
    last_fetch: float = 0.0
    revision: str = ""  # the tip last read
    applied: str = ""  # the commit the last pass converged to (the tip, or the last trusted one)
    signer: str = ""  # the key that signed the tip last read (--require-signed-by), or ""
    next_at: float | None = None  # epoch seconds of the next pass by the interval
    next_step: float = math.inf  # epoch seconds: a rollout's step is judged then (a pass wakes for it)
    dashboard: Dashboard | None = None  # with the listener
    # what failed, and how soon to try again
    failing: dict[str, int] = field(default_factory=dict)  # what keeps failing -> how many times in a row
    retry_in: float = float("inf")  # a sooner pass to retry what failed in this one (the remote)
    cut_short: bool = False  # an engine outage stopped a deploy or rollback that the next pass resumes
    # liveness and health (``liveness``, ``health``)
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = field(default_factory=time.monotonic)
    pass_started: float | None = None  # monotonic; set while a pass runs
    pass_ended: float | None = None
    loop_at: float = field(default_factory=time.monotonic)  # when the loop last went round (a pass, or a wait)
    pass_cap: float = 900.0  # seconds a pass may run and still be alive: longer when the file's gates are
    routing: DesiredState | None = None  # the last file converged to, while it routes a service (``routes``)
    busy: threading.Lock = field(default_factory=threading.Lock)  # held while a pass uses the engine
    proxy_down: str = ""  # why the proxy could not be brought in line this pass (routed apps wait), or ""
    failed_passes: int = 0  # passes in a row that failed (``FAILED_PASSES``: /healthz says so)
    pass_failure: str = ""  # why the last one failed
    say_passes: bool = field(default_factory=lambda: bool(os.environ.get("RECONCILE_PASS_DONE")))  # pass.done
    trust: Trust = field(init=False)  # what this server trusts of a commit: built once, for every read
    fallback: TrustFallback = field(init=False)  # the last commit that passed it, kept to while the tip is refused
    stable: StableClock = field(init=False)  # the apps on their way to stable

    def __post_init__(self) -> None:
        settings = self.config.settings
        self.trust = settings.trust
        self.fallback = TrustFallback(self.trust, self.config.ref, settings.file)
        self.stable = StableClock(self.events, publish=self.config.publish_stable)

    # -- lifecycle ---------------------------------------------------------------------------------

    def run(self) -> int:
        settings = self.config.settings
        state_dir = settings.state_dir
        pid_file = PidFile(state_dir, os.getpid())
        on_signals(stop=self.stop, hangup=self.wakes.hangup)

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
        deaths = DeathWatch(lambda: self.engine, self.wakes.waker.set)  # a release that dies: a pass at once
        try:
            notifier = self._notifier()
            listener = self._listen()
            sdnotify.notify("READY=1")
            sdnotify.feed_watchdog(lambda: self.liveness().alive, watchdog_stop)
            follow = functools.partial(
                follow_routes, watchdog_stop, state_dir=state_dir, busy=self.busy,
                following=lambda: (self.routing, self.engine),
                changed=lambda change: self.events.emit(Event.PROXY_CHANGED, change, commit=self.revision[:8]),
            )  # fmt: skip
            threading.Thread(target=follow, name="follow-routes", daemon=True).start()
            deaths.start()
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
                        observer = watch_refs(self.source, self.wakes.moved)
                    wait = self.tick()
                    self.next_at = time.time() + wait
                self.loop_at = time.monotonic()  # also while it waits for a state directory it can write
                if self.stopping:
                    break
                self.wakes.waker.wait(wait)
                self.wakes.waker.clear()
        finally:
            watchdog_stop.set()
            deaths.stop()
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
        self.wakes.waker.set()

    def _notifier(self) -> Notifier | None:
        """``--notify`` targets, fed by the agent's events; their trouble is logged once, off the deploy path."""
        if not self.config.notify:
            return None

        notifier = Notifier(
            self.config.notify,
            log=lambda line: self.events.emit(Event.NOTIFY_FAILED, line),
            recovered=lambda line: self.events.emit(Event.NOTIFY_RECOVERED, line),
        )
        self.events.listeners.append(notifier)
        return notifier

    def _listen(self) -> Listener | None:
        """The HTTP listener, when asked for (``--listen``); a push hook wakes the loop as SIGHUP does."""
        if self.config.listen is None:
            return None

        def refused(provider: str, message: str) -> None:
            if message:
                self.events.once(f"webhook:{provider}", Event.WEBHOOK_REFUSED, message)
            else:
                self.events.clear(f"webhook:{provider}")

        branch = self.config.branch
        settings = self.config.settings
        self.dashboard = Dashboard(settings, self.config.ref, self._facts, self.events, token=self.config.ui_token,
                                   engine=lambda: self.engine)  # fmt: skip
        self.events.listeners.append(self.dashboard.on_event)
        listener = Listener(
            self.config.listen,
            metrics=self.metrics,
            health=self.health,
            on_push=HookWake(changed=self.wakes.changed.set, wake=self.wakes.waker.set).pushed,
            on_refused=refused,
            secret=self.config.webhook_secret,
            followed=f"refs/heads/{branch}" if branch else None,
            crashed=lambda exc: keep_traceback(exc, self.config.settings.state_dir),
            dashboard=self.dashboard,
            on_pull=self._pulled,
        )
        listener.start()
        return listener

    def _pulled(self, event: PullEvent) -> None:
        """A pull request's hook: recorded for its preview (``state.previews``), said, and a pass at once."""
        from reconciler.state import previews

        changed = previews.record(self.config.settings.state_dir, event, time.time())
        self.wakes.waker.set()  # a redelivery too (CI sends it once the image is pushed): the preview is made now
        if not changed:
            return
        fork = " (from a fork: previewed only with forks: true)" if event.fork and changed != "closed" else ""
        merged = " (merged)" if event.merged else ""
        self.events.emit(Event(f"preview.{changed}"), f"pull request #{event.number} {changed}{merged}{fork}",
                         pull=str(event.number), head=event.head_sha[:12])  # fmt: skip

    def _facts(self) -> Facts:
        """The dashboard's header: the commits, and when the last pass ended and the next one is due."""
        ended = self.pass_ended
        last = None if ended is None else time.time() - (time.monotonic() - ended)
        settings = self.config.settings
        host = settings.host or socket.gethostname()
        return Facts(settings.instance, host, self.config.ref, self.applied, self.revision, self.signer, last,
                     self.next_at)  # fmt: skip

    def health(self) -> AgentHealth:
        """What /healthz says: ``liveness``, and not alive when the last ``FAILED_PASSES`` passes failed (the
        loop goes on, but nothing converges: a broken proxy, an engine away, a lock held)."""
        alive = self.liveness()
        if alive.alive and self.failed_passes >= FAILED_PASSES:
            detail = f"the last {self.failed_passes} passes failed: {self.pass_failure}"
            return AgentHealth(False, alive.last_pass_age, detail, failing=True)
        return alive

    def liveness(self) -> AgentHealth:
        """Whether the loop is alive: a pass ended recently, or the one under way has not run too long (what
        the systemd watchdog is fed on: a pass that fails is no reason to restart the agent)."""
        now = time.monotonic()
        limit = max(3 * self.config.interval, 120.0)
        started, ended = self.pass_started, self.pass_ended
        age = None if ended is None else now - ended
        if started is not None and (ended is None or started > ended):
            running = now - started
            # A pass gates deploys: as long as the file's longest gate allows, twice, and some.
            return AgentHealth(running < max(limit, self.pass_cap), age, f"a pass has been running for {running:.0f}s")
        idle = now - self.loop_at
        detail = "no pass yet" if age is None else f"the last pass ended {age:.0f}s ago"
        return AgentHealth(idle < limit, age, detail if idle < limit else f"the loop has not moved for {idle:.0f}s")

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
        started = time.time()
        self.pass_failure = self.proxy_down = ""
        try:
            return self._tick()
        finally:
            # An invalid or refused commit is not a failed pass: the host keeps what it runs, as it should.
            self.failed_passes = self.failed_passes + 1 if self.pass_failure else 0
            self.pass_ended = time.monotonic()
            took = self.pass_ended - self.pass_started
            self.metrics.passed(took)
            if self.dashboard is not None:
                self.dashboard.passed()
            if self.say_passes:  # a fact to wait on: "nothing happened" is only known once a pass went through
                self.events.emit(Event.PASS_DONE, f"a pass ended after {took:.2f}s", started=f"{started:.3f}",
                                 commit=self.revision[:8])  # fmt: skip

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
                self.applied = revision
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
            where = keep_traceback(exc, self.config.settings.state_dir)
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
        step = max(0.05, self.next_step - time.time())  # the agent owns a rollout's clock
        return min(self._next_interval(), self.stable.due(), retry, step)

    def _read(self) -> tuple[str, DesiredState]:
        settings = self.config.settings
        if self.source is None:
            self.source = open_source(settings.repo, state_dir=settings.state_dir, fetch=False)
            self.last_fetch = 0.0
        now = time.monotonic()
        self.wakes.took_hangup()
        stale = now - self.last_fetch >= self.config.interval * 0.5
        due = stale or self.wakes.changed.is_set() or "remote" in self.failing
        # Cleared before the fetch: a push announced while it runs gets a fetch of its own.
        self.wakes.changed.clear()
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
            read = read_at(self.source, self.config.ref, revision, settings.file, self.trust)
        except CommitRefused as exc:
            self.signer = ""  # the refusal says whose key it was, if any
            said = str(exc).replace("\n", " | ")
            said = said if revision[:8] in said else f"commit {revision[:8]}: {said}"
            self.events.once("refused", _REFUSED.get(exc.reason, Event.COMMIT_REFUSED), said, commit=revision[:8])
            self._flag(REFUSED, said)
            kept = self.fallback.refused(revision, journal=self.journal, source=self.source)
            if kept is None:
                raise  # nothing this server trusts to keep to: the pass changes nothing
            # The host keeps the last verified commit (drift is still healed) until a commit passes.
            return kept
        self.events.clear("refused")
        self._flag(REFUSED, None)
        self.signer = read.signer
        if self.fallback.passed(revision, read.desired):
            # Without --policy: one line per mount of /, /proc, /sys or the Docker socket (once each).
            for line in read.dangers:
                self.events.once(f"danger:{line}", Event.POLICY_WARNING, f"warning: {line} (no --policy limits it)")
        return revision, read.desired

    def _flag(self, key: str, value: str | None) -> None:
        """A journal flag that ``status`` reads; a journal that cannot be written is the state error's."""
        if self.journal is not None and self.journal.flag(key) != value:
            with contextlib.suppress(ReconcileError):
                self.journal.set_flag(key, value)

    def _newer_commit(self, revision: str) -> bool:
        """True when the branch moved past ``revision`` (checked when a watcher or SIGHUP said so)."""
        if self.stopping:
            return True
        self.wakes.took_hangup()
        if not self.wakes.changed.is_set() or self.source is None:
            return False
        try:
            self.wakes.changed.clear()  # one announcement, one fetch: not one every WATCH_STEP of a gate
            if self.source.mirrored:
                self.source.fetch()
            moved = self.source.resolve(self.config.ref) != revision
        except ReconcileError:
            return False
        if moved:
            self.wakes.changed.set()  # the next pass fetches (and reads) it
        return moved

    def _converge(self, revision: str, desired: DesiredState) -> list[Outcome]:
        """The one pass (``converge.run.apply_pass``) with the agent's rules and notices as its hooks; what
        the pass's deploys did (a ``deploy.superseded`` among them: a newer commit waits)."""
        assert self.engine is not None and self.journal is not None
        journal, engine = self.journal, self.engine
        why = journal.flag(SUSPENDED)
        if why:
            self.events.once("suspended", Event.AGENT_SUSPENDED, f"suspended: {why}; nothing changes")
            return []
        self._recovered("suspended", Event.AGENT_RESUMED, "resumed")
        settings = self.config.settings
        tip = self.revision  # the branch's tip as this pass saw it (a refused tip leaves a verified revision)
        applier = new_applier(
            engine, journal, settings.state_dir, desired, settings,
            on_step=self.on_step, interrupted=lambda: self._newer_commit(tip),
            on_sample=self.dashboard.sampled if self.dashboard is not None else None,
        )  # fmt: skip
        drifting: set[str] = set()

        def started(observed: ObservedState, waiting: Mapping[str, AppSpec]) -> None:
            if any(spec.service for spec in desired.apps.values()):
                self._nodes()
            routes_a_service = desired.proxy is not None and any(s.service and s.route for s in desired.apps.values())
            self.routing = desired if routes_a_service else None

        def verified(outcomes: list[Outcome]) -> None:
            for outcome in outcomes:  # each under the commit that released it, not the one being planned
                self._report([outcome], outcome.revision or revision)
                self._remember_failures([outcome], None, outcome.revision or revision)

        def planned(plan: Plan, observed: ObservedState) -> None:
            gates = [spec.gate.timeout + spec.gate.healthy_for for spec in desired.apps.values()]
            self.pass_cap = max(900.0, 2 * max(gates, default=0.0) + 600.0)
            drifting.update(action.app for action in plan.actions)
            self.metrics.observe(desired, observed, drifting)
            self._notes(plan)

        def hold_back(plan: Plan, observed: ObservedState) -> tuple[Plan, list[Notice]]:
            held = holdback.held_in(plan, journal.failures())
            restore = {app: self._last_good(app, observed, applier) for app in holdback.lost(plan, held)}
            return holdback.hold_back(plan, observed, held, restore=restore, said=self.events.active(holdback.HELD))

        def whole_or_nothing(plan: Plan, observed: ObservedState) -> tuple[Plan, list[Notice]]:
            return holdback.whole_or_nothing(plan, self._applied(plan.actions))

        def heal_or_report(plan: Plan, observed: ObservedState) -> tuple[Plan, list[Notice]]:
            return holdback.heal_or_report(plan, self._applied(plan.actions), self_heal=self.config.self_heal)

        def cut(exc: ReconcileError, done: list[Outcome], plan: Plan | None) -> bool:
            # Not a verdict on the release: what this pass finished before the outage is told now.
            self._report(done, revision)
            self._remember_failures(done, plan, revision)
            if isinstance(exc, EngineUnavailable):
                self.cut_short = True  # the next pass, within seconds of the engine's return, resumes it
                return False
            # The proxy went away mid-deploy: the next pass, soon, brings it back first and resumes.
            self.events.once("proxy", Event.PROXY_FAILED, f"{exc}; the deploy resumes when it is back")
            self.retry_in = 0.0  # the route may be down: the next pass brings the proxy back at once
            return True

        def observed_after(observed: ObservedState, outcomes: list[Outcome]) -> None:
            # The gauges before the events: what a deploy's event says is in /metrics by the time it is said.
            self.metrics.observe(desired, observed, drifting - {o.app for o in outcomes if o.result is Result.APPLIED})

        def died(app: str, spec: AppSpec, observed: ObservedState, why: str) -> None:
            self._died(app, spec, observed, applier, why)

        def rolled(said: list[str]) -> None:
            for line in said:
                self.events.emit(Event.ROLLOUT_STEP, line, commit=revision[:8])

        def applied(outcomes: list[Outcome], plan: Plan) -> None:
            self._report(outcomes, revision)
            self._remember_failures(outcomes, plan, revision)

        hooks = PassHooks(
            filters=(hold_back, whole_or_nothing, heal_or_report),
            say=self._say,
            proxy_synced=lambda changes: self._proxied(changes, revision),
            proxy_failed=self._proxy_failed,
            certified=lambda report: self._certified(report, revision),
            started=started,
            verified=verified,
            rolled=rolled,
            planned=planned,
            observed_after=observed_after,
            applied=applied,
            finished=lambda observed: self.stable.look(desired, observed, applier, source=self.source, died=died),
            cut=cut,
            judge_live=False,  # the stable clock judges the releases that die in their window (``_watch_stable``)
            look_after=True,
        )
        record = apply_pass(applier, desired, settings, atomic=True, hooks=hooks)
        self.proxy_down = record.proxy_error
        self.next_step = record.next_step
        self.metrics.rollouts(record.shares)
        if record.previews_deferred:  # a preview deploys alone: the next one goes at once
            self.retry_in = 0.0
        return record.applied

    def _proxy_failed(self, exc: UserError) -> None:
        """The proxy cannot be brought in line: said once (again when the reason changes), whichever sync met it."""
        self.events.once("proxy", Event.PROXY_FAILED, f"{exc}; routed apps wait for it, the others deploy")

    def _proxied(self, changes: list[str], revision: str) -> None:
        if self.events.clear("proxy"):
            self.events.emit(Event.PROXY_CHANGED, "the proxy is back in line: routed apps deploy again")
        for change in changes:
            self.events.emit(Event.PROXY_CHANGED, change, commit=revision[:8])

    def _certified(self, report: CertReport, revision: str) -> None:
        """Each certificate issued or renewed, said; a host's failure said once (and notified), its recovery once;
        the expiry gauges (set first: what an event says is in /metrics by the time it is said)."""
        self.metrics.certificates({record.host: record.not_after for record in report.records if record.issued})
        for event, lines in (
            (Event.PROXY_CHANGED, report.withdrawn), (Event.CERT_ISSUED, report.issued),
            (Event.CERT_RENEWED, report.renewed),
        ):  # fmt: skip
            for line in lines:
                self.events.emit(event, line, commit=revision[:8])
        for record in report.records:
            key = f"cert:{record.host}"
            if record.host in report.failed:
                self.events.once(key, Event.CERT_FAILED, report.failed[record.host], again_if_changed=False)
            elif record.failures == 0 and self.events.clear(key):
                self.events.emit(Event.CERT_RECOVERED, f"cert {record.host}: has its certificate again")

    def _notes(self, plan: Plan) -> None:
        """Log each note once (another source's container, an unread env_file), and again if it comes back."""
        keys = {f"note:{note.kind}:{note.container}": note for note in plan.notes}
        for key in self.events.active("note:"):
            if key not in keys:
                self.events.clear(key)
        for key, note in keys.items():
            self.events.once(key, Event.of_app(note.kind), f"{note.container}: {note.message}", app=note.app)

    # -- what not to do (decided in core.holdback) ---------------------------------------------------

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

    def _last_good(self, app: str, observed: ObservedState, applier: Applier) -> tuple[Action, ...]:
        """The create of ``app`` as its last good deploy had it (its commit's file, its commit's SOPS files),
        for a held app that lost its container: what ran before the failed release runs again."""
        good = applier.journal.last(app, result=JournalResult.SUCCEEDED)
        if good is None or self.source is None or self.engine is None:
            return ()
        settings = self.config.settings
        try:
            committed = desired_at(self.source, self.config.ref, good.revision, settings.file, self.trust)
            old = holdback.last_good(app, committed)
        except UserError:  # a commit this server does not trust now is restored by nobody
            return ()
        if old is None:
            return ()
        applier.sealed.setdefault(committed.revision, committed.sealed)
        plan, _ = plan_against(self.engine, old, settings, observed=observed)
        return holdback.restore_actions(app, plan)

    def _remember_failures(self, outcomes: list[Outcome], plan: Plan | None, revision: str) -> None:
        """Record the failed releases and their companions (``holdback.failures_of``), so that none deploys alone."""
        assert self.journal is not None
        if not any(outcome.release_failed for outcome in outcomes):
            return
        latest: dict[str, LastDeploy] = {}
        for outcome in outcomes:
            last = self.journal.last(outcome.app) if outcome.release_failed else None
            if last is not None:
                latest[outcome.app] = LastDeploy(last.spec_hash, last.to_version)
        applied = self._applied(plan.actions if plan is not None else ())
        for failure in holdback.failures_of(outcomes, plan, revision=revision, applied=applied, latest=latest):
            self.journal.record_failure(
                app=failure.app, spec_hash=failure.spec_hash, revision=failure.revision, version=failure.version,
                reason=failure.reason, culprit=failure.culprit,
            )  # fmt: skip

    def _report(self, outcomes: list[Outcome], revision: str) -> None:
        for outcome in outcomes:
            if outcome.result is Result.SKIPPED:
                said = Event.APP_WAITING if outcome.waiting_for else Event.of_app(outcome.kind)
                self.events.once(f"problem:{outcome.app}", said, outcome.message, app=outcome.app)
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


def run_agent(
    config: AgentSettings, *, log_format: str = "text", on_step: Callable[[str, str], None] | None = None
) -> int:
    return Agent(config, EventLog(fmt=log_format), on_step=on_step).run()
