"""The common options work on every command, before or after its name (issue 8).

`reconcile history --repo .` was a usage error while `reconcile --repo . history` worked. Now each
command accepts every common option in both places; its `--help` lists the ones it uses and says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.state import Site, cli, desired, show

COMMANDS = ["validate", "history", "agent", "status", "retry", "rollback", "set-version", "revert", "promote",
            "suspend", "resume", "completion"]  # fmt: skip
COMMON = ["--repo", "X", "--ref", "HEAD", "--file", "f.yaml", "--docker-host", "unix:///nope.sock", "--instance", "i"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_says_the_common_options_are_accepted_everywhere(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0, show(result)
    assert "accepted by every command, before or after its name" in " ".join(result.stdout.split()), show(result)


def test_a_common_option_after_the_command_name_counts_as_before_it(site: Site, tmp_path: Path) -> None:
    empty = tmp_path / "empty-state"
    runs: list[list[str | Path]] = [
        ["history", *COMMON, "--state-dir", empty],
        [*COMMON, "--state-dir", empty, "history"],
    ]
    for args in runs:
        result = cli(*args)
        assert result.returncode == 1, show(result)  # not a usage error (2)
        assert (
            result.stderr.strip()
            == f"error: no journal at {empty / 'journal.db'}: nothing was applied with this --state-dir"
        )

    site.commit(desired())
    mirror_state = tmp_path / "mirror-state"
    after = cli("validate", "--repo", f"file://{site.repo}", "--state-dir", mirror_state)
    assert after.returncode == 0 and "valid, 0 apps" in after.stdout, show(after)
    assert list((mirror_state / "mirrors").iterdir()), "validate's --state-dir is where the URL's mirror goes"


@pytest.mark.parametrize(
    ("shell", "script", "rc", "line"),
    [
        ("bash", ".bash_completions/reconcile.sh", ".bashrc", "source ~/.bash_completions/reconcile.sh"),
        ("zsh", ".zfunc/_reconcile", ".zshrc", "fpath+=~/.zfunc; autoload -Uz compinit; compinit"),
        ("fish", ".config/fish/completions/reconcile.fish", None, None),
    ],
)
def test_completion_install_writes_the_script_where_the_shell_loads_it_once(
    tmp_path: Path, shell: str, script: str, rc: str | None, line: str | None
) -> None:
    for _ in range(2):  # a second install changes nothing more
        result = cli("completion", shell, "--install", env={"HOME": str(tmp_path)})
        assert result.returncode == 0, show(result)
        assert f"{shell} completion installed in {tmp_path / script}" in result.stdout, show(result)
    assert "reconcile" in (tmp_path / script).read_text()
    if rc is not None and line is not None:
        assert (tmp_path / rc).read_text().count(line) == 1


def test_an_option_typed_before_the_command_wins_over_the_environment(tmp_path: Path) -> None:
    typed, from_env = tmp_path / "typed-state", tmp_path / "env-state"
    result = cli("--state-dir", typed, "history", env={"RECONCILE_STATE_DIR": str(from_env)})
    assert result.returncode == 1, show(result)
    assert str(typed / "journal.db") in result.stderr and str(from_env) not in result.stderr, show(result)
    result = cli("history", env={"RECONCILE_STATE_DIR": str(from_env)})  # nothing typed: the environment's
    assert str(from_env / "journal.db") in result.stderr, show(result)
