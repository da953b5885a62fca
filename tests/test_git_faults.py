"""What git does to reconciler: corrupt objects, a corrupt mirror, tags in a mirror, a refused revert.

Real repositories corrupted by the test (an object file overwritten, a mirror's HEAD removed), real
commands and real agents; each test asserts what the user sees: the one line, the exit code, the log.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import AppNames, ImageFactory, free_port, run_git
from tests.support.agent import World, wait_body
from tests.support.state import FILE, Site, app_yaml, body, cli, desired, show

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
