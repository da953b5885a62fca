"""A Debian bookworm base image with Python, made here, for building the agent image in tests.

No image can be pulled on these machines, so the Dockerfile's production base (the official
`python:3.11-slim`) is replaced in tests by one built from Debian's own packages.

Guarantees:
- `base_image(client)` returns "reconciler-test-base:bookworm-<hash>", an image with `python3`
  (3.11) and its venv module, `git`, an ssh client, CA certificates and `tini`: what the
  Dockerfile's build and run stages need, so they run no apt. It is `debootstrap --variant=minbase
  --include=PACKAGES bookworm`, with apt's package cache and lists, docs, man pages and locales
  removed (as slim images do), imported with `docker import` (`images.import_rootfs`); PATH and
  LANG are set as in the official image, its CMD is `python3`.
- Built once per machine: `<hash>` covers everything that makes the image (suite, variant,
  packages, trimming, image settings), the debootstrap tarball is kept in `cache_dir()`
  (/var/cache/reconciler-tests, or RECONCILER_TEST_CACHE) and the image on the engine; both are
  reused while they are there. A file lock makes concurrent test workers and runs wait for the one
  that builds. The image carries the label `tests.reconciler.base`, not a run's label: test
  cleanup leaves it, as it leaves the cached tarball (delete either to rebuild).
- No debootstrap, not root, or debootstrap failing: `BaseImageError` saying what to do (the
  test fails; it never skips).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors

from .images import import_rootfs

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("python3", "python3-venv", "git", "openssh-client", "ca-certificates", "tini")
MIRROR = os.environ.get("RECONCILER_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Removed from the root filesystem after debootstrap, as slim images do (apt can fetch lists again).
TRIM = (
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*",
    "var/log/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
)
CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
REPO = "reconciler-test-base"
BASE_LABEL = "tests.reconciler.base"
DEFAULT_CACHE = Path("/var/cache/reconciler-tests")


class BaseImageError(RuntimeError):
    """The base image could not be made; the message says why and what to do."""


def recipe_hash() -> str:
    """12 hex digits of everything that makes the image: a change to any of it builds a new one."""
    recipe = {"suite": SUITE, "variant": VARIANT, "packages": PACKAGES, "mirror": MIRROR, "trim": TRIM,
              "changes": CHANGES, "format": 1}  # fmt: skip
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def image_ref() -> str:
    return f"{REPO}:{SUITE}-{recipe_hash()}"


def cache_dir() -> Path:
    return Path(os.environ.get("RECONCILER_TEST_CACHE") or DEFAULT_CACHE)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rootfs_tarball(cache: Path | None = None) -> Path:
    """The debootstrap root filesystem as a tar in the cache, made now if it is not there."""
    cache = cache or cache_dir()
    tarball = cache / f"{SUITE}-{VARIANT}-{recipe_hash()}.tar"
    with _locked(cache / "debootstrap.lock"):
        if not tarball.is_file():
            _debootstrap(tarball)
    return tarball


def _debootstrap(tarball: Path) -> None:
    debootstrap = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if Path(p).is_file()), None
    )
    if debootstrap is None:
        raise BaseImageError("no debootstrap to make the test base image: apt-get install -y debootstrap "
                             "(bash scripts/setup-host does)")  # fmt: skip
    if os.geteuid() != 0:
        raise BaseImageError("debootstrap needs root to make the test base image: run the tests as root")
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix=".debootstrap-") as work:
        root = Path(work) / "rootfs"
        argv = [debootstrap, f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}", SUITE, str(root), MIRROR]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            log = root / "debootstrap" / "debootstrap.log"
            detail = log.read_text(errors="replace")[-3000:] if log.is_file() else done.stderr[-3000:]
            raise BaseImageError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{detail}")
        for pattern in TRIM:
            for path in root.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        partial = Path(work) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.rename(tarball)


def base_image(client: Any, cache: Path | None = None) -> str:
    """The base image's "repo:tag" on the engine; made (and its tarball, if need be) when missing."""
    ref = image_ref()
    cache = cache or cache_dir()
    with _locked(cache / "import.lock"):
        try:
            client.api.inspect_image(ref)
            return ref
        except docker.errors.ImageNotFound:
            pass
        tarball = rootfs_tarball(cache)
        repo, tag = ref.split(":")
        changes = [*CHANGES, f"LABEL {BASE_LABEL}={json.dumps(recipe_hash())}"]
        import_rootfs(client, tarball.read_bytes(), repo, tag, changes)
    return ref


def image_size(client: Any, ref: str) -> int:
    """The image's size in bytes, its base's layers included (what `docker images` shows)."""
    return int(client.api.inspect_image(ref)["Size"])


# -- the agent image, built from the repository's Dockerfile -----------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent.parent


class AgentBuildError(RuntimeError):
    """`docker build` of the agent image failed; the message ends with the build's log."""


def source_commit(root: Path = ROOT) -> str:
    """HEAD of the checkout, with ``-dirty`` when tracked files changed: the image's RECONCILER_COMMIT."""
    sha = _git(root, "rev-parse", "--verify", "HEAD")
    return sha + ("-dirty" if _git(root, "status", "--porcelain", "--untracked-files=no") else "")


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


def copy_sources(dest: Path, root: Path = ROOT) -> Path:
    """The checkout's files (tracked, and untracked but not ignored: what a user's checkout holds) copied to `dest`,
    with no ``.git``: a build context whose .dockerignore is the repository's own, to plant things in."""
    listed = _git(root, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    for name in filter(None, listed):
        source = root / name
        if source.is_file():  # a file deleted in the work tree is still listed by --cached
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def add_wheelhouse(context: Path, root: Path = ROOT) -> Path:
    """``wheelhouse/`` in `context`: wheels of the package's dependencies and build requirements, made with this
    interpreter's pip (which reaches PyPI here; build containers here cannot verify its TLS certificate)."""
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    house = context / "wheelhouse"
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--wheel-dir", str(house)]
    done = subprocess.run([*argv, *wanted], capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise AgentBuildError(f"pip wheel of {wanted} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return house


def build_agent_image(client: Any, context: Path, ref: str, *, base: str, commit: str,
                      labels: dict[str, str]) -> list[str]:  # fmt: skip
    """`docker build` of `context` (its Dockerfile) on `base` as `ref`; every ref it tagged, the image's last.

    The build stage is built and tagged first (``REF-build``), so that removing the refs removes all the
    build made: the classic builder keeps a finished build stage as an untagged image otherwise.
    """
    repo, _, tag = ref.rpartition(":")
    stage = f"{repo}:{tag}-build"
    args = {"BASE": base, "RECONCILER_COMMIT": commit}
    for target, name in (("build", stage), (None, ref)):
        try:
            client.images.build(path=str(context), tag=name, target=target, buildargs=args, labels=labels,
                                rm=True, forcerm=True, pull=False)  # fmt: skip
        except docker.errors.BuildError as exc:
            log = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log)
            raise AgentBuildError(f"docker build of {name} failed: {exc}\n{log[-4000:]}") from exc
        except docker.errors.APIError as exc:
            raise AgentBuildError(f"docker build of {name} failed: {exc}") from exc
    return [stage, ref]
