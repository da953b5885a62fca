"""The state directory: the SQLite journal, failed releases, stable pointers, flags, and the lock.

Guarantees:
- Every apply of an app is one ``deploys`` row: commit and its author, app, from/to version and
  image, spec hash, result, start and end times, and a message that never holds an env value.
- A row is written as ``started`` before the first change and finished after the last, so a crash
  leaves evidence of the attempt: attempted apart from applied, as Flux keeps them.
- ``failures`` holds releases that failed their gate (the culprit) or were rolled back with it (its
  companions); ``stable`` holds every promotion, newest last; ``flags`` holds agent switches.
- One holder of the lock per state directory; a second waits ``timeout`` seconds, then gets
  ``LockHeld`` naming the holder (pid, host, command, since when).
"""

from __future__ import annotations

import fcntl
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

from reconciler.core.failures import Failure
from reconciler.errors import LockHeld, ReconcileError, SourceError

SCHEMA = """
CREATE TABLE IF NOT EXISTS deploys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL,
    revision TEXT NOT NULL,
    author TEXT NOT NULL DEFAULT '',
    app TEXT NOT NULL,
    action TEXT NOT NULL,
    from_version TEXT NOT NULL DEFAULT '',
    to_version TEXT NOT NULL DEFAULT '',
    from_image TEXT NOT NULL DEFAULT '',
    to_image TEXT NOT NULL DEFAULT '',
    spec_hash TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deploys_app ON deploys (app, id);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    revision TEXT NOT NULL,
    version TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL,
    culprit INTEGER NOT NULL,
    at REAL NOT NULL,
    cleared_at REAL
);
CREATE TABLE IF NOT EXISTS stable (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    image TEXT NOT NULL,
    version TEXT NOT NULL,
    image_id TEXT NOT NULL,
    revision TEXT NOT NULL,
    promoted_at REAL NOT NULL,
    how TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS flags (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

UNVERIFIED = ("started", "superseded")
SUSPENDED = "suspended"  # the flag that stops the agent from changing anything; its value says why
BREAK_GLASS = "break-glass:"  # + app: the version a local rollback put back, until git says so too


@dataclass(frozen=True)
class Entry:
    id: int
    started_at: float
    finished_at: float | None
    revision: str
    author: str
    app: str
    action: str
    from_version: str
    to_version: str
    from_image: str
    to_image: str
    spec_hash: str
    result: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Promotion:
    id: int
    app: str
    image: str
    version: str
    image_id: str
    revision: str
    promoted_at: float
    how: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Journal:
    """The ``journal.db`` of a state directory."""

    def __init__(self, state_dir: Path | None, *, create: bool = True) -> None:
        """The journal of ``state_dir``; ``None`` gives an empty one in memory (to read like a real one)."""
        self.path = state_dir / "journal.db" if state_dir is not None else Path(":memory:")
        if state_dir is not None and not create and not self.path.exists():
            raise SourceError(f"no journal at {self.path}: nothing was applied with this --state-dir")
        try:
            if state_dir is not None:
                state_dir.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ReconcileError(f"state directory {state_dir}: {exc}") from None

    # -- deploys -----------------------------------------------------------------------------------

    def start(
        self,
        *,
        revision: str,
        app: str,
        action: str,
        author: str = "",
        from_version: str = "",
        to_version: str = "",
        from_image: str = "",
        to_image: str = "",
        spec_hash: str = "",
    ) -> int:
        cursor = self.db.execute(
            "INSERT INTO deploys (started_at, revision, author, app, action, from_version, to_version, from_image,"
            " to_image, spec_hash, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'started')",
            (time.time(), revision, author, app, action, from_version, to_version, from_image, to_image,
             spec_hash),
        )  # fmt: skip
        return int(cursor.lastrowid or 0)

    def finish(self, entry_id: int, *, result: str, message: str = "") -> None:
        self.db.execute(
            "UPDATE deploys SET finished_at = ?, result = ?, message = ? WHERE id = ?",
            (time.time(), result, message, entry_id),
        )

    def history(self, *, app: str | None = None, limit: int = 50) -> list[Entry]:
        query = "SELECT * FROM deploys"
        args: tuple[Any, ...] = ()
        if app:
            query += " WHERE app = ?"
            args = (app,)
        rows = self.db.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [Entry(**dict(row)) for row in rows]

    def last(self, app: str, *, result: str | None = None) -> Entry | None:
        """The newest row of ``app`` (with ``result``, if given)."""
        query, args = "SELECT * FROM deploys WHERE app = ?", [app]
        if result is not None:
            query += " AND result = ?"
            args.append(result)
        row = self.db.execute(query + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return Entry(**dict(row)) if row else None

    def unverified(self) -> list[Entry]:
        """Per app, the newest row when it never got a verdict (a crash or a superseded gate)."""
        rows = self.db.execute(
            "SELECT * FROM deploys WHERE id IN (SELECT MAX(id) FROM deploys GROUP BY app) AND result IN (?, ?)",
            UNVERIFIED,
        ).fetchall()
        return [Entry(**dict(row)) for row in rows]

    # -- failed releases -------------------------------------------------------------------------

    def record_failure(
        self, *, app: str, spec_hash: str, revision: str, version: str, reason: str, culprit: bool
    ) -> None:
        self.db.execute(
            "INSERT INTO failures (app, spec_hash, revision, version, reason, culprit, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (app, spec_hash, revision, version, reason, int(culprit), time.time()),
        )

    def failures(self) -> list[Failure]:
        rows = self.db.execute("SELECT * FROM failures WHERE cleared_at IS NULL ORDER BY id").fetchall()
        return [
            Failure(
                app=row["app"], spec_hash=row["spec_hash"], revision=row["revision"], version=row["version"],
                reason=row["reason"], culprit=bool(row["culprit"]), at=row["at"],
            )
            for row in rows
        ]  # fmt: skip

    def clear_failures(self, app: str | None = None) -> int:
        """Forget the failed releases of ``app`` (all apps: None) so they are tried again."""
        query = "UPDATE failures SET cleared_at = ? WHERE cleared_at IS NULL"
        args: list[object] = [time.time()]
        if app is not None:
            query += " AND app = ?"
            args.append(app)
        return self.db.execute(query, args).rowcount

    # -- stable ----------------------------------------------------------------------------------

    def promote(self, *, app: str, image: str, version: str, image_id: str, revision: str, how: str) -> None:
        self.db.execute(
            "INSERT INTO stable (app, image, version, image_id, revision, promoted_at, how)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (app, image, version, image_id, revision, time.time(), how),
        )

    def stable(self, app: str) -> Promotion | None:
        row = self.db.execute("SELECT * FROM stable WHERE app = ? ORDER BY id DESC LIMIT 1", (app,)).fetchone()
        return Promotion(**dict(row)) if row else None

    # -- flags -----------------------------------------------------------------------------------

    def flag(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM flags WHERE key = ?", (key,)).fetchone()
        return str(row["value"]) if row else None

    def set_flag(self, key: str, value: str | None) -> None:
        if value is None:
            self.db.execute("DELETE FROM flags WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT OR REPLACE INTO flags (key, value) VALUES (?, ?)", (key, value))

    def flags(self, prefix: str) -> dict[str, str]:
        rows = self.db.execute("SELECT key, value FROM flags WHERE key LIKE ?", (prefix + "%",)).fetchall()
        return {str(row["key"]).removeprefix(prefix): str(row["value"]) for row in rows}

    def close(self) -> None:
        self.db.close()


@contextmanager
def locked(state_dir: Path, *, timeout: float = 0.0) -> Iterator[None]:
    """Hold the state directory's lock; ``LockHeld`` names the holder when it cannot be had in time.

    ``flock(2)`` on ``state/lock``: the kernel drops it when the holder dies, even by SIGKILL, so a
    crash never leaves a stale lock. (By hand rather than the filelock package, whose import alone
    costs every ``reconcile`` run more than this whole function.)
    """
    owner = state_dir / "lock.owner"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        handle = (state_dir / "lock").open("a")
    except OSError as exc:
        raise ReconcileError(f"state directory {state_dir}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockHeld(
                        f"state directory {state_dir} is locked by {_holder(owner)}; waited {timeout:g}s "
                        "(--lock-timeout to wait longer)"
                    ) from None
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
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
        handle.close()  # closing the descriptor releases the lock


def _holder(owner: Path) -> str:
    try:
        holder = json.loads(owner.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"]))
        return f"pid {holder['pid']} on {holder['host']} ({holder['command']}), since {since}"
    except (OSError, ValueError, KeyError):
        return "another process"
