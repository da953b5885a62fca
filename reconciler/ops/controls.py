"""The user's light operations, as keyword-only functions: validate a file, read the history, and
suspend, resume or retry what the agent does.

Guarantees: ``suspend``, ``resume``, ``retry`` and ``rollout`` change only flags or failure rows of the journal in
``state_dir``, then wake the agent that runs on it (SIGHUP), so that it acts at once; each returns the
pid it woke (None: no agent runs there, the next pass acts on it). ``resume`` clears every break-glass
flag too. ``validate_file`` reads a plain file, never git. Errors are ``ReconcileError``s naming the
file or state directory; nothing is printed here, and nothing here imports docker or git.
``completion_script`` asks the command itself through typer's documented protocol (the
``_RECONCILE_COMPLETE=source_SHELL`` variable), never typer's private modules.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

from reconciler.adapters.yamlfile import parse_yaml
from reconciler.core import canary
from reconciler.core.desired import load_desired
from reconciler.core.model import DesiredState
from reconciler.errors import SourceError, UserError
from reconciler.state.journal import BREAK_GLASS, SUSPENDED, Entry, Journal
from reconciler.state.pidfile import read_pid
from reconciler.telemetry import scrub
from reconciler.trust import server_policy


def validate_file(path: Path, *, policy: Path | None = None) -> DesiredState:
    """The desired state in the plain file ``path`` (not from git), or ``InvalidDesiredState``; with a
    ``policy`` file, what it refuses is a ``PolicyViolation``."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror}") from None
    data, positions = parse_yaml(text, filename=str(path))
    scrub.remember_in(data)  # what is printed of it is scrubbed of the file's env values
    desired = load_desired(data, positions, filename=str(path))
    if policy is not None:
        server_policy.enforce(positions, str(path), desired, server_policy.load_policy(policy))
    return desired


def history(*, state_dir: Path, app: str | None = None, limit: int = 20) -> list[Entry]:
    """The newest ``limit`` rows of the journal (of ``app``, if given)."""
    journal = Journal(state_dir, create=False)
    try:
        return journal.history(app=app, limit=limit)
    finally:
        journal.close()


def wake_agent(state_dir: Path) -> int | None:
    """SIGHUP the agent on ``state_dir`` (a pass starts now); its pid, or None when none runs."""
    pid = read_pid(state_dir)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
    return pid


def suspend(*, state_dir: Path, reason: str) -> int | None:
    """The agent on ``state_dir`` changes nothing until ``resume``; ``reason`` is what status shows."""
    journal = Journal(state_dir)
    try:
        journal.set_flag(SUSPENDED, reason)
    finally:
        journal.close()
    return wake_agent(state_dir)


def resume(*, state_dir: Path) -> int | None:
    """The agent converges to git again, break-glass rollbacks included."""
    journal = Journal(state_dir)
    try:
        journal.set_flag(SUSPENDED, None)
        for app in journal.flags(BREAK_GLASS):
            journal.set_flag(BREAK_GLASS + app, None)
    finally:
        journal.close()
    return wake_agent(state_dir)


def retry(*, state_dir: Path, app: str) -> int | None:
    """Forget ``app``'s failed release so that it is tried again."""
    journal = Journal(state_dir, create=False)
    try:
        cleared = journal.clear_failures(app)
    finally:
        journal.close()
    if not cleared:
        raise UserError(f"{app}: no failed release recorded in {state_dir}; nothing to retry")
    return wake_agent(state_dir)


def rollout(*, state_dir: Path, app: str, what: str) -> tuple[canary.Rollout, int | None]:
    """Journal a promote or an abort (``core.canary.PROMOTE_ASKED``, ``ABORT_ASKED``) of ``app``'s rollout under
    way, carried out by the next pass (the agent's, woken now); the record, and the pid woken. A ``UserError``
    when ``app`` has no rollout under way."""
    journal = Journal(state_dir, create=False)
    try:
        found = {name: text for name, text in journal.flags(canary.FLAG).items()}
        if app not in found:
            under_way = ", ".join(sorted(found)) or "none"
            raise UserError(f"{app}: no rollout under way in {state_dir} (under way: {under_way})")
        record = dataclasses.replace(canary.Rollout.from_json(found[app]), asked=what)
        journal.set_flag(canary.FLAG + app, record.to_json())
    except ValueError as exc:
        raise UserError(f"{app}: its rollout's record cannot be read ({exc})") from None
    finally:
        journal.close()
    return record, wake_agent(state_dir)


COMPLETE_VAR = "_RECONCILE_COMPLETE"
# Where each shell loads completions from, and the line its rc file needs for that (typer's own places).
_COMPLETION_HOMES = {
    "bash": (".bash_completions/reconcile.sh", ".bashrc", "source ~/.bash_completions/reconcile.sh"),
    "zsh": (".zfunc/_reconcile", ".zshrc", "fpath+=~/.zfunc; autoload -Uz compinit; compinit"),
    "fish": (".config/fish/completions/reconcile.fish", "", ""),
}


def completion_script(*, shell: str) -> str:
    """Tab completion of ``reconcile`` for ``shell`` (bash, zsh, fish), as the command itself prints it."""
    env = {**os.environ, COMPLETE_VAR: f"source_{shell}"}
    done = subprocess.run(
        [sys.executable, "-m", "reconciler"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise UserError(f"no tab completion for {shell}: {(done.stderr or done.stdout).strip() or 'nothing printed'}")
    return done.stdout


def install_completion(*, shell: str, home: Path | None = None) -> Path:
    """Write the completion script where ``shell`` loads it, and the line its rc file needs; the path."""
    home = home if home is not None else Path.home()
    script, rc, line = _COMPLETION_HOMES[shell]
    target = home / script
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(completion_script(shell=shell))
        if rc:
            rc_file = home / rc
            text = rc_file.read_text() if rc_file.exists() else ""
            if line not in text:
                rc_file.write_text(text + ("" if not text or text.endswith("\n") else "\n") + line + "\n")
    except OSError as exc:
        raise UserError(f"{target}: {exc.strerror or exc}") from None
    return target
