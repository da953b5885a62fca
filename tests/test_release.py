"""End to end: rollback and stable as commits (`set-version`, `rollback`, `revert`, `promote`, `suspend`,
`resume`, break-glass `rollback --local`, `history`).

Every test runs the real command line (`python -m reconciler`) in a real clone of a real bare "remote"
and asserts what a user sees: exit codes, the lines printed, `git log`/`git show` of the remote, the
file's bytes, what the containers serve, the engine's image tags and a real registry's manifests.

Layout of a test's world: the server side (`reconcile`, `status`, the agent) reads the bare remote,
as an agent following a branch does; the commands that write commits run in the clone, as a person or
CI does. One state directory per test holds the journal both sides share (it is the server's).
That world is conftest's `world` fixture (`World`, tests/support/agent.py: `app`, `commit_apps`, `set`, `rc`,
`ok`, `server`, `status_json`, `remote_file`, ...).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import Registry, RegistryError, free_port, run_git, state
from tests.support.agent import App, World
from tests.support.state import FILE, STRICT, body, inspect, labels, output, show

ALICE = "Alice Deployer <alice@example.invalid>"
BOB = "Bob Builder <bob@example.invalid>"


# -- helpers ---------------------------------------------------------------------------------------

# The CLI's last-resort message for an unexpected exception fails these tests too, not only a traceback.
cli = functools.partial(state.cli, forbidden=STRICT)


def label(client: Any, name: str, key: str) -> str | None:
    info = inspect(client, name)
    return None if info is None else str(labels(info).get(f"io.reconciler.{key}"))


def assert_linear_on_top(world: World, old_head: str, *, added: int = 1) -> None:
    """The remote branch is `old_head` plus `added` commits, each with one parent: nothing rewritten."""
    log = world.remote_log()
    assert all(len(parents) == 1 for _, parents, _ in log[:added]), log
    assert log[added][0] == old_head, f"{old_head[:8]} is not {added} commit(s) below the tip: {log}"
    run_git("--git-dir", world.repo, "merge-base", "--is-ancestor", old_head, "main")


def only_version_line_changed(before: str, after: str, app: str, old: str, new: str) -> None:
    """`after` is `before` with `app`'s `version: old` replaced by `version: new`, byte for byte."""
    lines = before.splitlines(keepends=True)
    start = lines.index(f"  {app}:   # {app} stays commented\n")
    index = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("version:"))
    assert lines[index] == f"    version: {old}\n", lines[index]
    lines[index] = f"    version: {new}\n"
    assert after == "".join(lines), f"--- before\n{before}--- after\n{after}"


def commit_line(result: subprocess.CompletedProcess[str]) -> str:
    """The sha the command says it committed."""
    match = re.search(r"committed ([0-9a-f]{8}) on ", result.stdout)
    assert match, show(result)
    return match[1]


# -- set-version -----------------------------------------------------------------------------------


def test_set_version_commits_one_line_and_does_not_push(world: World) -> None:
    web = world.app()
    world.app("api")
    base = world.commit_apps("first deploy", author=ALICE)
    before = world.clone_file()

    result = world.ok("set-version", web.name, "v2")

    assert f"set-version {web.name} v1 -> v2" in result.stdout, show(result)
    assert "not pushed" in result.stdout
    head = world.remote.head()
    assert head.startswith(commit_line(result))
    assert world.remote.git("log", "-1", "--format=%s%n%P", head).splitlines() == [
        f"set-version {web.name} v1 -> v2",
        base,
    ]
    assert world.remote.git("diff", "--name-only", base, head).splitlines() == [FILE]
    diff = world.remote.git("diff", "-U0", base, head).splitlines()
    assert [ln for ln in diff if ln[:1] in "+-" and ln[:3] not in ("+++", "---")] == [
        "-    version: v1",
        "+    version: v2",
    ]
    only_version_line_changed(before, world.remote.git("show", f"HEAD:{FILE}") + "\n", web.name, "v1", "v2")
    assert world.clone_file() == world.remote.git("show", f"HEAD:{FILE}") + "\n"  # the checkout follows
    assert world.remote.git("status", "--porcelain") == ""
    assert world.remote.remote_head() == base  # not pushed


