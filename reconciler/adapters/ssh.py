"""The ssh transport to a remote Docker engine (``ssh://[user@]host[:port]``), with the ssh client.

Guarantees:
- ``preflight`` logs in once and asks the far side's docker for its version: an unreachable host, a
  refused key or a missing docker is one ``EngineUnavailable`` line within ``SSH_TIMEOUT`` seconds.
- ``SshTunnel`` is a private unix socket (in a folder only we can read, removed at exit); each
  connection to it runs ``ssh HOST docker system dial-stdio``; ssh's stderr never reaches ours.
- ``ssh_argv`` runs ssh in batch mode (never a prompt) and refuses a URL without a host or with a port
  that is not a number, as an ``EngineUnavailable`` that names the URL.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.parse

from reconciler.errors import EngineUnavailable

SSH_TIMEOUT = 20.0  # seconds for an ssh:// host to log in and answer `docker version`


def preflight(url: str) -> None:
    """Log in to an ``ssh://`` engine host once with the ssh client, as the tunnel will, and ask the far
    side's docker for its version: so that an unreachable host, a refused key or a missing docker is
    one clear line in seconds, rather than ssh's own stderr and a hang inside the SDK."""
    argv = [*ssh_argv(url), "docker", "version", "--format", "{{.Server.Version}}"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SSH_TIMEOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise EngineUnavailable(f"Docker engine at {url}: no ssh client on this machine") from None
    except subprocess.TimeoutExpired:
        raise EngineUnavailable(
            f"Docker engine at {url} does not answer: ssh gave no answer in {SSH_TIMEOUT:g}s"
        ) from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        why = lines[-1] if lines else f"ssh exited {done.returncode}"
        raise EngineUnavailable(f"Docker engine at {url} does not answer: {why}")


class SshTunnel:
    """A private unix socket that reaches an ``ssh://`` engine: each connection to it runs
    ``ssh HOST docker system dial-stdio`` and relays bytes both ways (what ``docker -H ssh://`` does).

    By hand because the SDK's own ssh transport imports paramiko (and cryptography) into every run,
    ssh or not, which costs more than the rest of our start-up; ssh's stderr is kept out of ours.
    """

    def __init__(self, url: str) -> None:
        self.argv = [*ssh_argv(url), "docker", "system", "dial-stdio"]
        self.dir = tempfile.mkdtemp(prefix="reconcile-ssh-")
        self.path = os.path.join(self.dir, "docker.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(8)
        atexit.register(shutil.rmtree, self.dir, True)
        threading.Thread(target=self._serve, name="ssh-tunnel", daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _serve(self) -> None:
        while True:
            conn, _ = self.server.accept()
            process = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0
            )
            threading.Thread(target=self._upstream, args=(conn, process), daemon=True).start()
            threading.Thread(target=self._downstream, args=(conn, process), daemon=True).start()

    @staticmethod
    def _upstream(conn: socket.socket, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                process.stdin.write(data)
        with contextlib.suppress(OSError):
            process.stdin.close()

    @staticmethod
    def _downstream(conn: socket.socket, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        with contextlib.suppress(OSError):
            while data := process.stdout.read(65536):
                conn.sendall(data)
        with contextlib.suppress(OSError):
            conn.close()
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


def ssh_argv(url: str) -> list[str]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = ["-p", str(parts.port)] if parts.port else []  # none: the user's ssh config decides
    except ValueError:
        raise EngineUnavailable(f"{url}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise EngineUnavailable(f"{url}: no host; write ssh://[user@]host[:port]")
    target = f"{parts.username}@{parts.hostname}" if parts.username else parts.hostname
    return ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(SSH_TIMEOUT / 2)}", *port, "--", target]
