"""The decrypted SOPS file secrets of the releases that run: one folder per container under ``STATE/secrets``,
bind-mounted read-only at ``/run/secrets/TARGET``, and removed with its container.

Guarantees:
- ``STATE/secrets`` is ``0700``: no other user of the host reaches a file in it, whatever the file's mode.
- A folder is named by 32 random hex digits and holds one file per secret, created new (``O_EXCL``, never
  through a link) with the secret's mode, and owned by its ``uid``/``gid``; a file that cannot be given to
  that owner (a run that is not root) is a ``SecretFileError`` and nothing of the folder is left.
- ``prune`` removes each folder whose name no container carries, and nothing else: a name that is not a
  folder of ours is left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets as random
import shutil
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import UserError
from reconciler.state.private import private_dir

_FOLDER = re.compile(r"^[0-9a-f]{32}$")


class SecretFileError(UserError):
    """A decrypted secret could not be written where its container mounts it from."""


@dataclass(frozen=True)
class SecretFile:
    target: str  # its name under /run/secrets
    data: bytes
    mode: int
    uid: int
    gid: int

    def __repr__(self) -> str:  # its data is a secret
        return f"SecretFile({self.target!r})"


def write(root: Path, files: Sequence[SecretFile]) -> tuple[str, dict[str, Path]]:
    """A new folder of ``root`` holding ``files``: its name, and each target's path."""
    try:
        private_dir(root)
        name = random.token_hex(16)
        folder = root / name
        folder.mkdir(mode=0o700)
    except OSError as exc:
        raise SecretFileError(f"{root}: cannot make a folder for secrets ({_why(exc)})") from None
    paths: dict[str, Path] = {}
    try:
        for item in files:
            path = folder / item.target
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(item.data)
                if (item.uid, item.gid) != (os.geteuid(), os.getegid()):
                    try:
                        os.fchown(handle.fileno(), item.uid, item.gid)
                    except PermissionError:
                        raise SecretFileError(
                            f"secret {item.target}: cannot give it to uid {item.uid}, gid {item.gid} here"
                            f" (reconcile runs as uid {os.geteuid()}, not root)"
                        ) from None
                os.fchmod(handle.fileno(), item.mode)
            paths[item.target] = path
    except OSError as exc:
        remove(root, name)
        raise SecretFileError(f"{root}: cannot write a secret ({_why(exc)})") from None
    except SecretFileError:
        remove(root, name)
        raise
    return name, paths


def remove(root: Path, name: str) -> None:
    """Remove the folder ``name`` of ``root`` (one that is gone is no error)."""
    if _FOLDER.match(name):
        shutil.rmtree(root / name, ignore_errors=True)


def prune(root: Path, keep: Collection[str]) -> list[str]:
    """Remove every folder of ours in ``root`` that is not in ``keep``; the names removed."""
    removed: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.listdir(root)):
            if _FOLDER.match(entry) and entry not in keep:
                remove(root, entry)
                removed.append(entry)
    return removed


def _why(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()
