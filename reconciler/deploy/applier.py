"""Runs a Plan against the engine: each deploy a sequence of named steps, health-gated, rolled back on failure.

Guarantees:
- A deploy is a sequence of ``Step`` values, one sequence per strategy: ``STOP_FIRST`` for apps with
  host ports (pull, create, stop-old, keep-old, rename-new, start-new, gate) and ``START_FIRST`` for
  routed apps (pull, create, start-next, gate-next, switch, keep-old, rename-new, drain). ``RULES`` is
  the one place that says, per step, what a failure at it takes back (``Undo``) and what the next pass
  does with a deploy cut short at it (``Resume``). On the stop-first path the steps of ``SWAP`` are one
  ``swap.swap_in`` call (the same swap that break-glass makes), which announces each of them.
- A replicated app (``replicas:``) is a Swarm service: its create, rollout, removal and undo are
  ``services.Services``, behind the same ``apply`` (whole-commit undo included).
- Start-first: the old release keeps serving until the new one passed its gate (on itself, beside
  it); the proxy's route then switches to it, and only then are names moved. A release that fails to
  start or fails its gate is set aside as ``APP.failed`` with the route never moved (``SET_ASIDE``).
  The old release stays warm (running, out of rotation) for ``keep_warm``, so that a rollback to it
  (a commit back to it, a late failure, a whole-commit undo) is a fresh one-answer gate and a switch.
- Nothing of an app is touched until its new container exists: a missing tag, a refused pull, an
  unreadable env_file or a refused create leaves the running container exactly as it was.
- A deploy keeps the container it replaces, stopped, as ``APP.prev`` (only the newest one), so that a
  rollback needs no pull and no create. A container adopted with ``--adopt`` is kept as ``APP.adopted``
  and never removed by us.
- A new container that will not start or fails its health gate is stopped and kept as ``APP.failed``
  (for its logs), and the container it replaced is started again and gated again.
- When there is no running container to set aside (a crash, a ``docker rm``), the kept ``APP.prev``
  is what a failed release rolls back to. So too for a routed app whose release under ``APP`` Docker
  has restarted (or is restarting) while ``APP.prev`` is warm: the new release replaces it, it is kept
  stopped as ``APP.failed``, and the warm ``APP.prev`` stays in place (and serving) throughout. A
  container that Docker is restarting is stopped before it is renamed.
- A release that died inside its ``stable_after`` window (``core.stable.died``) is a failed release:
  ``fail_live`` takes it back as a failed gate is (kept stopped as ``APP.failed``, the route or the
  app's name back on ``APP.prev``, started and gated first unless warm), its deploy's row then says
  rolled back. The agent finds it with its stable watch; a one-shot pass with ``verify_live``.
- The apps of a pass are deployed concurrently, at most ``parallel`` at once, their gates
  overlapping; the actions of one app run one after another, in the plan's order. A start that takes a
  host port another app of the pass holds now waits (at most ``PORT_WAIT``) until that app stopped its
  old container (``core.plan.port_waits``): two apps that swap ports in one commit both start. Outcomes come back
  in the plan's order whatever order they finished in. ``parallel=1`` runs the plan in this thread,
  one app after another.
- One app's failure does not stop the others; every app gets an ``Outcome`` and a journal row. With
  ``atomic=True`` (the agent), a release that fails takes the whole commit back: no further deploy
  of the pass starts, the ones under way finish, and every app this pass deployed returns to what ran
  before it.
- A gate whose wait ``interrupted()`` abandons (a newer commit, SIGTERM) leaves the new container
  running and its journal row ``superseded``; ``verify_unfinished`` gates it (or a deploy a crash
  cut short) on the next pass and keeps it or rolls it back. A rollback whose gate is abandoned so
  is recorded as rolled back (the previous release runs), never as a failure: a pending verdict is
  not a failed one, and no message of ours ends in an empty reason. Once ``interrupted()`` says so,
  it holds for the rest of the pass, and no further action starts.
- A verdict is journaled before the rollback starts (``rolling-back``) and is final: a rollback cut
  short (SIGKILL, an engine outage) is finished by ``verify_unfinished`` at once, without gating the
  failed release again.
- An engine that stops answering (``EngineUnavailable``, from any step, a gate's sampling or a
  rollback, in any deploy of the pass) is not a verdict on the release: no further action starts, the
  ones under way end, and it leaves ``apply`` then; the journal rows stay unfinished, and
  ``verify_unfinished`` resumes them once the engine answers again. A gate that fails first checks
  that the engine still answers. ``done`` holds the outcomes given before that, in the plan's order.
  A proxy whose runtime API does not answer at a switch (``ProxyUnavailable``: killed, removed) is the
  same: an outage, not the release's failure. A container removed by hand while a pass starts it is no
  verdict either: ``superseded``, and the next pass deploys it again.
- Each probe has its own deadline (``core.health.probe_timeout``): a hung http, tcp or exec probe is
  one failed sample (an http or tcp probe that nothing answered is asked once more first), and the gate
  decides at its own timeout.
- The removal of an ``APP.next`` that an interrupted deploy left is journaled as ``cleanup``, not as
  a removal of the app.
- Each step is announced to ``on_step(app, step)`` before it runs, so tests can stop the process at
  any step; time is read from ``clock`` and waited with ``sleep``. ``on_step``, ``log`` and the
  journal are called from one deploy at a time, so lines stay whole and rows are written in turn.
"""

from __future__ import annotations

import functools
import http.client
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TypeVar

from reconciler.adapters.docker import Engine, Inspected
from reconciler.core.health import Gate, Sample, Verdict, probe_timeout
from reconciler.core.model import (
    ON_CONTAINER,
    AppSpec,
    HealthSpec,
    ObservedContainer,
    ObservedState,
    Role,
    container_name,
)
from reconciler.core.plan import STALE_NEXT, Action, ActionKind, Plan, Target, port_waits
from reconciler.core.proxy import Server, proxy_network
from reconciler.core.report import Outcome, Result
from reconciler.core.stable import StableSample, died
from reconciler.deploy.proxy import Proxy
from reconciler.deploy.services import Released, Services
from reconciler.deploy.swap import swap_in
from reconciler.errors import ContainerError, EngineUnavailable, ProxyError, ProxyUnavailable, ReconcileError
from reconciler.state.journal import CLEANUP, UNVERIFIED, Entry, Journal, JournalResult

T = TypeVar("T")

ADOPTED = ".adopted"
WATCH_STEP = 0.1  # seconds between looks at a gated container's state
PORT_WAIT = 60.0  # seconds a start waits for another app of its pass to free a host port (``port_waits``)
ABANDONED = "its gate was abandoned for a newer commit or a shutdown"
# What cuts a deploy short with no verdict on its release: the engine, or the proxy it switches, away.
OUTAGES = (EngineUnavailable, ProxyUnavailable)


