"""SOPS files of the repository as an app's env_file and secrets (issue 21), against the in-memory engine: real
git commits, keys made by the real ``age-keygen``, the real read of a commit (``converge.run.read_at``), planner,
``Applier`` and journal.

What a user sees: values land in the container's env and files (written under ``STATE/secrets`` with the
secret's mode, pruned with their release); a commit whose SOPS files no key here opens, that are tampered with,
missing, or reached through a symlink out of the repository is refused whole with one line naming the file; a
dry run without the key says ``not checked``; a re-encryption of the same plaintext is no redeploy, a changed one
redeploys only the apps that use that file; a file is decrypted once per process; nothing prints a value.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reconciler.adapters import sops_file
from reconciler.adapters.git import open_source
from reconciler.converge import sealed as sealed_module
from reconciler.converge.run import Settings, Trust, plan_against, read_at
from reconciler.converge.sealed import Mode
from reconciler.core.model import DesiredState
from reconciler.core.plan import ActionKind, Plan
from reconciler.core.report import Result, plan_lines
from reconciler.core.sops import Document
from reconciler.errors import CommitRefused
from reconciler.telemetry import scrub
from tests.support.fake_host import FakeHost
from tests.support.gitrepo import GitRemote
from tests.support.sops import age_key, encrypt, needs_age

pytestmark = needs_age

FILE = "desired-state.yaml"
GATE = "health: {exec: [check], interval: 1s, timeout: 10s, healthy_for: 2s}"
ENV = b"API_TOKEN=token-plain-7781\nMODE=fast\n"
DB = b"db:\n    password: hunter2-plain-4410\n    port: 5432\n"
BLOB = b"\x00\x01\xfe\xff binary\nblob-plain-9034\n"  # not UTF-8: a binary-format SOPS file
PLAINTEXTS = ("token-plain-7781", "hunter2-plain-4410", "blob-plain-9034")

STACK = f"""
apps:
  web:
    image: example/web
    version: v1
    env_file: {{sops: secrets/web.env}}
    secrets:
      - {{source: {{sops: secrets/db.yaml, key: db.password}}, target: db_password}}
      - {{source: {{sops: secrets/blob.bin}}, target: blob, mode: "0440", uid: 1000, gid: 1000}}
    {GATE}
  api:
    image: example/api
    version: v1
    secrets:
      - {{source: {{sops: secrets/db.yaml}}, target: db.yaml}}
    {GATE}
"""


class World:
    """A repository of SOPS files and a desired-state.yaml, the keys to open them, and an in-memory host."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.remote = GitRemote(tmp / "repo")
        self.key, self.recipient = age_key(tmp, "server")
        self.host = FakeHost(tmp / "state")
        for app in ("web", "api"):
            self.host.engine.publish(f"example/{app}:v1")

    def write(self, path: str, plain: bytes, recipients: list[str] | None = None) -> None:
        target = self.remote.clone_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encrypt(plain, path, recipients or [self.recipient]))

    def commit(self, text: str = STACK, message: str = "commit") -> str:
        self.remote.write(FILE, text)
        return self.remote.commit(message)

    def read(self, *, mode: Mode = Mode.OPEN, key: Path | None = None) -> DesiredState:
        source = open_source(str(self.remote.clone_path), state_dir=self.host.state_dir)
        try:
            revision = source.resolve("HEAD")
            trust = Trust(sops=mode, sops_key_file=str(key or self.key), state_dir=self.host.state_dir)
            return read_at(source, "HEAD", revision, FILE, trust).desired
        finally:
            source.close()

    def plan(self, desired: DesiredState) -> Plan:
        return plan_against(self.host.engine, desired, Settings(state_dir=self.host.state_dir))[0]

    def apply(self, desired: DesiredState) -> dict[str, Result]:
        the_plan, observed = self.plan(desired), self.host.engine.observe()
        applier = self.host.applier(
            sealed={desired.revision: desired.sealed}, secrets_dir=self.host.state_dir / "secrets"
        )
        outcomes = applier.apply(the_plan, observed)
        self.host.engine.prune_secret_files(self.host.state_dir / "secrets")
        return {o.app: o.result for o in outcomes if o.kind in (ActionKind.CREATE, ActionKind.REPLACE)}

    def standard(self) -> None:
        self.write("secrets/web.env", ENV)
        self.write("secrets/db.yaml", DB)
        self.write("secrets/blob.bin", BLOB)
        self.commit()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def refusal(world: World, **read: object) -> str:
    with pytest.raises(CommitRefused) as caught:
        world.read(**read)  # type: ignore[arg-type]
    assert caught.value.reason == "sops"
    return str(caught.value)


