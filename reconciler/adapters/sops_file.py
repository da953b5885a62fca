"""SOPS files as bytes: parsed by the store sops picks for the path, rendered as `sops -d` prints them.

Guarantees: the store is chosen by extension as sops does (`.yaml`/`.yml`, `.json`, `.env`, else
binary); the data key comes from age identities (pyrage, every identity tried) or the gpg keyring
(`gpg --batch --decrypt`, GNUPGHOME from the environment); a missing or wrong key is one `SopsError`
naming the recipients, never the key. The format itself lives in `core/sops.py`.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage  # type: ignore[import-untyped]  # ships no stubs
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.emitter import Emitter
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, LiteralScalarString
from yaml._yaml import CParser

from reconciler.core.sops import (
    Document,
    Metadata,
    SopsError,
    Tree,
    binary_document,
    binary_plaintext,
    binary_tree,
    decrypt,
    metadata_from_dict,
    metadata_to_dict,
    parse_dotenv,
    render_dotenv,
)


def store_for(path: str) -> str:
    lower = path.lower()
    if lower.endswith((".yaml", ".yml")):
        return "yaml"
    if lower.endswith(".json"):
        return "json"
    if lower.endswith(".env"):
        return "dotenv"
    return "binary"


def _plain(node: Any) -> Any:
    """ruamel's nodes as plain Python, keeping the order of keys."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    # timestamps and other scalars: sops treats them as their text
    return str(node)


class _Core(yaml.resolver.BaseResolver):
    """YAML 1.2's core schema, as sops' go-yaml reads a file: only true/false are booleans, integers are
    decimal, 0b, 0o or 0x (with underscores), and a date or a time is text (the text sops encrypted and
    MACed)."""


for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^[-+]?(?:0b[0-1_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
):
    _Core.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first))


def _core_int(loader: yaml.constructor.SafeConstructor, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node)).replace("_", "")
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    for prefix, base in (("0b", 2), ("0o", 8), ("0x", 16)):
        if digits.startswith(prefix):
            return sign * int(digits[2:], base)
    return sign * int(digits, 10)  # 010 is ten in YAML 1.2, not eight


class _Constructor(yaml.constructor.SafeConstructor):
    pass


_Constructor.add_constructor("tag:yaml.org,2002:int", _core_int)  # type: ignore[type-var]  # the stubs' bound


class _Loader(CParser, _Constructor, _Core):
    """libyaml's parser, YAML 1.2's core schema."""

    def __init__(self, stream: str) -> None:
        CParser.__init__(self, stream)
        _Constructor.__init__(self)
        _Core.__init__(self)


def _yaml_load(text: str) -> Any:
    """A yaml file as sops reads it, through libyaml (PyYAML's C parser: a commit's SOPS files parse in a
    tenth of the time of a pure-Python parser; bench/sops.py)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _split(raw: Any, kind: str) -> Document:
    if not isinstance(raw, dict):
        raise SopsError(f"not a SOPS {kind} file: the top level is not a mapping")
    if "sops" not in raw:
        raise SopsError(f"not a SOPS {kind} file: no `sops` metadata")
    tree = {k: v for k, v in raw.items() if k != "sops"}
    return Document(tree=tree, metadata=metadata_from_dict(raw["sops"]), kind=kind)


def parse(content: bytes, path: str) -> Document:
    """The encrypted document of a file's bytes (no key needed)."""
    kind = store_for(path)
    try:
        text = content.decode()
    except UnicodeDecodeError as exc:
        raise SopsError(f"{path}: not UTF-8") from exc
    if kind == "dotenv":
        return parse_dotenv(text)
    if kind == "yaml":
        try:
            raw = _plain(_yaml_load(text))
        except Exception as exc:  # ruamel raises many types; the position is enough
            raise SopsError(f"{path}: not YAML ({type(exc).__name__})") from exc
        return _split(raw, "yaml")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SopsError(f"{path}: not JSON (line {exc.lineno})") from exc
    if kind == "binary":
        return binary_document(raw)
    return _split(raw, "json")


_OLD_BOOLS = frozenset(
    [
        "y",
        "Y",
        "yes",
        "Yes",
        "YES",
        "n",
        "N",
        "no",
        "No",
        "NO",
        "true",
        "True",
        "TRUE",
        "false",
        "False",
        "FALSE",
        "on",
        "On",
        "ON",
        "off",
        "Off",
        "OFF",
    ]
)


def _commented(node: Any) -> Any:
    if isinstance(node, dict):
        out = CommentedMap()
        for k, v in node.items():
            out[k] = _commented(v)
        return out
    if isinstance(node, list):
        return CommentedSeq([_commented(v) for v in node])
    if isinstance(node, str) and "\n" in node:
        # armored keys are written as literal blocks, as sops writes them
        return LiteralScalarString(node)
    if isinstance(node, str) and node in _OLD_BOOLS:
        # yaml.v3 quotes YAML 1.1 booleans so a 1.1 reader keeps them strings; ruamel (1.2) would not
        return DoubleQuotedScalarString(node)
    return node


