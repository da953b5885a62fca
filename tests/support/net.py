"""Loopback networking helpers for tests: free ports and HTTP polling.

Guarantees: every helper talks to the URL it is given directly, never through a proxy from the
environment (``http_proxy`` and friends are ignored), and `free_port` only ever binds 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

# An opener with an empty ProxyHandler: loopback traffic must not go to a proxy from the env.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: str


def http_request(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 2.0
) -> HttpResponse:
    """One request. HTTP error statuses are returned, not raised.

    Connection errors (refused, reset, timeout, a response cut in the middle by a server that stopped)
    raise `OSError` (`urllib.error.URLError` is one).
    """
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return HttpResponse(
                status=response.status,
                headers=dict(response.headers.items()),
                body=response.read().decode("utf-8", errors="replace"),
            )
    except http.client.IncompleteRead as exc:
        raise ConnectionResetError(f"the response was cut: {exc!r}") from exc
    except urllib.error.HTTPError as exc:
        with exc:
            return HttpResponse(
                status=exc.code,
                headers=dict(exc.headers.items()),
                body=exc.read().decode("utf-8", errors="replace"),
            )


def http_get(url: str, *, timeout: float = 2.0) -> tuple[int, str]:
    """One GET: (status, body). HTTP error statuses are returned; connection errors raise OSError."""
    response = http_request(url, timeout=timeout)
    return response.status, response.body


def wait_http(url: str, timeout: float = 10.0, *, status: int = 200) -> str:
    """Poll `url` every 50 ms until it answers `status`; return that answer's body.

    Raises AssertionError after `timeout` seconds, saying what the last attempt got.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        try:
            got, body = http_get(url, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if got == status:
                return body
            last = f"HTTP {got}: {body[:200]!r}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"{url} did not answer HTTP {status} within {timeout}s (last: {last})")
        time.sleep(0.05)


def end_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 5 s, of a server a fixture started; never raises."""
    if process is None or process.poll() is not None:
        return
    try:
        process.terminate()
        process.wait(timeout=5)
    except (OSError, subprocess.SubprocessError):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            process.kill()
            process.wait(timeout=5)
