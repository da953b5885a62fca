"""End to end: what `reconcile` tells the user when something is wrong, and that it changes nothing then.

Every failure is a message on stderr (never a traceback) and exit 1; a running container stays as it
was. Real CLI, real engine, real git, real registry, as in tests/test_converge.py (the helpers both
use are in tests/support/state.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import AppNames, ImageFactory, Registry, cli_env, free_port
from tests.support.state import FILE, Site, app_yaml, body, cli, desired, inspect, is_running, must_inspect, show

ROOT = Path(__file__).resolve().parents[1]


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# -- 5. an invalid file -----------------------------------------------------------------------------------


def invalid_file(app: str, image: str, port: int) -> str:
    """A file with a bad port on line 7 and a misspelt key on line 10."""
    return (
        "apps:\n"  # 1
        f"  {app}:\n"  # 2
        f"    image: {image}\n"  # 3
        "    version: v2\n"  # 4
        "    ports:\n"  # 5
        f'      - "127.0.0.1:{port}:8000"\n'  # 6
        '      - "127.0.0.1:99999:8001"\n'  # 7
        "    init: true\n"  # 8
        "    stop_timeout: 2s\n"  # 9
        "    helth:\n"  # 10
        f"      http: http://127.0.0.1:{port}/health\n"  # 11
    )


def test_invalid_committed_file_names_each_error_with_line_and_column_and_changes_nothing(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    images.build("web", "v2")
    app, port = app_names("web"), free_port()
    site.commit(desired(app_yaml(app, site.web(), "v1", port)))
    site.converge()
    before = must_inspect(site.client, app)["Id"]
    site.commit(invalid_file(app, site.web(), port), "typo")

    runs = {
        "reconcile": site.reconcile(),
        "dry-run": site.dry_run(),
        "validate": cli("validate", "--repo", site.repo),
    }

    for what, result in runs.items():
        assert result.returncode == 1, f"{what}: {show(result)}"
        lines = stderr_lines(result)
        port_line = [ln for ln in lines if ".ports[1]" in ln]
        assert port_line, f"{what}: {show(result)}"
        assert port_line[0].startswith(f"{FILE}:7:9: apps.{app}.ports[1]: "), port_line[0]
        assert "99999" in port_line[0]
        assert f"{FILE}:10:5: apps.{app}.helth: unknown key 'helth'; did you mean 'health'?" in lines, what
        assert len([ln for ln in lines if ln.startswith(f"{FILE}:")]) == 2, f"{what}: {show(result)}"
        assert "nothing was changed" in lines[-1]
        assert result.stdout == ""
    info = must_inspect(site.client, app)
    assert info["Id"] == before and is_running(info)
    assert body(port) == "v1"


def test_yaml_syntax_error_has_its_place(site: Site) -> None:
    site.commit("apps:\n  web:\n    image: example/web\n    version: [v1\n", "broken yaml")

    for result in (site.reconcile(), site.dry_run(), cli("validate", "--repo", site.repo)):
        assert result.returncode == 1, show(result)
        first = stderr_lines(result)[0]
        assert first.startswith(f"{FILE}:"), show(result)
        line = int(first.split(":")[1])
        assert 4 <= line <= 5, show(result)


def test_validate_a_plain_file_outside_git(tmp_path: Path) -> None:
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    (outside / "good.yaml").write_text(desired(app_yaml("web", "example/web", "v1", 8080)))
    (outside / "bad.yaml").write_text(invalid_file("web", "example/web", 8080))

    good = cli("validate", "good.yaml", cwd=outside)
    bad = cli("validate", "bad.yaml", cwd=outside)
    missing = cli("validate", "missing.yaml", cwd=outside)

    assert good.returncode == 0, show(good)
    assert good.stdout.strip() == "good.yaml: valid, 1 app"
    assert bad.returncode == 1, show(bad)
    lines = stderr_lines(bad)
    assert any(ln.startswith("bad.yaml:7:9: apps.web.ports[1]: ") for ln in lines), show(bad)
    assert "bad.yaml:10:5: apps.web.helth: unknown key 'helth'; did you mean 'health'?" in lines
    assert missing.returncode == 1, show(missing)
    assert len(stderr_lines(missing)) == 1 and "missing.yaml" in missing.stderr, show(missing)


def test_missing_repo_ref_or_file_is_one_clear_line(site: Site, tmp_path: Path, app_names: AppNames) -> None:
    site.commit(desired(app_yaml(app_names("web"), site.web(), "v1", free_port())))

    no_repo = site.reconcile(repo=str(tmp_path / "nowhere"))
    not_a_repo = site.reconcile(repo=str(tmp_path))
    no_ref = site.reconcile("--ref", "no-such-branch")
    no_file = site.reconcile("--file", "deploy/none.yaml")

    for result, needle in (
        (no_repo, "nowhere"),
        (not_a_repo, str(tmp_path)),
        (no_ref, "no-such-branch"),
        (no_file, "deploy/none.yaml"),
    ):
        assert result.returncode == 1, show(result)
        assert len(stderr_lines(result)) == 1 and needle in result.stderr, show(result)


# -- 6/12. a tag the registry does not have ----------------------------------------------------------------


def test_tag_missing_in_the_registry_is_a_clear_error(
    site: Site, images: ImageFactory, app_names: AppNames, registry: Registry
) -> None:
    app, port = app_names("web"), free_port()
    repo = f"{images.prefix}/missing"
    registry.push(images.build("web", "v1"), repo, "v1")
    wanted = f"{registry.host}/{repo}:v404"
    site.commit(desired(app_yaml(app, f"{registry.host}/{repo}", "v404", port)))

    for result in (site.dry_run(), site.reconcile()):
        assert result.returncode == 1, show(result)
        line = [ln for ln in (result.stdout + result.stderr).splitlines() if wanted in ln]
        assert line and app in line[0], show(result)
        assert any(word in line[0] for word in ("not exist", "not found", "unknown")), show(result)
    assert inspect(site.client, app) is None


# -- 10. the lock -------------------------------------------------------------------------------------------

HOLDER = """
import sys
from pathlib import Path
from reconciler.state.lock import locked
with locked(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_lock_held_names_the_holder_and_lock_timeout_waits(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    site.commit(desired(app_yaml(app, site.web(), "v1", port)))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(site.state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=cli_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"

        refused = site.reconcile()
        dry = site.dry_run()

        assert refused.returncode == 1, show(refused)
        assert len(stderr_lines(refused)) == 1, show(refused)
        assert f"pid {holder.pid}" in refused.stderr, show(refused)
        assert "--lock-timeout" in refused.stderr
        assert inspect(site.client, app) is None
        assert dry.returncode == 2, f"a dry run takes no lock: {show(dry)}"

        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            waiting = pool.submit(site.reconcile, "--lock-timeout", "60")
            time.sleep(1.5)
            assert not waiting.done(), show(waiting.result())
            holder.stdin.write("\n")
            holder.stdin.flush()
            result = waiting.result(timeout=90)
        assert result.returncode == 0, show(result)
        assert time.monotonic() - started >= 1.5
        assert body(port) == "v1"
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=10)


# -- 11. no engine ---------------------------------------------------------------------------------------------


def test_engine_not_answering_is_one_line_naming_the_host(site: Site, app_names: AppNames) -> None:
    site.commit(desired(app_yaml(app_names("web"), site.web(), "v1", free_port())))
    dead = f"tcp://127.0.0.1:{free_port()}"

    runs = [
        site.reconcile("--docker-host", dead),
        site.dry_run("--docker-host", dead),
        site.reconcile(env={"DOCKER_HOST": dead}),
        site.dry_run(env={"DOCKER_HOST": dead}),
    ]

    for result in runs:
        assert result.returncode == 1, show(result)
        assert result.stdout == "", show(result)
        assert len(stderr_lines(result)) == 1, show(result)
        assert dead in result.stderr, show(result)


# -- bad ssh URLs and a state directory that is a file are one-line errors --------------------------


def test_a_bad_ssh_docker_host_is_one_line_and_no_internal_error(site: Site, app_names: AppNames) -> None:
    site.commit(desired(app_yaml(app_names("web"), site.web(), "v1", free_port())))

    for host in ("ssh://root@127.0.0.1:abc", "ssh://"):
        result = cli(
            "--repo",
            site.repo,
            "--state-dir",
            site.state,
            "--dry-run",
            "--docker-host",
            host,
            forbidden=("Traceback", "internal error"),
        )
        assert result.returncode == 1, show(result)
        assert len(stderr_lines(result)) == 1, show(result)


def test_a_state_dir_that_is_a_regular_file_is_one_line_and_no_internal_error(
    site: Site, app_names: AppNames, tmp_path: Path
) -> None:
    site.commit(desired(app_yaml(app_names("web"), site.web(), "v1", free_port())))
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_text("I am a file\n")

    result = cli("--repo", site.repo, "--state-dir", not_a_dir, forbidden=("Traceback", "internal error"))

    assert result.returncode == 1, show(result)
    assert len(stderr_lines(result)) == 1, show(result)
    assert str(not_a_dir) in result.stderr, show(result)
    assert not_a_dir.read_text() == "I am a file\n"


def test_a_bug_in_the_cli_is_one_line_that_says_where_its_traceback_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tempfile

    from reconciler import cli as the_cli

    def broken(**_: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(the_cli, "app", broken)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.delenv("RECONCILE_DEBUG", raising=False)
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    with pytest.raises(SystemExit) as exited:
        the_cli.main()
    assert exited.value.code == 1
    said = capsys.readouterr().err
    assert said.startswith("internal error: ZeroDivisionError: division by zero (a bug in reconciler: traceback in ")
    (kept,) = (tmp_path / f"reconcile-crashes-{os.geteuid()}").glob("crash-*.txt")
    assert str(kept) in said and "Traceback" not in said
    assert "ZeroDivisionError" in kept.read_text() and "in broken" in kept.read_text()


def test_the_collector_is_on_again_after_a_command_ran_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from reconciler import cli as the_cli

    monkeypatch.setattr(sys, "argv", ["reconcile", "--help"])
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    with pytest.raises(SystemExit):
        the_cli.main()
    assert gc.isenabled()
    ran = the_cli._guarded(lambda: gc.isenabled())  # a command's work runs with the collector on
    assert ran and gc.isenabled()
