"""The SOPS 3.x file format as the `sops` tool writes it, with no I/O.

Guarantees: a value is encoded as `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` with the tree path
joined by ":" plus a trailing ":" as additional data (sops' aes/cipher.go); `decrypt` checks the MAC
(SHA-512 over the plaintext leaves in walk order, comments excluded, `mac_only_encrypted` honoured,
itself encrypted with `lastmodified` as additional data) before it returns any value; the rules for
which keys are encrypted are sops' own (`unencrypted_suffix`, `encrypted_suffix`, `encrypted_regex`,
`unencrypted_regex`). Every failure is one `SopsError`, whose message never holds a decrypted value
or the data key. Parsing and emitting YAML lives in `adapters/sops_file.py`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# A document tree: dicts keep their order, as sops' TreeBranch does.
Tree = Any

# sops uses a 32-byte nonce with GCM (aes/cipher.go: `nonceSize = 32`).
NONCE_SIZE = 32
DEFAULT_UNENCRYPTED_SUFFIX = "_unencrypted"
# sops.go MACOnlyEncryptedInitialization (sha256 of b"sops"): written first into the MAC when
# mac_only_encrypted is set, so the two settings never give the same MAC
MAC_ONLY_ENCRYPTED_INIT = hashlib.sha256(b"sops").digest()
SOPS_VERSION = "3.9.0"

_ENC = re.compile(r"^ENC\[AES256_GCM,data:(.*),iv:(.*),tag:(.*),type:(.*)\]$", re.DOTALL)


class SopsError(ValueError):
    """A SOPS file that cannot be read, trusted or decrypted; the message holds no secret."""


@dataclass(frozen=True)
class Comment:
    """A comment line of a dotenv file (sops encrypts comments, and leaves them out of the MAC)."""

    text: str


@dataclass(frozen=True)
class AgeKey:
    recipient: str
    enc: str


@dataclass(frozen=True)
class PgpKey:
    fp: str
    enc: str
    created_at: str = ""


@dataclass(frozen=True)
class Metadata:
    """The `sops` record of a file."""

    lastmodified: str
    mac: str
    version: str = SOPS_VERSION
    age: tuple[AgeKey, ...] = ()
    pgp: tuple[PgpKey, ...] = ()
    unencrypted_suffix: str | None = None
    encrypted_suffix: str | None = None
    unencrypted_regex: str | None = None
    encrypted_regex: str | None = None
    mac_only_encrypted: bool = False
    # keys sops writes that this layer does not use (kms, gcp_kms, azure_kv, hc_vault), kept as read
    other: dict[str, Any] = field(default_factory=dict)

    def recipients(self) -> list[str]:
        return [k.recipient for k in self.age] + [k.fp for k in self.pgp]


@dataclass(frozen=True)
class Document:
    """A parsed SOPS file: its tree (without `sops`), its metadata, and the store it came from."""

    tree: Tree
    metadata: Metadata
    kind: str  # yaml | json | dotenv | binary


# ---------------------------------------------------------------- metadata


def _opt_str(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    return str(value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() == "true"


def metadata_from_dict(raw: Any) -> Metadata:
    """The `sops` record of a yaml/json document (or an unflattened dotenv one)."""
    if not isinstance(raw, dict):
        raise SopsError("not a SOPS file: no `sops` metadata")
    for required in ("mac", "lastmodified"):
        if not raw.get(required):
            raise SopsError(f"not a SOPS file: the `sops` metadata has no `{required}`")
    ages: list[AgeKey] = []
    for entry in raw.get("age") or []:
        if not isinstance(entry, dict) or "recipient" not in entry or "enc" not in entry:
            raise SopsError("malformed `sops.age` entry")
        ages.append(AgeKey(str(entry["recipient"]), str(entry["enc"])))
    pgps: list[PgpKey] = []
    for entry in raw.get("pgp") or []:
        if not isinstance(entry, dict) or "fp" not in entry or "enc" not in entry:
            raise SopsError("malformed `sops.pgp` entry")
        pgps.append(PgpKey(str(entry["fp"]), str(entry["enc"]), str(entry.get("created_at", ""))))
    known = {
        "lastmodified", "mac", "version", "age", "pgp", "unencrypted_suffix", "encrypted_suffix",
        "unencrypted_regex", "encrypted_regex", "mac_only_encrypted",
    }  # fmt: skip
    lastmodified = raw["lastmodified"]
    if isinstance(lastmodified, datetime):  # a YAML loader may have parsed the timestamp
        lastmodified = format_time(lastmodified)
    metadata = Metadata(
        lastmodified=str(lastmodified),
        mac=str(raw["mac"]),
        version=str(raw.get("version", "")),
        age=tuple(ages),
        pgp=tuple(pgps),
        unencrypted_suffix=_opt_str(raw, "unencrypted_suffix"),
        encrypted_suffix=_opt_str(raw, "encrypted_suffix"),
        unencrypted_regex=_opt_str(raw, "unencrypted_regex"),
        encrypted_regex=_opt_str(raw, "encrypted_regex"),
        mac_only_encrypted=_as_bool(raw.get("mac_only_encrypted", False)),
        other={k: v for k, v in raw.items() if k not in known},
    )
    rules = [
        metadata.unencrypted_suffix,
        metadata.encrypted_suffix,
        metadata.unencrypted_regex,
        metadata.encrypted_regex,
    ]
    if sum(r is not None for r in rules) > 1:
        raise SopsError("the `sops` metadata sets more than one of the encryption rules")
    return metadata


def metadata_to_dict(metadata: Metadata) -> dict[str, Any]:
    """The `sops` record as sops 3.x writes it (keys in its order, empty ones left out)."""
    out: dict[str, Any] = dict(metadata.other)
    if metadata.age:
        out["age"] = [{"recipient": k.recipient, "enc": k.enc} for k in metadata.age]
    out["lastmodified"] = metadata.lastmodified
    out["mac"] = metadata.mac
    if metadata.pgp:
        out["pgp"] = [{"created_at": k.created_at, "enc": k.enc, "fp": k.fp} for k in metadata.pgp]
    for key in ("unencrypted_suffix", "encrypted_suffix", "unencrypted_regex", "encrypted_regex"):
        value = getattr(metadata, key)
        if value is not None:
            out[key] = value
    if metadata.mac_only_encrypted:
        out["mac_only_encrypted"] = True
    out["version"] = metadata.version
    return out


def format_time(moment: datetime) -> str:
    """`lastmodified` as Go's time.RFC3339 in UTC (the MAC's additional data depends on it)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- the value codec


