"""The open pull requests that previews are made of, as the forge's last event said: ``STATE/previews.json``.

Guarantees:
- The record is the last event of each pull request: opened (or reopened) and pushed to keep it, with its head
  commit and when it was opened and last updated (this server's clock); closed or merged removes it. A restart
  reads it again, so a preview whose pull request closed while the agent ran is gone after it, and one whose
  pull request closed while the agent was down stays until its ``ttl`` ends (the forge is not asked).
- Written whole or not at all (a new file renamed over it, ``0600`` in the ``0700`` state directory), each change
  made under an ``flock`` of ``previews.lock``, so that the listener's threads and ``reconcile previews remove``
  never lose each other's change. A record that cannot be read as one (cut short by hand) is moved aside to
  ``previews.json.bad`` and read as empty: no preview is made of what it held, and the file's own apps go on.
- Filesystem trouble is the state directory's one error (``errors.state_dir_error``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from reconciler.core.previews import OpenPull
from reconciler.core.webhooks import PullAction, PullEvent
from reconciler.errors import state_dir_error
from reconciler.state.private import open_private, private_dir, replace_private

RECORD = "previews.json"
LOCK = "previews.lock"


def load(state_dir: Path) -> list[OpenPull]:
    """The open pull requests on record, by number; none when there is no record."""
    try:
        return _read(state_dir / RECORD)
    except OSError as exc:
        raise state_dir_error(state_dir, exc) from None


def record(state_dir: Path, event: PullEvent, now: float) -> str:
    """Record ``event`` at ``now``: what it changed (``opened``, ``updated``, ``closed``), or "" for nothing (a
    close of a pull request not on record, a push of a commit already recorded)."""
    with _locked(state_dir):
        pulls = {pull.number: pull for pull in _read(state_dir / RECORD)}
        known = pulls.get(event.number)
        if event.action is PullAction.CLOSED:
            if known is None:
                return ""
            del pulls[event.number]
            changed = "closed"
        elif known is None:
            pulls[event.number] = OpenPull(event.number, event.head_sha, now, now, event.fork, str(event.provider))
            changed = "opened"
        elif known.head_sha == event.head_sha:  # a redelivery, or an update that pushed nothing: the same preview
            return ""
        else:
            pulls[event.number] = OpenPull(event.number, event.head_sha, known.opened_at, now, event.fork,
                                           str(event.provider))  # fmt: skip
            changed = "updated"
        _write(state_dir, pulls)
        return changed


def remove(state_dir: Path, number: int) -> OpenPull | None:
    """Take pull request ``number`` off the record (its preview is pruned by the next pass); what it was."""
    with _locked(state_dir):
        pulls = {pull.number: pull for pull in _read(state_dir / RECORD)}
        gone = pulls.pop(number, None)
        if gone is not None:
            _write(state_dir, pulls)
        return gone


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    try:
        private_dir(state_dir)
        fd = open_private(state_dir / LOCK, os.O_RDWR)
    except OSError as exc:
        raise state_dir_error(state_dir, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    except OSError as exc:
        raise state_dir_error(state_dir, exc) from None
    finally:
        os.close(fd)  # and the lock with it


def _read(path: Path) -> list[OpenPull]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    try:
        rows = json.loads(text)["pulls"]
        pulls = [_pull(row) for row in rows]
    except (ValueError, KeyError, TypeError):
        path.replace(path.with_name(path.name + ".bad"))
        return []
    return sorted(pulls, key=lambda pull: pull.number)


def _pull(row: dict[str, object]) -> OpenPull:
    number, sha, opened, updated = row["number"], row["head_sha"], row["opened_at"], row["updated_at"]
    if not isinstance(number, int) or not isinstance(sha, str) or not isinstance(opened, int | float):
        raise TypeError("not a pull request's row")
    if not isinstance(updated, int | float):
        raise TypeError("not a pull request's row")
    return OpenPull(number, sha, float(opened), float(updated), row.get("fork") is True, str(row.get("provider", "")))


def _write(state_dir: Path, pulls: dict[int, OpenPull]) -> None:
    data = json.dumps({"pulls": [asdict(pulls[number]) for number in sorted(pulls)]}, indent=1) + "\n"
    replace_private(state_dir / RECORD, data.encode())
