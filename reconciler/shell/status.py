"""``reconcile status``: per app, what git asks for against what runs, and what the journal knows.

Guarantees: read-only (no lock, no change to the engine or the journal); one health probe per running
app; an app that is only on the engine (ours, gone from the file) is listed too. A desired state or a
journal that cannot be read (a corrupt repository, a corrupt ``journal.db``) is reported in the result
(``desired_error``, ``journal_error``) rather than failing it: status is what you run when something is
wrong. A corrupt journal is left where it is for ``reconcile`` or the agent to move aside.
"""

from __future__ import annotations

from typing import Any

from reconciler.core.failures import held_back
from reconciler.core.health import Health
from reconciler.core.model import DesiredState, container_name
from reconciler.errors import ReconcileError
from reconciler.shell.converge import Settings, plan_against, read_desired
from reconciler.shell.deploy import Applier
from reconciler.shell.docker import connect
from reconciler.shell.journal import BREAK_GLASS, SUSPENDED, Journal, read_pid


def collect(settings: Settings) -> dict[str, Any]:
    desired: DesiredState | None = None
    desired_error = ""
    try:
        desired = read_desired(settings)
    except ReconcileError as exc:
        desired_error = str(exc)
    engine = connect(settings.docker_host, instance=settings.instance)
    observed = engine.observe()
    # Read-only: a host where nothing was applied yet has no state directory, and gets none from us.
    journal_error = ""
    try:
        journal = Journal(settings.state_dir if (settings.state_dir / "journal.db").exists() else None, repair=False)
        journal.failures()  # a file whose first page reads but whose tables do not is found here
    except ReconcileError as exc:
        journal_error = str(exc)
        journal = Journal(None)
    try:
        applier = Applier(engine, journal)
        plan = plan_against(engine, desired, settings, observed=observed)[0] if desired is not None else None
        drift = {action.app for action in plan.actions} if plan is not None else set()
        targets = {a.app: a.target.spec_hash for a in (plan.actions if plan else ()) if a.target is not None}
        failures = journal.failures()
        held = held_back(failures, targets)
        source = desired.source if desired else None
        # The apps of this source: another source's containers are its own status's business.
        names = set(desired.apps if desired else ()) | {
            c.app
            for c in observed.containers
            if c.managed and c.app and (source is None or c.owner is None or source.same(c.owner))
        }
        apps = []
        for app in sorted(names):
            spec = desired.apps.get(app) if desired else None
            current = observed.named(container_name(app))
            ours = current is not None and current.managed
            if current is None:
                health = str(Health.MISSING)
            elif not ours:
                health = "not ours"
            elif not current.running:
                health = f"{Health.UNHEALTHY}: {current.state}"
            elif spec is not None:
                sample = applier.sample(current.id, spec.gate)
                if sample.running and sample.probe_ok and sample.docker_health in ("", "healthy"):
                    health = str(Health.HEALTHY)
                elif sample.docker_health == "starting":
                    health = str(Health.PROGRESSING)
                else:
                    health = f"{Health.UNHEALTHY}: {sample.detail}"
            else:
                health = "running (no longer in the file)"
            applied = journal.last(app, result="succeeded")
            attempted = journal.last(app)
            stable = journal.stable(app)
            apps.append(
                {
                    "app": app,
                    "desired": spec.version if spec else None,
                    "running": current.version if ours and current is not None else None,
                    "state": current.state if current is not None else "missing",
                    "health": health,
                    "in_sync": app not in drift,
                    "last_applied": _entry(applied),
                    "last_attempted": _entry(attempted),
                    "stable": stable.version if stable else None,
                    "held": held[app].reason if app in held else None,
                    "failed": [
                        {"version": f.version, "commit": f.revision[:8], "reason": f.reason, "culprit": f.culprit}
                        for f in failures
                        if f.app == app
                    ],
                }
            )
        suspended = journal.flag(SUSPENDED)
        break_glass = journal.flags(BREAK_GLASS)
        return {
            "revision": desired.revision if desired else None,
            "file": settings.file,
            "desired_error": desired_error or None,
            "journal_error": journal_error or None,
            "agent_pid": read_pid(settings.state_dir),
            "suspended": suspended,
            "break_glass": break_glass,
            "apps": apps,
        }
    finally:
        journal.close()


def _entry(entry: Any) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {
        "commit": entry.revision[:8],
        "version": entry.to_version,
        "result": entry.result,
        "at": entry.finished_at or entry.started_at,
        "message": entry.message,
    }
