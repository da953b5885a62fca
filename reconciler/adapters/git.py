"""The only module that imports GitPython: where desired state comes from.

Guarantees:
- The desired-state file is read from a commit, never from a working tree: uncommitted edits never deploy.
- ``--repo`` may be a local clone, a bare repository, or a URL; a URL is mirrored into the state
  directory (``git clone --mirror``) and fetched with ``+refs/heads/*`` and ``+refs/tags/*``, so a
  force-pushed branch is followed to its new tip.
- A URL's credentials never reach the disk: the mirror's config keeps the URL without them (an http(s)
  URL without its user and password, any other without its password), and git gets them from a
  credential helper that reads them from the environment of its own process, for that URL's protocol
  and host only (``_Remote``). Mirrors are made with ``core.sharedRepository=0600``: nothing in them is
  readable by another user. A mirror or a moved-aside copy that an older version wrote with the
  password in its config is given the URL without it (and moved to the path of that URL).
- Errors leave as ``SourceError`` (bad path, ref or file, a corrupt repository, or a remote that
  refuses the URL's credentials: needs a human) or ``RemoteUnavailable`` (the remote did not answer:
  clears by itself); no GitPython, gitdb or OS error leaves this module, and none names a password.
  A ref that exists but whose objects cannot be read is ``REPO: commit abc12345 is unreadable (the
  repository is corrupt: git fsck)``, never "not found".
- A mirror that is corrupt, missing or not a repository any more is moved aside
  (``NAME.git.corrupt-TIMESTAMP``) and cloned again, with one ``warn`` line; a remote that does not
  answer is told apart from a broken mirror by ``git ls-remote``, so a broken mirror is never blamed
  on the remote.
- ``read_inside`` reads a file of a commit through the commit's own symlinks only while they stay inside
  the repository (the SOPS files a desired state names).
- Tags that this host writes into a mirror (``stable``, ``stable-APP``) live in
  ``refs/reconciler/tags/``, which the fetch does not prune, and are read from there before
  ``refs/tags/``; ``push_tags`` publishes them as ``refs/tags/NAME``.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import git
import git.exc

from reconciler.core.model import Owner
from reconciler.errors import RemoteUnavailable, SourceError, state_dir_error
from reconciler.state.private import private_dir
from reconciler.telemetry.log import warn_on_stderr
from reconciler.telemetry.scrub import MASK, redact_url

T = TypeVar("T")

_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")
# What GitPython and gitdb raise for a repository they cannot read: a corrupt or missing object
# (ValueError "SHA could not be resolved", BadObject), a failed git command, a vanished directory.
_UNREADABLE = (git.exc.GitError, git.exc.ODBError, ValueError, OSError)
_FETCHED = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
_SYMLINK = 0o120000  # a tree entry's mode for a symlink
_MAX_LINKS = 40  # as the kernel's MAXSYMLINKS
LOCAL_TAGS = "refs/reconciler/tags/"  # tags written into a mirror: out of reach of the fetch's --prune


# What git says when the remote refuses the credentials (or asks for some it was not given): a human's to fix.
_REFUSED = (
    "Authentication failed",
    "could not read Username",
    "could not read Password",
    "terminal prompts disabled",
    "returned error: 401",
    "returned error: 403",
    "Invalid username or password",
    "Permission denied (publickey",
    "Permission denied, please try again",
)
# A credential helper in the shell that git runs: it answers only for the URL's protocol and host (not for a
# redirect elsewhere), from the environment of the git process; git appends its action (get, store, erase).
_HELPER = (
    '!f() { test "$1" = get || return 0; p= h=;'
    ' while read -r line && test -n "$line"; do case "$line" in'
    ' protocol=*) p="${line#protocol=}";; host=*) h="${line#host=}";; esac; done;'
    ' test "$p" = "$RECONCILE_GIT_PROTOCOL" && test "$h" = "$RECONCILE_GIT_HOST" || return 0;'
    ' test -z "${RECONCILE_GIT_USERNAME+x}" || printf "username=%s\\n" "$RECONCILE_GIT_USERNAME";'
    ' test -z "${RECONCILE_GIT_PASSWORD+x}" || printf "password=%s\\n" "$RECONCILE_GIT_PASSWORD"; }; f'
)
_HTTP = ("http", "https")


@dataclass(frozen=True)
class _Remote:
    """A remote URL as git is given it: ``url`` holds no password (it is what a mirror's config keeps);
    ``env`` gives git the credentials, through a credential helper, in the environment of its process."""

    url: str
    env: dict[str, str] = field(default_factory=dict, repr=False)
    password: str = field(default="", repr=False)  # as written in the URL: what must not be on the disk

    @classmethod
    def of(cls, given: str) -> _Remote:
        try:
            parts = urllib.parse.urlsplit(given)
            user, password = parts.username, parts.password
        except ValueError:  # not a URL urllib can read: git is given it as it is
            return cls(given, _git_config([]))
        if "@" not in parts.netloc or (password is None and parts.scheme not in _HTTP):
            return cls(given, _git_config([]))
        userinfo, _, host = parts.netloc.rpartition("@")
        # An http(s) user is a credential too (a token as the user name); elsewhere (ssh) it says who logs in.
        keep = "" if parts.scheme in _HTTP else f"{userinfo.split(':', 1)[0]}@"
        url = urllib.parse.urlunsplit(parts._replace(netloc=keep + host))
        fill: dict[str, str] = {}
        if parts.scheme in _HTTP and user is not None:
            fill["RECONCILE_GIT_USERNAME"] = urllib.parse.unquote(user)
        if password is not None:
            fill["RECONCILE_GIT_PASSWORD"] = urllib.parse.unquote(password)
        if any("\n" in value or "\r" in value for value in fill.values()):
            raise SourceError(f"{redact_url(given)}: a user or password with a line break cannot be given to git")
        env = _git_config([("credential.helper", ""), ("credential.helper", _HELPER)])  # "": only ours answers
        env |= fill | {
            "RECONCILE_GIT_PROTOCOL": parts.scheme,
            "RECONCILE_GIT_HOST": host,  # as git says it: the text of the URL
            "GIT_TERMINAL_PROMPT": "0",  # refused credentials are an error to report, not a prompt on a tty
        }
        return cls(url, env, password or "")


def _git_config(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Config for the git processes of a mirror, in their environment (``GIT_CONFIG_*``: never on a command
    line that ``ps`` shows, never in a file), after what the environment already gives; a mirror is made
    private (a clone writes ``core.sharedRepository`` into the mirror's config, which keeps it so)."""
    given = os.environ.get("GIT_CONFIG_COUNT", "")
    base = int(given) if given.isdigit() else 0
    pairs = [("core.sharedRepository", "0600"), *pairs]
    env = {"GIT_CONFIG_COUNT": str(base + len(pairs))}
    for number, (key, value) in enumerate(pairs, start=base):
        env[f"GIT_CONFIG_KEY_{number}"] = key
        env[f"GIT_CONFIG_VALUE_{number}"] = value
    return env


def _refusal(where: str, exc: BaseException) -> SourceError | None:
    """A ``SourceError`` when git failed because the remote refused the credentials (or wanted some)."""
    said = redact_url(_first_line(exc))
    if not any(marker in said for marker in _REFUSED):
        return None
    return SourceError(f"{where} refused the credentials ({said}): check the user and password (or key) of --repo")


class _Unreadable(Exception):
    """Objects of the repository cannot be read: its message is the user's line."""


def _corrupt(display: str, what: str) -> str:
    return f"{display}: {what} is unreadable (the repository is corrupt: git fsck)"


@dataclass(frozen=True)
class _Pushed:
    """One ref's line of ``git push --porcelain``: ``FLAG<TAB>FROM:TO<TAB>SUMMARY (REASON)``."""

    flag: str  # " " fast-forward, "+" forced, "-" deleted, "*" new, "=" up to date, "!" refused
    to: str
    summary: str  # "[rejected]", "[remote rejected]", "[remote failure]", or what was done
    reason: str  # "non-fast-forward", "fetch first", "pre-receive hook declined", ... ("" without one)

    def shown(self, sha: str) -> str:
        """As git's own human line says it: ``[remote rejected] SHA -> main (pre-receive hook declined)``."""
        to = self.to.removeprefix("refs/heads/").removeprefix("refs/tags/")
        return f"{self.summary} {sha} -> {to}" + (f" ({self.reason})" if self.reason else "")


_PORCELAIN = re.compile(r"^([ +\-*=!])\t[^\t]*:([^\t]+)\t(\[[^\]]+\]|\S+)(?: \((.*)\))?$")


def _pushed(exc: git.exc.GitCommandError) -> list[_Pushed]:
    """The ref lines of a failed ``git push --porcelain`` (none when it failed before it pushed anything)."""
    found = (_PORCELAIN.match(line.rstrip("\r")) for line in _output(exc, "stdout").splitlines())
    return [_Pushed(m.group(1), m.group(2), m.group(3), m.group(4) or "") for m in found if m]


def _output(exc: git.exc.GitCommandError, stream: str) -> str:
    """What the failed command wrote on ``stream`` ("stdout" or "stderr"), as it wrote it: GitPython keeps
    it as ``\n  stderr: '...'``."""
    text = str(getattr(exc, stream) or "").strip().removeprefix(f"{stream}:").strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        text = text[1:-1]
    return text


def is_url(repo: str) -> bool:
    """``https://…``, ``ssh://…``, ``file://…`` or ``user@host:path`` (scp-like) is a remote URL."""
    return "://" in repo or bool(_SCP_LIKE.match(repo))


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, git.exc.GitCommandError):
        lines = [line.strip() for line in _output(exc, "stderr").splitlines() if line.strip()]
        # git says what went wrong on its first fatal:/error: line; the lines after it are advice.
        first = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[0] if lines else "")
        return first.removeprefix("fatal: ").removeprefix("error: ") or f"git exited {exc.status}"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass
