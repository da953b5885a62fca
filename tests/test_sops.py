"""SOPS files of the repository on the real engine, through the command line (issue 21): the env and the
files of a container come from SOPS files committed beside desired-state.yaml and decrypted with the
server's age key; a file secret is bind-mounted read-only from a folder of the state directory that goes
with its release; a commit no key here opens is refused whole and changes nothing; the agent redeploys on a
changed value, keeps to the last good commit when a commit is refused (said once), and never prints a value.
"""

from __future__ import annotations

import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import AppNames, ImageFactory, free_port
from tests.support.agent import PASS_DONE, World
from tests.support.sops import age_key, encrypt, needs_age
from tests.support.state import Site, body, cli, must_inspect, output, show

pytestmark = [pytest.mark.docker, needs_age]

GATE = "{exec: [wget, -qO-, http://127.0.0.1:8000/health], interval: 200ms, timeout: 10s, healthy_for: 300ms}"
TOKEN, PASSWORD, BLOB_LINE = "token-plain-30417", "password-plain-55120", "blob-plain-88231"
BLOB = b"\x00\x01\xfe\xff binary\n" + BLOB_LINE.encode() + b"\n"  # not UTF-8: SOPS' binary format
LABEL = "io.reconciler.secret-files"


def execute(container: str, *argv: str) -> tuple[int, str]:
    done = subprocess.run(["docker", "exec", container, *argv], capture_output=True, text=True, timeout=30)
    return done.returncode, (done.stdout + done.stderr).strip()


def commit_files(site: Site, files: dict[str, bytes], text: str, message: str) -> str:
    """Write each file (already encrypted) and desired-state.yaml in the clone, commit and push."""
    for path, data in files.items():
        target = site.remote.clone_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    site.remote.write("desired-state.yaml", text)
    sha = site.remote.commit(message)
    site.remote.push()
    return sha


def app_text(site: Site, app: str, port: int) -> str:
    return f"""apps:
  {app}:
    image: {site.web()}
    version: v1
    ports: ["127.0.0.1:{port}:8000"]
    env_file: {{sops: secrets/web.env}}
    secrets:
      - {{source: {{sops: secrets/db.yaml, key: db.password}}, target: db_password}}
      - {{source: {{sops: secrets/blob.bin}}, target: blob, mode: "0440", uid: 1000, gid: 1000}}
    init: true
    stop_timeout: 1s
    health: {GATE}
"""


PLAINTEXTS = {
    "secrets/web.env": f"API_TOKEN={TOKEN}\nMODE=prod\n".encode(),
    "secrets/db.yaml": f"db:\n    password: {PASSWORD}\n".encode(),
    "secrets/blob.bin": BLOB,
}


def encrypted(recipients: list[str]) -> dict[str, bytes]:
    """The files of ``app_text``, each encrypted anew (a fresh data key) for ``recipients``."""
    return {path: encrypt(data, path, recipients) for path, data in PLAINTEXTS.items()}


def committed_app(site: Site, images: ImageFactory, app_names: AppNames, tmp_path: Path) -> tuple[str, int, Path, str]:
    """An app of ``app_text`` committed with its SOPS files for a new server key: its name, port, key file and
    recipient."""
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    key, recipient = age_key(tmp_path, "server")
    commit_files(site, encrypted([recipient]), app_text(site, app, port), "an app with SOPS secrets")
    return app, port, key, recipient


def test_sops_values_reach_the_container_from_a_folder_that_goes_with_the_release_and_are_never_printed(
    site: Site, images: ImageFactory, app_names: AppNames, tmp_path: Path
) -> None:
    app, port, key, recipient = committed_app(site, images, app_names, tmp_path)

    dry = site.dry_run()  # no key here: nothing decrypted, nothing guessed
    assert dry.returncode == 2, show(dry)
    assert f"note: {app}: env_file sops:secrets/web.env: not checked (no key here opens it)" in output(dry)
    valid = cli("validate", "--repo", site.repo)
    assert valid.returncode == 0, show(valid)
    first = site.converge("--sops-age-key-file", key)

    assert execute(app, "sh", "-c", "echo $API_TOKEN $MODE") == (0, f"{TOKEN} prod")
    assert execute(app, "cat", "/run/secrets/db_password") == (0, PASSWORD)
    assert execute(app, "stat", "-c", "%a %u %g", "/run/secrets/blob") == (0, "440 1000 1000")
    copied = subprocess.run(["docker", "exec", app, "cat", "/run/secrets/blob"], capture_output=True, timeout=30)
    assert copied.stdout == BLOB
    # Bound read-only from the release's own folder of the state directory (0700), never copied into a layer.
    inspected = must_inspect(site.client, app)
    folder = site.state / "secrets" / inspected["Config"]["Labels"][LABEL]
    mounts = {m["Destination"]: m for m in inspected["Mounts"]}
    assert mounts["/run/secrets/blob"]["Source"] == str((folder / "blob").absolute())
    assert mounts["/run/secrets/blob"]["RW"] is False
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(site.state.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "db_password").stat().st_mode) == 0o400
    assert body(port) == "v1"

    said = "\n".join(
        output(r)
        for r in (dry, valid, first, site.history(), cli("status", "--repo", site.repo, "--state-dir", site.state))
    )
    labels = str(inspected["Config"]["Labels"])
    journal = (site.state / "journal.db").read_bytes().decode(errors="replace")
    for plain in (TOKEN, PASSWORD, BLOB_LINE):
        assert plain not in said and plain not in labels and plain not in journal

    # Rotation: every file encrypted anew (new data keys) for two recipients; the server uses the new key.
    second, recipient2 = age_key(tmp_path, "second")
    commit_files(site, encrypted([recipient, recipient2]), app_text(site, app, port), "rotate the keys")
    assert site.dry_run("--sops-age-key-file", second).returncode == 0
    site.converge("--sops-age-key-file", second)
    assert must_inspect(site.client, app)["Id"] == inspected["Id"]  # no redeploy

    commit_files(site, {}, "apps: {}\n", "the app goes")
    site.converge("--sops-age-key-file", second)
    assert not folder.exists() and list((site.state / "secrets").iterdir()) == []


