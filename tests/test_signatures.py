"""``--require-signed-by``: real ssh and OpenPGP keys, real signed commits pushed to a bare remote.

The keys are made once for the module (ssh-keygen; gpg ed25519 keys in their own GnuPG homes, one
created in 2020 with a one-day expiry through gpg's ``--faked-system-time``), the commits once too;
every test verifies against the bare remote, as the agent's mirror is bare. No Docker engine is used.
Without ``gpg`` or ``ssh-keygen`` the tests fail: they never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.errors import SourceError, UserError
from reconciler.trust.signatures import SignatureRule, SignatureVerdict, Verification, parse_rule, verify
from tests.support import GitRemote, run_git
from tests.support.gitrepo import AUTHOR_EMAIL, AUTHOR_NAME, BRANCH, git_env

GPG_EPOCH = "20200101T000000!"  # "!": gpg's clock stands still there, so what it signs is dated 2020


def need(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is not installed: the signature tests need it (apt-get install {package})")
    return found


def sh(*argv: str | Path, env: dict[str, str] | None = None, stdin: bytes | None = None) -> str:
    result = subprocess.run([str(a) for a in argv], env=env, input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {result.returncode}:\n{result.stderr.decode()}")
    return result.stdout.decode()


def git_in(cwd: Path, *args: str, gnupghome: Path | None = None, date: str | None = None) -> str:
    """git as ``run_git`` runs it, with a GnuPG home for signing and a committer date if asked."""
    env = git_env()
    if gnupghome is not None:
        env["GNUPGHOME"] = str(gnupghome)
    if date is not None:
        env["GIT_COMMITTER_DATE"] = env["GIT_AUTHOR_DATE"] = date
    # -C always: a git run from the test's own directory would commit into the project's repository.
    argv = ["git", "-C", str(cwd), "-c", f"user.name={AUTHOR_NAME}", "-c", f"user.email={AUTHOR_EMAIL}", *args]
    return sh(*argv, env=env).strip()


@dataclass(frozen=True)
class SshKey:
    private: Path
    public: str  # "ssh-ed25519 AAAA…"
    fingerprint: str  # "SHA256:…"


@dataclass(frozen=True)
class GpgKey:
    home: Path
    fingerprint: str


@dataclass(frozen=True)
class Keys:
    alice: SshKey  # in allowed_signers
    mallory: SshKey  # in no file
    old: SshKey  # in allowed_signers with valid-before 2020
    allowed: Path
    galice: GpgKey  # in the keyring
    gmallory: GpgKey  # not in it
    gold: GpgKey  # in the keyring, expired since 2020-01-02
    keyring: Path  # the public keys of galice and gold
    revoked: Path  # galice's public key and its revocation


def ssh_key(root: Path, name: str) -> SshKey:
    need("ssh-keygen", "openssh-client")
    private = root / name
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", private)
    public = " ".join(Path(f"{private}.pub").read_text().split()[:2])
    fingerprint = sh("ssh-keygen", "-l", "-f", f"{private}.pub").split()[1]
    assert fingerprint.startswith("SHA256:"), fingerprint
    return SshKey(private, public, fingerprint)


def gnupg_home(root: Path, name: str) -> Path:
    home = root / name
    home.mkdir(mode=0o700)
    return home


def gpg(home: Path, *args: str, stdin: bytes | None = None) -> str:
    need("gpg", "gnupg")
    return sh("gpg", "--homedir", home, "--batch", "--quiet", *args, stdin=stdin)


def gpg_key(root: Path, name: str, *, faked_time: str | None = None) -> GpgKey:
    home = gnupg_home(root, name)
    faked = ["--faked-system-time", faked_time] if faked_time else []
    gpg(home, "--passphrase", "", *faked, "--quick-gen-key", f"{name} <{name}@example.com>", "ed25519", "sign", "1d")
    if faked_time:  # signing too happens then, while the key was valid
        (home / "gpg.conf").write_text(f"faked-system-time {faked_time}\n")
    listed = gpg(home, "--with-colons", "--list-keys")
    fingerprint = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:"))
    return GpgKey(home, fingerprint)


def import_into(home: Path, *keys: GpgKey) -> None:
    for key in keys:
        gpg(home, "--import", stdin=gpg(key.home, "--armor", "--export", key.fingerprint).encode())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    need("ssh-keygen", "openssh-client")
    need("gpg", "gnupg")
    root = tmp_path_factory.mktemp("keys")
    # gpg-agent's sockets live in the GnuPG home here (no /run/user): a socket path has ~107 bytes at most.
    short = Path(tempfile.mkdtemp(prefix="rsig-"))
    homes: list[Path] = []
    try:
        alice, mallory, old = ssh_key(root, "alice"), ssh_key(root, "mallory"), ssh_key(root, "old")
        allowed = root / "allowed_signers"
        allowed.write_text(
            "# who may deploy\n"
            f'alice@example.com namespaces="git" {alice.public}\n'
            f'old@example.com namespaces="git",valid-before="20200101" {old.public}\n'
        )
        galice = gpg_key(short, "alice")
        homes.append(galice.home)
        gmallory = gpg_key(short, "mallory")
        homes.append(gmallory.home)
        gold = gpg_key(short, "old", faked_time=GPG_EPOCH)
        homes.append(gold.home)
        keyring = gnupg_home(short, "keyring")
        homes.append(keyring)
        import_into(keyring, galice, gold)
        revoked = gnupg_home(short, "revoked")
        homes.append(revoked)
        import_into(revoked, galice)
        # gpg wrote a revocation certificate at key creation; its armor is disarmed with a ":".
        certificate = (galice.home / "openpgp-revocs.d" / f"{galice.fingerprint}.rev").read_text()
        gpg(revoked, "--import", stdin=certificate.replace(":-----BEGIN", "-----BEGIN").encode())
        yield Keys(alice, mallory, old, allowed, galice, gmallory, gold, keyring, revoked)
    finally:
        for home in homes:  # key generation and signing started a gpg-agent in each home
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(short, ignore_errors=True)


@dataclass(frozen=True)
class Repo:
    remote: GitRemote
    commits: dict[str, str]  # what it is → sha, all on the bare remote

    @property
    def bare(self) -> Path:
        return self.remote.bare_path


def ssh_commit(remote: GitRemote, key: SshKey, message: str, *, date: str | None = None) -> str:
    git_in(
        remote.clone_path,
        "-c", "gpg.format=ssh", "-c", f"user.signingkey={key.private}",
        "commit", "-q", "--allow-empty", "-S", "-m", message,
        date=date,
    )  # fmt: skip
    return remote.head()


def gpg_commit(remote: GitRemote, key: GpgKey, message: str) -> str:
    git_in(
        remote.clone_path, "commit", "-q", "--allow-empty", f"-S{key.fingerprint}", "-m", message, gnupghome=key.home
    )
    return remote.head()


def tampered(remote: GitRemote, sha: str, ref: str) -> str:
    """A copy of commit ``sha`` with its signature kept and its message changed, pushed as ``ref``."""
    raw = subprocess.run(["git", "cat-file", "commit", sha], cwd=remote.clone_path, capture_output=True, check=True)
    body = raw.stdout.replace(b"\n\n", b"\n\nchanged after signing: ", 1)
    forged = subprocess.run(
        ["git", "hash-object", "-t", "commit", "-w", "--stdin"],
        cwd=remote.clone_path,
        input=body,
        capture_output=True,
        check=True,
    ).stdout.decode()
    remote.git("push", "-q", "origin", f"{forged.strip()}:refs/heads/{ref}")
    return forged.strip()


@pytest.fixture(scope="module")
def repo(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Repo:
    remote = GitRemote(tmp_path_factory.mktemp("repo"))
    commits = {
        "unsigned": remote.commit("unsigned"),
        "ssh good": ssh_commit(remote, keys.alice, "by alice"),
        "ssh not allowed": ssh_commit(remote, keys.mallory, "by mallory"),
        "ssh expired": ssh_commit(remote, keys.old, "by old, now"),
        # git checks valid-before against the committer date: this one git itself calls good.
        "ssh expired, backdated": ssh_commit(remote, keys.old, "by old, dated 2019", date="2019-06-01T00:00:00Z"),
        "gpg good": gpg_commit(remote, keys.galice, "by alice"),
        "gpg not allowed": gpg_commit(remote, keys.gmallory, "by mallory"),
        "gpg expired": gpg_commit(remote, keys.gold, "by old"),
    }
    remote.push()
    commits["ssh tampered"] = tampered(remote, commits["ssh good"], "tampered-ssh")
    commits["gpg tampered"] = tampered(remote, commits["gpg good"], "tampered-gpg")
    return Repo(remote, commits)


@pytest.fixture(scope="module")
def ssh(keys: Keys) -> SignatureRule:
    return parse_rule(f"ssh:{keys.allowed}")


@pytest.fixture(scope="module")
def openpgp(keys: Keys) -> SignatureRule:
    return parse_rule(f"gpg:{keys.keyring}")


def check(found: Verification, commit: str, verdict: SignatureVerdict) -> Verification:
    assert found.verdict is verdict, found
    assert found.commit == commit, found
    assert found.detail and "\n" not in found.detail and found.detail == found.detail.strip(), found
    return found


# -- ssh ---------------------------------------------------------------------------------------------


def test_a_good_ssh_signature_names_the_principal_and_the_fingerprint(
    repo: Repo, keys: Keys, ssh: SignatureRule
) -> None:
    sha = repo.commits["ssh good"]
    found = check(verify(repo.bare, sha, ssh), sha, SignatureVerdict.GOOD)
    assert found.key == f"alice@example.com {keys.alice.fingerprint}", found
    assert "alice@example.com" in found.detail, found


def test_a_commit_the_tool_writes_is_signed_where_the_repository_signs_its_commits(
    keys: Keys, ssh: SignatureRule, tmp_path: Path
) -> None:
    """``rollback``, ``set-version`` and the dashboard commit with ``commit-tree``, which does not read
    ``commit.gpgsign`` by itself: the commit must carry the signature the agent's rule asks for all the same."""
    from reconciler.adapters.git import open_source

    remote = GitRemote(tmp_path)
    base = remote.commit("unsigned base")
    source = open_source(str(remote.clone_path), state_dir=tmp_path, fetch=False)
    try:
        unsigned = source.commit_file(base=base, path="f.txt", content=b"1\n", message="plain")
        for key, value in (("gpg.format", "ssh"), ("user.signingkey", str(keys.alice.private)),
                           ("commit.gpgsign", "true")):  # fmt: skip
            run_git("config", key, value, cwd=remote.clone_path)
        signed = source.commit_file(base=base, path="f.txt", content=b"2\n", message="signed")
    finally:
        source.close()
    check(verify(remote.clone_path, unsigned, ssh), unsigned, SignatureVerdict.UNSIGNED)
    found = check(verify(remote.clone_path, signed, ssh), signed, SignatureVerdict.GOOD)
    assert found.key == f"alice@example.com {keys.alice.fingerprint}", found


