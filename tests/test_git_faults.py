"""What git does to reconciler: corrupt objects, a corrupt mirror, tags in a mirror, a refused revert,
a password in the repository's URL.

Real repositories corrupted by the test (an object file overwritten, a mirror's HEAD removed), a real
remote over HTTP with basic auth (``git http-backend``), real commands and real agents; each test
asserts what the user sees: the one line, the exit code, the log, the files of the state directory.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from reconciler.adapters.git import open_source
from tests.support import AppNames, ImageFactory, free_port, run_git
from tests.support.agent import World, wait_body
from tests.support.githttp import GitHttp
from tests.support.state import (
    FILE,
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

UNREADABLE = "is unreadable (the repository is corrupt: git fsck)"


def no_internal_error(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return cli(*args, forbidden=("Traceback", "internal error"))


def corrupt_object(git_dir: Path, sha: str) -> bytes:
    """Overwrite the loose object ``sha`` with bytes that do not inflate (a push of a few objects
    leaves them loose in the bare remote); its good bytes, to repair it with."""
    path = git_dir / "objects" / sha[:2] / sha[2:]
    assert path.exists(), f"{sha} is not a loose object of {git_dir}"
    good = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(b"not a zlib stream")
    return good


def test_a_corrupt_blob_of_the_file_is_one_line_from_every_command(site: Site, app_names: AppNames) -> None:
    site.commit(desired(app_yaml(app_names("web"), site.web(), "v1", free_port())))
    blob = run_git("--git-dir", site.repo, "rev-parse", f"main:{FILE}")
    corrupt_object(Path(site.repo), blob)

    for args in (("--dry-run",), ("validate",), ()):
        result = no_internal_error("--repo", site.repo, "--state-dir", site.state, *args)
        assert result.returncode == 1, show(result)
        assert UNREADABLE in result.stderr and f"{FILE} in commit" in result.stderr, show(result)
        assert len(result.stderr.strip().splitlines()) == 1, show(result)

    status = no_internal_error("status", "--repo", site.repo, "--state-dir", site.state)
    assert status.returncode == 0, show(status)  # status is what you run when something is wrong
    assert UNREADABLE in status.stdout, show(status)


def test_a_corrupt_commit_is_unreadable_not_ref_not_found(site: Site, app_names: AppNames) -> None:
    head = site.commit(desired(app_yaml(app_names("web"), site.web(), "v1", free_port())))
    corrupt_object(Path(site.repo), head)

    result = no_internal_error("--repo", site.repo, "--state-dir", site.state, "--dry-run")

    assert result.returncode == 1, show(result)
    assert f"commit {head[:8]} {UNREADABLE}" in result.stderr, show(result)
    assert "not found" not in result.stderr, show(result)
    assert not site.state.exists() or not list(site.state.glob("journal.db*")), "a dry run wrote a journal"


def test_the_agent_logs_a_corrupt_file_once_keeps_running_and_deploys_the_next_commit(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
    agent = world.agent()
    agent.wait_for("deploy.succeeded", app=app, timeout=30)
    # The next commit reaches the remote under another ref, its file is corrupted there, then main moves.
    remote = world.remote
    remote.write(FILE, desired(app_yaml(app, world.web(), "v2", port)))
    second = remote.commit("v2")
    remote.git("push", "-q", "origin", "HEAD:refs/staging/v2")
    blob = run_git("rev-parse", f"{second}:{FILE}", cwd=remote.clone_path)
    good = corrupt_object(Path(world.repo), blob)
    run_git("--git-dir", world.repo, "update-ref", "refs/heads/main", second)

    line = agent.wait_for("desired.invalid", UNREADABLE, timeout=30)
    assert second[:8] in line.raw, agent.log()
    agent.hup()
    agent.hup()
    assert body(port) == "v1"  # what runs is untouched
    mark = agent.mark()
    (Path(world.repo) / "objects" / blob[:2] / blob[2:]).write_bytes(good)  # repaired, as after git fsck
    world.commit(desired(app_yaml(app, world.web(), "v2", port)) + "# v2, committed again\n", "v2 again")

    agent.wait_for("deploy.succeeded", app=app, since=mark, timeout=30)
    wait_body(port, "v2", 10, agent)
    assert agent.alive()
    assert len(agent.events("desired.invalid", UNREADABLE)) == 1, agent.log()


def test_a_corrupt_mirror_is_moved_aside_and_cloned_again_by_the_agent(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    url = f"file://{world.repo}"
    world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
    agent = world.agent(repo=url)
    agent.wait_for("deploy.succeeded", app=app, timeout=30)
    (mirror,) = (world.state / "mirrors").glob("*.git")
    (mirror / "HEAD").unlink()  # no longer a repository
    for pack in (mirror / "objects" / "pack").glob("*"):
        pack.chmod(0o644)
        pack.write_bytes(b"garbage")

    world.commit(desired(app_yaml(app, world.web(), "v2", port)), "v2")
    agent.hup()

    reset = agent.wait_for("mirror.reset", str(mirror), timeout=30)
    assert "cloned again" in reset.message, agent.log()
    agent.wait_for("deploy.succeeded", "v2", app=app, timeout=30)
    assert agent.alive()
    assert not agent.events("remote.unreachable"), agent.log()  # the remote was never blamed
    assert list((world.state / "mirrors").glob(f"{mirror.name}.corrupt-*")), list((world.state / "mirrors").iterdir())


def test_a_corrupt_mirror_is_cloned_again_by_a_command(site: Site, images: ImageFactory, app_names: AppNames) -> None:
    images.build("web", "v1")
    site.commit(desired(app_yaml(app_names("web"), site.web(), "v1", free_port())))
    url = f"file://{site.repo}"
    assert no_internal_error("--repo", url, "--state-dir", site.state, "--dry-run").returncode == 2
    (mirror,) = (site.state / "mirrors").glob("*.git")
    (mirror / "HEAD").write_text("garbage\n")

    result = no_internal_error("--repo", url, "--state-dir", site.state, "--dry-run")

    assert result.returncode == 2, show(result)
    assert f"warning: mirror {mirror} of {url} is not a repository any more" in result.stderr, show(result)


def test_a_stable_tag_written_into_a_url_mirror_survives_the_next_fetch(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    head = site.commit(desired(app_yaml(app, site.web(), "v1", port)))
    url = f"file://{site.repo}"
    site.converge(repo=url)

    promoted = no_internal_error("--repo", url, "--state-dir", site.state, "promote", app)
    assert promoted.returncode == 0, show(promoted)
    site.commit(desired(app_yaml(app, site.web(), "v1", port)) + "# moved on\n", "the branch moves on")
    fetched = no_internal_error("--repo", url, "--state-dir", site.state, "--dry-run")  # fetches, with --prune
    assert fetched.returncode == 0, show(fetched)

    (mirror,) = (site.state / "mirrors").glob("*.git")
    for tag in ("stable", f"stable-{app}"):
        assert run_git("--git-dir", str(mirror), "rev-parse", f"refs/reconciler/tags/{tag}") == head
        at_tag = no_internal_error("--repo", url, "--state-dir", site.state, "--ref", tag, "--dry-run", "-o", "json")
        assert at_tag.returncode == 0, show(at_tag)
        assert head in at_tag.stdout, show(at_tag)
    assert run_git("--git-dir", site.repo, "tag", "--list") == ""  # not published: the remote has none


def test_a_revert_push_refused_by_a_hook_leaves_no_commit_behind(site: Site, app_names: AppNames) -> None:
    app, port = app_names("web"), free_port()
    site.commit(desired(app_yaml(app, site.web(), "v1", port)), "v1")
    bad = site.commit(desired(app_yaml(app, site.web(), "v2", port)), "v2")
    remote = site.remote
    remote.git("branch", "-q", "--set-upstream-to=origin/main", "main")
    hook = remote.bare_path / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho frozen for the release\nexit 1\n")
    hook.chmod(0o755)

    result = no_internal_error("--repo", remote.clone_path, "revert", bad, "--push")

    assert result.returncode == 1, show(result)
    assert "refused" in result.stderr and "frozen for the release" in result.stderr, show(result)
    assert len(result.stderr.strip().splitlines()) == 1, show(result)
    assert remote.head() == bad  # no revert commit left in the clone
    assert remote.git("status", "--porcelain") == ""
    assert remote.remote_head() == bad


# -- a password in the repository's URL ---------------------------------------------------------------

REFUSED = "refused the credentials"
SLACK = "slack://T0SECRETA/B0SECRETB/xoxbSecretSlackTokenC"
JSON_PASSWORD = "json-hook-password-1"


def test_a_password_in_the_repo_url_is_in_no_file_of_the_state_directory(
    site: Site, git_http: GitHttp, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    url = git_http.url("remote.git")
    site.commit(desired(app_yaml(app, site.web(), "v1", port)), "v1")
    site.converge(repo=url)  # a clone
    site.commit(desired(app_yaml(app, site.web(), "v1", port)) + "# again\n", "again")
    again = site.converge(repo=url)  # a fetch
    assert body(port) == "v1"
    assert git_http.password not in output(again), show(again)

    assert files_holding(site.state, git_http.password) == []
    assert open_to_others(site.state) == []
    for name in ("journal.db", "lock", "lock.owner"):
        assert (site.state / name).stat().st_mode & 0o777 == 0o600, name
    assert "alice:***@" in (site.state / "lock.owner").read_text()
    (mirror,) = (site.state / "mirrors").glob("*.git")
    assert run_git("--git-dir", str(mirror), "config", "remote.origin.url") == git_http.bare("remote.git")
    # The password reaches a push too, from the environment of git's process: a stable tag is published.
    source = open_source(url, state_dir=site.state)
    source.tag("stable", source.resolve("main"))
    source.push_tags("origin", ["stable"])
    source.close()
    assert run_git("--git-dir", site.repo, "rev-parse", "refs/tags/stable") == site.remote.remote_head()
    assert files_holding(site.state, git_http.password) == []


def test_a_wrong_password_is_one_user_error_naming_the_remote_without_it(site: Site, git_http: GitHttp) -> None:
    site.commit(desired())
    shown = f"git remote http://alice:***@127.0.0.1:{git_http.port}/remote.git {REFUSED} (Authentication failed"
    wrong = git_http.url("remote.git", password="not-the-password")

    for result in (site.dry_run(repo=wrong), site.reconcile(repo=wrong)):  # the clone is refused
        assert result.returncode == 1, show(result)
        assert result.stderr.startswith(f"error: {shown}"), show(result)
        assert len(result.stderr.strip().splitlines()) == 1, show(result)
        assert "not-the-password" not in output(result) and "does not answer" not in output(result), show(result)
    assert not list((site.state / "mirrors").glob("*.git"))

    right = git_http.url("remote.git")
    assert site.dry_run(repo=right).returncode == 0
    git_http.password = "a-new-password"  # the remote's password changed: the fetch is refused
    fetched = site.dry_run(repo=right)
    assert fetched.returncode == 1, show(fetched)
    assert fetched.stderr.startswith(f"error: {shown}"), show(fetched)
    assert "does not answer" not in fetched.stderr, show(fetched)


def test_a_mirror_an_older_version_wrote_with_the_password_loses_it(site: Site, git_http: GitHttp) -> None:
    site.commit(desired())
    url = git_http.url("remote.git")
    mirrors = site.state / "mirrors"
    # As an older version left it: named by the whole URL, with it in its config, readable by all, and a
    # copy of it moved aside.
    legacy = mirrors / f"remote-{hashlib.sha256(url.encode()).hexdigest()[:10]}.git"
    mirrors.mkdir(parents=True)
    run_git("clone", "-q", "--mirror", url, str(legacy))
    aside = mirrors / f"{legacy.name}.corrupt-20250101T000000Z"
    shutil.copytree(legacy, aside)
    assert files_holding(site.state, git_http.password)

    result = site.dry_run(repo=url)

    assert result.returncode == 0, show(result)
    assert files_holding(site.state, git_http.password) == []
    assert open_to_others(site.state) == []
    (mirror,) = mirrors.glob("*.git")  # the same mirror, moved: not cloned again
    assert mirror != legacy and not legacy.exists()
    assert "mirror.reset" not in output(result) and "cloned again" not in output(result), show(result)


def test_an_agent_on_a_url_with_a_password_keeps_no_secret_and_says_a_refused_password_once(
    world: World, git_http: GitHttp, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port)), "v1")
    hook = f"json://bob:{JSON_PASSWORD}@127.0.0.1:{free_port()}/hook"
    agent = world.agent("--notify", SLACK, "--notify", hook, repo=git_http.url("remote.git"))
    agent.wait_for("deploy.succeeded", app=app, timeout=60)
    secrets = (git_http.password, "T0SECRETA", "B0SECRETB", "xoxbSecretSlackTokenC", JSON_PASSWORD)

    assert files_holding(world.state, *secrets) == []
    assert open_to_others(world.state) == []
    owner = (world.state / "lock.owner").read_text()
    assert "alice:***@" in owner, owner  # (its --notify values may be past the 200 characters it keeps)

    good, git_http.password = git_http.password, "changed-on-the-remote"
    mark = agent.mark()
    agent.hup()
    line = agent.wait_for("desired.invalid", REFUSED, since=mark, timeout=30)
    assert f"git remote http://alice:***@127.0.0.1:{git_http.port}/remote.git {REFUSED}" in line.message
    agent.hup()
    agent.hup()
    assert len(agent.events("desired.invalid", since=mark)) == 1, agent.log()
    assert not agent.events("remote.unreachable"), agent.log()  # not an outage: nothing to wait for
    assert body(port) == "v1"  # what runs is untouched

    git_http.password = good  # the remote takes the URL's password again: the agent goes on
    world.commit(desired(app_yaml(app, world.web(), "v2", port)), "v2")
    agent.hup()
    agent.wait_for("deploy.succeeded", "v2", app=app, since=mark, timeout=60)
    said = "\n".join([*(line.raw for line in agent.lines), *agent.stdout])  # the log, not the test's header
    assert not [secret for secret in secrets if secret in said], said
    assert files_holding(world.state, *secrets) == []
