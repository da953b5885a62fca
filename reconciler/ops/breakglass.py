"""Break-glass: change the host now, without git, and hold the agent back until a human says so.

Guarantees:
- ``swap_back`` (``rollback --local``) puts the kept ``APP.prev`` back under the app's name and keeps
  what ran stopped as ``APP.prev``: no git, no pull, no create. For a routed app it is a switch: the
  previous release (started first unless it is warm) passes a fresh gate, the proxy's route moves to
  it, and what ran is kept warm as ``APP.prev``; a gate that fails switches nothing. That switch-back is
  a deploy's rollback's (``deploy.rollback.switch_back``), its probes the deploys' (``deploy.prober``).
  It touches only containers of ours, and works under the state directory's lock, so no agent pass
  runs between what it looks at and what it changes; the agent is suspended before the lock lets the
  next pass in.
- A swap that fails puts every container back under the name it had and starts what ran again
  (``deploy.swap.swap_in`` with ``undo``); the journal records the attempt either way.
- ``status`` says the host differs from git (the ``break-glass:APP`` flag) until ``resume``.
- ``reconcile resume`` (``ops.controls.resume``) clears every break-glass flag.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from reconciler.adapters.protocols import DockerEngine
from reconciler.converge.run import Settings, read_desired
from reconciler.converge.sealed import Mode
from reconciler.core.model import DEFAULT_HEALTH, AppSpec, DesiredState, ObservedContainer, Role, container_name
from reconciler.deploy.swap import swap_in
from reconciler.errors import ReconcileError, UserError
from reconciler.state.journal import BREAK_GLASS, SUSPENDED, Journal, JournalResult


def swap_back(settings: Settings, app: str, *, lock_timeout: float = 60.0) -> tuple[str, str]:
    """Put ``APP.prev`` back under the app's name at once (no git, no pull) and suspend the agent.

    Returns what happened, and the version that runs now."""
    from reconciler.adapters.docker import connect
    from reconciler.deploy.prober import Prober
    from reconciler.state.lock import locked

    desired = _committed(settings)  # read once, before the lock: git is the slow part
    committed = desired.apps.get(app) if desired is not None else None
    proxied = desired is not None and desired.proxy is not None
    routed = committed if committed is not None and committed.route is not None and proxied else None
    engine = connect(settings.docker_host, instance=settings.instance)
    journal = Journal(settings.state_dir)
    try:
        # Under the lock: no agent pass runs between what we look at and what we change, and the
        # suspension is in place before the lock lets the next pass in.
        with locked(settings.state_dir, timeout=lock_timeout):
            observed = engine.observe()
            current = observed.named(container_name(app))
            previous = observed.named(container_name(app, Role.PREVIOUS))
            if previous is None or not previous.managed:
                raise UserError(f"{app}: no kept previous container ({app}.prev) to swap back to")
            if current is not None and not current.managed:
                raise UserError(f"{app}: container {app} was not created by reconciler; not touching it")
            served = any(c is not None and "route_port" in c.fingerprint for c in (previous, current))
            if served and routed is None:
                raise UserError(
                    f"{app} is served through the proxy, but the committed file cannot be read or does not route"
                    " it: a swap without a switch would leave its route on a stopped container; fix the file,"
                    f" or commit the rollback (`reconcile rollback {app} --to VERSION --push`)"
                )
            was = current.version if current is not None else "nothing"
            entry = journal.start(
                revision=previous.commit, app=app, action="rollback-local", from_version=was,
                to_version=previous.version, from_image=current.image_id if current else "",
                to_image=previous.image_id, spec_hash=previous.spec_hash,
            )  # fmt: skip
            try:
                if routed is not None:
                    _switch_back(engine, settings, app, previous, current, routed)
                else:
                    swap_in(
                        engine, app, previous.id, current, incoming_name=previous.name,
                        keep_as=container_name(app, Role.PREVIOUS), undo=True,
                    )  # fmt: skip
            except ReconcileError as exc:
                journal.finish(entry, result=JournalResult.FAILED, message=str(exc))
                raise
            journal.set_flag(
                SUSPENDED,
                f"break-glass rollback of {app} to {previous.version} (was {was}) at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}Z; git still asks for {was}",
            )
            journal.set_flag(f"{BREAK_GLASS}{app}", previous.version)
            journal.finish(
                entry, result=JournalResult.SUCCEEDED, message="break-glass: host differs from git until resume"
            )
        seen = Prober(engine).sample(previous.id, committed.gate if committed is not None else DEFAULT_HEALTH)
        state = "answering" if seen.running and seen.probe_ok else f"started, not healthy yet ({seen.detail})"
        if routed is not None:
            kept = f"{was} kept warm as {app}.prev" if current is not None else "nothing else ran"
            said = f"{app}: the route switched to {previous.version} ({state}); {kept}"
            return said, previous.version
        return f"{app}: {previous.version} runs again ({state}); {was} kept stopped as {app}.prev", previous.version
    finally:
        journal.close()


def _committed(settings: Settings) -> DesiredState | None:
    """The committed file, when it can be read (the app's gate, its route, the proxy)."""
    try:
        return read_desired(settings, sops=Mode.PARSE)  # its gate and route: no secret is opened
    except ReconcileError:
        return None


def _switch_back(
    engine: DockerEngine,
    settings: Settings,
    app: str,
    previous: ObservedContainer,
    current: ObservedContainer | None,
    spec: AppSpec,
) -> None:
    """A routed app: ``deploy.rollback.switch_back``, the one a deploy's rollback makes, with every refusal
    raised. What ran is kept warm as APP.prev (through APP.next, which frees APP for the previous release).
    A gate that fails switches nothing, and stops the previous release again unless it was warm."""
    from reconciler.core.health import Verdict
    from reconciler.deploy.prober import Prober
    from reconciler.deploy.proxy import Proxy
    from reconciler.deploy.rollback import switch_back

    def attempt(what: str, fn: Callable[[], object]) -> bool:
        fn()  # break-glass stops at the first refusal: the journal row says it, and the caller raises it
        return True

    def set_aside() -> None:
        # The route no longer points at what ran: its names can move (each step leaves a route on a release
        # that passed, by ``core.proxy.serving``).
        if current is not None:
            engine.rename(current.id, container_name(app, Role.NEXT))

    prober = Prober(engine)
    gate, warm = switch_back(
        prober, Proxy(engine, settings.state_dir), app, previous, spec, attempt=attempt, set_aside=set_aside
    )
    if gate.verdict is Verdict.FAILED:
        if not warm:
            engine.stop(previous.id, previous.name, previous.stop_timeout)
        raise UserError(f"{app}: {previous.version} did not pass its gate ({gate.reason}); nothing switched")
    if current is not None:
        engine.rename(current.id, container_name(app, Role.PREVIOUS))
