"""Runs a Plan against the engine: each deploy a sequence of named steps, health-gated, rolled back on failure.

Guarantees:
- A deploy is a sequence of ``core.steps.Step`` values, one sequence per strategy (``STOP_FIRST`` for
  apps with host ports, ``START_FIRST`` for routed apps); what a failure at a step takes back and what the
  next pass does with a deploy cut short there is ``core.steps.RULES``, carried out here (``_take_back``),
  by ``deploy.rollback`` and by ``deploy.recovery``. On the stop-first path the steps of ``SWAP`` are one
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
  ``fail_live`` (``deploy.recovery``) takes it back as a failed gate is. The agent finds it with its
  stable watch; a one-shot pass with ``verify_live``.
- The apps of a pass are deployed concurrently, at most ``parallel`` at once, their gates
  overlapping; the actions of one app run one after another, in the plan's order. A start that takes a
  host port another app of the pass holds now waits (at most ``PORT_WAIT``) until that app stopped its
  old container (``core.plan.port_waits``): two apps that swap ports in one commit both start. Outcomes come back
  in the plan's order whatever order they finished in. ``parallel=1`` runs the plan in this thread,
  one app after another.
- ``depends_on`` orders a pass: each app's work is handed to the pool after the apps it depends on (waves of
  ``core.stack.waves``), so an app only ever waits on apps under way or done, whatever ``parallel`` is; it
  starts once each dependency is as its condition says (``_wait_for_dependencies``), else it is not
  deployed and its outcome says ``waiting for APP: why``.
- An app with a release command runs it (``deploy.job``) after the pull and before anything of the app
  changes; one that fails is the release's failure (held by the agent), one abandoned for a newer commit or
  a shutdown is ``superseded``. A switch back to a warm release runs none.
- Each container of a release is made with its materials read at that moment (``_materials``): the env_file
  and env, its Docker networks (the app's name resolves there), its secrets' bytes. A SOPS file gives what
  the read of the release's own commit opened (``sealed``, by revision), never what another commit holds.
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
  short (SIGKILL, an engine outage) is finished by ``verify_unfinished`` (``deploy.recovery``) at once,
  without gating the failed release again.
- An engine that stops answering (``EngineUnavailable``, from any step, a gate's sampling or a
  rollback, in any deploy of the pass) is not a verdict on the release: no further action starts, the
  ones under way end, and it leaves ``apply`` then; the journal rows stay unfinished, and
  ``verify_unfinished`` resumes them once the engine answers again. A gate that fails first checks
  that the engine still answers. ``done`` holds the outcomes given before that, in the plan's order.
  A proxy whose runtime API does not answer at a switch (``ProxyUnavailable``: killed, removed) is the
  same: an outage, not the release's failure. A container removed by hand while a pass starts it is no
  verdict either: ``superseded``, and the next pass deploys it again.
- Every sample and gate is the one ``deploy.prober.Prober``'s (``prober``), whose gates are abandoned
  once ``interrupted()`` says so.
- A journal that cannot be written (a full or read-only disk, a file it cannot write: ``deploy.rows``) is
  no app's failure: it leaves ``apply`` as an outage does (no further action starts), with no outcome for
  the deploy it met.
- The removal of an ``APP.next`` that an interrupted deploy left is journaled as ``cleanup``, not as
  a removal of the app.
- Each step is announced to ``on_step(app, step)`` before it runs, so tests can stop the process at
  any step; time is read from ``clock`` and waited with ``sleep``. ``on_step``, ``log`` and the
  journal are called from one deploy at a time, so lines stay whole and rows are written in turn.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from reconciler import pool
from reconciler.adapters.protocols import DockerEngine
from reconciler.core import canary
from reconciler.core.health import Gate, Sample, Verdict
from reconciler.core.model import AppSpec, ObservedContainer, ObservedState, Role, container_name
from reconciler.core.plan import (
    STALE_NEXT,
    STALE_RELEASE,
    Action,
    ActionKind,
    Plan,
    Resolution,
    Target,
    networks_of,
    port_waits,
)
from reconciler.core.proxy import CANARY, SERVER, Server
from reconciler.core.report import Outcome, Result
from reconciler.core.sealed import Sealed
from reconciler.core.stack import Condition, SecretSpec, SopsRef, docker_network, waves
from reconciler.core.steps import (
    ABANDONED,
    RULES,
    START_FIRST,
    STOP_FIRST,
    SWAP,
    Deployed,
    Released,
    Step,
    Undo,
    breaks_release,
    why,
)
from reconciler.deploy.job import ReleaseAbandoned, ReleaseFailed, run_release
from reconciler.deploy.prober import WATCH_STEP, Prober, route_port
from reconciler.deploy.proxy import Proxy
from reconciler.deploy.recovery import Recovery
from reconciler.deploy.rollback import NOT_A_VERDICT
from reconciler.deploy.rows import Rows
from reconciler.deploy.services import Services
from reconciler.deploy.swap import swap_in
from reconciler.errors import ContainerError, EnvFileError, ProxyError, UserError
from reconciler.state.journal import CLEANUP, UNVERIFIED, Journal, JournalResult

T = TypeVar("T")

ADOPTED = ".adopted"
PORT_WAIT = 60.0  # seconds a start waits for another app of its pass to free a host port (``port_waits``)


@dataclass(frozen=True)
class _Materials:
    """What the containers of one deploy are made with (``Applier._materials``)."""

    env: dict[str, str]
    networks: dict[str, list[str]]  # Docker network -> the app's extra aliases there
    secrets: list[tuple[SecretSpec, bytes]]


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
    warm: ObservedContainer | None = None  # start-first: the warm APP.prev this deploy goes back to (``_warm``)
    rolling: bool = False  # rollout: the new release takes a share of requests; the steps after CANARY wait
    materials: _Materials | None = None  # read once, for its release command and its new release

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
class Applier(Recovery):
    engine: DockerEngine
    journal: Journal
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    on_step: Callable[[str, str], None] = field(default=lambda app, step: None)
    log: Callable[[str], None] = field(default=lambda line: None)
    interrupted: Callable[[], bool] = field(default=lambda: False)
    on_sample: Callable[[str, float, Sample], None] = field(default=lambda cid, started_at, sample: None)  # ``heard``
    wall: Callable[[], float] = time.time  # epoch seconds, as the journal's times are
    author: str = ""
    parallel: int = 1  # deploys of a pass at once (the pass's setting); 1: one after another, in this thread
    proxy: Proxy | None = None  # routed apps' proxy (start-first deploys switch it)
    # The SOPS files of each commit a release of the pass comes from, as its read opened them.
    sealed: dict[str, Sealed] = field(default_factory=dict, repr=False)
    secrets_dir: Path | None = None  # where their file secrets are written for a container to mount (STATE/secrets)
    done: list[Outcome] = field(default_factory=list)  # the outcomes of the last ``apply`` so far
    deployed: list[Deployed | Released] = field(default_factory=list)  # its releases that passed, until undone
    begun: list[tuple[canary.Rollout, AppSpec]] = field(default_factory=list)  # its rollouts begun, until undone
    prober: Prober = field(init=False, repr=False)  # its gates are abandoned once ``interrupted()`` says so
    _rows: Rows = field(init=False, repr=False)
    _said: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _asking: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _newer: bool = field(default=False, init=False, repr=False)
    _asked_at: float = field(default=float("-inf"), init=False, repr=False)
    # The pass's apps whose start waits for others to free a host port, and each app's "its old one stopped".
    _waits: Mapping[str, frozenset[str]] = field(default_factory=dict, init=False, repr=False)
    _freed: dict[str, threading.Event] = field(default_factory=dict, init=False, repr=False)
    # Each app of the pass: its new release started; its deploy ended (``depends_on`` waits on them).
    _started: dict[str, threading.Event] = field(default_factory=dict, init=False, repr=False)
    _finished: dict[str, threading.Event] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rows = Rows(self.journal)
        self.prober = Prober(self.engine, clock=self.clock, sleep=self.sleep, stale=self._stale, heard=self.on_sample)
        self.services = Services(
            self.engine, self._rows, self.prober, author=self.author, clock=self.clock, sleep=self.sleep,
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

    # -- the plan --------------------------------------------------------------------------------

    def apply(self, plan: Plan, observed: ObservedState, *, atomic: bool = False) -> list[Outcome]:
        """Apply ``plan``, its apps concurrently; an ``EngineUnavailable`` stops it (``done`` says what was
        done before)."""
        slots: list[Outcome | None] = [None] * len(plan.actions)
        kept: list[Deployed | Released | None] = [None] * len(plan.actions)
        self.done, self.begun = [], []
        failed = threading.Event()  # atomic: a release of the commit failed, start nothing more

        def halted() -> bool:
            return self._stale() or (atomic and failed.is_set())

        def run_app(indices: Sequence[int]) -> None:
            app = plan.actions[indices[0]].app
            try:
                if halted():
                    return
                blocked = self._wait_for_dependencies(app, needs.get(app, {}), slots, by_app, observed, halted)
                if blocked:
                    action, (on, why) = plan.actions[indices[-1]], blocked
                    slots[indices[-1]] = Outcome(
                        app, action.kind, action.container, Result.SKIPPED, why, waiting_for=on
                    )
                    self._log(f"{app}: not deployed, {why}")
                    return
                for index in indices:
                    if halted():
                        return  # a newer commit, a shutdown, or a commit that is going back
                    outcome, kept[index] = self._run(plan.actions[index], observed, plan.revision)
                    slots[index] = outcome
                    if atomic and breaks_release(outcome):
                        failed.set()
            finally:
                self._freed[app].set()  # whatever became of it, nobody waits on it
                self._started[app].set()
                self._finished[app].set()

        by_app: dict[str, list[int]] = {}
        needs: dict[str, dict[str, Condition]] = {}
        for index, action in enumerate(plan.actions):
            by_app.setdefault(action.app, []).append(index)
            if action.target is not None:
                needs[action.app] = {
                    name: condition
                    for name, condition in action.target.spec.depends_on.items()
                    if plan.apps is None or name in plan.apps  # placed on another host: that host's to order
                }
        # Apps run one after another (parallel 1) cannot wait for each other: only concurrent ones do.
        self._waits = port_waits(plan, observed) if self.parallel > 1 else {}
        self._freed = {app: threading.Event() for app in by_app}
        self._started = {app: threading.Event() for app in by_app}
        self._finished = {app: threading.Event() for app in by_app}
        # Dependencies first: the pool starts its tasks in this order, so an app waits only on apps already under
        # way or done, whatever ``parallel`` is (no app holds a slot waiting for one that has none).
        ordered = [app for wave in waves({app: needs.get(app, {}) for app in by_app}) for app in wave]
        try:
            self._all([functools.partial(run_app, by_app[app]) for app in ordered])
        finally:
            self.done = [outcome for outcome in slots if outcome is not None]
            self.deployed = [done for done in kept if done is not None]
        culprits = [outcome.app for outcome in self.done if breaks_release(outcome)]
        if atomic and culprits:
            self.undo_deployed(f"rolled back with the rest of commit {plan.revision[:8]}: {', '.join(culprits)} failed")
        return self.done

    def _wait_for_dependencies(
        self,
        app: str,
        needs: Mapping[str, Condition],
        slots: Sequence[Outcome | None],
        by_app: Mapping[str, Sequence[int]],
        observed: ObservedState,
        halted: Callable[[], bool],
    ) -> tuple[str, str] | None:
        """Wait until each dependency of ``app`` is as its condition says: deployed in this pass (healthy: its gate
        passed; started: its new release started; completed: it exited 0), or, when this pass does not deploy it,
        already so. None when they all are; else the dependency and why (``waiting for db: ...``), and ``app`` is not
        deployed."""
        for name, condition in sorted(needs.items()):
            if name in by_app:
                event = self._started[name] if condition == "started" else self._finished[name]
                while not event.wait(WATCH_STEP):
                    if halted():
                        return name, f"waiting for {name}: the pass was stopped"
                outcome = next((slots[i] for i in reversed(by_app[name]) if slots[i] is not None), None)
                if self._finished[name].is_set() and (outcome is None or not outcome.result.ok):
                    why = outcome.message if outcome is not None and outcome.message else "it was not deployed"
                    return name, f"waiting for {name}: {why}"
                if condition != "completed":
                    continue  # its own deploy judged it: it started, or its gate passed
            elif condition != "completed" and observed.service(name) is not None:
                continue  # a Swarm service: Swarm keeps its tasks running (its gate judged its rollout)
            found = observed.named(name) if name not in by_app else None
            current = self.prober.inspect(found.id if found is not None else name)
            if condition == "completed":
                if current is None or current.running or current.exit_code != 0:
                    state = "it does not exist" if current is None else "it runs" if current.running else (
                        f"it exited {current.exit_code}"
                    )  # fmt: skip
                    return name, f"waiting for {name} to complete: {state}"
            elif current is None or not current.running or current.health == "unhealthy":
                state = (
                    "it does not exist"
                    if current is None
                    else "it is unhealthy"
                    if current.running
                    else "it does not run"
                )
                return name, f"waiting for {name}: {state}"
        return None

    def undo_deployed(self, reason: str) -> list[Outcome]:
        """Take back every release the last ``apply`` put in place, newest first (its commit failed
        elsewhere: another app, or another host of a push rollout's group); ``done`` then says so."""
        deployed, self.deployed = self.deployed, []
        taken_back = self._all([functools.partial(self._undo, done, reason) for done in reversed(deployed)])
        undone = {done.app: outcome for done, outcome in zip(reversed(deployed), taken_back, strict=True) if outcome}
        begun, self.begun = self.begun, []
        # A rollout the commit began is part of it: its new release goes, every request back on the old one.
        undone.update({record.app: self._undo_rollout(record, spec, reason) for record, spec in begun})
        self.done = [undone.get(outcome.app) or outcome for outcome in self.done]
        return [undone[app] for app in [*(done.app for done in deployed), *(r.app for r, _ in begun)] if app in undone]

    def _undo_rollout(self, record: canary.Rollout, spec: AppSpec, reason: str) -> Outcome:
        """Take back a rollout that this apply began, because another app of its commit failed."""
        app, problems = record.app, list[str]()
        self._step(app, Step.UNDO)
        self._attempt("take its share of requests back", lambda: self.weigh(app, "", spec, 0), problems)
        self._attempt("remove it", lambda: self.engine.remove(record.canary, container_name(app, Role.NEXT)), problems)
        self._rows.set_flag(canary.FLAG + app, None)
        said = f"{record.to_version}: {reason}; every request is back on {record.from_version}"
        result = JournalResult.ROLLED_BACK if not problems else JournalResult.FAILED
        self._rows.finish(record.entry, result=result, message="; ".join([said, *problems]))
        self._log(f"{app}: {said}")
        outcome = Result.ROLLED_BACK if not problems else Result.FAILED
        return Outcome(app, ActionKind.REPLACE, app, outcome, "; ".join([said, *problems]))

    def _all(self, tasks: Sequence[Callable[[], T]]) -> list[T | None]:
        """Run ``tasks``, at most ``parallel`` at once; their results in their order.

        An exception in one (an engine outage) starts no further task; it is raised once the tasks under
        way have ended, which the outage ends soon too. A task not run gives None.
        """
        return pool.run_all(tasks, parallel=self.parallel, name="deploy")

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
                env = self._env(action.target)
                return self.services.deploy(action, observed.service(action.container), revision, env)
            return self._deploy(action, observed, revision)
        except NOT_A_VERDICT:
            raise  # not this app's failure: the pass stops, and the next one resumes the journaled row
        except UserError as exc:  # what the engine refused of this app (an outage is raised, and stops the pass)
            return Outcome(action.app, action.kind, action.container, Result.FAILED, str(exc)), None

    def _remove(self, action: Action, observed: ObservedState, revision: str) -> Outcome:
        container = observed.named(action.container)
        if container is None or not container.managed:
            return Outcome(action.app, action.kind, action.container, Result.SKIPPED, "not ours or already gone")
        if action.reasons[:1] in ((STALE_NEXT,), (STALE_RELEASE,)):
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
        except UserError as exc:  # an outage is raised: the row stays unfinished, the next pass starts and gates it
            if self.prober.inspect(container.id) is None:
                return self._gone(action, entry, container)
            self._rows.finish(entry, result=JournalResult.FAILED, message=str(exc))
            raise
        gate = self.prober.gate(container.id, spec.gate)
        if gate.verdict is Verdict.FAILED and self.prober.inspect(container.id) is None:
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
            cause = f"it stopped after it went live and did not come back healthy: {gate.reason}"
            return self._roll_back(action, entry, container.id, previous, failed, cause)
        self._rows.finish(entry, result=JournalResult.FAILED, message=gate.reason)
        return Outcome(app, action.kind, action.container, Result.FAILED, f"started, but {gate.reason}")

    def _gone(self, action: Action, entry: int, container: ObservedContainer) -> Outcome:
        """A container removed while this pass started it (``docker rm -f``): no verdict on its release; the
        next pass, which sees it gone, deploys it again."""
        said = f"{container.name} was removed while this pass started it; the next pass deploys it again"
        self._rows.finish(entry, result=JournalResult.INTERRUPTED, message=said)
        self._log(said)
        return Outcome(action.app, action.kind, action.container, Result.SUPERSEDED, said)

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
        dying = current is not None and current.managed and warm and self.prober.dying(current.id)
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
        deploy.warm = self._warm(deploy)
        for step in steps:
            if not self._needed(step, deploy):
                continue
            try:
                if steps is STOP_FIRST and step in SWAP:
                    self._swap(deploy)
                else:
                    self._announce(deploy, step)
                    self._do(step, deploy)
                if deploy.started_at and deploy.reached in (Step.START_NEW, Step.START_NEXT) and app in self._started:
                    self._started[app].set()  # its new release runs: ``depends_on: {APP: started}`` may go on
            except NOT_A_VERDICT:
                raise  # cut short, not failed: the next pass finds the unfinished row and resumes it (RULES)
            except ReleaseAbandoned as exc:
                self._rows.finish(entry, result=JournalResult.SUPERSEDED, message=str(exc))
                return Outcome(app, action.kind, app, Result.SUPERSEDED, f"{spec.version}: {exc}"), None
            except UserError as exc:
                return self._take_back(deploy, deploy.reached, str(exc), held=isinstance(exc, ReleaseFailed)), None
        gate = deploy.gate
        assert gate is not None
        if deploy.rolling:
            assert spec.rollout is not None
            was = f"{fallback.version or '?'} -> " if fallback else ""
            share = spec.rollout.steps[0].weight
            said = f"{was}{spec.version}: rollout step 1/{len(spec.rollout.steps)}, {share}% of requests"
            return Outcome(app, action.kind, app, Result.ROLLING_OUT, said), None
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

    def _needed(self, step: Step, deploy: _Deploy) -> bool:
        if deploy.gate is not None and deploy.gate.verdict is not Verdict.PASSED:
            return False  # start-first: a release that did not pass its gate never takes traffic
        if deploy.rolling:
            return False  # its rollout carries it on from here (``end_rollout``)
        if step is Step.CANARY:
            # A rollout weighs a new release against the one that serves: a first release, a switch back to
            # the warm one (a rollback), or an app whose release under its name does not serve, switch at once.
            serving = deploy.serving
            return (
                deploy.spec.rollout is not None
                and self.proxy is not None
                and not deploy.reused
                and serving is not None
                and serving is deploy.current
            )
        if step is Step.PULL:
            return not deploy.target.resolution.image_id and not deploy.reused
        if step is Step.RELEASE:
            # A switch back to the warm release runs nothing: its command ran when it was deployed.
            return deploy.spec.release is not None and deploy.warm is None
        if step is Step.START_NEXT:
            return not deploy.reused
        if step in SWAP:
            return not deploy.swapped
        return True

    def _env(self, target: Target) -> dict[str, str]:
        """The env of a container of ``target``: its env_file read now (or its SOPS file as its commit's read
        opened it), then its env (which wins)."""
        spec = target.spec
        if isinstance(spec.env_file, SopsRef):
            env = self._sealed(target).env(spec.env_file)
            if env is None:
                raise EnvFileError(f"env_file {spec.env_file_name}: not opened (no key here opens it)")
            return {**env, **spec.env}
        return {**(self.engine.files.read(spec.env_file) if spec.env_file else {}), **spec.env}

    def _sealed(self, target: Target) -> Sealed:
        return self.sealed.get(target.revision) or Sealed()

    def _secret(self, target: Target, secret: SecretSpec) -> bytes:
        if isinstance(secret.source, SopsRef):
            data = self._sealed(target).material(secret.source)
            if data is None:
                raise EnvFileError(f"secret {secret.target} ({secret.source.shown}): not opened (no key here)")
            return data
        return self.engine.files.secret(secret.source)

    def _materials(self, deploy: _Deploy) -> _Materials:
        """What the containers of a deploy (its release command's, its new release's) are made with, read once:
        its env, its Docker networks with their aliases, its secrets' bytes. A file that cannot be read is an
        ``EnvFileError``."""
        if deploy.materials is None:
            spec = deploy.spec
            networks = {
                docker_network(self.engine.instance, name): aliases for name, aliases in networks_of(spec).items()
            }
            secrets = [(secret, self._secret(deploy.target, secret)) for secret in spec.secrets]
            deploy.materials = _Materials(self._env(deploy.target), networks, secrets)
        return deploy.materials

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
            made = self._materials(deploy)
            deploy.new_id = self.engine.create(
                deploy.target, container_name(app, Role.NEXT), env=made.env, networks=made.networks,
                secrets=made.secrets, files_dir=self.secrets_dir,
            )  # fmt: skip
        elif step is Step.RELEASE:
            made = self._materials(deploy)
            took = run_release(
                self.engine, deploy.target, env=made.env, networks=made.networks, secrets=made.secrets,
                clock=self.clock, sleep=self.sleep, interrupted=self._stale, files_dir=self.secrets_dir,
            )  # fmt: skip
            self._log(f"{app}: release command of {spec.version} done in {took:.1f}s")
        elif step in (Step.GATE, Step.GATE_NEXT):
            # A warm release served and stayed up: one good answer is its fresh gate.
            gate = spec.gate.one_answer() if deploy.reused else spec.gate
            deploy.gate = self.prober.gate(
                deploy.new_id, gate, started_at=deploy.started_at, completes=spec.completes and not deploy.reused
            )
        elif step is Step.START_NEXT:
            self.engine.start(deploy.new_id, container_name(app, Role.NEXT))
        elif step is Step.CANARY:
            self._begin_rollout(deploy)
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

    def _warm(self, deploy: _Deploy) -> ObservedContainer | None:
        """The warm previous release, when the deploy is a commit back to it (it is then gated again and switched
        to, not made anew). Only a warm one: when APP does not run, APP.prev is what serves."""
        warm = deploy.observed.named(container_name(deploy.app, Role.PREVIOUS))
        if (
            deploy.spec.route is None
            or warm is None
            or not warm.managed
            or warm.state != "running"
            or warm.spec_hash != deploy.target.spec_hash
            or deploy.serving is warm
            or (self.proxy is not None and warm.id in self.proxy.cooling)  # its window passed: it is stopping
        ):
            return None
        return warm

    def _reuse_warm(self, deploy: _Deploy) -> bool:
        """A commit back to the warm previous release (``deploy.warm``): it takes the new release's place."""
        app, warm = deploy.app, deploy.warm
        if warm is None:
            return False
        deploy.new_id, deploy.reused = warm.id, True
        deploy.started_at = self.clock()
        self._log(f"{app}: {warm.version} is warm: switching back to it after a fresh gate")
        return True

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
        if current is not None and current.managed and warm and (deploy.dying or self.prober.dying(current.id)):
            assert older is not None
            problems: list[str] = []
            self._keep_failed(app, current.id, deploy.spec, problems)
            if problems:
                raise ContainerError("; ".join(problems))
            self._log(f"{app}: {current.version or current.name} did not run: kept stopped as "
                      f"{container_name(app, Role.FAILED)}; the warm {older.name} stays")  # fmt: skip
            deploy.dying = deploy.set_aside = True  # the warm one is what drains (and stays warm)
            return
        found = self.prober.inspect(current.id) if current is not None else None
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

    def _begin_rollout(self, deploy: _Deploy) -> None:
        """The new release (passed its gate) takes the first step's share of requests beside the old one. Its
        record is journaled before the proxy moves, so that a crash after it resumes this step."""
        app, spec, proxy = deploy.app, deploy.spec, self.proxy
        assert spec.rollout is not None and proxy is not None and deploy.current is not None
        counted = proxy.counters(app)
        now = self.wall()
        record = canary.Rollout(
            app=app, entry=deploy.entry, revision=deploy.target.revision, spec_hash=deploy.target.spec_hash,
            canary=deploy.new_id, from_version=deploy.current.version, to_version=spec.version, started=now,
            since=now, base_canary=counted.get(CANARY, canary.Counters()),
            base_stable=counted.get(SERVER, canary.Counters()),
        )  # fmt: skip
        self._rows.set_flag(canary.FLAG + app, record.to_json())
        self.begun.append((record, spec))
        self.weigh(app, deploy.new_id, spec, spec.rollout.steps[0].weight)
        self._rows.finish(deploy.entry, result=JournalResult.ROLLING_OUT, message=canary.lines(record, spec)[0])
        deploy.rolling = True
        self._log(f"{app}: {spec.version} takes {spec.rollout.steps[0].weight}% of requests (its rollout's step 1)")

    def weigh(self, app: str, container_id: str, spec: AppSpec, weight: int) -> None:
        """``weight`` percent of the route's requests to the release ``container_id`` (``""``: none, at once)."""
        assert spec.route is not None and self.proxy is not None
        if not container_id:
            self.proxy.weigh(app, None, 0)
            return
        found = self.prober.inspect(container_id)
        ip = found.networks.get(self.proxy.network) if found is not None else None
        if found is None or not ip:
            raise ContainerError(f"{app}: the new release has no address on the proxy's network")
        self.proxy.weigh(app, Server(found.name, ip, route_port(found, spec.route.port)), weight)

    def end_rollout(
        self, record: canary.Rollout, spec: AppSpec, observed: ObservedState, decision: canary.Decision
    ) -> Outcome:
        """End ``record``'s rollout as ``decision`` says: promoted (the steps after CANARY: the switch, the old
        release set aside and kept warm), aborted (all requests back on the old release at once, the new one
        kept stopped as APP.failed and held), or superseded (its new release removed: a newer commit follows)."""
        app = record.app
        released = spec.model_copy(update={"version": record.to_version})
        target = Target(app, released, Resolution(ref=""), {}, record.revision)
        current = observed.named(app)
        found = observed.named(container_name(app, Role.NEXT))
        new_id = record.canary if found is not None and found.id == record.canary else ""
        action = Action(ActionKind.REPLACE, app, app, target=target)
        deploy = _Deploy(action, target, observed, record.entry, current, current, new_id=new_id, reached=Step.CANARY)
        move = decision.move
        if move is canary.Move.PROMOTE:
            try:
                for step in (Step.SWITCH, Step.KEEP_OLD, Step.RENAME_NEW, Step.DRAIN):
                    self._announce(deploy, step)
                    self._do(step, deploy)
                    if step is Step.SWITCH:
                        self.weigh(app, "", spec, 0)  # it serves alone under live: the canary server goes out
            except NOT_A_VERDICT:
                raise
            except UserError as exc:
                self._rows.set_flag(canary.FLAG + app, None)
                return replace(self._take_back(deploy, deploy.reached, str(exc)), revision=record.revision)
            self._rows.finish(record.entry, result=JournalResult.SUCCEEDED, message=decision.reason)
            self._rows.set_flag(canary.FLAG + app, None)
            self._log(f"deployed {app} {record.from_version} -> {record.to_version} ({decision.reason})")
            said = f"{record.from_version} -> {record.to_version}: {decision.reason}"
            return Outcome(app, action.kind, app, Result.APPLIED, said, revision=record.revision)
        self.weigh(app, "", spec, 0)  # every request back on the release that served before the rollout
        if move is canary.Move.SUPERSEDE:
            if new_id:
                self.engine.remove(new_id, container_name(app, Role.NEXT))
            said = f"the rollout of {record.to_version} ended at step {record.step + 1}: {decision.reason}"
            self._rows.finish(record.entry, result=JournalResult.INTERRUPTED, message=said)
            self._rows.set_flag(canary.FLAG + app, None)
            self._log(f"{app}: {said}")
            return Outcome(app, action.kind, app, Result.SUPERSEDED, said, revision=record.revision)
        outcome = self._set_new_aside(deploy, Step.CANARY, decision.reason)
        self._rows.set_flag(canary.FLAG + app, None)
        return replace(outcome, revision=record.revision)

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
        except UserError as exc:
            self._log(f"{deploy.app}: the old release {old.version or old.name} was not stopped after drain: {exc}")

    @staticmethod
    def _keep_as(app: str, current: ObservedContainer) -> str:
        """Where the running container is kept once set aside: APP.prev, or APP.adopted when not ours."""
        return container_name(app, Role.PREVIOUS) if current.managed else app + ADOPTED

    def _take_back(self, deploy: _Deploy, step: Step, reason: str, *, held: bool = False) -> Outcome:
        """What a failure at ``step`` leaves to undo, as ``RULES`` says; ``reason`` is why it failed. ``held``: the
        release itself failed (its release command), so the agent holds it until a new commit."""
        app, action = deploy.app, deploy.action
        undo = RULES[step].undo
        if undo is Undo.SET_ASIDE:
            return self._set_new_aside(deploy, step, reason)
        if undo is Undo.ROLL_BACK:
            said = why(step, reason)
            return self._roll_back(action, deploy.entry, deploy.new_id, deploy.fallback, deploy.spec, said)
        if undo is Undo.DISCARD and deploy.new_id:
            self.engine.remove(deploy.new_id, container_name(app, Role.NEXT))
        self._rows.finish(deploy.entry, result=JournalResult.FAILED, message=reason)
        said = f"{reason}; {self._left_as_it_was(deploy.current)}"
        return Outcome(app, action.kind, app, Result.FAILED, said, release_failed=held)

    def _set_new_aside(self, deploy: _Deploy, step: Step, reason: str) -> Outcome:
        """Start-first: the new release never served (or served for the instant of a refused switch): the
        route is put back on what served, and the new release is kept stopped as APP.failed."""
        app, spec = deploy.app, deploy.spec
        problems: list[str] = []
        cause = why(step, reason)
        self._rows.finish(deploy.entry, result=JournalResult.ROLLING_BACK, message=cause)
        self._step(app, Step.ROLL_BACK)
        old = deploy.serving
        if step is Step.SWITCH and self.proxy is not None:
            # The switch may have half happened (an address set, not enabled): the route goes back.
            self._attempt("switch back", lambda: self._switch_back_to(app, old, spec), problems)
        if deploy.new_id:
            self._keep_failed(app, deploy.new_id, spec, problems)
        kept = f"; kept stopped as {container_name(app, Role.FAILED)}" if deploy.new_id else ""
        serving = (old.version or old.name) if old is not None else "nothing"
        moved = {Step.SWITCH: "the route is back on", Step.CANARY: "every request is back on"}.get(
            step, "traffic never moved:"
        )
        said = f"{cause}; {moved} {serving} serves on{kept}"
        result = JournalResult.ROLLED_BACK if not problems else JournalResult.FAILED
        self._rows.finish(deploy.entry, result=result, message="; ".join([said, *problems]))
        self._log(f"deploy of {app} {spec.version} failed ({cause}); {serving} serves on")
        outcome = Result.ROLLED_BACK if old is not None and not problems else Result.FAILED
        return Outcome(app, deploy.action.kind, app, outcome, f"{spec.version} failed: {said}", release_failed=True)
