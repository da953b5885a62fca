"""Reads an app's ``env_file`` where its container runs: on this machine, or on an ``ssh://`` engine's host.

Guarantees:
- The file is read on the engine's host: through the same ``ssh`` login as the engine when the engine is
  ``ssh://``, so that a run from a laptop or CI reads the server's file, never a local one of that name.
- Only a regular file of at most ``MAX_BYTES`` bytes of UTF-8 text without NUL is read (not ``/proc``,
  ``/sys`` or ``/dev``); every refusal is one ``EnvFileError`` line naming the file and the place.
- No message holds the file's contents; every value read is remembered by ``scrub`` so that an error
  that quotes it later (an engine's) is scrubbed at the boundary too.
- ``digest`` is None when the file cannot be read from here: the planner then does not compare it.
- Under a policy of env_files (``allowed``, set by the pass): the file read is the one that was opened, and
  its real path (asked of the open file itself: ``/proc/self/fd``, on the far side too) must lie under an
  allowed folder or the real path of one; a link that leads out of them is refused, naming both paths,
  and nothing of the file is used. A link swapped in after a check cannot slip through: there is no
  check before the open that the read relies on.
- ``real_paths`` tells the real path of host paths on this host (``os.path.realpath``) or over the
  engine's ssh login (``realpath -m``): every component resolved, a missing tail kept as written.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from reconciler.core.guard import normalize_path, real_allowed
from reconciler.core.model import ENV_KEY
from reconciler.errors import EnvFileError
from reconciler.telemetry import scrub

MAX_BYTES = 256 * 1024
SSH_READ_TIMEOUT = 20.0
_SPECIAL = ("/proc/", "/sys/", "/dev/")

# What the far side's shell answers, by exit code (ssh itself exits 255): the real path of the file it
# opened, a NUL, then its bytes.
_REMOTE = (
    'f={path}; r=$(readlink -f -- "$f" 2>/dev/null) || r=$f; '
    'case "$r" in /proc/*|/sys/*|/dev/*) exit 3;; esac; '
    '[ -e "$f" ] || exit 5; [ -f "$f" ] || exit 3; [ -r "$f" ] || exit 4; '
    'exec 3< "$f" || exit 4; o=$(readlink /proc/$$/fd/3 2>/dev/null) || o=$r; '
    "printf '%s\\0' \"$o\"; exec head -c {limit} <&3"
)
_REMOTE_FAILURES = {
    3: "not a regular file",
    4: "permission denied",
    5: "no such file",
}
_REMOTE_REAL = "exec realpath -m -z -- {paths}"


def _opened(fd: int, path: str) -> str:
    """The real path of the file open at ``fd`` (opened for ``path``), as the kernel has it."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc here: the real path now, if it is still the file that is open
        real = os.path.realpath(path)
        opened, found = os.fstat(fd), os.stat(real)
        if (opened.st_dev, opened.st_ino) != (found.st_dev, found.st_ino):
            raise EnvFileError(f"env_file {path}: it changed while it was read; not read") from None
        return real


