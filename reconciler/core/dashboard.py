"""The dashboard's pages as records: what ``reconcile status`` and the journal say, ordered and worded for a
person in a browser. Pure.

Guarantees:
- Built from ``core.status`` records and journal rows only, which hold versions, commits, states and reasons,
  never an env value: a page made of these records holds no secret of the file.
- The overview lists failing apps first (unhealthy, missing, held back, or whose last deploy failed or rolled
  back), then drifting ones (what runs differs from the file), then the rest; by name within each.
- An app's row names its route's hosts and the certificate line of each (from the status's route lines).
- An app's history is its journal rows, newest first, each with its change (``v1 → v2``), result and duration.
- The versions an app can go back to are the versions of its earlier good deploys, newest first, each once,
  without the one the file asks for now.
- An app's rollout under way is its lines among the status's routes (``rollout_of``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reconciler.core.health import Health
from reconciler.core.report import HistoryRow
from reconciler.core.status import AppStatus, Status

FAILED_RESULTS = frozenset({"failed", "rolled-back"})  # ``state.journal.JournalResult`` values a person must see
GOOD_RESULTS = frozenset({"succeeded"})


@dataclass(frozen=True)
class Row:
    """One app on the overview."""

    app: str
    state: str  # failing | drift | ok
    desired: str
    running: str
    health: str
    sync: str  # in sync | drift
    stable: str
    route: str  # the route's hosts, comma-separated, or ""
    certs: tuple[str, ...]  # a ``cert HOST: …`` line per host of its route that has one
    tasks: str  # a service's tasks in a few words, or ""
    last: str  # the last attempted deploy: commit and result, or ""
    held: str  # why its release is held back, or ""


@dataclass(frozen=True)
class Deploy:
    """One journal row of an app's history."""

    when: float
    commit: str
    author: str
    change: str
    result: str
    took: str
    message: str


def _failing(app: AppStatus) -> bool:
    if app.held is not None:
        return True
    if app.last_attempted is not None and str(app.last_attempted.result) in FAILED_RESULTS:
        return True
    return app.desired is not None and app.health.startswith((str(Health.UNHEALTHY), str(Health.MISSING)))


def state_of(app: AppStatus) -> str:
    return "failing" if _failing(app) else "drift" if not app.in_sync else "ok"


_ORDER = {"failing": 0, "drift": 1, "ok": 2}


def rows(status: Status) -> list[Row]:
    """The overview's rows."""
    certs = [line for line in status.routes if line.startswith("cert ")]
    made = []
    for app in status.apps:
        names = app.hosts
        last = app.last_attempted
        made.append(
            Row(
                app=app.app,
                state=state_of(app),
                desired=app.desired or "(not in the file)",
                running=app.running or "-",
                health=app.health,
                sync="in sync" if app.in_sync else "drift",
                stable=app.stable or "-",
                route=", ".join(names),
                certs=tuple(line for line in certs for host in names if line.startswith(f"cert {host}:")),
                tasks=f"{len(app.tasks)} tasks" if app.tasks else "",
                last=f"{last.revision[:8]} {last.version} {last.result}" if last is not None else "",
                held=app.held.reason if app.held is not None else "",
            )
        )
    return sorted(made, key=lambda row: (_ORDER[row.state], row.app))


def history(entries: Iterable[HistoryRow]) -> list[Deploy]:
    """Journal rows as the app page shows them (in the order given: the journal's, newest first)."""
    return [
        Deploy(
            when=entry.started_at,
            commit=entry.revision[:8] or "-",
            author=entry.author,
            change=f"{entry.from_version or '-'} → {entry.to_version or '-'}",
            result=str(entry.result),
            took=f"{entry.finished_at - entry.started_at:.1f}s" if entry.finished_at else "",
            message=entry.message,
        )
        for entry in entries
    ]


def back_to(entries: Sequence[HistoryRow], current: str | None) -> list[str]:
    """Versions the app ran well before, newest first, each once, without ``current`` (what the file asks)."""
    seen: list[str] = []
    for entry in entries:
        version = entry.to_version
        if str(entry.result) in GOOD_RESULTS and version and version != current and version not in seen:
            seen.append(version)
    return seen


def rollout_of(status: Status, app: str) -> list[str]:
    """The lines of ``app``'s rollout under way among the status's routes (``core.canary.lines``): its step and
    weights, then each judged step; none when it has none."""
    found: list[str] = []
    for line in status.routes:
        if line.startswith(f"rollout {app} "):
            found.append(line)
        elif found and line.startswith("  "):
            found.append(line.strip())
        elif found:
            break
    return found
