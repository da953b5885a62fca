"""Certificates by ACME on the real proxy, from a real ACME server (Debian's pebble, its DNS answering 127.0.0.1).

What a user sees: the first pass orders a certificate for each exact host of the routes and HTTPS serves
pebble's chain (verified against its root); plain HTTP redirects and HTTPS carries HSTS; a second run orders
nothing; a renewal under load fails no request; pebble down is one line per host and the old certificate keeps
serving; a rate-limited answer waits its Retry-After; a route removed takes its certificate out; a PEM of
``tls.certs`` wins over ACME for its names.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path

from tests.support.agent import PASS_DONE
from tests.support.load import Load
from tests.support.net import free_port, http_request
from tests.support.pebble import Pebble, fake_rate_limited, pebble, tls_pair
from tests.support.routed import Routed, RoutedApp
from tests.support.state import show
from tests.test_notify import Receiver

EMAIL = "ops@example.com"


def acme_tls(routed: Routed, directory: str, ca_file: Path, extra: str = "") -> str:
    assert routed.tls_port is not None
    return (
        f"{{ports: [{routed.tls_port}], acme: {{email: {EMAIL}, directory: '{directory}', ca_file: {ca_file}}}{extra}}}"
    )


def https(port: int, host: str, *, root: str | None = None, path: str = "/") -> tuple[int, dict[str, str], str, str]:
    """One HTTPS GET with `host` as SNI and Host: (status, headers, body, the served certificate's issuer CN).
    With `root`, the chain must verify against it (and the name must match)."""
    if root is not None:
        context = ssl.create_default_context(cadata=root)
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    from cryptography import x509

    issuer = x509.load_der_x509_certificate(der).issuer.rfc4514_string()
    return int(lines[0].split()[1]), headers, body.decode(errors="replace"), issuer


def plain(port: int, host: str, path: str) -> tuple[int, str, str]:
    """One plain HTTP GET, redirects not followed: (status, Location, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        answer = connection.getresponse()
        return answer.status, answer.getheader("Location") or "", answer.read().decode(errors="replace")
    finally:
        connection.close()


def store_files(state: Path) -> list[Path]:
    return sorted(path for path in (state / "acme").rglob("*") if path.is_file())


def issued(routed: Routed, server: Pebble, *hosts: str) -> RoutedApp:
    """A routed app for `hosts`, deployed by one pass that had its certificates issued by `server`."""
    routed.tls = acme_tls(routed, server.directory, server.ca_file)
    web = routed.app("web", hosts=hosts)
    routed.world.commit_apps("v1")
    result = routed.world.server()
    assert result.returncode == 0 and not result.stderr, show(result)
    return web


def record_of(routed: Routed, host: str) -> Path:
    """The store's record of `host`'s certificate."""
    return next(path for path in store_files(routed.world.state) if path.name == f"{host}.json")


def make_due(record: Path, **fields: float) -> dict[str, object]:
    """The record as it was, written back due now (what the clock says at its renewal time), with `fields`."""
    before: dict[str, object] = json.loads(record.read_text())
    record.write_text(json.dumps({**before, "renew_at": 1.0, **fields}))
    return before


def test_certificates_issue_for_each_host_serve_pebbles_chain_and_a_second_run_orders_nothing(
    routed: Routed, tmp_path: Path
) -> None:
    routed.tls_port = free_port()
    with pebble(tmp_path / "pebble", routed.port) as server:
        routed.tls = acme_tls(routed, server.directory, server.ca_file, ", redirect: true, hsts: 180d")
        web = routed.app("web", hosts=("shop.test", "www.shop.test"))
        routed.world.commit_apps("v1")
        preview = routed.world.server("--dry-run")
        assert "cert shop.test: none yet (ordered at the next pass)" in preview.stdout, show(preview)
        result = routed.world.server()
        assert result.returncode == 0, show(result)
        for host in ("shop.test", "www.shop.test"):
            assert f"cert {host}: issued by {server.directory}, expires " in result.stdout, show(result)
        root = server.root()
        status, headers, body, issuer = https(routed.tls_port, "shop.test", root=root)
        assert (status, body) == (200, f"{web.name} v1")
        assert "Pebble" in issuer
        assert headers.get("strict-transport-security") == "max-age=15552000"
        assert https(routed.tls_port, "www.shop.test", root=root)[2] == f"{web.name} v1"
        # Plain HTTP redirects to HTTPS on the TLS port, the challenge path excepted.
        status, location, _ = plain(routed.port, "shop.test", "/cart?id=3")
        assert (status, location) == (308, f"https://shop.test:{routed.tls_port}/cart?id=3")
        assert plain(routed.port, "shop.test", "/.well-known/acme-challenge/nothing")[0] != 308
        # Stored under the state directory, keyed by the directory URL, private.
        files = store_files(routed.world.state)
        assert {path.name for path in files} >= {"shop.test.pem", "shop.test.json", "www.shop.test.pem"}
        assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files), files
        assert all("127.0.0.1-" in str(path.relative_to(routed.world.state)) for path in files)
        # A second run (a restart) orders nothing, and says when each renews.
        again = routed.world.server()
        assert again.returncode == 0 and "issued" not in again.stdout, show(again)
        assert "cert shop.test: expires " in again.stdout and ", renews " in again.stdout, show(again)
        assert "cert shop.test: expires " in routed.world.status_text()
        # A route that names a host no more takes its certificate out of the proxy (hitless, no reload).
        web.hosts = ("shop.test",)
        routed.world.commit_apps("drop www")
        dropped = routed.world.server()
        assert dropped.returncode == 0, show(dropped)
        assert "cert www.shop.test: no route names it: no longer served" in dropped.stdout, show(dropped)
        assert "Pebble" not in https(routed.tls_port, "www.shop.test")[3]
        assert https(routed.tls_port, "shop.test", root=root)[0] == 200


def test_an_issuance_and_a_renewal_under_load_fail_no_request_and_need_no_restart(
    routed: Routed, tmp_path: Path
) -> None:
    routed.tls_port = free_port()
    with pebble(tmp_path / "pebble", routed.port) as server:
        web = issued(routed, server, "shop.test")
        record_file = record_of(routed, "shop.test")
        proxy_started = routed.container_of(routed.container)["State"]["StartedAt"]  # type: ignore[index]
        before = make_due(record_file)
        web.hosts = ("shop.test", "new.shop.test")
        routed.world.commit_apps("a new host: issued in the same pass as the renewal")
        with Load(routed.tls_port, tls=True, host_header="shop.test", threads=2, keepalive_threads=2) as load:
            result = routed.world.server()
            hits = load.hits
        assert result.returncode == 0 and "cert shop.test: renewed by" in result.stdout, show(result)
        assert "cert new.shop.test: issued by" in result.stdout, show(result)
        after = json.loads(record_file.read_text())
        assert after["serial"] != before["serial"] and after["renew_at"] > 1.0
        assert hits and all(hit.status == 200 for hit in load.stop()), [h for h in hits if h.status != 200][:3]
        served = https(routed.tls_port, "shop.test", root=server.root())
        assert served[2] == f"{web.name} v1"
        assert routed.container_of(routed.container)["State"]["StartedAt"] == proxy_started  # type: ignore[index]


def test_the_acme_server_down_is_one_line_per_host_backs_off_and_the_old_certificate_keeps_serving(
    routed: Routed, tmp_path: Path
) -> None:
    routed.tls_port = free_port()
    with pebble(tmp_path / "pebble", routed.port) as server:
        web = issued(routed, server, "shop.test")
        root = server.root()
        make_due(record_of(routed, "shop.test"))
        server.stop()
        web.hosts = ("shop.test", "new.shop.test")
        routed.world.commit_apps("a new host, while the ACME server is down")
        result = routed.world.server()
        # The deploy goes on: exit 0, one warning per host naming it and the cause.
        assert result.returncode == 0, show(result)
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: cert ")]
        assert len(warnings) == 2, show(result)
        assert any("cert new.shop.test: the ACME server" in line and "does not answer" in line for line in warnings)
        assert any("(the certificate it has keeps serving)" in line for line in warnings), warnings
        assert "Traceback" not in result.stderr
        assert https(routed.tls_port, "shop.test", root=root)[2] == f"{web.name} v1"
        assert plain(routed.port, "new.shop.test", "/")[0] == 200
        # Backed off: the next run does not ask again, and status says why and when it tries next.
        again = routed.world.server()
        assert "warning: cert" not in again.stderr, show(again)
        status = routed.world.status_text()
        assert "cert new.shop.test: none yet; 1 order failed, last: the ACME server" in status, status
        assert "next try " in status


def test_a_rate_limited_answer_waits_its_retry_after(routed: Routed, tmp_path: Path) -> None:
    routed.tls_port = free_port()
    with fake_rate_limited(tmp_path) as (directory, ca_file):
        routed.tls = acme_tls(routed, directory, ca_file)
        routed.app("web", hosts=("shop.test",))
        routed.world.commit_apps("v1")
        result = routed.world.server()
    assert result.returncode == 0, show(result)
    assert "warning: cert shop.test: rateLimited: too many certificates" in result.stderr, show(result)
    record = json.loads(record_of(routed, "shop.test").read_text())
    # 3600 s asked, longer than the first backoff (60 s): the server's wait wins.
    assert 3500 < record["next_try"] - time.time() <= 3600


def test_a_pem_in_certs_wins_over_acme_for_its_names(routed: Routed, tmp_path: Path) -> None:
    routed.tls_port = free_port()
    certs = tmp_path / "certs"
    certs.mkdir()
    own = tmp_path / "own"
    own.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=Our Own CA", "-addext", "subjectAltName=DNS:*.shop.test", "-keyout", str(own / "key"),
         "-out", str(own / "crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    (certs / "wild.pem").write_bytes((own / "crt").read_bytes() + (own / "key").read_bytes())
    with pebble(tmp_path / "pebble", routed.port) as server:
        routed.tls = acme_tls(routed, server.directory, server.ca_file, f", certs: {certs}")
        routed.app("web", hosts=("shop.test", "api.shop.test", "*.shop.test"))
        routed.world.commit_apps("v1")
        result = routed.world.server()
        assert result.returncode == 0, show(result)
        assert "cert shop.test: issued" in result.stdout, show(result)
        assert "cert api.shop.test" not in result.stdout, show(result)
        assert "Our Own CA" in https(routed.tls_port, "api.shop.test")[3]
        assert "Pebble" in https(routed.tls_port, "shop.test")[3]


def test_a_wildcard_route_with_acme_and_no_certs_folder_is_refused_at_its_line(routed: Routed, tmp_path: Path) -> None:
    routed.tls_port = free_port()
    routed.tls = acme_tls(routed, "https://127.0.0.1:1/dir", tmp_path / "none.pem")
    routed.app("web", hosts=("shop.test", "*.shop.test"))
    routed.world.commit_apps("v1")
    result = routed.world.server()
    assert result.returncode == 1, show(result)
    assert "apps." in result.stderr and "route.hosts[1]: *.shop.test: ACME cannot order a wildcard" in result.stderr
    assert "desired-state.yaml:" in result.stderr and "Traceback" not in result.stderr


def test_the_agent_issues_renews_and_says_a_failure_once_with_its_recovery_notified_and_in_metrics(
    routed: Routed, tmp_path: Path
) -> None:
    routed.tls_port = free_port()
    listen = free_port()
    receiver = Receiver()
    try:
        with pebble(tmp_path / "pebble", routed.port) as server:
            routed.tls = acme_tls(routed, server.directory, server.ca_file)
            routed.app("web", hosts=("shop.test",))
            routed.world.commit_apps("v1")
            agent = routed.world.agent("--listen", f"127.0.0.1:{listen}", "--notify", receiver.url(), env=PASS_DONE)
            agent.wait_for("cert.issued", timeout=30)
            metrics = http_request(f"http://127.0.0.1:{listen}/metrics").body
            gauge = re.search(r'reconciler_cert_expiry_timestamp_seconds\{host="shop.test"\} (\S+)', metrics)
            assert gauge is not None and float(gauge.group(1)) > time.time() + 86400, metrics
            # Due, with the ACME server down: said once over two passes, and notified.
            record_file = record_of(routed, "shop.test")
            make_due(record_file)
            server.stop()
            mark = agent.mark()
            agent.hup()
            agent.wait_for("cert.failed", timeout=30)
            make_due(record_file, next_try=0.0)  # the backoff's end, without waiting it
            started = time.time()
            agent.hup()
            agent.pass_after(started, count=1, timeout=30)
            assert len(agent.events("cert.failed", since=mark)) == 1, agent.log
            # Back: renewed, recovered (said and notified once).
            server.start()
            make_due(record_file, next_try=0.0)
            agent.hup()
            agent.wait_for("cert.recovered", timeout=30)
            assert agent.events("cert.renewed", since=mark), agent.log
            names = [body.get("title", "") + body.get("message", "") for body in receiver.wait_for(2, timeout=10)]
            assert any("cert.failed" in name or "shop.test" in name for name in names), names
            assert len(receiver.bodies) == 2, receiver.bodies
    finally:
        receiver.close()


def test_a_wrong_ca_file_and_a_host_that_does_not_resolve_to_us_are_one_line_each_and_the_rest_goes_on(
    routed: Routed, tmp_path: Path
) -> None:
    routed.tls_port = free_port()
    with pebble(tmp_path / "pebble", routed.port) as server:
        wrong, _ = tls_pair(tmp_path, "stranger")  # a CA that did not sign pebble's certificate
        routed.tls = acme_tls(routed, server.directory, wrong)
        web = routed.app("web", hosts=("shop.test",))
        routed.world.commit_apps("v1")
        result = routed.world.server()
        assert result.returncode == 0, show(result)
        assert (
            f"warning: cert shop.test: the ACME server {server.directory} is not trusted: certificate verify failed"
            f" (ca_file {wrong})" in result.stderr
        ), show(result)
        assert plain(routed.port, "shop.test", "/")[1:] == ("", f"{web.name} v1")
        # The right CA; one host resolves elsewhere: it fails alone, naming the cause, the other is issued.
        server.resolve("elsewhere.shop.test", "127.0.0.2")
        routed.tls = acme_tls(routed, server.directory, server.ca_file)
        web.hosts = ("shop.test", "elsewhere.shop.test")
        routed.world.commit_apps("right CA, a host elsewhere")
        (routed.world.state / "acme").rename(tmp_path / "backed-off")  # the backoff of the first try, forgotten
        result = routed.world.server()
        assert result.returncode == 0, show(result)
        assert "proxy: cert shop.test: issued by" in result.stdout, show(result)
        lines = [line for line in result.stderr.splitlines() if line.startswith("warning: cert ")]
        assert len(lines) == 1 and "cert elsewhere.shop.test: the HTTP-01 challenge failed: connection:" in lines[0]
        assert "127.0.0.2" in lines[0], lines