def _to_text(value: Any) -> tuple[str | bytes, str]:
    """A plaintext leaf as the bytes sops encrypts, and its `type:` (aes/cipher.go Encrypt)."""
    if isinstance(value, Comment):
        return value.text, "comment"
    if isinstance(value, bool):
        return ("True" if value else "False"), "bool"
    if isinstance(value, int):
        return str(value), "int"
    if isinstance(value, float):
        return _go_float(value), "float"
    if isinstance(value, bytes):
        return value, "bytes"
    if isinstance(value, str):
        return value, "str"
    raise SopsError(f"cannot encrypt a value of type {type(value).__name__}")


def _go_float(value: float) -> str:
    # Go's strconv.FormatFloat(v, 'f', -1, 64): shortest round-trip, never an exponent
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(value, "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
    elif text.endswith(".0"):
        text = text[:-2]
    return text


def _mac_bytes(value: Any) -> bytes:
    """sops' ToBytes: what a leaf contributes to the MAC."""
    if isinstance(value, Comment):
        return b""
    if value is None:
        return b""
    text, _ = _to_text(value)
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def encrypt_value(value: Any, key: bytes, additional_data: str, nonce: bytes | None = None) -> str:
    """One leaf as `ENC[AES256_GCM,…]`; an empty string stays empty, as sops leaves it."""
    if isinstance(value, str) and value == "":
        return ""
    plain, kind = _to_text(value)
    raw = plain if isinstance(plain, bytes) else plain.encode("utf-8", "surrogateescape")
    iv = nonce if nonce is not None else os.urandom(NONCE_SIZE)
    sealed = AESGCM(key).encrypt(iv, raw, additional_data.encode())
    data, tag = sealed[:-16], sealed[-16:]
    b64 = base64.b64encode
    return f"ENC[AES256_GCM,data:{b64(data).decode()},iv:{b64(iv).decode()},tag:{b64(tag).decode()},type:{kind}]"


def is_encrypted(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("ENC[AES256_GCM,")


def decrypt_value(text: str, key: bytes, additional_data: str) -> Any:
    """One `ENC[AES256_GCM,…]` back to its typed plaintext."""
    if text == "":
        return ""
    match = _ENC.match(text)
    if match is None:
        raise SopsError(f"the value at {additional_data!r} should be encrypted and is not")
    try:
        data, iv, tag = (base64.b64decode(part, validate=True) for part in match.group(1, 2, 3))
    except ValueError as exc:
        raise SopsError(f"malformed base64 in the encrypted value at {additional_data!r}") from exc
    kind = match.group(4)
    if len(key) != 32:
        raise SopsError("the data key is not 32 bytes")
    if not iv or len(tag) != 16:
        raise SopsError(f"malformed iv or tag in the encrypted value at {additional_data!r}")
    try:
        plain = AESGCM(key).decrypt(iv, data + tag, additional_data.encode())
    except InvalidTag as exc:
        raise SopsError(f"cannot decrypt the value at {additional_data!r}: wrong data key or tampered value") from exc
    if kind == "bytes":
        return plain
    # a Go string holds any bytes (a binary file is one `str`): keep non-UTF-8 bytes as they are
    text_plain = plain.decode("utf-8", "surrogateescape")
    if kind == "str":
        return text_plain
    if kind == "comment":
        return Comment(text_plain)
    if kind in ("int", "int64"):
        try:
            return int(text_plain)
        except ValueError as exc:
            raise SopsError(f"the value at {additional_data!r} is not an int") from exc
    if kind == "float":
        try:
            return float(text_plain)
        except ValueError as exc:
            raise SopsError(f"the value at {additional_data!r} is not a float") from exc
    if kind == "bool":
        # Go's strconv.ParseBool
        if text_plain in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if text_plain in ("0", "f", "F", "FALSE", "false", "False"):
            return False
        raise SopsError(f"the value at {additional_data!r} is not a bool")
    raise SopsError(f"unknown value type {kind!r} at {additional_data!r}")


# ---------------------------------------------------------------- the rules


def should_encrypt(path: list[str], metadata: Metadata) -> bool:
    """sops' rule for one leaf: any key on its path decides (sops.go Tree.Encrypt)."""
    unencrypted_suffix = metadata.unencrypted_suffix
    if (
        unencrypted_suffix is None
        and metadata.encrypted_suffix is None
        and metadata.encrypted_regex is None
        and metadata.unencrypted_regex is None
    ):
        unencrypted_suffix = DEFAULT_UNENCRYPTED_SUFFIX
    if unencrypted_suffix is not None:
        return not any(k.endswith(unencrypted_suffix) for k in path)
    if metadata.encrypted_suffix is not None:
        return any(k.endswith(metadata.encrypted_suffix) for k in path)
    if metadata.encrypted_regex is not None:
        pattern = re.compile(metadata.encrypted_regex)
        return any(pattern.search(k) for k in path)
    assert metadata.unencrypted_regex is not None
    pattern = re.compile(metadata.unencrypted_regex)
    return not any(pattern.search(k) for k in path)


# ---------------------------------------------------------------- walking the tree


def _walk(tree: Tree, path: list[str], leaf: Any) -> Tree:
    """A copy of the tree with `leaf(value, path)` applied to each leaf, in document order.

    A list's items share their parent's path, as in sops' walkValue."""
    if isinstance(tree, dict):
        return {k: _walk(v, [*path, str(k)], leaf) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_walk(v, path, leaf) for v in tree]
    return leaf(tree, path)


def _ad(path: list[str]) -> str:
    return ":".join(path) + ":"


def _new_mac(metadata: Metadata) -> Any:
    digest = hashlib.sha512()
    if metadata.mac_only_encrypted:
        digest.update(MAC_ONLY_ENCRYPTED_INIT)
    return digest


def decrypt(document: Document, data_key: bytes) -> Tree:
    """The plaintext tree, returned only once the MAC matches."""
    metadata = document.metadata
    digest = _new_mac(metadata)

    def leaf(value: Any, path: list[str]) -> Any:
        if value is None:  # sops' walkValue never hands a null to its leaf function
            return None
        encrypted = should_encrypt(path, metadata)
        if encrypted:
            if not isinstance(value, str):
                # sops cannot decrypt it either: a hand-edited value where a secret belongs
                raise SopsError(f"the value at {_ad(path)!r} should be encrypted and is not")
            plain = decrypt_value(value, data_key, _ad(path))
        else:
            plain = value
        if not isinstance(plain, Comment) and (encrypted or not metadata.mac_only_encrypted):
            digest.update(_mac_bytes(plain))
        return plain

    plain_tree = _walk(document.tree, [], leaf)
    try:
        stored = decrypt_value(metadata.mac, data_key, metadata.lastmodified)
    except SopsError as exc:
        raise SopsError("MAC mismatch: the stored MAC does not decrypt") from exc
    if not isinstance(stored, str) or stored.upper() != digest.hexdigest().upper():
        raise SopsError("MAC mismatch: the file was changed after it was encrypted")
    return plain_tree


def encrypt(
    tree: Tree,
    data_key: bytes,
    metadata: Metadata,
    now: datetime,
) -> Document:
    """What sops writes for a plaintext tree: encrypted leaves, a fresh `lastmodified` and MAC.

    `metadata` carries the key groups (age/pgp with their `enc`) and the rules; its `mac` and
    `lastmodified` are replaced."""
    if len(data_key) != 32:
        raise SopsError("the data key is not 32 bytes")
    digest = _new_mac(metadata)

    def leaf(value: Any, path: list[str]) -> Any:
        if isinstance(value, (dict, list)):
            return value
        encrypted = should_encrypt(path, metadata)
        if not isinstance(value, Comment) and (encrypted or not metadata.mac_only_encrypted):
            digest.update(_mac_bytes(value))
        if encrypted:
            if value is None:
                return None
            return encrypt_value(value, data_key, _ad(path))
        return value

    encrypted_tree = _walk(tree, [], leaf)
    no_rule = all(
        rule is None
        for rule in (
            metadata.unencrypted_suffix,
            metadata.encrypted_suffix,
            metadata.unencrypted_regex,
            metadata.encrypted_regex,
        )
    )
    lastmodified = format_time(now)
    mac = encrypt_value(digest.hexdigest().upper(), data_key, lastmodified)
    new_metadata = Metadata(
        lastmodified=lastmodified,
        mac=mac,
        version=metadata.version,
        age=metadata.age,
        pgp=metadata.pgp,
        # sops writes the default rule out: `unencrypted_suffix: _unencrypted`
        unencrypted_suffix=DEFAULT_UNENCRYPTED_SUFFIX if no_rule else metadata.unencrypted_suffix,
        encrypted_suffix=metadata.encrypted_suffix,
        unencrypted_regex=metadata.unencrypted_regex,
        encrypted_regex=metadata.encrypted_regex,
        mac_only_encrypted=metadata.mac_only_encrypted,
        other=metadata.other,
    )
    return Document(tree=encrypted_tree, metadata=new_metadata, kind="")


def value_at(tree: Tree, dotted: str) -> Any:
    """One value by its path (`db.password`; a top-level key is its name)."""
    node = tree
    walked: list[str] = []
    for part in dotted.split("."):
        walked.append(part)
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SopsError(f"no key {'.'.join(walked)!r} in the file")
    return node


# ---------------------------------------------------------------- dotenv and binary stores

_MAP_SEP = "__map_"
_LIST_SEP = "__list_"


def parse_dotenv(text: str) -> Document:
    """sops' dotenv store: `KEY=VALUE` lines, `#` comments, the metadata as flattened `sops_*` lines."""
    tree: dict[str, Any] = {}
    flat_meta: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            # comments are outside the MAC; this layer drops them rather than decrypt them
            continue
        if "=" not in line:
            raise SopsError(f"dotenv line {number}: no '='")
        key, value = line.split("=", 1)
        value = value.replace("\\n", "\n")
        if key.startswith("sops_"):
            flat_meta[key[len("sops_") :]] = value
        else:
            tree[key] = value
    return Document(tree=tree, metadata=metadata_from_dict(_unflatten(flat_meta)), kind="dotenv")


def _unflatten(flat: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        tokens = re.split(r"(__map_|__list_)", key)
        # tokens: name, sep, name, sep, ...
        node: Any = out
        parts: list[tuple[str, str]] = [("", tokens[0])]
        for i in range(1, len(tokens), 2):
            parts.append((tokens[i], tokens[i + 1]))
        for index, (_sep, name) in enumerate(parts):
            last = index == len(parts) - 1
            nxt = parts[index + 1][0] if not last else ""
            container: Any = [] if nxt == _LIST_SEP else {}
            if isinstance(node, list):
                slot = int(name)
                while len(node) <= slot:
                    node.append(None)
                if last:
                    node[slot] = value
                else:
                    if node[slot] is None:
                        node[slot] = container
                    node = node[slot]
            else:
                if last:
                    node[name] = value
                else:
                    node = node.setdefault(name, container)
    return out


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}{_MAP_SEP}{k}" if prefix else str(k), v, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _flatten(f"{prefix}{_LIST_SEP}{i}", v, out)
    elif isinstance(value, bool):
        out[prefix] = "true" if value else "false"
    else:
        out[prefix] = str(value)


def render_dotenv(tree: Tree, metadata: Metadata | None) -> str:
    """A dotenv tree (and, for an encrypted file, its `sops_*` lines) as sops writes it."""
    lines: list[str] = []
    for key, value in tree.items():
        if isinstance(value, Comment):
            lines.append(f"#{value.text}")
        else:
            lines.append(f"{key}={str(value).replace(chr(10), chr(92) + 'n')}")
    if metadata is not None:
        flat: dict[str, str] = {}
        _flatten("", metadata_to_dict(metadata), flat)
        for key in sorted(flat):
            lines.append(f"sops_{key}={flat[key].replace(chr(10), chr(92) + 'n')}")
    return "".join(line + "\n" for line in lines)


def binary_document(raw: dict[str, Any]) -> Document:
    """sops' binary store: `{"data": ENC[…], "sops": {…}}`."""
    if not isinstance(raw, dict) or "data" not in raw:
        raise SopsError("not a SOPS binary file: no `data`")
    return Document(tree={"data": raw["data"]}, metadata=metadata_from_dict(raw.get("sops")), kind="binary")


def binary_plaintext(tree: Tree) -> bytes:
    data = tree["data"]
    return data if isinstance(data, bytes) else str(data).encode("utf-8", "surrogateescape")


def binary_tree(content: bytes) -> Tree:
    """A binary file's plaintext as sops' binary store holds it: one `data` string of any bytes."""
    return {"data": content.decode("utf-8", "surrogateescape")}
