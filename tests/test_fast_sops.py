"""The SOPS format layer without I/O: the value codec, the rules, the MAC, value_at."""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import UTC, datetime

import pytest

from reconciler.core import sops
from reconciler.core.sops import Metadata, SopsError

KEY = bytes(range(32))
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _meta(**rules: object) -> Metadata:
    return Metadata(lastmodified="", mac="", **rules)  # type: ignore[arg-type]


def test_value_codec_round_trips_each_type_with_its_path() -> None:
    for value, kind in [("s3cret", "str"), (42, "int"), (1.5, "float"), (True, "bool"), (b"\x00\xff", "bytes")]:
        text = sops.encrypt_value(value, KEY, "db:password:")
        assert re.fullmatch(r"ENC\[AES256_GCM,data:[^,]*,iv:[^,]+,tag:[^,]+,type:" + kind + r"\]", text)
        assert sops.decrypt_value(text, KEY, "db:password:") == value
        # the path is the additional data: the same value moved elsewhere does not decrypt
        with pytest.raises(SopsError, match="tampered"):
            sops.decrypt_value(text, KEY, "db:user:")


def test_codec_uses_a_32_byte_iv_and_leaves_empty_strings_alone() -> None:
    text = sops.encrypt_value("x", KEY, "a:")
    iv = re.search(r"iv:([^,]+)", text)
    assert iv is not None
    import base64

    assert len(base64.b64decode(iv.group(1))) == 32
    assert sops.encrypt_value("", KEY, "a:") == ""


def test_default_rule_is_the_unencrypted_suffix() -> None:
    doc = sops.encrypt({"user_unencrypted": "admin", "password": "hunter2"}, KEY, _meta(), NOW)
    assert doc.tree["user_unencrypted"] == "admin"
    assert doc.tree["password"].startswith("ENC[AES256_GCM,")
    assert "hunter2" not in repr(doc)
    assert sops.metadata_to_dict(doc.metadata)["unencrypted_suffix"] == "_unencrypted"


@pytest.mark.parametrize(
    ("rules", "encrypted"),
    [
        ({"encrypted_suffix": "_secret"}, {"db": {"pass_secret": True, "host": False}}),
        ({"encrypted_regex": "^pass"}, {"db": {"pass_secret": True, "host": False}}),
        ({"unencrypted_regex": "^host$"}, {"db": {"pass_secret": True, "host": False}}),
    ],
)
def test_rules_decide_by_any_key_on_the_path(rules: dict[str, str], encrypted: dict[str, dict[str, bool]]) -> None:
    meta = _meta(**rules)
    doc = sops.encrypt({"db": {"pass_secret": "p", "host": "h"}}, KEY, meta, NOW)
    for key, want in encrypted["db"].items():
        assert sops.is_encrypted(doc.tree["db"][key]) is want
    assert sops.decrypt(doc, KEY) == {"db": {"pass_secret": "p", "host": "h"}}


def test_encrypt_decrypt_keeps_types_lists_and_order() -> None:
    tree = {"b": [1, 2.25, "x", {"deep": False}], "a": {"n": None, "s": ""}}
    doc = sops.encrypt(tree, KEY, _meta(), NOW)
    assert doc.metadata.lastmodified == "2026-01-02T03:04:05Z"
    plain = sops.decrypt(doc, KEY)
    assert plain == tree
    assert list(plain) == ["b", "a"]


def test_tampered_value_is_refused() -> None:
    doc = sops.encrypt({"a": "one", "b": "two"}, KEY, _meta(), NOW)
    swapped = {"a": doc.tree["b"], "b": doc.tree["a"]}
    with pytest.raises(SopsError):
        sops.decrypt(sops.Document(swapped, doc.metadata, "yaml"), KEY)
    other = sops.encrypt({"a": "evil", "b": "two"}, os.urandom(32), _meta(), NOW)
    with pytest.raises(SopsError):
        sops.decrypt(sops.Document({"a": other.tree["a"], "b": doc.tree["b"]}, doc.metadata, "yaml"), KEY)


def test_value_re_encrypted_with_the_data_key_is_a_mac_mismatch() -> None:
    doc = sops.encrypt({"a": "one"}, KEY, _meta(), NOW)
    forged = {"a": sops.encrypt_value("two", KEY, "a:")}
    with pytest.raises(SopsError, match="MAC mismatch"):
        sops.decrypt(sops.Document(forged, doc.metadata, "yaml"), KEY)


