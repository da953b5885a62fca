"""The whole fleet from one workstation or CI: every host's drift and status, through each host's engine.

Guarantees:
- Read-only: nothing is locked, pulled or changed on any host; each host is asked through the
  ``engine:`` the file gives it, at most ``parallel`` at once.
- A host that does not answer within ``timeout`` (an engine that is down, an ssh login that hangs) is
  reported as such and never holds up the others: each host is asked on a daemon thread, and the
  answer is waited for at most ``timeout`` after the host's turn came.
- A host's drift is its placed desired state (``core.fleet.placed``) against its own engine, planned as
  a one-host ``reconcile --dry-run`` plans it; its status comes from the labels of our containers on
  its engine alone (app, version, commit, digest): no central server.
- A push rollout (``roll_out``) converges its groups (``core.rollout``) in order, the hosts of a group
  ``parallel`` at once, each as a one-host pass of the whole commit would (health-gated, a failed release
  takes its host's others back). A group passes when every host of it converged; otherwise every host of
  it that did is taken back to what it ran before, and no later group is touched. Each host's journal
  and lock are its own, under ``STATE/hosts/HOST``, held until its group's verdict.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from reconciler import pool
from reconciler.adapters.docker import connect
from reconciler.adapters.protocols import DockerEngine
from reconciler.converge.run import ALL_HOSTS, PassResult, Settings, apply_pass, applying, plan_against, read_desired
from reconciler.converge.sealed import Mode
from reconciler.core import fleet, rollout
from reconciler.core.fleet import AppOnHost, HostAnswer, HostPush, Pushed, Running, Unanswered
from reconciler.core.model import DesiredState, Role
from reconciler.core.plan import Plan
from reconciler.core.report import Result
from reconciler.errors import EngineUnavailable, ReconcileError, UserError
from reconciler.state.crash import keep_traceback
from reconciler.telemetry import scrub

if TYPE_CHECKING:
    from reconciler.deploy.applier import Applier

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0  # seconds per host
# seconds per engine call once a push reached its host: a pull or a stop may outlast the host timeout
CALL_TIMEOUT = 120.0


def fleet_desired(settings: Settings, *, sops: Mode = Mode.OPEN) -> DesiredState:
    """The committed file, every app (not placed), its SOPS files opened as ``sops`` says; a ``UserError`` when
    it declares no ``hosts:``."""
    desired = read_desired(replace(settings, host=ALL_HOSTS), sops=sops)
    if not desired.hosts:
        raise UserError(f"--all-hosts: {desired.path} declares no hosts:")
    return desired


def _engine_of(
    desired: DesiredState, host: str, settings: Settings, timeout: float, *, calls: float | None = None
) -> DockerEngine:
    assert desired.hosts is not None
    address = desired.hosts[host].engine
    if not address:
        raise UserError(f"hosts.{host} has no engine: (how to reach it from here)")
    return connect(address, instance=settings.instance, timeout=timeout, calls=calls)


def ask_each(
    hosts: list[str], ask: Callable[[str], T], *, parallel: int, timeout: float, state_dir: Path | None = None
) -> dict[str, T | Unanswered]:
    """``ask(host)`` for every host, ``parallel`` at once, each waited for at most ``timeout`` seconds from
    its start; a host that does not answer in time (or raises) gives ``Unanswered``. A host past its time
    gives its slot up: the hosts after it are not held up (``pool.ask_all``). A bug's traceback is kept
    under ``state_dir``."""
    answers = pool.ask_all(hosts, ask, parallel=parallel, timeout=timeout, name="host")
    results: dict[str, T | Unanswered] = {}
    for host, answer in answers.items():
        if answer is pool.LATE:
            results[host] = Unanswered(f"did not answer within {timeout:g}s")
        elif isinstance(answer, Exception):  # a host's trouble is reported with its name; the others go on
            results[host] = Unanswered(_reason(answer, state_dir))
        else:
            results[host] = answer
    return results


def _ask_hosts(
    desired: DesiredState, ask: Callable[[str], T], *, parallel: int, timeout: float, state_dir: Path
) -> list[HostAnswer[T]]:
    """``ask`` every host of the file (``ask_each``), the answers in host order."""
    assert desired.hosts is not None
    hosts = sorted(desired.hosts)
    answers = ask_each(hosts, ask, parallel=parallel, timeout=timeout, state_dir=state_dir)
    found: list[HostAnswer[T]] = []
    for host in hosts:
        engine, answer = desired.hosts[host].engine or "", answers[host]
        if isinstance(answer, Unanswered):
            found.append(HostAnswer(host, engine, None, answer.reason))
        else:
            found.append(HostAnswer(host, engine, answer))
    return found


def preview(
    settings: Settings, *, parallel: int, timeout: float = DEFAULT_TIMEOUT, spec: str | None = None
) -> tuple[DesiredState, list[list[str]] | None, list[HostAnswer[Plan]]]:
    """Every host's drift, as ``reconcile --dry-run --host HOST`` on that host would show it; with ``spec``,
    also the groups a push would take (checked before any host is asked)."""
    desired = fleet_desired(settings, sops=Mode.PREVIEW)
    order = rollout_order(desired, spec) if spec is not None else None

    def ask(host: str) -> Plan:
        engine = _engine_of(desired, host, settings, timeout)
        return plan_against(engine, fleet.placed(desired, host), settings)[0]

    return desired, order, _ask_hosts(desired, ask, parallel=parallel, timeout=timeout, state_dir=settings.state_dir)


def status(
    settings: Settings, *, parallel: int, timeout: float = DEFAULT_TIMEOUT
) -> tuple[DesiredState, list[HostAnswer[tuple[AppOnHost, ...]]]]:
    """Every host's apps, from the labels of our containers on its engine, against what the file places."""
    desired = fleet_desired(settings, sops=Mode.PARSE)
    running = _running_on(desired, settings, timeout)

    def ask(host: str) -> tuple[AppOnHost, ...]:
        found = {r.app: r for r in running(host)}
        wanted = {app: spec.version for app, spec in fleet.placed(desired, host).apps.items()}
        return tuple(AppOnHost(app, wanted.get(app), found.get(app)) for app in sorted(found.keys() | wanted.keys()))

    return desired, _ask_hosts(desired, ask, parallel=parallel, timeout=timeout, state_dir=settings.state_dir)


