"""The package (issue 13): `python -m build` makes a wheel and an sdist that know their commit, and
`pipx install` of the wheel gives a working `reconcile` with nothing of this repository around.

- Builds run on a copy of the checkout made into a git repository of its own (one commit the test
  knows), so nothing is written into the checkout and the commit to expect is exact.
- `python -m build` builds the sdist, then the wheel from the unpacked sdist (away from git): the
  commit must reach the wheel through the sdist. A wheel built from that sdist unpacked inside another
  git repository keeps the sdist's commit, not that repository's; a tree with neither git nor the
  file says `unknown`.
- pipx is Debian's (`apt-get install pipx`, as the README says; scripts/setup-host installs it), with
  its own PIPX_HOME and PIPX_BIN_DIR in the test's folder, run from an empty folder with this venv off
  PATH. Dependencies come from the package index (pip's cache makes a rerun quick).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from reconciler.version import Commit, __version__, build_commit, describe
from tests.support import AppNames, ImageFactory, free_port, run_git
from tests.support.baseimage import ROOT, copy_sources
from tests.support.cli import test_instance as instance_of_this_test
from tests.support.state import Site, app_yaml, desired

BUILD_INFO = "reconciler/_build_info.py"
RELEASE = ROOT / "examples" / "github-actions" / "release.yml"


def build(source: Path, out: Path, *args: str, env: dict[str, str] | None = None) -> list[Path]:
    """`python -m build ARGS --outdir OUT SOURCE`; what it made."""
    out.mkdir(parents=True, exist_ok=True)
    run_env = {k: v for k, v in os.environ.items() if k != "RECONCILER_COMMIT"} | (env or {})
    done = subprocess.run(
        [sys.executable, "-m", "build", *args, "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=run_env,
    )
    assert done.returncode == 0, f"python -m build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return sorted(out.iterdir())


def committed_copy(dest: Path) -> tuple[Path, str]:
    """The checkout's files in a git repository of their own, committed once; (folder, sha)."""
    copy_sources(dest)
    run_git("init", "-q", str(dest))
    run_git("add", "-A", cwd=dest)
    run_git("commit", "-q", "-m", "a build of reconciler", cwd=dest)
    return dest, run_git("rev-parse", "HEAD", cwd=dest)


def baked(wheel: Path) -> str | None:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(BUILD_INFO).decode() if BUILD_INFO in archive.namelist() else None


def version_of(wheel: Path, tmp: Path) -> str:
    """`reconcile --version` of `wheel`'s code (installed without dependencies, run with this venv's)."""
    target = tmp / f"site-of-{wheel.parent.name}"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    code = "import sys; sys.argv = ['reconcile', '--version']; from reconciler.cli import main; main()"
    empty = tmp / "cwd"
    empty.mkdir(exist_ok=True)
    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=empty,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.strip()


def release_check(workdir: Path, *, tag: str, sha: str) -> subprocess.CompletedProcess[str]:
    """The release workflow's step that checks what it is about to publish, run as GitHub runs it in `workdir`."""
    steps = release()["jobs"]["dist"]["steps"]
    [step] = [s for s in steps if s.get("name") == "Check the version, the tag and the commit"]
    runner_temp = workdir / f"runner-{tag}-{sha[:7]}"
    runner_temp.mkdir()
    env = {key: value for key, value in os.environ.items() if key.startswith(("PIP_", "HOME", "LANG"))}
    env |= {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "RUNNER_TEMP": str(runner_temp),
        "GITHUB_REF_NAME": tag,
        "GITHUB_SHA": sha,
    }
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def release() -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(RELEASE.read_text(encoding="utf-8"))
    return data


# -- the version, in this checkout -----------------------------------------------------------------------------------


def test_the_version_in_a_checkout_is_its_head() -> None:
    head = run_git("rev-parse", "HEAD", cwd=ROOT)
    commit = build_commit()
    assert commit is not None and commit.sha == head
    assert describe() == f"reconcile {__version__} (commit {commit.short})"
    assert Commit(sha="a" * 40, dirty=True).short == "aaaaaaa-dirty"
    assert Commit(sha="a" * 40, dirty=False).short == "aaaaaaa"


def test_the_version_option_prints_it_and_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == describe() + "\n"


# -- python -m build -------------------------------------------------------------------------------------------------