def test_an_unsigned_commit_is_unsigned_for_either_rule(repo: Repo, ssh: SignatureRule, openpgp: SignatureRule) -> None:
    sha = repo.commits["unsigned"]
    for rule in (ssh, openpgp):
        found = check(verify(repo.bare, sha, rule), sha, SignatureVerdict.UNSIGNED)
        assert found.key == "", found


def test_an_ssh_key_not_in_allowed_signers_is_bad(repo: Repo, keys: Keys, ssh: SignatureRule) -> None:
    sha = repo.commits["ssh not allowed"]
    found = check(verify(repo.bare, sha, ssh), sha, SignatureVerdict.BAD)
    assert found.key == keys.mallory.fingerprint, found  # git names the key even when no principal matched
    assert "does not allow" in found.detail, found


def test_an_ssh_key_past_its_valid_before_is_bad_even_on_a_backdated_commit(
    repo: Repo, keys: Keys, ssh: SignatureRule
) -> None:
    backdated = repo.commits["ssh expired, backdated"]
    said = subprocess.run(
        ["git", "-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={keys.allowed}", "verify-commit", backdated],
        cwd=repo.bare,
        env=git_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert said.returncode == 0, f"git itself should accept the backdated commit:\n{said.stderr}"

    for what in ("ssh expired", "ssh expired, backdated"):
        sha = repo.commits[what]
        found = check(verify(repo.bare, sha, ssh), sha, SignatureVerdict.BAD)
        assert keys.old.fingerprint in found.key, (what, found)
        assert "expired" in found.detail and "valid-before" in found.detail, (what, found)


def test_an_ssh_signature_that_does_not_match_the_commit_is_bad(repo: Repo, ssh: SignatureRule) -> None:
    sha = repo.commits["ssh tampered"]
    found = check(verify(repo.bare, sha, ssh), sha, SignatureVerdict.BAD)
    assert "does not match" in found.detail, found


# -- OpenPGP -----------------------------------------------------------------------------------------


def test_a_good_gpg_signature_names_the_fingerprint(repo: Repo, keys: Keys, openpgp: SignatureRule) -> None:
    sha = repo.commits["gpg good"]
    found = check(verify(repo.bare, sha, openpgp), sha, SignatureVerdict.GOOD)
    assert found.key == keys.galice.fingerprint, found
    assert "alice <alice@example.com>" in found.detail, found


def test_a_gpg_key_not_in_the_keyring_is_bad(repo: Repo, keys: Keys, openpgp: SignatureRule) -> None:
    sha = repo.commits["gpg not allowed"]
    found = check(verify(repo.bare, sha, openpgp), sha, SignatureVerdict.BAD)
    assert found.key == keys.gmallory.fingerprint, found  # from ERRSIG: gpg never saw the key
    assert "not in keyring" in found.detail, found


def test_an_expired_gpg_key_is_bad(repo: Repo, keys: Keys, openpgp: SignatureRule) -> None:
    sha = repo.commits["gpg expired"]
    found = check(verify(repo.bare, sha, openpgp), sha, SignatureVerdict.BAD)
    assert found.key == keys.gold.fingerprint, found
    assert "expired" in found.detail, found


def test_a_revoked_gpg_key_is_bad(repo: Repo, keys: Keys) -> None:
    sha = repo.commits["gpg good"]
    found = check(verify(repo.bare, sha, parse_rule(f"gpg:{keys.revoked}")), sha, SignatureVerdict.BAD)
    assert found.key == keys.galice.fingerprint, found
    assert "revoked" in found.detail, found


def test_a_gpg_signature_that_does_not_match_the_commit_is_bad(repo: Repo, keys: Keys, openpgp: SignatureRule) -> None:
    sha = repo.commits["gpg tampered"]
    found = check(verify(repo.bare, sha, openpgp), sha, SignatureVerdict.BAD)
    assert "does not match" in found.detail, found
    assert found.key.endswith(keys.galice.fingerprint[-16:]), found  # BADSIG gives the long key id


def test_a_signature_of_the_other_kind_is_bad(repo: Repo, ssh: SignatureRule, openpgp: SignatureRule) -> None:
    # git picks its verifier from the signature's armor, not from gpg.format: the kind is checked first.
    for what, rule, said in (("ssh good", openpgp, "an ssh signature"), ("gpg good", ssh, "an OpenPGP signature")):
        sha = repo.commits[what]
        found = check(verify(repo.bare, sha, rule), sha, SignatureVerdict.BAD)
        assert said in found.detail, found


# -- the repository, the commit, git -----------------------------------------------------------------


def test_a_clone_and_a_ref_name_work_too_and_give_the_full_sha(
    repo: Repo, ssh: SignatureRule, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = repo.commits["gpg expired"]
    found = check(verify(repo.remote.clone_path, BRANCH, ssh), head, SignatureVerdict.BAD)  # an OpenPGP one
    assert len(found.commit) == 40
    short = repo.commits["ssh good"][:10]
    check(verify(str(repo.remote.clone_path), short, ssh), repo.commits["ssh good"], SignatureVerdict.GOOD)
    # A hook's GIT_DIR names another repository: the path given wins.
    monkeypatch.setenv("GIT_DIR", str(repo.remote.clone_path / ".git"))
    check(verify(repo.bare, "tampered-ssh", ssh), repo.commits["ssh tampered"], SignatureVerdict.BAD)


@pytest.mark.parametrize("commit", ["0" * 40, "no-such-branch", "--help"])
def test_a_commit_that_does_not_exist_is_a_source_error(repo: Repo, ssh: SignatureRule, commit: str) -> None:
    with pytest.raises(SourceError) as caught:
        verify(repo.bare, commit, ssh)
    assert "not found" in str(caught.value) and "\n" not in str(caught.value), caught.value


def test_a_path_that_is_no_repository_is_a_source_error(tmp_path: Path, ssh: SignatureRule) -> None:
    for path in (tmp_path / "missing", tmp_path):
        with pytest.raises(SourceError) as caught:
            verify(path, "HEAD", ssh)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value), caught.value


def copy_with(repo: Repo, tmp_path: Path, key: str, value: str) -> Path:
    copy = tmp_path / "copy.git"
    run_git("clone", "-q", "--bare", str(repo.bare), str(copy))
    run_git("--git-dir", str(copy), "config", key, value)
    return copy


def test_a_verifier_that_cannot_run_is_a_source_error_not_a_verdict(
    repo: Repo, openpgp: SignatureRule, tmp_path: Path
) -> None:
    copy = copy_with(repo, tmp_path, "gpg.program", str(tmp_path / "no-such-gpg"))
    with pytest.raises(SourceError) as caught:
        verify(copy, repo.commits["gpg good"], openpgp)
    assert "cannot run" in str(caught.value) and "no-such-gpg" in str(caught.value), caught.value


def test_a_verifier_that_hangs_is_killed_at_the_timeout(repo: Repo, openpgp: SignatureRule, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    hang = tmp_path / "hanging-gpg"
    hang.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 60\n")
    hang.chmod(0o755)
    copy = copy_with(repo, tmp_path, "gpg.program", str(hang))

    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        verify(copy, repo.commits["gpg good"], openpgp, timeout=1.0)
    assert time.monotonic() - started < 6, "verify waited past its timeout"
    assert "no answer within 1 s" in str(caught.value), caught.value

    pid = int(pidfile.read_text())  # git's child, killed with git's process group
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not gone(pid):
        time.sleep(0.05)
    assert gone(pid), f"the hanging verifier {pid} outlived the timeout"


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # killed, waiting for whoever adopted it to reap it


# -- the rule --------------------------------------------------------------------------------------------


def test_a_rule_names_its_file_or_directory_absolutely(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(keys.allowed.parent)
    rule = parse_rule(f"ssh:{keys.allowed.name}")
    assert rule == SignatureRule("ssh", keys.allowed) and rule.path.is_absolute()
    assert parse_rule(str(rule)) == rule
    assert parse_rule(f"gpg:{keys.keyring}") == SignatureRule("gpg", keys.keyring)


def bad_rules(keys: Keys, tmp_path: Path) -> list[tuple[str, str]]:
    empty = tmp_path / "empty_signers"
    empty.write_text("# nobody yet\n\n")
    fetching = tmp_path / "fetching"
    shutil.copytree(keys.keyring, fetching, ignore=shutil.ignore_patterns("S.*"))
    (fetching / "gpg.conf").write_text("keyid-format long\nauto-key-retrieve\n")
    return [
        ("", "expected ssh:ALLOWED_SIGNERS_FILE or gpg:KEYRING_DIR"),
        ("ssh", "expected ssh:ALLOWED_SIGNERS_FILE or gpg:KEYRING_DIR"),
        ("ssh:", "expected ssh:ALLOWED_SIGNERS_FILE or gpg:KEYRING_DIR"),
        (f"x509:{keys.allowed}", "expected ssh:ALLOWED_SIGNERS_FILE or gpg:KEYRING_DIR"),
        (f"SSH:{keys.allowed}", "expected ssh:ALLOWED_SIGNERS_FILE or gpg:KEYRING_DIR"),
        (f"ssh:{tmp_path / 'missing'}", "no such file"),
        (f"ssh:{tmp_path}", "is a directory"),
        (f"ssh:{empty}", "names no signers"),
        (f"gpg:{tmp_path / 'missing'}", "no such directory"),
        (f"gpg:{keys.allowed}", "is not a directory"),
        (f"gpg:{tmp_path}", "holds no keyring"),
        (f"gpg:{fetching}", "gpg.conf:2 'auto-key-retrieve' lets gpg fetch"),
    ]


def test_a_bad_rule_is_one_line_that_says_why(keys: Keys, tmp_path: Path) -> None:
    for text, said in bad_rules(keys, tmp_path):
        with pytest.raises(UserError) as caught:
            parse_rule(text)
        message = str(caught.value)
        assert said in message and "\n" not in message, (text, message)
        assert message.startswith("--require-signed-by "), (text, message)


def test_the_tools_are_there() -> None:
    # The other tests fail too without them; this one says so first, and by name.
    for tool, package in (("git", "git"), ("gpg", "gnupg"), ("ssh-keygen", "openssh-client"), ("gpgconf", "gnupg")):
        need(tool, package)
    assert os.access(shutil.which("gpg") or "", os.X_OK)
