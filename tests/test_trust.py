"""What this server applies: only signed commits (``--require-signed-by``) within its policy (``--policy``).

Real parts: ssh keys from ``ssh-keygen``, commits signed by git in a clone and pushed to a bare remote,
the agent and the one-shot ``reconcile`` against the real engine. What a user sees: an unsigned commit,
or one signed by a key not allowed, or one that asks for more than the policy allows, is not applied,
is logged once naming the commit (and the key), is shown by ``status``; the host keeps the last
verified commit (drift healed), and the next good commit deploys. Without a policy, a mount of the
Docker socket is warned about at the agent's start. The dashboard names the key that signed the commit it
applied, says why a tip is refused, and offers no rollback commit that the repository would not sign.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.support.agent import World, wait_body
from tests.support.net import free_port, http_get
from tests.support.state import show

pytestmark = pytest.mark.docker


def ssh_key(folder: Path, name: str) -> tuple[Path, str]:
    """A new ed25519 key: its private key file, and its public key line."""
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key, (folder / f"{name}.pub").read_text().strip()


def commit(world: World, message: str, *, key: Path | None, versions: dict[str, str] | None = None) -> str:
    """Write the world's file (apps at `versions`), commit it signed by `key` (None: unsigned), push; the sha."""
    for name, version in (versions or {}).items():
        world.apps[name].version = version
    world.remote.write("desired-state.yaml", world.desired_text())
    world.remote.git("add", "desired-state.yaml")
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-S"] if key else ["commit"]
    world.remote.git(*sign, "-q", "--allow-empty", "-m", message)
    world.remote.push()
    return world.remote.head()


def allowed(world: World, public: str) -> Path:
    signers = world.tmp / "allowed_signers"
    signers.write_text(f'deploy@example.com namespaces="git" {public}\n')
    return signers


def test_the_one_shot_applies_only_a_commit_signed_by_an_allowed_key(world: World) -> None:
    web = world.app()
    good, public = ssh_key(world.tmp, "good")
    rule = f"ssh:{allowed(world, public)}"
    head = commit(world, "v1, unsigned", key=None)
    result = world.server("--require-signed-by", rule)
    assert result.returncode == 1, show(result)
    assert f"commit {head[:8]} is not signed" in result.stderr and "Traceback" not in result.stderr, show(result)
    assert world.client.api.containers(all=True, filters={"name": web.name}) == []
    commit(world, "v1, signed", key=good)
    result = world.server("--require-signed-by", rule)
    assert result.returncode == 0, show(result)
    wait_body(web.port, "v1", timeout=10)