def _running_on(desired: DesiredState, settings: Settings, timeout: float) -> Callable[[str], tuple[Running, ...]]:
    def ask(host: str) -> tuple[Running, ...]:
        observed = _engine_of(desired, host, settings, timeout).observe()
        return tuple(
            Running(c.app or "", c.version, c.commit[:8], c.digest, c.state)
            for c in sorted(observed.containers, key=lambda c: c.name)
            if c.managed and c.app and c.role is Role.CURRENT
        )

    return ask


def running(
    desired: DesiredState, settings: Settings, *, parallel: int, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, tuple[Running, ...] | Unanswered]:
    """What runs on every host of ``desired`` (as ``status`` reads it), by host name."""
    assert desired.hosts is not None
    ask = _running_on(desired, settings, timeout)
    return ask_each(sorted(desired.hosts), ask, parallel=parallel, timeout=timeout, state_dir=settings.state_dir)


# -- push mode -------------------------------------------------------------------------------------


def host_state_dir(state_dir: Path, host: str) -> Path:
    """A pushed host's journal and lock, on the machine that pushes."""
    return state_dir / "hosts" / host


def roll_out(
    settings: Settings,
    spec: str,
    *,
    parallel: int,
    timeout: float = DEFAULT_TIMEOUT,
    say: Callable[[str], None] = lambda line: None,
) -> tuple[DesiredState, list[list[str]], list[HostPush]]:
    """Converge the fleet group by group (``spec`` as ``--rollout``): the file, the groups, and every host's
    part, in host order. Ctrl-C stops it: no step, host or group starts after it, and the report stands."""
    desired = fleet_desired(settings)
    order = rollout_order(desired, spec)
    assert desired.hosts is not None
    found = {host: HostPush(host, h.engine or "", 0, Pushed.OUTSIDE) for host, h in desired.hosts.items()}
    stop = threading.Event()
    stopped = False
    for number, group in enumerate(order, start=1):
        for host in group:
            found[host].group = number
        if stopped:
            for host in group:
                found[host].state = Pushed.NOT_STARTED
            continue
        say(f"group {number}/{len(order)}: {', '.join(group)}")
        _push_group(desired, group, settings, found, stop, parallel=parallel, timeout=timeout, say=say)
        stopped = stop.is_set() or not all(found[host].ok for host in group)
    return desired, order, [found[host] for host in sorted(found)]


