"""What ``reconcile status`` knows of a host, as frozen records. Pure.

``ops.status.collect`` fills them from git, the engine and the journal; ``core.report.status_lines``
reads them to a person; ``Status.as_dict`` is ``reconcile status -o json``.

Guarantees: the records hold no env value (versions, commits, states and reasons only); ``as_dict``
is the documented JSON, whose keys, their order and their values do not change (scripts and tests
read it): commits in it are shortened to 8 characters, the records keep them whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.core.failures import Failure
from reconciler.core.model import AppSpec
from reconciler.core.plan import networks_of
from reconciler.core.stack import DEFAULT_NETWORK


@dataclass(frozen=True)
class DeployRecord:
    """One deploy of an app as the journal has it: the last applied, or the last attempted."""

    revision: str
    version: str
    result: str  # a ``state.journal.JournalResult``, whose values the core reads as they are
    at: float  # when it finished, or started when it never did
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "commit": self.revision[:8],
            "version": self.version,
            "result": str(self.result),
            "at": self.at,
            "message": self.message,
        }


@dataclass(frozen=True)
class StackLine:
    """An app's place in a stack, as the file says it: names only, never a secret's contents."""

    depends_on: tuple[tuple[str, str], ...] = ()  # (app, condition)
    networks: tuple[str, ...] = ()
    release: tuple[str, ...] | None = None  # its release command
    secrets: tuple[str, ...] = ()  # their targets

    @classmethod
    def of(cls, spec: AppSpec) -> StackLine | None:
        line = cls(
            depends_on=tuple(sorted(spec.depends_on.items())),
            networks=tuple(networks_of(spec)),
            release=spec.release.command if spec.release is not None else None,
            secrets=tuple(secret.target for secret in spec.secrets),
        )
        plain = not line.depends_on and line.networks in ((), (DEFAULT_NETWORK,)) and not line.release
        return None if plain and not line.secrets else line

    def as_dict(self) -> dict[str, Any]:
        return {
            "depends_on": dict(self.depends_on),
            "networks": list(self.networks),
            "release": list(self.release) if self.release is not None else None,
            "secrets": list(self.secrets),
        }

    def said(self) -> str:
        parts = []
        if self.depends_on:
            parts.append("needs " + ", ".join(f"{app} ({condition})" for app, condition in self.depends_on))
        if self.networks:
            parts.append("networks " + ", ".join(self.networks))
        if self.release is not None:
            parts.append("release command " + " ".join(self.release))
        if self.secrets:
            parts.append("secrets " + ", ".join(self.secrets))
        return "; ".join(parts)


@dataclass(frozen=True)
class AppStatus:
    """One app: what git asks for against what runs, and what the journal knows of it."""

    app: str
    desired: str | None  # the version in the file; None: no longer in the file
    running: str | None  # the version of our container; None: none runs, or it is not ours
    state: str  # the engine's state of the container, or "missing"
    health: str  # a ``Health`` (with its detail when unhealthy), "not ours" or "running (no longer in the file)"
    in_sync: bool
    last_applied: DeployRecord | None = None
    last_attempted: DeployRecord | None = None
    stable: str | None = None  # the version last promoted
    held: Failure | None = None  # the failed release the file still asks for: not deployed again
    failed: tuple[Failure, ...] = ()  # its failed releases on record, oldest first
    tasks: tuple[str, ...] = ()  # a service's tasks by node (``slot 1 on web-2: running``), then nodes down
    stack: StackLine | None = None  # what the file says of it as part of a stack
    hosts: tuple[str, ...] = ()  # its route's hosts, as the file says them (the dashboard's; not in the JSON)

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "desired": self.desired,
            "running": self.running,
            "state": self.state,
            "health": self.health,
            "in_sync": self.in_sync,
            "last_applied": self.last_applied.as_dict() if self.last_applied is not None else None,
            "last_attempted": self.last_attempted.as_dict() if self.last_attempted is not None else None,
            "stable": self.stable,
            "held": self.held.reason if self.held is not None else None,
            "tasks": list(self.tasks),
            "stack": self.stack.as_dict() if self.stack is not None else None,
            "failed": [
                {"version": f.version, "commit": f.revision[:8], "reason": f.reason, "culprit": f.culprit}
                for f in self.failed
            ],
        }


@dataclass(frozen=True)
class Status:
    """A host's status for one desired-state file; what could not be read is said, not raised."""

    file: str
    revision: str | None = None  # None: the desired state could not be read (``desired_error``)
    desired_error: str | None = None
    refused: str | None = None  # the tip of the branch is not applied: unsigned, a key not allowed, beyond --policy
    journal_error: str | None = None  # a journal that cannot be read reads as an empty one
    agent_pid: int | None = None
    suspended: str | None = None  # why the agent changes nothing, while it is suspended
    break_glass: tuple[tuple[str, str], ...] = ()  # (app, version) that a local rollback put back
    apps: tuple[AppStatus, ...] = ()  # sorted by name
    routes: tuple[str, ...] = ()  # each route, what serves it and its requests in flight; warm releases
    proxy: tuple[str, ...] = ()  # how the proxy differs from the file and what runs (empty: it matches)
    pending: tuple[str, ...] = ()  # the dry-run of the file against what runs (``core.report.plan_lines``)

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "file": self.file,
            "desired_error": self.desired_error,
            "refused": self.refused,
            "journal_error": self.journal_error,
            "agent_pid": self.agent_pid,
            "suspended": self.suspended,
            "break_glass": dict(self.break_glass),
            "apps": [app.as_dict() for app in self.apps],
            "routes": list(self.routes),
            "proxy": list(self.proxy),
        }