def test_set_version_push_lands_on_the_remote(world: World) -> None:
    web = world.app()
    base = world.commit_apps("first deploy")

    result = world.ok("set-version", web.name, "v3", "--push")

    assert "pushed to origin/main" in result.stdout, show(result)
    assert world.remote.remote_head() == world.remote.head()
    assert_linear_on_top(world, base)
    assert world.remote_log()[0][2] == f"set-version {web.name} v1 -> v3"
    assert "version: v3\n" in world.remote_file()
    # The clone knows its branch is where the remote's is: nothing to push, nothing to pull.
    assert world.remote.git("status", "-sb").splitlines()[0] == "## main...origin/main"


def test_set_version_refuses_a_version_that_exists_nowhere(world: World) -> None:
    web = world.app()
    base = world.commit_apps("first deploy")

    result = world.rc("set-version", web.name, "v2-typo", "--push")

    assert result.returncode == 1, show(result)
    assert f"{web.image}:v2-typo" in result.stderr, show(result)
    assert result.stderr.startswith("error: "), show(result)
    assert world.remote.head() == base and world.remote.remote_head() == base


def test_set_version_accepts_a_version_only_in_the_registry_and_refuses_a_typo_there(
    world: World, registry: Registry
) -> None:
    name = world.names("web")
    local = world.images.build(name, "v1")
    registry.push(local, name, "v1")
    registry.push(world.images.build(name, "v2"), name, "v2")
    registry.delete_local(f"{registry.host}/{name}:v2")
    world.apps[name] = App(name, f"{registry.host}/{name}", free_port(), "v1")
    base = world.commit_apps("first deploy")

    typo = world.rc("set-version", name, "v3")
    assert typo.returncode == 1, show(typo)
    assert f"{registry.host}/{name}:v3" in typo.stderr, show(typo)
    assert world.remote.head() == base

    result = world.ok("set-version", name, "v2")
    assert f"set-version {name} v1 -> v2" in result.stdout


def test_set_version_of_an_unknown_app_names_the_known_ones(world: World) -> None:
    web, api = world.app(), world.app("api")
    base = world.commit_apps("first deploy")

    result = world.rc("set-version", "nope", "v2")

    assert result.returncode == 1, show(result)
    assert "nope" in result.stderr and web.name in result.stderr and api.name in result.stderr, show(result)
    assert world.remote.head() == base


def test_set_version_refuses_when_the_file_has_uncommitted_changes_and_keeps_them(world: World) -> None:
    web = world.app()
    base = world.commit_apps("first deploy")
    edited = world.clone_file().replace("init: true", "init: false", 1)
    (world.clone / FILE).write_text(edited)

    result = world.rc("set-version", web.name, "v2", "--push")

    assert result.returncode == 1, show(result)
    assert "uncommitted changes" in result.stderr, show(result)
    assert world.remote.head() == base and world.remote.remote_head() == base
    assert world.clone_file() == edited  # the person's edit is still there


# -- rollback: choosing the version ----------------------------------------------------------------


def test_rollback_without_to_lists_previous_stable_and_the_history_with_authors(world: World) -> None:
    web = world.app()
    world.app("api")
    first = world.commit_apps("v1", author=ALICE)
    second = world.commit_apps("v2", {web.name: "v2"}, author=BOB)

    result = world.rc("rollback", web.name)  # a laptop: no journal in the state directory

    assert result.returncode == 0, show(result)
    lines = result.stdout.splitlines()
    assert lines[0] == f"{web.name}: {FILE} asks for v2 @ {second[:8]}", show(result)
    assert re.search(r"--to previous\s+v1$", result.stdout, re.M), show(result)
    assert re.search(r"--to stable\s+\(none: .*no stable version", result.stdout, re.M), show(result)
    history = lines[lines.index("  versions in git history, newest first:") + 1 :]
    assert re.match(rf"^\s+v2\s+{second[:8]}\s+.*{re.escape(BOB)}$", history[0]), show(result)
    assert re.match(rf"^\s+v1\s+{first[:8]}\s+.*{re.escape(ALICE)}$", history[1]), show(result)
    assert len(history) == 2
    assert world.remote.head() == second  # listing commits nothing