def rollout_order(desired: DesiredState, spec: str) -> list[list[str]]:
    """The groups of ``spec`` over the file's hosts; a ``UserError`` for a term that selects none."""
    try:
        return rollout.groups(spec, desired.hosts or {})
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _push_group(
    desired: DesiredState,
    group: list[str],
    settings: Settings,
    found: dict[str, HostPush],
    stop: threading.Event,
    *,
    parallel: int,
    timeout: float,
    say: Callable[[str], None],
) -> None:
    """Converge every host of ``group``; if one did not, take every host of it back. Each host's lock and
    journal are held until then."""
    appliers: dict[str, Applier] = {}
    guard = threading.Lock()
    with contextlib.ExitStack() as held:

        def push(host: str) -> None:
            part = found[host]
            if stop.is_set():
                part.state = Pushed.NOT_STARTED
                return
            try:
                engine = _engine_of(desired, host, settings, timeout, calls=max(timeout, CALL_TIMEOUT))
                mine = fleet.placed(desired, host)
                using = applying(
                    engine, host_state_dir(settings.state_dir, host), mine, settings, interrupted=stop.is_set
                )
                applier = using.__enter__()  # outside ``guard``: a host that waits for its lock holds up no other
                with guard:
                    held.push(using)  # released once the group's verdict is in
                    appliers[host] = applier
                result: PassResult = apply_pass(applier, mine, settings, atomic=True)
            except Exception as exc:  # one host's trouble is its own: its group goes back, nothing is raised
                done = appliers.get(host)
                part.outcomes = list(done.done) if done is not None else []
                part.state = Pushed.UNREACHABLE if isinstance(exc, EngineUnavailable) else Pushed.FAILED
                part.error = _reason(exc, settings.state_dir)
            else:
                part.outcomes = result.outcomes
                broken = [f"{o.app} {o.result}" for o in result.outcomes if not o.result.ok]
                if not result.ok:
                    part.state, part.error = Pushed.FAILED, result.proxy_error or ", ".join(broken)
                else:
                    part.state = Pushed.CONVERGED if result.outcomes else Pushed.IN_SYNC
            if stop.is_set() and part.state is not Pushed.IN_SYNC:
                part.state = Pushed.INTERRUPTED
            say(f"  {host}: {part.state}" + (f": {part.error}" if part.error else ""))

        def interrupted() -> None:
            # The gates under way are abandoned at their next look (``Applier.interrupted``): a release
            # that was not judged stays, and the next run's pass judges it (``verify_unfinished``).
            stop.set()
            say("interrupted: no further step, host or group is started")

        pool.run_all(
            [functools.partial(push, host) for host in group], parallel=parallel, name="push", on_interrupt=interrupted
        )
        failed = [host for host in group if not found[host].ok]
        if not failed or stop.is_set():
            return
        reason = f"rolled back with the rest of group {found[group[0]].group}: {', '.join(failed)} failed"

        def take_back(host: str) -> None:
            part = found[host]
            try:
                undone = appliers[host].undo_deployed(reason)
            except Exception as exc:  # reported with the host: it still runs what it converged to
                part.state, part.error = Pushed.FAILED, f"could not be rolled back: {_reason(exc, settings.state_dir)}"
                say(f"  {host}: {part.state}: {part.error}")
                return
            part.outcomes = list(appliers[host].done)
            if not undone:
                return
            if any(outcome.result is not Result.ROLLED_BACK for outcome in undone):
                part.state = Pushed.FAILED
                part.error = "; ".join(f"{o.app}: {o.message}" for o in undone if o.result is not Result.ROLLED_BACK)
            elif part.ok:
                part.state = Pushed.TAKEN_BACK
            say(f"  {host}: {part.state}")

        # Every host of the group, the failed ones too: a host that failed for another reason than a
        # release (an app that could not be resolved, an outage after its deploys) keeps none of them.
        back = [host for host in group if host in appliers]
        pool.run_all([functools.partial(take_back, host) for host in back], parallel=parallel, name="back")


def _reason(exc: BaseException, state_dir: Path | None) -> str:
    """One line of what went wrong, secrets masked; a bug (not one of our errors) names its type, and its
    traceback is kept under ``state_dir`` (``state.crash``), the line saying where."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, ReconcileError):
        return scrub.scrub(text)
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    where = keep_traceback(exc, state_dir) if state_dir is not None else ""
    return scrub.scrub(f"{text} ({where})" if where else text)
