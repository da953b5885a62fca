"""Reads an app's ``env_file`` where its container runs: on this machine, or on an ``ssh://`` engine's host.

Guarantees:
- The file is read on the engine's host: through the same ``ssh`` login as the engine when the engine is
  ``ssh://``, so that a run from a laptop or CI reads the server's file, never a local one of that name.
- Only a regular file of at most ``MAX_BYTES`` bytes of UTF-8 text without NUL is read (not ``/proc``,
  ``/sys`` or ``/dev``); every refusal is one ``EnvFileError`` line naming the file and the place.
- No message holds the file's contents; every value read is remembered by ``scrub`` so that an error
  that quotes it later (an engine's) is scrubbed at the boundary too.
- ``digest`` is None when the file cannot be read from here: the planner then does not compare it.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import subprocess
from pathlib import Path

from reconciler.core.model import ENV_KEY
from reconciler.errors import EnvFileError
from reconciler.shell import scrub

MAX_BYTES = 256 * 1024
SSH_READ_TIMEOUT = 20.0
_SPECIAL = ("/proc/", "/sys/", "/dev/")

# What the far side's shell answers, by exit code (ssh itself exits 255).
_REMOTE = (
    'f={path}; r=$(readlink -f -- "$f" 2>/dev/null) || r=$f; '
    'case "$r" in /proc/*|/sys/*|/dev/*) exit 3;; esac; '
    '[ -e "$f" ] || exit 5; [ -f "$f" ] || exit 3; [ -r "$f" ] || exit 4; '
    'exec head -c {limit} -- "$f"'
)
_REMOTE_FAILURES = {
    3: "not a regular file",
    4: "permission denied",
    5: "no such file",
}


class EnvFiles:
    """The env_files of one engine's host. ``ssh`` is the ssh command line that logs in there (None: here)."""

    def __init__(self, ssh: list[str] | None = None, *, host: str = "") -> None:
        self.ssh = ssh
        self.host = host

    def _bytes(self, path: str) -> bytes:
        where = f" on {self.host}" if self.ssh and self.host else ""
        if self.ssh is not None:
            command = _REMOTE.format(path=shlex.quote(path), limit=MAX_BYTES + 1)
            try:
                done = subprocess.run(
                    [*self.ssh, command], capture_output=True, timeout=SSH_READ_TIMEOUT, stdin=subprocess.DEVNULL
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise EnvFileError(f"env_file {path}{where}: cannot read it over ssh ({type(exc).__name__})") from None
            if done.returncode != 0:
                why = _REMOTE_FAILURES.get(done.returncode, f"ssh exited {done.returncode}")
                raise EnvFileError(f"env_file {path}{where}: cannot read it ({why})")
            data = done.stdout
        else:
            real = os.path.realpath(path)
            if real.startswith(_SPECIAL):
                raise EnvFileError(f"env_file {path}: cannot read it (not a regular file)")
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):
                    raise EnvFileError(f"env_file {path}: cannot read it (not a regular file)")
                with Path(path).open("rb") as handle:
                    data = handle.read(MAX_BYTES + 1)
            except OSError as exc:
                raise EnvFileError(
                    f"env_file {path}: cannot read it ({(exc.strerror or type(exc).__name__).lower()})"
                ) from None
        if len(data) > MAX_BYTES:
            raise EnvFileError(f"env_file {path}{where}: larger than {MAX_BYTES // 1024} KiB; not read")
        return data

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

    def digest(self, path: str) -> str | None:
        """A hash of the file's bytes (so that editing it on the server is drift); None: unreadable here."""
        try:
            return hashlib.sha256(self._bytes(path)).hexdigest()[:16]
        except EnvFileError:
            return None