class EnvFiles:
    """The env_files of one engine's host. ``ssh`` is the ssh command line that logs in there (None: here)."""

    def __init__(self, ssh: list[str] | None = None, *, host: str = "") -> None:
        self.ssh = ssh
        self.host = host
        # The policy's env_files folders (None: any) and their real paths; the pass that plans sets them.
        self.allowed: tuple[str, ...] | None = None
        self.allowed_real: Mapping[str, str | None] = {}

    def _ssh(self, command: str, what: str) -> subprocess.CompletedProcess[bytes]:
        where = f" on {self.host}" if self.host else ""
        assert self.ssh is not None
        try:
            return subprocess.run(
                [*self.ssh, command], capture_output=True, timeout=SSH_READ_TIMEOUT, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EnvFileError(f"{what}{where}: cannot read it over ssh ({type(exc).__name__})") from None

    def _bytes(self, path: str, what: str = "env_file") -> bytes:
        where = f" on {self.host}" if self.ssh and self.host else ""
        if self.ssh is not None:
            done = self._ssh(_REMOTE.format(path=shlex.quote(path), limit=MAX_BYTES + 1), f"{what} {path}")
            if done.returncode != 0:
                why = _REMOTE_FAILURES.get(done.returncode, f"ssh exited {done.returncode}")
                raise EnvFileError(f"{what} {path}{where}: cannot read it ({why})")
            opened, _, data = done.stdout.partition(b"\0")
            self._confined(path, os.fsdecode(opened), where, what)
        else:
            real = os.path.realpath(path)
            if real.startswith(_SPECIAL):
                raise EnvFileError(f"{what} {path}: cannot read it (not a regular file)")
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):
                    raise EnvFileError(f"{what} {path}: cannot read it (not a regular file)")
                with Path(path).open("rb") as handle:
                    self._confined(path, _opened(handle.fileno(), path), where, what)
                    data = handle.read(MAX_BYTES + 1)
            except OSError as exc:
                raise EnvFileError(
                    f"{what} {path}: cannot read it ({(exc.strerror or type(exc).__name__).lower()})"
                ) from None
        if len(data) > MAX_BYTES:
            raise EnvFileError(f"{what} {path}{where}: larger than {MAX_BYTES // 1024} KiB; not read")
        return data

    def _confined(self, path: str, opened: str, where: str, what: str) -> None:
        """Refuse the file opened for ``path`` unless its real path ``opened`` stays in the allowed folders."""
        if opened.startswith(_SPECIAL):
            raise EnvFileError(f"{what} {path}{where}: cannot read it (not a regular file)")
        if self.allowed is None or real_allowed(opened, self.allowed, self.allowed_real):
            return
        how = "is" if opened == normalize_path(path) else "leads through a symlink to"
        shown = ", ".join(self.allowed) or "none"
        raise EnvFileError(
            f"{what} {path}{where} {how} {opened}, which is not under an allowed host path"
            f" (policy env_files: {shown}); not read"
        )

    def real_paths(self, paths: Sequence[str]) -> dict[str, str]:
        """Each of ``paths`` as its real path on this host (every link followed, ``..`` after the link it
        follows, a missing tail as written). Over ssh, a host that cannot tell is an ``EnvFileError``."""
        if self.ssh is None:
            return {path: os.path.realpath(path) for path in paths}
        if not paths:
            return {}
        done = self._ssh(_REMOTE_REAL.format(paths=" ".join(map(shlex.quote, paths))), "the real paths of host paths")
        found = done.stdout.split(b"\0")[: len(paths)]
        if done.returncode != 0 or len(found) != len(paths):
            where = f" on {self.host}" if self.host else ""
            raise EnvFileError(
                f"cannot tell the real paths of host paths{where} (`realpath -m` exited {done.returncode})"
            )
        return {path: os.fsdecode(real) for path, real in zip(paths, found, strict=True)}

    def read(self, path: str) -> dict[str, str]:
        """``KEY=VALUE`` lines (``#`` comments, blank lines, optional ``export``, quotes stripped)."""
        data = self._bytes(path)
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise EnvFileError(f"env_file {path}: not UTF-8 text") from None
        env: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            if "\0" in raw:
                raise EnvFileError(f"env_file {path}:{number}: holds a NUL character")
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.removeprefix("export ").partition("=")
            key = key.strip()
            if not sep or not ENV_KEY.match(key):
                raise EnvFileError(f"env_file {path}:{number}: not KEY=VALUE")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            env[key] = value
        scrub.remember_env(env)
        return env

    def secret(self, path: str) -> bytes:
        """The bytes of a file secret's source (as an env_file is read: a regular file, at most ``MAX_BYTES``,
        confined to the policy's folders); remembered by ``scrub`` so that no output ever shows it."""
        data = self._bytes(path, "secret")
        text = data.decode(errors="replace")
        scrub.remember([text, text.strip(), *(line.strip() for line in text.splitlines())])
        return data

    def secret_digest(self, app: str, target: str, path: str) -> str | None:
        """What a container's labels carry of a secret: a salted, stretched digest (scrypt) of its bytes, so
        that a short password cannot be found from a label by trying guesses; None: unreadable here."""
        try:
            data = self.secret(path)
        except EnvFileError:
            return None
        salt = f"io.reconciler.secret\0{app}\0{target}".encode()
        return hashlib.scrypt(data, salt=salt, n=2**14, r=8, p=1, dklen=16).hex()

    def digest(self, path: str) -> str | None:
        """A hash of the file's bytes (so that editing it on the server is drift); None: unreadable here."""
        try:
            return hashlib.sha256(self._bytes(path)).hexdigest()[:16]
        except EnvFileError:
            return None
