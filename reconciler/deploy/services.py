"""Swarm services of ours (apps with ``replicas:``): created, rolled out, scaled and removed, each rollout
gated over its tasks (``core.swarm.judge``) and journaled as a container's deploy is.

Guarantees:
- A service carries the labels a container of ours carries (``adapters.docker.release_labels``), so the planner
  pairs it with its app, and never touches a service without them (a conflict, as for containers).
- Swarm rolls a new spec out as the file's ``update:`` says, pausing (``failure_action: pause``) rather
  than going on when a task fails within ``monitor`` (``healthy_for``, at least 1 s) of its start. Our
  gate decides: every task of the new spec running at once for ``healthy_for``, within ``timeout``.
- A service's release command runs once per rollout, not per task: in a throwaway container on the manager
  (``deploy.job``), before the new spec is created or rolled out; one that fails leaves the service as it
  was, journaled failed and held as a failed release.
- What a service has and the file cannot say (networks, secrets, configs) is kept through every update
  and through adoption.
- A rollout that fails is put back to the spec the service had before it (read just before the update
  and kept with the release, so a whole-commit undo can put it back too), and journaled ``rolled-back``
  with the release marked failed: the agent holds it as it holds a failed container release. A new
  service that fails is removed: nothing ran before it.
- A gate that ``stale()`` abandons (a newer commit, a shutdown) leaves the rollout to Swarm and is
  journaled ``superseded``, never as a failure. The spec from before is kept in the journal (a flag) until
  the verdict, so a rollout cut short there or by a crash is judged by a later pass (``verify``): gated
  again, and put back if it fails; a putting back that was cut short is finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.adapters.docker import fingerprint_of
from reconciler.adapters.protocols import DockerEngine
from reconciler.core import swarm
from reconciler.core.health import Gate, Verdict
from reconciler.core.labels import epoch as _epoch
from reconciler.core.model import AppSpec, ObservedContainer
from reconciler.core.plan import Action, ActionKind, Target
from reconciler.core.proxy import Server
from reconciler.core.report import Outcome, Result
from reconciler.core.steps import Released
from reconciler.deploy.job import ReleaseAbandoned, run_release
from reconciler.deploy.prober import Prober
from reconciler.deploy.rows import JournalFailed
from reconciler.errors import UserError
from reconciler.state.journal import Entry, JournalResult

LOOK = 0.2  # seconds between looks at a rollout's tasks
PAUSED = frozenset({"paused", "rollback_started", "rollback_paused", "rollback_completed"})


class Rows(Protocol):
    """The deploys' journal calls (``rows.Rows``: one at a time across the deploys of a pass)."""

    def start(self, **fields: str) -> int: ...

    def finish(self, entry_id: int, *, result: JournalResult, message: str = "") -> None: ...

    def flag(self, key: str) -> str | None: ...

    def set_flag(self, key: str, value: str | None) -> None: ...