class Step(StrEnum):
    """The named steps of what ``apply`` does (``RECONCILE_KILL_AT=APP:STEP`` names them too)."""

    PULL = "pull"
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
    Step.CREATE: Rule(Undo.DISCARD, Resume.REPLAN),  # the plan cleans up a stale APP.next
    Step.STOP_OLD: Rule(Undo.ROLL_BACK, Resume.REPLAN),
    Step.KEEP_OLD: Rule(Undo.ROLL_BACK, Resume.REPLAN),
    Step.RENAME_NEW: Rule(Undo.ROLL_BACK, Resume.REPLAN),
    Step.START_NEW: Rule(Undo.ROLL_BACK, Resume.VERIFY),
    Step.GATE: Rule(Undo.ROLL_BACK, Resume.VERIFY),
    # A rollback's own steps note what the engine refuses and go on (``_attempt``).
    Step.ROLL_BACK: Rule(Undo.NOTHING, Resume.FINISH),
    # Start-first: until the switch, traffic is on the old release and a crash leaves it there.
    Step.START_NEXT: Rule(Undo.SET_ASIDE, Resume.REPLAN),
    Step.GATE_NEXT: Rule(Undo.SET_ASIDE, Resume.REPLAN),
    Step.SWITCH: Rule(Undo.SET_ASIDE, Resume.REPLAN),  # the route is re-derived: back on APP, the old one
    Step.DRAIN: Rule(Undo.NOTHING, Resume.VERIFY),  # APP is the new release, and it passed its gate
}

# Stop-first: the host port is free for the new release only once the old one stopped.
STOP_FIRST: tuple[Step, ...] = (
    Step.PULL,
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
    Step.CREATE,
    Step.START_NEXT,
    Step.GATE_NEXT,
    Step.SWITCH,
    Step.KEEP_OLD,  # the old one renamed to APP.prev, still running: it finishes its requests
    Step.RENAME_NEW,
    Step.DRAIN,
)
# The steps ``swap.swap_in`` runs, in its order: a sequence that reaches one of them runs them all
# in that one call (it skips stop-old and keep-old itself when nothing runs under the app's name).
SWAP: tuple[Step, ...] = (Step.STOP_OLD, Step.KEEP_OLD, Step.RENAME_NEW, Step.START_NEW)


