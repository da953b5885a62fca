"""A real OpenSSH server on 127.0.0.1, and a real `ssh` client set up to reach it, for tests.

Guarantees:
- `Sshd.start()` runs `/usr/sbin/sshd -D -e -f <its own config>` listening on 127.0.0.1 only, with
  its own ed25519 host key, its own pid file and log (`<dir>/sshd.log`), and one authorized key: a
  client key made for this server. It returns once the server has let that key in and run
  `docker info` in a session (so the session's PATH holds the `docker` CLI, which answered; its
  engine's ID is `engine_id`), or raises `SshdError` with the server's log. `stop()` ends that
  process (by its pid, and only it) and never raises. No system sshd, no /etc/ssh file and
  nothing under /root/.ssh is read, written or touched (the only shared thing it may create is
  the privilege separation directory /run/sshd, which sshd insists on).
- The client side is the real OpenSSH `ssh`: `client_env()` puts `<dir>/bin` first on PATH, where
  `ssh` is a two-line script that runs the real one with `-F <dir>/ssh_config`. OpenSSH reads
  `~/.ssh/config` from the passwd entry's home, never from `$HOME`, so a wrapper on PATH is the
  way to give a program that runs `ssh` (reconciler's ssh tunnel) a config of its own. That
  config, for `Host 127.0.0.1`: this server's port (so `ssh://root@127.0.0.1` needs no port),
  the client key only (`IdentitiesOnly`), a known_hosts file holding this server's host key with
  `StrictHostKeyChecking yes` (a wrong key fails, no prompt), `BatchMode yes` (never a password
  prompt).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .net import end_process, free_port

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")
# What sshd gives a root session when nothing else says so (Debian's SUPERUSER_PATH); the directory
# of the `docker` CLI goes first, so `docker system dial-stdio` runs wherever docker is installed.
SUPERUSER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SshdError(RuntimeError):
    """sshd or ssh-keygen is missing, sshd did not start, or the client could not log in through it."""


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SshdError(f"{name} is not installed: apt-get install -y {package} (bash scripts/setup-host does it)")
    return found


def _keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair at PATH (no passphrase); return the public key line."""
    subprocess.run(
        [_tool("ssh-keygen", "openssh-client"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    path.chmod(0o600)
    return path.with_suffix(".pub").read_text().strip()


class Sshd:
    """One `sshd -D` process on 127.0.0.1 and the client files to reach it; see the module docstring."""

    def __init__(self, directory: Path, *, user: str = "root") -> None:
        self.directory = directory
        self.user = user
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "sshd.log"
        self.bin_dir = directory / "bin"
        self.client_config = directory / "ssh_config"
        self.client_key = directory / "client_key"
        self.known_hosts = directory / "known_hosts"
        self.host_key = directory / "ssh_host_ed25519_key"
        self.engine_id = ""  # `docker info`'s ID of the engine behind the server, once started

    # -- what tests use -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`ssh://USER@127.0.0.1:PORT`, a DOCKER_HOST for the engine behind this server."""
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        """Environment overrides for a process whose `ssh` must reach this server."""
        return {"PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', SUPERUSER_PATH)}"}

    def ssh(self, command: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """`ssh USER@127.0.0.1 COMMAND` (one shell command line) with the client a test's program uses."""
        return subprocess.run(
            [str(self.bin_dir / "ssh"), f"{self.user}@127.0.0.1", "--", command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # -- process --------------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> Sshd:
        if not SSHD.is_file():
            raise SshdError(f"{SSHD} is not installed: apt-get install -y openssh-server (bash scripts/setup-host)")
        real_ssh = _tool("ssh", "openssh-client")
        docker_cli = _tool("docker", "docker.io")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)

        host_public = _keygen(self.host_key, "reconciler-tests-host")
        client_public = _keygen(self.client_key, "reconciler-tests-client")
        authorized = self.directory / "authorized_keys"
        authorized.write_text(client_public + "\n")
        authorized.chmod(0o600)
        self.bin_dir.mkdir(mode=0o700, exist_ok=True)
        wrapper = self.bin_dir / "ssh"
        wrapper.write_text(
            "#!/bin/sh\n"
            "# The real OpenSSH client with the tests' config (see tests/support/sshd.py).\n"
            f'exec {shlex.quote(real_ssh)} -F {shlex.quote(str(self.client_config))} "$@"\n'
        )
        wrapper.chmod(0o700)

        session_path = f"{Path(docker_cli).parent}:{SUPERUSER_PATH}"
        last_log = ""
        for _attempt in range(3):  # a free port can be taken between free_port() and bind
            self.port = free_port()
            config = self.directory / "sshd_config"
            config.write_text(self._server_config(authorized, session_path))
            self._write_client_files(host_public)
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [str(SSHD), "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_banner(timeout):
                break
            self.stop()
            last_log = self._log_tail()
        else:
            raise SshdError(f"sshd did not answer on 127.0.0.1; log tail:\n{last_log}")

        check = self.ssh("docker info --format '{{.ID}}'")
        self.engine_id = check.stdout.strip()
        if check.returncode != 0 or not self.engine_id:
            self.stop()
            raise SshdError(
                f"`ssh {self.user}@127.0.0.1 docker info` through the test sshd on port {self.port} "
                f"exited {check.returncode}\n--- stdout\n{check.stdout}--- stderr\n{check.stderr}"
                f"--- sshd log tail\n{self._log_tail()}"
            )
        return self

    def _server_config(self, authorized: Path, session_path: str) -> str:
        session_env = f"PATH={session_path}"
        engine = os.environ.get("DOCKER_HOST", "")
        if engine and not engine.startswith("ssh://"):
            # The far side's docker must reach the engine the tests look at (the SDK's default otherwise).
            session_env += f" DOCKER_HOST={engine}"
        lines = [
            "ListenAddress 127.0.0.1",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.directory / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            # The key files live under /tmp, which is group/world writable: StrictModes would refuse them.
            "StrictModes no",
            "PrintMotd no",
            "AcceptEnv none",
            f"SetEnv {session_env}",
            "LogLevel VERBOSE",
        ]
        return "\n".join(lines) + "\n"

    def _write_client_files(self, host_public: str) -> None:
        key_type, key_data = host_public.split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {key_type} {key_data}\n")
        self.known_hosts.chmod(0o600)
        self.client_config.write_text(
            "\n".join(
                [
                    "Host 127.0.0.1",
                    f"  Port {self.port}",
                    f"  IdentityFile {self.client_key}",
                    "  IdentitiesOnly yes",
                    f"  UserKnownHostsFile {self.known_hosts}",
                    "  GlobalKnownHostsFile /dev/null",
                    "  StrictHostKeyChecking yes",
                    "  BatchMode yes",
                    "  ControlMaster no",
                ]
            )
            + "\n"
        )
        self.client_config.chmod(0o600)

    def _wait_banner(self, timeout: float) -> bool:
        """True once the server sends its SSH banner; False when the process dies or time is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                    if sock.recv(8).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process, self.process = self.process, None
        end_process(process)
