"""The certificates ACME issued, and their accounts, under ``STATE/acme/``.

Guarantees:
- One folder per ACME directory URL (``core.certs.store_key``): staging and production never mix.
- One account per (directory, email): ``accounts/<digest of the email>.json``, its key and URL.
- Per host: ``certs/HOST.pem`` (full chain and key, as HAProxy loads it) and ``certs/HOST.json`` (what
  ``core.certs.CertRecord`` keeps: validity, renewal time, failures and backoff), so that a restart reuses
  what is there, orders nothing new and keeps each failure's backoff.
- Every folder is ``0700`` and every file ``0600``, written whole or not at all (a temporary file of its own,
  then a rename): a crash mid-write leaves the old file.
- A file that cannot be read as what it should be is read as absent (a record as no record), never a crash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reconciler.core.certs import CertRecord, store_key
from reconciler.state.private import replace_private

ACME_DIR = "acme"


class CertStore:
    """The accounts and certificates of one ACME directory (see the module docstring)."""

    def __init__(self, state_dir: Path, directory: str) -> None:
        self.root = state_dir / ACME_DIR / store_key(directory)
        self.directory = directory

    def _account_path(self, email: str) -> Path:
        return self.root / "accounts" / f"{hashlib.sha256(email.lower().encode()).hexdigest()[:16]}.json"

    def account(self, email: str) -> str | None:
        return _read_text(self._account_path(email))

    def save_account(self, email: str, text: str) -> None:
        replace_private(self._account_path(email), text.encode())

    def pem(self, host: str) -> bytes | None:
        return _read(self.root / "certs" / f"{host}.pem")

    def record(self, host: str) -> CertRecord:
        text = _read_text(self.root / "certs" / f"{host}.json")
        if text is None:
            return CertRecord(host)
        try:
            return CertRecord.from_json(json.loads(text), host)
        except ValueError:
            return CertRecord(host)

    def save(self, record: CertRecord, pem: bytes | None = None) -> None:
        """Keep ``record`` (and its certificate, when a new one came): the PEM first, so that a record never
        speaks of a certificate that is not there."""
        if pem is not None:
            replace_private(self.root / "certs" / f"{record.host}.pem", pem)
        replace_private(
            self.root / "certs" / f"{record.host}.json", json.dumps(record.to_json(), sort_keys=True).encode()
        )


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _read_text(path: Path) -> str | None:
    data = _read(path)
    return None if data is None else data.decode(errors="replace")
