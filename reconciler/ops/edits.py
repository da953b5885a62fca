"""Changes of what runs, written as commits: set-version, rollback (to a version, ``previous`` or
``stable``) and revert.

Guarantees:
- An edit changes only ``apps.APP.version`` scalars of the file at the branch's tip, byte for byte
  elsewhere; the new file is validated before anything is committed; the commit message names the app,
  from, to, and where the target came from (``stable`` and ``previous`` are written as the concrete
  version they resolved to).
- Nothing rewrites history: a commit goes on top of the branch (or on a new branch for a pull request);
  a push refused because the remote moved is retried once on top of the new tip, only when the local
  branch had nothing of its own that the retry would drop.
  A push that fails (``revert --push`` too) leaves no commit behind.
- A version is accepted only when the app ran it before (git history) or its image exists (the engine's
  images, else the registry): a typo fails with a message and no commit.
- Nothing here touches a container: what runs changes when the reconciler applies the commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from reconciler.adapters.git import Source, is_url, open_source
from reconciler.adapters.yamledit import set_versions
from reconciler.adapters.yamlfile import parse_yaml
from reconciler.converge.run import Settings, parse_desired
from reconciler.core.model import STABLE, AppSpec, DesiredState, image_ref
from reconciler.errors import ReconcileError, SourceError, UserError
from reconciler.ops.stable import stable_version
from reconciler.state.journal import Journal, JournalResult

PREVIOUS = "previous"


@dataclass(frozen=True)
class Seen:
    """A version an app had in the file's history."""

    version: str
    revision: str
    when: float
    author: str


@dataclass(frozen=True)
class Edit:
    app: str
    old: str
    new: str
    origin: str = ""  # "stable" or "previous" when resolved from it

    def describe(self) -> str:
        text = f"{self.app} {self.old} -> {self.new}"
        return text + (f" (the {self.origin} version)" if self.origin else "")


@dataclass(frozen=True)
class Written:
    revision: str
    branch: str
    pushed_to: str = ""  # "origin/main", or "" when only committed locally
    retried: bool = False


def versions_seen(source: Source, ref: str, file: str, app: str) -> list[Seen]:
    """The app's versions in the file's history, newest first, each with the commit that set it."""
    seen: list[Seen] = []
    for sha, when, author in source.history(ref, file):
        try:
            data, _ = parse_yaml(source.read(sha, file), filename=file)
            version = str(data["apps"][app]["version"])
        except (ReconcileError, KeyError, TypeError):
            continue
        if seen and seen[-1].version == version:
            seen[-1] = Seen(version, sha, when, author)  # the oldest commit that set it
        else:
            seen.append(Seen(version, sha, when, author))
    return seen


def previous_version(app: str, current: str, *, journal: Journal | None, seen: list[Seen]) -> str:
    """The version that ran before ``current``: from the journal's deploys, else from git history."""
    if journal is not None:
        for entry in journal.history(app=app, limit=500):
            if (
                entry.result is JournalResult.SUCCEEDED
                and entry.to_version
                and entry.to_version not in (current, STABLE)
            ):
                return entry.to_version
    for item in seen:
        if item.version != current:
            return item.version
    raise UserError(f"{app}: no previous version (it has only ever been {current})")


@dataclass(frozen=True)
class Choices:
    """What ``reconcile rollback APP`` lists: where the app can go back to."""

    current: str
    previous: str  # a version, or "(none: why)"
    stable: str
    seen: list[Seen]


def choices(source: Source, file: str, desired: DesiredState, app: str, *, journal: Journal | None) -> Choices:
    spec = desired.apps[app]
    seen = versions_seen(source, source.branch(), file, app)
    found: list[str] = []
    finders: list[Callable[[], str]] = [
        lambda: previous_version(app, spec.version, journal=journal, seen=seen),
        lambda: stable_version(app, journal=journal, source=source, file=file),
    ]
    for find in finders:
        try:
            found.append(find())
        except UserError as exc:
            found.append(f"(none: {exc})")
    return Choices(spec.version, found[0], found[1], seen)


def rollback_edits(
    source: Source,
    settings: Settings,
    desired: DesiredState,
    apps: list[str],
    to: str,
    *,
    journal: Journal | None,
    single: str | None,
) -> list[Edit]:
    """The edit that takes each of ``apps`` to ``to`` (a version, ``stable`` or ``previous``), resolved and
    checked; apps already there are skipped, unless ``single`` names the one app asked for."""
    edits = []
    branch = source.branch()
    for name in apps:
        spec = desired.apps[name]
        seen = versions_seen(source, branch, settings.file, name)
        if to == STABLE:
            new, origin = stable_version(name, journal=journal, source=source, file=settings.file), STABLE
        elif to == PREVIOUS:
            new, origin = previous_version(name, spec.version, journal=journal, seen=seen), PREVIOUS
        else:
            new, origin = to, ""
        if new == spec.version:
            if single is not None:
                raise UserError(f"{name} is already at {new} in {settings.file}")
            continue
        check_exists(spec.image, new, seen=seen, settings=settings)
        edits.append(Edit(name, spec.version, new, origin))
    return edits


def check_exists(image: str, version: str, *, seen: list[Seen], settings: Settings) -> None:
    """Refuse a version the app never ran whose image cannot be found either."""
    if version == STABLE or any(item.version == version for item in seen):
        return
    from reconciler.adapters.docker import connect
    from reconciler.core import images as image_match

    try:
        ref = image_ref(AppSpec(image=image, version=version))
    except ValidationError as exc:  # the version is not a tag or a digest: the validator's own words
        first = exc.errors(include_url=False)[0]
        raised = first.get("ctx", {}).get("error")
        raise UserError(f"{version!r}: {raised if raised is not None else first['msg']}") from None
    engine = connect(settings.docker_host, instance=settings.instance)
    if image_match.find_local(ref, engine.local_images()) is None:
        engine.registry_digest(ref)  # raises ImageError naming what is wrong


