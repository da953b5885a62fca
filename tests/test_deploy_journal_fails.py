"""A journal that cannot be written stops the pass as a state problem: no app is reported failed for it.

Fast: the engine is a stub (a pull it refuses, a start it allows); the journal is a real one whose writes
raise what the journal raises for a full disk (``TransientError``) or a file it cannot write
(``StateError``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.core.model import AppSpec, ObservedContainer, ObservedState, Role
from reconciler.core.plan import Action, ActionKind, Change, Plan, Resolution, Target
from reconciler.deploy.applier import Applier
from reconciler.errors import ImageError, ReconcileError, StateError, TransientError
from reconciler.state.journal import Journal, JournalResult

FULL = "state directory /state: no space left on device"


class RefusingEngine:
    """An engine that refuses every pull (a tag that does not exist) and lets a container start."""

    instance = "default"

    def pull(self, ref: str) -> str:
        raise ImageError(f"pull {ref}: manifest unknown")

    def start(self, container_id: str, name: str) -> None:
        pass

    def inspect(self, container: str) -> Any:
        return None


class FailingJournal(Journal):
    """A journal whose ``start`` (or ``finish``) raises ``error``, as a full or unwritable disk makes it."""

    def __init__(self, path: Path, error: ReconcileError, *, at: str) -> None:
        super().__init__(path)
        self.error, self.at = error, at

    def start(self, **fields: Any) -> int:
        if self.at == "start":
            raise self.error
        return super().start(**fields)

    def finish(self, entry_id: int, *, result: JournalResult, message: str = "") -> None:
        if self.at == "finish":
            raise self.error
        super().finish(entry_id, result=result, message=message)


SPEC = AppSpec.model_validate({"image": "team/web", "version": "v2"})
CREATE = Action(
    ActionKind.CREATE, "web", "web", (Change("version", "", "v2"),),
    Target("web", SPEC, Resolution("team/web:v2"), {}, "abc12345"),
)  # fmt: skip
STOPPED = ObservedContainer(
    id="id-web", name="web", state="exited", image_id="sha256:" + "1" * 64, managed=True, app="web",
    role=Role.CURRENT, version="v2",
)  # fmt: skip
START = Action(
    ActionKind.START, "web", "web", (Change("state", "exited", "running"),),
    Target("web", SPEC, Resolution("team/web:v2"), {}, "abc12345"),
)  # fmt: skip


@pytest.mark.parametrize("error", [TransientError(FULL), StateError("journal /state/journal.db: disk I/O error")])
@pytest.mark.parametrize(
    ("action", "observed", "at"),
    [
        (CREATE, ObservedState(), "finish"),  # the refused pull's failure cannot be journaled
        (START, ObservedState(containers=(STOPPED,)), "start"),  # the start's row cannot be opened
    ],
)
def test_a_journal_that_cannot_write_stops_the_pass_and_fails_no_app(
    tmp_path: Path, error: ReconcileError, action: Action, observed: ObservedState, at: str
) -> None:
    journal = FailingJournal(tmp_path, error, at=at)
    try:
        applier = Applier(RefusingEngine(), journal)  # type: ignore[arg-type]
        with pytest.raises(type(error)) as raised:
            applier.apply(Plan("abc12345", (action,)), observed)
        assert str(raised.value) == str(error)  # the journal's own message, whatever carries it
        assert applier.done == []  # no outcome: the app's deploy is neither failed nor rolled back
    finally:
        journal.close()


def test_an_engine_refusal_with_a_journal_that_writes_is_the_apps_failed_deploy(tmp_path: Path) -> None:
    """The other side of the split: the same refused pull, journaled, is that app's failure."""
    journal = Journal(tmp_path)
    try:
        (outcome,) = Applier(RefusingEngine(), journal).apply(Plan("abc12345", (CREATE,)), ObservedState())  # type: ignore[arg-type]
        assert outcome.result.value == "failed" and "manifest unknown" in outcome.message
        row = journal.last("web")
        assert row is not None and row.result is JournalResult.FAILED
    finally:
        journal.close()