class _GoEmitter(Emitter):
    """ruamel's emitter with yaml.v3's quoting: a string that cannot stay plain gets double quotes."""

    def choose_scalar_style(self) -> Any:
        style = super().choose_scalar_style()
        return '"' if style == "'" else style


def _yaml_text(tree: Tree) -> str:
    yaml = YAML()
    yaml.Emitter = _GoEmitter
    # sops' yaml store: 4-space maps, list dashes indented 4 inside a 6-column sequence
    yaml.indent(mapping=4, sequence=6, offset=4)
    yaml.width = 4096
    buf = io.StringIO()
    yaml.dump(_commented(tree), buf)
    return buf.getvalue()


def _go_numbers(node: Any) -> Any:
    # Go's JSON decoder reads every number as float64 and encodes an integral one without ".0"
    if isinstance(node, dict):
        return {k: _go_numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_go_numbers(v) for v in node]
    if isinstance(node, float) and node.is_integer() and abs(node) < 1e21:
        return int(node)
    return node


def _json_text(tree: Tree) -> str:
    """JSON as sops' json store writes it: tab indent (its default), Go's escaping of <, >, &."""
    text = json.dumps(_go_numbers(tree), indent="\t", ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, escaped)
    return text + "\n"


def parse_plaintext(content: bytes, path: str) -> Tree:
    """A plaintext file as the tree sops would encrypt (JSON numbers are floats, as in Go)."""
    kind = store_for(path)
    if kind == "binary":
        if _is_sops_binary(content):
            raise SopsError(f"{path}: already encrypted (a SOPS file of the binary format)")
        return binary_tree(content)
    try:
        text = content.decode()
    except UnicodeDecodeError as exc:
        raise SopsError(f"{path}: not UTF-8") from exc
    if kind == "dotenv":
        tree: dict[str, Any] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            if "=" not in line:
                raise SopsError(f"{path}:{number}: no '='")
            key, value = line.split("=", 1)
            tree[key] = value.replace("\\n", "\n")
        if "sops_mac" in tree or "sops_version" in tree:
            raise SopsError(f"{path}: already encrypted (it has `sops_` lines)")
        return tree
    if kind == "yaml":
        try:
            raw = _plain(_yaml_load(text))
        except Exception as exc:  # ruamel raises many types
            raise SopsError(f"{path}: not YAML ({type(exc).__name__})") from exc
    else:
        try:
            raw = json.loads(text, parse_int=float)
        except json.JSONDecodeError as exc:
            raise SopsError(f"{path}: not JSON (line {exc.lineno})") from exc
    if not isinstance(raw, dict):
        raise SopsError(f"{path}: the top level is not a mapping")
    if "sops" in raw:
        raise SopsError(f"{path}: already encrypted (it has a `sops` key)")
    return raw


def _is_sops_binary(content: bytes) -> bool:
    try:
        raw = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(raw, dict) and set(raw) == {"data", "sops"}


def render_plaintext(tree: Tree, kind: str) -> bytes:
    """A decrypted document as `sops -d` prints it (no `sops` metadata)."""
    if kind == "binary":
        return binary_plaintext(tree)
    if kind == "dotenv":
        return render_dotenv(tree, None).encode()
    if kind == "yaml":
        return _yaml_text(tree).encode()
    return _json_text(tree).encode()


def render_encrypted(document: Document, kind: str) -> bytes:
    """An encrypted document as sops writes it, `sops` metadata last."""
    if kind == "dotenv":
        return render_dotenv(document.tree, document.metadata).encode()
    whole = dict(document.tree)
    whole["sops"] = metadata_to_dict(document.metadata)
    if kind == "yaml":
        return _yaml_text(whole).encode()
    return _json_text(whole).encode()


def _short(recipient: str) -> str:
    return recipient if len(recipient) <= 12 else recipient[:12] + "…"


class NoKey(SopsError):
    """No key here opens the file (its contents are not known, not wrong)."""


# Where sops looks for age identities when neither --sops-age-key-file nor SOPS_AGE_KEY_FILE says.
DEFAULT_AGE_KEY_FILE = "~/.config/sops/age/keys.txt"
GPG_TIMEOUT = 30.0


