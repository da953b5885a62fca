"""A repository's ``.sops.yaml``, read as the ``sops`` tool reads it, for ``reconcile secrets encrypt``.

Guarantees:
- The file is found as sops finds it: ``.sops.yaml`` in the working directory or the nearest parent (up to
  100 levels; a ``.sops.yml`` is not read, as sops does not read it), unless ``--config`` names one.
- A file's absolute path, less the folder of the ``.sops.yaml`` when it is under it, is matched against
  each creation rule's ``path_regex`` in turn (a search, as Go's ``MatchString``); the first that matches
  wins, and a rule without ``path_regex`` matches every file.
- ``age`` is a comma-separated string or a list; ``encrypted_regex``, ``unencrypted_regex``,
  ``encrypted_suffix``, ``unencrypted_suffix`` (at most one of them, as sops) and ``mac_only_encrypted`` are
  honoured. A rule that names keys this tool does not write (``pgp``, ``kms``, ``gcp_kms``,
  ``azure_keyvault``, ``hc_vault_transit_uri``, ``key_groups``) is refused rather than written for its age
  recipients only; so is a rule without age recipients. Every refusal is one ``SopsError`` naming the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.core.sops import SopsError

CONFIG = ".sops.yaml"
MAX_DEPTH = 100  # as sops' config.LookupConfigFile
_CRYPT_RULES = ("unencrypted_suffix", "encrypted_suffix", "unencrypted_regex", "encrypted_regex")
_OTHER_KEYS = ("pgp", "kms", "gcp_kms", "azure_keyvault", "hc_vault_transit_uri", "key_groups", "hckms", "plugins")


@dataclass(frozen=True)
class CreationRule:
    """What a file is encrypted for, and which of its keys are encrypted."""

    age: tuple[str, ...]
    unencrypted_suffix: str | None = None
    encrypted_suffix: str | None = None
    unencrypted_regex: str | None = None
    encrypted_regex: str | None = None
    mac_only_encrypted: bool = False


def find_config(start: Path) -> Path | None:
    """The ``.sops.yaml`` of ``start`` (a folder) or of its nearest parent; None when there is none."""
    folder = start.absolute()
    for _ in range(MAX_DEPTH):
        candidate = folder / CONFIG
        if candidate.is_file():
            return candidate
        if folder.parent == folder:
            return None
        folder = folder.parent
    return None


def _keys(value: Any, name: str, where: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(item.strip() for item in value if item.strip())
    raise SopsError(f"{where}: {name} is a comma-separated string or a list of strings")


def rule_for(config: Path, file: Path) -> CreationRule:
    """The creation rule of ``config`` for ``file``, as sops picks it."""
    try:
        raw = yaml.safe_load(config.read_text())
    except OSError as exc:
        raise SopsError(f"{config}: cannot read it ({(exc.strerror or type(exc).__name__).lower()})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise SopsError(f"{config}{at}: not YAML") from None
    rules = raw.get("creation_rules") if isinstance(raw, dict) else None
    if not isinstance(rules, list) or not rules:
        raise SopsError(f"{config}: no creation_rules")
    # As sops: the absolute path, less the config's folder when the file is under it.
    relative = str(file.absolute()).removeprefix(str(config.parent.absolute()) + os.sep)
    for index, rule in enumerate(rules):
        where = f"{config}: creation_rules[{index}]"
        if not isinstance(rule, dict):
            raise SopsError(f"{where}: not a map")
        pattern = rule.get("path_regex") or ""
        try:
            if pattern and not re.search(str(pattern), relative):
                continue
        except re.error as exc:
            raise SopsError(f"{where}: path_regex {pattern!r}: {exc}") from None
        return _rule(rule, where)
    raise SopsError(f"{config}: no creation rule matches {relative}")


def _rule(rule: dict[str, Any], where: str) -> CreationRule:
    other = [name for name in _OTHER_KEYS if rule.get(name)]
    if other:
        raise SopsError(
            f"{where}: names {', '.join(other)}; reconcile secrets encrypt writes age recipients only"
            " (use sops for these)"
        )
    crypt = {name: str(rule[name]) for name in _CRYPT_RULES if rule.get(name)}
    if len(crypt) > 1:
        raise SopsError(f"{where}: at most one of {', '.join(_CRYPT_RULES)} (it has {', '.join(crypt)})")
    age = _keys(rule.get("age"), "age", where)
    if not age:
        raise SopsError(f"{where}: no age recipients")
    return CreationRule(age=age, mac_only_encrypted=bool(rule.get("mac_only_encrypted")), **crypt)