def test_rollback_to_a_version_pushes_a_commit_on_top_never_a_force_push(world: World) -> None:
    web = world.app()
    world.app("api")
    world.commit_apps("v1")
    world.set(web.name, "v2")
    old_head = world.set(web.name, "v3")
    before = world.remote_file()

    result = world.ok("rollback", web.name, "--to", "v1", "--push")

    assert f"rollback {web.name} v3 -> v1" in result.stdout and "pushed to origin/main" in result.stdout, show(result)
    assert world.remote_log()[0][2] == f"rollback {web.name} v3 -> v1"
    assert_linear_on_top(world, old_head)
    assert len(world.remote_log()) == 4  # v1, v2, v3 and the rollback: the old commits are all there
    only_version_line_changed(before + "\n", world.remote_file() + "\n", web.name, "v3", "v1")
    assert world.remote.head() == world.remote.remote_head()
    assert world.remote.git("status", "-sb").splitlines()[0] == "## main...origin/main"  # in step, clean


def test_rollback_refuses_an_unknown_app_a_missing_version_and_the_current_one(world: World) -> None:
    web = world.app()
    head = world.commit_apps("v1")

    unknown = world.rc("rollback", "nope", "--to", "v1")
    missing = world.rc("rollback", web.name, "--to", "v0-never", "--push")
    same = world.rc("rollback", web.name, "--to", "v1", "--push")

    assert unknown.returncode == 1 and web.name in unknown.stderr, show(unknown)
    assert missing.returncode == 1 and f"{web.image}:v0-never" in missing.stderr, show(missing)
    assert same.returncode == 1 and "already" in same.stderr, show(same)
    assert world.remote.head() == head and world.remote.remote_head() == head


def test_rollback_to_previous_uses_the_journal_when_there_is_one_else_git_history(world: World) -> None:
    web = world.app()
    world.commit_apps("v1")
    world.converge()
    world.set(web.name, "v2")  # committed but never deployed: the journal has no v2
    world.set(web.name, "v3")
    world.converge()
    assert body(web.port) == "v3"

    laptop = world.tmp / "laptop-state"  # no journal there: git history decides
    listed = cli("--repo", world.clone, "--state-dir", laptop, "rollback", web.name)
    assert re.search(r"--to previous\s+v2$", listed.stdout, re.M), show(listed)
    assert not laptop.exists()  # a read-only look creates no state directory

    result = world.ok("rollback", web.name, "--to", "previous", "--push")

    assert f"rollback {web.name} v3 -> v1 (the previous version)" in result.stdout, show(result)
    assert world.remote_log()[0][2] == f"rollback {web.name} v3 -> v1 (the previous version)"
    assert "    version: v1\n" in world.remote_file()  # the concrete version, never "previous"
    world.converge()
    assert body(web.port) == "v1"


