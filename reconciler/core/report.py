"""What a pass did, as records, and how those records read to a person or a machine. Pure.

Guarantees: nothing formatted here can contain an env value (plans carry env keys only); every report
names the commit it came from.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from reconciler.core.plan import ActionKind, Plan
from reconciler.core.status import Status


class Result(StrEnum):
    APPLIED = "applied"
    FAILED = "failed"  # nothing changed for this app, or it could not be brought back
    ROLLED_BACK = "rolled-back"  # the new release failed its gate; the previous one runs again
    SKIPPED = "skipped"  # conflict or unresolvable image: reported, not touched
    SUPERSEDED = "superseded"  # its gate abandoned (a newer commit, a shutdown), or its container removed mid-start
    ROLLING_OUT = "rolling-out"  # passed its gate; its weighted rollout gives the verdict at later passes

    @property
    def ok(self) -> bool:
        return self in (Result.APPLIED, Result.ROLLING_OUT)


@dataclass(frozen=True)
class Outcome:
    app: str
    kind: ActionKind
    container: str
    result: Result
    message: str = ""
    release_failed: bool = False  # the new release itself did not start or failed its gate
    revision: str = ""  # the commit of the release, when it is not the pass's own (a late verdict)
    waiting_for: str = ""  # not deployed: the dependency (``depends_on``) that is not as it needs it

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "action": str(self.kind),
            "container": self.container,
            "result": str(self.result),
            "message": self.message,
        }


def plan_as_dict(plan: Plan, *, file: str) -> dict[str, Any]:
    return {
        "revision": plan.revision,
        "file": file,
        "in_sync": plan.in_sync,
        "notes": [{"kind": n.kind, "app": n.app, "container": n.container, "message": n.message} for n in plan.notes],
        "actions": [
            {
                "app": action.app,
                "action": str(action.kind),
                "container": action.container,
                "changes": [{"field": c.field, "was": c.was, "now": c.now} for c in action.reasons],
                "message": action.message,
            }
            for action in plan.actions
        ],
    }


_SIGN = {
    ActionKind.CREATE: "+",
    ActionKind.REPLACE: "~",
    ActionKind.START: ">",
    ActionKind.REMOVE: "-",
    ActionKind.CONFLICT: "!",
    ActionKind.ERROR: "!",
}


def plan_summary(plan: Plan) -> str:
    """``in sync, nothing to do`` or ``2 changes, 1 problem``: a plan in a few words."""
    if plan.in_sync:
        return "in sync, nothing to do"
    changing, problems = len(plan.changes), len(plan.problems)
    return f"{changing} change{'s' if changing != 1 else ''}" + (
        f", {problems} problem{'s' if problems != 1 else ''}" if problems else ""
    )


def plan_lines(plan: Plan, *, file: str) -> list[str]:
    """``FILE @ SHORT: summary``, then each action with its reasons, then the notes."""
    short = plan.revision[:8] or "(no commit)"
    return [f"{file} @ {short}: {plan_summary(plan)}", *action_lines(plan), *note_lines(plan)]


def action_lines(plan: Plan) -> list[str]:
    """Each action of the plan, with the reasons of each change under it."""
    lines = []
    for action in plan.actions:
        head = f"  {_SIGN[action.kind]} {action.kind.value:<8} {action.container}"
        lines.append(head + (f": {action.message}" if action.message else ""))
        lines.extend(f"      {change}" for change in action.reasons)
    return lines


def note_lines(plan: Plan) -> list[str]:
    """What a person should know that changes nothing (another source's containers, an unread env_file)."""
    return [f"  note: {note.container}: {note.message}" for note in plan.notes]


def proxy_lines(changes: list[str], routes: list[str], *, dry_run: bool) -> list[str]:
    """The proxy's changes (made, or with ``dry_run`` to make) and where each route points."""
    sign = "  ~ proxy    " if dry_run else "  proxy: "
    return [sign + change for change in changes] + ["  " + route for route in routes]


def outcome_lines(outcomes: list[Outcome], *, revision: str, file: str) -> list[str]:
    short = revision[:8] or "(no commit)"
    if not outcomes:
        return [f"{file} @ {short}: in sync, nothing to do"]
    lines = []
    for outcome in outcomes:
        text = f"{outcome.result.value:<11} {outcome.kind.value:<8} {outcome.container} @ {short}"
        lines.append(text + (f": {outcome.message}" if outcome.message else ""))
    return lines


def status_lines(status: Status) -> list[str]:
    """``reconcile status`` as a person reads it (``status`` is what ``ops.status.collect`` returns)."""
    out = []
    head = f"{status.file} @ {(status.revision or '?')[:8]}"
    agent = f"agent running (pid {status.agent_pid})" if status.agent_pid else "no agent running"
    out.append(f"{head}; {agent}")
    if status.desired_error:
        out.append(f"!! desired state unreadable: {status.desired_error}")
    if status.refused:
        out.append(f"!! not applied: {status.refused}")
    if status.suspended:
        out.append(f"!! SUSPENDED: {status.suspended} — the agent changes nothing until `reconcile resume`")
    for name, version in sorted(status.break_glass):
        out.append(
            f"!! the host differs from git: {name} runs {version} by a local rollback. Make git match first: "
            f"`reconcile rollback {name} --to {version} --push`, then `reconcile resume` (resuming before that "
            "redeploys what git asks for)"
        )
    for app in status.apps:
        sync = "in sync" if app.in_sync else "DRIFT"
        out.append(
            f"{app.app}: desired {app.desired or '-'}, running {app.running or '-'} ({app.state}, "
            f"{app.health}), {sync}, stable {app.stable or '-'}"
        )
        out.extend(f"    {line}" for line in app.tasks)
        if app.stack is not None:
            out.append(f"    stack: {app.stack.said()}")
        for label, entry in (("last applied", app.last_applied), ("last attempted", app.last_attempted)):
            if entry is not None:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.at)) + "Z"
                # Why the last attempt failed (a release command's last lines), unless hold-back says it below.
                why = entry.message if entry.result in ("failed", "rolled-back") and app.held is None else ""
                out.append(f"    {label}: {entry.version} @ {entry.revision[:8]} {entry.result} {when}" + (
                    f": {why}" if why else ""
                ))  # fmt: skip
        if app.held is not None and app.held.reason:
            out.append(f"    held back: {app.held.reason} (`reconcile retry {app.app}` to try again)")
        for failed in app.failed:
            role = "failed" if failed.culprit else "rolled back with its commit"
            out.append(f"    {role}: {failed.version} @ {failed.revision[:8]}: {failed.reason}")
    out.extend(status.routes)
    out.extend(f"proxy: {drift}" for drift in status.proxy)
    return out