def write(
    source: Source,
    *,
    file: str,
    edits: list[Edit],
    message: str,
    push: bool = False,
    branch: str | None = None,
) -> Written:
    """Commit ``edits`` on top of the checked-out branch (or as a new ``branch``), and push if asked."""
    current_branch = source.branch()
    if source.is_dirty(file):
        raise UserError(f"{file} has uncommitted changes in {source.display}; commit or stash them first")
    base = source.resolve(current_branch)
    versions = {edit.app: edit.new for edit in edits}

    def commit_on(tip: str) -> str:
        text = source.read(tip, file).decode()
        changed = set_versions(text, versions, filename=file)
        parse_desired(changed.encode(), file, "")  # validate before anything is committed
        if changed == text:
            raise UserError(f"nothing to change: {', '.join(f'{a} is already {v}' for a, v in versions.items())}")
        return source.commit_file(base=tip, path=file, content=changed.encode(), message=message)

    commit = commit_on(base)
    if branch is None and not push:
        source.advance(current_branch, base, commit)
        return Written(commit, current_branch)
    if branch is not None:
        remote, _ = source.upstream(current_branch)
        if not source.push(remote, commit, f"refs/heads/{branch}"):
            raise UserError(f"branch {branch} already exists on {remote} with other commits; choose another name")
        if not _has_branch(source, branch):
            source.set_ref(f"refs/heads/{branch}", commit)
        return Written(commit, branch, pushed_to=f"{remote}/{branch}")
    # The local branch moves only once the remote took the commit: a refused push leaves nothing behind.
    return _push_once_more(source, current_branch, base, commit, redo=commit_on, left="nothing was committed")


def _push_once_more(
    source: Source, branch: str, base: str, commit: str, *, redo: Callable[[str], str], left: str
) -> Written:
    """Push ``commit`` (made on ``base``) to ``branch``'s remote, then move ``branch`` to it. When the remote
    moved on, ``redo`` the change on its tip and push that, once, unless that would drop local commits;
    ``left`` says what stays behind when it gives up."""
    remote, remote_branch = source.upstream(branch)
    if source.push(remote, commit, f"refs/heads/{remote_branch}"):
        source.advance(branch, base, commit)
        return Written(commit, branch, pushed_to=f"{remote}/{remote_branch}")
    tip = source.fetch_branch(remote, remote_branch)
    if not source.is_ancestor(base, tip):
        raise UserError(
            f"{branch} and {remote}/{remote_branch} have diverged; {left}: pull (and resolve) first, then retry"
        )
    retried = redo(tip)
    if not source.push(remote, retried, f"refs/heads/{remote_branch}"):
        raise UserError(f"{remote}/{remote_branch} moved again while pushing; {left}: retry")
    source.advance(branch, base, retried)
    return Written(retried, branch, pushed_to=f"{remote}/{remote_branch}", retried=True)


def _has_branch(source: Source, branch: str) -> bool:
    try:
        source.resolve(f"refs/heads/{branch}")
    except SourceError:
        return False
    return True


def desired_at_head(source: Source, file: str) -> DesiredState:
    sha = source.resolve(source.branch())
    return parse_desired(source.read(sha, file), file, sha)


def revert(source: Source, revision: str, *, file: str, push: bool) -> Written:
    """``git revert`` of ``revision`` on the checked-out branch, validated; pushed with one retry. A push
    that is refused or fails leaves the branch and the checkout where they were: no revert commit."""
    if source.bare:
        raise UserError(f"{source.display}: revert needs a clone with a working tree")
    branch = source.branch()
    if source.is_dirty(file):
        raise UserError(f"{file} has uncommitted changes in {source.display}; commit or stash them first")
    full = source.resolve(revision)
    base = source.resolve(branch)

    def revert_on_checkout() -> str:
        source.revert_commit(full)
        head = source.resolve(branch)
        try:
            parse_desired(source.read(head, file), file, head)
        except ReconcileError:
            source.advance(branch, head, source.resolve(f"{head}~1"))
            raise
        return head

    commit = revert_on_checkout()
    if not push:
        return Written(commit, branch)

    def again_on(tip: str) -> str:
        source.advance(branch, commit, tip)  # base is an ancestor of tip: this drops only our revert
        return revert_on_checkout()

    # The revert is made in the checkout, so it is committed before the push: a push that fails takes
    # the branch back to where it was, as set-version and rollback leave nothing behind.
    try:
        return _push_once_more(source, branch, base, commit, redo=again_on, left="nothing was committed")
    except ReconcileError:
        source.advance(branch, source.resolve(branch), base)
        raise


def state_dir_journal(state_dir: Path) -> Journal | None:
    """The journal when this machine has one (the server); None on a laptop or a CI runner."""
    try:
        return Journal(state_dir, create=False)
    except ReconcileError:
        return None


def open_for_writing(repo: str) -> Source:
    """The clone or bare repository at ``repo``, to commit to; a URL is refused (nothing to commit in)."""
    if is_url(repo):
        raise UserError(f"--repo {repo}: this command commits, so it needs a clone (git clone {repo})")
    return open_source(repo, state_dir=Path("."), fetch=False)