def test_rollback_to_stable_writes_the_concrete_version(world: World) -> None:
    web = world.app()
    world.commit_apps("v1")
    deployed = world.remote.head()
    world.converge()
    promoted = world.ok("promote", web.name)
    assert f"{web.name}: v1" in promoted.stdout and "stable" in promoted.stdout, show(promoted)
    old_head = world.set(web.name, "v2")
    world.converge()

    # A laptop without the journal finds stable from the git tag `stable-APP` in its clone.
    laptop = cli("--repo", world.clone, "--state-dir", world.tmp / "laptop", "rollback", web.name)
    assert re.search(r"--to stable\s+v1$", laptop.stdout, re.M), show(laptop)
    assert world.remote.git("rev-parse", f"refs/tags/stable-{web.name}^{{commit}}") == deployed

    result = world.ok("rollback", web.name, "--to", "stable", "--push")

    message = f"rollback {web.name} v2 -> v1 (the stable version)"
    assert message in result.stdout, show(result)
    assert world.remote_log()[0][2] == message
    assert_linear_on_top(world, old_head)
    assert "version: v1\n" in world.remote_file() and "stable" not in world.remote_file()
    world.converge()
    assert body(web.port) == "v1"


def test_rollback_every_app_to_stable_is_one_commit(world: World) -> None:
    web, api = world.app(), world.app("api")
    world.commit_apps("v1")
    world.converge()
    world.ok("promote", web.name)
    world.ok("promote", api.name)
    old_head = world.commit_apps("v2 everywhere", {web.name: "v2", api.name: "v2"})
    world.converge()
    before = world.remote_file() + "\n"

    result = world.ok("rollback", "--to", "stable", "--push")

    assert_linear_on_top(world, old_head)
    subject = world.remote_log()[0][2]
    assert subject.startswith("rollback ") and subject in result.stdout, show(result)
    for app in (web, api):
        assert f"{app.name} v2 -> v1 (the stable version)" in subject
    after = world.remote_file() + "\n"
    expected = before.replace("    version: v2\n", "    version: v1\n")
    assert after == expected
    world.converge()
    assert body(web.port) == "v1" and body(api.port) == "v1"


# -- rollback: pushing when the remote moved --------------------------------------------------------


def test_rollback_push_after_the_remote_moved_is_reapplied_on_its_tip(world: World) -> None:
    web, api = world.app(), world.app("api")
    world.commit_apps("v1")
    world.set(web.name, "v2")
    other = world.remote.clone_to(world.tmp / "colleague")
    # A colleague changes another line of the same file and pushes, after our clone was made.
    text = (other / FILE).read_text().replace(f"# {api.name} stays commented", f"# {api.name}: the API", 1)
    (other / FILE).write_text(text)
    run_git("commit", "-qam", "describe the api", cwd=other)
    run_git("push", "-q", "origin", "HEAD:main", cwd=other)
    theirs = run_git("rev-parse", "HEAD", cwd=other)

    result = world.ok("rollback", web.name, "--to", "v1", "--push")

    assert "re-applied on its tip" in result.stdout, show(result)
    log = world.remote_log()
    assert [subject for _, _, subject in log[:2]] == [f"rollback {web.name} v2 -> v1", "describe the api"]
    assert_linear_on_top(world, theirs)
    final = world.remote_file()
    assert f"# {api.name}: the API" in final  # their change is kept
    assert final.count("version: v1") == 2  # and ours is there: both apps on v1
    assert world.remote.head() == world.remote.remote_head()  # the clone is on the new tip
    assert world.remote.git("status", "-sb").splitlines()[0] == "## main...origin/main"
    assert world.clone_file() == final + "\n"


def test_rollback_push_when_the_clone_has_diverged_fails_and_pushes_nothing(world: World) -> None:
    web, api = world.app(), world.app("api")
    world.commit_apps("v1")
    world.set(web.name, "v2")
    other = world.remote.clone_to(world.tmp / "colleague")
    run_git("commit", "-q", "--allow-empty", "-m", "their commit", cwd=other)
    run_git("push", "-q", "origin", "HEAD:main", cwd=other)
    theirs = run_git("rev-parse", "HEAD", cwd=other)
    ours = world.commit_apps("our own unpushed change", {api.name: "v2"}, push=False)

    result = world.rc("rollback", web.name, "--to", "v1", "--push")

    assert result.returncode == 1, show(result)
    assert "diverged" in result.stderr, show(result)
    assert world.remote.remote_head() == theirs  # nothing pushed
    assert world.remote_log()[0][2] == "their commit"
    # Pull, then retry: the advice works only if the failed attempt left no commit of its own behind
    # (or said that it did, so that a plain `git push` is the retry).
    if world.remote.head() != ours:
        assert "committed" in output(result), f"a commit was left in the clone and not mentioned\n{show(result)}"