def test_the_wheel_and_the_sdist_carry_the_commit_and_a_tree_without_git_says_unknown(tmp_path: Path) -> None:
    source, sha = committed_copy(tmp_path / "src")
    made = build(source, tmp_path / "dist")
    names = [path.name for path in made]
    assert names == [f"reconciler-{__version__}-py3-none-any.whl", f"reconciler-{__version__}.tar.gz"], names
    wheel, sdist = made
    assert f"COMMIT = {sha!r}" in (baked(wheel) or ""), "the wheel (built from the sdist) lost the commit"
    assert "DIRTY = False" in (baked(wheel) or "")
    assert version_of(wheel, tmp_path) == f"reconcile {__version__} (commit {sha[:7]})"
    assert not (source / BUILD_INFO).exists(), "the build wrote into the source tree"
    with zipfile.ZipFile(wheel) as archive:
        entry_points = archive.read(f"reconciler-{__version__}.dist-info/entry_points.txt").decode()
    assert "reconcile = reconciler.cli:main" in entry_points

    # The release workflow's check of what it is about to publish, run on this dist/.
    wrong = release_check(tmp_path, tag="v9.9.9", sha=sha)
    assert wrong.returncode == 1 and "::error::tag v9.9.9: no reconciler 9.9.9 in dist/" in wrong.stdout, wrong
    right = release_check(tmp_path, tag=f"v{__version__}", sha=sha)
    assert right.returncode == 0, right.stdout + right.stderr
    assert right.stdout.strip().endswith(f"reconcile {__version__} (commit {sha[:7]})")

    # The sdist unpacked inside another git repository: the sdist's commit, not that repository's.
    other = tmp_path / "other"
    other.mkdir()
    run_git("init", "-q", str(other))
    run_git("commit", "-q", "--allow-empty", "-m", "someone else's", cwd=other)
    with tarfile.open(sdist) as archive:
        members = set(archive.getnames())
        archive.extractall(other, filter="data")
    # The sdist runs its own tests: their support package, conftest and corpus come along.
    top = f"reconciler-{__version__}"
    for needed in ("tests/conftest.py", "tests/support/__init__.py", "tests/support/engine.py", "desired-state.yaml"):
        assert f"{top}/{needed}" in members, f"the sdist lacks {needed}"
    assert not [name for name in members if "__pycache__" in name], "the sdist carries bytecode"
    unpacked = other / f"reconciler-{__version__}"
    assert f"COMMIT = {sha!r}" in (unpacked / BUILD_INFO).read_text()
    [again] = build(unpacked, tmp_path / "dist-again", "--wheel")
    assert f"COMMIT = {sha!r}" in (baked(again) or "")

    # No git, no file, no RECONCILER_COMMIT: the wheel builds, and says so.
    (unpacked / BUILD_INFO).unlink()
    bare = tmp_path / "bare"
    shutil.move(unpacked, bare)
    [unknown] = build(bare, tmp_path / "dist-unknown", "--wheel")
    assert baked(unknown) is None
    assert version_of(unknown, tmp_path) == f"reconcile {__version__} (commit unknown)"

    # RECONCILER_COMMIT (a docker build: no .git in its context) names it.
    [given] = build(bare, tmp_path / "dist-given", "--wheel", env={"RECONCILER_COMMIT": f"{sha}-dirty"})
    assert version_of(given, tmp_path) == f"reconcile {__version__} (commit {sha[:7]}-dirty)"


# -- pipx install ----------------------------------------------------------------------------------------------------