@dataclass
class Services:
    engine: DockerEngine
    rows: Rows
    prober: Prober  # its looks at a service's tasks (``look``)
    author: str = ""
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    log: Callable[[str], None] = lambda line: None
    step: Callable[[str, str], None] = lambda app, step: None
    stale: Callable[[], bool] = lambda: False
    # A routed service's tasks as the proxy reaches them, at each look of a gate (the proxy follows them).
    route: Callable[[str, tuple[Server, ...]], None] = lambda app, members: None

    # -- deploys ----------------------------------------------------------------------------------

    def verify(self, entry: Entry, current: ObservedContainer, spec: AppSpec) -> Outcome | None:
        """The verdict of a rollout that an earlier pass started and never judged (a crash, a newer commit,
        an outage), or whose putting back was cut short; None when the service holds another spec now."""
        kept = self.rows.flag(_kept(entry))
        previous = json.loads(kept) if kept else None
        action = Action(ActionKind.REPLACE if entry.action == "replace" else ActionKind.CREATE, entry.app, entry.app)
        if entry.result is JournalResult.ROLLING_BACK:  # the verdict stands: finish putting it back
            return self._put_back(action, entry.id, current.id, previous, entry.from_version, entry.message, spec)
        if current.spec_hash != entry.spec_hash:
            return None
        self.step(entry.app, "verify")
        before = _route_port(fingerprint_of((previous or {}).get("Labels") or {}))
        gate = self.gate(current.id, spec, since=entry.started_at, before=before)
        if gate.verdict is Verdict.PENDING:
            return None
        if gate.verdict is Verdict.PASSED:
            self._finish(entry.id, JournalResult.SUCCEEDED, "verified by a later pass")
            self.log(f"deployed service {entry.app} {entry.to_version} (verified after an interruption)")
            return Outcome(entry.app, action.kind, entry.app, Result.APPLIED, entry.to_version)
        return self._put_back(action, entry.id, current.id, previous, entry.from_version, gate.reason, spec)

    def _finish(self, entry_id: int, result: JournalResult, message: str = "") -> None:
        self.rows.finish(entry_id, result=result, message=message)
        if not result.unverified:
            self.rows.set_flag(_kept(entry_id), None)

    def deploy(
        self, action: Action, current: ObservedContainer | None, revision: str, env: Mapping[str, str]
    ) -> tuple[Outcome, Released | None]:
        """Create the service, or roll its new spec out; gate it; put it back if the gate fails."""
        target = action.target
        assert target is not None and target.spec.replicas is not None
        app, spec = action.app, target.spec
        entry = self.rows.start(
            revision=revision, app=app, action=str(action.kind), author=self.author,
            from_version=current.version if current else "", to_version=spec.version,
            from_image=current.digest if current else "", to_image=target.resolution.identity,
            spec_hash=target.spec_hash,
        )  # fmt: skip
        if spec.release is not None:
            failed = self._release(action, target, entry, env)
            if failed is not None:
                return failed, None
        arguments = self.engine.service_arguments(target, env)
        previous: dict[str, Any] | None = None
        self.step(app, "create" if current is None else "update")
        try:
            if current is None:
                service_id = self.engine.create_service(app, arguments)
            else:
                service_id = current.id
                before = self._inspect(service_id)
                previous = before["Spec"]
                version = before["Version"]["Index"]
                # Kept until the verdict: a rollout cut short (a crash, a newer commit) is judged by a later
                # pass, which puts this spec back if it failed.
                self.rows.set_flag(_kept(entry), json.dumps(previous))
                _keep_unwritten(arguments, previous)
                self.engine.update_service(app, service_id, version, arguments)
        except JournalFailed:
            raise  # the spec from before could not be kept: the pass's trouble, not this rollout's
        except UserError as exc:
            self._finish(entry, JournalResult.FAILED, str(exc))
            return Outcome(app, action.kind, app, Result.FAILED, f"{spec.version}: {exc}", release_failed=True), None
        since = _epoch(str(self._inspect(service_id).get("UpdatedAt", "")))
        self.step(app, "gate")
        try:
            gate = self.gate(service_id, spec, since=since, before=_route_port(current.fingerprint if current else {}))
        except UserError as exc:  # the manager refused a look (the service removed by hand, ...); an outage is raised
            gate = Gate(spec.gate, started_at=self.clock(), verdict=Verdict.FAILED, reason=str(exc))
        was = f"{current.version or '?'} -> " if current else ""
        if gate.verdict is Verdict.PENDING:
            self._finish(entry, JournalResult.SUPERSEDED, "the health gate was abandoned")
            return Outcome(
                app, action.kind, app, Result.SUPERSEDED, f"{spec.version} rolling out, gate abandoned"
            ), None
        if gate.verdict is Verdict.PASSED:
            self._finish(entry, JournalResult.SUCCEEDED)
            self.log(f"deployed service {app} {was}{spec.version} ({spec.replicas} tasks)")
            back = current.version if current else ""
            done = Released(app, service_id, previous, back, spec, entry)
            return Outcome(app, action.kind, app, Result.APPLIED, f"{was}{spec.version}"), done
        back = current.version if current is not None else ""
        return self._put_back(action, entry, service_id, previous, back, gate.reason, spec), None

    def _release(self, action: Action, target: Target, entry: int, env: Mapping[str, str]) -> Outcome | None:
        """The service's release command, once per rollout (not per task): in a throwaway container on the
        manager, before the new spec rolls out. Its outcome when it failed or was abandoned; None when it ran."""
        app, spec = action.app, target.spec
        self.step(app, "release")
        try:
            if not self.engine.has_image(target.resolution.ref):
                self.engine.pull(target.resolution.ref)
            took = run_release(
                self.engine, target, env=env, networks={}, secrets=[], clock=self.clock, sleep=self.sleep,
                interrupted=self.stale,
            )  # fmt: skip
        except ReleaseAbandoned as exc:
            self._finish(entry, JournalResult.SUPERSEDED, str(exc))
            return Outcome(app, action.kind, app, Result.SUPERSEDED, f"{spec.version}: {exc}")
        except UserError as exc:
            self._finish(entry, JournalResult.FAILED, str(exc))
            return Outcome(app, action.kind, app, Result.FAILED, f"{spec.version}: {exc}", release_failed=True)
        self.log(f"{app}: release command of {spec.version} done in {took:.1f}s")
        return None

    def _put_back(
        self,
        action: Action,
        entry: int,
        service_id: str,
        previous: dict[str, Any] | None,
        back_to: str,
        reason: str,
        spec: AppSpec,
    ) -> Outcome:
        """A failed rollout: the spec from before it (``back_to`` its version), gated again; a new service
        that failed is removed."""
        app = action.app
        version = spec.version
        self._finish(entry, JournalResult.ROLLING_BACK, reason)
        self.step(app, "roll-back")
        if previous is None:
            problem = self._attempt(lambda: self.engine.remove_service(service_id, app))
            self._finish(entry, JournalResult.FAILED, reason + (f"; {problem}" if problem else ""))
            self.log(f"deploy of service {app} {version} failed: {reason}; removed (nothing to roll back to)")
            message = f"{version} failed: {reason}; the new service was removed; nothing to roll back to"
            return Outcome(app, action.kind, app, Result.FAILED, message, release_failed=True)
        back = back_to or "the previous spec"
        trouble = self._restore(app, service_id, previous, spec)
        if not trouble:
            self._finish(entry, JournalResult.ROLLED_BACK, reason)
            self.log(f"deploy of service {app} {version} failed ({reason}); rolled back to {back}")
            message = f"{version} failed: {reason}; rolled back to {back}"
            return Outcome(app, action.kind, app, Result.ROLLED_BACK, message, release_failed=True)
        self._finish(entry, JournalResult.FAILED, f"{reason}; rollback: {trouble}")
        message = f"{version} failed: {reason}; rolling back to {back} failed too: {trouble}"
        return Outcome(app, action.kind, app, Result.FAILED, message, release_failed=True)

    def _restore(self, app: str, service_id: str, previous: Mapping[str, Any], spec: AppSpec) -> str:
        """Send ``previous`` back to the service and gate it; what went wrong, or ""."""
        try:
            version = self._inspect(service_id)["Version"]["Index"]
            self.engine.restore_service(app, service_id, version, previous)
            since = _epoch(str(self._inspect(service_id).get("UpdatedAt", "")))
        except UserError as exc:
            return str(exc)
        replicas = int(((previous.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 1))
        before = _route_port(fingerprint_of(previous.get("Labels") or {}))
        gate = self.gate(service_id, spec.model_copy(update={"replicas": replicas}), since=since, before=before)
        return gate.reason if gate.verdict is Verdict.FAILED else ""

    def undo(self, done: Released, reason: str) -> Outcome:
        """Put back a rollout that passed, because another app of its commit failed."""
        app = done.app
        self.step(app, "undo")
        kind = ActionKind.REPLACE if done.previous is not None else ActionKind.CREATE
        if done.previous is None:
            problem = self._attempt(lambda: self.engine.remove_service(done.service_id, app))
            back = "nothing (it is new in this commit)"
        else:
            problem = self._restore(app, done.service_id, done.previous, done.spec)
            back = done.previous_version or "the previous spec"
        message = f"{reason}; back to {back}" + (f"; {problem}" if problem else "")
        self.rows.finish(
            done.entry, result=JournalResult.FAILED if problem else JournalResult.ROLLED_BACK, message=message
        )
        self.log(f"{app}: {message}")
        return Outcome(app, kind, app, Result.FAILED if problem else Result.ROLLED_BACK, message)

    def remove(self, action: Action, current: ObservedContainer, revision: str) -> Outcome:
        entry = self.rows.start(
            revision=revision, app=action.app, action="remove", author=self.author,
            from_version=current.version, from_image=current.digest,
        )  # fmt: skip
        self.step(action.app, "remove")
        problem = self._attempt(lambda: self.engine.remove_service(current.id, current.name))
        if problem:
            self._finish(entry, JournalResult.FAILED, problem)
            return Outcome(action.app, action.kind, action.container, Result.FAILED, problem)
        self._finish(entry, JournalResult.SUCCEEDED)
        self.log(f"removed service {current.name}")
        return Outcome(action.app, action.kind, action.container, Result.APPLIED, "")

    # -- the gate ---------------------------------------------------------------------------------

    def gate(self, service_id: str, spec: AppSpec, *, since: float, before: int | None = None) -> Gate:
        """Look at the rollout's tasks until ``core.swarm.judge`` decides, or ``stale()`` (then pending). A
        routed service's proxy follows its tasks at each look: a task joins once it runs (healthy) and leaves
        once Swarm means to stop it (``before``: the route port of the spec before, whose tasks still serve)."""
        assert spec.replicas is not None
        # The probe runs in the tasks (Swarm's healthcheck): the gate here counts running tasks.
        rules = spec.gate.model_copy(
            update={"http": None, "tcp": None, "exec": None, "docker": False, "timeout": swarm.rollout_timeout(spec)}
        )
        gate = Gate(rules, started_at=self.clock())
        while not gate.verdict.done:
            if self.stale():
                return gate
            info, tasks = self.look(service_id)
            status = info.get("UpdateStatus") or {}
            paused = str(status.get("Message") or status.get("State")) if status.get("State") in PAUSED else ""
            whole, _ = swarm.tally(tasks, spec.replicas)
            # The nodes when a slot is missing (a node that is down is named then, and only then), or to route.
            nodes = self.engine.nodes() if spec.route is not None or not whole else {}
            if spec.route is not None:
                addresses = {node: address for node, (_, _, address) in nodes.items()}
                ports = {spec.route.port} | ({before} if before is not None else set())
                app = str((info.get("Spec") or {}).get("Name", ""))
                self.route(app, tuple(Server(app, ip, port) for ip, port in swarm.endpoints(tasks, addresses, ports)))
            down = {} if whole else {node: host for node, (host, state, _) in nodes.items() if state != "ready"}
            gate = swarm.judge(
                gate, tasks, replicas=spec.replicas, since=since, at=self.clock(), paused=paused, down=down
            )
            if not gate.verdict.done:
                self.sleep(LOOK)
        return gate

    def look(self, service_id: str) -> tuple[dict[str, Any], list[swarm.Task]]:
        """The service as the manager has it, and its tasks (``Prober.look``)."""
        return self.prober.look(service_id)

    def _inspect(self, service_id: str) -> dict[str, Any]:
        return self.engine.inspect_service(service_id)

    @staticmethod
    def _attempt(fn: Callable[[], object]) -> str:
        """What the manager refused, or "" (an outage is raised: the pass stops, the next one resumes)."""
        try:
            fn()
        except UserError as exc:
            return str(exc)
        return ""


def _kept(entry: Entry | int) -> str:
    """The journal flag that holds a rollout's spec from before, until its verdict."""
    return f"service-spec:{entry if isinstance(entry, int) else entry.id}"


def _route_port(fingerprint: Mapping[str, Any]) -> int | None:
    port = fingerprint.get("route_port")
    return port if isinstance(port, int) else None


def _keep_unwritten(arguments: dict[str, Any], previous: Mapping[str, Any]) -> None:
    """Carry over what a service has and the file cannot say (its networks, secrets and configs, made with
    ``docker service create/update`` or by a stack): an update, and the adoption of a service made by
    hand, change what the file says and drop nothing else the tasks rely on."""
    template = previous.get("TaskTemplate") or {}
    container = template.get("ContainerSpec") or {}
    if template.get("Networks"):
        arguments["task_template"]["Networks"] = template["Networks"]
    for key in ("Secrets", "Configs"):
        if container.get(key):
            arguments["task_template"]["ContainerSpec"][key] = container[key]
