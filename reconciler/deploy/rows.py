"""The journal as the deploys of a pass use it: one call at a time, and a journal that fails is the pass's
trouble, never an app's.

Guarantees:
- ``Rows`` calls the journal under one lock: its sqlite connection (and its reopening of a moved or
  corrupt file) is shared by the deploys of a pass, which run in threads.
- A journal that cannot be written leaves ``Rows`` as ``JournalFailed`` (a ``StateError``, the journal's
  message unchanged) when the journal said ``StateError``, and as the journal's own ``TransientError``
  (a full or read-only disk, a busy file) otherwise: the deploy steps catch what the engine refuses
  (``UserError``) and re-raise these two, so the pass stops with the state problem and no app's deploy
  is reported failed for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from reconciler.errors import StateError
from reconciler.state.journal import Entry, Journal, JournalResult

T = TypeVar("T")


class JournalFailed(StateError):
    """The journal refused a write or a read in the middle of a deploy (a ``StateError`` it raised)."""


class Rows:
    """The journal calls of ``Applier`` and ``Services``, one at a time (see the module docstring)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.lock = threading.RLock()

    @contextmanager
    def _held(self) -> Iterator[None]:
        with self.lock:
            try:
                yield
            except JournalFailed:
                raise
            except StateError as exc:
                raise JournalFailed(str(exc)) from exc

    def _call(self, fn: Callable[[], T]) -> T:
        with self._held():
            return fn()

    def start(self, **fields: str) -> int:
        return self._call(lambda: self.journal.start(**fields))

    def finish(self, entry_id: int, *, result: JournalResult, message: str = "") -> None:
        self._call(lambda: self.journal.finish(entry_id, result=result, message=message))

    def last(self, app: str) -> Entry | None:
        return self._call(lambda: self.journal.last(app))

    def unverified(self) -> list[Entry]:
        return self._call(self.journal.unverified)

    def flag(self, key: str) -> str | None:
        return self._call(lambda: self.journal.flag(key))

    def set_flag(self, key: str, value: str | None) -> None:
        self._call(lambda: self.journal.set_flag(key, value))
