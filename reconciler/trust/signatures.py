"""Signed commits: whether the commit to apply carries a good signature by an allowed key (``--require-signed-by``).

Guarantees:
- ``parse_rule`` accepts ``ssh:ALLOWED_SIGNERS_FILE`` (git's ``gpg.format ssh`` with
  ``gpg.ssh.allowedSignersFile``) or ``gpg:KEYRING_DIR`` (a GnuPG home holding the allowed public keys),
  and raises ``UserError`` with one line for anything else: an unknown form, a missing or empty file, a
  directory with no keyring, a keyring whose ``gpg.conf`` would let gpg fetch or import keys while
  verifying (then any signer could bring its own key into the allowlist).
- ``verify`` asks the real ``git verify-commit --raw`` (and, for ssh, ``ssh-keygen``) and returns a
  ``Verification``; it is ``GOOD`` only when git accepts the signature *and* the status output names the
  allowed key: never from an exit code alone. No signature at all is ``UNSIGNED``, decided from the commit
  object itself (no ``gpgsig`` header), not from git's output. Everything else about the signature is
  ``BAD``: a key not allowed, a signature that does not match the commit, an expired or revoked key, a
  signature of the other kind (git picks ssh or OpenPGP from the signature's armor, whatever
  ``gpg.format`` says, so the kind is checked here first).
- An expired key is ``BAD`` as of now, for both kinds: gpg says ``EXPKEYSIG`` by the clock, but git checks
  ssh ``valid-after``/``valid-before`` against the commit's committer date, which the signer writes; a
  good ssh signature is therefore checked again with ``ssh-keygen -Y find-principals`` at the current time.
- ``verify`` raises ``SourceError`` only when git (or the gpg / ssh-keygen it runs) cannot run or does
  not finish within ``timeout`` seconds (the whole process group is then killed), or when the repository
  or the commit cannot be found. It works on bare repositories and on clones alike, and ignores the
  ``GIT_DIR``-like variables of its environment (a hook's ``GIT_DIR`` would otherwise win over the path).
- ``detail`` is always one line; ``key`` names the key when git or gpg printed one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from reconciler.errors import SourceError, UserError

Kind = Literal["ssh", "gpg"]

FORMS = "ssh:ALLOWED_SIGNERS_FILE or gpg:KEYRING_DIR"

# `git rev-parse --local-env-vars`: they point git at another repository than the one we name with -C.
_LOCAL_ENV = (
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_GRAFT_FILE",
    "GIT_INDEX_FILE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_REPLACE_REF_BASE",
    "GIT_PREFIX",
    "GIT_INTERNAL_SUPER_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_QUARANTINE_PATH",
)
# The armor of a signature is what git goes by to pick its verifier (gpg-interface.c, get_format_by_sig).
_ARMOR: dict[str, str] = {
    "-----BEGIN PGP SIGNATURE-----": "gpg",
    "-----BEGIN PGP MESSAGE-----": "gpg",
    "-----BEGIN SSH SIGNATURE-----": "ssh",
    "-----BEGIN SIGNED MESSAGE-----": "x509",
}
_KIND_NAME = {"gpg": "an OpenPGP", "ssh": "an ssh", "x509": "an X.509 (gpgsm)"}
# ssh-keygen's lines, which git passes on (they are not translated).
_SSH_GOOD = re.compile(r'^Good "git" signature for (?P<principal>.+) with (?P<type>\S+) key (?P<fpr>SHA256:\S+)$')
_SSH_ANON = re.compile(r'^Good "git" signature with (?P<type>\S+) key (?P<fpr>SHA256:\S+)$')
_SSH_EXPIRED = re.compile(r"key has expired: verify time \S+ > valid-before (?P<when>\S+)")
_SSH_NOT_YET = re.compile(r"key is not yet valid: verify time \S+ < valid-after (?P<when>\S+)")
# gpg.conf options that make gpg fetch or import the signer's key while it verifies.
_KEY_FETCHING = re.compile(
    r"^\s*(auto-key-retrieve|auto-key-import)\b|^\s*keyserver-options\b.*(?<!no-)auto-key-retrieve"
)


@dataclass(frozen=True)
class SignatureRule:
    """Which signatures are good: ``ssh`` with an allowed_signers file, or ``gpg`` with a keyring directory."""

    kind: Kind
    path: Path

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}"


class SignatureVerdict(StrEnum):
    GOOD = "good"
    UNSIGNED = "unsigned"
    BAD = "bad-signature"  # a key not allowed, a signature that does not verify, an expired or revoked key


@dataclass(frozen=True)
class Verification:
    """What ``verify`` found for ``commit`` (the full sha).

    ``key``: for ssh, ``PRINCIPAL SHA256:…`` when the allowed_signers file names the signer, else the
    ``SHA256:…`` fingerprint; for gpg, the primary key's fingerprint, else the long key id; "" when
    neither git nor gpg named one. ``detail``: one line, why."""

    commit: str
    verdict: SignatureVerdict
    key: str
    detail: str

    def __post_init__(self) -> None:
        # One line whatever a signer's uid or a tool's message held: it goes into logs and events.
        object.__setattr__(self, "detail", _line(self.detail))
        object.__setattr__(self, "key", _line(self.key))


def parse_rule(text: str) -> SignatureRule:
    """``ssh:FILE`` or ``gpg:DIR`` (``~`` expanded, made absolute); ``UserError`` with one line otherwise."""
    kind, sep, rest = text.strip().partition(":")
    if not sep or kind not in ("ssh", "gpg") or not rest.strip():
        raise UserError(f"--require-signed-by {text!r}: expected {FORMS}")
    path = Path(rest.strip()).expanduser().absolute()  # git runs in the repository: a relative path would move
    where = f"--require-signed-by {kind}:{path}"
    if kind == "ssh":
        _check_allowed_signers(path, where)
        return SignatureRule("ssh", path)
    _check_keyring(path, where)
    return SignatureRule("gpg", path)


def _check_allowed_signers(path: Path, where: str) -> None:
    if path.is_dir():
        raise UserError(f"{where}: is a directory, not an allowed_signers file")
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        raise UserError(f'{where}: no such file (lines like: PRINCIPAL namespaces="git" ssh-ed25519 AAAA…)') from None
    except OSError as exc:
        raise UserError(f"{where}: cannot be read: {(exc.strerror or str(exc)).lower()}") from None
    # An empty file would refuse every commit, each as "not allowed": better said once, at the start.
    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        raise UserError(f"{where}: names no signers (it is empty or only comments)")


def _check_keyring(path: Path, where: str) -> None:
    if not path.exists():
        raise UserError(f"{where}: no such directory (a GnuPG home holding the allowed public keys)")
    if not path.is_dir():
        raise UserError(f"{where}: is not a directory (give the GnuPG home holding the allowed public keys)")
    # pubring.kbx (gpg 2.1+), pubring.gpg (older), public-keys.d (keyboxd, gpg 2.4).
    if not any((path / name).exists() for name in ("pubring.kbx", "pubring.gpg", "public-keys.d")):
        raise UserError(f"{where}: holds no keyring (gpg --homedir {path} --import KEY.asc)")
    for conf in sorted(path.glob("gpg.conf*")):
        with contextlib.suppress(OSError):
            for number, line in enumerate(conf.read_text(errors="replace").splitlines(), 1):
                if _KEY_FETCHING.search(line):
                    raise UserError(
                        f"{where}: {conf.name}:{number} {line.strip()!r} lets gpg fetch the signer's key while "
                        "verifying, so every signer would be allowed: remove it"
                    )


def verify(repo_path: str | Path, commit: str, rule: SignatureRule, *, timeout: float = 10.0) -> Verification:
    """Whether ``commit`` of the repository at ``repo_path`` (bare or not) is signed by a key ``rule`` allows."""
    repo = str(repo_path)
    deadline = time.monotonic() + timeout
    run = _Runner(repo, deadline, timeout)

    found = run.git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{commit}^{{commit}}")
    if found.returncode != 0:
        said = _first_line(found.stderr)
        # --quiet: a missing commit is exit 1 and silence; a missing or broken repository says fatal: …
        raise SourceError(f"{repo}: {said}" if said else f"{repo}: commit {commit!r} not found")
    sha = found.stdout.decode().strip()
    raw = run.git("cat-file", "commit", sha)
    if raw.returncode != 0:
        raise SourceError(
            f"{repo}: commit {sha[:8]} cannot be read: {_first_line(raw.stderr) or 'git cat-file failed'}"
        )

    signature = _signature(raw.stdout, sha)
    if signature is None:
        return Verification(sha, SignatureVerdict.UNSIGNED, "", f"commit {sha[:8]} is not signed")
    armor = signature.splitlines()[0].strip() if signature.strip() else ""
    kind = _ARMOR.get(armor, "")
    if kind != rule.kind:
        # git would hand it to another verifier than the rule names, with the user's config for it.
        what = _KIND_NAME.get(kind, "an unknown kind of")
        return Verification(
            sha, SignatureVerdict.BAD, "", f"commit {sha[:8]} carries {what} signature; {rule} wants {rule.kind}"
        )

    if rule.kind == "ssh":
        return _verify_ssh(run, sha, rule, signature)
    return _verify_gpg(run, sha, rule)


def _signature(raw: bytes, sha: str) -> str | None:
    """The signature in the commit object's headers, or None; a sha256 repository signs into ``gpgsig-sha256``
    and a sha1 one into ``gpgsig`` (a commit may carry both: git verifies the one of its own hash)."""
    name = b"gpgsig-sha256" if len(sha) == 64 else b"gpgsig"
    headers = raw.split(b"\n\n", 1)[0]
    lines: list[bytes] | None = None
    for line in headers.split(b"\n"):
        if lines is not None:
            if not line.startswith(b" "):
                break
            lines.append(line[1:])  # continuation lines of a header start with one space
        elif line.startswith(name + b" "):
            lines = [line[len(name) + 1 :]]
    if lines is None:
        return None
    return b"\n".join(lines).decode(errors="replace") + "\n"


def _verify_ssh(run: _Runner, sha: str, rule: SignatureRule, signature: str) -> Verification:
    done = run.git(
        "-c", "gpg.format=ssh",
        "-c", f"gpg.ssh.allowedSignersFile={rule.path}",
        "verify-commit", "--raw", sha,
    )  # fmt: skip
    out = _text(done.stdout) + _text(done.stderr)
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    _raise_when_not_run(lines, sha)
    good = next((m for m in map(_SSH_GOOD.match, lines) if m), None)
    anon = next((m for m in map(_SSH_ANON.match, lines) if m), None)
    if done.returncode == 0 and good:
        principal, fpr = good["principal"], good["fpr"]
        key = f"{principal} {fpr}"
        # git checked valid-before/valid-after against the committer date, which the signer chose.
        stale = run.ssh_principals_now(signature, rule.path, principal)
        if stale is not None:
            return Verification(
                sha, SignatureVerdict.BAD, key, f"signed by {principal} ({good['type']} key {fpr}): {stale}"
            )
        return Verification(
            sha, SignatureVerdict.GOOD, key, f"good signature by {principal} ({good['type']} key {fpr})"
        )
    # ssh-keygen prints "Good … with KEY" (check-novalidate) before it says no principal matched: the
    # signature is intact, but its key is not allowed; "Good" on its own means nothing here.
    fpr = anon["fpr"] if anon else (good["fpr"] if good else "")
    signer = f"{anon['type']} key {fpr}" if anon else f"key {fpr}" if fpr else "a key"
    for line in lines:
        if expired := _SSH_EXPIRED.search(line):
            return Verification(
                sha, SignatureVerdict.BAD, fpr, f"signed by {signer}, expired in {rule.path} ({expired[0]})"
            )
        if early := _SSH_NOT_YET.search(line):
            return Verification(
                sha, SignatureVerdict.BAD, fpr, f"signed by {signer}, not yet valid in {rule.path} ({early[0]})"
            )
    if any("incorrect signature" in line or "Could not verify signature" in line for line in lines):
        return Verification(sha, SignatureVerdict.BAD, fpr, f"the ssh signature does not match commit {sha[:8]}")
    if any("No principal matched" in line for line in lines):
        return Verification(sha, SignatureVerdict.BAD, fpr, f"signed by {signer}, which {rule.path} does not allow")
    why = (
        next((line for line in lines if not line.startswith("Good ")), "")
        or f"git verify-commit exited {done.returncode}"
    )
    return Verification(sha, SignatureVerdict.BAD, fpr, f"the ssh signature of commit {sha[:8]} is not good: {why}")


def _verify_gpg(run: _Runner, sha: str, rule: SignatureRule) -> Verification:
    done = run.git(
        "-c", "gpg.format=openpgp",
        # The keyring is the allowlist: whether its keys are also certified (gpg's trust) is not asked.
        "-c", "gpg.minTrustLevel=undefined",
        "verify-commit", "--raw", sha,
        gnupghome=rule.path,
    )  # fmt: skip
    out = _text(done.stdout) + _text(done.stderr)
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    _raise_when_not_run(lines, sha)
    status: dict[str, list[str]] = {}
    for line in lines:
        if line.startswith("[GNUPG:] "):
            keyword, *args = line.removeprefix("[GNUPG:] ").split(" ")
            status.setdefault(keyword, args)  # the first of each: a commit carries one signature

    def uid(keyword: str) -> str:
        args = status.get(keyword, [])
        return _unescape(" ".join(args[1:])) if len(args) > 1 else ""

    keyid = next((status[k][0] for k in ("GOODSIG", "EXPKEYSIG", "REVKEYSIG", "BADSIG", "EXPSIG") if status.get(k)), "")
    valid = status.get("VALIDSIG", [])
    errsig = status.get("ERRSIG", [])
    # VALIDSIG: the signing key's fingerprint first, the primary key's last; ERRSIG: the fingerprint 7th
    # (gpg 2.2.7+), "-" when the signature does not carry it.
    key = valid[9] if len(valid) >= 10 else valid[0] if valid else ""
    if not key and len(errsig) >= 7 and errsig[6] != "-":
        key = errsig[6]
    key = key or keyid or (errsig[0] if errsig else "")
    who = uid("GOODSIG") or uid("EXPKEYSIG") or uid("REVKEYSIG") or uid("BADSIG") or uid("EXPSIG")
    signer = f"{who} (key {key})" if who else f"key {key}" if key else "an unknown key"

    if "BADSIG" in status:
        return Verification(
            sha, SignatureVerdict.BAD, key, f"the signature by {signer} does not match commit {sha[:8]}"
        )
    if "EXPKEYSIG" in status:
        return Verification(sha, SignatureVerdict.BAD, key, f"signed by {signer}, which has expired")
    if "REVKEYSIG" in status:
        return Verification(sha, SignatureVerdict.BAD, key, f"signed by {signer}, which has been revoked")
    if "EXPSIG" in status:
        return Verification(sha, SignatureVerdict.BAD, key, f"the signature by {signer} has expired")
    if errsig:
        if "NO_PUBKEY" in status or (len(errsig) >= 6 and errsig[5] == "9"):
            return Verification(
                sha, SignatureVerdict.BAD, key, f"signed by {signer}, which is not in keyring {rule.path}"
            )
        code = errsig[5] if len(errsig) >= 6 else "?"
        return Verification(
            sha, SignatureVerdict.BAD, key, f"the signature by {signer} cannot be checked (gpg ERRSIG code {code})"
        )
    if done.returncode == 0 and "GOODSIG" in status and valid:
        return Verification(sha, SignatureVerdict.GOOD, key, f"good signature by {signer}")
    why = next((line for line in lines if not line.startswith("[GNUPG:]")), "")
    why = why or f"git verify-commit exited {done.returncode}"
    return Verification(sha, SignatureVerdict.BAD, key, f"the OpenPGP signature of commit {sha[:8]} is not good: {why}")


def _raise_when_not_run(lines: list[str], sha: str) -> None:
    """git prints ``fatal: cannot run gpg: …`` when the verifier is missing: no verdict on the commit."""
    for line in lines:
        if re.match(r"^(fatal|error): cannot run ", line):
            raise SourceError(f"git verify-commit {sha[:8]}: {_line(line.split(': ', 1)[1])}")


class _Runner:
    """Runs git and ssh-keygen under one deadline, each in its own process group (git's gpg or ssh-keygen
    children are killed with it: a timeout that killed only git would leave ``communicate`` waiting on
    the pipes they still hold)."""

    def __init__(self, repo: str, deadline: float, timeout: float) -> None:
        self.repo = repo
        self.deadline = deadline
        self.timeout = timeout

    def git(self, *args: str, gnupghome: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        env = {name: value for name, value in os.environ.items() if name not in _LOCAL_ENV}
        env.update(LC_ALL="C", LANGUAGE="", GIT_TERMINAL_PROMPT="0")  # lines we parse, in English
        if gnupghome is not None:
            env["GNUPGHOME"] = str(gnupghome)
        command = next(arg for arg, before in zip(args, ("", *args), strict=False) if "-c" not in (arg, before))
        return self._run(["git", "-C", self.repo, *args], env, f"git {command}")

    def ssh_principals_now(self, signature: str, allowed: Path, principal: str) -> str | None:
        """None when ``allowed`` lets ``principal``'s key sign now; else why not, one line."""
        with tempfile.TemporaryDirectory(prefix="reconciler-sig-") as tmp:
            sig = Path(tmp) / "commit.sig"
            sig.write_text(signature)
            # No -O verify-time: ssh-keygen's default is the current time.
            done = self._run(
                ["ssh-keygen", "-Y", "find-principals", "-s", str(sig), "-f", str(allowed)],
                {**os.environ, "LC_ALL": "C"},
                "ssh-keygen -Y find-principals",
            )
        if done.returncode == 0 and principal in _text(done.stdout).splitlines():
            return None
        said = [line.strip() for line in _text(done.stderr).splitlines() if line.strip()]
        for line in said:
            if found := _SSH_EXPIRED.search(line) or _SSH_NOT_YET.search(line):
                return f"{'expired' if 'expired' in found[0] else 'not yet valid'} in {allowed} ({found[0]})"
        return f"{allowed} does not allow it now ({said[0] if said else 'no principal matched'})"

    def _run(self, argv: list[str], env: dict[str, str], what: str) -> subprocess.CompletedProcess[bytes]:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SourceError(f"{what} in {self.repo}: no answer within {self.timeout:g} s")
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise SourceError(f"cannot run {argv[0]}: {(exc.strerror or str(exc)).lower()}") from None
        try:
            out, err = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise SourceError(
                f"{what} in {self.repo}: no answer within {self.timeout:g} s (gpg or ssh-keygen hanging?)"
            ) from None
        except BaseException:  # an interrupt: nothing it started may outlive us
            _kill(proc)
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc``'s whole process group and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    # A daemon that left the group (gpg-agent) may still hold the pipes: do not wait on them forever.
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=5)
    proc.kill()
    proc.wait()


def _text(data: bytes) -> str:
    return data.decode(errors="replace")


def _line(text: str) -> str:
    """One line of printable text: what a signer wrote (a uid) or a tool said may hold anything."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def _first_line(data: bytes) -> str:
    lines = [line.strip() for line in _text(data).splitlines() if line.strip()]
    first = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[0] if lines else "")
    return _line(first.removeprefix("fatal: ").removeprefix("error: "))


def _unescape(text: str) -> str:
    """gpg's status lines percent-escape what is not printable (``%0A``); uids are UTF-8."""
    raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m[1], 16)]), text.encode())
    return _line(raw.decode(errors="replace"))