def _probe_http(url: str, timeout: float) -> tuple[bool | None, str]:
    """(healthy, what it saw); None for healthy when nothing answered within ``timeout``."""
    parts = urllib.parse.urlsplit(url)
    conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        conn = conn_type(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    except ValueError as exc:  # a port out of range; validation refuses it, a probe never raises
        return False, f"GET {url}: {exc}"
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return None if isinstance(exc, TimeoutError) else False, f"GET {url}: {exc.__class__.__name__}: {exc}"
    finally:
        conn.close()
    return status < 400, f"GET {url}: {status}"


def _probe_tcp(address: str, timeout: float) -> tuple[bool | None, str]:
    """(healthy, what it saw); None for healthy when nothing answered within ``timeout``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True, f"tcp {address}: open"
    except OSError as exc:
        return None if isinstance(exc, TimeoutError) else False, f"tcp {address}: {exc.strerror or exc}"


class _Rows:
    """The journal calls of ``apply``, one at a time: its sqlite connection (and its reopening of a moved
    or corrupt file) is shared by the deploys of a pass."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.lock = threading.RLock()

    def start(self, **fields: str) -> int:
        with self.lock:
            return self.journal.start(**fields)

    def finish(self, entry_id: int, *, result: JournalResult, message: str = "") -> None:
        with self.lock:
            self.journal.finish(entry_id, result=result, message=message)

    def last(self, app: str) -> Entry | None:
        with self.lock:
            return self.journal.last(app)

    def unverified(self) -> list[Entry]:
        with self.lock:
            return self.journal.unverified()

    def flag(self, key: str) -> str | None:
        with self.lock:
            return self.journal.flag(key)

    def set_flag(self, key: str, value: str | None) -> None:
        with self.lock:
            self.journal.set_flag(key, value)


@dataclass(frozen=True)
class Deployed:
    """A release this pass put in place: enough to take it back if its commit fails elsewhere."""

    app: str
    container_id: str
    previous: ObservedContainer | None
    spec: AppSpec
    entry: int


@dataclass
class _Deploy:
    """One deploy under way: what its steps read, and what each leaves for the next."""

    action: Action
    target: Target
    observed: ObservedState
    entry: int
    current: ObservedContainer | None  # what runs under the app's name: set aside by stop-old, keep-old
    fallback: ObservedContainer | None  # what a failed release goes back to
    new_id: str = ""
    started_at: float = 0.0
    reached: Step = Step.PULL  # the last step announced: a failure is a failure at it (``RULES``)
    swapped: bool = False  # the steps of ``SWAP`` have run (as one call)
    gate: Gate | None = None
    reused: bool = False  # start-first: the new release is the warm APP.prev, already running
    set_aside: bool = False  # start-first: the old release was renamed to APP.prev (or APP.adopted)
    dying: bool = False  # start-first: APP restarted or does not run, and APP.prev is warm: that one serves

    @property
    def serving(self) -> ObservedContainer | None:
        """Start-first: the release the route points at before the switch (``core.proxy.serving``)."""
        if self.current is not None and self.current.running and not self.dying:
            return self.current
        kept = self.observed.named(container_name(self.app, Role.PREVIOUS))
        return kept if kept is not None and kept.managed and kept.running else None

    @property
    def app(self) -> str:
        return self.action.app

    @property
    def spec(self) -> AppSpec:
        return self.target.spec


@dataclass
class Applier:
    engine: Engine
    journal: Journal
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    on_step: Callable[[str, str], None] = field(default=lambda app, step: None)
    log: Callable[[str], None] = field(default=lambda line: None)
    interrupted: Callable[[], bool] = field(default=lambda: False)
    wall: Callable[[], float] = time.time  # epoch seconds, as the journal's times are
    author: str = ""
    parallel: int = 1  # deploys of a pass at once (the pass's setting); 1: one after another, in this thread
    proxy: Proxy | None = None  # routed apps' proxy (start-first deploys switch it)
    done: list[Outcome] = field(default_factory=list)  # the outcomes of the last ``apply`` so far
    deployed: list[Deployed | Released] = field(default_factory=list)  # its releases that passed, until undone
    _rows: _Rows = field(init=False, repr=False)
    _said: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _asking: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _newer: bool = field(default=False, init=False, repr=False)
    _asked_at: float = field(default=float("-inf"), init=False, repr=False)
    # The pass's apps whose start waits for others to free a host port, and each app's "its old one stopped".
    _waits: Mapping[str, frozenset[str]] = field(default_factory=dict, init=False, repr=False)
    _freed: dict[str, threading.Event] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rows = _Rows(self.journal)
        self.services = Services(
            self.engine, self._rows, author=self.author, clock=self.clock, sleep=self.sleep,
            log=self._log, step=self._step, stale=self._stale, route=self._route_tasks,
        )  # fmt: skip

    def _route_tasks(self, app: str, members: tuple[Server, ...]) -> None:
        """A routed service's rollout: the proxy follows its tasks as they come and go. A proxy that does not
        answer a look never decides the rollout's verdict: the next look, or the next pass, tries again."""
        if self.proxy is None:
            return
        try:
            self.proxy.pool(app, members)
        except ProxyError as exc:
            self._log(f"{app}: the proxy did not follow its tasks: {exc}")

    def _stale(self) -> bool:
        """``interrupted()``, asked by one deploy at a time and at most every ``WATCH_STEP`` (the agent's
        answer may fetch from git); once it is true, it stays true: the rest of the pass is stale."""
        with self._asking:
            now = self.clock()
            if not self._newer and now - self._asked_at >= WATCH_STEP:
                self._newer = self.interrupted()
                self._asked_at = now
            return self._newer

    def _step(self, app: str, step: str) -> None:
        """Say a step to ``on_step``: a ``Step``, or a service's (create, update, gate, roll-back, ...)."""
        with self._said:
            self.on_step(app, str(step))

    def _log(self, line: str) -> None:
        with self._said:
            self.log(line)

    # -- health ------------------------------------------------------------------------------------

    def sample(self, container_id: str, spec: HealthSpec) -> Sample:
        now = self.clock()
        try:
            found = self.engine.inspect(container_id)
        except ContainerError as exc:  # the engine answers, but not about this container: not running
            return Sample(at=now, running=False, detail=str(exc))
        if found is None:
            return Sample(at=now, running=False, detail="the container is gone")
        health, restarts = found.health, found.restart_count
        if not found.running or found.restarting:
            detail = f"the container exited with code {found.exit_code}"
            if found.error:
                detail += f" ({found.error})"
            return Sample(
                at=now, running=False, restarts=restarts, docker_health=health, detail=detail,
                restarting=found.restarting, exit_code=found.exit_code,
            )  # fmt: skip
        ok: bool | None = True
        detail = ""
        deadline = probe_timeout(spec)
        # A probe that nothing answers in time is asked once more before the sample counts as failed: on a
        # busy host a healthy release answered a probe late (seen in CI), and one late answer after healthy
        # would fail its gate. A refusal or an error status counts at once.
        for _ in range(2):
            if spec.http is not None:
                ok, detail = _probe_http(self._addressed(spec.http, found), deadline)
            elif spec.tcp is not None:
                address = urllib.parse.urlsplit(self._addressed(f"tcp://{spec.tcp}", found)).netloc
                ok, detail = _probe_tcp(address, deadline)
            if ok is not None:
                break
        if spec.exec is not None:
            ok, detail = self.engine.exec_probe(container_id, list(spec.exec), timeout=deadline)
        return Sample(
            at=self.clock(), running=True, restarts=restarts, probe_ok=bool(ok), docker_health=health, detail=detail
        )

    def _addressed(self, url: str, found: Inspected) -> str:
        """``url`` with ``ON_CONTAINER`` replaced by the container's address (on the proxy's network first)."""
        if urllib.parse.urlsplit(url).hostname != ON_CONTAINER:
            return url
        parts = urllib.parse.urlsplit(url)
        networks = found.networks
        ip = networks.get(proxy_network(self.engine.instance)) or next(iter(networks.values()), "0.0.0.0")
        # The release's own route port: an older release, gated for a rollback, may listen on another.
        port = _route_port(found, parts.port or 80)
        return parts._replace(netloc=f"{ip}:{port}").geturl()

    def gate(self, container_id: str, spec: HealthSpec, *, started_at: float | None = None) -> Gate:
        """Probe the container until the gate decides, or ``interrupted()`` (then it stays pending)."""
        found = self._inspect(container_id)
        gate = Gate(
            spec=spec,
            started_at=self.clock() if started_at is None else started_at,
            restarts_at_start=found.restart_count if found is not None else 0,  # none: the first sample says why
        )
        while True:
            gate = gate.observe(self.sample(container_id, spec))
            if gate.verdict is Verdict.FAILED:
                # An engine going away looks like a container that is gone or exited: that judges
                # the engine, not the release.
                self._engine_answers()
            if gate.verdict.done or self._stale():
                return gate
            self._wait_watching(container_id, gate.next_sample_at(self.clock()), gate.restarts_at_start)

    def _engine_answers(self) -> None:
        """Raise ``EngineUnavailable`` unless the engine answers a ping on a new connection.

        A dockerd that is shutting down has closed its socket, then stops every container, and still
        answers on the connections already open: so the pooled ones are dropped first.
        """
        self.engine.api.close()
        self.engine.call("ping", self.engine.api.ping)

    def _wait_watching(self, container_id: str, until: float, restarts: int) -> None:
        """Sleep until ``until``, but look at the container every 100 ms and return early when it stopped
        or restarted: a release that exits fails its gate at once, not one probe interval later."""
        while (left := until - self.clock()) > 0:
            self.sleep(min(left, WATCH_STEP))
            if self._stale():
                return
            found = self._inspect(container_id)
            if found is None or not found.running or found.restart_count > restarts:
                return

    def _inspect(self, container: str) -> Inspected | None:
        """``engine.inspect``, with a refusal (not an outage) read as "not there": whatever comes next (a
        sample, a rename) meets the same refusal and says why."""
        try:
            return self.engine.inspect(container)
        except ContainerError:
            return None

    # -- the plan --------------------------------------------------------------------------------

    def apply(self, plan: Plan, observed: ObservedState, *, atomic: bool = False) -> list[Outcome]:
        """Apply ``plan``, its apps concurrently; an ``EngineUnavailable`` stops it (``done`` says what was
        done before)."""
        slots: list[Outcome | None] = [None] * len(plan.actions)
        kept: list[Deployed | Released | None] = [None] * len(plan.actions)
        self.done = []
        failed = threading.Event()  # atomic: a release of the commit failed, start nothing more

        def halted() -> bool:
            return self._stale() or (atomic and failed.is_set())

        def run_app(indices: Sequence[int]) -> None:
            try:
                for index in indices:
                    if halted():
                        return  # a newer commit, a shutdown, or a commit that is going back
                    outcome, kept[index] = self._run(plan.actions[index], observed, plan.revision)
                    slots[index] = outcome
                    if atomic and _breaks_release(outcome):
                        failed.set()
            finally:
                self._freed[plan.actions[indices[0]].app].set()  # whatever became of it, nobody waits on it

        by_app: dict[str, list[int]] = {}
        for index, action in enumerate(plan.actions):
            by_app.setdefault(action.app, []).append(index)
        # Apps run one after another (parallel 1) cannot wait for each other: only concurrent ones do.
        self._waits = port_waits(plan, observed) if self.parallel > 1 else {}
        self._freed = {app: threading.Event() for app in by_app}
        try:
            self._all([functools.partial(run_app, indices) for indices in by_app.values()])
        finally:
            self.done = [outcome for outcome in slots if outcome is not None]
            self.deployed = [done for done in kept if done is not None]
        culprits = [outcome.app for outcome in self.done if _breaks_release(outcome)]
        if atomic and culprits:
            self.undo_deployed(f"rolled back with the rest of commit {plan.revision[:8]}: {', '.join(culprits)} failed")
        return self.done

    def undo_deployed(self, reason: str) -> list[Outcome]:
        """Take back every release the last ``apply`` put in place, newest first (its commit failed
        elsewhere: another app, or another host of a push rollout's group); ``done`` then says so."""
        deployed, self.deployed = self.deployed, []
        taken_back = self._all([functools.partial(self._undo, done, reason) for done in reversed(deployed)])
        undone = {done.app: outcome for done, outcome in zip(reversed(deployed), taken_back, strict=True) if outcome}
        self.done = [undone.get(outcome.app) or outcome for outcome in self.done]
        return [undone[done.app] for done in deployed if done.app in undone]

    def _all(self, tasks: Sequence[Callable[[], T]]) -> list[T | None]:
        """Run ``tasks``, at most ``parallel`` at once; their results in their order.

        An exception in one (an engine outage) starts no further task; it is raised once the tasks under
        way have ended, which the outage ends soon too. A task not run gives None.
        """
        if self.parallel <= 1 or len(tasks) <= 1:
            return [task() for task in tasks]
        results: list[T | None] = [None] * len(tasks)
        errors: list[BaseException] = []
        stop = threading.Event()

        def run(index: int) -> None:
            if stop.is_set():
                return
            try:
                results[index] = tasks[index]()
            except BaseException as exc:  # handed to the caller's thread below
                errors.append(exc)
                stop.set()

        with ThreadPoolExecutor(max_workers=min(self.parallel, len(tasks)), thread_name_prefix="deploy") as pool:
            for index in range(len(tasks)):
                pool.submit(run, index)
        if errors:
            raise errors[0]
        return results

    def _run(
        self, action: Action, observed: ObservedState, revision: str
    ) -> tuple[Outcome, Deployed | Released | None]:
        """One action of the plan: its outcome, and the release it put in place (to undo with its commit)."""
        if not action.kind.changes:
            return Outcome(action.app, action.kind, action.container, Result.SKIPPED, action.message), None
        try:
            if action.service:
                service = observed.service(action.container)
                if action.kind is ActionKind.REMOVE:
                    assert service is not None
                    return self.services.remove(action, service, revision), None
            if action.kind is ActionKind.REMOVE:
                return self._remove(action, observed, revision), None
            if action.kind is ActionKind.START:
                return self._start(action, observed, revision), None
            if action.service and action.target is not None:
                spec = action.target.spec
                env = {**(self.engine.files.read(spec.env_file) if spec.env_file else {}), **spec.env}
                return self.services.deploy(action, observed.service(action.container), revision, env)
            return self._deploy(action, observed, revision)
        except OUTAGES:
            raise  # not this app's failure: the pass stops, and the next one resumes the journaled row
        except ReconcileError as exc:
            return Outcome(action.app, action.kind, action.container, Result.FAILED, str(exc)), None

    def _journal_start(self, revision: str, app: str, action: str, **fields: str) -> int:
        return self._rows.start(revision=revision, app=app, action=action, author=self.author, **fields)

    def _remove(self, action: Action, observed: ObservedState, revision: str) -> Outcome:
        container = observed.named(action.container)
        if container is None or not container.managed:
            return Outcome(action.app, action.kind, action.container, Result.SKIPPED, "not ours or already gone")
        if action.reasons[:1] == (STALE_NEXT,):
            # Not a removal of the app: what runs under its name stays; only debris of a deploy goes.
            entry = self._journal_start(revision, action.app, CLEANUP)
            message = f"removed {container.name} left by an interrupted deploy"
        else:
            entry = self._journal_start(
                revision, action.app, "remove", from_version=container.version, from_image=container.image_id
            )
            message = ""
        self._step(action.app, Step.REMOVE)
        if container.running:
            self.engine.stop(container.id, container.name, container.stop_timeout)
        self.engine.remove(container.id, container.name)
        self._rows.finish(entry, result=JournalResult.SUCCEEDED, message=message)
        self._log(message or f"removed {container.name}")
        said = "left by an interrupted deploy; removed" if message else ""
        return Outcome(action.app, action.kind, action.container, Result.APPLIED, said)

    def _start(self, action: Action, observed: ObservedState, revision: str) -> Outcome:
        container = observed.named(action.container)
        assert container is not None and action.target is not None
        app, spec = action.app, action.target.spec
        last = self._rows.last(app)
        recovering = last is not None and last.result in UNVERIFIED
        entry = self._journal_start(
            container.commit or revision,  # what runs is the release of the container's commit
            app,
            "start",
            from_version=container.version,
            to_version=container.version,
            from_image=container.image_id,
            to_image=container.image_id,
            spec_hash=container.spec_hash,
        )
        if recovering and last is not None:
            self._rows.finish(last.id, result=JournalResult.INTERRUPTED, message="finished by a later pass")
        self._step(app, Step.START)
        try:
            if container.state == "paused":
                self.engine.unpause(container.id, container.name)
            else:
                self.engine.start(container.id, container.name)
        except EngineUnavailable:
            raise  # the row stays unfinished: the next pass starts and gates it
        except ReconcileError as exc:
            if self._inspect(container.id) is None:
                return self._gone(action, entry, container)
            self._rows.finish(entry, result=JournalResult.FAILED, message=str(exc))
            raise
        gate = self.gate(container.id, spec.gate)
        if gate.verdict is Verdict.FAILED and self._inspect(container.id) is None:
            return self._gone(action, entry, container)
        if gate.verdict is Verdict.PASSED:
            self._rows.finish(entry, result=JournalResult.SUCCEEDED)
            self._log(f"started {container.name} ({container.version})")
            return Outcome(app, action.kind, action.container, Result.APPLIED, f"started {container.version}")
        if gate.verdict is Verdict.PENDING:
            self._rows.finish(entry, result=JournalResult.SUPERSEDED, message="the health gate was abandoned")
            message = f"started {container.version}, {ABANDONED}"
            return Outcome(app, action.kind, action.container, Result.SUPERSEDED, message)
        previous = observed.named(container_name(app, Role.PREVIOUS))
        if recovering and previous is not None and previous.managed:
            # A deploy cut short by a crash: its release never proved itself, the kept one did.
            return self._roll_back(action, entry, container.id, previous, spec, f"after a restart, {gate.reason}")
        if spec.route is not None and previous is not None and previous.managed and previous.running:
            # A routed release that stopped and does not come back while the one before it is warm: a late
            # failure, rolled back by a switch (the route has served the warm one since the pass began).
            failed = spec.model_copy(update={"version": container.version or spec.version})
            why = f"it stopped after it went live and did not come back healthy: {gate.reason}"
            return self._roll_back(action, entry, container.id, previous, failed, why)
        self._rows.finish(entry, result=JournalResult.FAILED, message=gate.reason)
        return Outcome(app, action.kind, action.container, Result.FAILED, f"started, but {gate.reason}")

    def _gone(self, action: Action, entry: int, container: ObservedContainer) -> Outcome:
        """A container removed while this pass started it (``docker rm -f``): no verdict on its release; the
        next pass, which sees it gone, deploys it again."""
        said = f"{container.name} was removed while this pass started it; the next pass deploys it again"
        self._rows.finish(entry, result=JournalResult.INTERRUPTED, message=said)
        self._log(said)
        return Outcome(action.app, action.kind, action.container, Result.SUPERSEDED, said)

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
            found = self._inspect(current.id)
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

    # -- a deploy: its steps, in sequence -------------------------------------------------------------

    def _deploy(self, action: Action, observed: ObservedState, revision: str) -> tuple[Outcome, Deployed | None]:
        target = action.target
        assert target is not None
        app, spec = action.app, target.spec
        steps = START_FIRST if spec.route is not None else STOP_FIRST
        current = observed.named(container_name(app))
        kept = observed.named(container_name(app, Role.PREVIOUS))
        kept = kept if kept is not None and kept.managed else None
        # A routed release that Docker has restarted (or is restarting) while the one before it is warm is a
        # failed one: the warm one is what serves and what to fall back to, and it is set aside as APP.failed.
        warm = spec.route is not None and kept is not None and kept.state == "running"
        dying = current is not None and current.managed and warm and self._dying(current.id)
        # With nothing running under the app's name, the kept container is what to fall back to.
        fallback = kept if current is None or dying else current
        entry = self._journal_start(
            revision,
            app,
            str(action.kind),
            from_version=fallback.version if fallback else "",
            to_version=spec.version,
            from_image=fallback.image_id if fallback else "",
            to_image=target.resolution.image_id or target.resolution.ref,
            spec_hash=target.spec_hash,
        )
        deploy = _Deploy(action, target, observed, entry, current, fallback, started_at=self.clock(), dying=dying)
        for step in steps:
            if not self._needed(step, deploy):
                continue
            try:
                if steps is STOP_FIRST and step in SWAP:
                    self._swap(deploy)
                else:
                    self._announce(deploy, step)
                    self._do(step, deploy)
            except OUTAGES:
                raise  # cut short, not failed: the next pass finds the unfinished row and resumes it (RULES)
            except ReconcileError as exc:
                return self._take_back(deploy, deploy.reached, str(exc)), None
        gate = deploy.gate
        assert gate is not None
        if gate.verdict is Verdict.PENDING:
            self._rows.finish(entry, result=JournalResult.SUPERSEDED, message="the health gate was abandoned")
            return Outcome(app, action.kind, app, Result.SUPERSEDED, f"{spec.version} started, gate abandoned"), None
        if gate.verdict is not Verdict.PASSED:
            return self._take_back(deploy, deploy.reached, gate.reason), None
        self._rows.finish(entry, result=JournalResult.SUCCEEDED)
        was = f"{fallback.version or '?'} -> " if fallback else ""
        self._log(f"deployed {app} {was}{spec.version}")
        done = Deployed(app, deploy.new_id, fallback, spec, entry)
        return Outcome(app, action.kind, app, Result.APPLIED, f"{was}{spec.version}"), done

    @staticmethod
    def _needed(step: Step, deploy: _Deploy) -> bool:
        if deploy.gate is not None and deploy.gate.verdict is not Verdict.PASSED:
            return False  # start-first: a release that did not pass its gate never takes traffic
        if step is Step.PULL:
            return not deploy.target.resolution.image_id and not deploy.reused
        if step is Step.START_NEXT:
            return not deploy.reused
        if step in SWAP:
            return not deploy.swapped
        return True

    def _announce(self, deploy: _Deploy, step: Step) -> None:
        """Say ``step`` to ``on_step`` before it runs, and remember it as the step a failure is at. A start
        first waits for the apps of the pass that hold a host port it takes (``core.plan.port_waits``)."""
        if step is Step.START_NEW:
            self._wait_for_ports(deploy.app)
        deploy.reached = step
        self._step(deploy.app, step)
        if step in (Step.START_NEW, Step.START_NEXT):
            deploy.started_at = self.clock()  # the gate counts from this start, not from the pull's
        if step is Step.KEEP_OLD and deploy.app in self._freed:
            self._freed[deploy.app].set()  # its old container stopped: its host ports are free

    def _wait_for_ports(self, app: str) -> None:
        """Until every app whose running container holds a host port ``app`` takes has stopped it (or ended its
        deploy), at most ``PORT_WAIT``: two apps that swap ports in one commit both start."""
        deadline = self.clock() + PORT_WAIT
        for other in sorted(self._waits.get(app, ())):
            freed = self._freed.get(other)
            while freed is not None and not freed.wait(WATCH_STEP) and self.clock() < deadline and not self._stale():
                pass

    def _swap(self, deploy: _Deploy) -> None:
        """The steps of ``SWAP``: APP.next runs as the app; what ran is kept stopped (APP.prev, or
        APP.adopted), and the older APP.prev it replaces is removed while it stops (only when both are
        ours). A failure is left to ``_take_back``, as ``RULES`` says for the step it reached."""
        app, current = deploy.app, deploy.current
        # Without a current there is nothing to keep: swap_in reads ``keep_as`` only with one.
        keep_as = self._keep_as(app, current) if current is not None else container_name(app, Role.PREVIOUS)
        older = deploy.observed.named(keep_as) if current is not None and current.managed else None
        deploy.swapped = True
        swap_in(
            self.engine,
            app,
            deploy.new_id,
            current,
            incoming_name=container_name(app, Role.NEXT),
            keep_as=keep_as,
            drop=older if older is not None and older.managed else None,
            step=lambda name: self._announce(deploy, Step(name)),
            log=self._log,
        )

    def _do(self, step: Step, deploy: _Deploy) -> None:
        """Run one step of a deploy outside ``SWAP``; what it leaves (an id, a gate) goes into ``deploy``."""
        app, spec = deploy.app, deploy.spec
        if step is Step.PULL:
            self.engine.pull(deploy.target.resolution.ref)
        elif step is Step.CREATE:
            was = deploy.fallback
            self._log(f"deploying {app} {was.version + ' -> ' if was else ''}{spec.version}")
            if self._reuse_warm(deploy):
                return
            env = {**(self.engine.files.read(spec.env_file) if spec.env_file else {}), **spec.env}
            network = proxy_network(self.engine.instance) if spec.route is not None else None
            deploy.new_id = self.engine.create(deploy.target, container_name(app, Role.NEXT), env=env, network=network)
        elif step in (Step.GATE, Step.GATE_NEXT):
            # A warm release served and stayed up: one good answer is its fresh gate.
            gate = spec.gate.one_answer() if deploy.reused else spec.gate
            deploy.gate = self.gate(deploy.new_id, gate, started_at=deploy.started_at)
        elif step is Step.START_NEXT:
            self.engine.start(deploy.new_id, container_name(app, Role.NEXT))
        elif step is Step.SWITCH:
            self.switch(app, deploy.new_id, spec)
        elif step is Step.KEEP_OLD:
            self._set_old_aside(deploy)
        elif step is Step.RENAME_NEW:
            self.engine.rename(deploy.new_id, app)
        elif step is Step.DRAIN:
            self._drain(deploy)
        else:
            raise AssertionError(f"{step} is not a step of a deploy")

    # -- start-first: the steps of a routed app -----------------------------------------------------------

    def _reuse_warm(self, deploy: _Deploy) -> bool:
        """A commit back to the warm previous release: it is gated again (under its own name) and switched
        to, not started. Only a warm one: when APP does not run, APP.prev is what serves."""
        app = deploy.app
        warm = deploy.observed.named(container_name(app, Role.PREVIOUS))
        if (
            deploy.spec.route is None
            or warm is None
            or not warm.managed
            or warm.state != "running"
            or warm.spec_hash != deploy.target.spec_hash
            or deploy.serving is warm
            or (self.proxy is not None and warm.id in self.proxy.cooling)  # its window passed: it is stopping
        ):
            return False
        deploy.new_id, deploy.reused = warm.id, True
        deploy.started_at = self.clock()
        self._log(f"{app}: {warm.version} is warm: switching back to it after a fresh gate")
        return True

    def switch(self, app: str, container_id: str, spec: AppSpec) -> None:
        """Point the app's route at the container (it passed its gate)."""
        assert spec.route is not None
        if self.proxy is None:
            raise AssertionError("a routed app is deployed with a proxy")
        found = self._inspect(container_id)
        ip = found.networks.get(proxy_network(self.engine.instance)) if found is not None else None
        if found is None or not ip:
            raise ContainerError(f"{app}: the new release has no address on the proxy's network")
        self.proxy.switch(app, Server(found.name, ip, _route_port(found, spec.route.port)))

    def _switch_back_to(self, app: str, old: ObservedContainer | None, spec: AppSpec) -> None:
        if old is not None:
            self.switch(app, old.id, spec)
        elif self.proxy is not None:
            self.proxy.switch(app, None)

    def _set_old_aside(self, deploy: _Deploy) -> None:
        """The old release (no longer served) renamed to APP.prev, still running; the older APP.prev goes.

        A warm release switched back to moves out of APP.prev first (through APP.next), so that the
        release it replaces can take that name. When APP is gone, the running APP.prev was the old release:
        it stays, to drain and stay warm. When APP does not run (a release that Docker keeps restarting)
        while APP.prev is warm, APP is the failed one: it is stopped and kept as APP.failed, and the warm
        APP.prev stays as it is. A container that Docker is restarting is stopped before it is renamed (the
        engine cannot rename it), and nothing warm is removed before that."""
        app, current = deploy.app, deploy.current
        older = deploy.observed.named(container_name(app, Role.PREVIOUS))
        warm = older is not None and older.managed and older.state == "running"
        if current is not None and current.managed and warm and (deploy.dying or self._dying(current.id)):
            assert older is not None
            problems: list[str] = []
            self._keep_failed(app, current.id, deploy.spec, problems)
            if problems:
                raise ContainerError("; ".join(problems))
            self._log(f"{app}: {current.version or current.name} did not run: kept stopped as "
                      f"{container_name(app, Role.FAILED)}; the warm {older.name} stays")  # fmt: skip
            deploy.dying = deploy.set_aside = True  # the warm one is what drains (and stays warm)
            return
        found = self._inspect(current.id) if current is not None else None
        if current is not None and found is not None and found.restarting:
            self.engine.stop(current.id, current.name, current.stop_timeout)
        if deploy.reused:
            self.engine.rename(deploy.new_id, container_name(app, Role.NEXT))
        elif older is not None and older.managed and older is not deploy.serving:
            self.engine.remove(older.id, older.name)  # not served: the route points at the new release
        if current is None:
            deploy.set_aside = deploy.serving is not None
            return
        self.engine.rename(current.id, self._keep_as(app, current))
        deploy.set_aside = True

    def _drain(self, deploy: _Deploy) -> None:
        """The old release keeps its in-flight requests for ``drain``; then it is stopped, unless kept warm.
        A stop the engine refuses is noted, not a failure of the release, which serves by now."""
        old, spec = deploy.serving, deploy.spec
        assert spec.route is not None
        if old is None or not deploy.set_aside:
            return
        if old.managed and spec.keep_warm > 0:
            self._log(f"{deploy.app}: {old.version or old.name} stays warm as a rollback target")
            return
        self.sleep(spec.route.drain)
        name = self._keep_as(deploy.app, old) if old is deploy.current else old.name
        try:
            self.engine.stop(old.id, name, old.stop_timeout)
        except EngineUnavailable:
            raise
        except ReconcileError as exc:
            self._log(f"{deploy.app}: the old release {old.version or old.name} was not stopped after drain: {exc}")

    def _dying(self, container_id: str) -> bool:
        """The container does not run now, Docker is restarting it, or it restarted since it was started."""
        found = self._inspect(container_id)
        return found is None or not found.running or found.restarting or found.restart_count > 0

    @staticmethod
    def _keep_as(app: str, current: ObservedContainer) -> str:
        """Where the running container is kept once set aside: APP.prev, or APP.adopted when not ours."""
        return container_name(app, Role.PREVIOUS) if current.managed else app + ADOPTED

    def _take_back(self, deploy: _Deploy, step: Step, reason: str) -> Outcome:
        """What a failure at ``step`` leaves to undo, as ``RULES`` says; ``reason`` is why it failed."""
        app, action = deploy.app, deploy.action
        undo = RULES[step].undo
        if undo is Undo.SET_ASIDE:
            return self._set_new_aside(deploy, step, reason)
        if undo is Undo.ROLL_BACK:
            why = _why(step, reason)
            return self._roll_back(action, deploy.entry, deploy.new_id, deploy.fallback, deploy.spec, why)
        if undo is Undo.DISCARD and deploy.new_id:
            self.engine.remove(deploy.new_id, container_name(app, Role.NEXT))
        self._rows.finish(deploy.entry, result=JournalResult.FAILED, message=reason)
        return Outcome(app, action.kind, app, Result.FAILED, f"{reason}; {self._left_as_it_was(deploy.current)}")

    def _set_new_aside(self, deploy: _Deploy, step: Step, reason: str) -> Outcome:
        """Start-first: the new release never served (or served for the instant of a refused switch): the
        route is put back on what served, and the new release is kept stopped as APP.failed."""
        app, spec = deploy.app, deploy.spec
        problems: list[str] = []
        why = _why(step, reason)
        self._rows.finish(deploy.entry, result=JournalResult.ROLLING_BACK, message=why)
        self._step(app, Step.ROLL_BACK)
        old = deploy.serving
        if step is Step.SWITCH and self.proxy is not None:
            # The switch may have half happened (an address set, not enabled): the route goes back.
            self._attempt("switch back", lambda: self._switch_back_to(app, old, spec), problems)
        if deploy.new_id:
            self._keep_failed(app, deploy.new_id, spec, problems)
        kept = f"; kept stopped as {container_name(app, Role.FAILED)}" if deploy.new_id else ""
        serving = (old.version or old.name) if old is not None else "nothing"
        moved = "the route is back on" if step is Step.SWITCH else "traffic never moved:"
        said = f"{why}; {moved} {serving} serves on{kept}"
        result = JournalResult.ROLLED_BACK if not problems else JournalResult.FAILED
        self._rows.finish(deploy.entry, result=result, message="; ".join([said, *problems]))
        self._log(f"deploy of {app} {spec.version} failed ({why}); {serving} serves on")
        outcome = Result.ROLLED_BACK if old is not None and not problems else Result.FAILED
        return Outcome(app, deploy.action.kind, app, outcome, f"{spec.version} failed: {said}", release_failed=True)

    # -- deploys that never got a verdict ----------------------------------------------------------

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
                try:
                    self.engine.start(current.id, current.name)
                except EngineUnavailable:
                    raise
                except ReconcileError:
                    pass  # not started: the gate sees it, and rolls back
            gate = self.gate(current.id, specs[entry.app].gate)
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

    @staticmethod
    def _left_as_it_was(current: ObservedContainer | None) -> str:
        if current is None:
            return "nothing was running, nothing was started"
        return f"{current.name} left as it was ({current.version or current.state})"

    def _attempt(self, what: str, fn: Callable[[], object], problems: list[str]) -> None:
        """Run one step of a rollback; a failure is noted and the rollback goes on (not an outage of the
        engine or the proxy: that stops it, and the next pass finishes it from the journaled verdict)."""
        try:
            fn()
        except OUTAGES:
            raise
        except ReconcileError as exc:
            problems.append(f"{what}: {exc}")

    def _bring_back(self, app: str, previous: ObservedContainer, gate: HealthSpec, problems: list[str]) -> Gate:
        """Put ``previous`` under the app's name again, start it and gate it (found by id, wherever it is)."""
        where = self._inspect(previous.id)
        if where is None or where.name != app:
            self._attempt(f"rename the previous one to {app}", lambda: self.engine.rename(previous.id, app), problems)
        self._attempt("start the previous one", lambda: self.engine.start(previous.id, app), problems)
        return self.gate(previous.id, gate)

    def _roll_back(
        self,
        action: Action,
        entry: int,
        new_id: str,
        previous: ObservedContainer | None,
        spec: AppSpec,
        reason: str,
    ) -> Outcome:
        """Keep the new container stopped as APP.failed and bring ``previous`` back under the app's name.

        Works from whatever point the deploy (or an earlier rollback) reached: containers are found by
        id, not by name; ``new_id`` is empty when the failed release is gone already.
        """
        app = action.app
        failed_name = container_name(app, Role.FAILED)
        problems: list[str] = []
        self._engine_answers()  # a release stopped by an engine going away did not fail
        # The verdict first: a rollback cut short from here on is finished by the next pass, not re-judged.
        self._rows.finish(entry, result=JournalResult.ROLLING_BACK, message=reason)
        self._step(app, Step.ROLL_BACK)
        switched = spec.route is not None and self.proxy is not None and previous is not None
        if new_id and not switched:
            self._keep_failed(app, new_id, spec, problems)
        if previous is None:
            self._rows.finish(entry, result=JournalResult.FAILED, message=reason)
            self._log(f"deploy of {app} {spec.version} failed: {reason}; nothing to roll back to")
            kept = f"kept stopped as {failed_name}; " if new_id else ""
            message = f"{spec.version} failed: {reason}; {kept}nothing to roll back to"
            return Outcome(app, action.kind, app, Result.FAILED, message, release_failed=True)
        back = previous.version or previous.name
        if switched:
            aside = functools.partial(self._keep_failed, app, new_id, spec) if new_id else None
            gate = self._switch_back(app, previous, spec, problems, set_aside=aside)
        else:
            gate = self._bring_back(app, previous, spec.gate, problems)  # the old one must pass the file's gate
        if gate.verdict is not Verdict.FAILED and not problems:
            # An abandoned gate (PENDING) is no failure: the previous release runs, as it did before.
            abandoned = f" ({ABANDONED})" if gate.verdict is Verdict.PENDING else ""
            said = f"{reason}; back to {back}{abandoned}" if abandoned else reason
            self._rows.finish(entry, result=JournalResult.ROLLED_BACK, message=said)
            self._log(f"deploy of {app} {spec.version} failed ({reason}); rolled back to {back}{abandoned}")
            message = f"{spec.version} failed: {reason}; rolled back to {back}{abandoned}"
            return Outcome(app, action.kind, app, Result.ROLLED_BACK, message, release_failed=True)
        trouble = "; ".join([*problems, *([gate.reason] if gate.verdict is Verdict.FAILED else [])])
        self._rows.finish(entry, result=JournalResult.FAILED, message=f"{reason}; rollback: {trouble}")
        self._log(f"deploy of {app} {spec.version} failed ({reason}); rolling back to {back} failed: {trouble}")
        message = f"{spec.version} failed: {reason}; rolling back to {back} failed too: {trouble}"
        return Outcome(app, action.kind, app, Result.FAILED, message, release_failed=True)

    def _switch_back(
        self,
        app: str,
        previous: ObservedContainer,
        spec: AppSpec,
        problems: list[str],
        *,
        set_aside: Callable[[list[str]], None] | None,
    ) -> Gate:
        """A routed app's rollback: the previous release (started first, unless it is warm) passes a fresh
        gate, the route switches to it, then the release it replaces is set aside and it takes the app's
        name. A warm release served and stayed up: one good answer is its fresh gate."""
        found = self._inspect(previous.id)
        warm = found is not None and found.running
        if warm and self.proxy is not None and previous.id in self.proxy.cooling:
            # Cooled by this pass (its window passed) and stopping: stopped first, then started and gated.
            self._attempt("stop the cooling one", lambda: self.engine.stop(previous.id, previous.name,
                                                                          previous.stop_timeout), problems)  # fmt: skip
            warm = False
        if not warm:
            self._attempt("start the previous one", lambda: self.engine.start(previous.id, previous.name), problems)
        gate = self.gate(previous.id, spec.gate.one_answer() if warm else spec.gate)
        if gate.verdict is Verdict.FAILED:
            return gate  # nothing switched: what the route points at is not touched
        before = len(problems)
        self._attempt("switch to the previous one", lambda: self.switch(app, previous.id, spec), problems)
        if len(problems) > before:
            return gate
        if set_aside is not None:
            set_aside(problems)
        where = self._inspect(previous.id)
        if where is not None and where.name != app:
            self._attempt(f"rename the previous one to {app}", lambda: self.engine.rename(previous.id, app), problems)
        return gate

    def _keep_failed(self, app: str, new_id: str, spec: AppSpec, problems: list[str]) -> None:
        """Stop the failed release and keep it as APP.failed (dropped if a stranger holds that name)."""
        failed_name = container_name(app, Role.FAILED)
        self._attempt("stop the new container", lambda: self.engine.stop(new_id, app, spec.stop_timeout), problems)
        stale = self._inspect(failed_name)
        if stale is not None and stale.id == new_id:
            return  # kept already: a rollback resumed after it got this far
        if stale is not None and not stale.ours:
            # The name is taken by a container that is not ours: never touch it; drop the failed release.
            self._attempt("remove the failed release", lambda: self.engine.remove(new_id, app), problems)
            return
        if stale is not None:
            self._attempt("remove the older failed one", lambda: self.engine.remove(failed_name, failed_name), problems)
        self._attempt("keep it as " + failed_name, lambda: self.engine.rename(new_id, failed_name), problems)

    def _undo(self, done: Deployed | Released, reason: str) -> Outcome:
        """Take back a release that passed its gate, because another app of its commit failed."""
        if isinstance(done, Released):
            return self.services.undo(done, reason)
        app = done.app
        problems: list[str] = []
        self._step(app, Step.UNDO)
        if done.spec.route is None or self.proxy is None or done.previous is None:
            if done.spec.route is not None and self.proxy is not None:
                proxy = self.proxy  # new in the commit: its route serves nothing before it goes
                self._attempt("take its route down", lambda: proxy.switch(app, None), problems)
            self._attempt("stop it", lambda: self.engine.stop(done.container_id, app, done.spec.stop_timeout), problems)
            self._attempt("remove it", lambda: self.engine.remove(done.container_id, app), problems)
        abandoned = ""
        if done.previous is not None and done.spec.route is not None and self.proxy is not None:
            # Routed: the release that passed keeps serving until the previous one is switched to.
            def remove(problems: list[str]) -> None:
                self._attempt(
                    "stop it", lambda: self.engine.stop(done.container_id, app, done.spec.stop_timeout), problems
                )
                self._attempt("remove it", lambda: self.engine.remove(done.container_id, app), problems)

            gate = self._switch_back(app, done.previous, done.spec, problems, set_aside=remove)
            if gate.verdict is Verdict.FAILED:
                problems.append(gate.reason)
        elif done.previous is not None:
            gate = self._bring_back(app, done.previous, done.spec.gate, problems)
            if gate.verdict is Verdict.FAILED:
                problems.append(gate.reason)
            elif gate.verdict is Verdict.PENDING:
                abandoned = f" ({ABANDONED})"  # no failure: what ran before the commit runs again
        back = (done.previous.version + abandoned) if done.previous else "nothing (it is new in this commit)"
        if problems and done.spec.route is not None and done.previous is not None:
            message = f"{reason}; {done.spec.version} kept serving, going back to {back} failed: {'; '.join(problems)}"
        else:
            message = f"{reason}; back to {back}" + (f"; {'; '.join(problems)}" if problems else "")
        self._rows.finish(
            done.entry, result=JournalResult.ROLLED_BACK if not problems else JournalResult.FAILED, message=message
        )
        self._log(f"{app}: {message}")
        kind = ActionKind.REPLACE if done.previous else ActionKind.CREATE
        return Outcome(app, kind, app, Result.ROLLED_BACK if not problems else Result.FAILED, message)


def _why(step: Step, reason: str) -> str:
    """Why a deploy failed at ``step``, as its journal row and its outcome say it."""
    if step in (Step.GATE, Step.GATE_NEXT):
        return reason
    if step is Step.SWITCH:
        return f"the proxy did not switch to it: {reason}"
    if step in (Step.KEEP_OLD, Step.RENAME_NEW) and reason:
        return f"it did not take the app's name ({step}): {reason}"
    return f"it did not start: {reason}"


def _route_port(found: Inspected, default: int) -> int:
    """The port a routed release was deployed with (its fingerprint), else ``default``."""
    port = found.fingerprint.get("route_port")
    return port if isinstance(port, int) and not isinstance(port, bool) else default


def _breaks_release(outcome: Outcome) -> bool:
    """A new release that did not come up (failed its gate, or its pull, env_file or create failed)."""
    deploy = outcome.kind in (ActionKind.CREATE, ActionKind.REPLACE)
    return outcome.release_failed or (deploy and outcome.result is Result.FAILED)