def test_rollback_to_a_new_branch_leaves_main_alone(world: World) -> None:
    web = world.app()
    world.commit_apps("v1")
    head = world.set(web.name, "v2")

    result = world.ok("rollback", web.name, "--to", "v1", "--branch", f"rollback/{web.name}")

    assert f"pushed to origin/rollback/{web.name}" in result.stdout, show(result)
    assert world.remote.remote_head() == head  # main on the remote is unchanged
    assert world.remote.head() == head  # and so is the clone's main, still checked out
    assert world.remote.git("symbolic-ref", "--short", "HEAD") == "main"
    log = world.remote_log(f"rollback/{web.name}")
    assert log[0][2] == f"rollback {web.name} v2 -> v1" and log[0][1] == [head]
    assert "version: v1\n" in world.remote_file(f"rollback/{web.name}")


def test_revert_of_a_deploy_commit_is_a_revert_commit_on_top(world: World) -> None:
    web = world.app()
    world.commit_apps("v1")
    v1_file = world.remote_file()
    bad = world.commit_apps(f"release {web.name} v2", {web.name: "v2"})

    result = world.ok("revert", bad, "--push")

    assert "pushed to origin/main" in result.stdout, show(result)
    sha, parents, subject = world.remote_log()[0]
    assert subject == f'Revert "release {web.name} v2"'
    assert parents == [bad]
    assert world.remote_file() == v1_file  # the file is back, byte for byte
    assert bad in world.bare_git("log", "-1", "--format=%b", sha)  # "This reverts commit <sha>."
    assert world.remote.head() == sha


# -- promote ---------------------------------------------------------------------------------------


def test_promote_records_stable_tags_the_image_and_the_commit(world: World) -> None:
    web = world.app()
    deployed = world.commit_apps("v1")
    world.converge()

    result = world.ok("promote", web.name)

    assert f"{web.name}: v1" in result.stdout and deployed[:8] in result.stdout, show(result)
    mine = next(app for app in world.status_json()["apps"] if app["app"] == web.name)
    assert mine["stable"] == "v1"
    assert re.search(rf"^{re.escape(web.name)}: .*stable v1$", world.status_text(), re.M)
    v1_id = world.client.images.get(f"{web.image}:v1").id
    assert world.client.images.get(f"{web.image}:stable").id == v1_id
    for tag in ("stable", f"stable-{web.name}"):
        assert world.remote.git("rev-parse", f"refs/tags/{tag}^{{commit}}") == deployed
    assert "stable" not in world.bare_git("tag", "--list")  # not published without --publish


def test_promote_publish_pushes_the_image_and_the_git_tags(world: World, registry: Registry) -> None:
    name = world.names("web")
    registry.push(world.images.build(name, "v1"), name, "v1")
    world.apps[name] = App(name, f"{registry.host}/{name}", free_port(), "v1")
    deployed = world.commit_apps("v1")
    world.converge()

    result = world.ok("promote", name, "--publish")

    assert result.stderr == "", show(result)
    assert registry.manifest_digest(name, "stable") == registry.manifest_digest(name, "v1")
    for tag in ("stable", f"stable-{name}"):
        assert world.bare_git("rev-parse", f"refs/tags/{tag}^{{commit}}") == deployed


