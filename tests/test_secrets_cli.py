"""``reconcile secrets encrypt`` and ``reconcile secrets show`` through the command line (issue 21), with keys
made by the real ``age-keygen`` and the data key slots opened by the real ``age`` CLI: what ``encrypt`` writes
is a SOPS file for the ``.sops.yaml`` rule of the file (its recipients, its choice of encrypted keys) that
decrypts to the plaintext again, and every refusal is one line without a value.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.adapters import sops_file
from tests.support.cli import cli_env
from tests.support.sops import age_key, needs_age
from tests.support.state import cli, output, show

pytestmark = needs_age

YAML_PLAIN = b"db:\n    password: pw-plain-4471\n    host: db.local\ntoken: tok-plain-9902\n"


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, Path, Path, str, str]:
    """A folder with a .sops.yaml of two rules: yaml files under secrets/ for two recipients with only
    password and token encrypted; anything else under secrets/ for the first recipient only."""
    root = tmp_path / "repo"
    (root / "secrets").mkdir(parents=True)
    first, one = age_key(tmp_path, "first")
    second, two = age_key(tmp_path, "second")
    (root / ".sops.yaml").write_text(
        "creation_rules:\n"
        "  - path_regex: ^secrets/.*\\.yaml$\n"
        "    encrypted_regex: ^(password|token)$\n"
        f"    age: {one},{two}\n"
        "  - path_regex: ^secrets/\n"
        f"    age: [{one}]\n"
    )
    return root, first, second, one, two


def run(root: Path, *args: str | Path, key: Path | None = None) -> subprocess.CompletedProcess[str]:
    return cli("secrets", *args, cwd=root, env={"SOPS_AGE_KEY_FILE": str(key) if key else str(root / "none.txt")})


def raw(root: Path, *args: str | Path, key: Path) -> bytes:
    """``reconcile secrets ARGS``'s stdout as bytes (a binary file's plaintext is not text)."""
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "secrets", *map(str, args)],
        cwd=root, capture_output=True, env=cli_env({"SOPS_AGE_KEY_FILE": str(key)}), timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_yaml_file_is_encrypted_for_its_rule_and_decrypts_with_either_key(
    repo: tuple[Path, Path, Path, str, str], tmp_path: Path
) -> None:
    root, first, second, one, two = repo
    (root / "secrets/app.yaml").write_bytes(YAML_PLAIN)

    done = run(root, "encrypt", "-i", "secrets/app.yaml")
    assert done.returncode == 0, show(done)
    text = (root / "secrets/app.yaml").read_text()
    assert "pw-plain-4471" not in text and "tok-plain-9902" not in text
    assert "host: db.local" in text  # not matched by encrypted_regex: left as it is, and still under the MAC
    document = sops_file.parse(text.encode(), "secrets/app.yaml")
    assert [slot.recipient for slot in document.metadata.age] == [one, two]
    assert document.metadata.encrypted_regex == "^(password|token)$"
    # The slot is real age: the age CLI opens it with the first identity, to the 32-byte data key.
    (tmp_path / "slot.age").write_text(document.metadata.age[0].enc)
    opened = subprocess.run(["age", "--decrypt", "-i", str(first), str(tmp_path / "slot.age")], capture_output=True)
    assert opened.returncode == 0 and len(opened.stdout) == 32, opened.stderr

    for key in (first, second):
        assert raw(root, "show", "secrets/app.yaml", key=key) == YAML_PLAIN
    assert raw(root, "show", "secrets/app.yaml", "--key", "db.password", key=second) == b"pw-plain-4471"

    (root / "secrets/app.yaml").write_text(text.replace("host: db.local", "host: db.evil"))
    edited = run(root, "show", "secrets/app.yaml", key=first)
    assert edited.returncode == 1 and "secrets/app.yaml: MAC mismatch" in edited.stderr, show(edited)


@pytest.mark.parametrize(
    ("name", "plain"),
    [
        ("secrets/web.env", b"API_TOKEN=env-plain-1187\nMODE=prod\n"),
        ("secrets/web.json", b'{\n\t"token": "json-plain-6650",\n\t"port": 8000\n}\n'),
        ("secrets/tls.key", b"\x00\x01\xfe\xff-----BEGIN KEY-----\nbin-plain-3301\n"),
    ],
)
def test_dotenv_json_and_binary_files_round_trip_byte_for_byte(
    repo: tuple[Path, Path, Path, str, str], name: str, plain: bytes
) -> None:
    root, first, second, one, _ = repo
    (root / name).write_bytes(plain)
    (root / name).chmod(0o640)

    assert run(root, "encrypt", "--in-place", name).returncode == 0
    assert stat.S_IMODE((root / name).stat().st_mode) == 0o640  # -i keeps the mode
    assert plain not in (root / name).read_bytes()
    assert raw(root, "show", name, key=first) == plain
    stranger = run(root, "show", name, key=second)  # the second rule: the first recipient only
    assert stranger.returncode == 1, show(stranger)
    assert stranger.stderr.strip() == f"error: {name}: no age identity matches {one[:12]}… (tried 1)"
    again = run(root, "encrypt", name)
    assert again.returncode == 1 and f"{name}: already encrypted" in again.stderr, show(again)


def test_output_goes_to_stdout_or_a_private_file_and_refusals_are_one_line(
    repo: tuple[Path, Path, Path, str, str], tmp_path: Path
) -> None:
    root, first, _, _, _ = repo
    (root / "secrets/app.yaml").write_bytes(YAML_PLAIN)

    printed = run(root, "encrypt", "secrets/app.yaml")
    assert printed.returncode == 0 and "sops:" in printed.stdout and "pw-plain-4471" not in printed.stdout
    assert (root / "secrets/app.yaml").read_bytes() == YAML_PLAIN  # stdout only: the file is as it was
    written = run(root, "encrypt", "secrets/app.yaml", "-o", "secrets/app.enc.yaml")
    assert written.returncode == 0, show(written)
    assert stat.S_IMODE((root / "secrets/app.enc.yaml").stat().st_mode) == 0o600
    assert raw(root, "show", "secrets/app.enc.yaml", key=first) == YAML_PLAIN

    (root / "other.yaml").write_bytes(b"a: 1\n")
    unmatched = run(root, "encrypt", "other.yaml")
    assert unmatched.returncode == 1, show(unmatched)
    assert unmatched.stderr.strip().endswith(".sops.yaml: no creation rule matches other.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.yaml").write_bytes(b"a: 1\n")
    lost = run(elsewhere, "encrypt", "x.yaml")
    assert lost.returncode == 1 and lost.stderr.strip() == (
        "error: x.yaml: no .sops.yaml here or in a parent folder (or give --config)"
    ), show(lost)
    (root / ".sops.yaml").write_text("creation_rules:\n  - pgp: 85D77543B3D624B63CEA9E6DBC17301B491B3F21\n")
    pgp = run(root, "encrypt", "secrets/app.yaml")
    assert pgp.returncode == 1 and "names pgp; reconcile secrets encrypt writes age recipients only" in output(pgp)
    for said in (unmatched, lost, pgp):
        assert len(said.stderr.strip().splitlines()) == 1 and "Traceback" not in output(said)


def test_a_file_it_writes_has_what_sops_writes(repo: tuple[Path, Path, Path, str, str]) -> None:
    """The keys of the metadata, as in the files of sops' own tests (tests/sops_fixtures)."""
    root, _, _, _, _ = repo
    (root / "secrets/web.json").write_bytes(b'{"token": "x"}')
    assert run(root, "encrypt", "-i", "secrets/web.json").returncode == 0
    ours = json.loads((root / "secrets/web.json").read_text())["sops"]
    theirs = json.loads((Path(__file__).parent / "sops_fixtures" / "format.enc.json").read_text())["sops"]
    common = {"lastmodified", "mac", "version"}
    assert common <= set(ours) and common <= set(theirs)
    assert set(ours["age"][0]) == {"recipient", "enc"}
    assert ours["mac"].startswith("ENC[AES256_GCM,data:") and ours["mac"].endswith(",type:str]")


def test_the_agent_does_not_start_on_a_key_file_it_cannot_use(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("not a key\n")
    for given, said in (
        (tmp_path / "none.txt", f"error: --sops-age-key-file: no age key file {tmp_path / 'none.txt'}"),
        (tmp_path / "bad.txt", "a line is not an age identity (AGE-SECRET-KEY-…)"),
    ):
        done = cli("agent", "--repo", tmp_path, "--state-dir", tmp_path / "state", "--sops-age-key-file", given)
        assert done.returncode == 1 and said in done.stderr, show(done)
        assert "not a key" not in output(done)
