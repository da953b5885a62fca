"""A git remote over HTTP with a password: ``git http-backend`` behind a loopback server that checks basic auth.

Guarantees:
- ``GitHttp(root, user, password)`` serves every bare repository under ``root`` at
  ``http://127.0.0.1:PORT/NAME.git`` through git's own smart-HTTP CGI (``git http-backend``), so clone,
  fetch, ls-remote and push behave as with a real forge.
- A request without the user and password answers 401 with a ``WWW-Authenticate`` challenge (what
  makes git ask its credential helpers); a wrong one answers 401 too and is counted in ``refused``.
- ``url(name)`` is the repository's URL with the credentials in it (``http://user:password@…``);
  ``url(name, password=…)`` the same with another password; ``bare(name)`` without any.
- Only 127.0.0.1; ``stop()`` closes it. The server's own log lines are not printed.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_BACKEND = Path(subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip())


class GitHttp:
    """See the module docstring."""

    def __init__(self, root: Path, user: str, password: str) -> None:
        self.root = root
        self.user = user
        self.password = password
        self.refused = 0
        self.served = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                body = self._body()
                if not server._allowed(self.headers.get("Authorization", "")):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                server.served += 1
                path, _, query = self.path.partition("?")
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": str(server.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": urllib.parse.unquote(path),
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": server.user,
                    "REMOTE_ADDR": "127.0.0.1",
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                }
                done = subprocess.run(
                    [str(_BACKEND / "git-http-backend")], input=body, env=env, capture_output=True, check=False
                )
                head, _, payload = done.stdout.partition(b"\r\n\r\n")
                if not _:
                    head, _, payload = done.stdout.partition(b"\n\n")
                status, headers = 200, []
                for line in head.decode("latin-1").splitlines():
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def _allowed(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        given = base64.b64decode(header.removeprefix("Basic ")).decode(errors="replace")
        if given == f"{self.user}:{self.password}":
            return True
        self.refused += 1
        return False

    def bare(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def url(self, name: str, *, password: str | None = None) -> str:
        secret = urllib.parse.quote(self.password if password is None else password, safe="")
        return f"http://{urllib.parse.quote(self.user, safe='')}:{secret}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