@dataclass(frozen=True)
class Keys:
    """The keys this machine holds to open SOPS files: age identities (their lines, never printed) read from
    ``where``, and whether gpg's keyring (GNUPGHOME) is asked too."""

    age: tuple[str, ...] = ()
    where: str = ""  # the age key file they came from ("" when none was found)
    gpg: bool = True
    missing: str = ""  # why there are no age identities, for the message of a file they cannot open

    def __repr__(self) -> str:  # the identities are secret
        return f"Keys(where={self.where!r}, age={len(self.age)}, gpg={self.gpg})"


def load_keys(key_file: str | None = None, environ: dict[str, str] | None = None) -> Keys:
    """The age identities of ``key_file``, else ``SOPS_AGE_KEY_FILE``, else sops' default file, plus the
    identities of ``SOPS_AGE_KEY`` (as sops reads them). A file that is not there is no identity, said in
    ``Keys.missing``; one that cannot be read or holds no identity is a ``SopsError`` naming the file."""
    env = os.environ if environ is None else environ
    given = key_file or env.get("SOPS_AGE_KEY_FILE") or ""
    path = Path(given or DEFAULT_AGE_KEY_FILE).expanduser()
    lines = [line for line in env.get("SOPS_AGE_KEY", "").splitlines() if line.strip()]
    missing = ""
    try:
        text = path.read_text()
    except FileNotFoundError:
        missing = f"no age key file {path}"
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SopsError(f"age key file {path}: cannot read it ({why.lower()})") from None
    found = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if text and not found:
        raise SopsError(f"age key file {path}: holds no age identity")
    for line in found + lines:
        if not line.startswith("AGE-SECRET-KEY-"):
            raise SopsError(f"age key file {path}: a line is not an age identity (AGE-SECRET-KEY-…)")
    return Keys(age=tuple(found + lines), where=str(path) if found else "", missing=missing if not lines else "")


def data_key(metadata: Metadata, age_identities: list[str] | tuple[str, ...], gpg: bool) -> bytes:
    """The file's data key, from the first age identity or gpg key that opens one of its key slots."""
    identities = []
    for line in age_identities:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except Exception as exc:  # pyrage raises its own IdentityError; the line is secret
            raise SopsError("an age identity is malformed") from exc
    if metadata.age and identities:
        for slot in metadata.age:
            try:
                return bytes(pyrage.decrypt(slot.enc.encode(), identities))
            except Exception:  # not for these identities: try the next slot
                continue
    if gpg:
        for pgp in metadata.pgp:
            try:
                done = subprocess.run(
                    ["gpg", "--batch", "--quiet", "--decrypt"],
                    input=pgp.enc.encode(),
                    capture_output=True,
                    check=False,
                    timeout=GPG_TIMEOUT,
                )
            except (OSError, subprocess.TimeoutExpired):  # no gpg here, or it hangs on an agent: not this key
                break
            if done.returncode == 0 and done.stdout:
                return done.stdout
    names = [_short(r) for r in metadata.recipients()] or ["no recipients"]
    if metadata.age and not metadata.pgp:
        raise SopsError(f"no age identity matches {', '.join(names)} (tried {len(identities)})")
    raise SopsError(f"no key matches {', '.join(names)} (age identities tried: {len(identities)})")


def decrypt_file(content: bytes, path: str, keys: Keys) -> tuple[Document, Tree]:
    """A SOPS file's encrypted document and its plaintext tree (``decrypt_document``)."""
    document = parse(content, path)
    return document, decrypt_document(document, keys)


def decrypt_document(document: Document, keys: Keys) -> Tree:
    """The plaintext tree of a parsed SOPS file (its MAC checked first); ``NoKey`` names the recipients when
    no key here opens it."""
    try:
        key = data_key(document.metadata, keys.age, keys.gpg)
    except SopsError as exc:
        said = str(exc)
        if keys.missing:  # why none was tried: where they were looked for
            said = said.replace("(tried 0)", f"(tried 0: {keys.missing})").replace(
                "(age identities tried: 0)", f"(age identities tried: 0: {keys.missing})"
            )
        raise NoKey(said) from None
    return decrypt(document, key)


def encrypt_data_key(key: bytes, age_recipients: list[str]) -> list[tuple[str, str]]:
    """One armored age slot per recipient, as sops writes `sops.age[]`."""
    slots: list[tuple[str, str]] = []
    for recipient in age_recipients:
        try:
            parsed = pyrage.x25519.Recipient.from_str(recipient)
        except Exception as exc:
            raise SopsError(f"not an age recipient: {_short(recipient)}") from exc
        armored = _armor(pyrage.encrypt(key, [parsed]))
        slots.append((recipient, armored))
    return slots


def _armor(binary: bytes) -> str:
    # age's ASCII armor (the age spec): PEM-like, 64 columns, what sops stores in `enc`
    import base64

    body = base64.b64encode(binary).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN AGE ENCRYPTED FILE-----\n" + "\n".join(lines) + "\n-----END AGE ENCRYPTED FILE-----\n"
