"""A fleet command's answers as text and JSON: the preview, the push and the status of every host. Pure.

Guarantees: each function gives exactly the lines (or the JSON document) the CLI prints, from records
only (``core.fleet``), so a report is tested without a host; no function reads a clock or a file.
"""

from __future__ import annotations

from typing import Any

from reconciler.core.fleet import AppOnHost, HostAnswer, HostPush, Running, Unanswered
from reconciler.core.plan import Plan
from reconciler.core.report import action_lines, note_lines, outcome_lines, plan_as_dict, plan_summary

Runs = tuple[Running, ...] | Unanswered


def runs_line(runs: Runs) -> str:
    """``web v2, worker v1 (exited)``: what a host runs, for a report."""
    if isinstance(runs, Unanswered):
        return f"unknown ({runs.reason})"
    shown = [f"{r.app} {r.version}" + ("" if r.state == "running" else f" ({r.state})") for r in runs]
    return ", ".join(shown) or "nothing of ours"


def runs_as_dict(runs: Runs) -> list[dict[str, str]] | None:
    if isinstance(runs, Unanswered):
        return None
    return [
        {"app": r.app, "version": r.version, "commit": r.commit, "digest": r.digest, "state": r.state} for r in runs
    ]


def preview_json(
    revision: str, file: str, groups: list[list[str]] | None, hosts: list[HostAnswer[Plan]]
) -> dict[str, Any]:
    return {
        "revision": revision, "file": file, "rollout": groups,
        "hosts": [{"host": h.host, "engine": h.engine, "error": h.error or None,
                   "plan": plan_as_dict(h.answer, file=file) if h.answer else None}
                  for h in hosts],
    }  # fmt: skip


def preview_lines(
    short: str, file: str, spec: str | None, groups: list[list[str]] | None, hosts: list[HostAnswer[Plan]]
) -> list[str]:
    """``--dry-run --all-hosts``: every host's drift under its name, and the groups a push would take."""
    lines = [f"{file} @ {short}: {len(hosts)} hosts"]
    if groups is not None:
        lines.append(f"rollout {spec}: " + "; ".join(f"{n}. {', '.join(g)}" for n, g in enumerate(groups, 1)))
    for h in hosts:
        if h.answer is None:
            lines.append(f"== {h.host} ({h.engine}): could not be read: {h.error}")
        else:
            lines.append(f"== {h.host} ({h.engine}): {plan_summary(h.answer)}")
            lines.extend(action_lines(h.answer) + note_lines(h.answer))
    return lines


def push_json(
    revision: str, file: str, groups: list[list[str]] | None, hosts: list[HostPush], runs: dict[str, Runs]
) -> dict[str, Any]:
    return {
        "revision": revision, "file": file, "rollout": groups,
        "ok": all(h.ok for h in hosts),
        "hosts": [{"host": h.host, "engine": h.engine, "group": h.group or None, "state": str(h.state),
                   "error": h.error or None, "outcomes": [o.as_dict() for o in h.outcomes],
                   "runs": runs_as_dict(runs[h.host])}
                  for h in hosts],
    }  # fmt: skip


def push_lines(
    revision: str, short: str, file: str, spec: str, hosts: list[HostPush], runs: dict[str, Runs]
) -> list[str]:
    """``--all-hosts``: where the push left each host, what it did there and what runs now; a tally."""
    lines = [f"{file} @ {short}: rollout {spec}"]
    for h in hosts:
        group = f"group {h.group}, " if h.group else ""
        lines.append(f"== {h.host} ({group}{h.engine}): {h.state}" + (f": {h.error}" if h.error else ""))
        if h.outcomes:
            lines.extend("  " + line for line in outcome_lines(h.outcomes, revision=revision, file=""))
        lines.append("  runs: " + runs_line(runs[h.host]))
    tally: dict[str, int] = {}
    for h in hosts:
        tally[str(h.state)] = tally.get(str(h.state), 0) + 1
    lines.append("fleet: " + ", ".join(f"{count} {state}" for state, count in tally.items()))
    return lines


def converged(hosts: list[HostAnswer[tuple[AppOnHost, ...]]]) -> int:
    """How many hosts run what the commit asks of them."""
    return sum(1 for h in hosts if h.answer is not None and all(a.in_sync for a in h.answer))


def status_json(revision: str, file: str, hosts: list[HostAnswer[tuple[AppOnHost, ...]]]) -> dict[str, Any]:
    return {
        "revision": revision, "file": file, "converged": converged(hosts),
        "hosts": [{"host": h.host, "engine": h.engine, "error": h.error or None,
                   "converged": h.answer is not None and all(a.in_sync for a in h.answer),
                   "apps": [a.as_dict() for a in h.answer or ()]}
                  for h in hosts],
    }  # fmt: skip


def status_lines(short: str, file: str, hosts: list[HostAnswer[tuple[AppOnHost, ...]]]) -> list[str]:
    """``status --all-hosts``: host by app, version, desired, commit, state; how many hosts converged."""
    rows = [("HOST", "APP", "VERSION", "DESIRED", "COMMIT", "STATE")]
    for h in hosts:
        if h.error:
            rows.append((h.host, "-", "-", "-", "-", f"not read: {h.error}"))
        for a in h.answer or ():
            r = a.running
            state = (r.state if r else "missing") + ("" if a.in_sync else ", DRIFT")
            # Which stable: hosts that follow a canary's differ only in the image they run.
            which = f" ({r.digest.split(':')[-1][:12]})" if r and r.version == "stable" and r.digest else ""
            rows.append((h.host, a.app, r.version + which if r else "-", a.desired or "(not on this host)",
                         r.commit if r else "-", state))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5] for row in rows]
    lines.append(f"{converged(hosts)} of {len(hosts)} hosts run what {file} @ {short} asks for")
    return lines