class Source:
    """An opened repository; ``display`` is what the user named (path or URL)."""

    repo: git.Repo
    display: str
    mirrored: bool = False
    warn: Callable[[str], None] = warn_on_stderr  # told when a broken mirror is cloned again
    _roots: dict[str, str] = field(default_factory=dict, repr=False)
    # The trees of the last commit read by ``read_inside``, by folder: a commit's SOPS files are read together.
    _trees: tuple[str, dict[str, Any]] = field(default=("", {}), repr=False)

    def fetch(self) -> None:
        """Bring a mirror up to date with its remote (no-op for a local repository)."""
        if not self.mirrored:
            return
        if not Path(self.repo.git_dir).is_dir():
            self._reclone("is missing (the state directory was removed?)")
            return
        try:
            # FETCH_HEAD is written under the umask, not core.sharedRepository: made private so.
            self.repo.git.execute(["git", "fetch", "--prune", "--force", "origin", *_FETCHED], umask=0o077)
        except _UNREADABLE as exc:
            shown = f"git remote {redact_url(self.display)}"
            refused = _refusal(shown, exc)
            if refused is not None:
                raise refused from None
            if not _answers(self.display):
                raise RemoteUnavailable(f"{shown} does not answer: {redact_url(_first_line(exc))}") from None
            # The remote answers, so the mirror is what fails: its objects or refs are damaged.
            self._reclone(f"cannot be fetched into ({_first_line(exc)})")

    def _mended(self, work: Callable[[], T]) -> T:
        """``work()``; in a mirror that is missing or unreadable, once more after cloning it again."""
        if self.mirrored and not Path(self.repo.git_dir).is_dir():
            self._reclone("is missing (the state directory was removed?)")
        try:
            return work()
        except _Unreadable as exc:
            if not self.mirrored:
                raise SourceError(str(exc)) from None
            self._reclone(f"is corrupt ({exc})")
        try:
            return work()
        except _Unreadable as exc:
            raise SourceError(str(exc)) from None

    def _reclone(self, why: str) -> None:
        """Move the mirror aside and clone it again, keeping the tags this host wrote into it."""
        path = Path(self.repo.git_dir)
        self.repo.close()
        self.repo = _reclone(self.display, path, why, self.warn)

    def resolve(self, ref: str = "HEAD") -> str:
        """The full sha that ``ref`` names (in a mirror, a tag this host wrote wins over the remote's)."""
        return self._mended(lambda: self._resolve(self._local_tag(ref) or ref))

    def _resolve(self, ref: str) -> str:
        try:
            return str(self.repo.commit(ref).hexsha)
        except _UNREADABLE:
            pass
        # The ref may exist while the commit it names cannot be read: a corrupt repository, not a typo.
        try:
            sha = str(self.repo.git.rev_parse("--verify", "--quiet", ref))
        except _UNREADABLE:
            raise SourceError(f"{self.display}: ref {ref!r} not found") from None
        try:
            kind = str(self.repo.git.cat_file("-t", sha))
        except _UNREADABLE:
            raise _Unreadable(_corrupt(self.display, f"commit {sha[:8]}")) from None
        raise SourceError(f"{self.display}: ref {ref!r} names a {kind}, not a commit")

    def _local_tag(self, ref: str) -> str | None:
        """``refs/reconciler/tags/NAME`` of a mirror, when ``ref`` is tag NAME and this host wrote it."""
        if not self.mirrored or ref == "HEAD" or ref.startswith(LOCAL_TAGS):
            return None
        name = ref.removeprefix("refs/tags/")
        if name != ref or "/" not in ref:
            try:
                self.repo.git.rev_parse("--verify", "--quiet", LOCAL_TAGS + name)
            except _UNREADABLE:
                return None
            if name == ref and _ref_exists(self.repo, f"refs/heads/{name}"):
                return None  # a bare name that is also a branch: git's rules, the branch
            return LOCAL_TAGS + name
        return None

    def read(self, sha: str, path: str) -> bytes:
        """The bytes of ``path`` at commit ``sha``."""
        return self._mended(lambda: self._read(sha, path))

    def _read(self, sha: str, path: str) -> bytes:
        try:
            blob = self.repo.commit(sha).tree / path
        except KeyError:
            raise SourceError(f"{path}: not found in commit {sha[:8]} of {self.display}") from None
        except _UNREADABLE:
            raise _Unreadable(_corrupt(self.display, f"commit {sha[:8]}")) from None
        if blob.type != "blob":
            raise SourceError(f"{path}: is not a file in commit {sha[:8]} of {self.display}")
        try:
            data: bytes = blob.data_stream.read()
        except _UNREADABLE:
            raise _Unreadable(_corrupt(self.display, f"{path} in commit {sha[:8]}")) from None
        return data

    def read_inside(self, sha: str, path: str) -> bytes:
        """The bytes of ``path`` at commit ``sha``, following symlinks of the commit only while they stay inside
        the repository: one that leads out of it (or through too many links) is a ``SourceError``."""
        return self._mended(lambda: self._read_inside(sha, path))

    def _tree(self, sha: str, folder: list[str]) -> Any:
        """The tree of ``folder`` at ``sha`` (a KeyError when there is none), parsed once per commit."""
        if self._trees[0] != sha:
            self._trees = (sha, {"": self.repo.commit(sha).tree})
        trees = self._trees[1]
        key = "/".join(folder)
        if key not in trees:
            parent = self._tree(sha, folder[:-1])
            trees[key] = parent[folder[-1]]
        return trees[key]

    def _read_inside(self, sha: str, path: str) -> bytes:
        where = f"in commit {sha[:8]} of {self.display}"
        parts = [p for p in path.split("/") if p not in ("", ".")]
        done: list[str] = []
        hops = 0
        entry: Any = None
        try:
            while parts:
                part = parts.pop(0)
                if part == "..":
                    if not done:
                        raise SourceError(f"{path}: leads outside the repository through a symlink {where}")
                    done.pop()
                    continue
                tree = self._tree(sha, done)
                if tree.type != "tree":
                    raise SourceError(f"{path}: not found {where}")
                entry = tree[part]
                if entry.type == "blob" and entry.mode == _SYMLINK:
                    hops += 1
                    link = entry.data_stream.read().decode(errors="replace")
                    if link.startswith("/") or hops > _MAX_LINKS:
                        raise SourceError(f"{path}: leads outside the repository through a symlink {where}")
                    parts = [p for p in link.split("/") if p not in ("", ".")] + parts
                    continue
                done.append(part)
            if entry is None or entry.type != "blob":
                raise SourceError(f"{path}: is not a file {where}")
            data: bytes = entry.data_stream.read()
        except KeyError:
            raise SourceError(f"{path}: not found {where}") from None
        except _UNREADABLE:
            raise _Unreadable(_corrupt(self.display, f"{path} in commit {sha[:8]}")) from None
        return data

    def author(self, sha: str) -> str:
        """``Name <email>`` of the commit's author ("" when it cannot be read)."""
        try:
            person = self.repo.commit(sha).author
        except _UNREADABLE:
            return ""
        return f"{person.name} <{person.email}>"

    def close(self) -> None:
        self.repo.close()

    @property
    def git_dir(self) -> str:
        """The repository's git directory (``.git`` of a clone, the repository itself when bare)."""
        return str(self.repo.git_dir)

    @property
    def bare(self) -> bool:
        """No working tree: a mirror or a bare repository."""
        return bool(self.repo.bare)

    def default_remote(self) -> str | None:
        """The name of the repository's first remote; None when it has none."""
        remotes = self.repo.remotes
        return str(remotes[0].name) if remotes else None

    # -- writing: commits, branches, tags, pushes ------------------------------------------------

    def _git(self, *args: str, env: dict[str, str] | None = None) -> str:
        try:
            return str(self.repo.git.execute(["git", *args], env=env))
        except _UNREADABLE as exc:
            raise SourceError(f"git {args[0]}: {_first_line(exc)}") from None

    def identity_env(self) -> dict[str, str]:
        """Author and committer: the repository's git config, else ``reconciler`` (CI has none)."""
        env = dict(os.environ)
        try:
            self.repo.git.config("user.email")
        except git.exc.GitCommandError:
            for role in ("AUTHOR", "COMMITTER"):
                env.setdefault(f"GIT_{role}_NAME", "reconciler")
                env.setdefault(f"GIT_{role}_EMAIL", f"reconciler@{socket.gethostname()}")
        return env

    def branch(self) -> str:
        """The checked-out branch (HEAD's), for a clone or a bare repository."""
        try:
            return str(self.repo.git.symbolic_ref("--short", "HEAD"))
        except git.exc.GitCommandError:
            raise SourceError(f"{self.display}: HEAD is detached; check out a branch first") from None

    def signs(self) -> bool:
        """Whether commits made here are signed: the repository's ``commit.gpgsign`` (git's own setting, with
        ``gpg.format`` and ``user.signingkey`` saying how), which ``commit-tree`` does not read by itself."""
        try:
            return str(self.repo.git.config("--type=bool", "--get", "commit.gpgsign")).strip() == "true"
        except git.exc.GitCommandError:
            return False

    def commit_file(self, *, base: str, path: str, content: bytes, message: str) -> str:
        """A new commit on top of ``base`` whose only change is ``path`` := ``content``; no ref moves. Signed
        when the repository says commits are (``signs``)."""
        with tempfile.TemporaryDirectory(prefix="reconciler-index-") as tmp:
            env = {**self.identity_env(), "GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self._git("read-tree", base, env=env)
            listed = self._git("ls-tree", base, "--", path, env=env).split()
            mode = listed[0] if listed else "100644"
            staged = Path(tmp) / "content"
            staged.write_bytes(content)
            blob = self._git("hash-object", "-w", "--path", path, str(staged), env=env)
            self._git("update-index", "--add", "--cacheinfo", f"{mode},{blob.strip()},{path}", env=env)
            tree = self._git("write-tree", env=env).strip()
            sign = ["-S"] if self.signs() else []
            return self._git("commit-tree", *sign, tree, "-p", base, "-m", message, env=env).strip()

    def is_dirty(self, path: str) -> bool:
        return not self.repo.bare and self.repo.is_dirty(index=True, working_tree=True, path=path)

    def advance(self, branch: str, old: str, new: str) -> None:
        """Move ``branch`` from ``old`` to ``new`` (a descendant); a clone's checkout follows."""
        if not self.repo.bare and self.branch() == branch:
            self._git("reset", "--keep", new)
        else:
            self._git("update-ref", f"refs/heads/{branch}", new, old)

    def upstream(self, branch: str) -> tuple[str, str]:
        """(remote, branch) that ``branch`` tracks; ``origin`` and the same name when it tracks nothing."""
        try:
            remote = str(self.repo.git.config(f"branch.{branch}.remote"))
            merge = str(self.repo.git.config(f"branch.{branch}.merge")).removeprefix("refs/heads/")
            return remote, merge
        except git.exc.GitCommandError:
            if not self.repo.remotes:
                raise SourceError(f"{self.display}: no remote to push to (git remote add origin URL)") from None
            return self.repo.remotes[0].name, branch

    def push(self, remote: str, sha: str, ref: str, *, force: bool = False) -> bool:
        """Push ``sha`` to ``ref`` on ``remote``; False when refused because the remote moved on.

        What happened to the ref is read from ``git push --porcelain`` (its flag and summary), not from
        the human text on stderr: ``!`` with ``[rejected]`` is a remote that moved on, ``[remote rejected]``
        a hook or a protected branch (a human has to look), any other failure the remote's trouble."""
        try:
            self.repo.git.push("--porcelain", *(["--force"] if force else []), remote, f"{sha}:{ref}")
        except git.exc.GitCommandError as exc:
            denied = _refusal(f"git push to {remote}", exc)
            if denied is not None:
                raise denied from None
            refused = next((line for line in _pushed(exc) if line.flag == "!"), None)
            if refused is not None and refused.summary == "[remote rejected]":
                text = str(exc.stderr or "")
                said = [found.group(1).strip() for found in re.finditer(r"remote:(.*)", text) if found.group(1).strip()]
                because = f" (the remote said: {' / '.join(said)})" if said else ""
                raise SourceError(f"git push to {remote} refused: {refused.shown(sha)}{because}") from None
            if refused is not None and refused.summary == "[rejected]":
                return False  # non-fast-forward, fetch first: the remote moved on
            raise RemoteUnavailable(f"git push to {remote}: {_first_line(exc)}") from None
        return True

    def fetch_branch(self, remote: str, branch: str) -> str:
        """Fetch ``branch`` of ``remote``; its tip."""
        try:
            self.repo.git.fetch(remote, f"refs/heads/{branch}")
        except git.exc.GitCommandError as exc:
            refused = _refusal(f"git fetch {remote}", exc)
            if refused is not None:
                raise refused from None
            raise RemoteUnavailable(f"git fetch {remote}: {_first_line(exc)}") from None
        return self.resolve("FETCH_HEAD")

    def push_tags(self, remote: str, tags: list[str]) -> None:
        """Push ``tags`` to ``remote``, moving them there too (a stable tag is meant to move)."""
        here = LOCAL_TAGS if self.mirrored else "refs/tags/"
        # A mirror's remote is a push mirror too (``remote.NAME.mirror``), which takes no refspec: to its URL.
        to = _Remote.of(self.display).url if self.mirrored else remote
        try:
            self.repo.git.push("--force", to, *(f"{here}{tag}:refs/tags/{tag}" for tag in tags))
        except _UNREADABLE as exc:
            refused = _refusal(f"git push to {remote}", exc)
            if refused is not None:
                raise refused from None
            raise RemoteUnavailable(f"git push to {remote}: {_first_line(exc)}") from None

    def revert_commit(self, sha: str) -> None:
        """``git revert --no-edit sha`` on the checkout; a conflict is undone and reported."""
        try:
            self.repo.git.execute(["git", "revert", "--no-edit", sha], env=self.identity_env())
        except git.exc.GitCommandError as exc:
            with contextlib.suppress(git.exc.GitCommandError):
                self.repo.git.revert("--abort")
            raise SourceError(f"git revert {sha[:8]}: {_first_line(exc)}") from None

    def set_ref(self, ref: str, sha: str) -> None:
        self._git("update-ref", ref, sha)

    def is_ancestor(self, older: str, newer: str) -> bool:
        try:
            self.repo.git.merge_base("--is-ancestor", older, newer)
        except git.exc.GitCommandError:
            return False
        return True

    def tag(self, name: str, sha: str) -> None:
        """Move tag ``name`` to ``sha``; in a mirror, under ``refs/reconciler/tags/`` (the fetch prunes
        ``refs/tags/`` to what the remote has)."""
        if self.mirrored:
            self._git("update-ref", LOCAL_TAGS + name, sha)
        else:
            self._git("tag", "-f", name, sha)

    def history(self, ref: str, path: str, *, limit: int = 200) -> list[tuple[str, float, str]]:
        """(sha, commit time, author) of the commits that changed ``path``, newest first."""
        try:
            commits = list(self.repo.iter_commits(ref, paths=path, max_count=limit))
            return [(c.hexsha, float(c.committed_date), f"{c.author.name} <{c.author.email}>") for c in commits]
        except _UNREADABLE:
            return []

    def identity(self, ref: str, revision: str, file: str) -> Owner:
        """Who deploys from ``ref`` (resolved to ``revision``): the repository (its first-parent root
        commit, and where it lives), the branch, the file. What a container's source labels hold."""
        if ref.startswith("refs/heads/"):
            branch = ref.removeprefix("refs/heads/")
        elif ref != "HEAD" and any(head.name == ref for head in self.repo.heads):
            branch = ref
        else:  # HEAD, a tag or a sha: the branch that HEAD is on, if any
            try:
                branch = self.branch()
            except SourceError:
                branch = ""
        here = os.path.realpath(self.repo.working_tree_dir or self.repo.git_dir)
        location = redact_url(self.display) if self.mirrored else here
        return Owner(root=self._root(revision), location=location, branch=branch, file=file)

    def _root(self, revision: str) -> str:
        """The root commit of ``revision``'s first-parent history; a commit's history never changes, so
        the agent, which asks every pass, walks it once per commit."""
        if revision not in self._roots:
            try:
                roots = str(self.repo.git.rev_list("--first-parent", "--max-parents=0", revision)).split()
            except git.exc.GitCommandError:
                return ""
            self._roots[revision] = roots[-1] if roots else ""
        return self._roots[revision]


def _mirror_path(url: str, state_dir: Path) -> Path:
    """Where the mirror of ``url`` lives: named by the URL that git is given, so a new password keeps it."""
    return _legacy_mirror_path(_Remote.of(url).url, state_dir)


def _legacy_mirror_path(url: str, state_dir: Path) -> Path:
    """Where the mirror of ``url`` lived before its credentials were kept out of it (named by all of it)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", url.rsplit("/", 1)[-1].removesuffix(".git"))[:40] or "repo"
    return state_dir / "mirrors" / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:10]}.git"


def _answers(url: str) -> bool:
    """True when the remote lists its refs: then a failed fetch is the mirror's fault, not the remote's."""
    remote = _Remote.of(url)
    command = git.cmd.Git()
    command.update_environment(**remote.env)
    try:
        command.ls_remote("--heads", remote.url, kill_after_timeout=60)
    except _UNREADABLE:
        return False
    return True


def _ref_exists(repo: git.Repo, ref: str) -> bool:
    try:
        repo.git.rev_parse("--verify", "--quiet", ref)
    except _UNREADABLE:
        return False
    return True


def _clone(url: str, path: Path) -> git.Repo:
    """``git clone --mirror``, private, its config without the URL's credentials; nothing is left at
    ``path`` when it fails."""
    remote = _Remote.of(url)
    _private_mirrors(path)
    try:
        cloned = git.Repo.clone_from(remote.url, str(path), mirror=True, env=remote.env)
    except _UNREADABLE as exc:
        shutil.rmtree(path, ignore_errors=True)
        shown = f"git remote {redact_url(url)}"
        raise _refusal(shown, exc) or RemoteUnavailable(
            f"{shown} does not answer: {redact_url(_first_line(exc))}"
        ) from None
    cloned.git.update_environment(**remote.env)
    return cloned


def _private_mirrors(path: Path) -> None:
    """The state directory and its ``mirrors`` folder, made (or narrowed to) 0700."""
    try:
        private_dir(path.parent.parent)
        private_dir(path.parent)
    except OSError as exc:
        raise state_dir_error(path.parent.parent, exc) from None


def _open_mirror(url: str, path: Path) -> git.Repo:
    """The mirror at ``path``, its git processes given the credentials; one written by an older version (its
    config holds the URL with the password, its files are readable by others) is brought up to date."""
    remote = _Remote.of(url)
    opened = git.Repo(str(path))
    opened.git.update_environment(**remote.env)
    with contextlib.suppress(*_UNREADABLE, configparser.Error):  # a config git cannot read: the fetch says so
        reader = opened.config_reader("repository")
        stale_url = reader.get_value('remote "origin"', "url", default="") != remote.url
        open_to_all = not any(option.lower() == "sharedrepository" for option in reader.options("core"))
        if stale_url or open_to_all:
            with opened.config_writer("repository") as writer:
                writer.set_value('remote "origin"', "url", remote.url)
                writer.set_value("core", "sharedRepository", "0600")
            _make_private(path)  # the config written again too (under the umask)
    return opened


def _make_private(root: Path) -> None:
    """Take group and other permissions off everything under ``root`` (a mirror made by an older version)."""
    for folder, _, files in os.walk(root):
        for name in (folder, *(os.path.join(folder, file) for file in files)):
            with contextlib.suppress(OSError):
                os.chmod(name, os.stat(name).st_mode & 0o700)


def _forget_credentials(config: Path, url: str) -> None:
    """The config of a mirror moved aside (one an older version wrote), with the URL git is given in place of
    ``url`` and no password left in it (changed as text: git may not read it any more), made private."""
    remote = _Remote.of(url)
    if remote.url == url:
        return
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = config.read_text()
        kept = text.replace(url, remote.url)
        if remote.password:
            kept = kept.replace(remote.password, MASK)
        if kept != text:
            config.write_text(kept)
            _make_private(config.parent)


def _reclone(url: str, path: Path, why: str, warn: Callable[[str], None]) -> git.Repo:
    """Move the mirror at ``path`` aside (``.corrupt-TIMESTAMP``) and clone ``url`` there again; the tags
    this host wrote into it (``refs/reconciler/tags/``) are carried over when their commits came back."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    local: list[str] = []
    if path.exists():
        with contextlib.suppress(*_UNREADABLE):
            listed = git.Repo(str(path)).git.for_each_ref("--format=%(objectname) %(refname)", LOCAL_TAGS)
            local = [line for line in str(listed).splitlines() if line.strip()]
        try:
            path.rename(aside)
        except OSError as exc:
            raise state_dir_error(path.parent.parent, exc) from None
        _forget_credentials(aside / "config", url)
    cloned = _clone(url, path)
    for line in local:
        sha, ref = line.split(" ", 1)
        with contextlib.suppress(*_UNREADABLE):
            cloned.git.update_ref(ref, sha)
    where = f"moved aside to {aside.name} and" if aside.exists() else ""
    warn(f"mirror {path} of {redact_url(url)} {why}: {where} cloned again".replace(":  cloned", ": cloned"))
    return cloned


def _forget_older(url: str, path: Path, state_dir: Path) -> None:
    """What an older version left of ``url`` with its credentials: its mirror (named by the whole URL) is moved
    to ``path`` (where opening it gives its config the URL without them), the copies it moved aside lose
    them from their config."""
    legacy = _legacy_mirror_path(url, state_dir)
    if legacy == path:  # no credentials in the URL
        return
    with contextlib.suppress(OSError):
        if legacy.is_dir() and not path.exists():
            legacy.rename(path)
        for aside in [*path.parent.glob(f"{legacy.name}.corrupt-*"), *path.parent.glob(f"{path.name}.corrupt-*")]:
            _forget_credentials(aside / "config", url)


def open_source(
    repo: str, *, state_dir: Path, fetch: bool = True, warn: Callable[[str], None] = warn_on_stderr
) -> Source:
    """Open ``repo``: a path is used as it is; a URL is mirrored under ``state_dir`` and fetched.

    A mirror that is no repository any more is moved aside and cloned again, which ``warn`` reports."""
    if not is_url(repo):
        try:
            return Source(git.Repo(repo), repo, warn=warn)
        except git.exc.NoSuchPathError:
            raise SourceError(f"{repo}: no such directory") from None
        except git.exc.InvalidGitRepositoryError:
            raise SourceError(
                f"{repo}: not a git repository (give --repo a clone, a bare repository or a URL)"
            ) from None
        except _UNREADABLE as exc:
            raise SourceError(f"{repo}: cannot be read: {_first_line(exc)}") from None
    path = _mirror_path(repo, state_dir)
    _private_mirrors(path)
    _forget_older(repo, path, state_dir)
    if not path.exists():
        return Source(_clone(repo, path), repo, mirrored=True, warn=warn)
    try:
        opened = _open_mirror(repo, path)
    except _UNREADABLE as exc:
        opened = _reclone(repo, path, f"is not a repository any more ({_first_line(exc)})", warn)
    source = Source(opened, repo, mirrored=True, warn=warn)
    if fetch:
        source.fetch()
    return source
