"""A fleet from one file: which apps a host runs (``hosts:`` and each app's ``on:``). Pure.

Guarantees:
- A file without ``hosts:`` is one host, as before: every app runs, wherever the agent runs; there, a
  service's (``replicas:``) ``on:`` places its tasks on the swarm's nodes (``core.swarm``), not on hosts.
- With ``hosts:``, an app without ``on:`` runs on every host; ``on: [name, ...]`` on those hosts;
  ``on: {label: value, ...}`` on the hosts whose labels hold every pair.
- ``placed`` gives the desired state of one host: only its apps, so that a host's pass deploys,
  heals and prunes exactly what is placed on it (an app moved to another host is pruned here).
- An app's ``canary:`` picks some of its hosts (same forms as ``on:``); on those, ``placed`` gives the
  app ``canary.version`` in place of ``version``, so the agent, ``reconcile --host`` and the fleet's
  preview and status all see each host's own version. ``canary`` is kept on the placed app (the
  shell asks the registry for ``stable`` on the other hosts); a canary host's version is never ``stable``.
- ``problems`` names every selector that cannot place its app (an unknown host, with the nearest name;
  labels that no host has) and every ``canary.on`` that picks none of the app's hosts, a host that is
  not declared or one the app does not run on, as paths into the file for the validator to place at
  FILE:LINE:COL.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from reconciler.core.model import AppSpec, DesiredState, HostSpec
from reconciler.core.report import Outcome

Selector = Mapping[str, str] | tuple[str, ...]

Path = tuple[str | int, ...]


def matches(selector: Selector, name: str, host: HostSpec) -> bool:
    """Whether an ``on:`` (host names, or labels that must all match) picks the host ``name``."""
    if isinstance(selector, tuple):
        return name in selector
    return all(host.labels.get(key) == value for key, value in selector.items())


def selects(spec: AppSpec, name: str, host: HostSpec) -> bool:
    """Whether ``spec`` runs on the host ``name``."""
    return spec.on is None or matches(spec.on, name, host)


def is_canary(spec: AppSpec, name: str, host: HostSpec) -> bool:
    """Whether the host ``name`` runs ``spec``'s candidate (``canary.version``) rather than its ``version``."""
    return spec.canary is not None and selects(spec, name, host) and matches(spec.canary.on, name, host)


def on_host(spec: AppSpec, name: str, host: HostSpec) -> AppSpec:
    """``spec`` as the host ``name`` runs it: the canary's version on a canary host, the app's elsewhere."""
    if spec.canary is not None and is_canary(spec, name, host):
        return spec.model_copy(update={"version": spec.canary.version})
    return spec


def hosts_of(spec: AppSpec, hosts: Mapping[str, HostSpec]) -> list[str]:
    return [name for name, host in sorted(hosts.items()) if selects(spec, name, host)]


def placed(desired: DesiredState, host: str) -> DesiredState:
    """The desired state of ``host`` (a name in ``desired.hosts``): its apps only."""
    hosts = desired.hosts or {}
    where = hosts[host]
    apps = {app: on_host(spec, host, where) for app, spec in desired.apps.items() if selects(spec, host, where)}
    # In a fleet, a service's on: picked its host (its swarm's manager): it places no task on a node.
    apps = {app: spec.model_copy(update={"on": None}) if spec.service else spec for app, spec in apps.items()}
    return desired.model_copy(update={"apps": apps, "host": host})


def nearest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; hosts: {', '.join(names) or '(none)'}"


def problems(apps: Mapping[str, AppSpec], hosts: Mapping[str, HostSpec] | None) -> list[tuple[Path, str]]:
    """Each ``on:`` that places its app nowhere, or names a host the file does not declare; each ``canary:``
    that picks none of its app's hosts."""
    found: list[tuple[Path, str]] = []
    names = sorted(hosts or {})
    for app, spec in apps.items():
        found += _canary_problems(app, spec, hosts)
        if spec.service and hosts is not None and len(hosts_of(spec, hosts)) != 1:
            # Each host of a fleet is its own engine: a service placed on several would be several services.
            where_on: Path = ("apps", app, "on") if spec.on is not None else ("apps", app)
            found.append((where_on, "a service (replicas:) runs on one swarm: place it on the one host that is its"
                          " manager (on: [host])"))  # fmt: skip
            continue
        if spec.on is None:
            continue
        where: Path = ("apps", app, "on")
        if hosts is None:
            if not spec.service:  # a service's on: without hosts: is its placement on the swarm's nodes
                found.append((where, "on: places the app on hosts: declare them in a top-level hosts:"))
            continue
        if isinstance(spec.on, tuple):
            for index, name in enumerate(spec.on):
                if name not in hosts:
                    found.append(((*where, index), f"no host {name!r} is declared in hosts{nearest(name, names)}"))
            if not spec.on:
                found.append((where, "an empty on: places the app on no host; leave on: out for every host"))
        elif not hosts_of(spec, hosts):
            wanted = ", ".join(f"{key}={value}" for key, value in spec.on.items())
            found.append((where, f"no host has the labels {wanted}: the app would run nowhere"))
    return found


