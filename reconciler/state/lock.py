"""The state directory's lock: one holder per state directory, named to whoever waits for it.

Guarantees:
- ``locked`` holds ``flock(2)`` on ``state/lock``: the kernel drops it when the holder dies, so a crash
  never leaves a stale lock. A second holder waits ``timeout`` seconds, then gets ``LockHeld`` naming
  the holder (pid, host, command, since when).
- ``lock.owner`` holds the command line without a secret (``--notify`` URLs masked whole, URL
  passwords masked), and one written by an older version is masked so when it is shown.
- The state directory is ``0700`` and the files written here ``0600`` (``state.private``); an
  ``OSError`` opening them is the state directory's error, never a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reconciler.errors import LockHeld, state_dir_error
from reconciler.state.private import open_private, private_dir, shown_command, write_private


@contextmanager
def locked(state_dir: Path, *, timeout: float = 0.0) -> Iterator[None]:
    """Hold the state directory's lock; ``LockHeld`` names the holder when it cannot be had in time.

    ``flock(2)`` on ``state/lock``: the kernel drops it when the holder dies, even by SIGKILL, so a
    crash never leaves a stale lock. (By hand rather than the filelock package, whose import alone
    costs every ``reconcile`` run more than this whole function.)
    """
    owner = state_dir / "lock.owner"
    try:
        private_dir(state_dir)
        fd = open_private(state_dir / "lock", os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        raise state_dir_error(state_dir, exc) from None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockHeld(
                        f"state directory {state_dir} is locked by {_holder(owner)}; waited {timeout:g}s "
                        "(--lock-timeout to wait longer)"
                    ) from None
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        # Who holds the lock is only shown to a waiter: a full disk must not make the pass fail here.
        with contextlib.suppress(OSError):
            write_private(
                owner,
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "command": shown_command(["reconcile", *sys.argv[1:]])[:200],
                        "since": time.time(),
                    }
                ),
            )
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _holder(owner: Path) -> str:
    try:
        holder = json.loads(owner.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"]))
        # Masked again: a file written by an older version holds the command line as it was given.
        command = shown_command(str(holder["command"]).split(" "))
        return f"pid {holder['pid']} on {holder['host']} ({command}), since {since}"
    except (OSError, ValueError, KeyError):
        return "another process"