def test_tampered_mac_is_refused() -> None:
    doc = sops.encrypt({"a": "one"}, KEY, _meta(), NOW)
    fake_mac = sops.encrypt_value("0" * 128, KEY, doc.metadata.lastmodified)
    meta = sops.Metadata(lastmodified=doc.metadata.lastmodified, mac=fake_mac)
    with pytest.raises(SopsError, match="MAC mismatch"):
        sops.decrypt(sops.Document(doc.tree, meta, "yaml"), KEY)
    # the MAC is bound to lastmodified: changing the date breaks it
    moved = sops.Metadata(lastmodified="2030-01-01T00:00:00Z", mac=doc.metadata.mac)
    with pytest.raises(SopsError, match="MAC mismatch"):
        sops.decrypt(sops.Document(doc.tree, moved, "yaml"), KEY)


def test_hand_edited_unencrypted_value_and_mac_only_encrypted() -> None:
    tree = {"host_unencrypted": "db1", "password": "p"}
    doc = sops.encrypt(tree, KEY, _meta(), NOW)
    edited = dict(doc.tree, host_unencrypted="db2")
    with pytest.raises(SopsError, match="MAC mismatch"):
        sops.decrypt(sops.Document(edited, doc.metadata, "yaml"), KEY)
    loose = sops.encrypt(tree, KEY, _meta(mac_only_encrypted=True), NOW)
    edited = dict(loose.tree, host_unencrypted="db2")
    assert sops.decrypt(sops.Document(edited, loose.metadata, "yaml"), KEY) == {
        "host_unencrypted": "db2",
        "password": "p",
    }


def test_wrong_data_key_message_holds_no_secret() -> None:
    doc = sops.encrypt({"password": "hunter2"}, KEY, _meta(), NOW)
    with pytest.raises(SopsError) as caught:
        sops.decrypt(doc, os.urandom(32))
    assert "hunter2" not in str(caught.value)
    assert KEY.hex() not in str(caught.value)


def test_value_at() -> None:
    tree = {"db": {"password": "p", "hosts": ["a", "b"]}, "token": "t"}
    assert sops.value_at(tree, "db.password") == "p"
    assert sops.value_at(tree, "token") == "t"
    assert sops.value_at(tree, "db.hosts.1") == "b"
    with pytest.raises(SopsError, match=r"no key 'db\.user'"):
        sops.value_at(tree, "db.user")


def test_dotenv_round_trip_with_flattened_metadata() -> None:
    meta = _meta(
        age=(sops.AgeKey("age1abc", "-----BEGIN AGE ENCRYPTED FILE-----\nxx\n-----END AGE ENCRYPTED FILE-----\n"),)
    )
    doc = sops.encrypt({"TOKEN": "abc", "MULTI": "l1\nl2"}, KEY, meta, NOW)
    text = sops.render_dotenv(doc.tree, doc.metadata)
    assert "sops_age__list_0__map_recipient=age1abc\n" in text
    assert "sops_lastmodified=2026-01-02T03:04:05Z\n" in text
    parsed = sops.parse_dotenv(text)
    assert parsed.metadata.age == meta.age
    assert sops.decrypt(parsed, KEY) == {"TOKEN": "abc", "MULTI": "l1\nl2"}
    assert sops.render_dotenv({"TOKEN": "abc"}, None) == "TOKEN=abc\n"


def test_not_sops_is_one_error() -> None:
    with pytest.raises(SopsError, match="no `sops` metadata"):
        sops.metadata_from_dict(None)
    with pytest.raises(SopsError, match="no `mac`"):
        sops.metadata_from_dict({"lastmodified": "x"})


def test_flipping_mac_only_encrypted_in_the_metadata_breaks_the_mac() -> None:
    doc = sops.encrypt({"password": "p"}, KEY, _meta(mac_only_encrypted=True), NOW)
    flipped = dataclasses.replace(doc.metadata, mac_only_encrypted=False)
    with pytest.raises(SopsError, match="MAC mismatch"):
        sops.decrypt(sops.Document(doc.tree, flipped, "yaml"), KEY)


def test_a_plaintext_value_where_a_secret_belongs_is_refused() -> None:
    doc = sops.encrypt({"password": "p"}, KEY, _meta(), NOW)
    for edited in ("plain-hunter2", 987654):
        with pytest.raises(SopsError, match="should be encrypted and is not") as caught:
            sops.decrypt(sops.Document({"password": edited}, doc.metadata, "yaml"), KEY)
        assert str(edited) not in str(caught.value)
