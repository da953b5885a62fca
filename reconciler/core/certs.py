"""Certificates by ACME, decided without I/O: which hosts get one, when each is ordered or renewed, how a
failure backs off, and how each is said.

Guarantees:
- ``to_order`` names every exact host of every route, once, sorted, and nothing else: never a wildcard
  (HTTP-01 cannot prove one), never a host that no route names, never one that a PEM of ``tls.certs``
  covers (that PEM wins for its names).
- ``due``: a host with no certificate is ordered at once; one with a certificate at its renewal time
  (a time inside the server's ARI window when it offers one, ``adapters.acme``; else two thirds of the
  lifetime, ``renew_time``), or once it expired; and
  never before ``next_try``, which a failure pushes out (``failed``).
- A failure backs off exponentially: 1 min, 2 min, then at most one try an hour after the third failure
  (1 h, 2 h, 4 h ... at most a day); a ``Retry-After`` (a ``rateLimited`` answer) that asks for longer
  wins. The count survives restarts (``CertRecord`` is what the store keeps) and a success clears it.
- ``line`` says a host's certificate the same way in ``status``, ``--dry-run`` and a pass's report:
  ``cert shop.example.com: expires 2027-02-01, renews 2027-01-02``, with its last failure when it has one.
- ``store_key``: staging and production never share a folder (one per directory URL).
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from reconciler.core.model import AcmeSpec, DesiredState

RENEW_AT = 2 / 3  # of the lifetime, when the server gives no renewal window
FIRST_BACKOFFS = (60.0, 120.0)  # after the first and second failures
HOURLY = 3600.0  # after the third: at most one try an hour, doubling
LONGEST_BACKOFF = 86400.0


def store_key(directory: str) -> str:
    """The folder of one ACME directory's accounts and certificates: its host, for people, and a digest of
    the whole URL, so that two directories on one host (staging, production) never mix."""
    host = urllib.parse.urlsplit(directory).hostname or "acme"
    return f"{host}-{hashlib.sha256(directory.encode()).hexdigest()[:12]}"


def covers(names: Iterable[str], host: str) -> bool:
    """Whether a certificate for ``names`` (SANs, maybe ``*.example.com``) serves ``host``."""
    for name in names:
        name = name.lower()
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:]):
            return True
    return False


def acme_of(desired: DesiredState) -> AcmeSpec | None:
    """The file's ``proxy.tls.acme``, or None when it orders no certificate."""
    tls = desired.proxy.tls if desired.proxy is not None else None
    return tls.acme if tls is not None else None


def to_order(desired: DesiredState, covered: Callable[[str], bool] = lambda host: False) -> list[str]:
    """The hosts ACME orders for: each exact host of a route that ``covered`` (a PEM of ``tls.certs``) does
    not serve. None without ``proxy.tls.acme``."""
    if acme_of(desired) is None:
        return []
    hosts = {
        host
        for spec in desired.apps.values()
        if spec.route is not None
        for host in spec.route.hosts
        if not host.startswith("*.")
    }
    return sorted(host for host in hosts if not covered(host))


@dataclass(frozen=True)
class CertRecord:
    """What is known of one host's certificate: the one it has (if any), when it renews, and its failures."""

    host: str
    not_before: float = 0.0  # epoch seconds; 0: no certificate yet
    not_after: float = 0.0
    renew_at: float = 0.0
    serial: str = ""
    failures: int = 0  # orders that failed since the last success
    next_try: float = 0.0  # no order before this (a failure's backoff, or the server's Retry-After)
    error: str = ""  # the last failure's cause

    @property
    def issued(self) -> bool:
        return self.not_after > 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object, host: str) -> CertRecord:
        """A record as stored; what is not a record (a hand edit, a newer layout) is read as none."""
        if not isinstance(data, dict):
            return cls(host)
        known = {field.name: field.type for field in fields(cls)}
        kept: dict[str, Any] = {}
        for name, value in data.items():
            if name in known and name != "host":
                if isinstance(value, bool) or not isinstance(value, int | float | str):
                    continue
                kept[name] = value
        try:
            return cls(
                host,
                not_before=float(kept.get("not_before", 0.0)),
                not_after=float(kept.get("not_after", 0.0)),
                renew_at=float(kept.get("renew_at", 0.0)),
                serial=str(kept.get("serial", "")),
                failures=int(kept.get("failures", 0)),
                next_try=float(kept.get("next_try", 0.0)),
                error=str(kept.get("error", "")),
            )
        except ValueError:
            return cls(host)


def renew_time(not_before: float, not_after: float) -> float:
    """When a certificate renews when the server offers no ARI window: at two thirds of its lifetime."""
    return not_before + RENEW_AT * (not_after - not_before)


def due(record: CertRecord, now: float) -> bool:
    """Whether ``record``'s host is ordered now (see the module docstring)."""
    if now < record.next_try:
        return False
    return not record.issued or now >= record.renew_at or now >= record.not_after


def backoff(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row."""
    if failures <= len(FIRST_BACKOFFS):
        return FIRST_BACKOFFS[max(failures, 1) - 1]
    return min(HOURLY * 2.0 ** min(failures - len(FIRST_BACKOFFS) - 1, 16), LONGEST_BACKOFF)


def failed(record: CertRecord, now: float, cause: str, retry_after: float | None = None) -> CertRecord:
    """``record`` after an order that failed: the cause kept, the next try pushed out."""
    failures = record.failures + 1
    wait = max(backoff(failures), (retry_after - now) if retry_after is not None else 0.0)
    return replace(record, failures=failures, next_try=now + wait, error=cause)


def issued(record: CertRecord, *, not_before: float, not_after: float, serial: str, renew_at: float) -> CertRecord:
    """``record`` with a new certificate: its failures cleared."""
    return CertRecord(record.host, not_before=not_before, not_after=not_after, renew_at=renew_at, serial=serial)


def day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def moment(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


def line(record: CertRecord, now: float) -> str:
    """One host's certificate in words (see the module docstring)."""
    if record.issued:
        said = f"cert {record.host}: expires {day(record.not_after)}, renews {day(record.renew_at)}"
        if record.not_after <= now:
            said = f"cert {record.host}: EXPIRED {day(record.not_after)}"
    else:
        said = f"cert {record.host}: none yet" + ("" if record.failures else " (ordered at the next pass)")
    if record.failures:
        said += (
            f"; {record.failures} order{'s' if record.failures != 1 else ''} failed, last: {record.error};"
            f" next try {moment(record.next_try)}"
        )
    return said


def lines(records: Collection[CertRecord], now: float) -> list[str]:
    return [line(record, now) for record in sorted(records, key=lambda record: record.host)]
