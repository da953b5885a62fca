"""End to end: `reconcile --docker-host ssh://...` (and `DOCKER_HOST=ssh://...`) drives a remote engine.

The README promises `DOCKER_HOST=ssh://deploy@server reconcile --dry-run`. Here every part of that
is real: an OpenSSH server on 127.0.0.1 with its own host key (tests/support/sshd.py), a freshly
made client key, the real `ssh` client that reconciler's tunnel runs, which runs
`docker system dial-stdio` on the far side, and the real engine behind it. The "remote" engine is
the local one, so the tests can look at what `reconcile` did through ssh; the server's log shows
that each run did go through ssh.

The client finds the server's port, key and known host key through a config of its own (an `ssh`
wrapper first on PATH, see tests/support/sshd.py): nothing under /root/.ssh or /etc/ssh is used.
No sshd: the tests FAIL (in CI and elsewhere), they never skip.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.support import AppNames, ImageFactory, free_port
from tests.support.sshd import Sshd
from tests.support.state import Site, app_yaml, body, desired, is_running, must_inspect, show

# A host that does not answer must be reported well within this (it is refused at once here).
UNREACHABLE_WITHIN = 30.0


def sessions(server: Sshd) -> int:
    """How many command sessions the server has started so far (its log says so, one line each)."""
    return server.log_path.read_text(errors="replace").count("Starting session: command for root")


def through_ssh(site: Site, server: Sshd, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """`reconcile --docker-host ssh://root@127.0.0.1:PORT ARGS`, checked to have gone through the server."""
    before = sessions(server)
    result = site.reconcile("--docker-host", server.url, *args, env=server.client_env())
    assert sessions(server) > before, f"reconcile did not open an ssh session:\n{show(result)}"
    return result


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_deploy_dry_run_and_drift_through_an_ssh_docker_host(
    site: Site, images: ImageFactory, app_names: AppNames, sshd: Sshd
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    sha = site.commit(desired(app_yaml(app, site.web(), "v1", port)), "deploy v1")

    deployed = through_ssh(site, sshd)

    assert deployed.returncode == 0, show(deployed)
    assert sha[:8] in deployed.stdout and app in deployed.stdout, show(deployed)
    assert body(port) == "v1"
    info = must_inspect(site.client, app)
    assert is_running(info)
    assert info["Config"]["Labels"]["io.reconciler.commit"] == sha

    # In sync, seen through ssh: with --docker-host, and with DOCKER_HOST as the README writes it.
    in_sync = through_ssh(site, sshd, "--dry-run")
    assert in_sync.returncode == 0, show(in_sync)
    assert "in sync" in in_sync.stdout, show(in_sync)
    before = sessions(sshd)
    from_env = site.dry_run(env={**sshd.client_env(), "DOCKER_HOST": sshd.url})
    assert from_env.returncode == 0, show(from_env)
    assert "in sync" in from_env.stdout, show(from_env)
    assert sessions(sshd) > before, f"DOCKER_HOST=ssh://... did not go through ssh:\n{show(from_env)}"

    # A manual change on the server, the way people make them today: ssh server docker stop APP.
    stopped = sshd.ssh(f"docker stop -t 2 {app}")
    assert stopped.returncode == 0, stopped.stderr
    drift = through_ssh(site, sshd, "--dry-run")
    assert drift.returncode == 2, show(drift)
    line = [ln for ln in drift.stdout.splitlines() if app in ln]
    assert line and "start" in line[0], show(drift)
    assert not is_running(must_inspect(site.client, app)), "a dry run through ssh started the container"

    healed = through_ssh(site, sshd)
    assert healed.returncode == 0, show(healed)
    after = must_inspect(site.client, app)
    assert is_running(after) and after["Id"] == info["Id"]
    assert body(port) == "v1"


def test_ssh_host_that_does_not_answer_is_one_line_naming_it(site: Site, app_names: AppNames, sshd: Sshd) -> None:
    site.commit(desired(app_yaml(app_names("web"), site.web(), "v1", free_port())))
    dead = f"ssh://root@127.0.0.1:{free_port()}"  # nothing listens there: ssh is refused

    for how in ("reconcile --docker-host", "dry-run --docker-host", "dry-run DOCKER_HOST"):
        started = time.monotonic()
        if how == "reconcile --docker-host":
            result = site.reconcile("--docker-host", dead, env=sshd.client_env())
        elif how == "dry-run --docker-host":
            result = site.dry_run("--docker-host", dead, env=sshd.client_env())
        else:
            result = site.dry_run(env={**sshd.client_env(), "DOCKER_HOST": dead})
        took = time.monotonic() - started

        assert took < UNREACHABLE_WITHIN, f"{how}: took {took:.1f}s\n{show(result)}"
        assert result.returncode == 1, f"{how}: {show(result)}"
        assert result.stdout == "", f"{how}: {show(result)}"
        lines = stderr_lines(result)
        assert len(lines) == 1, f"{how}: not one line\n{show(result)}"
        assert dead in lines[0], f"{how}: the line does not name the host\n{show(result)}"
        assert "refused" in lines[0].lower(), f"{how}: the line does not say why\n{show(result)}"


def test_env_file_is_read_on_the_engines_host_through_ssh_and_never_guessed(
    site: Site, images: ImageFactory, app_names: AppNames, sshd: Sshd, tmp_path: Path
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    env_file = tmp_path / "server" / "web.env"
    env_file.parent.mkdir()
    env_file.write_text("GREETING=from-the-server\n")
    plain = app_yaml(app, site.web(), "v1", port)
    site.commit(desired(plain))
    through_ssh(site, sshd)
    before = sessions(sshd)
    through_ssh(site, sshd, "--dry-run")
    without = sessions(sshd) - before

    site.commit(desired(plain + f"    env_file: {env_file}\n"))
    before = sessions(sshd)
    preview = through_ssh(site, sshd, "--dry-run")
    assert sessions(sshd) - before > without, f"the env_file was not read through ssh:\n{show(preview)}"
    assert preview.returncode == 2 and "env_file: (none) ->" in preview.stdout, show(preview)
    deployed = through_ssh(site, sshd)
    assert deployed.returncode == 0, show(deployed)
    assert "GREETING=from-the-server" in must_inspect(site.client, app)["Config"]["Env"]
    assert "from-the-server" not in deployed.stdout + deployed.stderr

    # Not readable from where the run is (here: gone): the dry run says so, and reports no drift.
    env_file.unlink()
    unread = through_ssh(site, sshd, "--dry-run")
    assert unread.returncode == 0, show(unread)
    assert f"note: {app}: env_file {env_file}: not checked (it cannot be read from here)" in unread.stdout