class HistoryRow(Protocol):
    """A journal row as ``history`` shows it (``state.journal.Entry``)."""

    @property
    def started_at(self) -> float: ...

    @property
    def finished_at(self) -> float | None: ...

    @property
    def revision(self) -> str: ...

    @property
    def author(self) -> str: ...

    @property
    def app(self) -> str: ...

    @property
    def action(self) -> str: ...

    @property
    def from_version(self) -> str: ...

    @property
    def to_version(self) -> str: ...

    @property
    def message(self) -> str: ...

    @property
    def result(self) -> object: ...


def history_line(entry: HistoryRow) -> str:
    """One deploy of ``reconcile history``: when (local time), commit, app, action, change, result, who, why."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.started_at))
    took = f" {entry.finished_at - entry.started_at:.1f}s" if entry.finished_at else ""
    change = f"{entry.from_version or '-'} -> {entry.to_version or '-'}" if entry.action != "cleanup" else ""
    commit = entry.revision[:8] or "-"
    line = f"{when}  {commit:8}  {entry.app:<20} {entry.action:<8} {change:<24} {entry.result}{took}"
    by = f"  by {entry.author}" if entry.author else ""
    return line + by + (f"  {entry.message}" if entry.message else "")


class SeenVersion(Protocol):
    """A version in the file's git history (``ops.edits.Seen``)."""

    @property
    def version(self) -> str: ...

    @property
    def revision(self) -> str: ...

    @property
    def when(self) -> float: ...

    @property
    def author(self) -> str: ...


def choices_lines(
    app: str, file: str, short: str, *, current: str, previous: str, stable: str, seen: Sequence[SeenVersion]
) -> list[str]:
    """``reconcile rollback APP``: where the app can go back to, and its versions in git, newest first."""
    lines = [f"{app}: {file} asks for {current} @ {short}"]
    lines += [f"  --to {label:<9} {found}" for label, found in (("previous", previous), ("stable", stable))]
    lines.append("  versions in git history, newest first:")
    for item in seen:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(item.when))
        lines.append(f"    {item.version:<16} {item.revision[:8]}  {when}Z  {item.author}")
    return lines


def written_line(revision: str, branch: str, pushed_to: str, retried: bool, message: str) -> str:
    """What a command that commits says: the commit, its message, where it went."""
    where = f"pushed to {pushed_to}" if pushed_to else "not pushed (--push to push it)"
    again = " after the remote moved (edit re-applied on its tip)" if retried else ""
    return f"committed {revision[:8]} on {branch}: {message}; {where}{again}"


def retried_line(app: str, pid: int | None) -> str:
    """``reconcile retry APP``: the failed release is forgotten, and who tries it again (a running agent, asked now)."""
    then = f"agent (pid {pid}) asked for a pass now" if pid else "the next reconcile or agent pass tries it again"
    return f"{app}: failed release forgotten; {then}"


def swapped_back_warning(app: str, version: str) -> str:
    """``reconcile rollback APP --local``: the host now differs from git, and how to make git match."""
    return (
        "!! the agent is suspended and the host differs from git. Make git match with "
        f"`reconcile rollback {app} --to {version} --push` (or a commit of your own), then `reconcile resume`."
    )