def test_pipx_install_of_the_wheel_gives_a_working_reconcile(
    tmp_path: Path, site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    pipx = shutil.which("pipx")
    if pipx is None:
        pytest.fail("no pipx on PATH: apt-get install -y pipx (bash scripts/setup-host installs it)", pytrace=False)
    source, sha = committed_copy(tmp_path / "src")
    [wheel] = build(source, tmp_path / "dist", "--wheel")
    shutil.rmtree(source)  # nothing of the repository left: only the wheel

    home, bin_dir, cwd = tmp_path / "pipx-home", tmp_path / "pipx-bin", tmp_path / "cwd"
    cwd.mkdir()
    venv_bin = str(Path(sys.executable).parent)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RECONCILE_", "RECONCILER_", "PIPX_", "PYTHON")) and key != "VIRTUAL_ENV"
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env |= {"PIPX_HOME": str(home), "PIPX_BIN_DIR": str(bin_dir)}

    def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
        )

    installed = run(pipx, "install", wheel)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    reconcile = bin_dir / "reconcile"
    assert reconcile.is_file()
    interpreter = reconcile.resolve().read_text(encoding="utf-8", errors="replace").splitlines()[0]
    assert interpreter.startswith(f"#!{home}"), interpreter

    version = run(reconcile, "--version")
    assert version.returncode == 0 and version.stdout == f"reconcile {__version__} (commit {sha[:7]})\n", version
    helped = run(reconcile, "--help")
    assert helped.returncode == 0 and "Converge this Docker host" in helped.stdout, helped.stderr
    where = run(home / "venvs" / "reconciler" / "bin" / "python", "-c", "import reconciler; print(reconciler.__file__)")
    assert where.stdout.startswith(str(home)), where
    # The dashboard's templates, style sheet and script are package data: in the wheel, and they load.
    load = ("from reconciler.agent.dashboard import HERE, STATIC; import jinja2; "
            "env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / 'templates'))); "
            "[env.get_template(n) for n in ('overview.html', 'app.html', 'pending.html', 'login.html')]; "
            "print(HERE, sum((HERE / 'static' / n).stat().st_size > 0 for n in STATIC))")  # fmt: skip
    loaded = run(home / "venvs" / "reconciler" / "bin" / "python", "-c", load)
    assert loaded.returncode == 0 and loaded.stdout.startswith(str(home)), loaded.stdout + loaded.stderr
    assert loaded.stdout.split()[-1] == "2", loaded.stdout

    # A real answer from the engine: the drift of a new app in a repository of the test's.
    images.build("web", "v1")
    app = app_names("pkg")
    commit = site.commit(desired(app_yaml(app, site.web(), "v1", free_port())))
    instance = ["--instance", instance_of_this_test()]
    dry = run(reconcile, "--dry-run", "-o", "json", "--repo", site.repo, "--state-dir", tmp_path / "state", *instance)
    assert dry.returncode == 2, dry.stdout + dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["revision"] == commit
    assert [(a["app"], a["action"]) for a in plan["actions"]] == [(app, "create")]


# -- the release workflow --------------------------------------------------------------------------------------------


def test_the_release_workflow_publishes_on_a_version_tag_to_pypi_by_trusted_publishing_and_the_image_to_ghcr() -> None:
    workflow = release()
    assert workflow["on"] == {"push": {"tags": ["v*"]}}
    assert workflow["concurrency"]["cancel-in-progress"] is False
    assert workflow["permissions"] == {"contents": "read"}
    jobs = workflow["jobs"]
    assert "python -m build" in jobs["dist"]["steps"][2]["run"]

    pypi = jobs["pypi"]
    assert pypi["needs"] == "dist" and pypi["environment"]["name"] == "pypi"
    assert pypi["permissions"] == {"id-token": "write"}, "trusted publishing, and nothing else"
    assert [s.get("uses") for s in pypi["steps"]][-1] == "pypa/gh-action-pypi-publish@release/v1"
    assert "password" not in json.dumps(pypi), "no PyPI token: trusted publishing"

    image = jobs["image"]
    assert image["needs"] == "dist" and image["permissions"] == {"contents": "read", "packages": "write"}
    [push] = [s for s in image["steps"] if s.get("uses") == "docker/build-push-action@v6"]
    assert push["with"]["push"] is True and push["with"]["context"] == "."
    assert push["with"]["build-args"].splitlines() == ["RECONCILER_COMMIT=${{ github.sha }}"], "BASE: the default"
    [meta] = [s for s in image["steps"] if s.get("uses") == "docker/metadata-action@v5"]
    assert meta["with"]["images"] == "ghcr.io/${{ github.repository }}"


def test_the_systemd_unit_runs_reconcile_where_the_install_puts_it() -> None:
    unit = (ROOT / "examples" / "systemd" / "reconcile-agent.service").read_text(encoding="utf-8")
    [exec_start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start.removeprefix("ExecStart=").split()[:2] == ["/usr/local/bin/reconcile", "agent"]
    assert "PIPX_BIN_DIR=/usr/local/bin pipx install reconciler" in unit