def test_promote_publish_to_a_registry_with_auth_uses_docker_config_and_never_prints_the_password(
    world: World, auth_registry: Registry
) -> None:
    name = world.names("web")
    registry = auth_registry
    assert registry.password is not None
    registry.push(world.images.build(name, "v1"), name, "v1")
    world.apps[name] = App(name, f"{registry.host}/{name}", free_port(), "v1")
    world.commit_apps("v1")
    world.converge()
    empty = world.tmp / "no-credentials"
    empty.mkdir()
    (empty / "config.json").write_text('{"auths": {}}\n')

    refused = world.rc("promote", name, "--publish", env={"DOCKER_CONFIG": str(empty)})

    assert refused.returncode == 1, show(refused)
    assert f"{name}: v1" in refused.stdout  # the promotion itself stands
    assert "push" in refused.stderr and f"{registry.host}/{name}:stable" in refused.stderr, show(refused)
    assert registry.password not in output(refused)
    with pytest.raises(RegistryError, match="HTTP 404"):
        registry.manifest_digest(name, "stable")

    config = registry.docker_config_dir(world.tmp)
    published = world.rc("promote", name, "--publish", env={"DOCKER_CONFIG": str(config)})

    assert published.returncode == 0, show(published)
    assert registry.password not in output(published)
    assert registry.manifest_digest(name, "stable") == registry.manifest_digest(name, "v1")


def test_the_agent_promotes_and_publishes_stable_with_publish_stable(world: World, registry: Registry) -> None:
    name = world.names("web")
    registry.push(world.images.build(name, "v1"), name, "v1")
    world.apps[name] = App(name, f"{registry.host}/{name}", free_port(), "v1", stable_after="1s")
    deployed = world.commit_apps("v1")

    agent = world.agent("--publish-stable")

    agent.wait_for("deploy.succeeded", app=name, timeout=30)
    agent.wait_for("stable.promoted", app=name, timeout=30)
    time.sleep(0.5)  # what could not be published is logged right after the promotion
    assert not agent.events("stable.unpublished"), agent.log()
    assert registry.manifest_digest(name, "stable") == registry.manifest_digest(name, "v1")
    for tag in ("stable", f"stable-{name}"):
        assert world.bare_git("rev-parse", f"refs/tags/{tag}^{{commit}}") == deployed
    mine = next(app for app in world.status_json()["apps"] if app["app"] == name)
    assert mine["stable"] == "v1"


# -- suspend / resume ------------------------------------------------------------------------------


def test_a_suspended_agent_deploys_nothing_until_resume(world: World) -> None:
    web = world.app()
    world.commit_apps("v1")
    world.converge()

    suspended = world.rc("suspend", "--reason", "incident 42")
    assert suspended.returncode == 0, show(suspended)
    text = world.status_text()
    assert "SUSPENDED" in text and "incident 42" in text, text
    assert world.status_json()["suspended"] == "incident 42"

    agent = world.agent()
    agent.wait_for("agent.suspended", "incident 42", timeout=20)
    new = world.set(web.name, "v2")
    agent.wait_for("commit.seen", new[:8], timeout=20)
    time.sleep(1.0)  # time enough for a deploy that should not happen
    assert body(web.port) == "v1", agent.log()
    assert not agent.events("deploy.succeeded"), agent.log()

    resumed = world.rc("resume")

    assert resumed.returncode == 0, show(resumed)
    agent.wait_for("deploy.succeeded", app=web.name, timeout=30)
    assert body(web.port) == "v2"
    assert "SUSPENDED" not in world.status_text()


# -- break-glass -----------------------------------------------------------------------------------


