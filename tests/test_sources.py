"""End to end: a pass changes only the containers its own source (repository, branch, file) deployed.

The user's story (issue 7): the quick start runs `demo`; then, trying the tool on a second repository
with another state directory, `reconcile` must not remove `demo`. Each test uses the real command
line, the real engine, real git repositories and its own instance (so both "repositories" share it,
as two repos on one server share the default instance).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.support import AppNames, GitRemote, ImageFactory, free_port
from tests.support.agent import AgentProcess, World, agent_args, wait_body
from tests.support.state import (
    FILE,
    Site,
    app_yaml,
    body,
    cli,
    desired,
    inspect,
    is_running,
    labels,
    must_inspect,
    names_of,
    output,
    show,
)


def second_repo(tmp_path: Path, text: str) -> GitRemote:
    """Another repository (its own history, its own root commit) with `text` as its file."""
    other = GitRemote(tmp_path / "other")
    other.commit_file(FILE, text, "other repo")
    return other


def test_a_second_repository_does_not_remove_the_first_ones_apps(
    site: Site, images: ImageFactory, app_names: AppNames, tmp_path: Path
) -> None:
    images.build("web", "v1")
    demo, other_app = app_names("demo"), app_names("other")
    demo_port, other_port = free_port(), free_port()
    site.commit(desired(app_yaml(demo, site.web(), "v1", demo_port)))
    site.converge()
    owner = labels(must_inspect(site.client, demo))
    assert owner["io.reconciler.source.branch"] == "main"
    assert owner["io.reconciler.source.file"] == FILE
    assert owner["io.reconciler.source.location"] == str(Path(site.repo).resolve())

    other = second_repo(tmp_path, desired(app_yaml(other_app, site.web(), "v1", other_port)))
    elsewhere: list[str | Path] = ["--repo", other.url, "--state-dir", tmp_path / "state-elsewhere"]

    preview = cli(*elsewhere, "--dry-run")
    assert preview.returncode == 2, show(preview)  # the create of `other` is drift
    assert f"remove   {demo}" not in preview.stdout, show(preview)
    said = f"note: {demo}: owned by another source: {Path(site.repo).resolve()} (main) {FILE}; not removed"
    assert said in preview.stdout, show(preview)

    result = cli(*elsewhere)
    assert result.returncode == 0, show(result)
    assert said in result.stdout, show(result)
    assert is_running(inspect(site.client, demo)), "the first repository's app was touched"
    assert body(demo_port) == "v1" and body(other_port) == "v1"
    status = cli("status", *elsewhere, "-o", "json")
    assert status.returncode == 0, show(status)
    assert [app["app"] for app in json.loads(status.stdout)["apps"]] == [other_app], "status lists its own apps"

    # And the first repository, converging again, leaves the second one's app alone in turn.
    again = site.converge()
    assert f"note: {other_app}: owned by another source: {Path(other.url).resolve()} (main)" in again.stdout
    assert is_running(inspect(site.client, other_app))

    pruned = cli(*elsewhere, "--prune-foreign")
    assert pruned.returncode == 0, show(pruned)
    assert inspect(site.client, demo) is None, "--prune-foreign removes the other source's app"


def test_a_clone_moved_to_another_folder_is_the_same_source(
    site: Site, images: ImageFactory, app_names: AppNames, tmp_path: Path
) -> None:
    images.build("web", "v1")
    keep, gone = app_names("keep"), app_names("gone")
    site.commit(desired(app_yaml(keep, site.web(), "v1", free_port()), app_yaml(gone, site.web(), "v1", free_port())))
    site.converge()  # from the bare remote
    site.commit(desired(app_yaml(keep, site.web(), "v1", free_port())), "drop gone")
    moved = site.remote.clone_to(tmp_path / "moved-clone")

    result = site.converge(repo=str(moved))

    assert inspect(site.client, gone) is None, show(result)
    assert "owned by another source" not in output(result)


def test_another_branch_of_the_same_repository_is_another_source(
    site: Site, images: ImageFactory, app_names: AppNames, tmp_path: Path
) -> None:
    """Two reconcilers (two state dirs) following `main` and `other` of one repository: neither takes the
    other's containers, not even an app both files name."""
    images.build("web", "v1")
    images.build("web", "v2")
    shared, mine = app_names("shared"), app_names("mine")
    port = free_port()
    site.commit(desired(app_yaml(shared, site.web(), "v1", port)))
    site.converge()
    site.remote.git("checkout", "-q", "-b", "other")
    site.remote.write(
        FILE, desired(app_yaml(shared, site.web(), "v2", port), app_yaml(mine, site.web(), "v1", free_port()))
    )
    site.remote.commit("the other branch")
    site.remote.git("push", "-q", "origin", "other")

    result = cli("--repo", site.repo, "--ref", "other", "--state-dir", tmp_path / "state-b")

    assert result.returncode == 1, show(result)  # `shared` cannot be deployed: it is not ours
    assert f"container {shared} was deployed by another source: {Path(site.repo).resolve()} (main) {FILE}" in (
        output(result)
    ), show(result)
    assert body(port) == "v1"
    assert labels(must_inspect(site.client, shared))["io.reconciler.source.branch"] == "main"
    assert is_running(inspect(site.client, mine))
    assert names_of(site.client, shared) == {shared}


