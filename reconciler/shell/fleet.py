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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from reconciler.core import fleet
from reconciler.core.model import DesiredState, Role
from reconciler.core.plan import Plan
from reconciler.errors import ReconcileError, UserError
from reconciler.shell.converge import ALL_HOSTS, Settings, plan_against, read_desired
from reconciler.shell.docker import Engine, connect

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0  # seconds per host


@dataclass(frozen=True)
class Unanswered:
    """Why a host gave no answer (its engine is down, a login hung, the file gives it no engine)."""

    reason: str


@dataclass(frozen=True)
class HostAnswer(Generic[T]):
    """One host's answer: its plan or what runs on it, or ``error`` (then ``answer`` is None)."""

    host: str
    engine: str
    answer: T | None
    error: str = ""


@dataclass(frozen=True)
class Running:
    """One app on one host, as its container's labels say."""

    app: str
    version: str
    commit: str
    digest: str
    state: str


def fleet_desired(settings: Settings) -> DesiredState:
    """The committed file, every app (not placed); a ``UserError`` when it declares no ``hosts:``."""
    desired = read_desired(replace(settings, host=ALL_HOSTS))
    if not desired.hosts:
        raise UserError(f"--all-hosts: {desired.path} declares no hosts:")
    return desired


def _engine_of(desired: DesiredState, host: str, settings: Settings, timeout: float) -> Engine:
    assert desired.hosts is not None
    address = desired.hosts[host].engine
    if not address:
        raise UserError(f"hosts.{host} has no engine: (how to reach it from here)")
    return connect(address, instance=settings.instance, timeout=timeout)


def ask_each(hosts: list[str], ask: Callable[[str], T], *, parallel: int, timeout: float) -> dict[str, T | Unanswered]:
    """``ask(host)`` for every host, ``parallel`` at once, each waited for at most ``timeout`` seconds from
    its start; a host that does not answer in time (or raises) gives ``Unanswered``. A host past its time
    gives its slot up: the hosts after it are not held up."""
    results: dict[str, T | Unanswered] = {}
    slots = threading.Semaphore(max(1, parallel))
    lock = threading.Lock()
    started: dict[str, float] = {}
    done: set[str] = set()

    def finish(host: str, answer: T | Unanswered) -> None:
        with lock:
            if host in done:
                return
            done.add(host)
            results[host] = answer
        slots.release()

    def run(host: str) -> None:
        slots.acquire()
        with lock:
            started[host] = time.monotonic()
        try:
            answer: T | Unanswered = ask(host)
        except ReconcileError as exc:
            answer = Unanswered(str(exc).splitlines()[0])
        except Exception as exc:  # a host's trouble is reported with its name; the others go on
            answer = Unanswered(f"{type(exc).__name__}: {exc}")
        finish(host, answer)

    for host in hosts:
        threading.Thread(target=run, args=(host,), name=f"host-{host}", daemon=True).start()
    while True:
        with lock:
            if len(done) == len(hosts):
                return results
            late = [h for h, at in started.items() if h not in done and time.monotonic() - at >= timeout]
        for host in late:
            finish(host, Unanswered(f"did not answer within {timeout:g}s"))
        time.sleep(0.01)


def _ask_hosts(desired: DesiredState, ask: Callable[[str], T], *, parallel: int, timeout: float) -> list[HostAnswer[T]]:
    """``ask`` every host of the file (``ask_each``), the answers in host order."""
    assert desired.hosts is not None
    hosts = sorted(desired.hosts)
    answers = ask_each(hosts, ask, parallel=parallel, timeout=timeout)
    found: list[HostAnswer[T]] = []
    for host in hosts:
        engine, answer = desired.hosts[host].engine or "", answers[host]
        if isinstance(answer, Unanswered):
            found.append(HostAnswer(host, engine, None, answer.reason))
        else:
            found.append(HostAnswer(host, engine, answer))
    return found


def preview(
    settings: Settings, *, parallel: int, timeout: float = DEFAULT_TIMEOUT
) -> tuple[DesiredState, list[HostAnswer[Plan]]]:
    """Every host's drift, as ``reconcile --dry-run --host HOST`` on that host would show it."""
    desired = fleet_desired(settings)

    def ask(host: str) -> Plan:
        engine = _engine_of(desired, host, settings, timeout)
        return plan_against(engine, fleet.placed(desired, host), settings)[0]

    return desired, _ask_hosts(desired, ask, parallel=parallel, timeout=timeout)


def status(
    settings: Settings, *, parallel: int, timeout: float = DEFAULT_TIMEOUT
) -> tuple[DesiredState, list[HostAnswer[tuple[Running, ...]]]]:
    """What runs on every host, from the labels of our containers on each engine."""
    desired = fleet_desired(settings)

    def ask(host: str) -> tuple[Running, ...]:
        observed = _engine_of(desired, host, settings, timeout).observe()
        return tuple(
            Running(c.app or "", c.version, c.commit[:8], c.digest, c.state)
            for c in sorted(observed.containers, key=lambda c: c.name)
            if c.managed and c.app and c.role is Role.CURRENT
        )

    return desired, _ask_hosts(desired, ask, parallel=parallel, timeout=timeout)