def test_break_glass_swaps_the_previous_container_back_at_once_and_suspends(world: World) -> None:
    web = world.app()
    world.commit_apps("v1")
    world.converge()
    world.set(web.name, "v2")
    world.converge()
    assert body(web.port) == "v2"
    assert label(world.client, web.name + ".prev", "version") == "v1"

    started = time.monotonic()
    result = world.rc("rollback", web.name, "--local")
    answered = body(web.port, timeout=10.0)
    took = time.monotonic() - started

    assert result.returncode == 0, show(result)
    assert answered == "v1"
    # "At once": no pull, no create, no gate wait. A bound loose enough for a loaded CI machine, tight
    # enough that waiting on the gate (or a pull) would break it; the figure itself is bench/agent.py's.
    assert took < 10.0, f"break-glass took {took:.2f}s\n{show(result)}"
    assert "suspended" in result.stdout and f"rollback {web.name} --to v1 --push" in result.stdout
    assert label(world.client, web.name + ".prev", "version") == "v2"  # kept, stopped, for the way back
    status = world.status_json()
    mine = next(app for app in status["apps"] if app["app"] == web.name)
    assert status["suspended"] and "break-glass" in status["suspended"], status
    assert (mine["desired"], mine["running"], mine["in_sync"]) == ("v2", "v1", False)
    text = world.status_text()
    assert "SUSPENDED" in text and "git still asks for v2" in text, text
    # How to get back in line: make git match, then resume.
    assert f"rollback {web.name} --to v1 --push" in text, text
    history = cli("history", "--state-dir", world.state).stdout
    assert re.search(rf"{re.escape(web.name)}\s+rollback-local\s+v2 -> v1\s+succeeded", history), history

    # Back in line: a commit that matches what runs, then resume.
    fix = world.ok("rollback", web.name, "--to", "previous", "--push")
    assert f"rollback {web.name} v2 -> v1 (the previous version)" in fix.stdout, show(fix)
    world.ok("resume")
    drift = world.server("--dry-run")
    assert drift.returncode == 0, show(drift)  # in sync: nothing to redeploy
    status = world.status_json()
    mine = next(app for app in status["apps"] if app["app"] == web.name)
    assert not status["suspended"] and mine["in_sync"] and mine["running"] == "v1", status
    assert body(web.port) == "v1"


def test_break_glass_goes_only_to_the_kept_previous_container(world: World) -> None:
    web = world.app()
    head = world.commit_apps("v1")

    result = world.rc("rollback", web.name, "--to", "v2", "--local")

    assert result.returncode == 1, show(result)
    assert "--local" in result.stderr and "previous" in result.stderr, show(result)
    assert world.remote.head() == head
    assert not world.state.exists()  # refused before anything: not even suspended


# -- history ---------------------------------------------------------------------------------------


def test_history_names_the_author_of_each_deploy_and_of_the_rollback(world: World) -> None:
    web = world.app()
    world.commit_apps("v1", author=ALICE)
    world.converge()
    world.commit_apps("v2", {web.name: "v2"}, author=BOB)
    world.converge()
    carol = {"GIT_AUTHOR_NAME": "Carol Oncall", "GIT_AUTHOR_EMAIL": "carol@example.invalid"}
    world.ok("rollback", web.name, "--to", "v1", "--push", env=carol)
    world.converge()
    assert body(web.port) == "v1"

    result = cli("history", "--state-dir", world.state, "--app", web.name)

    assert result.returncode == 0, show(result)
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    rollback, upgrade, create = lines
    assert "v2 -> v1" in rollback and "succeeded" in rollback and "by Carol Oncall <carol@example.invalid>" in rollback
    assert "v1 -> v2" in upgrade and f"by {BOB}" in upgrade
    assert "create" in create and f"by {ALICE}" in create
    entries = json.loads(cli("history", "--state-dir", world.state, "--app", web.name, "-o", "json").stdout)
    assert [entry["author"] for entry in entries] == ["Carol Oncall <carol@example.invalid>", BOB, ALICE]


def test_a_runner_without_a_git_identity_commits_as_reconciler(world: World) -> None:
    web = world.app()
    world.commit_apps("v1")
    bare_home = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(world.tmp)}

    world.ok("set-version", web.name, "v2", env=bare_home)

    assert world.remote.git("log", "-1", "--format=%an").strip() == "reconciler"


# -- completion ------------------------------------------------------------------------------------


def reconcile_script() -> Path:
    return Path(sys.executable).parent / "reconcile"


