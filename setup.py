"""Bakes the commit a build comes from into it: ``reconciler/_build_info.py`` (see reconciler/version.py).

Everything else about the package is in pyproject.toml; this file only adds two steps to setuptools':

- ``build_py`` (wheels) writes ``_build_info.py`` into the build folder, never into the source tree;
- ``sdist`` writes it into the sdist, so a wheel built later from that sdist, away from git, still
  names the commit.

The commit is HEAD of the git work tree whose top is this folder (with ``DIRTY`` when tracked files
have changes), else ``RECONCILER_COMMIT`` from the environment (SHA or SHA-dirty; ``docker build --build-arg``:
the image's build context has no ``.git``), else the file an sdist carries; else none is written and
``reconcile --version`` says ``unknown``. An editable install writes nothing: it asks git at run time.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
TARGET = Path("reconciler", "_build_info.py")
GIVEN = re.compile(r"(?P<sha>[0-9a-f]{40})(?P<dirty>-dirty)?")


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return done.stdout.strip()


def build_commit() -> tuple[str, bool] | None:
    """(sha, dirty) of this source tree, or None when neither git nor the environment knows it."""
    try:
        top = _git("rev-parse", "--show-toplevel")
        # An sdist unpacked inside some other repository is not that repository's commit.
        if Path(top).resolve() == ROOT:
            return _git("rev-parse", "--verify", "HEAD"), bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        pass
    given = os.environ.get("RECONCILER_COMMIT", "").strip().lower()
    if not given:
        return None
    found = GIVEN.fullmatch(given)
    if found is None:
        raise SystemExit(f"RECONCILER_COMMIT={given!r} is not a 40-digit commit sha (with -dirty after it, or not)")
    return found["sha"], bool(found["dirty"])


def write_build_info(folder: Path) -> None:
    found = build_commit()
    if found is None:
        return  # an sdist's own file, if any, was copied with the package; else `unknown`
    sha, dirty = found
    path = folder / TARGET
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'"""Written by setup.py when this package was built; read by reconciler/version.py."""\n\n'
        f"COMMIT = {sha!r}\nDIRTY = {dirty!r}\n",
        encoding="utf-8",
    )


class BuildPy(build_py):
    def run(self) -> None:
        # A build folder reused from an earlier build may hold its file: this build's, or none.
        (Path(self.build_lib) / TARGET).unlink(missing_ok=True)
        super().run()
        if not getattr(self, "editable_mode", False):
            write_build_info(Path(self.build_lib))


class Sdist(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        write_build_info(Path(base_dir))


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
