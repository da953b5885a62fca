"""The result of a journal row is a `JournalResult`: written only from that list, read back as its member."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reconciler.errors import StateError
from reconciler.state.journal import UNVERIFIED, Journal, JournalResult


def test_a_row_is_started_then_finished_with_a_member() -> None:
    journal = Journal(None)
    first = journal.start(revision="c0ffee", app="web", action="create", to_version="v1")
    second = journal.start(revision="c0ffee", app="web", action="replace", to_version="v2")
    entry = journal.last("web")
    assert entry is not None and entry.result is JournalResult.STARTED
    journal.finish(first, result=JournalResult.SUCCEEDED)
    journal.finish(second, result=JournalResult.ROLLED_BACK)
    assert [e.result for e in journal.history(app="web")] == [JournalResult.ROLLED_BACK, JournalResult.SUCCEEDED]
    applied = journal.last("web", result=JournalResult.SUCCEEDED)
    assert applied is not None and applied.id == first
    assert journal.history()[0].as_dict()["result"] == "rolled-back"


def test_a_result_outside_the_list_is_never_written() -> None:
    journal = Journal(None)
    entry = journal.start(revision="c0ffee", app="web", action="create")
    with pytest.raises(ValueError):
        journal.finish(entry, result="succeded")  # type: ignore[arg-type]
    assert journal.last("web", result=JournalResult.STARTED) is not None


def test_unverified_rows_are_those_without_a_verdict_carried_out() -> None:
    assert set(UNVERIFIED) == {JournalResult.STARTED, JournalResult.SUPERSEDED, JournalResult.ROLLING_BACK}
    journal = Journal(None)
    for app, result in (("a", JournalResult.SUPERSEDED), ("b", JournalResult.INTERRUPTED), ("c", None)):
        entry = journal.start(revision="c0ffee", app=app, action="create")
        if result is not None:
            journal.finish(entry, result=result)
    assert sorted((e.app, e.result) for e in journal.unverified()) == [
        ("a", JournalResult.SUPERSEDED),
        ("c", JournalResult.STARTED),
    ]


def test_a_result_this_version_does_not_know_is_a_state_error(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.start(revision="c0ffee", app="web", action="create")
    journal.close()
    with sqlite3.connect(tmp_path / "journal.db") as db:
        db.execute("UPDATE deploys SET result = 'paused'")
    db.close()
    journal = Journal(tmp_path)
    try:
        with pytest.raises(StateError, match="'paused', which this version does not know"):
            journal.last("web")
    finally:
        journal.close()
