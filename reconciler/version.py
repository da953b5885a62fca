"""The version of reconciler and the commit it was built from: what ``reconcile --version`` prints.

Guarantees:
- ``__version__`` is the one place the version is written; pyproject.toml reads it from here.
- ``build_commit()`` is the commit a build was made from, baked in at build time by setup.py as
  ``reconciler/_build_info.py`` (in the wheel and in the sdist, never in the source tree), so an
  installed wheel knows it with no git checkout anywhere. Without that file (a checkout of the
  repository, or an editable install of one), git is asked at run time, and only when the package's
  parent folder is the top of a git work tree. Neither: None, printed as ``unknown``; never an error.
- ``describe()`` is the line ``reconcile 0.1.0 (commit abc1234)``; ``-dirty`` follows the commit when
  the tree it was built from had changes not committed.
- Importing this module is cheap (no git, no third-party module): ``--version`` starts as fast as ``--help``.
"""

from __future__ import annotations

import importlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

__version__ = "0.1.0"

SHORT = 7  # hex digits shown, as `git log --oneline` shows them


@dataclass(frozen=True)
class Commit:
    sha: str  # 40 hex digits
    dirty: bool  # built from a tree with changes not committed

    @property
    def short(self) -> str:
        return self.sha[:SHORT] + ("-dirty" if self.dirty else "")


def build_commit() -> Commit | None:
    """The commit this copy of reconciler was built from (see the module docstring), or None."""
    try:
        info = importlib.import_module("reconciler._build_info")
    except ImportError:
        return _checkout_commit(Path(__file__).resolve().parent.parent)
    sha = getattr(info, "COMMIT", "")
    if not isinstance(sha, str) or not sha:
        return None
    return Commit(sha=sha, dirty=getattr(info, "DIRTY", False) is True)


def _checkout_commit(root: Path) -> Commit | None:
    """HEAD of the git work tree whose top is ``root``, or None (no ``.git`` there, no git, not a commit)."""
    if not (root / ".git").exists():
        return None
    try:
        sha = _git(root, "rev-parse", "--verify", "HEAD")
        changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    if len(sha) != 40:
        return None
    return Commit(sha=sha, dirty=bool(changes))


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return done.stdout.strip()


def describe() -> str:
    """``reconcile VERSION (commit SHORT)``, or ``(commit unknown)``."""
    commit = build_commit()
    return f"reconcile {__version__} (commit {commit.short if commit else 'unknown'})"