def test_values_reach_the_env_and_the_files_of_the_container_and_nowhere_else(world: World) -> None:
    world.standard()
    desired = world.read()

    assert world.apply(desired) == {"web": Result.APPLIED, "api": Result.APPLIED}
    web, api = world.host.running("web"), world.host.running("api")
    assert web.env["API_TOKEN"] == "token-plain-7781" and web.env["MODE"] == "fast"
    assert web.secrets["db_password"] == (b"hunter2-plain-4410", "0400", 0, 0)
    assert web.secrets["blob"] == (BLOB, "0440", 1000, 1000)
    assert api.secrets["db.yaml"][0] == DB  # a whole yaml file: as `sops -d` prints it
    # Written for the engine to mount: a folder of the container's own, 0700, each file with its mode and owner.
    folder = world.host.state_dir / "secrets" / web.labels["io.reconciler.secret-files"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    found = (folder / "blob").stat()
    if os.geteuid() == 0:
        assert (stat.S_IMODE(found.st_mode), found.st_uid, found.st_gid) == (0o440, 1000, 1000)
    assert (folder / "blob").read_bytes() == BLOB
    # Labels, the journal, the plan's lines and whatever the scrubber sees hold no plaintext.
    said = "\n".join(
        [
            str(web.labels),
            str(api.labels),
            "\n".join(plan_lines(world.plan(desired), file=FILE)),
            repr(desired),
            repr(desired.sealed),
            (world.host.state_dir / "journal.db").read_bytes().decode(errors="replace"),
        ]
    )
    for plain in PLAINTEXTS:
        assert plain not in said
        assert plain not in scrub.scrub(f"an engine said {plain} back")


def test_the_files_of_a_release_are_removed_with_it(world: World) -> None:
    world.standard()
    world.apply(world.read())
    folders = sorted(p.name for p in (world.host.state_dir / "secrets").iterdir())
    assert len(folders) == 2  # web's and api's

    world.commit("apps: {}\n", "no apps")
    empty = world.read()
    observed = world.host.engine.observe()
    world.host.applier(secrets_dir=world.host.state_dir / "secrets").apply(world.plan(empty), observed)
    world.host.engine.prune_secret_files(world.host.state_dir / "secrets")

    assert not world.host.engine.names()
    assert list((world.host.state_dir / "secrets").iterdir()) == []


def test_a_new_encryption_of_the_same_plaintext_is_no_redeploy_and_a_change_redeploys_only_its_apps(
    world: World,
) -> None:
    world.standard()
    world.apply(world.read())
    second, recipient2 = age_key(world.tmp, "second")
    # Rotation: every file encrypted anew (a new data key) for two recipients; the server now holds key 2 only.
    world.write("secrets/web.env", ENV, [world.recipient, recipient2])
    world.write("secrets/db.yaml", DB, [world.recipient, recipient2])
    world.write("secrets/blob.bin", BLOB, [world.recipient, recipient2])
    world.commit(message="rotate")

    assert world.plan(world.read(key=second)).in_sync

    world.write("secrets/web.env", ENV.replace(b"fast", b"slow"), [recipient2])
    world.commit(message="web's env changes")
    changed = world.read(key=second)
    lines = plan_lines(world.plan(changed), file=FILE)

    assert [a.app for a in world.plan(changed).changes] == ["web"], lines
    assert "      env_file: sops:secrets/web.env -> sops:secrets/web.env (contents changed)" in lines
    assert world.apply(changed) == {"web": Result.APPLIED}
    assert world.host.running("web").env["MODE"] == "slow"

    world.write("secrets/db.yaml", DB.replace(b"4410", b"4411"), [recipient2])
    world.commit(message="the db password changes")
    both = world.plan(world.read(key=second))
    assert sorted(a.app for a in both.changes) == ["api", "web"]
    assert "      secret db_password: as deployed -> contents changed" in plan_lines(both, file=FILE)


def test_a_key_not_in_the_recipients_refuses_the_commit_naming_file_and_recipient(world: World) -> None:
    world.standard()
    stranger, _ = age_key(world.tmp, "stranger")

    said = refusal(world, key=stranger)

    short = world.recipient[:12] + "…"
    assert f"secrets/web.env: no age identity matches {short} (tried 1); not applied" in said.splitlines()
    assert len(said.splitlines()) == 3  # one line per file
    missing = refusal(world, key=world.tmp / "nowhere.txt")
    assert f"(tried 0: no age key file {world.tmp / 'nowhere.txt'})" in missing


def test_a_dry_run_without_the_key_says_not_checked_and_a_tampered_file_is_refused_even_so(world: World) -> None:
    world.standard()
    world.apply(world.read())
    desired = world.read(mode=Mode.PREVIEW, key=world.tmp / "nowhere.txt")
    lines = plan_lines(world.plan(desired), file=FILE)

    assert "  note: web: env_file sops:secrets/web.env: not checked (no key here opens it)" in lines
    assert "  note: web: secrets blob, db_password: contents not checked (no key here opens them)" in lines
    assert world.plan(desired).in_sync

    path = world.remote.clone_path / "secrets/web.env"
    text = path.read_text()
    at = text.index("data:") + len("data:")
    path.write_text(text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :])
    world.commit(message="tampered")
    assert "secrets/web.env: cannot decrypt the value" in refusal(world)
    assert "secrets/web.env: cannot decrypt the value" in refusal(world, mode=Mode.PREVIEW)