def test_show_completion_for_the_shell_it_runs_in() -> None:
    result = subprocess.run(
        # Not the last command of the string, so bash forks for it and stays its parent.
        ["bash", "-c", '"$0" --show-completion; status=$?; exit $status', str(reconcile_script())],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, show(result)
    assert "complete -o default -F _reconcile_completion reconcile" in result.stdout, show(result)
    assert "_RECONCILE_COMPLETE=complete_bash" in result.stdout


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete -o default -F _reconcile_completion reconcile"), ("zsh", "#compdef reconcile")],
)
def test_show_completion_for_a_shell_named_on_the_command_line(shell: str, marker: str) -> None:
    result = subprocess.run(
        [str(reconcile_script()), "completion", shell], capture_output=True, text=True, timeout=30, check=False
    )

    assert result.returncode == 0, show(result)
    assert marker in result.stdout, show(result)


# -- set-version's refusals, and promote of a digest-pinned app ------------------------------------


def test_set_version_refuses_a_malformed_version_in_one_line_and_commits_nothing(world: World) -> None:
    web = world.app()
    base = world.commit_apps("first deploy")
    before = world.clone_file()

    result = world.rc("set-version", web.name, "bad version!")

    assert result.returncode == 1, show(result)
    assert len([ln for ln in result.stderr.splitlines() if ln.strip()]) == 1, show(result)
    assert world.remote.head() == base and world.remote.remote_head() == base
    assert world.clone_file() == before
    assert world.remote.git("status", "--porcelain") == ""


def test_set_version_without_push_in_a_repository_without_a_remote_commits_locally(world: World) -> None:
    web = world.app()
    solo = world.tmp / "solo"
    solo.mkdir()
    run_git("init", "-q", cwd=solo)
    (solo / FILE).write_text(world.desired_text())
    run_git("add", FILE, cwd=solo)
    run_git("commit", "-q", "-m", "first deploy", cwd=solo)
    base = run_git("rev-parse", "HEAD", cwd=solo)

    result = cli("--repo", solo, "--state-dir", world.state, "set-version", web.name, "v2")

    assert result.returncode == 0, show(result)
    assert run_git("log", "-1", "--format=%s%n%P", cwd=solo).splitlines() == [f"set-version {web.name} v1 -> v2", base]
    assert "version: v2\n" in run_git("show", f"HEAD:{FILE}", cwd=solo)
    assert run_git("status", "--porcelain", cwd=solo) == ""


def test_set_version_push_refused_by_a_hook_says_so_and_the_branch_does_not_move(world: World) -> None:
    web = world.app()
    base = world.commit_apps("first deploy")
    hook = world.remote.bare_path / "hooks" / "pre-receive"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text("#!/bin/sh\necho protected\nexit 1\n")
    hook.chmod(0o755)

    result = world.rc("set-version", web.name, "v2", "--push")

    assert result.returncode == 1, show(result)
    assert "refused" in result.stderr, show(result)
    assert "pre-receive hook declined" in result.stderr, show(result)
    assert "protected" in result.stderr, show(result)  # what the hook said
    assert world.remote.head() == base, show(result)
    assert world.remote.remote_head() == base
    assert world.bare_git("rev-parse", "main") == base


def test_promote_of_an_app_pinned_by_digest_tags_the_repository_stable(world: World, registry: Registry) -> None:
    name = world.names("web")
    pushed = registry.push(world.images.build(name, "v1"), name, "v1")
    digest = registry.manifest_digest(name, "v1")
    registry.delete_local(pushed)
    image = f"{registry.host}/{name}"
    world.apps[name] = App(name, image, free_port(), digest)
    world.commit_apps("v1 by digest")
    world.converge()
    assert body(world.apps[name].port) == "v1"

    result = world.ok("promote", name)

    assert f"{name}: " in result.stdout, show(result)
    stable = world.client.images.get(f"{image}:stable")
    assert stable.id == world.client.images.get(f"{image}@{digest}").id
    assert all("@" not in tag for tag in stable.tags), stable.tags
