"""What the disk does to the state directory: a corrupt journal, a removed directory, a read-only or
full file system; and what others may read in it: no secret, nothing but its owner's.

Real sqlite files corrupted by the test (truncated, garbage written after the first page), real
directories removed under a real agent, real tmpfs mounts made read-only or filled up (the tests run
as root, as the CI does). Each test asserts what the user sees: the one line, the exit code, the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from reconciler.state.journal import Journal
from tests.support import AppNames, ImageFactory, cli_env, free_port
from tests.support.agent import AgentProcess, World, agent_args, wait_body
from tests.support.state import (
    Site,
    app_yaml,
    body,
    cli,
    desired,
    files_holding,
    open_to_others,
    output,
    show,
)

ROOT = Path(__file__).resolve().parents[1]

READ_ONLY = "read-only file system"
FULL = "no space left on device"


def no_internal_error(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return cli(*args, forbidden=("Traceback", "internal error"))


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (unmounted at the end)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; the file, to free the space again."""
    filler = directory / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as out:
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


def journal_with_rows(state: Path, rows: int = 300) -> None:
    journal = Journal(state)
    for number in range(rows):
        journal.start(revision="a" * 40, app=f"app-{number}", action="create", to_version="v1")
    journal.close()


def garbage_after_first_page(db: Path) -> None:
    with db.open("r+b") as handle:
        handle.seek(4096)
        handle.write(os.urandom(32768))


# -- a corrupt journal ----------------------------------------------------------------------------


