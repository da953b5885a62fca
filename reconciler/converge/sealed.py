"""Opens the SOPS files that a commit's desired state names: read at that commit, decrypted with this
server's keys.

Guarantees:
- Each file is read from the commit (``Source.read_inside``), never from a working tree; a path that leads
  out of the repository (through a symlink of the commit) refuses the commit, naming the file.
- ``Mode.PARSE`` (``validate``): each file exists at the commit and parses as SOPS; no key is needed or
  asked for.
- ``Mode.OPEN`` (an apply, the agent): a file that no key here opens, whose MAC does not match, or that
  lacks a ``key:`` the file names refuses the commit whole (``CommitRefused`` ``sops``): nothing of it is
  applied, what runs keeps running.
- ``Mode.PREVIEW`` (a dry run): a file that no key here opens is left closed and its secrets are ``not
  checked``; a file that is not SOPS, or is tampered with, still refuses.
- A file is decrypted once per process for the same bytes and the same keys: an in-sync pass of the agent
  decrypts nothing again.
- The digests are keyed with 32 random bytes of ``STATE/sops-digest.key`` (``0600``), made once.
- Every decrypted text is remembered by ``scrub`` before anything can print it.
"""

from __future__ import annotations

import enum
import hashlib
import os
import secrets as random
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

from reconciler.adapters import sops_file
from reconciler.adapters.git import Source
from reconciler.core.model import DesiredState
from reconciler.core.sealed import Opened, Sealed
from reconciler.core.sops import SopsError
from reconciler.core.stack import SopsRef
from reconciler.errors import CommitRefused, SourceError, UserError
from reconciler.state.private import private_dir
from reconciler.telemetry import scrub

DIGEST_KEY = "sops-digest.key"
CACHED = 256  # opened files kept per process (each holds one file's plaintext, at most 256 KiB)
MAX_BYTES = 256 * 1024  # as an env_file


class Mode(enum.Enum):
    PARSE = "parse"  # validate: exists and parses, no key
    PREVIEW = "preview"  # a dry run: a file no key opens is "not checked"
    OPEN = "open"  # an apply: every file opened, or the commit refused


# Files opened, by (path, sha256 of the bytes, keys and mode); and each commit's files, by (revision, path, keys
# and mode): a commit is immutable, so a pass of a commit seen before reads nothing of git again.
_opened: OrderedDict[tuple[str, str, str], Opened] = OrderedDict()
_by_commit: OrderedDict[tuple[str, str, str], tuple[str, str, str]] = OrderedDict()


def digest_key(state_dir: Path) -> bytes:
    """This server's key for the digests of secrets (made once, ``0600`` in the state directory)."""
    path = state_dir / DIGEST_KEY
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        private_dir(state_dir)
        fresh = random.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made meanwhile by another process: its key is the one
            return path.read_bytes()
        with os.fdopen(fd, "wb") as handle:
            handle.write(fresh)
        return fresh
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({(exc.strerror or type(exc).__name__).lower()})") from None
    if len(data) < 32:
        raise UserError(f"{path}: not a key (32 bytes or more); remove it and the next run makes one")
    return data


def open_sealed(
    source: Source,
    revision: str,
    desired: DesiredState,
    *,
    mode: Mode,
    key_file: str | None = None,
    state_dir: Path | None = None,
) -> DesiredState:
    """``desired`` with the SOPS files of its commit opened as ``mode`` says (``DesiredState.sealed``)."""
    paths = desired.sops_paths()
    if not paths:
        return desired
    keys = sops_file.Keys()
    if mode is not Mode.PARSE:
        try:
            keys = sops_file.load_keys(key_file)
        except SopsError as exc:
            if mode is Mode.OPEN:
                raise CommitRefused("sops", f"{exc}; not applied") from None
            keys = sops_file.Keys(missing=str(exc))
    # A file only parsed is cached apart from one opened: a dry run and an apply share what they opened.
    keyed = hashlib.sha256("\n".join([*keys.age, str(keys.gpg), str(mode is Mode.PARSE)]).encode()).hexdigest()
    problems: list[str] = []
    files: dict[str, Opened] = {}
    # The plaintext of a file as `sops -d` prints it is made only for the files a secret takes whole.
    whole = {
        secret.source.sops
        for spec in desired.apps.values()
        for secret in spec.secrets
        if isinstance(secret.source, SopsRef) and secret.source.key is None
    }
    for path in paths:
        seen = _by_commit.get((revision, path, keyed))
        found = _opened.get(seen) if seen is not None else None
        if found is not None and (found.rendered or path not in whole):
            files[path] = found  # this commit's file, opened before with these keys: nothing to read again
            continue
        try:
            files[path] = _open(source, revision, path, keys, keyed, mode, render=path in whole)
        except SourceError as exc:
            problems.append(str(exc))
        except sops_file.NoKey as exc:
            if mode is not Mode.PREVIEW:
                problems.append(f"{path}: {_without_path(str(exc), path)}")
            else:  # unknown here, not wrong: a dry run says "not checked"
                files[path] = Opened(path, sops_file.store_for(path), why=_without_path(str(exc), path))
        except SopsError as exc:
            problems.append(f"{path}: {_without_path(str(exc), path)}")
    if problems:
        raise CommitRefused("sops", "\n".join(f"{line}; not applied" for line in problems))
    if mode is Mode.PARSE:
        return desired
    sealed = Sealed(files, digest_key(state_dir) if state_dir is not None else b"")
    for app, spec in desired.apps.items():
        problems += sealed.problems(app, spec)
    if problems:
        raise CommitRefused("sops", "\n".join(f"{line}; not applied" for line in problems))
    return desired.with_sealed(sealed)


def _open(
    source: Source, revision: str, path: str, keys: sops_file.Keys, keyed: str, mode: Mode, *, render: bool
) -> Opened:
    """One file of the commit, parsed (and unless ``PARSE`` decrypted; with ``render``, printed as ``sops -d``
    does), through the caches."""
    data = source.read_inside(revision, path)
    if len(data) > MAX_BYTES:
        raise SopsError(f"larger than {MAX_BYTES // 1024} KiB")
    cached = (path, hashlib.sha256(data).hexdigest(), keyed)
    found = _opened.get(cached)
    if found is None:
        document = sops_file.parse(data, path)
        if mode is Mode.PARSE:
            found = Opened(path, document.kind, why="parsed only")
        else:
            tree = sops_file.decrypt_document(document, keys)
            found = Opened(path, document.kind, tree)
            names = [key for key in tree if isinstance(key, str)] if isinstance(tree, dict) else []
            scrub.remember(Sealed({path: found}).remembered(), keys=names)
    if render and not found.rendered and not found.why:
        found = replace(found, plain=sops_file.render_plaintext(found.tree, found.kind), rendered=True)
    if found is not _opened.get(cached):
        _opened[cached] = found
        while len(_opened) > CACHED:
            _opened.popitem(last=False)
    _opened.move_to_end(cached)
    _by_commit[(revision, path, keyed)] = cached
    while len(_by_commit) > CACHED:
        _by_commit.popitem(last=False)
    return found


def _without_path(message: str, path: str) -> str:
    return message.removeprefix(f"{path}: ")
