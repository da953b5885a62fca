"""Taking a release back: a failed deploy set aside or rolled back, a passed one undone with its commit,
and the routed switch-back that deploys and break-glass share.

Guarantees:
- What a failure at a step takes back is what ``core.steps.RULES`` says (``Undo``): nothing, the new
  container discarded, the new release set aside (start-first: it never served), or a rollback.
- A rollback journals its verdict first (``rolling-back``): cut short, it is finished by the next pass
  (``deploy.recovery``), never judged again. The failed release is kept stopped as ``APP.failed`` (for
  its logs; dropped when a container not ours holds that name), and the previous one is brought back
  under the app's name, started and gated; containers are found by id, wherever a rollback cut short
  left them. Each of its engine steps that is refused is noted and the rollback goes on; an outage
  (the engine, the proxy's runtime API) or a journal that fails stops it (``NOT_A_VERDICT``).
- ``switch_back`` is the one routed switch-back: the previous release (stopped first when this pass is
  cooling it, started unless it is warm) passes a fresh gate (one good answer when warm), the route
  switches to it, then what it replaces is set aside and it takes the app's name. A gate that fails
  switches nothing. Deploys note what the engine refuses and go on; break-glass raises it.
- A rollback whose gate is abandoned (``stale``) is recorded as rolled back (the previous release
  runs), never as a failure.
"""

from __future__ import annotations

from collections.abc import Callable

from reconciler.adapters.protocols import DockerEngine
from reconciler.core.health import Gate, Verdict
from reconciler.core.model import AppSpec, HealthSpec, ObservedContainer, Role, container_name
from reconciler.core.plan import Action, ActionKind
from reconciler.core.proxy import Server, proxy_network
from reconciler.core.report import Outcome, Result
from reconciler.core.steps import ABANDONED, Deployed, Released, Step
from reconciler.deploy.prober import Prober, route_port
from reconciler.deploy.proxy import Proxy
from reconciler.deploy.rows import JournalFailed, Rows
from reconciler.deploy.services import Services
from reconciler.errors import ContainerError, ProxyUnavailable, UserError
from reconciler.state.journal import JournalResult

# What the engine's and the proxy's refusals (``UserError``) include and is no verdict on a release: the
# proxy's runtime API away (an outage, as the engine's), or the journal failing (the pass's trouble).
NOT_A_VERDICT = (ProxyUnavailable, JournalFailed)

# Runs one step of a switch-back: True when it went through (a deploy notes a refusal, break-glass raises it).
Attempt = Callable[[str, Callable[[], object]], bool]


def route_to(prober: Prober, proxy: Proxy | None, app: str, container_id: str, spec: AppSpec) -> None:
    """Point the app's route at the container (it passed its gate), at the port it was deployed with."""
    assert spec.route is not None
    if proxy is None:
        raise AssertionError("a routed app is deployed with a proxy")
    found = prober.inspect(container_id)
    ip = found.networks.get(proxy_network(prober.engine.instance)) if found is not None else None
    if found is None or not ip:
        raise ContainerError(f"{app}: the new release has no address on the proxy's network")
    proxy.switch(app, Server(found.name, ip, route_port(found, spec.route.port)))


def switch_back(
    prober: Prober,
    proxy: Proxy | None,
    app: str,
    previous: ObservedContainer,
    spec: AppSpec,
    *,
    attempt: Attempt,
    set_aside: Callable[[], None] | None = None,
) -> tuple[Gate, bool]:
    """A routed app back on ``previous`` (see the module docstring); its gate, and whether it was warm.
    ``set_aside`` moves what it replaces out of the way, after the switch, before it takes the app's name."""
    engine: DockerEngine = prober.engine
    found = prober.inspect(previous.id)
    warm = found is not None and found.running
    if warm and proxy is not None and previous.id in proxy.cooling:
        # Cooled by this pass (its window passed) and stopping: stopped first, then started and gated.
        attempt("stop the cooling one", lambda: engine.stop(previous.id, previous.name, previous.stop_timeout))
        warm = False
    if not warm:
        attempt("start the previous one", lambda: engine.start(previous.id, previous.name))
    gate = prober.gate(previous.id, spec.gate.one_answer() if warm else spec.gate)
    if gate.verdict is Verdict.FAILED:
        return gate, warm  # nothing switched: what the route points at is not touched
    if not attempt("switch to the previous one", lambda: route_to(prober, proxy, app, previous.id, spec)):
        return gate, warm
    if set_aside is not None:
        set_aside()
    where = prober.inspect(previous.id)
    if where is not None and where.name != app:
        attempt(f"rename the previous one to {app}", lambda: engine.rename(previous.id, app))
    return gate, warm


