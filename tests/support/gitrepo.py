"""A real git "remote" for tests: a bare repository and a working clone, in a temp folder.

Guarantees:
- `bare_path` is a bare repository whose default branch (HEAD) is `main`; `clone_path` is a
  working copy on `main` with `origin` pointing at it. Nothing exists on the remote until the
  first `push()`.
- Every git command runs with a fixed author and committer, and with the system and global git
  configs ignored (`GIT_CONFIG_NOSYSTEM=1`, `GIT_CONFIG_GLOBAL=/dev/null`), so tests behave
  the same on a machine with no git identity and on one with a signing or hook setup.
- A failing git command raises `GitError` with git's stderr.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

AUTHOR_NAME = "Reconciler Tests"
AUTHOR_EMAIL = "tests@reconciler.invalid"
BRANCH = "main"


class GitError(RuntimeError):
    """A git command failed."""


def git_env() -> dict[str, str]:
    """The environment for test git commands: no user config, a fixed identity, no prompts."""
    env = dict(os.environ)
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME=AUTHOR_NAME,
        GIT_AUTHOR_EMAIL=AUTHOR_EMAIL,
        GIT_COMMITTER_NAME=AUTHOR_NAME,
        GIT_COMMITTER_EMAIL=AUTHOR_EMAIL,
        GIT_TERMINAL_PROMPT="0",
    )
    return env


def run_git(*args: str, cwd: Path | None = None) -> str:
    """Run git with the test identity; return stdout without the trailing newline."""
    cmd = [
        "git",
        "-c", f"user.name={AUTHOR_NAME}",
        "-c", f"user.email={AUTHOR_EMAIL}",
        "-c", f"init.defaultBranch={BRANCH}",
        "-c", "commit.gpgsign=false",
        "-c", "tag.gpgsign=false",
        "-c", "core.hooksPath=/dev/null",
        *args,
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=cwd, env=git_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise GitError(f"git {' '.join(args)} (in {cwd}) exited {result.returncode}:\n{result.stderr}")
    return result.stdout.rstrip("\n")


class GitRemote:
    """A bare "remote" and one working clone; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bare_path = root / "remote.git"
        self.clone_path = root / "clone"
        root.mkdir(parents=True, exist_ok=True)
        run_git("init", "-q", "--bare", f"--initial-branch={BRANCH}", str(self.bare_path))
        run_git("init", "-q", f"--initial-branch={BRANCH}", str(self.clone_path))
        self.git("remote", "add", "origin", str(self.bare_path))

    @property
    def url(self) -> str:
        """What to hand to code under test as the repository URL (the bare repo's path)."""
        return str(self.bare_path)

    def git(self, *args: str) -> str:
        """Run a git command in the working clone."""
        return run_git(*args, cwd=self.clone_path)

    def write(self, path: str, text: str) -> Path:
        """Write `text` to `path` (relative to the clone), creating folders; no commit."""
        target = self.clone_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def commit(self, message: str, *, allow_empty: bool = True) -> str:
        """Stage everything in the clone and commit it; return the new commit's sha."""
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message, *(["--allow-empty"] if allow_empty else []))
        return self.head()

    def push(self, force: bool = False) -> None:
        """Push the clone's HEAD to the remote's `main` (`--force` when force=True)."""
        self.git("push", "-q", *(["--force"] if force else []), "origin", f"HEAD:refs/heads/{BRANCH}")

    def commit_file(self, path: str, text: str, message: str, push: bool = True) -> str:
        """write + commit (+ push); return the commit's sha."""
        self.write(path, text)
        sha = self.commit(message)
        if push:
            self.push()
        return sha

    def head(self) -> str:
        """The clone's HEAD sha."""
        return self.git("rev-parse", "HEAD")

    def remote_head(self) -> str | None:
        """The remote's `main` sha, or None before the first push."""
        try:
            return run_git("--git-dir", str(self.bare_path), "rev-parse", "--verify", "-q", f"refs/heads/{BRANCH}")
        except GitError:
            return None

    def reset_hard(self, rev: str) -> str:
        """`git reset --hard rev` in the clone (then `push(force=True)` rewrites the remote)."""
        self.git("reset", "-q", "--hard", rev)
        return self.head()

    def clone_to(self, dest: Path) -> Path:
        """A fresh clone of the remote at `dest`."""
        run_git("clone", "-q", str(self.bare_path), str(dest))
        return dest
