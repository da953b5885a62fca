"""What a pass did, as records, and how those records read to a person or a machine. Pure.

Guarantees: nothing formatted here can contain an env value (plans carry env keys only); every report
names the commit it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.core.plan import ActionKind, Plan


class Result(StrEnum):
    APPLIED = "applied"
    FAILED = "failed"  # nothing changed for this app, or it could not be brought back
    ROLLED_BACK = "rolled-back"  # the new release failed its gate; the previous one runs again
    SKIPPED = "skipped"  # conflict or unresolvable image: reported, not touched

    @property
    def ok(self) -> bool:
        return self is Result.APPLIED


@dataclass(frozen=True)
class Outcome:
    app: str
    kind: ActionKind
    container: str
    result: Result
    message: str = ""

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


def plan_lines(plan: Plan, *, file: str) -> list[str]:
    short = plan.revision[:8] or "(no commit)"
    if plan.in_sync:
        return [f"{file} @ {short}: in sync, nothing to do"]
    changing = len(plan.changes)
    lines = [
        f"{file} @ {short}: {changing} change{'s' if changing != 1 else ''}"
        + (f", {len(plan.problems)} problem{'s' if len(plan.problems) != 1 else ''}" if plan.problems else "")
    ]
    for action in plan.actions:
        head = f"  {_SIGN[action.kind]} {action.kind.value:<8} {action.container}"
        lines.append(head + (f": {action.message}" if action.message else ""))
        lines.extend(f"      {change}" for change in action.reasons)
    return lines


def outcome_lines(outcomes: list[Outcome], *, revision: str) -> list[str]:
    short = revision[:8] or "(no commit)"
    if not outcomes:
        return [f"@ {short}: in sync, nothing to do"]
    lines = []
    for outcome in outcomes:
        text = f"{outcome.result.value:<11} {outcome.kind.value:<8} {outcome.container} @ {short}"
        lines.append(text + (f": {outcome.message}" if outcome.message else ""))
    return lines