def test_containers_deployed_before_source_labels_are_ours_with_a_warning(
    site: Site, images: ImageFactory, app_names: AppNames, docker_client: Any
) -> None:
    image = images.build("web", "v1")
    old = app_names("old")
    instance = run_cli_instance()
    docker_client.containers.create(
        image,
        name=old,
        labels={
            "io.reconciler.managed": "true",
            "io.reconciler.app": old,
            "io.reconciler.instance": instance,
            "io.reconciler.version": "v1",
        },
    )
    site.commit(desired())

    preview = site.dry_run()
    assert f"remove   {old}" in preview.stdout, show(preview)
    assert f"note: {old}: deployed before containers carried their source; treated as this source's" in (
        preview.stdout
    ), show(preview)
    assert "`reconcile --relabel`" in preview.stdout

    site.converge()
    assert inspect(site.client, old) is None


def run_cli_instance() -> str:
    from tests.support.cli import test_instance

    return test_instance()


def test_relabel_redeploys_an_unlabelled_container_with_its_source(
    site: Site, images: ImageFactory, app_names: AppNames, docker_client: Any
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    site.commit(desired(app_yaml(app, site.web(), "v1", port)))
    site.converge()
    # As an older reconciler left it: the same container, without the source labels.
    info = must_inspect(site.client, app)
    docker_client.api.remove_container(app, force=True)
    kept = {k: v for k, v in labels(info).items() if not k.startswith("io.reconciler.source.")}
    docker_client.containers.run(
        info["Config"]["Image"], name=app, labels=kept, detach=True, init=True,
        ports={"8000/tcp": ("127.0.0.1", port)},
    )  # fmt: skip

    plain = site.dry_run()
    assert plain.returncode == 0 and "deployed before containers carried their source" in plain.stdout, show(plain)
    relabel = site.reconcile("--relabel")
    assert relabel.returncode == 0, show(relabel)
    assert labels(must_inspect(site.client, app))["io.reconciler.source.branch"] == "main"
    assert body(port) == "v1"
    assert "deployed before" not in site.dry_run().stdout


def test_a_url_and_a_path_of_one_repository_are_the_same_source(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    app = app_names("web")
    site.commit(desired(app_yaml(app, site.web(), "v1", free_port())))
    url = f"file://{site.repo}"
    site.converge(repo=url)
    assert labels(must_inspect(site.client, app))["io.reconciler.source.location"] == url
    # The same repository by its path is the same source (the root commit says so): nothing to prune.
    site.commit(desired(), "no apps")
    site.converge()
    assert inspect(site.client, app) is None


def test_two_agents_on_two_branches_never_take_each_others_containers(
    world: World, images: ImageFactory, app_names: AppNames, tmp_path: Path
) -> None:
    """Issue 7, 5.3: agent B (branch `other`, its own state dir, the same instance) removed agent A's
    container, `.prev` and `.failed` within 1.5 s. Now B reports and leaves them; A keeps its app."""
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    b_app, b_port = app_names("bweb"), free_port()
    world.commit(desired(app_yaml(app, world.web(), "v1", port)))
    a = world.agent()
    a.wait_for("deploy.succeeded", app=app, timeout=20)
    world.commit(desired(app_yaml(app, world.web(), "v2", port)))  # so that A has a kept .prev
    a.wait_for("deploy.succeeded", "v2", app=app, timeout=20)
    kept_before = names_of(world.client, app)
    assert f"{app}.prev" in kept_before

    world.remote.git("checkout", "-q", "-b", "other")
    world.remote.write(FILE, desired(app_yaml(b_app, world.web(), "v1", b_port)))
    world.remote.commit("the other branch")
    world.remote.git("push", "-q", "origin", "other")
    b = AgentProcess(agent_args(world.repo, tmp_path / "state-b", branch="other"), state_dir=tmp_path / "state-b")
    world.agents.append(b)
    b.start()
    b.wait_for("deploy.succeeded", app=b_app, timeout=20)
    note = b.wait_for("app.foreign", app=app, timeout=10)
    assert "owned by another source" in note.message and "(main)" in note.message, note.raw

    time.sleep(2)  # B had removed A's containers within 1.5 s
    assert names_of(world.client, app) == kept_before, b.log()
    wait_body(port, "v2", 5, a)
    assert not b.events("app.removed", app=app)
    assert not a.events("drift.healing", app=app), a.log()
