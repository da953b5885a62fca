"""The state directory's SQLite journal: deploys, failed releases, stable pointers, flags.

The agent's pid file is ``state.pidfile``; the state directory's lock is ``state.lock``.

Guarantees:
- Every apply of an app is one ``deploys`` row: commit and its author, app, from/to version and
  image, spec hash, result, start and end times, and a message that never holds an env value (every
  message and reason is scrubbed on its way in: ``telemetry.scrub``).
- A row is written as ``started`` before the first change and finished after the last, so a crash
  leaves evidence of the attempt: attempted apart from applied, as Flux keeps them. Its result is one
  of ``JournalResult``: nothing else is written, and a row is read back with its member (a result
  this version does not know is a ``StateError``).
- ``failures`` holds releases that failed their gate (the culprit) or were rolled back with it (its
  companions); ``stable`` holds every promotion, newest last; ``flags`` holds agent switches.
- No ``sqlite3.Error`` or ``OSError`` leaves this module: each becomes a ``ReconcileError`` naming the
  file. A read-only or full file system is a ``TransientError`` (``state directory X: read-only file
  system``), so the agent waits for it and changes nothing meanwhile; what needs a human (owner,
  permissions, a disk that takes no new journal) is a ``StateError``.
- A corrupt ``journal.db`` (not a database, malformed, its tables gone) is moved aside as
  ``journal.db.corrupt-TIMESTAMP`` and a new one is started, with one warning (``warn``); found when
  it is opened (``PRAGMA quick_check``) or when a query fails, which is then run once more on the
  new file. A journal deleted under an open ``Journal`` (the state directory removed) is started
  again at its next use; one replaced by another process is reopened.
- The state directory is ``0700`` and every file written here ``0600`` (``state.private``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from reconciler.core.failures import Failure
from reconciler.errors import (
    STATE_DIR_FIX,
    ReconcileError,
    SourceError,
    StateError,
    TransientError,
    state_dir_error,
)
from reconciler.state.private import open_private, private_dir
from reconciler.telemetry.log import warn_on_stderr
from reconciler.telemetry.scrub import scrub

T = TypeVar("T")

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


class JournalResult(StrEnum):
    """The result of a ``deploys`` row: where its apply stands, or how it ended."""

    STARTED = "started"  # written before the first change: no verdict yet
    SUCCEEDED = "succeeded"  # the release passed its gate (or the change needed none)
    FAILED = "failed"  # it did not start or failed its gate, and could not be taken back
    ROLLING_BACK = "rolling-back"  # the release failed its gate; its rollback has begun, not finished
    ROLLED_BACK = "rolled-back"  # the release failed its gate; the previous one runs again
    SUPERSEDED = "superseded"  # its gate was abandoned (a newer commit, a shutdown): verified by a later pass
    INTERRUPTED = "interrupted"  # cut short; a later pass finished it or planned it again
    ROLLING_OUT = "rolling-out"  # passed its gate, takes a share of requests: its rollout gives the verdict

    @property
    def unverified(self) -> bool:
        """No verdict yet, or one not carried out yet: the next pass verifies the release (or rolls it back)."""
        return self in (JournalResult.STARTED, JournalResult.SUPERSEDED, JournalResult.ROLLING_BACK)


JOURNAL_FILE = "journal.db"
CLEANUP = "cleanup"  # the action of removing what an interrupted deploy left: not a deploy of the app
UNVERIFIED = tuple(result for result in JournalResult if result.unverified)
SUSPENDED = "suspended"  # the flag that stops the agent from changing anything; its value says why
BREAK_GLASS = "break-glass:"  # + app: the version a local rollback put back, until git says so too
REFUSED = "refused"  # the agent does not apply the branch's tip (its signature, --policy): why, for status


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
    result: JournalResult
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

    def __init__(
        self,
        state_dir: Path | None,
        *,
        create: bool = True,
        repair: bool = True,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """The journal of ``state_dir``; ``None`` gives an empty one in memory (to read like a real one).

        ``repair=False`` (``status``, which changes nothing) reports a corrupt file instead of moving it
        aside; ``warn`` receives the one line that says a journal was moved aside (default: stderr).
        """
        self.state_dir = state_dir
        self.path = state_dir / JOURNAL_FILE if state_dir is not None else Path(":memory:")
        self.repair = repair
        self.warn = warn or warn_on_stderr
        self._inode: tuple[int, int] | None = None
        if state_dir is not None and not create and not self.path.exists():
            raise SourceError(f"no journal at {self.path}: nothing was applied with this --state-dir")
        self.db = self._connect()

    # -- the file: open, check, move aside, follow -------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Open the file and check it once; a corrupt one is moved aside (``repair``) and a new one opened."""
        if self.state_dir is None:
            return _in_memory()
        try:
            private_dir(self.state_dir)
        except OSError as exc:
            raise state_dir_error(self.state_dir, exc) from None
        opened = self._open_checked()
        if opened is not None:
            return opened
        if not self.repair:
            raise StateError(
                f"journal {self.path} is corrupt; `reconcile` or the agent moves it aside and starts a new one"
            )
        self._move_aside("is corrupt")
        opened = self._open_checked()
        if opened is None:  # a new, empty file that does not check: the disk itself is at fault
            raise StateError(f"journal {self.path}: a new journal cannot be written (check the disk)")
        return opened

    def _open_checked(self) -> sqlite3.Connection | None:
        """A connection to a sound file with our tables, or None when the file is corrupt."""
        assert self.state_dir is not None
        db: sqlite3.Connection | None = None
        if self._writable_here():
            # Made 0600 before sqlite makes it (its rollback journal takes the mode of the file); where it
            # cannot be, sqlite's own error says why.
            with contextlib.suppress(OSError):
                os.close(open_private(self.path, os.O_RDWR))
        try:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            checked = [str(row[0]) for row in db.execute("PRAGMA quick_check").fetchall()]
            if checked != ["ok"]:
                db.close()
                return None
            if self._writable_here():
                db.executescript(SCHEMA)
            elif self._tables(db) != _TABLES:
                # Cannot be created on a read-only disk: an empty journal reads as "nothing recorded".
                db.close()
                return _in_memory()
            stat = self.path.stat()
            self._inode = (stat.st_dev, stat.st_ino)
            return db
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            if _is_corrupt(exc):
                return None
            raise self._error(exc) from None
        except OSError as exc:
            if db is not None:
                db.close()
            raise state_dir_error(self.state_dir, exc) from None

    def _writable_here(self) -> bool:
        assert self.state_dir is not None
        return os.access(self.state_dir, os.W_OK) and not _read_only(self.state_dir)

    @staticmethod
    def _tables(db: sqlite3.Connection) -> set[str]:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {str(row[0]) for row in rows} & _TABLES

    def _move_aside(self, why: str) -> None:
        """Rename the file (and its rollback journal, which belongs to it) to ``journal.db.corrupt-TIME``."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            # Another process may have moved it aside and started a new one already: keep that one.
            if self._inode is not None and self._current_inode() != self._inode:
                return
            self.path.rename(aside)
            for suffix in ("-journal", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    self.path.with_name(self.path.name + suffix).rename(aside.with_name(aside.name + suffix))
        except OSError as exc:
            assert self.state_dir is not None
            raise state_dir_error(self.state_dir, exc) from None
        self._inode = None
        self.warn(f"journal {self.path} {why}: moved aside to {aside.name}; a new journal was started")

    def _current_inode(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def _follow(self) -> None:
        """Reopen when the file is gone (the state directory was removed) or was replaced by another process."""
        if self.state_dir is None or self._inode is None:
            return
        current = self._current_inode()
        if current == self._inode:
            return
        self.db.close()
        self._inode = None
        self.db = self._connect()
        if current is None:
            self.warn(f"journal {self.path} was deleted (with its state directory?); a new journal was started")

    def check(self) -> None:
        """Raise what stops the journal from being written now (gone, read-only, full), reopening as needed."""
        if self.state_dir is None:
            return
        self._run(lambda db: db.execute("SELECT 1").fetchall())
        if _read_only(self.state_dir):
            raise TransientError(f"state directory {self.state_dir}: read-only file system{_FIX}")
        free = _free_bytes(self.state_dir)
        if free is not None and free < _MIN_FREE:
            raise TransientError(f"state directory {self.state_dir}: no space left on device{_FIX}")

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` on the database, with every sqlite error translated; a corrupt file is moved aside and
        ``work`` runs once more on the new one."""
        for attempt in (1, 2):
            try:
                self._follow()
                return work(self.db)
            except sqlite3.Error as exc:
                if attempt == 1 and self.state_dir is not None and self.repair and _is_corrupt(exc):
                    self.db.close()
                    self._move_aside(f"is corrupt ({exc})")
                    self.db = self._connect()
                    continue
                if attempt == 1 and getattr(exc, "sqlite_errorname", "") == "SQLITE_READONLY_DBMOVED":
                    self._inode = (-1, -1)  # moved or deleted under us: reopen at the path
                    continue
                raise self._error(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, exc: sqlite3.Error) -> ReconcileError:
        """The one line for a sqlite error: the file, what is wrong, and what to do."""
        name = str(getattr(exc, "sqlite_errorname", ""))
        where = self.state_dir if self.state_dir is not None else Path(".")
        if name == "SQLITE_FULL":
            return TransientError(f"state directory {where}: no space left on device{_FIX}")
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
            if self.state_dir is not None and _read_only(self.state_dir):
                return TransientError(f"state directory {where}: read-only file system{_FIX}")
            return StateError(f"journal {self.path}: cannot be written ({exc}); check its owner and permissions")
        if name.startswith("SQLITE_BUSY") or name.startswith("SQLITE_LOCKED"):
            return TransientError(f"journal {self.path} is busy (another reconcile writes it); retry")
        return StateError(f"journal {self.path}: {exc}")

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
        cursor = self._run(lambda db: db.execute(
            "INSERT INTO deploys (started_at, revision, author, app, action, from_version, to_version, from_image,"
            " to_image, spec_hash, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), revision, author, app, action, from_version, to_version, from_image, to_image,
             spec_hash, JournalResult.STARTED),
        ))  # fmt: skip
        return int(cursor.lastrowid or 0)

    def finish(self, entry_id: int, *, result: JournalResult, message: str = "") -> None:
        """Give row ``entry_id`` its result."""
        verdict = JournalResult(result)
        self._run(
            lambda db: db.execute(
                "UPDATE deploys SET finished_at = ?, result = ?, message = ? WHERE id = ?",
                (time.time(), verdict.value, scrub(message), entry_id),
            )
        )

    def history(self, *, app: str | None = None, limit: int = 50) -> list[Entry]:
        query = "SELECT * FROM deploys"
        args: tuple[Any, ...] = ()
        if app:
            query += " WHERE app = ?"
            args = (app,)
        rows = self._run(lambda db: db.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall())
        return [self._entry(row) for row in rows]

    def last(self, app: str, *, result: JournalResult | None = None) -> Entry | None:
        """The newest deploy row of ``app`` (with ``result``, if given); cleanups are not deploys."""
        query, args = "SELECT * FROM deploys WHERE app = ? AND action != ?", [app, CLEANUP]
        if result is not None:
            query += " AND result = ?"
            args.append(result.value)
        row = self._run(lambda db: db.execute(query + " ORDER BY id DESC LIMIT 1", args).fetchone())
        return self._entry(row) if row else None

    def unverified(self) -> list[Entry]:
        """Per app, the newest row when it has no verdict yet or its rollback was cut short (a crash, a
        superseded gate, an engine outage), oldest first."""
        rows = self._run(lambda db: db.execute(
            "SELECT * FROM deploys WHERE id IN (SELECT MAX(id) FROM deploys WHERE action != ? GROUP BY app)"
            f" AND result IN ({', '.join('?' for _ in UNVERIFIED)}) ORDER BY id",
            (CLEANUP, *(result.value for result in UNVERIFIED)),
        ).fetchall())  # fmt: skip
        return [self._entry(row) for row in rows]

    def _entry(self, row: sqlite3.Row) -> Entry:
        try:
            result = JournalResult(row["result"])
        except ValueError:
            raise StateError(
                f"journal {self.path}: deploy {row['id']} has result {row['result']!r}, which this version does"
                " not know (written by a newer reconcile?)"
            ) from None
        return Entry(**(dict(row) | {"result": result}))

    # -- failed releases -------------------------------------------------------------------------

    def record_failure(
        self, *, app: str, spec_hash: str, revision: str, version: str, reason: str, culprit: bool
    ) -> None:
        self._run(lambda db: db.execute(
            "INSERT INTO failures (app, spec_hash, revision, version, reason, culprit, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (app, spec_hash, revision, version, scrub(reason), int(culprit), time.time()),
        ))  # fmt: skip

    def failures(self) -> list[Failure]:
        rows = self._run(
            lambda db: db.execute("SELECT * FROM failures WHERE cleared_at IS NULL ORDER BY id").fetchall()
        )
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
        return self._run(lambda db: db.execute(query, args).rowcount)

    # -- stable ----------------------------------------------------------------------------------

    def promote(self, *, app: str, image: str, version: str, image_id: str, revision: str, how: str) -> None:
        self._run(lambda db: db.execute(
            "INSERT INTO stable (app, image, version, image_id, revision, promoted_at, how)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (app, image, version, image_id, revision, time.time(), how),
        ))  # fmt: skip

    def stable(self, app: str) -> Promotion | None:
        row = self._run(
            lambda db: db.execute("SELECT * FROM stable WHERE app = ? ORDER BY id DESC LIMIT 1", (app,)).fetchone()
        )
        return Promotion(**dict(row)) if row else None

    # -- flags -----------------------------------------------------------------------------------

    def flag(self, key: str) -> str | None:
        row = self._run(lambda db: db.execute("SELECT value FROM flags WHERE key = ?", (key,)).fetchone())
        return str(row["value"]) if row else None

    def set_flag(self, key: str, value: str | None) -> None:
        if value is None:
            self._run(lambda db: db.execute("DELETE FROM flags WHERE key = ?", (key,)))
        else:
            self._run(lambda db: db.execute("INSERT OR REPLACE INTO flags (key, value) VALUES (?, ?)", (key, value)))

    def flags(self, prefix: str) -> dict[str, str]:
        rows = self._run(
            lambda db: db.execute("SELECT key, value FROM flags WHERE key LIKE ?", (prefix + "%",)).fetchall()
        )
        return {str(row["key"]).removeprefix(prefix): str(row["value"]) for row in rows}

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()


_TABLES = {"deploys", "failures", "stable", "flags"}
_FIX = STATE_DIR_FIX
_MIN_FREE = 64 * 1024  # below this a journal write (rollback journal + pages) may not fit
_CORRUPT_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def _in_memory() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.executescript(SCHEMA)
    return db


def _is_corrupt(exc: sqlite3.Error) -> bool:
    """The file is damaged (not a transient condition): its bytes or its schema."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    text = str(exc)
    return (
        name.startswith(_CORRUPT_CODES)
        or "malformed" in text
        or "not a database" in text
        or "no such table" in text
        or "no such column" in text
    )


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _free_bytes(directory: Path) -> int | None:
    try:
        stat = os.statvfs(directory)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize
