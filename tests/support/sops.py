"""SOPS files and age keys for tests: keys made by the real ``age-keygen``, files encrypted as ``sops`` writes them.

Guarantees: ``age_key`` runs the real ``age-keygen`` (Debian ``age``) and returns the key file and its
recipient; ``encrypt`` turns a plaintext file's bytes into the SOPS file of that path (the store by its
extension) for the recipients, through the same format code ``reconcile secrets encrypt`` uses; a fresh
data key each time, as ``sops`` makes one for each new file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.adapters.sops_config import CreationRule
from reconciler.ops.secrets import encrypt_for

# Skipped by hand without the age CLI; in CI (scripts/setup-host installs it) a missing one fails, never skips.
needs_age = pytest.mark.skipif(
    shutil.which("age-keygen") is None and os.environ.get("CI") != "true", reason="age is not installed"
)


def age_key(folder: Path, name: str) -> tuple[Path, str]:
    """A new age identity in ``folder/NAME.txt`` (by ``age-keygen``) and its recipient ``age1…``."""
    path = folder / f"{name}.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True)
    return path, recipient.stdout.strip()


def encrypt(plain: bytes, path: str, recipients: list[str]) -> bytes:
    """``plain`` as the SOPS file ``path`` (yaml, json, dotenv or binary by its extension) for ``recipients``."""
    return encrypt_for(plain, path, CreationRule(age=tuple(recipients)))
