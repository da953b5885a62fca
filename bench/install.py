"""Benchmark of shipping reconciler (issue 13): the wheel installed with pipx, and the agent image.

1. The package: ``python -m build`` of a committed copy of the checkout (wheel and sdist), then
   ``pipx install`` of the wheel (Debian's pipx, a fresh PIPX_HOME and PIPX_BIN_DIR, run from an
   empty folder) twice: with pip's cache as it is (warm, a second install on this machine), and with
   ``PIP_NO_CACHE_DIR=1`` (every dependency downloaded from the index: a fresh machine). Then the
   installed ``reconcile --help`` and ``reconcile --version``, each run ``--runs`` times: median and max.
2. The agent image, from the repository's Dockerfile, built as tests/test_agent_image.py builds it
   (the checkout's files, a wheelhouse made on the host, the classic builder):
   - on the test base (tests/support/baseimage.py: debootstrap minbase of bookworm with python3,
     git, an ssh client and tini; made once per machine and cached): what the Dockerfile adds is the
     venv alone;
   - on a python-only base (that one with git, ssh, tini and all they pulled purged, flattened into one
     layer with ``docker export | docker import``), as close as this machine gets to the official
     ``python:3.11-slim``: the Dockerfile's apt step installs git, openssh-client and tini too.
   What the Dockerfile adds = the image's size minus its base's (``docker inspect`` Size), with the
   venv's layer and the apt layer apart (``docker history``).
3. ``docker run -d`` of the image (host network, the socket, a new state volume, a bare repository
   with ``apps: {}`` mounted) -> the agent's ``agent.started`` line ("following refs/heads/main of
   ...") and its first pass (``commit.seen``), from the wall clock before ``docker run`` to the
   lines' own timestamps; median and max of ``--starts`` containers.

Everything made (containers, volumes, the images of the run, the python-only base) is removed at the
end; the cached test base and its debootstrap tarball stay. Exit 0 whether or not the targets are met.

Run: ``.venv/bin/python bench/install.py [--runs 15] [--starts 5] [--skip-apt-base] [--json]`` (as root,
needs the Docker engine, pipx and debootstrap: ``bash scripts/setup-host``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker.errors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import GitRemote, cleanup_run, connect  # noqa: E402
from tests.support.agent import LogLine  # noqa: E402
from tests.support.baseimage import (  # noqa: E402
    add_wheelhouse,
    base_image,
    build_agent_image,
    copy_sources,
    image_size,
    source_commit,
)
from tests.support.engine import RUN_LABEL, new_run_prefix  # noqa: E402

MB = 1_000_000
ADDED_TARGET_MB = 80
START_TARGET_S = 3.0
HELP_TARGET_S = 0.15
# What the python-only base keeps: python3 and its venv, CA certificates (and what is essential).
KEEP = ("python3", "python3-venv", "ca-certificates")


def timed(argv: list[str], **kwargs: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return took, done


# -- 1. the package ---------------------------------------------------------------------------------------------------


def package(work: Path, runs: int) -> dict[str, Any]:
    pipx = shutil.which("pipx")
    if pipx is None:
        raise RuntimeError("no pipx: apt-get install -y pipx (bash scripts/setup-host)")
    source = copy_sources(work / "src")
    git = ["git", "-C", str(source), "-c", "user.name=bench", "-c", "user.email=bench@reconciler.invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        timed([*git, *args])
    build_s, _ = timed([sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(source)])
    [wheel] = sorted((work / "dist").glob("*.whl"))
    cwd = work / "cwd"
    cwd.mkdir()
    venv_bin = str(Path(sys.executable).parent)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILE", "PIPX_", "PYTHON"))}
    base_env.pop("VIRTUAL_ENV", None)
    base_env["PATH"] = os.pathsep.join(p for p in base_env.get("PATH", "").split(os.pathsep) if p != venv_bin)

    results: dict[str, Any] = {"build_s": round(build_s, 2), "wheel": wheel.name}
    reconcile = Path()
    for how, extra in (("warm", {}), ("cold", {"PIP_NO_CACHE_DIR": "1"})):
        env = base_env | extra | {"PIPX_HOME": str(work / f"pipx-{how}"), "PIPX_BIN_DIR": str(work / f"bin-{how}")}
        took, _ = timed([pipx, "install", str(wheel)], cwd=cwd, env=env, timeout=1200)
        results[f"pipx_{how}_s"] = round(took, 2)
        reconcile = work / f"bin-{how}" / "reconcile"
    for option in ("--help", "--version"):
        times = [timed([str(reconcile), option], cwd=cwd, env=base_env)[0] for _ in range(runs)]
        name = option.strip("-")
        results[f"{name}_median_s"] = round(statistics.median(times), 3)
        results[f"{name}_max_s"] = round(max(times), 3)
    results["version"] = timed([str(reconcile), "--version"], cwd=cwd, env=base_env)[1].stdout.strip()
    results["runs"] = runs
    return results


# -- 2. the image -----------------------------------------------------------------------------------------------------


def python_only_base(client: Any, base: str, ref: str) -> str:
    """`base` with git, ssh, tini and all they pulled (perl too) purged, flattened into one layer, as `ref`."""
    keep = " ".join(KEEP)
    script = (
        "set -e; apt-mark showmanual | xargs apt-mark auto >/dev/null; "
        f"apt-mark manual {keep} >/dev/null; "
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y --auto-remove -o APT::AutoRemove::RecommendsImportant=false "
        "-o APT::AutoRemove::SuggestsImportant=false git openssh-client tini >/dev/null; "
        "command -v git && exit 1 || true"
    )
    container = client.containers.run(base, ["sh", "-c", script], detach=True)
    try:
        status = container.wait(timeout=300)
        if status["StatusCode"] != 0:
            raise RuntimeError(f"purging {base} failed:\n{container.logs().decode(errors='replace')}")
        repo, _, tag = ref.rpartition(":")
        exported = b"".join(container.export())
        env = client.api.inspect_image(base)["Config"].get("Env") or []
        changes = [*(f"ENV {e}" for e in env), 'CMD ["python3"]', f"LABEL {RUN_LABEL}={prefix_of(ref)}"]
        client.api.import_image_from_data(exported, repository=repo, tag=tag, changes=changes)
    finally:
        container.remove(force=True)
    return ref


def prefix_of(ref: str) -> str:
    return ref.split("/", 1)[0]


def layers(client: Any, ref: str, base: str) -> dict[str, float]:
    """MB of the image's layers over `base`'s, by what made them: the apt step, the venv, the rest."""
    base_ids = {entry["Id"] for entry in client.api.history(base)}
    found = {"apt_mb": 0.0, "venv_mb": 0.0, "other_mb": 0.0}
    for entry in client.api.history(ref):
        if entry["Id"] in base_ids:
            break
        size = entry["Size"] / MB
        made_by = entry.get("CreatedBy", "")
        if "COPY" in made_by and "/opt/reconciler" in made_by:
            found["venv_mb"] += size
        elif "apt-get" in made_by:
            found["apt_mb"] += size
        else:
            found["other_mb"] += size
    return {key: round(value, 1) for key, value in found.items()}


def image(client: Any, prefix: str, work: Path, *, skip_apt_base: bool) -> dict[str, Any]:
    started = time.monotonic()
    base = base_image(client)
    base_s = time.monotonic() - started
    context = copy_sources(work / "context")
    add_wheelhouse(context)
    commit = source_commit()
    results: dict[str, Any] = {"base_ready_s": round(base_s, 1), "variants": [], "refs": []}
    refs: list[str] = results["refs"]  # what the run made, each after what it is built on
    bases = [("test base (git, ssh, tini in it)", base)]
    if not skip_apt_base:
        refs.append(python_only_base(client, base, f"{prefix}/python-only:base"))
        bases.append(("python-only base (git, ssh, tini from apt)", refs[-1]))
    for n, (label, ref_base) in enumerate(bases):
        ref = f"{prefix}/reconciler-agent:{n}"
        started = time.monotonic()
        refs += build_agent_image(client, context, ref, base=ref_base, commit=commit, labels={RUN_LABEL: prefix})
        build_s = time.monotonic() - started
        added = image_size(client, ref) - image_size(client, ref_base)
        results["variants"].append(
            {
                "base": label,
                "ref": ref,
                "base_mb": round(image_size(client, ref_base) / MB, 1),
                "image_mb": round(image_size(client, ref) / MB, 1),
                "added_mb": round(added / MB, 1),
                "build_s": round(build_s, 1),
                **layers(client, ref, ref_base),
            }
        )
    results["image"] = f"{prefix}/reconciler-agent:0"  # on the test base
    return results


# -- 3. docker run -> following ---------------------------------------------------------------------------------------


def starts(client: Any, prefix: str, image_ref: str, work: Path, count: int) -> dict[str, Any]:
    remote = GitRemote(work / "git")
    remote.commit_file("desired-state.yaml", "apps: {}\n", "nothing to run")
    socket = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")
    following: list[float] = []
    first_pass: list[float] = []
    for n in range(count):
        name = f"{prefix}-agent-start-{n}"
        wall = time.time()
        client.containers.run(
            image_ref,
            name=name,
            detach=True,
            network_mode="host",
            environment={"RECONCILE_REPO": remote.url, "RECONCILE_INSTANCE": f"bench-install-{prefix}"},
            volumes={
                socket: {"bind": "/var/run/docker.sock", "mode": "rw"},
                f"{name}-state": {"bind": "/var/lib/reconciler", "mode": "rw"},
                remote.url: {"bind": remote.url, "mode": "rw"},
            },
            labels={RUN_LABEL: prefix},
        )
        seen: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:
            for raw in client.api.logs(name, stdout=False, stderr=True).decode(errors="replace").splitlines():
                line = LogLine.parse(raw)
                if line.event in ("agent.started", "commit.seen") and line.event not in seen:
                    seen[line.event] = line.at - wall
            time.sleep(0.02)
        client.api.stop(name, timeout=30)
        exit_code = client.api.inspect_container(name)["State"]["ExitCode"]
        client.api.remove_container(name, v=True)
        client.api.remove_volume(f"{name}-state", force=True)
        if len(seen) < 2 or exit_code != 0:
            raise RuntimeError(f"start {n}: lines seen {seen}, exit {exit_code}")
        following.append(seen["agent.started"])
        first_pass.append(seen["commit.seen"])
    return {
        "starts": count,
        "following_median_s": round(statistics.median(following), 2),
        "following_max_s": round(max(following), 2),
        "first_pass_median_s": round(statistics.median(first_pass), 2),
        "first_pass_max_s": round(max(first_pass), 2),
    }


# -- the run ----------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    client = connect()
    prefix = new_run_prefix()
    results: dict[str, Any] = {"prefix": prefix, "commit": source_commit()}
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        work = Path(tmp)
        try:
            results["package"] = package(work / "package", args.runs)
            results["image"] = image(client, prefix, work / "image", skip_apt_base=args.skip_apt_base)
            results["start"] = starts(client, prefix, results["image"]["image"], work / "start", args.starts)
        finally:
            # Children before parents: each image built on the one before it goes first.
            for ref in reversed(results.get("image", {}).get("refs", [])):
                with contextlib.suppress(docker.errors.NotFound):
                    client.api.remove_image(ref, force=True)
            results["cleanup_errors"] = cleanup_run(client, prefix)
            client.close()
    return results


def table(results: dict[str, Any]) -> str:
    pkg, img, start = results["package"], results["image"], results["start"]

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    rows: list[tuple[str, str, str, str]] = [
        ("python -m build (wheel and sdist)", f"{pkg['build_s']:.1f} s", "", ""),
        ("pipx install of the wheel, pip's cache warm", f"{pkg['pipx_warm_s']:.1f} s", "", ""),
        ("pipx install of the wheel, no cache (a fresh machine)", f"{pkg['pipx_cold_s']:.1f} s", "", ""),
        (f"reconcile --help after it, median of {pkg['runs']}", f"{pkg['help_median_s']:.3f} s",
         f"<= {HELP_TARGET_S} s", verdict(pkg["help_median_s"] <= HELP_TARGET_S)),
        (f"reconcile --version, median of {pkg['runs']}", f"{pkg['version_median_s']:.3f} s", "", ""),
    ]  # fmt: skip
    for variant in img["variants"]:
        rows.append((f"image over the {variant['base']}: Dockerfile adds", f"{variant['added_mb']:.1f} MB",
                     f"<= {ADDED_TARGET_MB} MB", verdict(variant["added_mb"] <= ADDED_TARGET_MB)))  # fmt: skip
        rows.append((f"  venv {variant['venv_mb']:.1f} MB, apt {variant['apt_mb']:.1f} MB; base "
                     f"{variant['base_mb']:.0f} MB, image {variant['image_mb']:.0f} MB; built in",
                     f"{variant['build_s']:.1f} s", "", ""))  # fmt: skip
    rows += [
        (f"docker run -d -> agent.started (following), median of {start['starts']}",
         f"{start['following_median_s']:.2f} s", f"<= {START_TARGET_S:g} s",
         verdict(start["following_median_s"] <= START_TARGET_S)),
        ("docker run -d -> first pass (commit.seen)", f"{start['first_pass_median_s']:.2f} s", "", ""),
    ]  # fmt: skip
    width = max(len(row[0]) for row in rows)
    lines = [f"{'figure':<{width}}  {'measured':>10}  {'target':<10} verdict"]
    lines += [f"{a:<{width}}  {b:>10}  {c:<10} {d}".rstrip() for a, b, c, d in rows]
    lines += [
        "",
        f"{pkg['version']}; --help max {pkg['help_max_s']:.3f} s, --version max {pkg['version_max_s']:.3f} s",
        f"starts: following max {start['following_max_s']:.2f} s, first pass max {start['first_pass_max_s']:.2f} s;"
        f" test base ready in {img['base_ready_s']:.1f} s (cached: ~0 s; debootstrap and import: ~60 s)",
        f"run prefix {results['prefix']}; cleanup errors: {results['cleanup_errors'] or 'none'}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of reconcile --help and --version")
    parser.add_argument("--starts", type=int, default=5, help="containers started for the start time")
    parser.add_argument("--skip-apt-base", action="store_true", help="only the test base (no python-only base)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = parser.parse_args()
    started = time.monotonic()
    results = run(args)
    results["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(results))
    else:
        print(table(results))
        print(f"whole run: {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
