"""Hostile HTTP clients for a listener on this machine: connections that send nothing, or a byte a second.

Guarantees:
- `Hostile(host, port, idle=N, slow=M)` opens N connections that never send a byte and M that send a
  request head one byte a second (it never ends: a slow-loris client). One thread drives them all,
  for at most `seconds`: bounded in count and time, and it stops by itself (or at `stop()`).
- A connection the server closes (or never accepts) is opened again, so that the load stays N + M
  connections, as an attacker that holds them would; `reopened` counts those, `refused` the connects
  that failed.
- Traffic goes only to `host` (tests and benches pass 127.0.0.1), from `source` when given (another
  loopback address, 127.0.0.2: a client on another host, as the listener sees it). Standard library only.
- `probe(host, port, method, path)` is one well-behaved request on a new connection: (status, seconds
  from connect to the whole answer), status 0 when it failed within its `timeout`.
"""

from __future__ import annotations

import http.client
import selectors
import socket
import threading
import time

_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 60_000


class Hostile:
    def __init__(self, host: str, port: int, *, idle: int, slow: int, seconds: float = 120.0, source: str = "") -> None:
        self.host, self.port, self.idle, self.slow, self.seconds = host, port, idle, slow, seconds
        self.source = source
        self.reopened = 0
        self.refused = 0
        self.open_now = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hostile", daemon=True)

    def __enter__(self) -> Hostile:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(timeout=30)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.source:
            sock.bind((self.source, 0))
        try:
            sock.connect((self.host, self.port))
        except BlockingIOError:
            pass  # connecting: it completes in the kernel's backlog even before the server accepts
        except OSError:
            self.refused += 1
            sock.close()
            return None
        return sock

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        sent: dict[socket.socket, int] = {}  # slow connections: how many bytes of the head each has sent
        idle: set[socket.socket] = set()

        def fill(first: bool) -> None:
            while len(idle) < self.idle and not self._stop.is_set():
                sock = self._connect()
                if sock is None:
                    return
                idle.add(sock)
                selector.register(sock, selectors.EVENT_READ)
                self.reopened += 0 if first else 1
            while len(sent) < self.slow and not self._stop.is_set():
                sock = self._connect()
                if sock is None:
                    return
                sent[sock] = 0
                selector.register(sock, selectors.EVENT_READ)
                self.reopened += 0 if first else 1

        def drop(sock: socket.socket) -> None:
            selector.unregister(sock)
            idle.discard(sock)
            sent.pop(sock, None)
            sock.close()

        deadline = time.monotonic() + self.seconds
        fill(first=True)
        self.open_now = len(idle) + len(sent)
        self._ready.set()
        next_byte = time.monotonic() + 1.0
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.1):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:  # closed by the server (or reset): the attacker opens another
                        drop(sock)
                if time.monotonic() >= next_byte:
                    next_byte += 1.0
                    for sock in list(sent):
                        try:
                            sock.send(_HEAD[sent[sock] : sent[sock] + 1])
                            sent[sock] = (sent[sock] + 1) % len(_HEAD)
                        except BlockingIOError:
                            pass
                        except OSError:
                            drop(sock)
                fill(first=False)
                self.open_now = len(idle) + len(sent)
        finally:
            for sock in [*idle, *sent]:
                selector.unregister(sock)
                sock.close()
            selector.close()


def probe(
    host: str, port: int, method: str = "GET", path: str = "/healthz", *, timeout: float = 10.0
) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    except (OSError, http.client.HTTPException):
        return 0, time.perf_counter() - started
    finally:
        conn.close()
