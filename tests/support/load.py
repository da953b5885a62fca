"""A steady HTTP load on one port, for zero-downtime tests and benchmarks. Standard library only.

Guarantees:
- Every request a thread starts becomes exactly one `Hit`, whatever happens to it: a response
  (any status, body decoded and stripped, `error` "") or no response (`status` 0, `error` the
  exception's class name: ConnectionRefusedError, TimeoutError, RemoteDisconnected, ...).
  Nothing is dropped, nothing raises out of a thread.
- `threads` threads open a new TCP connection for every request and send `Connection: close`:
  each request exercises accept on whatever listens on the port at that moment.
- `keepalive_threads` threads keep one HTTP/1.1 connection and reconnect after an error or when
  the server closes it. A request that meets a reused connection the server had already closed
  (BrokenPipe/ConnectionReset while sending, or RemoteDisconnected, no byte of a response, on a
  reused connection) is sent once more on a new connection, and only that second attempt is
  recorded (with the first attempt's start time, `keepalive` False): every HTTP client does
  this, and it is safe because the requests are GETs. Any other failure on a reused
  connection, and any failure on a new one, counts.
- The traffic goes straight to `host:port`, never through a proxy from the environment.
  `host_header` replaces the Host header and, with `tls`, is the SNI name. With `tls` the
  certificate is not checked (tests use self-signed ones).
- `rate` caps each thread at that many request starts a second; None means back to back. A
  thread with nothing to wait for sends as fast as the server fails, so a refused port yields
  many quick hits.
- `stop()` returns every hit sorted by start time; `hits` is the same, so far, while running.
"""

from __future__ import annotations

import collections
import http.client
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class Hit:
    started: float  # time.monotonic() when the request started
    ended: float
    status: int  # 0 when no HTTP response came back
    body: str  # the response body, decoded and stripped; "" without a response
    error: str  # the exception's class name; "" when a response came back
    keepalive: bool  # the request went on a reused connection


class _StaleConnection(Exception):
    """The server had closed the reused connection before it read the request."""