def _canary_problems(app: str, spec: AppSpec, hosts: Mapping[str, HostSpec] | None) -> list[tuple[Path, str]]:
    if spec.canary is None:
        return []
    if hosts is None:
        return [(("apps", app, "canary"), "canary: picks some of the app's hosts: declare them in a top-level hosts:")]
    where: Path = ("apps", app, "canary", "on")
    selector = spec.canary.on
    mine = hosts_of(spec, hosts)
    runs_on = f"the app runs on {', '.join(mine)}" if mine else ""
    if not selector:
        return [(where, "an empty canary.on picks no host: name one of the app's hosts, or leave canary: out")]
    if mine and all(matches(selector, name, hosts[name]) for name in mine):
        # Then no host runs version: (nor follows stable): the canary would be the whole rollout.
        return [(where, f"canary.on picks every host of the app ({runs_on}): leave one to run version:")]
    if not isinstance(selector, tuple):
        if mine and not any(matches(selector, name, hosts[name]) for name in mine):
            wanted = ", ".join(f"{key}={value}" for key, value in selector.items())
            return [
                (where, f"none of the app's hosts has the labels {wanted} ({runs_on}): the canary would run nowhere")
            ]
        return []
    found: list[tuple[Path, str]] = []
    for index, name in enumerate(selector):
        if name not in hosts:
            found.append(((*where, index), f"no host {name!r} is declared in hosts{nearest(name, sorted(hosts))}"))
        elif mine and name not in mine:
            found.append(((*where, index), f"host {name!r} does not run the app ({runs_on}): it cannot be its canary"))
    return found


# -- what a fleet command found on each host (records; the text is ``core.fleet_report``) -------------

T = TypeVar("T")


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


@dataclass(frozen=True)
class AppOnHost:
    """One app on one host: what runs (its labels) beside what the file asks of that host."""

    app: str
    desired: str | None  # the version the file places on this host; None: the file places it elsewhere
    running: Running | None  # None: placed here, and nothing of ours runs under its name

    @property
    def in_sync(self) -> bool:
        """It runs the version the file asks of this host (a host that converged to the commit)."""
        return self.running is not None and self.running.version == self.desired and self.running.state == "running"

    def as_dict(self) -> dict[str, str | bool | None]:
        r = self.running
        return {
            "app": self.app, "desired": self.desired, "in_sync": self.in_sync,
            "version": r.version if r else None, "commit": r.commit if r else None,
            "digest": r.digest if r else None, "state": r.state if r else "missing",
        }  # fmt: skip


class Pushed(StrEnum):
    """Where a push rollout left a host."""

    CONVERGED = "converged"  # it runs the commit (something changed)
    IN_SYNC = "in sync"  # it ran the commit already: nothing to do
    FAILED = "failed"  # a release failed its gate (or would not start); the host's others went back
    TAKEN_BACK = "rolled back"  # it converged, and went back with its failed group
    UNREACHABLE = "unreachable"  # its engine did not answer (before or during the pass): see its outcomes
    INTERRUPTED = "interrupted"  # Ctrl-C: its pass stopped at the next step; the next run finishes it
    NOT_STARTED = "not started"  # a group before it failed, or the rollout was interrupted
    OUTSIDE = "not in the rollout"  # no group names it


@dataclass
class HostPush:
    """One host's part of a push rollout."""

    host: str
    engine: str
    group: int  # 1-based; 0 for a host no group names
    state: Pushed
    outcomes: list[Outcome] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.state in (Pushed.CONVERGED, Pushed.IN_SYNC, Pushed.OUTSIDE)