class Rollback:
    """The taking back of ``Applier`` (a part of it: ``Applier`` provides what is declared here)."""

    engine: DockerEngine
    prober: Prober
    proxy: Proxy | None
    services: Services
    author: str
    _rows: Rows

    def _step(self, app: str, step: str) -> None:
        raise NotImplementedError

    def _log(self, line: str) -> None:
        raise NotImplementedError

    def _journal_start(self, revision: str, app: str, action: str, **fields: str) -> int:
        return self._rows.start(revision=revision, app=app, action=action, author=self.author, **fields)

    @staticmethod
    def _left_as_it_was(current: ObservedContainer | None) -> str:
        if current is None:
            return "nothing was running, nothing was started"
        return f"{current.name} left as it was ({current.version or current.state})"

    def _attempt(self, what: str, fn: Callable[[], object], problems: list[str]) -> bool:
        """Run one step of a rollback; a refusal is noted and the rollback goes on (not an outage of the
        engine or the proxy, nor a journal that fails: that stops it, and the next pass finishes it from the
        journaled verdict). Whether it went through."""
        try:
            fn()
        except NOT_A_VERDICT:
            raise
        except UserError as exc:
            problems.append(f"{what}: {exc}")
            return False
        return True

    def _bring_back(self, app: str, previous: ObservedContainer, gate: HealthSpec, problems: list[str]) -> Gate:
        """Put ``previous`` under the app's name again, start it and gate it (found by id, wherever it is)."""
        where = self.prober.inspect(previous.id)
        if where is None or where.name != app:
            self._attempt(f"rename the previous one to {app}", lambda: self.engine.rename(previous.id, app), problems)
        self._attempt("start the previous one", lambda: self.engine.start(previous.id, app), problems)
        return self.prober.gate(previous.id, gate)

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
        self.prober.engine_answers()  # a release stopped by an engine going away did not fail
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
            aside = (lambda: self._keep_failed(app, new_id, spec, problems)) if new_id else None
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
        set_aside: Callable[[], None] | None,
    ) -> Gate:
        """A routed app's rollback (``switch_back``), each refusal of the engine noted in ``problems``."""

        def attempt(what: str, fn: Callable[[], object]) -> bool:
            return self._attempt(what, fn, problems)

        return switch_back(self.prober, self.proxy, app, previous, spec, attempt=attempt, set_aside=set_aside)[0]

    def _keep_failed(self, app: str, new_id: str, spec: AppSpec, problems: list[str]) -> None:
        """Stop the failed release and keep it as APP.failed (dropped if a stranger holds that name)."""
        failed_name = container_name(app, Role.FAILED)
        self._attempt("stop the new container", lambda: self.engine.stop(new_id, app, spec.stop_timeout), problems)
        stale = self.prober.inspect(failed_name)
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
            def remove() -> None:
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

    def switch(self, app: str, container_id: str, spec: AppSpec) -> None:
        """Point the app's route at the container (it passed its gate): ``route_to``."""
        route_to(self.prober, self.proxy, app, container_id, spec)

    def _switch_back_to(self, app: str, old: ObservedContainer | None, spec: AppSpec) -> None:
        if old is not None:
            self.switch(app, old.id, spec)
        elif self.proxy is not None:
            self.proxy.switch(app, None)
