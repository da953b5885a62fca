"""Certificates by ACME for the proxy's routes: ordered, stored, served and renewed without a restart.

Guarantees:
- ``Certs.sync`` (a pass, once the proxy is in line) serves every stored certificate of a host that a route
  names (``core.certs.to_order``), then orders the hosts that are due (``core.certs.due``): one order per
  host, the hosts due at once (``MAX_ORDERS``, each in a thread with a client of its own), HTTP-01
  answered by the proxy itself: each token goes into the proxy's challenge map through the runtime API
  for the order's length, so nothing but HAProxy needs to listen.
- Hitless: a certificate goes into the running HAProxy through its runtime API (``new/set/commit ssl cert``
  and ``add ssl crt-list`` for a new host, ``set/commit`` for a renewal); a certificate of a host no route
  names any more leaves it the same way. Its file is written into the proxy's ``acme/`` folder first, so a
  reload or a restart of the proxy serves the same certificates.
- A host's failure (the ACME server down or not trusted, a challenge the server could not reach, a
  ``rateLimited`` answer) is one line naming the host and the cause; it backs off (``core.certs.failed``,
  kept in the store across restarts), the other hosts and the pass go on, and what the host had keeps
  serving. A restart reuses the stored account and certificates and orders nothing that is not due.
- ``look`` reads the store only (no ACME server, no proxy): what ``--dry-run`` and ``status`` say.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.adapters.acme import Account, Acme, AcmeFailed, account_from_json, account_json, names_of
from reconciler.core import certs as core
from reconciler.core import proxy as proxies
from reconciler.core.model import AcmeSpec, DesiredState
from reconciler.deploy.proxy import Proxy
from reconciler.errors import ProxyError
from reconciler.state.certs import CertStore

MAX_ORDERS = 8  # orders at once (Let's Encrypt allows 300 new orders per account every 3 hours)
# Files HAProxy reads from a crt folder that are not certificates of their own.
_NOT_CERTS = (".key", ".ocsp", ".issuer", ".sctl", ".crt-list")


@dataclass
class CertReport:
    """What a pass did of the certificates, and where each stands after it."""

    withdrawn: list[str] = field(default_factory=list)  # a line per host that no route names any more
    issued: list[str] = field(default_factory=list)  # a line per host's first certificate
    renewed: list[str] = field(default_factory=list)  # a line per host's new certificate in place of one
    failed: dict[str, str] = field(default_factory=dict)  # host -> this pass's failure, one line naming both
    records: list[core.CertRecord] = field(default_factory=list)  # each host that a route names, after the pass

    @property
    def done(self) -> list[str]:
        return self.withdrawn + self.issued + self.renewed

    def lines(self, now: float) -> list[str]:
        return core.lines(self.records, now)


def covered_names(folder: str | None) -> set[str]:
    """The names the PEM files of ``tls.certs`` serve (they win over ACME for them); a file that is not a
    certificate is left to HAProxy to complain of."""
    names: set[str] = set()
    if folder is None:
        return names
    with contextlib.suppress(OSError):
        for path in sorted(Path(folder).iterdir()):
            if path.is_file() and not path.name.endswith(_NOT_CERTS):
                with contextlib.suppress(OSError, ValueError):
                    names.update(names_of(path.read_bytes()))
    return names


def wanted(desired: DesiredState) -> list[str]:
    """The hosts ACME orders for on this server (``core.certs.to_order`` with ``tls.certs`` read)."""
    tls = desired.proxy.tls if desired.proxy is not None else None
    names = covered_names(tls.certs if tls is not None else None)
    return core.to_order(desired, lambda host: core.covers(names, host))


class Certs:
    """The ACME certificates of one proxy (see the module docstring)."""

    def __init__(
        self,
        proxy: Proxy,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        client: Callable[[AcmeSpec], Acme] | None = None,
    ) -> None:
        self.proxy = proxy
        self.state_dir = state_dir
        self.clock = clock
        self.client = client or (lambda spec: Acme(spec.directory, ca_file=spec.ca_file))
        self.folder = proxy.dir / proxies.ACME_DIR
        self._serving = threading.Lock()

    def look(self, desired: DesiredState) -> list[core.CertRecord]:
        """Each host's certificate as stored (nothing is asked of the ACME server or the proxy)."""
        spec = core.acme_of(desired)
        if spec is None:
            return []
        store = CertStore(self.state_dir, spec.directory)
        return [store.record(host) for host in wanted(desired)]

    def sync(self, desired: DesiredState) -> CertReport:
        """Serve what is stored, order what is due (see the module docstring)."""
        report = CertReport()
        spec = core.acme_of(desired)
        if spec is None:
            return report
        store = CertStore(self.state_dir, spec.directory)
        hosts = wanted(desired)
        try:
            loaded = self._loaded()
            report.withdrawn += self._withdraw(set(hosts), loaded)
            for host in hosts:
                pem = store.pem(host)
                if pem is not None:
                    self._serve(host, pem, loaded)
        except ProxyError as exc:  # the proxy went away: nothing is ordered that it could not answer for
            report.failed.update({host: f"cert {host}: not ordered: {exc}" for host in hosts})
            report.records = [store.record(host) for host in hosts]
            return report
        due = [host for host in hosts if core.due(store.record(host), self.clock())]
        if due:
            try:
                account = self._account(spec, store)
            except AcmeFailed as exc:  # no account, no order: each due host says why
                for host in due:
                    report.failed[host] = self._failed(store, host, exc)
            else:
                # One order per host, at once: a first pass with many hosts waits for one order, not for all.
                with ThreadPoolExecutor(max_workers=min(MAX_ORDERS, len(due)), thread_name_prefix="acme") as pool:
                    for host, (done, failed, renewed) in zip(
                        due, pool.map(lambda host: self._order(spec, store, account, host), due), strict=True
                    ):
                        if failed:
                            report.failed[host] = failed
                        else:
                            (report.renewed if renewed else report.issued).append(done)
        report.records = [store.record(host) for host in hosts]
        return report

    def _order(self, spec: AcmeSpec, store: CertStore, account: Account, host: str) -> tuple[str, str, bool]:
        """One host's order (in a thread of its own, with a client of its own): what was done, or what failed, and
        whether it replaced a certificate."""
        record = store.record(host)
        try:
            acme = self.client(spec)
            acme.account(spec.email, account)
            made = acme.order(host, answer=self._answer, withdraw=self._unanswer)
            renew_at = acme.renewal(made.pem) or core.renew_time(made.not_before, made.not_after)
            fresh = core.issued(
                record, not_before=made.not_before, not_after=made.not_after, serial=made.serial, renew_at=renew_at
            )
            store.save(fresh, made.pem)
            with self._serving:  # HAProxy keeps one certificate transaction at a time
                self._serve(host, made.pem, self._loaded())
        except (AcmeFailed, ProxyError) as exc:
            return "", self._failed(store, host, exc), False
        what = "renewed" if record.issued else "issued"
        line = (
            f"cert {host}: {what} by {spec.directory}, expires {core.day(made.not_after)}, renews {core.day(renew_at)}"
        )
        return line, "", record.issued

    def _failed(self, store: CertStore, host: str, exc: AcmeFailed | ProxyError) -> str:
        """A host's failure kept (its backoff) and said: the host, the cause, the next try."""
        retry = exc.retry_after if isinstance(exc, AcmeFailed) else None
        cause = str(exc).removeprefix(f"{host}: ")
        record = core.failed(store.record(host), self.clock(), cause, retry)
        store.save(record)
        keeps = " (the certificate it has keeps serving)" if record.issued else ""
        return f"cert {host}: {cause}; next try {core.moment(record.next_try)}{keeps}"

    def _account(self, spec: AcmeSpec, store: CertStore) -> Account:
        """The account of (directory, email): the stored one, else a new one, stored."""
        text = store.account(spec.email)
        stored = account_from_json(text) if text is not None else None
        account = self.client(spec).account(spec.email, stored)
        if account != stored:
            store.save_account(spec.email, account_json(account))
        return account

    # -- HTTP-01, answered by the proxy ---------------------------------------------------------------

    def _answer(self, token: str, validation: str) -> None:
        self.proxy.ask_ok(f"add map {proxies.CONFIG_DIR}/{proxies.CHALLENGES} {token} {validation}", ("",))

    def _unanswer(self, token: str) -> None:
        with contextlib.suppress(ProxyError):  # gone with a proxy that went away: nothing to take back
            self.proxy.ask(f"del map {proxies.CONFIG_DIR}/{proxies.CHALLENGES} {token}")

    # -- certificates in the running proxy ------------------------------------------------------------

    def _inside(self, host: str) -> str:
        """A host's certificate file as HAProxy names it (its path in the proxy's container)."""
        return f"{proxies.CONFIG_DIR}/{proxies.ACME_DIR}/{host}.pem"

    def _loaded(self) -> set[str]:
        """The certificate files the running HAProxy holds (``show ssl cert``)."""
        answer = self.proxy.ask("show ssl cert")
        return {line.strip() for line in answer.splitlines() if line.strip() and not line.startswith("#")}

    def _serve(self, host: str, pem: bytes, loaded: set[str]) -> None:
        """``pem`` in the proxy's folder and in the running HAProxy, when either differs."""
        path = self.folder / f"{host}.pem"
        with contextlib.suppress(OSError):
            if path.read_bytes() == pem and self._inside(host) in loaded:
                return
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.proxy.write_private(f"{proxies.ACME_DIR}/{host}.pem", pem)
        inside = self._inside(host)
        text = pem.decode().strip()
        if inside not in loaded:
            self.proxy.ask_ok(f"new ssl cert {inside}", ("New empty certificate store",))
        self.proxy.ask_ok(f"set ssl cert {inside} <<\n{text}\n", ("Transaction created", "Transaction updated"))
        self.proxy.ask_ok(f"commit ssl cert {inside}", ("Success",))
        if inside not in loaded:
            self.proxy.ask_ok(f"add ssl crt-list {proxies.CONFIG_DIR}/{proxies.ACME_DIR} {inside}", ("Success",))
            loaded.add(inside)

    def _withdraw(self, hosts: set[str], loaded: set[str]) -> list[str]:
        """The certificates of hosts that no route names any more, out of the proxy (the store keeps them)."""
        done: list[str] = []
        if not self.folder.is_dir():
            return done
        for path in sorted(self.folder.glob("*.pem")):
            host = path.name.removesuffix(".pem")
            if host in hosts:
                continue
            inside = self._inside(host)
            if inside in loaded:
                self.proxy.ask_ok(f"del ssl crt-list {proxies.CONFIG_DIR}/{proxies.ACME_DIR} {inside}", ("deleted",))
                self.proxy.ask_ok(f"del ssl cert {inside}", ("deleted",))
                loaded.discard(inside)
            path.unlink(missing_ok=True)
            done.append(f"cert {host}: no route names it: no longer served (kept in the store)")
        return done
