"""Rollback and set-version as operations: the commits the CLI's commands write, keyword-only.

Guarantees:
- Nothing is committed unless every app named is in the file at the branch's tip and the new version
  differs from the one there; a version that no registry or history knows is refused (``check_exists``).
  A refusal is ``Refused`` (said as it is), and the repository is left as it was.
- ``--to previous`` and ``--to stable`` are resolved from this machine's journal when it has one, else
  from the file's git history (``ops.edits``); the journal is closed before the operation returns.
- The commit is built on the branch's tip and pushed once with one retry on a moved remote (``edits.write``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reconciler.adapters.git import Source
from reconciler.converge.run import ALL_HOSTS, Settings, Trust, desired_at
from reconciler.converge.sealed import Mode
from reconciler.core.model import DesiredState
from reconciler.errors import CommitRefused, Refused, UserError
from reconciler.ops import edits
from reconciler.state.journal import Journal


@dataclass(frozen=True)
class Committed:
    """What a command wrote: the commit, and the message it carries."""

    written: edits.Written
    message: str


@contextmanager
def _journal(settings: Settings) -> Iterator[Journal | None]:
    journal = edits.state_dir_journal(settings.state_dir)
    try:
        yield journal
    finally:
        if journal is not None:
            journal.close()


def _apps(desired: DesiredState, file: str, names: list[str]) -> None:
    for name in names:
        if name not in desired.apps:
            raise Refused(f"{name}: no such app in {file} (apps: {', '.join(sorted(desired.apps))})")


def open_for_writing(*, repo: str, file: str, policy: Path | None, signed_by: str | None) -> Source:
    """The clone at ``repo``, to commit to. With a signer rule or a policy, its tip must pass them first: a
    commit of ours signed on top of an untrusted tip would carry that tip's file in."""
    source = edits.open_for_writing(repo)
    if policy is not None or signed_by is not None:
        try:
            desired_at(source, "HEAD", source.resolve("HEAD"), file,
                       Trust(policy=policy, signed_by=signed_by, host=ALL_HOSTS, sops=Mode.PARSE))  # fmt: skip
        except CommitRefused as exc:
            raise UserError(f"{exc}; no commit is built on it here") from None
    return source


def choices(*, source: Source, settings: Settings, app: str) -> tuple[DesiredState, edits.Choices]:
    """Where ``app`` can go back to: the file at the tip, the previous and stable versions, its history."""
    desired = edits.desired_at_head(source, settings.file)
    _apps(desired, settings.file, [app])
    with _journal(settings) as journal:
        return desired, edits.choices(source, settings.file, desired, app, journal=journal)


def rollback(
    *, source: Source, settings: Settings, app: str | None, to: str, push: bool, branch: str | None
) -> Committed:
    """Commit ``app`` (every app when None: ``to`` is then ``stable`` or ``previous``) back to ``to``."""
    desired = edits.desired_at_head(source, settings.file)
    apps = [app] if app is not None else sorted(desired.apps)
    _apps(desired, settings.file, apps)
    if app is None and to not in (edits.PREVIOUS, "stable"):
        raise Refused(f"--to {to} for every app: use stable or previous, or name the app")
    with _journal(settings) as journal:
        wanted = edits.rollback_edits(source, settings, desired, apps, to, journal=journal, single=app)
    if not wanted:
        raise Refused("nothing to change: every app already runs that version")
    message = "rollback " + "; ".join(edit.describe() for edit in wanted)
    written = edits.write(source, file=settings.file, edits=wanted, message=message, push=push, branch=branch)
    return Committed(written, message)


def set_version(
    *, source: Source, settings: Settings, app: str, version: str, push: bool, branch: str | None
) -> Committed:
    """Commit ``app``'s ``version`` (what CI runs after it built and pushed an image)."""
    desired = edits.desired_at_head(source, settings.file)
    _apps(desired, settings.file, [app])
    spec = desired.apps[app]
    if spec.version == version:
        raise Refused(f"{app} is already at {version} in {settings.file}; nothing to commit")
    seen = edits.versions_seen(source, source.branch(), settings.file, app)
    edits.check_exists(spec.image, version, seen=seen, settings=settings)
    edit = edits.Edit(app, spec.version, version)
    message = f"set-version {edit.describe()}"
    written = edits.write(source, file=settings.file, edits=[edit], message=message, push=push, branch=branch)
    return Committed(written, message)
