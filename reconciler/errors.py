"""The one error root of reconciler, and the split between errors that need a human and errors that clear.

Every failure the tool reports is a ``ReconcileError``; the shell translates the errors of docker, git,
sqlite and the filesystem into these once, at the boundary, so the CLI prints one line and never a
traceback. The tree::

    ReconcileError                  exit 1, message printed as is
    ├── UserError                   needs a human: fix the file, the ref, the name; retrying will not help
    │   ├── InvalidDesiredState     desired-state.yaml broken or invalid (carries every FILE:LINE:COL error)
    │   ├── SourceError             repo, ref or file not found
    │   ├── ImageError              image or tag does not exist, or access denied
    │   └── ContainerError          the engine refused a container (port taken, bad mount, name in use)
    └── TransientError              clears by itself: retry later, keep what runs
        ├── EngineUnavailable       the Docker engine does not answer
        ├── RemoteUnavailable       the git remote does not answer
        └── LockHeld                another reconcile holds the state directory
"""

from __future__ import annotations


class ReconcileError(Exception):
    """Root of every error reconciler reports; ``str(err)`` is the one line a user sees."""


class UserError(ReconcileError):
    """Needs a human to change something; the same input will fail the same way."""


class InvalidDesiredState(UserError):
    """The desired-state file does not parse or does not validate."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


class SourceError(UserError):
    """The repository, ref or file inside it cannot be found."""


class ImageError(UserError):
    """An image or tag does not exist, or the registry refused access."""


class ContainerError(UserError):
    """The engine refused to create, start, stop or rename a container (port taken, bad mount, ...)."""


class TransientError(ReconcileError):
    """Expected to clear without a human: a retry later may succeed."""


class EngineUnavailable(TransientError):
    """The Docker engine does not answer."""


class RemoteUnavailable(TransientError):
    """The git remote does not answer."""


class LockHeld(TransientError):
    """Another reconcile holds the lock of this state directory."""
