"""The one error root of reconciler, and the split between errors that need a human and errors that clear.

Every failure the tool reports is a ``ReconcileError``; the shell translates the errors of docker, git,
sqlite and the filesystem into these once, at the boundary, so the CLI prints one line and never a
traceback. The tree::

    ReconcileError                  exit 1, message printed as is
    ├── UserError                   needs a human: fix the file, the ref, the name; retrying will not help
    │   ├── Refused                 a command refused what it was asked (no such app, nothing to change): said as is
    │   ├── InvalidDesiredState     desired-state.yaml broken or invalid (carries every FILE:LINE:COL error)
    │   ├── SourceError             repo, ref or file not found
    │   ├── CommitRefused           unsigned, signed by a key not allowed, or beyond --policy: not applied
    │   │   └── PolicyViolation     beyond --policy: every violation at its FILE:LINE:COL (core.guard)
    │   ├── InvalidPolicy           the --policy file broken or invalid: every error at its place (core.guard)
    │   ├── ImageError              image or tag does not exist, or access denied
    │   ├── ContainerError          the engine refused a container (port taken, bad mount, name in use)
    │   ├── EnvFileError            an app's env_file cannot be read where it runs, or is not KEY=VALUE text
    │   ├── StateError              the state directory or its journal cannot be used (owner, corrupt, disk)
    │   └── ProxyError              the proxy cannot run or be driven (its listen address taken, no image)
    │       └── ProxyUnavailable    its runtime API does not answer: no verdict on a release, the next pass retries
    └── TransientError              clears by itself: retry later, keep what runs
        ├── EngineUnavailable       the Docker engine does not answer
        ├── RemoteUnavailable       the git remote does not answer
        └── LockHeld                another reconcile holds the state directory
"""

from __future__ import annotations

import errno
from pathlib import Path


class ReconcileError(Exception):
    """Root of every error reconciler reports; ``str(err)`` is the one line a user sees."""


class UserError(ReconcileError):
    """Needs a human to change something; the same input will fail the same way."""


class Refused(UserError):
    """A command refuses what it was asked (no such app, nothing to change): the CLI says the message as it
    is, without ``error:``, and changes nothing."""


class InvalidDesiredState(UserError):
    """The desired-state file does not parse or does not validate."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


class SourceError(UserError):
    """The repository, ref or file inside it cannot be found."""


class CommitRefused(UserError):
    """This server does not apply the commit: ``reason`` is ``unsigned``, ``bad-signature`` (not signed by an
    allowed key) or ``policy`` (it asks for more than ``--policy`` allows). Nothing of it is applied."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class ImageError(UserError):
    """An image or tag does not exist, or the registry refused access."""


class ContainerError(UserError):
    """The engine refused to create, start, stop or rename a container (port taken, bad mount, ...)."""


class EnvFileError(UserError):
    """An app's ``env_file`` is missing, unreadable, too large or not ``KEY=VALUE`` text on the engine's host."""


class StateError(UserError):
    """The state directory or its journal cannot be used: wrong owner or permissions, a corrupt journal
    that is not to be repaired here, a disk that will not take a new one. A read-only or full file
    system is a ``TransientError`` instead: it clears without us."""


class ProxyError(UserError):
    """The proxy of routed apps cannot run here or cannot be driven."""


class ProxyUnavailable(ProxyError):
    """The proxy's runtime API does not answer (it was killed or removed, its folder or socket is gone).

    Like an engine outage, it judges the proxy, not a release: a deploy that meets it is cut short and
    resumed by the next pass, whose first step brings the proxy back."""


class TransientError(ReconcileError):
    """Expected to clear without a human: a retry later may succeed."""


class EngineUnavailable(TransientError):
    """The Docker engine does not answer."""


class RemoteUnavailable(TransientError):
    """The git remote does not answer."""


class LockHeld(TransientError):
    """Another reconcile holds the lock of this state directory."""


STATE_DIR_FIX = " (make it writable, or give --state-dir a directory that is); nothing that runs was changed"


def state_dir_error(state_dir: Path, exc: OSError) -> ReconcileError:
    """The one line for a filesystem error in the state directory; read-only and full disks clear by themselves."""
    if exc.errno == errno.EROFS:
        return TransientError(f"state directory {state_dir}: read-only file system{STATE_DIR_FIX}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransientError(f"state directory {state_dir}: no space left on device{STATE_DIR_FIX}")
    reason = (exc.strerror or str(exc)).lower()
    return StateError(f"state directory {state_dir}: {reason}")
