"""The state directory is private: its modes, and what may be written in it of a command line.

Guarantees:
- ``private_dir(path)`` makes the directory (and the parents it lacks, ``0700`` too) and leaves it
  ``0700``: a directory of ours that is wider (made by an older version, or under another umask) is
  narrowed; one of another user, or on a read-only disk, is left as it is (what cannot be written
  there is said where it is).
- ``open_private``/``write_private`` create a file ``0600`` and narrow a wider one of ours, whatever
  the umask: the journal, the lock and its owner, the pid file, crash reports. ``replace_private`` writes
  one whole or not at all (ACME's store, the previews' record).
- ``masked_url(url)`` is a notification URL masked whole after its scheme (``slack://***``): its host,
  path and query are tokens as much as its password is. ``shown_command(argv)`` is a command line as it
  may be written or shown: the value of every ``--notify`` masked so, every URL without its password.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from reconciler.telemetry.scrub import MASK, redact_url

DIR_MODE = 0o700
FILE_MODE = 0o600
# Options whose values are secrets whole, not only in a URL's password part.
SECRET_OPTIONS = ("--notify",)
_SCHEME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.-]{0,31})://")


def private_dir(path: Path) -> None:
    """Make ``path`` and leave it ``0700``; ``OSError`` when it cannot be made. The folders it makes on the
    way are ``0700`` too (``STATE/hosts/HOST``: ``hosts`` is the state directory's as much)."""
    missing = [folder for folder in (path, *path.parents) if not folder.is_dir()]
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            folder.mkdir(mode=DIR_MODE)
    path.mkdir(mode=DIR_MODE, exist_ok=True)  # a file in the way is an error (FileExistsError) here
    _narrow(os.stat(path), path, DIR_MODE)


def open_private(path: Path, flags: int) -> int:
    """``os.open`` of ``path`` with ``O_CREAT``: a new file is ``0600``, a wider one of ours is narrowed."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        _narrow(os.fstat(fd), fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (created ``0600``, truncated)."""
    fd = open_private(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def replace_private(path: Path, data: bytes) -> None:
    """``data`` into ``path``, ``0600`` in a ``0700`` folder, whole or not at all (a new file renamed over it)."""
    private_dir(path.parent)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.new")
    scratch.unlink(missing_ok=True)
    descriptor = open_private(scratch, os.O_WRONLY | os.O_TRUNC)
    try:
        with os.fdopen(descriptor, "wb") as out:
            descriptor = -1
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        scratch.replace(path)
    finally:
        if descriptor >= 0:
            os.close(descriptor)
        with contextlib.suppress(OSError):
            scratch.unlink()


def _narrow(found: os.stat_result, target: Path | int, mode: int) -> None:
    if found.st_uid == os.geteuid() and stat.S_IMODE(found.st_mode) & ~mode & 0o777:
        # Best effort: on a read-only disk the file is read as it is, and the write that needs it says why.
        with contextlib.suppress(OSError):
            os.chmod(target, stat.S_IMODE(found.st_mode) & mode)


def masked_url(url: str) -> str:
    """``SCHEME://***``, or ``***`` for what has no scheme: all that may be shown of a notification URL."""
    found = _SCHEME.match(url)
    return f"{found.group(1)}://{MASK}" if found else MASK


def shown_command(argv: Sequence[str]) -> str:
    """``argv`` joined, with every ``--notify`` value masked whole and every URL without its password."""
    words: list[str] = []
    secret_next = False
    for word in argv:
        name, equals, value = word.partition("=")
        if secret_next:
            words.append(masked_url(word))
        elif name in SECRET_OPTIONS and equals:
            words.append(f"{name}={masked_url(value)}")
        else:
            words.append(redact_url(word))
        secret_next = word in SECRET_OPTIONS
    return " ".join(words)
