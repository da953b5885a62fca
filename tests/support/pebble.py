"""A real ACME server for tests: Debian's `pebble` (Let's Encrypt's test CA) with `pebble-challtestsrv` as its DNS.

Guarantees:
- `Pebble(folder, http_port)` starts both on free loopback ports: every name resolves to 127.0.0.1 (the
  DNS's default answer), and pebble asks HTTP-01 challenges on `http_port` (a test's proxy listens
  there). `PEBBLE_VA_NOSLEEP=1` (no random wait before a check), `PEBBLE_WFE_NONCEREJECT=0` (no nonce
  refused at random): an order takes about a second.
- Its own TLS certificate is one the test made (`ca_file`, for `tls.acme.ca_file`), so trust is explicit.
- `root()` is the root of the chain pebble issues, from its management API: HTTPS served with pebble's
  certificates verifies against it.
- `stop()` stops pebble (its DNS stays) for "the ACME server is down"; `start()` starts it again (a
  new root: pebble makes one at each start). `close()` stops both. Missing binaries: `PebbleMissing`, saying
  what to install (a test fails on it: never a quiet skip).
- `fake_rate_limited` serves an ACME directory whose new orders answer `rateLimited` with a `Retry-After`,
  as Let's Encrypt does (pebble has no rate limits): accounts are accepted, nothing is checked.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .net import free_port


class PebbleMissing(RuntimeError):
    """pebble or pebble-challtestsrv is not installed."""


def tls_pair(folder: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and `name`, and its key, as files of `folder`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    alt = x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(alt, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Pebble:
    """See the module docstring."""

    def __init__(self, folder: Path, http_port: int) -> None:
        for binary in ("pebble", "pebble-challtestsrv"):
            if shutil.which(binary) is None:
                raise PebbleMissing(f"{binary} is not installed: apt-get install -y pebble")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.http_port = http_port
        self.port, self.management, self.dns, self.dns_management = (free_port() for _ in range(4))
        self.ca_file, key = tls_pair(folder)
        self.config = folder / "pebble.json"
        self.config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.port}",
                        "managementListenAddress": f"127.0.0.1:{self.management}",
                        "certificate": str(self.ca_file),
                        "privateKey": str(key),
                        "httpPort": http_port,
                        "tlsPort": free_port(),
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        self._dns: subprocess.Popen[bytes] | None = None
        self._pebble: subprocess.Popen[bytes] | None = None
        self._dns = subprocess.Popen(
            ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns}", "-http01", "", "-https01", "",
             "-tlsalpn01", "", "-management", f"127.0.0.1:{self.dns_management}",
             "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
            stdout=(folder / "dns.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.start()

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def start(self) -> None:
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        self._pebble = subprocess.Popen(
            ["pebble", "-config", str(self.config), "-dnsserver", f"127.0.0.1:{self.dns}"],
            stdout=(self.folder / "pebble.log").open("ab"), stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.directory, context=self._context(), timeout=1) as answer,
            ):
                if answer.status == 200:
                    return
            if self._pebble.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"pebble did not start: {(self.folder / 'pebble.log').read_text()[-2000:]}")

    def root(self) -> str:
        """The PEM of the root that pebble's chains end at."""
        url = f"https://127.0.0.1:{self.management}/roots/0"
        with urllib.request.urlopen(url, context=self._context(), timeout=5) as answer:
            return str(answer.read().decode())

    def resolve(self, host: str, ip: str) -> None:
        """Make `host` resolve to `ip` for pebble (a host that does not resolve to us)."""
        body = json.dumps({"host": host, "addresses": [ip]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.dns_management}/add-a", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def stop(self) -> None:
        if self._pebble is not None and self._pebble.poll() is None:
            self._pebble.terminate()
            self._pebble.wait(10)

    def close(self) -> None:
        self.stop()
        if self._dns is not None and self._dns.poll() is None:
            self._dns.terminate()
            self._dns.wait(10)


@contextlib.contextmanager
def pebble(folder: Path, http_port: int) -> Iterator[Pebble]:
    server = Pebble(folder, http_port)
    try:
        yield server
    finally:
        server.close()


class _RateLimited(BaseHTTPRequestHandler):
    retry_after = 3600

    def log_message(self, *args: object) -> None:
        return None

    def _base(self) -> str:
        address: Any = self.server.server_address
        return f"https://127.0.0.1:{address[1]}"

    def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        kind = "application/problem+json" if status >= 400 else "application/json"
        self.send_header("Content-Type", kind)
        self.send_header("Replay-Nonce", os.urandom(8).hex())
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        base = self._base()
        names = {"newNonce": "nonce", "newAccount": "account", "newOrder": "order", "revokeCert": "revoke"}
        self._send(200, {key: f"{base}/{path}" for key, path in names.items()})

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Replay-Nonce", os.urandom(8).hex())
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/account":
            self._send(201, {"status": "valid", "contact": []}, {"Location": f"{self._base()}/account/1"})
            return
        self._send(
            429,
            {"type": "urn:ietf:params:acme:error:rateLimited",
             "detail": "too many certificates already issued for this exact set of domains"},
            {"Retry-After": str(self.retry_after)},
        )  # fmt: skip


@contextlib.contextmanager
def fake_rate_limited(folder: Path) -> Iterator[tuple[str, Path]]:
    """An ACME directory whose orders are rate limited: (its URL, the CA file that trusts it)."""
    cert, key = tls_pair(folder, "ratelimited")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RateLimited)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/dir", cert
    finally:
        server.shutdown()
        server.server_close()
