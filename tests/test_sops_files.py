"""SOPS files as bytes: sops' own files decrypt with their keys; files we encrypt decrypt again.

Key material comes from the real tools: `age-keygen`/`age` (Debian `age`) and gpg in a temporary
GNUPGHOME. The upstream vectors are in tests/sops_fixtures (see its README)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.adapters import sops_file
from reconciler.core import sops
from reconciler.core.sops import Metadata, SopsError

FIXTURES = Path(__file__).parent / "sops_fixtures"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

# Skipped by hand without the age CLI; in CI (scripts/setup-host installs it) a missing one fails, never skips.
needs_age = pytest.mark.skipif(
    shutil.which("age-keygen") is None and os.environ.get("CI") != "true", reason="age is not installed"
)


@pytest.fixture
def gnupghome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    return home


def _keygen(tmp_path: Path, name: str) -> tuple[str, str]:
    out = tmp_path / f"{name}.txt"
    subprocess.run(["age-keygen", "-o", str(out)], check=True, capture_output=True)
    identity = next(line for line in out.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    recipient = subprocess.run(["age-keygen", "-y", str(out)], check=True, capture_output=True, text=True)
    return identity, recipient.stdout.strip()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("format.enc.yaml", b"foo: bar\n"),
        ("format.enc.json", b'{\n\t"foo": "bar"\n}\n'),
        ("format.enc.env", b"foo = bar\n"),
    ],
)
def test_upstream_sops_files_decrypt_with_their_pgp_key(gnupghome: Path, name: str, expected: bytes) -> None:
    subprocess.run(
        ["gpg", "--batch", "--import", str(FIXTURES / "sops_functional_tests_key.asc")],
        check=True,
        capture_output=True,
    )
    document = sops_file.parse((FIXTURES / name).read_bytes(), name)
    key = sops_file.data_key(document.metadata, [], gpg=True)
    plain = sops.decrypt(document, key)
    assert sops_file.render_plaintext(plain, document.kind) == expected


def test_upstream_file_edited_is_a_mac_mismatch(gnupghome: Path) -> None:
    subprocess.run(
        ["gpg", "--batch", "--import", str(FIXTURES / "sops_functional_tests_key.asc")],
        check=True,
        capture_output=True,
    )
    raw = json.loads((FIXTURES / "format.enc.json").read_text())
    raw["added_unencrypted"] = "x"
    document = sops_file.parse(json.dumps(raw).encode(), "f.json")
    with pytest.raises(SopsError, match="MAC mismatch"):
        sops.decrypt(document, sops_file.data_key(document.metadata, [], gpg=True))


def test_upstream_file_without_the_pgp_key_names_its_recipient(gnupghome: Path) -> None:
    document = sops_file.parse((FIXTURES / "format.enc.yaml").read_bytes(), "format.enc.yaml")
    with pytest.raises(SopsError, match="no key matches FBC7B9E2A4F9…"):
        sops_file.data_key(document.metadata, [], gpg=True)


def _encrypted_file(tree: object, recipients: list[str], kind: str) -> bytes:
    data_key = os.urandom(32)
    slots = sops_file.encrypt_data_key(data_key, recipients)
    meta = Metadata(lastmodified="", mac="", age=tuple(sops.AgeKey(r, e) for r, e in slots))
    document = sops.encrypt(tree, data_key, meta, NOW)
    return sops_file.render_encrypted(document, kind)


@needs_age
@pytest.mark.parametrize(
    ("path", "tree", "expected"),
    [
        ("s.yaml", {"db": {"password": "hunter2", "port": 5432}}, b"db:\n    password: hunter2\n    port: 5432\n"),
        (
            "s.json",
            {"token": "hunter2", "ratio": 0.5, "on": True},
            b'{\n\t"token": "hunter2",\n\t"ratio": 0.5,\n\t"on": true\n}\n',
        ),
        ("s.env", {"TOKEN": "hunter2", "OTHER": "x"}, b"TOKEN=hunter2\nOTHER=x\n"),
    ],
)
def test_our_files_decrypt_again_with_an_age_keygen_key(
    tmp_path: Path, path: str, tree: object, expected: bytes
) -> None:
    identity, recipient = _keygen(tmp_path, "k")
    content = _encrypted_file(tree, [recipient], sops_file.store_for(path))
    assert b"hunter2" not in content
    document = sops_file.parse(content, path)
    plain = sops.decrypt(document, sops_file.data_key(document.metadata, [identity], gpg=False))
    assert sops_file.render_plaintext(plain, document.kind) == expected


@needs_age
def test_binary_file_round_trip(tmp_path: Path) -> None:
    identity, recipient = _keygen(tmp_path, "k")
    data_key = os.urandom(32)
    slots = sops_file.encrypt_data_key(data_key, [recipient])
    meta = Metadata(lastmodified="", mac="", age=tuple(sops.AgeKey(r, e) for r, e in slots))
    document = sops.encrypt({"data": "-----BEGIN KEY-----\nabc\n"}, data_key, meta, NOW)
    content = sops_file.render_encrypted(document, "binary")
    parsed = sops_file.parse(content, "tls.key")
    assert parsed.kind == "binary"
    plain = sops.decrypt(parsed, sops_file.data_key(parsed.metadata, [identity], gpg=False))
    assert sops_file.render_plaintext(plain, "binary") == b"-----BEGIN KEY-----\nabc\n"


@needs_age
def test_data_key_slot_opens_with_the_real_age_cli(tmp_path: Path) -> None:
    identity, recipient = _keygen(tmp_path, "k")
    (tmp_path / "id.txt").write_text(identity + "\n")
    data_key = os.urandom(32)
    [(_, armored)] = sops_file.encrypt_data_key(data_key, [recipient])
    opened = subprocess.run(
        ["age", "--decrypt", "-i", str(tmp_path / "id.txt")], input=armored.encode(), capture_output=True, check=True
    )
    assert opened.stdout == data_key


@needs_age
def test_several_recipients_each_open_and_a_stranger_gets_one_line(tmp_path: Path) -> None:
    keys = [_keygen(tmp_path, f"k{i}") for i in range(3)]
    content = _encrypted_file({"a": "v"}, [keys[0][1], keys[1][1]], "yaml")
    document = sops_file.parse(content, "s.yaml")
    for identity, _ in keys[:2]:
        assert sops.decrypt(document, sops_file.data_key(document.metadata, [identity], gpg=False)) == {"a": "v"}
    # an identities file with a stranger first: every identity is tried
    assert sops_file.data_key(document.metadata, [keys[2][0], keys[1][0]], gpg=False)
    stranger, _ = _keygen(tmp_path, "s")
    with pytest.raises(SopsError) as caught:
        sops_file.data_key(document.metadata, [keys[2][0], stranger], gpg=False)
    message = str(caught.value)
    assert message == (f"no age identity matches {keys[0][1][:12]}…, {keys[1][1][:12]}… (tried 2)")
    assert "AGE-SECRET-KEY" not in message


def test_pgp_key_made_with_gpg_batch(gnupghome: Path) -> None:
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "ops@example.test", "rsa2048", "encrypt", "never"],
        check=True,
        capture_output=True,
    )
    data_key = os.urandom(32)
    armored = subprocess.run(
        ["gpg", "--batch", "--armor", "--trust-model", "always", "--encrypt", "-r", "ops@example.test"],
        input=data_key,
        capture_output=True,
        check=True,
    ).stdout.decode()
    meta = Metadata(lastmodified="", mac="", pgp=(sops.PgpKey("ABCDEF0123456789", armored, "2026-03-01T12:00:00Z"),))
    content = sops_file.render_encrypted(sops.encrypt({"k": "v"}, data_key, meta, NOW), "json")
    document = sops_file.parse(content, "s.json")
    assert sops.decrypt(document, sops_file.data_key(document.metadata, [], gpg=True)) == {"k": "v"}


def test_not_a_sops_file() -> None:
    with pytest.raises(SopsError, match="no `sops` metadata"):
        sops_file.parse(b"a: 1\n", "plain.yaml")
    with pytest.raises(SopsError, match="not JSON"):
        sops_file.parse(b"\x00garbage", "x.bin")


def test_an_age_slot_written_by_sops_opens_with_its_identity() -> None:
    identity = (FIXTURES / "age_mock_identity.txt").read_text().strip()
    slot = sops.AgeKey(
        "age1lzd99uklcjnc0e7d860axevet2cz99ce9pq6tzuzd05l5nr28ams36nvun",
        (FIXTURES / "age_mock_encrypted_key.txt").read_text(),
    )
    meta = Metadata(lastmodified="x", mac="x", age=(slot,))
    assert sops_file.data_key(meta, ["# a comment line", identity], gpg=False) == b"data"
    with pytest.raises(SopsError, match=r"^no age identity matches age1lzd99ukl… \(tried 0\)$"):
        sops_file.data_key(meta, [], gpg=False)


@needs_age
@pytest.mark.parametrize(
    ("path", "plaintext"),
    [
        ("app.yaml", b"db:\n    password: hunter2\n    port: 5432\n    hosts:\n        - a\n        - b\n"),
        ("app.json", b'{\n\t"token": "hunter2 \\u003c\\u0026\\u003e",\n\t"port": 5432,\n\t"ratio": 0.25\n}\n'),
        ("app.env", b"TOKEN=hunter2\nMULTI=a\\nb\n"),
        ("tls.key", b"\x00\xffhunter2 not utf-8\n"),
    ],
)
def test_plaintext_file_encrypted_and_decrypted_prints_the_same_bytes(
    tmp_path: Path, path: str, plaintext: bytes
) -> None:
    identity, recipient = _keygen(tmp_path, "k")
    content = _encrypted_file(sops_file.parse_plaintext(plaintext, path), [recipient], sops_file.store_for(path))
    assert b"hunter2" not in content
    document = sops_file.parse(content, path)
    plain = sops.decrypt(document, sops_file.data_key(document.metadata, [identity], gpg=False))
    assert sops_file.render_plaintext(plain, document.kind) == plaintext


def test_json_numbers_are_floats_as_in_go() -> None:
    tree = sops_file.parse_plaintext(b'{"port": 5432}', "a.json")
    assert tree == {"port": 5432.0}
    assert isinstance(tree["port"], float)
    assert sops.encrypt_value(tree["port"], bytes(32), "port:").endswith(",type:float]")


@needs_age
def test_yaml_quotes_as_go_yaml_does(tmp_path: Path) -> None:
    identity, recipient = _keygen(tmp_path, "k")
    plaintext = b"rotated: 2026-01-02\nquoted: 'yes'\ntoken: hunter2\n"
    content = _encrypted_file(sops_file.parse_plaintext(plaintext, "a.yaml"), [recipient], "yaml")
    assert b'lastmodified: "2026-03-01T12:00:00Z"' in content
    document = sops_file.parse(content, "a.yaml")
    plain = sops.decrypt(document, sops_file.data_key(document.metadata, [identity], gpg=False))
    # yaml.v3 reads a timestamp into a string, and writes back any string that is not plain in double quotes
    assert plain == {"rotated": "2026-01-02", "quoted": "yes", "token": "hunter2"}
    assert sops_file.render_plaintext(plain, "yaml") == b'rotated: "2026-01-02"\nquoted: "yes"\ntoken: hunter2\n'


def test_reading_a_sops_yaml_file_leaves_every_other_yaml_loader_as_it_was() -> None:
    from ruamel.yaml import YAML

    document = sops_file.parse((FIXTURES / "format.enc.yaml").read_bytes(), "format.enc.yaml")
    assert document.kind == "yaml"
    # sops' timestamps stay text in its files; a date in a desired-state.yaml is still a date elsewhere.
    assert YAML(typ="safe", pure=True).load("a: 2024-01-01\n")["a"].isoformat() == "2024-01-01"


@pytest.mark.parametrize(
    "scalar",
    ["1", "-1", "+1", "010", "0o17", "0x1F", "-0x1f", "1_000", "0b101", "1.5", "1e5", "-.inf", "1.0", "+.5", "3.",
     "true", "True", "FALSE", "yes", "no", "on", "off", "null", "~", "", "12:30", "abc", "0755", "Null", "e5", "0x"],
)  # fmt: skip
def test_yaml_scalars_read_as_yaml_1_2_reads_them(scalar: str) -> None:
    from ruamel.yaml import YAML

    ours = sops_file.parse_plaintext(f"k: {scalar}\n".encode(), "s.yaml")["k"]
    reference = YAML(typ="safe", pure=True).load(f"k: {scalar}\n")["k"]  # ruamel's YAML 1.2
    assert (type(ours), ours) == (type(reference), reference)


def test_a_yaml_date_stays_the_text_that_was_encrypted() -> None:
    assert sops_file.parse_plaintext(b"day: 2024-01-01\nat: 2024-01-01T10:00:00Z\n", "s.yaml") == {
        "day": "2024-01-01",
        "at": "2024-01-01T10:00:00Z",
    }
