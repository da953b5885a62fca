"""The only module that imports GitPython: where desired state comes from.

Guarantees:
- The desired-state file is read from a commit, never from a working tree: uncommitted edits never deploy.
- ``--repo`` may be a local clone, a bare repository, or a URL; a URL is mirrored into the state
  directory (``git clone --mirror``) and fetched with ``+refs/*:refs/*``, so a force-pushed branch is
  followed to its new tip.
- Errors leave as ``SourceError`` (bad path, ref or file: needs a human) or ``RemoteUnavailable``
  (the remote did not answer: clears by itself).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import git
import git.exc

from reconciler.errors import RemoteUnavailable, SourceError

_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


def is_url(repo: str) -> bool:
    """``https://…``, ``ssh://…``, ``file://…`` or ``user@host:path`` (scp-like) is a remote URL."""
    return "://" in repo or bool(_SCP_LIKE.match(repo))


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, git.exc.GitCommandError):
        text = str(exc.stderr or "").strip().removeprefix("stderr:").strip().strip("'").strip()
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else f"git exited {exc.status}"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass
class Source:
    """An opened repository; ``display`` is what the user named (path or URL)."""

    repo: git.Repo
    display: str
    mirrored: bool = False

    def fetch(self) -> None:
        """Bring a mirror up to date with its remote (no-op for a local repository)."""
        if not self.mirrored:
            return
        try:
            self.repo.git.fetch("--prune", "--force", "origin", "+refs/*:refs/*")
        except git.exc.GitCommandError as exc:
            raise RemoteUnavailable(f"git remote {self.display} does not answer: {_first_line(exc)}") from None

    def resolve(self, ref: str = "HEAD") -> str:
        """The full sha that ``ref`` names."""
        try:
            return str(self.repo.commit(ref).hexsha)
        except (git.exc.BadName, ValueError, git.exc.GitCommandError):
            raise SourceError(f"{self.display}: ref {ref!r} not found") from None

    def read(self, sha: str, path: str) -> bytes:
        """The bytes of ``path`` at commit ``sha``."""
        try:
            blob = self.repo.commit(sha).tree / path
        except KeyError:
            raise SourceError(f"{path}: not found in commit {sha[:8]} of {self.display}") from None
        if blob.type != "blob":
            raise SourceError(f"{path}: is not a file in commit {sha[:8]} of {self.display}")
        data: bytes = blob.data_stream.read()
        return data

    def author(self, sha: str) -> str:
        """``Name <email>`` of the commit's author ("" when it cannot be read)."""
        try:
            person = self.repo.commit(sha).author
        except (git.exc.BadName, ValueError, git.exc.GitCommandError):
            return ""
        return f"{person.name} <{person.email}>"

    def close(self) -> None:
        self.repo.close()


def _mirror_path(url: str, state_dir: Path) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", url.rsplit("/", 1)[-1].removesuffix(".git"))[:40] or "repo"
    return state_dir / "mirrors" / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:10]}.git"


def open_source(repo: str, *, state_dir: Path, fetch: bool = True) -> Source:
    """Open ``repo``: a path is used as it is; a URL is mirrored under ``state_dir`` and fetched."""
    if not is_url(repo):
        try:
            return Source(git.Repo(repo), repo)
        except git.exc.NoSuchPathError:
            raise SourceError(f"{repo}: no such directory") from None
        except git.exc.InvalidGitRepositoryError:
            raise SourceError(
                f"{repo}: not a git repository (give --repo a clone, a bare repository or a URL)"
            ) from None
    path = _mirror_path(repo, state_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            cloned = git.Repo.clone_from(repo, str(path), mirror=True)
        except git.exc.GitCommandError as exc:
            raise RemoteUnavailable(f"git remote {repo} does not answer: {_first_line(exc)}") from None
        return Source(cloned, repo, mirrored=True)
    source = Source(git.Repo(str(path)), repo, mirrored=True)
    if fetch:
        source.fetch()
    return source
