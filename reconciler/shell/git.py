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

import contextlib
import hashlib
import os
import re
import socket
import tempfile
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
        text = str(exc.stderr or "").strip().removeprefix("stderr:").strip()
        if len(text) >= 2 and text[0] == text[-1] == "'":  # GitPython quotes the whole of stderr
            text = text[1:-1]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        # git says what went wrong on its first fatal:/error: line; the lines after it are advice.
        first = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[0] if lines else "")
        return first.removeprefix("fatal: ").removeprefix("error: ") or f"git exited {exc.status}"
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

    # -- writing: commits, branches, tags, pushes ------------------------------------------------

    def _git(self, *args: str, env: dict[str, str] | None = None) -> str:
        try:
            return str(self.repo.git.execute(["git", *args], env=env))
        except git.exc.GitCommandError as exc:
            raise SourceError(f"git {args[0]}: {_first_line(exc)}") from None

    def identity_env(self) -> dict[str, str]:
        """Author and committer: the repository's git config, else ``reconciler`` (CI has none)."""
        env = dict(os.environ)
        try:
            self.repo.git.config("user.email")
        except git.exc.GitCommandError:
            for role in ("AUTHOR", "COMMITTER"):
                env.setdefault(f"GIT_{role}_NAME", "reconciler")
                env.setdefault(f"GIT_{role}_EMAIL", f"reconciler@{socket.gethostname()}")
        return env

    def branch(self) -> str:
        """The checked-out branch (HEAD's), for a clone or a bare repository."""
        try:
            return str(self.repo.git.symbolic_ref("--short", "HEAD"))
        except git.exc.GitCommandError:
            raise SourceError(f"{self.display}: HEAD is detached; check out a branch first") from None

    def commit_file(self, *, base: str, path: str, content: bytes, message: str) -> str:
        """A new commit on top of ``base`` whose only change is ``path`` := ``content``; no ref moves."""
        with tempfile.TemporaryDirectory(prefix="reconciler-index-") as tmp:
            env = {**self.identity_env(), "GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self._git("read-tree", base, env=env)
            listed = self._git("ls-tree", base, "--", path, env=env).split()
            mode = listed[0] if listed else "100644"
            staged = Path(tmp) / "content"
            staged.write_bytes(content)
            blob = self._git("hash-object", "-w", "--path", path, str(staged), env=env)
            self._git("update-index", "--add", "--cacheinfo", f"{mode},{blob.strip()},{path}", env=env)
            tree = self._git("write-tree", env=env).strip()
            return self._git("commit-tree", tree, "-p", base, "-m", message, env=env).strip()

    def is_dirty(self, path: str) -> bool:
        return not self.repo.bare and self.repo.is_dirty(index=True, working_tree=True, path=path)

    def advance(self, branch: str, old: str, new: str) -> None:
        """Move ``branch`` from ``old`` to ``new`` (a descendant); a clone's checkout follows."""
        if not self.repo.bare and self.branch() == branch:
            self._git("reset", "--keep", new)
        else:
            self._git("update-ref", f"refs/heads/{branch}", new, old)

    def upstream(self, branch: str) -> tuple[str, str]:
        """(remote, branch) that ``branch`` tracks; ``origin`` and the same name when it tracks nothing."""
        try:
            remote = str(self.repo.git.config(f"branch.{branch}.remote"))
            merge = str(self.repo.git.config(f"branch.{branch}.merge")).removeprefix("refs/heads/")
            return remote, merge
        except git.exc.GitCommandError:
            if not self.repo.remotes:
                raise SourceError(f"{self.display}: no remote to push to (git remote add origin URL)") from None
            return self.repo.remotes[0].name, branch

    def push(self, remote: str, sha: str, ref: str, *, force: bool = False) -> bool:
        """Push ``sha`` to ``ref`` on ``remote``; False when refused because the remote moved on."""
        try:
            self.repo.git.push(*(["--force"] if force else []), remote, f"{sha}:{ref}")
        except git.exc.GitCommandError as exc:
            text = str(exc.stderr or "")
            if "[remote rejected]" in text:  # a hook or a protected branch: a human has to look
                refused = next((line.strip() for line in text.splitlines() if "[remote rejected]" in line), text)
                said = [found.group(1).strip() for found in re.finditer(r"remote:(.*)", text) if found.group(1).strip()]
                because = f" (the remote said: {' / '.join(said)})" if said else ""
                raise SourceError(f"git push to {remote} refused: {refused.lstrip('! ')}{because}") from None
            if any(word in text for word in ("non-fast-forward", "fetch first", "[rejected]")):
                return False
            raise RemoteUnavailable(f"git push to {remote}: {_first_line(exc)}") from None
        return True

    def fetch_branch(self, remote: str, branch: str) -> str:
        """Fetch ``branch`` of ``remote``; its tip."""
        try:
            self.repo.git.fetch(remote, f"refs/heads/{branch}")
        except git.exc.GitCommandError as exc:
            raise RemoteUnavailable(f"git fetch {remote}: {_first_line(exc)}") from None
        return self.resolve("FETCH_HEAD")

    def push_tags(self, remote: str, tags: list[str]) -> None:
        """Push ``tags`` to ``remote``, moving them there too (a stable tag is meant to move)."""
        try:
            self.repo.git.push("--force", remote, *(f"refs/tags/{tag}:refs/tags/{tag}" for tag in tags))
        except git.exc.GitCommandError as exc:
            raise RemoteUnavailable(f"git push to {remote}: {_first_line(exc)}") from None

    def revert_commit(self, sha: str) -> None:
        """``git revert --no-edit sha`` on the checkout; a conflict is undone and reported."""
        try:
            self.repo.git.execute(["git", "revert", "--no-edit", sha], env=self.identity_env())
        except git.exc.GitCommandError as exc:
            with contextlib.suppress(git.exc.GitCommandError):
                self.repo.git.revert("--abort")
            raise SourceError(f"git revert {sha[:8]}: {_first_line(exc)}") from None

    def set_ref(self, ref: str, sha: str) -> None:
        self._git("update-ref", ref, sha)

    def is_ancestor(self, older: str, newer: str) -> bool:
        try:
            self.repo.git.merge_base("--is-ancestor", older, newer)
        except git.exc.GitCommandError:
            return False
        return True

    def tag(self, name: str, sha: str) -> None:
        self._git("tag", "-f", name, sha)

    def history(self, ref: str, path: str, *, limit: int = 200) -> list[tuple[str, float, str]]:
        """(sha, commit time, author) of the commits that changed ``path``, newest first."""
        try:
            commits = list(self.repo.iter_commits(ref, paths=path, max_count=limit))
        except (git.exc.GitCommandError, ValueError):
            return []
        return [(c.hexsha, float(c.committed_date), f"{c.author.name} <{c.author.email}>") for c in commits]


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