def test_a_hand_edited_plaintext_value_is_a_mac_mismatch(world: World) -> None:
    world.write("secrets/web.env", b"API_TOKEN_unencrypted=visible\nOTHER=x\n")
    world.write("secrets/db.yaml", DB)
    world.write("secrets/blob.bin", BLOB)
    world.commit()
    path = world.remote.clone_path / "secrets/web.env"
    path.write_text(path.read_text().replace("API_TOKEN_unencrypted=visible", "API_TOKEN_unencrypted=edited"))
    world.commit(message="edited by hand")

    assert "secrets/web.env: MAC mismatch" in refusal(world)


def test_paths_outside_the_repository_and_missing_files_refuse_the_commit(world: World) -> None:
    world.standard()
    outside = world.tmp / "outside.env"
    outside.write_bytes(encrypt(ENV, "outside.env", [world.recipient]))
    os.symlink(f"../../{outside.name}", world.remote.clone_path / "secrets/link.env")
    os.symlink("web.env", world.remote.clone_path / "secrets/inside.env")
    world.commit(STACK.replace("secrets/web.env", "secrets/link.env"), "a link out")

    assert "secrets/link.env: leads outside the repository through a symlink in commit" in refusal(world)

    world.commit(STACK.replace("secrets/web.env", "secrets/inside.env"), "a link inside")
    assert world.read().sealed.env(world.read().apps["web"].env_file) == {  # type: ignore[arg-type]
        "API_TOKEN": "token-plain-7781",
        "MODE": "fast",
    }

    world.commit(STACK.replace("secrets/web.env", "secrets/gone.env"), "a missing file")
    assert "secrets/gone.env: not found in commit" in refusal(world, mode=Mode.PARSE)


def test_validate_needs_no_key_but_a_file_that_is_not_sops_fails(world: World) -> None:
    world.standard()
    assert world.read(mode=Mode.PARSE, key=world.tmp / "nowhere.txt").sops_paths() == [
        "secrets/web.env",
        "secrets/db.yaml",
        "secrets/blob.bin",
    ]
    world.remote.write("secrets/web.env", "API_TOKEN=plain\n")
    world.commit(message="not encrypted")

    assert "secrets/web.env: not a SOPS" in refusal(world, mode=Mode.PARSE)


def test_a_key_that_is_not_in_the_file_is_named(world: World) -> None:
    world.standard()
    world.commit(STACK.replace("key: db.password", "key: db.pass"), "a typo")

    assert "apps.web: secrets/db.yaml: no key 'db.pass' in the file; not applied" in refusal(world)


def test_a_file_is_decrypted_once_per_process(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.standard()
    calls: list[str] = []
    real = sops_file.decrypt_document

    def counted(document: Document, keys: sops_file.Keys) -> object:
        calls.append(document.kind)
        return real(document, keys)

    monkeypatch.setattr(sops_file, "decrypt_document", counted)
    world.read()
    world.read()
    world.commit(STACK.replace("version: v1", "version: v2", 1), "another commit, the same files")
    world.read()

    assert sorted(calls) == ["binary", "dotenv", "yaml"]  # each of the three files once


def test_the_digest_key_is_made_once_and_private(world: World) -> None:
    world.standard()
    world.read()
    path = world.host.state_dir / sealed_module.DIGEST_KEY
    first = path.read_bytes()
    world.read()

    assert path.read_bytes() == first and len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_json_env_file_is_flat_key_value_and_a_tampered_mac_is_refused(world: World) -> None:
    world.write("secrets/web.json", b'{"API_TOKEN": "json-plain-5521", "PORT": 8000, "DEBUG": true}')
    world.write("secrets/db.yaml", DB)
    world.write("secrets/blob.bin", BLOB)
    world.commit(STACK.replace("secrets/web.env", "secrets/web.json"))

    env = world.read().sealed.env(world.read().apps["web"].env_file)  # type: ignore[arg-type]
    assert env == {"API_TOKEN": "json-plain-5521", "PORT": "8000", "DEBUG": "true"}

    path = world.remote.clone_path / "secrets/web.json"
    text = path.read_text()
    at = text.index('"mac": "ENC[AES256_GCM,data:') + len('"mac": "ENC[AES256_GCM,data:')
    path.write_text(text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :])
    world.commit(STACK.replace("secrets/web.env", "secrets/web.json"), "the MAC tampered")
    assert "secrets/web.json: MAC mismatch" in refusal(world)


def test_a_nested_file_is_no_env_file(world: World) -> None:
    world.write("secrets/web.yaml", DB)
    world.write("secrets/db.yaml", DB)
    world.write("secrets/blob.bin", BLOB)
    world.commit(STACK.replace("secrets/web.env", "secrets/web.yaml"))

    said = refusal(world)
    assert "apps.web: secrets/web.yaml: db is not one value (an env_file is flat KEY: VALUE)" in said
    assert "hunter2" not in said