class _SniHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to `host` with another name in SNI: HTTPSConnection always sends `host`."""

    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext, sni: str) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._sni_context = context
        self._sni = sni

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._sni_context.wrap_socket(self.sock, server_hostname=self._sni)


class Load:
    """Threads sending GET requests until stopped; see the module docstring."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        path: str = "/",
        threads: int = 4,
        keepalive_threads: int = 0,
        host_header: str | None = None,
        timeout: float = 5.0,
        tls: bool = False,
        rate: float | None = None,
    ) -> None:
        if threads < 0 or keepalive_threads < 0 or threads + keepalive_threads == 0:
            raise ValueError("need at least one thread")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive (or None for no cap)")
        self.port = port
        self.host = host
        self.path = path
        self.threads = threads
        self.keepalive_threads = keepalive_threads
        self.host_header = host_header
        self.timeout = timeout
        self.tls = tls
        self.rate = rate
        self._context: ssl.SSLContext | None = None
        if tls:
            self._context = ssl.create_default_context()
            self._context.check_hostname = False
            self._context.verify_mode = ssl.CERT_NONE
        self._hits: list[Hit] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> Load:
        """Start the threads and return self."""
        if self._workers:
            raise RuntimeError("load already started")
        self._stopping.clear()
        for i in range(self.threads):
            self._workers.append(threading.Thread(target=self._run_close, name=f"load-close-{i}", daemon=True))
        for i in range(self.keepalive_threads):
            self._workers.append(threading.Thread(target=self._run_keepalive, name=f"load-keep-{i}", daemon=True))
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> list[Hit]:
        """Stop the threads, wait for requests in flight, and return every hit in start order."""
        self._stopping.set()
        for worker in self._workers:
            worker.join()
        self._workers = []
        return self.hits

    @property
    def hits(self) -> list[Hit]:
        """The hits recorded so far, in start order."""
        with self._lock:
            snapshot = list(self._hits)
        return sorted(snapshot, key=lambda hit: hit.started)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self._hits.append(hit)

    def _headers(self, keepalive: bool) -> dict[str, str]:
        # HTTP/1.1 keeps the connection by default; saying it helps servers that read the header.
        headers = {"Connection": "keep-alive" if keepalive else "close"}
        if self.host_header is not None:
            headers["Host"] = self.host_header
        return headers

    def _connection(self) -> http.client.HTTPConnection:
        if self._context is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        sni = _hostname(self.host_header or self.host)
        return _SniHTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._context, sni=sni)

    def _paced(self) -> Iterator[None]:
        """Yields once per request until stopped, waiting between yields when `rate` is set."""
        interval = 0.0 if self.rate is None else 1.0 / self.rate
        due = time.monotonic()
        while not self._stopping.is_set():
            yield
            if interval:
                # After a slow request the next one starts at once; a burst to catch up would
                # measure the load generator, not the server.
                due = max(due + interval, time.monotonic())
                if self._stopping.wait(due - time.monotonic()):
                    return

    def _exchange(self, conn: http.client.HTTPConnection, reused: bool) -> tuple[int, str]:
        """One GET on `conn`; _StaleConnection when a reused connection was closed under it."""
        try:
            conn.request("GET", self.path, headers=self._headers(keepalive=True))
        except (BrokenPipeError, ConnectionResetError) as exc:
            if reused:
                raise _StaleConnection from exc
            raise
        try:
            response = conn.getresponse()
        except http.client.RemoteDisconnected as exc:
            if reused:
                raise _StaleConnection from exc
            raise
        body = response.read().decode("utf-8", errors="replace").strip()
        return response.status, body

    def _run_close(self) -> None:
        for _ in self._paced():
            started = time.monotonic()
            conn = self._connection()
            try:
                conn.request("GET", self.path, headers=self._headers(keepalive=False))
                response = conn.getresponse()
                body = response.read().decode("utf-8", errors="replace").strip()
                hit = Hit(started, time.monotonic(), response.status, body, "", False)
            except Exception as exc:
                hit = Hit(started, time.monotonic(), 0, "", type(exc).__name__, False)
            finally:
                conn.close()
            self._record(hit)

    def _run_keepalive(self) -> None:
        conn = self._connection()
        try:
            for _ in self._paced():
                started = time.monotonic()
                # http.client drops the socket when the server says it will close, and opens a
                # new one on the next request: no socket now means a new connection.
                reused = conn.sock is not None
                try:
                    try:
                        status, body = self._exchange(conn, reused)
                    except _StaleConnection:
                        conn.close()
                        reused = False
                        status, body = self._exchange(conn, reused)
                    hit = Hit(started, time.monotonic(), status, body, "", reused)
                except Exception as exc:
                    conn.close()
                    hit = Hit(started, time.monotonic(), 0, "", type(exc).__name__, reused)
                self._record(hit)
        finally:
            conn.close()


def _hostname(value: str) -> str:
    """`value` without a ":port": SNI carries a bare name."""
    if value.startswith("["):
        return value[1:].partition("]")[0]
    name, colon, port = value.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else value


def _failed(hit: Hit) -> bool:
    return hit.status == 0 or hit.status >= 500


def failed(hits: Iterable[Hit]) -> list[Hit]:
    """The hits with no response or a 5xx one."""
    return [hit for hit in hits if _failed(hit)]


def bodies(hits: Iterable[Hit]) -> collections.Counter[str]:
    """How many times each body came back, over the hits that did not fail (first seen first)."""
    return collections.Counter(hit.body for hit in hits if not _failed(hit))


def summary(hits: Iterable[Hit]) -> str:
    """`N requests, F failed, bodies {...}`, then what the failures were when there are some."""
    hits = list(hits)
    bad = failed(hits)
    text = f"{len(hits)} requests, {len(bad)} failed, bodies {dict(bodies(hits))}"
    if bad:
        reasons = collections.Counter(hit.error or str(hit.status) for hit in bad)
        text += f", failures {dict(reasons)}"
    return text
