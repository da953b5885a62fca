"""core.certs: which hosts get an ACME certificate, when each is ordered, how a failure backs off, how it is said."""

from __future__ import annotations

import pytest

from reconciler.converge.run import parse_desired
from reconciler.core import certs
from reconciler.core.certs import CertRecord
from reconciler.core.model import DesiredState

DAY = 86400.0


def desired(tls: str, *routes: str) -> DesiredState:
    apps = "".join(
        f"  a{index}:\n    image: web\n    version: v1\n"
        f"    route: {{port: 80, path_prefix: /{index}, hosts: [{route}]}}\n"
        for index, route in enumerate(routes)
    )
    text = f'proxy:\n  listen: ["0.0.0.0:80", "0.0.0.0:443"]\n  tls: {tls}\napps:\n{apps}'
    return parse_desired(text.encode(), "desired-state.yaml", "")


ACME = "{acme: {email: ops@example.com}}"


def test_every_exact_host_of_every_route_once_sorted_and_never_a_wildcard_or_a_covered_host() -> None:
    state = desired(ACME + "", "shop.example.com, www.example.com", "api.example.com, shop.example.com")
    assert certs.to_order(state) == ["api.example.com", "shop.example.com", "www.example.com"]
    covered = certs.to_order(state, lambda host: certs.covers(["*.example.com"], host))
    assert covered == []
    assert certs.to_order(state, lambda host: certs.covers(["www.example.com"], host)) == [
        "api.example.com",
        "shop.example.com",
    ]
    with_certs = desired("{certs: /etc/certs, acme: {email: ops@example.com}}", '"*.example.com", shop.example.com')
    assert certs.to_order(with_certs) == ["shop.example.com"]
    assert certs.to_order(desired("{certs: /etc/certs}", "shop.example.com")) == []


def test_a_wildcard_cover_is_one_label_deep() -> None:
    assert certs.covers(["*.example.com"], "a.example.com")
    assert not certs.covers(["*.example.com"], "a.b.example.com")
    assert not certs.covers(["*.example.com"], "example.com")
    assert certs.covers(["Shop.Example.com"], "shop.example.com")


def test_a_host_with_no_certificate_is_due_at_once_one_with_one_at_its_renewal_time_and_never_before_next_try() -> None:
    assert certs.due(CertRecord("a"), 0.0)
    issued = certs.issued(CertRecord("a"), not_before=0.0, not_after=90 * DAY, serial="1", renew_at=60 * DAY)
    assert not certs.due(issued, 59 * DAY)
    assert certs.due(issued, 60 * DAY)
    assert certs.renew_time(0.0, 90 * DAY) == 60 * DAY  # two thirds
    backed_off = certs.failed(issued, 61 * DAY, "down")
    assert not certs.due(backed_off, 61 * DAY + 59) and certs.due(backed_off, 61 * DAY + 60)


def test_failures_back_off_exponentially_and_at_most_hourly_after_the_third_and_retry_after_wins() -> None:
    assert [certs.backoff(n) for n in range(1, 7)] == [60.0, 120.0, 3600.0, 7200.0, 14400.0, 28800.0]
    assert certs.backoff(40) == 86400.0
    record = CertRecord("a")
    for _ in range(3):
        record = certs.failed(record, 1000.0, "down")
    assert record.failures == 3 and record.next_try == 1000.0 + 3600.0 and record.error == "down"
    limited = certs.failed(CertRecord("a"), 1000.0, "rateLimited", retry_after=1000.0 + 7200)
    assert limited.next_try == 1000.0 + 7200
    cleared = certs.issued(record, not_before=0.0, not_after=DAY, serial="2", renew_at=DAY / 2)
    assert cleared.failures == 0 and cleared.next_try == 0.0 and cleared.error == ""


def test_each_state_is_said_in_one_line() -> None:
    at = 1_800_000_000.0  # 2027-01-15
    issued = certs.issued(CertRecord("shop.example.com"), not_before=at, not_after=at + 90 * DAY, serial="1",
                          renew_at=at + 60 * DAY)  # fmt: skip
    assert certs.line(issued, at) == "cert shop.example.com: expires 2027-04-15, renews 2027-03-16"
    assert certs.line(CertRecord("x.example.com"), at) == "cert x.example.com: none yet (ordered at the next pass)"
    failing = certs.failed(issued, at, "the ACME server does not answer")
    assert certs.line(failing, at) == (
        "cert shop.example.com: expires 2027-04-15, renews 2027-03-16; 1 order failed, last: the ACME server does"
        " not answer; next try 2027-01-15 08:01:00Z"
    )
    assert certs.line(issued, at + 91 * DAY).startswith("cert shop.example.com: EXPIRED 2027-04-15")


def test_a_record_round_trips_and_what_is_not_one_reads_as_none() -> None:
    record = certs.failed(CertRecord("a", not_before=1.0, not_after=2.0, renew_at=1.5, serial="AB"), 10.0, "x")
    assert CertRecord.from_json(record.to_json(), "a") == record
    assert CertRecord.from_json("garbage", "a") == CertRecord("a")
    assert CertRecord.from_json({"failures": "many"}, "a") == CertRecord("a")
    assert CertRecord.from_json({"failures": True, "serial": "C"}, "a") == CertRecord("a", serial="C")


@pytest.mark.parametrize(
    ("url", "other"),
    [
        ("https://acme-staging-v02.api.letsencrypt.org/directory", "https://acme-v02.api.letsencrypt.org/directory"),
        ("https://ca.internal/acme/a/directory", "https://ca.internal/acme/b/directory"),
    ],
)
def test_two_directories_never_share_a_store(url: str, other: str) -> None:
    assert certs.store_key(url) != certs.store_key(other)
    assert certs.store_key(url).startswith(url.split("/")[2] + "-")
