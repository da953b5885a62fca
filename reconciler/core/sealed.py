"""The SOPS files of one commit as this server opened them: pure records, their keyed digests, and what a
container gets of them.

Guarantees:
- A ``Sealed`` maps each repository path that a commit's file names in ``{sops: PATH}`` to its ``Opened``:
  the decrypted document (its tree, and its bytes as ``sops -d`` prints them), or why no key here opened it
  (a dry run then says ``not checked``, as for an env_file it cannot read).
- No repr, str or message of these records holds a decrypted value.
- ``digest`` is an HMAC-SHA256 under this server's digest key, salted with the app and the target: what
  labels and the journal carry of a secret. A guess cannot be checked against it without the key, and the
  same plaintext encrypted anew (new recipients, a new data key) gives the same digest, so a rotation is
  no redeploy.
- ``problems`` finds, once a file is opened, each reference it cannot satisfy: a ``key:`` that is not in the
  tree or is not one value, an env_file that is not a flat map of KEY: VALUE.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reconciler.core.sops import SopsError, Tree, value_at
from reconciler.core.stack import SopsRef

if TYPE_CHECKING:
    from reconciler.core.model import AppSpec

ENV_FILE = "env_file"  # the target an app's env_file is digested under


@dataclass(frozen=True)
class Opened:
    """One SOPS file of the commit: opened (``tree`` and ``plain``), or not (``why``)."""

    path: str
    kind: str  # yaml | json | dotenv | binary
    tree: Tree = field(default=None, repr=False)
    plain: bytes = field(default=b"", repr=False)  # the document as `sops -d` prints it
    why: str = ""  # why it is not opened here ("" when it is)
    rendered: bool = False  # ``plain`` is made (only for a file that a secret takes whole)


def _text(value: object) -> str | None:
    """A scalar as an env value or a secret's text (YAML's true as `true`); None for a map or a list."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def one_value(tree: Tree, key: str, path: str) -> bytes:
    """The value at ``key`` (``db.password``) of a decrypted file ``path`` as a secret's bytes: its text (YAML's
    true as ``true``), or the bytes of a binary value; a ``SopsError`` when there is none, or a map or list."""
    try:
        value = value_at(tree, key)
    except SopsError as exc:
        raise SopsError(f"{path}: {exc}") from None
    if isinstance(value, bytes):
        return value
    text = _text(value)
    if text is None:
        raise SopsError(f"{path}: {key} is not one value")
    return text.encode()


def _env_key_ok(key: str) -> bool:
    from reconciler.core.model import ENV_KEY

    return bool(ENV_KEY.match(key))


@dataclass(frozen=True)
class Sealed:
    """The SOPS files of one commit, by repository path, and the key their digests are made with."""

    files: Mapping[str, Opened] = field(default_factory=dict)
    digest_key: bytes = field(default=b"", repr=False)

    def opened(self, ref: SopsRef) -> Opened | None:
        found = self.files.get(ref.sops)
        return found if found is not None and not found.why else None

    def material(self, ref: SopsRef) -> bytes | None:
        """A secret's bytes: the whole document as ``sops -d`` prints it, or the one value ``key`` names as
        its text; None when the file is not opened here."""
        found = self.opened(ref)
        if found is None:
            return None
        if ref.key is None:
            assert found.rendered, f"{ref.sops}: taken whole, but not rendered when it was opened"
            return found.plain
        return one_value(found.tree, ref.key, ref.sops)

    def env(self, ref: SopsRef) -> dict[str, str] | None:
        """An env_file's KEY=VALUE pairs; None when the file is not opened here."""
        found = self.opened(ref)
        if found is None:
            return None
        if not isinstance(found.tree, dict):
            raise SopsError(f"{ref.sops}: an env_file is a map of KEY: VALUE")
        env: dict[str, str] = {}
        for key, value in found.tree.items():
            text = _text(value)
            if not isinstance(key, str) or not _env_key_ok(key):
                raise SopsError(f"{ref.sops}: {str(key)[:64]!r} is not an env key")
            if text is None:
                raise SopsError(f"{ref.sops}: {key} is not one value (an env_file is flat KEY: VALUE)")
            env[key] = text
        return env

    def digest(self, app: str, target: str, ref: SopsRef) -> str | None:
        """The keyed digest of what ``app`` gets of ``ref`` under ``target``; None: not opened here."""
        data = self.material(ref) if target != ENV_FILE else self._env_bytes(ref)
        if data is None:
            return None
        salt = f"io.reconciler.sops\0{app}\0{target}\0".encode()
        return hmac.new(self.digest_key, salt + data, hashlib.sha256).hexdigest()[:32]

    def _env_bytes(self, ref: SopsRef) -> bytes | None:
        env = self.env(ref)
        return None if env is None else "\0".join(f"{k}={v}" for k, v in sorted(env.items())).encode()

    def problems(self, app: str, spec: AppSpec) -> list[str]:
        """What the opened files cannot give ``app``: a key not in its file, not one value, an env_file that is
        not flat KEY: VALUE (each ``PATH: message``, no value in it)."""
        found: list[str] = []
        refs = [(ENV_FILE, spec.env_file)] if isinstance(spec.env_file, SopsRef) else []
        refs += [(secret.target, secret.source) for secret in spec.secrets if isinstance(secret.source, SopsRef)]
        for target, ref in refs:
            try:
                self.digest(app, target, ref)
            except SopsError as exc:
                found.append(f"apps.{app}: {exc}")
        return found

    def remembered(self) -> list[str]:
        """Every decrypted text of the opened files, for the scrubber (never to print)."""
        texts: list[str] = []

        def walk(node: Tree) -> None:
            if isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)
            else:
                text = node.decode(errors="replace") if isinstance(node, bytes) else _text(node)
                if text:  # as a file secret's: whole, and line by line (an error may quote one line of it)
                    texts.extend([text, text.strip(), *(line.strip() for line in text.splitlines())])

        for found in self.files.values():
            if not found.why:
                walk(found.tree)
        return texts
