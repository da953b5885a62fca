"""``reconcile status``: per app, what git asks for against what runs, and what the journal knows.

Guarantees: read-only (no lock, no change to the engine or the journal); one health probe per running
app (``deploy.prober.Prober``, the one a deploy's gate probes with; ``core.health.of_sample`` reads it),
at most ``--parallel`` at once;
an app that is only on the engine (ours, gone from the file) is listed too. A desired state or a
journal that cannot be read (a corrupt repository, a corrupt ``journal.db``) is reported in the result
(``desired_error``, ``journal_error``) rather than failing it: status is what you run when something is
wrong. A corrupt journal is left where it is for ``reconcile`` or the agent to move aside. The result is
a ``core.status.Status``: frozen records, read by ``core.report.status_lines`` and printed as JSON by
their ``as_dict``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

from reconciler.adapters.docker import connect
from reconciler.adapters.protocols import DockerEngine
from reconciler.converge.run import Settings, cert_lines, plan_against, read_desired, rollout_lines, weights
from reconciler.converge.sealed import Mode
from reconciler.core.canary import Rollout
from reconciler.core.failures import Failure, held_back
from reconciler.core.health import Health, is_worse, of_sample
from reconciler.core.model import DesiredState, ObservedState
from reconciler.core.proxy import route_lines
from reconciler.core.report import plan_lines
from reconciler.core.status import AppStatus, DeployRecord, StackLine, Status
from reconciler.deploy import canary as canaries
from reconciler.deploy.prober import Prober
from reconciler.deploy.proxy import Proxy
from reconciler.errors import CommitRefused, ProxyError, ReconcileError
from reconciler.pool import run_all
from reconciler.state.journal import BREAK_GLASS, REFUSED, SUSPENDED, Entry, Journal, JournalResult
from reconciler.state.pidfile import read_pid


def collect(settings: Settings) -> Status:
    desired: DesiredState | None = None
    desired_error = refused = ""
    try:
        desired = read_desired(settings, sops=Mode.PARSE)  # what runs is told by labels: no secret is opened
    except CommitRefused as exc:
        refused = str(exc).replace("\n", " | ")
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
    # Refused by the agent (its flags, not necessarily this command's): status says so too.
    refused = refused or journal.flag(REFUSED) or ""
    try:
        prober = Prober(engine)
        rollouts = canaries.peek(settings.state_dir) if desired is not None and desired.proxy is not None else {}
        rolling = canaries.rolling(rollouts)
        plan = plan_against(engine, desired, settings, observed=observed, rolling=rolling)[0] if desired else None
        # An app whose rollout is under way is not in sync: it serves two releases (its routes say how).
        drift = {action.app for action in plan.actions} | set(rolling) if plan is not None else set()
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
        # The probes side by side (a few ms each, an engine's round trips: 200 apps one after another take
        # seconds); the journal is read in this thread.
        apps = [a for a in run_all([functools.partial(_app, app, desired, observed, prober) for app in sorted(names)],
                                   parallel=settings.parallel, name="status") if a is not None]  # fmt: skip
        apps = [_journaled(app, journal, failures, held, drift) for app in apps]
        routes, proxied = _routes(engine, settings, desired, observed, rollouts)
        return Status(
            refused=refused or None,
            routes=routes,
            proxy=proxied,
            file=settings.file,
            revision=desired.revision if desired else None,
            desired_error=desired_error or None,
            journal_error=journal_error or None,
            agent_pid=read_pid(settings.state_dir),
            suspended=journal.flag(SUSPENDED),
            break_glass=tuple(journal.flags(BREAK_GLASS).items()),
            apps=tuple(apps),
            pending=tuple(plan_lines(plan, file=settings.file)) if plan is not None else (),
        )
    finally:
        journal.close()


def _app(app: str, desired: DesiredState | None, observed: ObservedState, prober: Prober) -> AppStatus:
    """What runs of ``app`` against the file, and its health (one probe); the journal's facts come after."""
    tasks: tuple[str, ...] = ()
    spec = desired.apps.get(app) if desired else None
    # The kind the file gives it; an app gone from the file: ours, whichever kind it is.
    current = observed.of_app(app, service=spec.service) if spec is not None else observed.ours(app)
    ours = current is not None and current.managed
    if current is None:
        health = str(Health.MISSING)
    elif not ours:
        health = "not ours"
    elif not current.running:
        health = f"{Health.UNHEALTHY}: {current.state}"
    elif current.kind == "service":
        tasks = tuple(prober.task_lines(current.id))
        if spec is not None:
            sample, _ = prober.service_sample(current.id, spec)
            health = _said(Health.HEALTHY if sample.probe_ok else Health.UNHEALTHY, sample.detail)
        else:
            health = "running (no longer in the file)"
    elif spec is not None:
        sample = prober.sample(current.id, spec.gate)
        health = _said(of_sample(sample), sample.detail)
    else:
        health = "running (no longer in the file)"
    return AppStatus(
        app=app,
        desired=spec.version if spec else None,
        running=current.version if ours and current is not None else None,
        state=current.state if current is not None else "missing",
        health=health,
        in_sync=True,
        tasks=tasks,
        stack=StackLine.of(spec) if spec is not None else None,
        hosts=tuple(spec.route.hosts) if spec is not None and spec.route is not None else (),
    )


def _journaled(
    app: AppStatus, journal: Journal, failures: list[Failure], held: dict[str, Failure], drift: set[str]
) -> AppStatus:
    stable = journal.stable(app.app)
    return dataclasses.replace(
        app,
        in_sync=app.app not in drift,
        last_applied=_record(journal.last(app.app, result=JournalResult.SUCCEEDED)),
        last_attempted=_record(journal.last(app.app)),
        stable=stable.version if stable else None,
        held=held.get(app.app),
        failed=tuple(f for f in failures if f.app == app.app),
    )


def _routes(
    engine: DockerEngine,
    settings: Settings,
    desired: DesiredState | None,
    observed: ObservedState,
    rollouts: Mapping[str, Rollout],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The routes with what serves them and their requests in flight, the rollouts under way, and the proxy's
    drift."""
    if desired is None or desired.proxy is None:
        return (), ()
    proxy = Proxy(engine, settings.state_dir)
    try:
        in_flight: dict[str, int] | None = proxy.sessions()
    except ProxyError:
        in_flight = None  # not running: its drift says so
    routes = route_lines(desired, observed, proxy.network, proxy.switched(), in_flight)
    routes += rollout_lines(rollouts, desired)
    routes += cert_lines(proxy, settings.state_dir, desired)
    drift = proxy.drift(desired, observed, canaries=weights(rollouts, desired, observed, proxy))
    return tuple(routes), tuple(drift)


def _said(health: Health, detail: str) -> str:
    """A health as ``AppStatus.health`` says it: its detail only when it is worse than progressing."""
    return f"{health}: {detail}" if is_worse(health, Health.PROGRESSING) else str(health)


def _record(entry: Entry | None) -> DeployRecord | None:
    if entry is None:
        return None
    return DeployRecord(
        revision=entry.revision,
        version=entry.to_version,
        result=entry.result,
        at=entry.finished_at or entry.started_at,
        message=entry.message,
    )