def test_the_agent_keeps_the_last_verified_commit_until_a_good_one_comes(world: World) -> None:
    web = world.app()
    good, public = ssh_key(world.tmp, "good")
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", f"{good}.pub"], capture_output=True, text=True,
                                 check=True).stdout.split()[1]  # fmt: skip
    stranger, _ = ssh_key(world.tmp, "stranger")
    rule = f"ssh:{allowed(world, public)}"
    commit(world, "v1", key=good)
    agent = world.agent("--require-signed-by", rule, interval="1s")
    agent.wait_for("deploy.succeeded", app=web.name, timeout=60)

    unsigned = commit(world, "v2, unsigned", key=None, versions={web.name: "v2"})
    line = agent.wait_for("commit.unsigned", timeout=30)
    assert unsigned[:8] in line.message, agent.log()
    # Drift is still healed to the last verified commit, and the refusal is said once.
    world.client.api.stop(web.name, timeout=1)
    wait_body(web.port, "v1", timeout=30, agent=agent)
    assert len(agent.events("commit.unsigned")) == 1, agent.log()
    status = world.server("--require-signed-by", rule, "status")
    assert f"!! not applied: commit {unsigned[:8]} is not signed" in status.stdout, show(status)
    status = world.server("status")  # without the flag: what the agent refused, from its journal
    assert f"!! not applied: commit {unsigned[:8]} is not signed" in status.stdout, show(status)
    # No rollback commit is built (and signed by an operator) on top of the untrusted tip.
    edit = world.rc("--require-signed-by", rule, "rollback", web.name, "--to", "v1", "--push")
    assert edit.returncode == 1 and "no commit is built on it here" in edit.stderr, show(edit)
    assert world.remote_file().count("version: v2") == 1
    # A restarted agent keeps to the last commit it applied that still verifies (from its journal).
    agent.stop()
    port = free_port()
    agent = world.agent("--require-signed-by", rule, "--listen", f"127.0.0.1:{port}", interval="1s")
    agent.wait_for("commit.unsigned", timeout=30)
    world.client.api.stop(web.name, timeout=1)
    wait_body(web.port, "v1", timeout=30, agent=agent)

    other = commit(world, "v3, by a stranger", key=stranger, versions={web.name: "v3"})
    line = agent.wait_for("commit.bad-signature", timeout=30)
    assert other[:8] in line.message and "SHA256:" in line.message, agent.log()
    wait_body(web.port, "v1", timeout=5, agent=agent)

    page = f"http://127.0.0.1:{port}"
    overview = http_get(page + "/", timeout=10)[1]
    assert 'id="refused"' in overview and "not signed by an allowed key" in overview, overview

    commit(world, "v3, signed", key=good, versions={web.name: "v3"})
    agent.wait_for("deploy.succeeded", "v3", app=web.name, timeout=60)
    wait_body(web.port, "v3", timeout=10, agent=agent)
    # The page may show its last board for a moment while the pass's new one is taken: wait for it.
    deadline = time.monotonic() + 15
    while 'id="refused"' in (overview := http_get(page + "/", timeout=10)[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert 'id="refused"' not in overview and f"deploy@example.com {fingerprint}" in overview, overview
    app_page = http_get(f"{page}/apps/{web.name}", timeout=10)[1]
    assert 'id="rollback-off"' in app_page and "does not sign" in app_page, app_page


POLICY = """\
images: ["{repo}"]
volumes: ["/srv/apps/"]
ports:
  interfaces: ["127.0.0.1"]
  ranges: ["1024-65535"]
"""


def test_a_commit_beyond_the_policy_is_refused_with_its_places(world: World) -> None:
    web = world.app()
    policy = world.tmp / "policy.yaml"
    policy.write_text(POLICY.format(repo=web.image))
    world.commit_apps("v1")
    assert world.server("--policy", policy).returncode == 0
    wait_body(web.port, "v1", timeout=10)
    text = world.desired_text().replace(
        "    init: true\n", '    init: true\n    volumes: ["/var/run/docker.sock:/var/run/docker.sock"]\n', 1
    )
    text = text.replace("version: v1", "version: v2", 1)
    world.remote.write("desired-state.yaml", text)
    world.remote.git("commit", "-qam", "mount the docker socket")
    world.remote.push()
    result = world.server("--policy", policy)
    assert result.returncode == 1, show(result)
    line = next(line for line in result.stderr.splitlines() if "docker.sock" in line).removeprefix("error: ")
    assert line.startswith("desired-state.yaml:") and ".volumes[0]: /var/run/docker.sock" in line, show(result)
    wait_body(web.port, "v1", timeout=5)  # nothing of the commit was applied
    check = world.rc("validate", "--policy", str(policy))
    assert check.returncode == 1 and line in check.stderr, show(check)
    # The agent: refused once, the host keeps v1; without a policy it warns about the mount at start.
    agent = world.agent("--policy", str(policy), interval="1s")
    refused = agent.wait_for("commit.refused", timeout=30)
    assert "docker.sock" in refused.message, agent.log()
    wait_body(web.port, "v1", timeout=5, agent=agent)


def test_without_a_policy_the_agent_warns_about_a_docker_socket_mount(world: World) -> None:
    world.app()
    world.commit_apps("v1")
    text = world.desired_text().replace(
        "    init: true\n", '    init: true\n    volumes: ["/var/run/docker.sock:/var/run/docker.sock:ro"]\n', 1
    )
    world.remote.write("desired-state.yaml", text)
    world.remote.git("commit", "-qam", "mount the docker socket")
    world.remote.push()
    agent = world.agent(interval="60s")
    line = agent.wait_for("policy.warning", timeout=30)
    assert "docker.sock" in line.message and "desired-state.yaml:" in line.message, agent.log()
