"""The test fixtures themselves work against the real parts (engine, registry, git)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests.support import (
    RUN_LABEL,
    AppNames,
    GitRemote,
    ImageFactory,
    Registry,
    cleanup_run,
    cli_env,
    free_port,
    http_get,
    run_git,
    wait_http,
)


def _run(client: Any, ref: str, name: str, port: int, **kwargs: Any) -> Any:
    return client.containers.run(
        ref, name=name, detach=True, init=True, ports={"8000/tcp": ("127.0.0.1", port)}, **kwargs
    )


def test_healthy_image_serves_body_and_health(docker_client: Any, images: ImageFactory, app_names: AppNames) -> None:
    ref = images.build("web", "v1", env={"GREETING": "hello world"})
    assert ref == f"{images.prefix}/web:v1"
    port = free_port()
    container = _run(docker_client, ref, app_names("web"), port)
    assert wait_http(f"http://127.0.0.1:{port}/health", 10) == "ok"
    assert http_get(f"http://127.0.0.1:{port}/") == (200, "v1")
    _, env = http_get(f"http://127.0.0.1:{port}/cgi-bin/env")
    assert "GREETING=hello world" in env.splitlines()
    assert container.labels[RUN_LABEL] == images.prefix
    started = time.monotonic()
    container.stop(timeout=10)
    assert time.monotonic() - started < 5, "with --init, SIGTERM stops busybox httpd at once"


def test_build_is_cached_and_rebuilt_when_args_change(images: ImageFactory) -> None:
    first = images.build("cache", "v1")
    first_id = images.image_id(first)
    assert images.build("cache", "v1") == first
    assert images.image_id(first) == first_id
    images.build("cache", "v1", body="other")
    assert images.image_id(first) != first_id
    assert images.build(f"{images.prefix}/cache", "v1", body="other") == first


def test_unhealthy_image_answers_404(docker_client: Any, images: ImageFactory, app_names: AppNames) -> None:
    ref = images.build("web", "broken", healthy=False)
    port = free_port()
    _run(docker_client, ref, app_names("broken"), port)
    assert wait_http(f"http://127.0.0.1:{port}/", 10) == "broken"
    assert http_get(f"http://127.0.0.1:{port}/health")[0] == 404


def test_exit_at_start_exits_1(docker_client: Any, images: ImageFactory, app_names: AppNames) -> None:
    ref = images.build("web", "crash", exit_at_start=True)
    container = _run(docker_client, ref, app_names("crash"), free_port())
    assert container.wait(timeout=10)["StatusCode"] == 1


def test_docker_healthcheck_reports_healthy(docker_client: Any, images: ImageFactory, app_names: AppNames) -> None:
    ref = images.build("web", "hc", docker_healthcheck=True, port=8080)
    container = docker_client.containers.run(ref, name=app_names("hc"), detach=True, init=True)
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline:
        container.reload()
        status = container.attrs["State"].get("Health", {}).get("Status")
        if status == "healthy":
            break
        time.sleep(0.1)
    assert status == "healthy"


def test_app_names_cleanup_removes_app_prev_next(docker_client: Any, images: ImageFactory, run_prefix: str) -> None:
    names = AppNames(docker_client, run_prefix)
    app = names("sweep")
    assert app.startswith(f"{run_prefix}-sweep-")
    ref = images.build("web", "v1")
    for suffix in ("", ".prev", ".next"):
        docker_client.containers.create(ref, name=app + suffix, labels={"io.reconciler.managed": "true"})
    docker_client.volumes.create(f"{app}-data")
    assert names.cleanup() == []
    assert docker_client.containers.list(all=True, filters={"name": app}) == []
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(f"{app}-data")


def test_cleanup_run_removes_only_its_prefix(docker_client: Any, images: ImageFactory, run_prefix: str) -> None:
    ref = images.build("web", "v1")
    mine = f"{run_prefix}-sub"
    docker_client.containers.create(ref, name=f"{mine}-a")
    docker_client.volumes.create(f"{mine}-vol")
    other = docker_client.containers.create(ref, name=f"{run_prefix}-keep")
    try:
        assert cleanup_run(docker_client, mine) == []
        assert docker_client.containers.list(all=True, filters={"name": mine}) == []
        with pytest.raises(docker.errors.NotFound):
            docker_client.volumes.get(f"{mine}-vol")
        other.reload()  # still there
    finally:
        other.remove(force=True)


def test_registry_push_and_manifest_digest(docker_client: Any, images: ImageFactory, registry: Registry) -> None:
    ref = images.build("web", "v1")
    pushed = registry.push(ref, "demo/web", "v1")
    assert pushed == f"{registry.host}/demo/web:v1"
    digest = registry.manifest_digest("demo/web", "v1")
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    registry.delete_local(pushed)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(pushed)
    pulled = docker_client.images.pull(f"{registry.host}/demo/web", tag="v1")
    assert f"{registry.host}/demo/web@{digest}" in pulled.attrs["RepoDigests"]


def test_auth_registry_refuses_anonymous_accepts_credentials(
    images: ImageFactory, auth_registry: Registry, tmp_path: Path
) -> None:
    ref = images.build("web", "v1")
    target = f"{auth_registry.host}/private/web:v1"
    subprocess.run(["docker", "tag", ref, target], check=True)
    empty = tmp_path / "empty-config"
    empty.mkdir()
    anonymous = subprocess.run(
        ["docker", "--config", str(empty), "push", target], capture_output=True, text=True, timeout=60
    )
    assert anonymous.returncode != 0
    assert "no basic auth credentials" in anonymous.stderr + anonymous.stdout

    config_dir = auth_registry.docker_config_dir(tmp_path)
    assert (config_dir / "config.json").is_file()
    authed = subprocess.run(
        ["docker", "--config", str(config_dir), "push", target], capture_output=True, text=True, timeout=60
    )
    assert authed.returncode == 0, authed.stderr
    assert auth_registry.manifest_digest("private/web", "v1").startswith("sha256:")


def test_git_remote_push_then_clone_sees_commit(git_remote: GitRemote, tmp_path: Path) -> None:
    assert git_remote.remote_head() is None
    first = git_remote.commit_file("desired-state.yaml", "apps: {}\n", "first")
    assert git_remote.remote_head() == first
    second = git_remote.commit_file("desired-state.yaml", "apps: {web: {}}\n", "second")
    clone = git_remote.clone_to(tmp_path / "other")
    assert run_git("rev-parse", "HEAD", cwd=clone) == second
    assert (clone / "desired-state.yaml").read_text() == "apps: {web: {}}\n"
    assert run_git("--git-dir", str(git_remote.bare_path), "symbolic-ref", "HEAD") == "refs/heads/main"
    # A force push rewrites the remote.
    git_remote.reset_hard(first)
    git_remote.push(force=True)
    assert git_remote.remote_head() == first


def test_cli_env_drops_reconcile_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILE_REPO", "/somewhere")
    monkeypatch.setenv("RECONCILER_X", "1")
    monkeypatch.setenv("KEEP_ME", "yes")
    env = cli_env({"RECONCILE_STATE_DIR": "/tmp/state", "KEEP_ME": None})
    assert "RECONCILE_REPO" not in env and "RECONCILER_X" not in env and "KEEP_ME" not in env
    assert env["RECONCILE_STATE_DIR"] == "/tmp/state"
