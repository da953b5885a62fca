"""``reconcile secrets encrypt`` and ``reconcile secrets show``: SOPS files for teams without the ``sops`` binary.

Guarantees:
- ``encrypt`` writes what ``sops --encrypt`` writes for the same plaintext and creation rule: a fresh random
  data key, one armored age slot per recipient of the ``.sops.yaml`` rule that matches the file (found as
  sops finds it: ``adapters.sops_config``), the rule's choice of encrypted keys, the MAC, in the store of
  the file's extension (yaml, json, dotenv, else binary). A file that is already a SOPS file is refused.
  What it writes is read back by the same code that reads sops' own files (``tests/sops_fixtures``).
- ``show`` decrypts with this machine's keys (``--sops-age-key-file``, ``SOPS_AGE_KEY_FILE``, sops' default
  file, gpg's keyring) and gives the document as ``sops --decrypt`` prints it, or one value (``--key
  db.password``) as its text, without a newline, as ``sops --decrypt --extract`` does.
- Every failure is one ``UserError`` naming the file; no message holds a plaintext value.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from reconciler.adapters import sops_config, sops_file
from reconciler.converge.sealed import MAX_BYTES  # as the files a commit's desired state names
from reconciler.core import sops
from reconciler.core.sealed import one_value
from reconciler.core.sops import SopsError
from reconciler.errors import UserError


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({(exc.strerror or type(exc).__name__).lower()})") from None
    if len(data) > MAX_BYTES:
        raise UserError(f"{path}: larger than {MAX_BYTES // 1024} KiB")
    return data


def encrypt(path: Path, *, config: Path | None = None, cwd: Path | None = None) -> bytes:
    """``path`` encrypted as sops would for the ``.sops.yaml`` rule that matches it."""
    data = _read(path)
    found = config or sops_config.find_config(cwd or Path.cwd())
    if found is None:
        raise UserError(f"{path}: no {sops_config.CONFIG} here or in a parent folder (or give --config)")
    try:
        return encrypt_for(data, str(path), sops_config.rule_for(found, path))
    except SopsError as exc:
        said = str(exc)
        raise UserError(said if said.startswith((str(path), str(found))) else f"{path}: {said}") from None


def encrypt_for(data: bytes, path: str, rule: sops_config.CreationRule) -> bytes:
    """A plaintext file's bytes as the SOPS file ``path`` (its store by extension) for ``rule``: a fresh data key,
    one age slot per recipient; a ``SopsError`` for a file that is already encrypted or cannot be parsed."""
    tree = sops_file.parse_plaintext(data, path)
    data_key = os.urandom(32)
    slots = sops_file.encrypt_data_key(data_key, list(rule.age))
    metadata = sops.Metadata(
        lastmodified="",
        mac="",
        age=tuple(sops.AgeKey(recipient, enc) for recipient, enc in slots),
        unencrypted_suffix=rule.unencrypted_suffix,
        encrypted_suffix=rule.encrypted_suffix,
        unencrypted_regex=rule.unencrypted_regex,
        encrypted_regex=rule.encrypted_regex,
        mac_only_encrypted=rule.mac_only_encrypted,
    )
    document = sops.encrypt(tree, data_key, metadata, datetime.now(UTC))
    return sops_file.render_encrypted(document, sops_file.store_for(path))


def keys_of(key_file: str | None, *, given: bool = False) -> sops_file.Keys:
    """This machine's keys (``sops_file.load_keys``); with ``given`` (``--sops-age-key-file`` was), a key file
    that is not there is an error too. Every failure is one ``UserError``."""
    try:
        keys = sops_file.load_keys(key_file)
    except SopsError as exc:
        raise UserError(f"--sops-age-key-file: {exc}") from None
    if given and keys.missing:
        raise UserError(f"--sops-age-key-file: {keys.missing}")
    return keys


def show(path: Path, keys: sops_file.Keys, *, key: str | None = None) -> bytes:
    """``path`` decrypted (or the one value ``key`` names) with ``keys``."""
    data = _read(path)
    try:
        document, tree = sops_file.decrypt_file(data, str(path), keys)
        if key is None:
            return sops_file.render_plaintext(tree, document.kind)
        return one_value(tree, key, str(path))
    except SopsError as exc:
        said = str(exc).removeprefix(f"{path}: ")
        raise UserError(f"{path}: {said}") from None
