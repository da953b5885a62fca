"""End to end: `reconcile` converges a real Docker engine to desired-state.yaml committed in git.

Every test runs the real command line (`python -m reconciler`) against the real engine, real git
repositories (a bare "remote" and a clone), locally built busybox images and real registries, and
asserts what a user sees: exit codes, the lines printed, the body the container serves, and what
`docker ps -a` shows. Each test has its own app names and its own state directory.

The helpers (`Site`, `app_yaml`, `cli`, ...) are in tests/support/state.py; the `site` fixture is in
tests/conftest.py.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.support import MANAGED_LABEL, AppNames, ImageFactory, Registry, free_port, http_get, run_git
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

# -- helpers -------------------------------------------------------------------------------------


def served_env(port: int) -> list[str]:
    status, text = http_get(f"http://127.0.0.1:{port}/cgi-bin/env")
    assert status == 200
    return text.splitlines()


# -- 1. first deploy, history ---------------------------------------------------------------------


def test_first_deploy_runs_the_committed_version_and_history_shows_it(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    sha = site.commit(desired(app_yaml(app, site.web(), "v1", port)), "deploy v1")

    result = site.converge()

    assert sha[:8] in result.stdout, show(result)
    assert app in result.stdout
    assert body(port) == "v1"
    info = must_inspect(site.client, app)
    assert is_running(info)
    assert labels(info)[MANAGED_LABEL] == "true"
    assert labels(info)["io.reconciler.app"] == app
    assert labels(info)["io.reconciler.commit"] == sha
    assert labels(info)["io.reconciler.version"] == "v1"
    assert names_of(site.client, app) == {app}

    text = site.history().stdout
    line = next((ln for ln in text.splitlines() if app in ln), None)
    assert line is not None, text
    assert sha[:8] in line and "create" in line and "v1" in line and "succeeded" in line

    entries = json.loads(site.history("--output", "json").stdout)
    mine = [entry for entry in entries if entry["app"] == app]
    assert len(mine) == 1, entries
    assert mine[0]["revision"] == sha
    assert mine[0]["action"] == "create"
    assert mine[0]["to_version"] == "v1"
    assert mine[0]["result"] == "succeeded"


# -- 2. upgrade, one .prev -------------------------------------------------------------------------


def test_upgrade_replaces_and_keeps_exactly_one_previous_stopped(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    for tag in ("v1", "v2", "v3"):
        images.build("web", tag)
    app, port = app_names("web"), free_port()
    site.commit(desired(app_yaml(app, site.web(), "v1", port)), "v1")
    site.converge()
    v1_id = must_inspect(site.client, app)["Id"]

    sha2 = site.commit(desired(app_yaml(app, site.web(), "v2", port)), "v2")
    result = site.converge()

    assert sha2[:8] in result.stdout, show(result)
    assert body(port) == "v2"
    current, prev = must_inspect(site.client, app), must_inspect(site.client, app + ".prev")
    assert is_running(current) and labels(current)["io.reconciler.version"] == "v2"
    assert not is_running(prev)
    assert prev["Id"] == v1_id
    assert labels(prev)["io.reconciler.version"] == "v1"
    assert prev["Image"] == images.image_id(f"{site.web()}:v1")

    site.commit(desired(app_yaml(app, site.web(), "v3", port)), "v3")
    site.converge()

    assert body(port) == "v3"
    assert names_of(site.client, app) == {app, app + ".prev"}
    prev = must_inspect(site.client, app + ".prev")
    assert labels(prev)["io.reconciler.version"] == "v2"
    assert not is_running(prev)


# -- 3. no-op ----------------------------------------------------------------------------------------


def test_second_run_changes_nothing(site: Site, images: ImageFactory, app_names: AppNames) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    sha = site.commit(desired(app_yaml(app, site.web(), "v1", port)))
    site.converge()
    before = must_inspect(site.client, app)

    again = site.converge()
    dry = site.dry_run()

    assert "in sync" in again.stdout, show(again)
    assert dry.returncode == 0, show(dry)
    assert "in sync" in dry.stdout and sha[:8] in dry.stdout
    after = must_inspect(site.client, app)
    assert after["Id"] == before["Id"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert names_of(site.client, app) == {app}
    assert body(port) == "v1"


# -- 4. the working tree never deploys ------------------------------------------------------------


def test_uncommitted_edit_in_the_clone_is_not_deployed(site: Site, images: ImageFactory, app_names: AppNames) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    clone = str(site.remote.clone_path)
    site.commit(desired(app_yaml(app, site.web(), "v1", port)))
    site.converge(repo=clone)
    before = must_inspect(site.client, app)["Id"]

    site.remote.write(FILE, desired(app_yaml(app, site.web(), "v2", port)))
    dry_unstaged = site.dry_run(repo=clone)
    site.remote.git("add", FILE)
    dry_staged = site.dry_run(repo=clone)
    applied = site.reconcile(repo=clone)

    for result in (dry_unstaged, dry_staged, applied):
        assert result.returncode == 0, show(result)
        assert "in sync" in result.stdout, show(result)
    assert must_inspect(site.client, app)["Id"] == before
    assert body(port) == "v1"


# -- 6. an unknown tag stops only its own app ---------------------------------------------------------


def test_unknown_tag_leaves_the_running_container_and_other_apps_converge(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    web, other = app_names("web"), app_names("other")
    web_port, other_port = free_port(), free_port()
    site.commit(desired(app_yaml(web, site.web(), "v1", web_port)))
    site.converge()
    before = must_inspect(site.client, web)["Id"]

    site.commit(
        desired(
            app_yaml(web, site.web(), "v9-no-such-tag", web_port),
            app_yaml(other, site.web(), "v2", other_port),
        )
    )
    dry = site.dry_run()
    result = site.reconcile()

    assert dry.returncode == 1, show(dry)
    assert f"{site.web()}:v9-no-such-tag" in dry.stdout + dry.stderr
    assert result.returncode == 1, show(result)
    problem = [ln for ln in output(result).splitlines() if "v9-no-such-tag" in ln]
    assert problem and web in problem[0], show(result)
    assert f"{site.web()}:v9-no-such-tag" in problem[0]
    info = must_inspect(site.client, web)
    assert info["Id"] == before and is_running(info)
    assert body(web_port) == "v1"
    assert body(other_port) == "v2"
    assert is_running(must_inspect(site.client, other))


# -- 7. manual changes are healed ----------------------------------------------------------------------


def test_manually_stopped_container_is_started_and_removed_one_recreated(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    site.commit(desired(app_yaml(app, site.web(), "v1", port)))
    site.converge()
    first_id = must_inspect(site.client, app)["Id"]

    site.client.api.stop(app, timeout=2)
    dry = site.dry_run()
    assert dry.returncode == 2, show(dry)
    start_line = [ln for ln in dry.stdout.splitlines() if app in ln]
    assert start_line and "start" in start_line[0], show(dry)
    assert "running" in dry.stdout
    site.converge()
    info = must_inspect(site.client, app)
    assert is_running(info) and info["Id"] == first_id
    assert body(port) == "v1"

    site.client.api.remove_container(app, force=True)
    dry = site.dry_run()
    assert dry.returncode == 2, show(dry)
    assert "create" in dry.stdout and app in dry.stdout
    site.converge()
    info = must_inspect(site.client, app)
    assert is_running(info) and info["Id"] != first_id
    assert body(port) == "v1"
    assert site.dry_run().returncode == 0


# -- 8. a container we did not create --------------------------------------------------------------


def test_foreign_container_with_the_apps_name_is_a_conflict_until_adopted(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    v1 = images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    foreign = site.client.containers.run(v1, name=app, detach=True, init=True, ports={"8000/tcp": ("127.0.0.1", port)})
    assert body(port) == "v1"
    site.commit(desired(app_yaml(app, site.web(), "v2", port)))

    dry = site.dry_run()
    result = site.reconcile()

    assert dry.returncode != 0, show(dry)
    assert result.returncode == 1, show(result)
    for run in (dry, result):
        line = [ln for ln in run.stdout.splitlines() if app in ln]
        assert line and "conflict" in line[0], show(run)
        assert "--adopt" in run.stdout
    info = must_inspect(site.client, app)
    assert info["Id"] == foreign.id and is_running(info)
    assert MANAGED_LABEL not in labels(info)
    assert body(port) == "v1"
    assert names_of(site.client, app) == {app}

    adopted = site.reconcile("--adopt")

    assert adopted.returncode == 0, show(adopted)
    assert body(port) == "v2"
    ours = must_inspect(site.client, app)
    assert ours["Id"] != foreign.id and labels(ours)[MANAGED_LABEL] == "true"
    kept = must_inspect(site.client, app + ".adopted")
    assert kept["Id"] == foreign.id and not is_running(kept)
    again = site.dry_run()
    assert again.returncode == 0 and "in sync" in again.stdout, show(again)


# -- 9. prune ------------------------------------------------------------------------------------------


def test_app_removed_from_the_file_is_pruned_but_foreign_containers_stay(
    site: Site, tmp_path: Path, images: ImageFactory, app_names: AppNames
) -> None:
    v1 = images.build("web", "v1")
    images.build("web", "v2")
    gone, kept = app_names("gone"), app_names("kept")
    gone_port, kept_port = free_port(), free_port()
    stray = site.client.containers.run(v1, name=app_names("stray"), detach=True, init=True)
    site.commit(desired(app_yaml(gone, site.web(), "v1", gone_port), app_yaml(kept, site.web(), "v1", kept_port)))
    site.converge()
    site.commit(desired(app_yaml(gone, site.web(), "v2", gone_port), app_yaml(kept, site.web(), "v1", kept_port)))
    site.converge()
    assert names_of(site.client, gone) == {gone, gone + ".prev"}
    kept_id = must_inspect(site.client, kept)["Id"]

    # Another reconciler instance on the same engine, with an app of its own, from another file.
    neighbour, neighbour_port = app_names("neighbour"), free_port()
    site.remote.commit_file("neighbour.yaml", desired(app_yaml(neighbour, site.web(), "v1", neighbour_port)), "n")
    other = cli(
        "--repo",
        site.repo,
        "--file",
        "neighbour.yaml",
        "--state-dir",
        tmp_path / "neighbour-state",
        env={"RECONCILE_INSTANCE": f"neighbour-of-{kept}"},
    )
    assert other.returncode == 0, show(other)
    neighbour_id = must_inspect(site.client, neighbour)["Id"]

    site.commit(desired(app_yaml(kept, site.web(), "v1", kept_port)), f"remove {gone}")
    dry = site.dry_run()
    result = site.converge()

    assert dry.returncode == 2, show(dry)
    assert "remove" in dry.stdout and gone in dry.stdout
    assert "remove" in result.stdout and gone in result.stdout
    assert names_of(site.client, gone) == set()
    assert must_inspect(site.client, kept)["Id"] == kept_id
    assert body(kept_port) == "v1"
    stray.reload()
    assert stray.status == "running"
    assert must_inspect(site.client, neighbour)["Id"] == neighbour_id
    assert body(neighbour_port) == "v1"
    assert neighbour not in result.stdout
    assert site.dry_run().returncode == 0


# -- 12. images from a registry ------------------------------------------------------------------------


def registry_only(images: ImageFactory, registry: Registry, repo: str, tag: str, text: str) -> str:
    """Push an image serving `text` as REGISTRY/repo:tag and delete every local copy; return its digest."""
    local = images.build("web", f"{repo.rsplit('/', 1)[-1]}-{tag}", body=text)
    pushed = registry.push(local, repo, tag)
    registry.delete_local(pushed)
    registry.delete_local(local)
    return registry.manifest_digest(repo, tag)


def local_tags(client: Any, repository: str) -> list[str]:
    return [tag for image in client.api.images(name=repository) for tag in image.get("RepoTags") or []]


def test_registry_image_dry_run_resolves_without_pulling_then_reconcile_pulls(
    site: Site, images: ImageFactory, app_names: AppNames, registry: Registry
) -> None:
    app, port = app_names("web"), free_port()
    repo = f"{images.prefix}/{app}"
    remote_repo = f"{registry.host}/{repo}"
    digest1 = registry_only(images, registry, repo, "r1", "registry r1")
    digest2 = registry_only(images, registry, repo, "r2", "registry r2")
    assert local_tags(site.client, remote_repo) == []
    site.commit(desired(app_yaml(app, remote_repo, "r1", port)))

    dry = site.dry_run()

    assert dry.returncode == 2, show(dry)
    assert local_tags(site.client, remote_repo) == [], "a dry run pulled the image"

    site.converge()

    assert body(port) == "registry r1"
    assert labels(must_inspect(site.client, app))["io.reconciler.digest"] == digest1
    assert local_tags(site.client, remote_repo) == [f"{remote_repo}:r1"]
    assert site.dry_run().returncode == 0

    site.commit(desired(app_yaml(app, remote_repo, "r2", port)))
    dry = site.dry_run()
    dry_json = site.dry_run("--output", "json")

    assert dry.returncode == 2, show(dry)
    assert "to pull" in dry.stdout and f"{remote_repo}:r2" in dry.stdout, show(dry)
    assert dry_json.returncode == 2, show(dry_json)
    changes = [c for a in json.loads(dry_json.stdout)["actions"] if a["app"] == app for c in a["changes"]]
    assert any(c["field"] == "image" and "to pull" in c["now"] for c in changes), changes
    assert local_tags(site.client, remote_repo) == [f"{remote_repo}:r1"], "a dry run pulled the image"

    site.converge()

    assert body(port) == "registry r2"
    assert labels(must_inspect(site.client, app))["io.reconciler.digest"] == digest2
    prev = must_inspect(site.client, app + ".prev")
    assert labels(prev)["io.reconciler.version"] == "r1" and not is_running(prev)


def test_private_registry_pull_uses_docker_config_and_never_prints_the_password(
    site: Site, tmp_path: Path, images: ImageFactory, app_names: AppNames, auth_registry: Registry
) -> None:
    app, port = app_names("web"), free_port()
    repo = f"{images.prefix}/{app}"
    registry_only(images, auth_registry, repo, "p1", "private")
    site.commit(desired(app_yaml(app, f"{auth_registry.host}/{repo}", "p1", port)))
    empty = tmp_path / "no-credentials"
    empty.mkdir()
    with_creds = {"DOCKER_CONFIG": str(auth_registry.docker_config_dir(tmp_path))}
    no_creds = {"DOCKER_CONFIG": str(empty)}
    assert auth_registry.password is not None
    config = json.loads((Path(with_creds["DOCKER_CONFIG"]) / "config.json").read_text())
    secrets = [auth_registry.password, config["auths"][auth_registry.host]["auth"]]

    refused_dry = site.dry_run(env=no_creds)
    refused = site.reconcile(env=no_creds)

    for run in (refused_dry, refused):
        assert run.returncode == 1, show(run)
        assert f"{auth_registry.host}/{repo}:p1" in output(run), show(run)
        assert "credentials" in output(run) or "denied" in output(run), show(run)
    assert inspect(site.client, app) is None

    dry = site.dry_run(env=with_creds)
    pulled = site.reconcile(env=with_creds)

    assert dry.returncode == 2, show(dry)
    assert pulled.returncode == 0, show(pulled)
    assert body(port) == "private"
    history = site.history().stdout + site.history("--output", "json").stdout
    for run_output in [*(output(r) for r in (refused_dry, refused, dry, pulled)), history]:
        for secret in secrets:
            assert secret not in run_output


# -- 13. --repo as a URL ----------------------------------------------------------------------------------


def test_repo_url_is_mirrored_and_follows_pushes_and_force_pushes(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    url = site.remote.bare_path.as_uri()
    assert url.startswith("file://")
    first = site.commit(desired(app_yaml(app, site.web(), "v1", port)), "v1")

    result = site.converge(repo=url)

    assert first[:8] in result.stdout and body(port) == "v1"
    mirrors = list((site.state / "mirrors").iterdir())
    assert len(mirrors) == 1, mirrors
    assert run_git("--git-dir", str(mirrors[0]), "rev-parse", "refs/heads/main") == first

    second = site.commit(desired(app_yaml(app, site.web(), "v2", port)), "v2")
    result = site.converge(repo=url)
    assert second[:8] in result.stdout and body(port) == "v2"

    site.remote.reset_hard(first)
    site.remote.push(force=True)
    dry = site.dry_run(repo=url)
    assert dry.returncode == 2 and first[:8] in dry.stdout, show(dry)
    result = site.converge(repo=url)
    assert first[:8] in result.stdout, show(result)
    assert body(port) == "v1"
    assert labels(must_inspect(site.client, app))["io.reconciler.commit"] == first


# -- 14. health gate and rollback -------------------------------------------------------------------------


def test_release_failing_its_health_gate_is_rolled_back(site: Site, images: ImageFactory, app_names: AppNames) -> None:
    images.build("web", "v1")
    images.build("web", "v2-no-health", healthy=False)
    images.build("web", "v3-crash", exit_at_start=True)
    app, port = app_names("web"), free_port()
    site.commit(desired(app_yaml(app, site.web(), "v1", port, timeout="2s")))
    site.converge()
    v1_id = must_inspect(site.client, app)["Id"]

    site.commit(desired(app_yaml(app, site.web(), "v2-no-health", port, timeout="2s")))
    result = site.reconcile()

    assert result.returncode == 1, show(result)
    assert "rolled back" in result.stdout, show(result)
    assert body(port) == "v1"
    current = must_inspect(site.client, app)
    assert current["Id"] == v1_id and is_running(current)
    failed = must_inspect(site.client, app + ".failed")
    assert not is_running(failed)
    assert labels(failed)["io.reconciler.version"] == "v2-no-health"

    site.commit(desired(app_yaml(app, site.web(), "v3-crash", port, timeout="2s")))
    result = site.reconcile()

    assert result.returncode == 1, show(result)
    assert "rolled back" in result.stdout, show(result)
    assert body(port) == "v1"
    assert must_inspect(site.client, app)["Id"] == v1_id
    failed = must_inspect(site.client, app + ".failed")
    assert labels(failed)["io.reconciler.version"] == "v3-crash" and not is_running(failed)
    assert not {n for n in names_of(site.client, app) if n.startswith(app + ".failed")} - {app + ".failed"}

    entries = json.loads(site.history("--output", "json").stdout)
    assert [e["result"] for e in entries if e["app"] == app][:2] == ["rolled-back", "rolled-back"]


# -- 15. port taken ---------------------------------------------------------------------------------------


def test_port_taken_by_something_else_fails_that_app_only(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    blocked, fine = app_names("blocked"), app_names("fine")
    fine_port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        site.commit(desired(app_yaml(blocked, site.web(), "v1", taken), app_yaml(fine, site.web(), "v1", fine_port)))

        result = site.reconcile()

        assert result.returncode == 1, show(result)
        line = [ln for ln in result.stdout.splitlines() if blocked in ln]
        assert line, show(result)
        assert "failed" in line[0] and str(taken) in line[0], show(result)
        assert "already in use" in line[0] or "already allocated" in line[0], show(result)
        assert body(fine_port) == "v1"
        assert is_running(must_inspect(site.client, fine))
        blocked_info = inspect(site.client, blocked)
        assert blocked_info is None or not is_running(blocked_info)


# -- 16. env values are never printed ---------------------------------------------------------------------


def test_env_values_never_appear_in_output_or_history(site: Site, images: ImageFactory, app_names: AppNames) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    old, new = "s3cr3t-value", "an0ther-s3cr3t"
    site.commit(desired(app_yaml(app, site.web(), "v1", port, env={"SECRET": old})))
    first = site.converge()
    assert "SECRET=" + old in served_env(port)

    site.commit(desired(app_yaml(app, site.web(), "v1", port, env={"SECRET": new})))
    dry = site.dry_run()
    dry_json = site.dry_run("--output", "json")
    applied = site.reconcile("--output", "json")

    assert dry.returncode == 2, show(dry)
    assert "SECRET" in dry.stdout
    assert dry_json.returncode == 2, show(dry_json)
    assert "SECRET" in dry_json.stdout
    assert applied.returncode == 0, show(applied)
    assert "SECRET=" + new in served_env(port)
    history = site.history().stdout + site.history("--output", "json").stdout
    for text in [*(output(r) for r in (first, dry, dry_json, applied)), history]:
        assert old not in text and new not in text, text
    for name in (app, app + ".prev"):
        assert old not in json.dumps(labels(must_inspect(site.client, name)))
        assert new not in json.dumps(labels(must_inspect(site.client, name)))


# -- 18. --output json ---------------------------------------------------------------------------------------


def test_dry_run_json_has_revision_actions_and_changes(site: Site, images: ImageFactory, app_names: AppNames) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, new_app = app_names("web"), app_names("new")
    port, new_port = free_port(), free_port()
    site.commit(desired(app_yaml(app, site.web(), "v1", port)))
    site.converge()
    sha = site.commit(desired(app_yaml(app, site.web(), "v2", port), app_yaml(new_app, site.web(), "v1", new_port)))

    result = site.dry_run("--output", "json")

    assert result.returncode == 2, show(result)
    plan = json.loads(result.stdout)
    assert plan["revision"] == sha
    assert plan["in_sync"] is False
    actions = {action["app"]: action for action in plan["actions"]}
    assert set(actions) == {app, new_app}
    assert actions[app]["action"] == "replace"
    image_change = [c for c in actions[app]["changes"] if c["field"] == "image"]
    assert image_change, actions[app]
    assert "v1" in image_change[0]["was"] and "v2" in image_change[0]["now"]
    assert actions[new_app]["action"] == "create"
    assert actions[new_app]["changes"], actions[new_app]

    applied = site.reconcile("--output", "json")
    assert applied.returncode == 0, show(applied)
    report = json.loads(applied.stdout)
    assert report["revision"] == sha and report["ok"] is True
    assert {(o["app"], o["result"]) for o in report["outcomes"]} == {(app, "applied"), (new_app, "applied")}
    in_sync = json.loads(site.dry_run("--output", "json").stdout)
    assert in_sync["in_sync"] is True and in_sync["actions"] == []


# -- 17. options before or after the command name, and from the environment ---------------------------------


def test_options_work_after_the_command_name_and_from_the_environment(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    first = site.commit(desired(app_yaml(app, site.web(), "v1", port)), "v1")
    second = site.remote.commit_file("deploy/prod.yaml", desired(app_yaml(app, site.web(), "v2", port)), "prod v2")
    from_env = {"RECONCILE_REPO": site.repo, "RECONCILE_STATE_DIR": str(site.state)}

    dry = cli("--dry-run", env=from_env)
    assert dry.returncode == 2 and second[:8] in dry.stdout, show(dry)
    applied = cli(env=from_env)
    assert applied.returncode == 0, show(applied)
    assert body(port) == "v1"

    # Another file is another source: the app it names is taken over only with --adopt.
    prod = {**from_env, "RECONCILE_FILE": "deploy/prod.yaml"}
    other = cli("--dry-run", env=prod)
    assert other.returncode == 1 and f"{FILE}; not changed (--adopt to take it over)" in other.stdout, show(other)
    applied = cli("--adopt", env=prod)
    assert applied.returncode == 0, show(applied)
    assert body(port) == "v2"
    old_ref = cli("--dry-run", env={**prod, "RECONCILE_REF": first})
    assert old_ref.returncode == 1 and "deploy/prod.yaml" in old_ref.stderr and first[:8] in old_ref.stderr, show(
        old_ref
    )
    flag_wins = cli("--dry-run", "--file", "deploy/prod.yaml", env={**from_env, "RECONCILE_FILE": "nope.yaml"})
    assert flag_wins.returncode == 0 and "in sync" in flag_wins.stdout, show(flag_wins)
    at_first = site.dry_run("--ref", first)
    assert at_first.returncode == 1 and first[:8] in at_first.stdout, show(at_first)
    assert "was deployed by another source" in at_first.stdout and "deploy/prod.yaml" in at_first.stdout

    in_clone = cli("--state-dir", site.state, "--dry-run", cwd=site.remote.clone_path)
    assert in_clone.returncode == 1 and second[:8] in in_clone.stdout, show(in_clone)

    text_after = cli("history", "--state-dir", site.state)
    text_before = cli("--state-dir", site.state, "history")
    text_env = cli("history", env={"RECONCILE_STATE_DIR": str(site.state)})
    assert text_after.returncode == text_before.returncode == text_env.returncode == 0
    assert app in text_after.stdout
    assert text_after.stdout == text_before.stdout == text_env.stdout
    json_after = cli("history", "--state-dir", site.state, "--output", "json")
    json_before = cli("--output", "json", "--state-dir", site.state, "history")
    assert json.loads(json_after.stdout) == json.loads(json_before.stdout)
    assert [e["to_version"] for e in json.loads(json_after.stdout) if e["app"] == app] == ["v2", "v1"]

    for result in (
        cli("validate", "--repo", site.repo, "--ref", first),
        cli("--repo", site.repo, "--ref", first, "validate"),
        cli("validate", env={"RECONCILE_REPO": site.repo, "RECONCILE_REF": first}),
    ):
        assert result.returncode == 0, show(result)
        assert first[:8] in result.stdout and "valid" in result.stdout, show(result)
    in_clone_validate = cli("validate", "--file", "deploy/prod.yaml", cwd=site.remote.clone_path)
    assert in_clone_validate.returncode == 0 and second[:8] in in_clone_validate.stdout, show(in_clone_validate)


# -- 12. a first deploy from a registry: the plan says what will be pulled ------------------------------------


def test_dry_run_of_a_first_deploy_says_which_image_will_be_pulled(
    site: Site, images: ImageFactory, app_names: AppNames, registry: Registry
) -> None:
    app, port = app_names("web"), free_port()
    repo = f"{images.prefix}/{app}"
    remote_repo = f"{registry.host}/{repo}"
    registry_only(images, registry, repo, "r1", "registry r1")
    site.commit(desired(app_yaml(app, remote_repo, "r1", port)))

    dry = site.dry_run()
    dry_json = site.dry_run("--output", "json")

    assert dry.returncode == 2 and dry_json.returncode == 2, show(dry)
    assert local_tags(site.client, remote_repo) == []
    changes = [c for a in json.loads(dry_json.stdout)["actions"] if a["app"] == app for c in a["changes"]]
    assert any("to pull" in c["now"] and f"{remote_repo}:r1" in c["now"] for c in changes), changes
    assert "to pull" in dry.stdout and f"{remote_repo}:r1" in dry.stdout, show(dry)


# -- a one-shot run killed mid-gate gets its verdict from the next run ------------------------------


def test_one_shot_killed_mid_gate_of_a_broken_release_is_rolled_back_by_the_next_run(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2-no-health", healthy=False)
    app, port = app_names("web"), free_port()
    site.commit(desired(app_yaml(app, site.web(), "v1", port, timeout="3s")))
    site.converge()
    assert body(port) == "v1"

    site.commit(desired(app_yaml(app, site.web(), "v2-no-health", port, timeout="3s")))
    killed = site.reconcile(env={"RECONCILE_KILL_AT": "gate"})
    assert killed.returncode == -9, show(killed)

    result = site.reconcile()

    assert "in sync" not in output(result), show(result)
    assert result.returncode == 1, show(result)
    assert "rolled back" in result.stdout, show(result)
    assert body(port) == "v1"
    info = must_inspect(site.client, app)
    assert is_running(info) and labels(info)["io.reconciler.version"] == "v1"
    failed = must_inspect(site.client, app + ".failed")
    assert labels(failed)["io.reconciler.version"] == "v2-no-health" and not is_running(failed)
