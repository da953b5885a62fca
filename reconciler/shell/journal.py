"""The state directory: the SQLite journal of deploys and the lock that serialises applies.

Guarantees:
- Every apply of an app is one row: commit, app, from/to version and image, result, start and end
  times, and a message that never holds an env value.
- A row is written as ``started`` before the first change and finished after the last, so a crash
  leaves evidence of the attempt (attempted apart from applied, as Flux keeps them).
- One holder of the lock per state directory; a second waits ``timeout`` seconds, then gets
  ``LockHeld`` naming the holder (pid, host, command, since when).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from reconciler.errors import LockHeld, ReconcileError

SCHEMA = """
CREATE TABLE IF NOT EXISTS deploys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    revision TEXT NOT NULL,
    app TEXT NOT NULL,
    action TEXT NOT NULL,
    from_version TEXT NOT NULL DEFAULT '',
    to_version TEXT NOT NULL DEFAULT '',
    from_image TEXT NOT NULL DEFAULT '',
    to_image TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deploys_app ON deploys (app, id);
"""


@dataclass(frozen=True)
class Entry:
    id: int
    started_at: float
    finished_at: float | None
    revision: str
    app: str
    action: str
    from_version: str
    to_version: str
    from_image: str
    to_image: str
    result: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Journal:
    """The ``journal.db`` of a state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "journal.db"
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ReconcileError(f"state directory {state_dir}: {exc}") from None

    def start(
        self,
        *,
        revision: str,
        app: str,
        action: str,
        from_version: str = "",
        to_version: str = "",
        from_image: str = "",
        to_image: str = "",
        now: float | None = None,
    ) -> int:
        cursor = self.db.execute(
            "INSERT INTO deploys (started_at, revision, app, action, from_version, to_version, from_image,"
            " to_image, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'started')",
            (now or time.time(), revision, app, action, from_version, to_version, from_image, to_image),
        )
        return int(cursor.lastrowid or 0)

    def finish(self, entry_id: int, *, result: str, message: str = "", now: float | None = None) -> None:
        self.db.execute(
            "UPDATE deploys SET finished_at = ?, result = ?, message = ? WHERE id = ?",
            (now or time.time(), result, message, entry_id),
        )

    def history(self, *, app: str | None = None, limit: int = 50) -> list[Entry]:
        query = "SELECT * FROM deploys"
        args: tuple[Any, ...] = ()
        if app:
            query += " WHERE app = ?"
            args = (app,)
        rows = self.db.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [Entry(*row) for row in rows]

    def close(self) -> None:
        self.db.close()


@contextmanager
def locked(state_dir: Path, *, timeout: float = 0.0) -> Iterator[None]:
    """Hold the state directory's lock; ``LockHeld`` names the holder when it cannot be had in time."""
    state_dir.mkdir(parents=True, exist_ok=True)
    owner = state_dir / "lock.owner"
    lock = FileLock(str(state_dir / "lock"))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        try:
            holder = json.loads(owner.read_text())
            who = (
                f"pid {holder['pid']} on {holder['host']} ({holder['command']}), "
                f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['since']))}"
            )
        except (OSError, ValueError, KeyError):
            who = "another process"
        raise LockHeld(
            f"state directory {state_dir} is locked by {who}; waited {timeout:g}s (--lock-timeout to wait longer)"
        ) from None
    try:
        owner.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": " ".join(["reconcile", *sys.argv[1:]])[:200],
                    "since": time.time(),
                }
            )
        )
        yield
    finally:
        lock.release()
