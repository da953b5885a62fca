"""A fleet from one file: which apps a host runs (``hosts:`` and each app's ``on:``). Pure.

Guarantees:
- A file without ``hosts:`` is one host, as before: every app runs, wherever the agent runs.
- With ``hosts:``, an app without ``on:`` runs on every host; ``on: [name, ...]`` on those hosts;
  ``on: {label: value, ...}`` on the hosts whose labels hold every pair.
- ``placed`` gives the desired state of one host: only its apps, so that a host's pass deploys,
  heals and prunes exactly what is placed on it (an app moved to another host is pruned here).
- ``problems`` names every selector that cannot place its app (an unknown host, with the nearest name;
  labels that no host has), as paths into the file for the validator to place at FILE:LINE:COL.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from reconciler.core.model import AppSpec, DesiredState, HostSpec

Path = tuple[str | int, ...]


def selects(spec: AppSpec, name: str, host: HostSpec) -> bool:
    """Whether ``spec`` runs on the host ``name``."""
    if spec.on is None:
        return True
    if isinstance(spec.on, tuple):
        return name in spec.on
    return all(host.labels.get(key) == value for key, value in spec.on.items())


def hosts_of(spec: AppSpec, hosts: Mapping[str, HostSpec]) -> list[str]:
    return [name for name, host in sorted(hosts.items()) if selects(spec, name, host)]


def placed(desired: DesiredState, host: str) -> DesiredState:
    """The desired state of ``host`` (a name in ``desired.hosts``): its apps only."""
    hosts = desired.hosts or {}
    apps = {app: spec for app, spec in desired.apps.items() if selects(spec, host, hosts[host])}
    return desired.model_copy(update={"apps": apps, "host": host})


def nearest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; hosts: {', '.join(names) or '(none)'}"


def problems(apps: Mapping[str, AppSpec], hosts: Mapping[str, HostSpec] | None) -> list[tuple[Path, str]]:
    """Each ``on:`` that places its app nowhere, or names a host the file does not declare."""
    found: list[tuple[Path, str]] = []
    names = sorted(hosts or {})
    for app, spec in apps.items():
        if spec.on is None:
            continue
        where: Path = ("apps", app, "on")
        if hosts is None:
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