def test_a_commit_no_key_here_opens_is_refused_whole_and_what_runs_keeps_running(
    site: Site, images: ImageFactory, app_names: AppNames, tmp_path: Path
) -> None:
    app, port, key, _ = committed_app(site, images, app_names, tmp_path)
    _, stranger = age_key(tmp_path, "stranger")
    site.converge("--sops-age-key-file", key)
    before = must_inspect(site.client, app)["Id"]

    changed = encrypt(b"API_TOKEN=for-someone-else\n", "secrets/web.env", [stranger])
    commit_files(site, {"secrets/web.env": changed}, app_text(site, app, port), "for a key the server lacks")
    refused = site.reconcile("--sops-age-key-file", key)

    assert refused.returncode == 1, show(refused)
    assert f"secrets/web.env: no age identity matches {stranger[:12]}… (tried 1); not applied" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, show(refused)
    running = must_inspect(site.client, app)
    assert running["Id"] == before and running["State"]["Running"]
    assert execute(app, "sh", "-c", "echo $API_TOKEN") == (0, TOKEN)


def test_the_agent_redeploys_a_changed_secret_keeps_to_the_last_good_commit_and_never_prints_one(
    world: World, images: ImageFactory, app_names: AppNames, tmp_path: Path
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    key, recipient = age_key(tmp_path, "server")
    _, stranger = age_key(tmp_path, "stranger")
    text = f"""apps:
  {app}:
    image: {world.web()}
    version: v1
    ports: ["127.0.0.1:{port}:8000"]
    secrets:
      - {{source: {{sops: secrets/app.yaml, key: password}}, target: password}}
    init: true
    stop_timeout: 1s
    health: {GATE}
"""

    def password(value: str, to: str) -> dict[str, bytes]:
        return {"secrets/app.yaml": encrypt(f"password: {value}\n".encode(), "secrets/app.yaml", [to])}

    commit_files(world, password("first-plain-61873", recipient), text, "a secret")
    agent = world.agent("--sops-age-key-file", str(key), interval="1s", env=PASS_DONE)
    agent.wait_for("deploy.succeeded", app=app, timeout=30)
    assert execute(app, "cat", "/run/secrets/password") == (0, "first-plain-61873")
    old = must_inspect(world.client, app)["Id"]

    mark = agent.mark()
    commit_files(world, password("second-plain-72904", recipient), text, "a new password")
    agent.wait_for("deploy.succeeded", app=app, since=mark, timeout=30)
    assert execute(app, "cat", "/run/secrets/password") == (0, "second-plain-72904")
    kept = must_inspect(world.client, f"{app}.prev")  # the old release, stopped: its own folder, the old value
    assert kept["Id"] == old
    previous = Path(next(m["Source"] for m in kept["Mounts"] if m["Destination"] == "/run/secrets/password"))
    assert previous.read_text() == "first-plain-61873"

    mark = agent.mark()
    refused_sha = commit_files(world, password("third-plain-83015", stranger), text, "for a key the agent lacks")
    said = agent.wait_for("commit.refused", since=mark, timeout=30)
    assert f"commit {refused_sha[:8]}: secrets/app.yaml: no age identity matches {stranger[:12]}…" in said.message
    agent.pass_after(time.time(), count=2)  # two more passes over the same commit: said once all the same
    assert len(agent.events("commit.refused", since=mark)) == 1
    assert execute(app, "cat", "/run/secrets/password") == (0, "second-plain-72904")
    for plain in ("first-plain-61873", "second-plain-72904", "third-plain-83015"):
        assert plain not in agent.log()
