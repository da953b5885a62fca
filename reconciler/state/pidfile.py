"""The agent's pid file: ``agent.pid`` in the state directory, held with ``flock`` by the agent it names.

Guarantees:
- ``agent.pid`` is held by the agent it names for as long as it runs, and removed only by it
  (``PidFile``); the kernel drops the lock when the agent dies, even by SIGKILL.
- A pid in a file that nobody holds is not a running agent (``read_pid``): a reused pid never passes
  for one.
- No ``OSError`` leaves ``PidFile.claim``: it becomes the state directory's error (``TransientError``
  for a read-only or full disk, ``StateError`` otherwise); a file another live agent holds is a
  ``UserError`` naming its pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from reconciler.errors import UserError, state_dir_error
from reconciler.state.private import open_private, private_dir

PID_FILE = "agent.pid"


def read_pid(state_dir: Path) -> int | None:
    """The pid of the agent running on ``state_dir``: the one ``agent.pid`` names while a process holds
    its lock. A pid in a file that nobody holds is not a running agent (its process may be another now)."""
    try:
        fd = os.open(state_dir / PID_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _pid_in(fd)
        except OSError:
            return None
        return None  # nobody holds it (the descriptor's close drops our probe)
    finally:
        os.close(fd)


def _pid_in(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None


class PidFile:
    """``agent.pid`` of one agent, held with ``flock(2)`` for as long as it runs.

    The kernel drops the lock when the agent dies (even by SIGKILL), so a stale file never keeps an
    agent out, and a reused pid never passes for an agent. ``claim`` is called at every pass: a file
    removed with its state directory is made again; a file another agent holds, or that names another
    live process, is never taken over (``UserError`` naming that pid).
    """

    def __init__(self, state_dir: Path, pid: int) -> None:
        self.state_dir = state_dir
        self.pid = pid
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.state_dir / PID_FILE

    def claim(self) -> None:
        """Hold ``agent.pid`` naming our pid, or raise why not (``TransientError`` for a read-only or full disk)."""
        try:
            if self._fd is not None and self._ours_still():
                return
            self._close()
            self._take()
        except OSError as exc:
            raise state_dir_error(self.state_dir, exc) from None

    def release(self) -> None:
        """Remove ``agent.pid`` while it is still ours (our lock, our pid in it), then drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if self._same_file(self._fd) and _pid_in(self._fd) == self.pid:
                self.path.unlink()
        self._close()

    def _ours_still(self) -> bool:
        """True when the locked file is still ``agent.pid`` and names us; False when the path is another file
        (the directory was removed); ``UserError`` when our file now names another live process."""
        assert self._fd is not None
        if not self._same_file(self._fd):
            return False
        named = _pid_in(self._fd)
        if named == self.pid:
            return True
        if named is not None and _alive(named):
            raise self._taken(named)
        self._write(self._fd)  # emptied or naming a dead process: ours again
        return True

    def _take(self) -> None:
        private_dir(self.state_dir)
        while True:
            fd = open_private(self.path, os.O_RDWR)
            try:
                if not self._lock(fd):
                    raise self._taken(_pid_in(fd))
                # Locked a file that its holder removed as we opened it: start again on the new one.
                if self._same_file(fd):
                    self._write(fd)
                    self._fd, fd = fd, -1
                    return
            finally:
                if fd >= 0:
                    os.close(fd)

    @staticmethod
    def _lock(fd: int) -> bool:
        # A few tries: `reconcile status` holds a shared lock for an instant when it reads the pid.
        for _ in range(10):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.02)
            else:
                return True
        return False

    def _same_file(self, fd: int) -> bool:
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)

    def _write(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(self.pid).encode(), 0)

    def _taken(self, other: int | None) -> UserError:
        holder = f"an agent (pid {other})" if other is not None else "another agent"
        return UserError(f"{holder} already runs on {self.state_dir}; one per state directory")

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, another user's
    return True
