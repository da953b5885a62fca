"""``reconcile import compose`` against the golden corpus of tests/compose, run as a user runs it.

Each ``NAME.yml`` is copied into an empty folder and converted there (``NAME.env`` beside it as ``.env``,
``NAME.args`` as more arguments, ``NAME.environ`` as ``KEY=VALUE`` lines of the process environment).
With ``NAME.expected.yaml`` it must succeed and print exactly that; without, it must fail with exit 1 and
print nothing on stdout. Its stderr must be ``NAME.stderr`` (empty when there is none). ``{FOLDER}`` in the
goldens stands for the folder the file was converted in. Every expected file is valid by ``reconcile
validate``, and ``-o`` writes what stdout shows.

``COMPOSE_GOLDEN=write`` rewrites the goldens from what the command does (then read the diff).
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import pytest

from tests.support.cli import run_cli

CORPUS = Path(__file__).resolve().parent / "compose"
CASES = sorted(path.stem for path in CORPUS.glob("*.yml"))
WRITE = os.environ.get("COMPOSE_GOLDEN") == "write"


def _golden(name: str, suffix: str) -> Path:
    return CORPUS / f"{name}{suffix}"


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def _convert(name: str, folder: Path, *more: str) -> tuple[int, str, str]:
    shutil.copy(CORPUS / f"{name}.yml", folder / f"{name}.yml")
    if _golden(name, ".env").exists():
        shutil.copy(_golden(name, ".env"), folder / ".env")
    args = shlex.split(_read(_golden(name, ".args")) or "")
    environ: dict[str, str | None] = {}
    for line in (_read(_golden(name, ".environ")) or "").splitlines():
        key, _, value = line.partition("=")
        environ[key] = value
    done = run_cli("import", "compose", f"{name}.yml", *args, *more, cwd=folder, env=environ)
    return done.returncode, done.stdout, done.stderr


def test_the_corpus_has_every_kind_of_stack() -> None:
    for name in ("web-db-cache", "wordpress", "monitoring", "secrets", "healthchecks", "profiles", "interpolation"):
        assert _golden(name, ".expected.yaml").exists(), name
    assert len([case for case in CASES if case.startswith("bad-")]) >= 6


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str, tmp_path: Path) -> None:
    folder = tmp_path.resolve()
    code, stdout, stderr = _convert(name, folder)
    expected_path, stderr_path = _golden(name, ".expected.yaml"), _golden(name, ".stderr")
    if WRITE:
        if code == 0:
            expected_path.write_text(stdout.replace(str(folder), "{FOLDER}"))
        if stderr:
            stderr_path.write_text(stderr.replace(str(folder), "{FOLDER}"))
        elif stderr_path.exists():
            stderr_path.unlink()
        pytest.skip("goldens written")
    expected = _read(expected_path)
    assert stderr == (_read(stderr_path) or "").replace("{FOLDER}", str(folder))
    if expected is None:
        assert (code, stdout) == (1, "")
        assert stderr and all(line.startswith("error: ") for line in stderr.splitlines()), stderr
        assert "Traceback" not in stderr
        return
    assert code == 0, stderr
    assert stdout == expected.replace("{FOLDER}", str(folder))
    assert all(line.startswith("warning: ") for line in stderr.splitlines()), stderr


@pytest.mark.parametrize("name", [case for case in CASES if _golden(case, ".expected.yaml").exists()])
def test_written_file_is_what_stdout_shows_and_validates(name: str, tmp_path: Path) -> None:
    folder = tmp_path.resolve()
    code, stdout, _ = _convert(name, folder, "-o", "desired-state.yaml")
    assert code == 0
    written = (folder / "desired-state.yaml").read_text()
    count = written.count("\n    image: ")
    assert stdout == f"desired-state.yaml: written, {count} app{'s' if count != 1 else ''}\n"
    assert written == _golden(name, ".expected.yaml").read_text().replace("{FOLDER}", str(folder))
    checked = run_cli("validate", "desired-state.yaml", cwd=folder)
    assert checked.returncode == 0, checked.stderr
    assert "valid" in checked.stdout


def test_an_existing_file_is_replaced_only_with_force(tmp_path: Path) -> None:
    target = tmp_path / "desired-state.yaml"
    target.write_text("mine\n")
    code, stdout, stderr = _convert("wordpress", tmp_path, "-o", "desired-state.yaml")
    assert (code, stdout) == (1, "")
    assert stderr == "error: desired-state.yaml exists; --force replaces it\n"
    assert target.read_text() == "mine\n"
    code, _, stderr = _convert("wordpress", tmp_path, "-o", "desired-state.yaml", "--force")
    assert code == 0, stderr
    assert target.read_text().startswith("# imported from wordpress.yml by reconcile import compose\napps:\n")
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".desired")] == []


def test_nothing_is_written_when_the_input_is_wrong(tmp_path: Path) -> None:
    code, _, stderr = _convert("bad-port-range", tmp_path, "-o", "desired-state.yaml")
    assert code == 1 and stderr.startswith("error: services.ftp.ports[1]: ")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad-port-range.yml"]


def test_the_env_file_option_and_the_environment(tmp_path: Path) -> None:
    (tmp_path / "prod.env").write_text("COMPOSE_TEST_TAG=9.9.9\nCOMPOSE_TEST_NAME=prod\n")
    (tmp_path / "stack.yml").write_text(
        "services:\n  app:\n    image: example/app:${COMPOSE_TEST_TAG}\n"
        "    environment: {WHO: $COMPOSE_TEST_NAME, PORT: '${COMPOSE_TEST_PORT:-80}'}\n"
    )
    (tmp_path / ".env").write_text("COMPOSE_TEST_TAG=from-dot-env\n")  # --env-file replaces it
    done = run_cli(
        "import", "compose", "stack.yml", "--env-file", "prod.env", cwd=tmp_path,
        env={"COMPOSE_TEST_PORT": "8080", "COMPOSE_TEST_NAME": "the environment wins"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert 'version: "9.9.9"' in done.stdout
    assert "WHO: the environment wins" in done.stdout
    assert "PORT: '8080'" in done.stdout
    missing = run_cli("import", "compose", "stack.yml", "--env-file", "nope.env", cwd=tmp_path)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "error: nope.env: No such file or directory\n"


def test_a_url_password_is_masked_on_the_terminal_but_written_with_o(tmp_path: Path) -> None:
    (tmp_path / "stack.yml").write_text(
        "services:\n  app:\n    image: example/app:1\n    environment:\n      DB: postgres://app:s3cr3t@db/app\n"
    )
    shown = run_cli("import", "compose", "stack.yml", cwd=tmp_path)
    assert shown.returncode == 0
    assert "s3cr3t" not in shown.stdout + shown.stderr
    assert "-o" in shown.stderr
    written = run_cli("import", "compose", "stack.yml", "-o", "out.yaml", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert "DB: postgres://app:s3cr3t@db/app" in (tmp_path / "out.yaml").read_text()


def test_a_missing_compose_file(tmp_path: Path) -> None:
    done = run_cli("import", "compose", "nope.yml", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "error: nope.yml: No such file or directory\n"


def test_compose_profiles_from_the_environment(tmp_path: Path) -> None:
    shutil.copy(CORPUS / "profiles.yml", tmp_path / "profiles.yml")
    done = run_cli("import", "compose", "profiles.yml", cwd=tmp_path, env={"COMPOSE_PROFILES": "load, other"})
    assert done.returncode == 0, done.stderr
    assert "  loadtest:\n" in done.stdout and "adminer" not in done.stdout
    left_out = run_cli("import", "compose", "profiles.yml", cwd=tmp_path, env={"COMPOSE_PROFILES": None})
    assert "loadtest" not in left_out.stdout and "adminer" not in left_out.stdout