def test_a_journal_truncated_under_the_agent_is_moved_aside_once_and_deploys_go_on(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
    agent = world.agent()
    agent.wait_for("deploy.succeeded", app=app, timeout=30)

    os.truncate(world.state / "journal.db", 0)
    world.commit(desired(app_yaml(app, world.web(), "v2", port)), "v2")

    reset = agent.wait_for("journal.reset", timeout=30)
    assert "journal.db is corrupt" in reset.message and "moved aside" in reset.message, agent.log()
    agent.wait_for("deploy.succeeded", "v2", app=app, timeout=30)
    wait_body(port, "v2", 10, agent)
    agent.hup()
    agent.hup()
    assert len(agent.events("journal.reset")) == 1, agent.log()
    assert not agent.events("pass.crashed") and not agent.events("pass.error"), agent.log()
    assert list(world.state.glob("journal.db.corrupt-*"))
    history = world.history("--app", app)
    assert "v1 -> v2" in history.stdout, show(history)


def test_garbage_after_the_first_page_is_no_internal_error_for_status_retry_and_history(
    site: Site, app_names: AppNames
) -> None:
    site.commit(desired(app_yaml(app_names("web"), site.web(), "v1", free_port())))
    journal_with_rows(site.state)
    garbage_after_first_page(site.state / "journal.db")

    status = no_internal_error("status", "--repo", site.repo, "--state-dir", site.state)
    assert status.returncode == 0, show(status)
    assert f"warning: journal {site.state / 'journal.db'} is corrupt" in status.stderr, show(status)
    assert not list(site.state.glob("journal.db.corrupt-*"))  # status changes nothing

    retry = no_internal_error("retry", "web", "--state-dir", site.state)
    assert retry.returncode == 1, show(retry)
    assert stderr_lines(retry)[0].startswith(f"warning: journal {site.state / 'journal.db'} is corrupt")
    assert "moved aside to journal.db.corrupt-" in retry.stderr, show(retry)
    assert "no failed release recorded" in stderr_lines(retry)[1], show(retry)
    assert len(list(site.state.glob("journal.db.corrupt-*"))) == 1

    history = no_internal_error("history", "--state-dir", site.state)
    assert history.returncode == 0 and history.stderr == "", show(history)  # the new journal: empty, sound
    assert "no deploys recorded" in history.stdout, show(history)


def test_a_journal_that_is_not_a_database_is_moved_aside_by_suspend(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "journal.db").write_bytes(os.urandom(8192))

    result = no_internal_error("suspend", "--state-dir", state)

    assert result.returncode == 0, show(result)
    assert "is corrupt: moved aside to journal.db.corrupt-" in result.stderr, show(result)
    assert "suspended" in result.stdout, show(result)


# -- the state directory removed under the agent ------------------------------------------------------


def test_a_state_dir_removed_under_the_agent_is_made_again_with_its_pid_file(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
    agent = world.agent()
    agent.wait_for("deploy.succeeded", app=app, timeout=30)

    shutil.rmtree(world.state)
    world.commit(desired(app_yaml(app, world.web(), "v2", port)), "v2")

    agent.wait_for("journal.reset", "was deleted", timeout=30)
    agent.wait_for("deploy.succeeded", "v2", app=app, timeout=30)
    assert (world.state / "agent.pid").read_text().strip() == str(agent.pid)
    second = no_internal_error("agent", *agent_args(world.repo, world.state))
    assert second.returncode == 1 and f"pid {agent.pid}" in second.stderr, show(second)
    assert (world.state / "agent.pid").read_text().strip() == str(agent.pid)
    assert not agent.events("pass.crashed") and not agent.events("pass.error"), agent.log()
    assert "v2" in world.history("--app", app).stdout

    assert agent.terminate() == 0
    assert not (world.state / "agent.pid").exists()


def test_the_agent_never_removes_a_pid_file_that_is_not_its_own(world: World, app_names: AppNames) -> None:
    world.commit(desired(), "nothing yet")
    agent = world.agent()
    other = subprocess.Popen(["sleep", "60"])
    try:
        (world.state / "agent.pid").write_text(str(other.pid))  # another agent took the directory over
        agent.hup()
        line = agent.wait_for("state.error", f"pid {other.pid}", timeout=30)
        assert "one per state directory" in line.message, agent.log()

        assert agent.terminate() == 0

        assert (world.state / "agent.pid").read_text() == str(other.pid)
    finally:
        other.kill()
        other.wait()


# -- a read-only or full file system ------------------------------------------------------------------


def test_a_read_only_state_dir_is_one_line_from_every_command(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "state", "4m") as state:
        assert no_internal_error("suspend", "--state-dir", state).returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)

        for args in (("resume",), ("suspend",), ("retry", "web")):
            result = no_internal_error(*args, "--state-dir", state)
            assert result.returncode == 1, show(result)
            assert stderr_lines(result) == [
                f"error: state directory {state}: {READ_ONLY} (make it writable, or give --state-dir a directory"
                " that is); nothing that runs was changed"
            ], show(result)
        history = no_internal_error("history", "--state-dir", state)
        assert history.returncode == 0, show(history)  # reading needs no write


def test_an_agent_on_a_read_only_state_dir_logs_it_once_and_keeps_waiting(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "state", "4m") as state:
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        agent = AgentProcess(agent_args(str(tmp_path / "nowhere.git"), state), state_dir=state).start()
        try:
            agent.wait_for("agent.started", timeout=30)
            line = agent.wait_for("state.error", READ_ONLY, timeout=30)
            assert str(state) in line.message, agent.log()
            agent.hup()
            agent.hup()
            assert agent.alive(), agent.log()
            subprocess.run(["mount", "-o", "remount,rw", str(state)], check=True)
            agent.hup()
            agent.wait_for("state.recovered", timeout=30)
            assert len(agent.events("state.error")) == 1, agent.log()
            assert (state / "agent.pid").read_text() == str(agent.pid)
            assert agent.terminate() == 0
            agent.assert_clean_log()
        finally:
            agent.stop()


def test_a_full_disk_under_the_agent_is_logged_once_and_nothing_changes_until_it_clears(
    world: World, images: ImageFactory, app_names: AppNames, tmp_path: Path
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    with tmpfs(tmp_path / "small", "2m") as state:
        world.state = state
        world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
        agent = world.agent()
        agent.wait_for("deploy.succeeded", app=app, timeout=30)

        filler = fill(state)
        mark = agent.mark()
        world.commit(desired(app_yaml(app, world.web(), "v2", port)), "v2")
        line = agent.wait_for("state.error", FULL, since=mark, timeout=30)
        assert str(state) in line.message, agent.log()
        agent.hup()
        agent.hup()
        assert body(port) == "v1"  # nothing changes while nothing can be journaled
        assert not agent.events("deploy.succeeded", since=mark), agent.log()

        filler.unlink()
        agent.hup()
        agent.wait_for("state.recovered", since=mark, timeout=30)
        agent.wait_for("deploy.succeeded", "v2", app=app, since=mark, timeout=30)
        wait_body(port, "v2", 10, agent)
        assert len(agent.events("state.error", since=mark)) == 1, agent.log()
        assert agent.terminate() == 0


# -- what others may read in it -------------------------------------------------------------------------

# Holds the lock of STATE (argv[1]) as the command line after it would (``reconcile`` + argv[2:]).
HOLDER = """
import sys
from pathlib import Path
from reconciler.state.lock import locked
state = Path(sys.argv[1])
sys.argv = ["reconcile", *sys.argv[2:]]
with locked(state):
    print("held", flush=True)
    sys.stdin.readline()
"""
SECRETS = ("repo-password-1", "T0SECRETA", "B0SECRETB", "xoxbSecretSlackTokenC", "json-hook-password-2")
HOLDING = [
    "agent", "--repo", "http://alice:repo-password-1@git.example/r.git",
    "--notify", "slack://T0SECRETA/B0SECRETB/xoxbSecretSlackTokenC",
    "--notify=json://bob:json-hook-password-2@127.0.0.1:9/hook",
]  # fmt: skip
SHOWN = "(reconcile agent --repo http://alice:***@git.example/r.git --notify slack://*** --notify=json://***)"


def test_a_reconcile_refused_by_the_lock_shows_no_secret_of_the_holder_and_the_state_dir_keeps_none(
    site: Site,
) -> None:
    site.commit(desired())
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(site.state), *HOLDING],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=cli_env(),
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"

        refused = site.reconcile()

        assert refused.returncode == 1, show(refused)
        assert len(stderr_lines(refused)) == 1 and f"locked by pid {holder.pid} on " in refused.stderr, show(refused)
        assert SHOWN in refused.stderr, show(refused)
        assert not [secret for secret in SECRETS if secret in output(refused)], show(refused)
        assert files_holding(site.state, *SECRETS) == []
        assert open_to_others(site.state) == []
        for name in ("lock", "lock.owner"):
            assert (site.state / name).stat().st_mode & 0o777 == 0o600, name

        # A lock.owner that an older version wrote holds the command line as it was given: shown masked.
        owner = json.loads((site.state / "lock.owner").read_text())
        owner["command"] = " ".join(["reconcile", *HOLDING])
        (site.state / "lock.owner").write_text(json.dumps(owner))
        again = site.reconcile()
        assert again.returncode == 1 and SHOWN in again.stderr, show(again)
        assert not [secret for secret in SECRETS if secret in output(again)], show(again)
    finally:
        if holder.poll() is None:
            holder.stdin.write("\n")  # type: ignore[union-attr]
            holder.stdin.flush()  # type: ignore[union-attr]
        holder.wait(timeout=30)


def test_a_state_dir_an_older_version_left_open_is_made_private_by_the_next_command(site: Site) -> None:
    site.commit(desired())
    site.converge()
    site.state.chmod(0o755)
    for name in ("journal.db", "lock", "lock.owner"):
        (site.state / name).chmod(0o644)

    site.converge()

    assert open_to_others(site.state) == []
