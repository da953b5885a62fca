"""Routed apps and their HAProxy, as a user meets them: the file's ``proxy:`` and ``route:`` checks, the
health gate of a routed app, the haproxy.cfg that ``reconciler.core.proxy.render`` writes, and which
release serves, stays warm and is cooled. Pure: no engine, no proxy, no network.

What these tests guarantee:

- ``parse_desired`` (the real YAML reader, then the validator) refuses every mistake of ``proxy:`` and
  ``route:`` below with ``FILE:LINE:COL: path: message``, at the place a user would look, and names the
  other app when two apps claim the same host and path prefix; the files that are fine are accepted.
- A routed app's bare ``health.http: /health`` is asked of its own container on ``route.port``; a full URL
  or a ``health.tcp`` of a routed app is refused (it would reach the release that serves, not the new one);
  a routed app with no probe is gated on a connection to its own container on ``route.port``, while an
  ``exec`` or ``docker`` probe is kept as written; ``keep_warm`` defaults to ``stable_after``.
- ``render`` is byte-for-byte deterministic (whatever order the routes come in), binds each listen address
  once (TLS only on ``tls.ports``), writes one ``be_APP`` backend per routed app with the serving address or
  a disabled placeholder, writes every ACL of a frontend before its ``use_backend`` lines, and orders its
  rules most specific first: named hosts of all apps, then wildcard hosts of all apps, then every-host
  rules; within each, a longer path prefix first, then the prefix, then the app name. A prefix that ends
  with ``/`` matches what lies under it (``path_beg``); one that does not, e.g. ``/api``, matches ``/api``
  itself and what lies under ``/api/`` (an exact ``path`` ACL and a ``path_beg /api/`` ACL of one name,
  which HAProxy ORs), never ``/apiary``. For any set of routes that the file accepts, the first rule that
  matches a request sends it to the most specific claim.
- ``serving`` points a route at ``APP``, else at a running ``APP.prev``, never at a container that is not
  ours or not on the proxy's network; ``warm``/``to_cool`` keep ``APP.prev`` running for ``keep_warm``
  after the later of the last switch and its successor's creation, and only while ``APP`` is what serves
  (a previous release that serves is never warm and never cooled).
- ``route_lines`` (what ``reconcile`` prints) names each route (``route HOSTS PREFIX -> ...``), what serves
  it, or ``nothing (503)``, and each warm release with the UTC date and time its window ends.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.converge.run import parse_desired
from reconciler.core.model import (
    ON_CONTAINER,
    AppSpec,
    DesiredState,
    ObservedContainer,
    ObservedState,
    ProxySpec,
    Role,
)
from reconciler.core.plan import PRUNED, Action, ActionKind, Plan
from reconciler.core.proxy import (
    CERTS_DIR,
    CHECKS,
    Points,
    Server,
    Slot,
    backups,
    container_hash,
    render,
    route_lines,
    routed,
    servers,
    serving,
    to_cool,
    unrouted,
    warm,
    with_server,
)
from reconciler.errors import InvalidDesiredState

FILE = "desired-state.yaml"
NETWORK = "reconciler"
IMAGE_ID = "sha256:" + "1" * 64
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def parse(text: str) -> DesiredState:
    return parse_desired(text.encode(), FILE, "")


def errors_of(text: str) -> list[str]:
    with pytest.raises(InvalidDesiredState) as caught:
        parse(text)
    return caught.value.errors


def the_error(text: str) -> str:
    """The one error ``text`` is refused with (the test fails when there are more or none)."""
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


def app(**fields: Any) -> AppSpec:
    return AppSpec.model_validate({"image": "team/web", "version": "v1", **fields})


def route(*, stable_after: str = "10m", health: dict[str, Any] | None = None, **fields: Any) -> AppSpec:
    """An app routed on port 8000 unless ``fields`` (of ``route:``) say otherwise."""
    return app(route={"port": 8000, **fields}, stable_after=stable_after, health=health)


def proxy(**fields: Any) -> ProxySpec:
    return ProxySpec.model_validate(fields)


def desired(**apps: AppSpec) -> DesiredState:
    return DesiredState(apps=apps, proxy=ProxySpec())


def container(
    name: str,
    *,
    state: str = "running",
    managed: bool = True,
    ip: str | None = "172.18.0.2",
    created: float = T0,
    version: str = "v1",
) -> ObservedContainer:
    """A container as the engine lists it; ``ip`` is its address on the proxy's network (None: not on it)."""
    base, _, suffix = name.partition(".")
    role = {"": Role.CURRENT, "prev": Role.PREVIOUS, "next": Role.NEXT, "failed": Role.FAILED}[suffix]
    return ObservedContainer(
        id=f"id-{name}",
        name=name,
        state=state,
        image_id=IMAGE_ID,
        managed=managed,
        app=base if managed else None,
        role=role if managed else None,
        version=version,
        created=created,
        networks={NETWORK: ip} if ip is not None else {"bridge": "172.17.0.9"},
    )


def engine(*containers: ObservedContainer) -> ObservedState:
    return ObservedState(containers=containers)


def frontends(config: str) -> list[list[str]]:
    """Each ``frontend`` section's lines (stripped), in order."""
    sections: list[list[str]] = []
    current: list[str] | None = None
    for line in config.splitlines():
        if line.startswith("frontend "):
            current = []
            sections.append(current)
        elif not line.startswith("  "):
            current = None
        elif current is not None:
            current.append(line.strip())
    return sections


def backend_order(config: str) -> list[str]:
    """The apps of the first frontend's ``use_backend`` lines, in the order HAProxy tries them."""
    return [line.split()[1].removeprefix("be_") for line in frontends(config)[0] if line.startswith("use_backend ")]


def section(config: str, header: str) -> list[str]:
    """The lines (stripped) of the section that starts with ``header``."""
    lines = config.splitlines()
    start = lines.index(header) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("  ")), len(lines))
    return [line.strip() for line in lines[start:end]]


# -- 1. the file: proxy: and route: ---------------------------------------------------------------------


def test_a_routed_app_with_a_proxy_is_accepted() -> None:
    wanted = parse(
        "proxy:\n"
        '  listen: ["0.0.0.0:80", "[::]:443"]\n'
        "  tls:\n"
        "    certs: /etc/reconciler/certs\n"
        "apps:\n"
        "  shop:\n"
        "    image: team/shop\n"
        "    version: v1\n"
        "    health:\n"
        "      http: /health\n"
        "    route:\n"
        "      hosts: [shop.example.com, '*.shop.example.com']\n"
        "      path_prefix: /api\n"
        "      port: 8000\n"
        "      drain: 500ms\n"
        "      keep_warm: 1h\n"
    )
    assert wanted.proxy is not None
    assert wanted.proxy.listens() == (("0.0.0.0", 80, False), ("::", 443, True))
    spec = wanted.apps["shop"]
    assert spec.route is not None
    assert spec.route.hosts == ("shop.example.com", "*.shop.example.com")
    assert (spec.route.path_prefix, spec.route.port, spec.route.drain, spec.keep_warm) == ("/api", 8000, 0.5, 3600.0)


def test_two_apps_claiming_the_same_host_and_path_the_second_is_refused_naming_the_first() -> None:
    text = (
        "proxy: {}\n"  # 1
        "apps:\n"  # 2
        "  shop:\n"  # 3
        "    image: team/shop\n"  # 4
        "    version: v1\n"  # 5
        "    route:\n"  # 6
        "      hosts: [shop.example.com]\n"  # 7
        "      path_prefix: /api\n"  # 8
        "      port: 8000\n"  # 9
        "  cart:\n"  # 10
        "    image: team/cart\n"  # 11
        "    version: v1\n"  # 12
        "    route:\n"  # 13
        "      hosts: [www.example.com, shop.example.com]\n"  # 14
        "      path_prefix: /api\n"  # 15
        "      port: 9000\n"  # 16
    )
    # In file order, not by name: cart sorts first, but shop claimed the route first.
    assert the_error(text) == (
        f"{FILE}:14:7: apps.cart.route: shop.example.com /api is already routed to shop: two apps cannot"
        " claim the same host and path prefix"
    )


def test_two_apps_claiming_every_host_on_the_same_path_are_refused() -> None:
    text = (
        "proxy: {}\n"  # 1
        "apps:\n"  # 2
        "  shop:\n"  # 3
        "    image: team/shop\n"  # 4
        "    version: v1\n"  # 5
        "    route: {port: 8000}\n"  # 6
        "  cart:\n"  # 7
        "    image: team/cart\n"  # 8
        "    version: v1\n"  # 9
        "    route: {port: 8000, path_prefix: /}\n"  # 10
    )
    assert the_error(text) == (
        f"{FILE}:10:12: apps.cart.route: every host / is already routed to shop: two apps cannot claim the"
        " same host and path prefix"
    )


def test_the_same_path_on_different_hosts_and_other_paths_on_one_host_are_fine() -> None:
    wanted = parse(
        "proxy: {}\n"
        "apps:\n"
        "  shop:\n"
        "    image: team/shop\n"
        "    version: v1\n"
        "    route: {hosts: [shop.example.com], path_prefix: /api, port: 8000}\n"
        "  cart:\n"
        "    image: team/cart\n"
        "    version: v1\n"
        "    route: {hosts: [cart.example.com], path_prefix: /api, port: 8000}\n"
        "  web:\n"
        "    image: team/web\n"
        "    version: v1\n"
        "    route: {hosts: [shop.example.com], path_prefix: /api/v2, port: 8000}\n"
        "  all:\n"
        "    image: team/all\n"
        "    version: v1\n"
        "    route: {path_prefix: /api, port: 8000}\n"
    )
    assert sorted(routed(wanted)) == ["all", "cart", "shop", "web"]


def test_a_route_without_a_top_level_proxy_is_refused() -> None:
    text = (
        "apps:\n"  # 1
        "  shop:\n"  # 2
        "    image: team/shop\n"  # 3
        "    version: v1\n"  # 4
        "    route:\n"  # 5
        "      port: 8000\n"  # 6
    )
    assert the_error(text) == f"{FILE}:5:5: apps.shop.route: a route needs a top-level proxy: to serve it"


def test_the_routed_port_published_on_a_host_port_is_refused() -> None:
    text = (
        "proxy: {}\n"  # 1
        "apps:\n"  # 2
        "  shop:\n"  # 3
        "    image: team/shop\n"  # 4
        "    version: v1\n"  # 5
        '    ports: ["8080:8000"]\n'  # 6
        "    route:\n"  # 7
        "      port: 8000\n"  # 8
    )
    assert the_error(text) == (
        f"{FILE}:4:5: apps.shop: port 8000 is both routed and published as 8080:8000: a routed app publishes"
        " no host port for it (drop it from ports:)"
    )


def routed_with_ports(ports: str) -> str:
    """``apps.shop`` routed on port 8000 with ``ports: PORTS`` on line 6."""
    return (
        "proxy: {}\n"  # 1
        "apps:\n"  # 2
        "  shop:\n"  # 3
        "    image: team/shop\n"  # 4
        "    version: v1\n"  # 5
        f"    ports: {ports}\n"  # 6
        "    route:\n"  # 7
        "      port: 8000\n"  # 8
    )


@pytest.mark.parametrize("port", ["127.0.0.1:9090:9090", "9090:9090", "[::1]:9090:9090", "9090:9090/udp"])
def test_a_routed_app_holding_any_fixed_host_port_is_refused(port: str) -> None:
    # Two releases run at once during a deploy: the second could not bind the same host port.
    assert the_error(routed_with_ports(f'["{port}"]')) == (
        f"{FILE}:4:5: apps.shop: {port}: a routed app is deployed start-first, two releases at once, so it"
        " cannot hold a fixed host port; publish it without one (IP:CONTAINER) or serve it by a route"
    )


@pytest.mark.parametrize("ports", [("127.0.0.1:9090",), ("9090",), ("127.0.0.1:9090", "9091/udp")])
def test_a_routed_app_may_publish_other_ports_on_random_host_ports(ports: tuple[str, ...]) -> None:
    wanted = parse(routed_with_ports("[" + ", ".join(f'"{port}"' for port in ports) + "]"))
    assert wanted.apps["shop"].ports == ports
    assert routed(wanted) == {"shop": wanted.apps["shop"]}


def test_a_bare_health_path_without_a_route_is_refused() -> None:
    text = (
        "apps:\n"  # 1
        "  shop:\n"  # 2
        "    image: team/shop\n"  # 3
        "    version: v1\n"  # 4
        "    health:\n"  # 5
        "      http: /health\n"  # 6
    )
    assert the_error(text) == (
        f"{FILE}:3:5: apps.shop: health.http '/health' is a bare path: it needs route: (or a full URL)"
    )


def test_unknown_keys_under_route_and_proxy_say_what_was_meant() -> None:
    text = (
        "proxy:\n"  # 1
        '  listn: ["0.0.0.0:80"]\n'  # 2
        "apps:\n"  # 3
        "  shop:\n"  # 4
        "    image: team/shop\n"  # 5
        "    version: v1\n"  # 6
        "    route:\n"  # 7
        "      port: 8000\n"  # 8
        "      path_prefx: /api\n"  # 9
    )
    assert errors_of(text) == [
        f"{FILE}:2:3: proxy.listn: unknown key 'listn'; did you mean 'listen'?",
        f"{FILE}:9:7: apps.shop.route.path_prefx: unknown key 'path_prefx'; did you mean 'path_prefix'?",
    ]


NOT_A_PREFIX = (
    "is not a path prefix: it starts with / and holds letters, digits and / . _ ~ % - ! $ & ( ) * + , ; = : @"
    " only (percent-encode the rest)"
)


def routed_file(field: str, value: str) -> str:
    """``apps.shop.route`` with ``field: value`` on line 7 (the value at column 9 + len(field))."""
    return (
        "proxy: {}\n"  # 1
        "apps:\n"  # 2
        "  shop:\n"  # 3
        "    image: team/shop\n"  # 4
        "    version: v1\n"  # 5
        "    route:\n"  # 6
        f"      {field}: {value}\n" + ("      port: 8000\n" if field != "port" else "")  # 7
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "hosts",
            "[Shop.Example.com]",
            "apps.shop.route.hosts: 'Shop.Example.com' is not a host name (lowercase, e.g. shop.example.com or"
            " *.example.com)",
        ),
        (
            "hosts",
            "['a b']",
            "apps.shop.route.hosts: 'a b' is not a host name (lowercase, e.g. shop.example.com or *.example.com)",
        ),
        (
            "hosts",
            "['shop.*.com']",
            "apps.shop.route.hosts: 'shop.*.com' is not a host name (lowercase, e.g. shop.example.com or"
            " *.example.com)",
        ),
        (
            "hosts",
            "[shop.example.com, shop.example.com]",
            "apps.shop.route.hosts: a host is listed twice",
        ),
        ("path_prefix", "api", f"apps.shop.route.path_prefix: 'api' {NOT_A_PREFIX}"),
        ("drain", "10", "apps.shop.route.drain: a duration needs a unit: write 10s (units: ms, s, m, h)"),
        ("keep_warm", "1000h", "apps.shop.route.keep_warm: '1000h' is longer than 720h, the most keep_warm may be"),
        ("drain", "2h", "apps.shop.route.drain: '2h' is longer than 1h, the most drain may be"),
    ],
)
def test_a_bad_route_field_is_refused_where_its_value_is(field: str, value: str, message: str) -> None:
    column = 9 + len(field)
    assert the_error(routed_file(field, value)) == f"{FILE}:7:{column}: {message}"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        # A quote, a # (a fragment), a space or a backslash would end or bend the haproxy.cfg line.
        ('"/it\'s"', '"/it\'s"'),
        ("'/a\"b'", "'/a\"b'"),
        ("'/a#b'", "'/a#b'"),
        ("'/a b'", "'/a b'"),
        ("'/a\\b'", "'/a\\\\b'"),  # one backslash in the file, shown as Python shows it
        ("'/a\tb'", "'/a\\tb'"),
        ("/api?x=1", "'/api?x=1'"),
    ],
)
def test_a_path_prefix_outside_rfc_3986_path_characters_is_refused(value: str, shown: str) -> None:
    assert the_error(routed_file("path_prefix", value)) == (
        f"{FILE}:7:20: apps.shop.route.path_prefix: {shown} {NOT_A_PREFIX}"
    )


@pytest.mark.parametrize("prefix", ["/", "/api/v1", "/api/", "/a%23b", "/~user", "/a-b_c.d", "/x:y@z!$&()*+,;="])
def test_a_path_prefix_of_rfc_3986_path_characters_is_accepted(prefix: str) -> None:
    spec = parse(routed_file("path_prefix", f"'{prefix}'")).apps["shop"].route
    assert spec is not None and spec.path_prefix == prefix
    config = render(proxy(), {"shop": route(path_prefix=prefix)}, {})
    acls = [line for line in frontends(config)[0] if line.startswith("acl ")]
    if prefix == "/":
        assert acls == []  # every path: no ACL, no condition
        assert backend_order(config) == ["shop"] and "use_backend be_shop" in frontends(config)[0]
    elif prefix.endswith("/"):
        assert acls == [f"acl path_shop path_beg {prefix}"]
    else:
        assert acls == [f"acl path_shop path {prefix}", f"acl path_shop path_beg {prefix}/"]


def proxy_file(*lines: str) -> str:
    """``proxy:`` with ``lines`` from line 2 (indented two spaces) and one routed app after them."""
    return (
        "proxy:\n"
        + "".join(f"  {line}\n" for line in lines)
        + "apps:\n  shop:\n    image: team/shop\n    version: v1\n    route: {port: 8000}\n"
    )


NOT_HTTPS = "(an ACME directory is served over TLS)"
NO_PLAIN = "(port 80: ACME's HTTP-01 asks there)"


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (
            ['listen: ["0.0.0.0:80", "80"]'],
            "2:26: proxy.listen[1]: '80' is not IP:PORT (0.0.0.0:80, 127.0.0.1:8080, [::]:443)",
        ),
        (['listen: ["0.0.0.0:80", "0.0.0.0:70000"]'], "2:26: proxy.listen[1]: port 70000 is out of range 1-65535"),
        (['listen: ["0.0.0.0:80", "999.1.1.1:80"]'], "2:26: proxy.listen[1]: '999.1.1.1' is not an IP address"),
        (
            ['listen: ["0.0.0.0:80", "[::1]:80", "0.0.0.0:80"]'],
            "2:11: proxy.listen: an address is listed twice",
        ),
        (["tls:", "  certs: etc/certs"], "3:12: proxy.tls.certs: certs must be an absolute path on the server"),
        (["tls:", "  certs: /etc/certs", "  ports: [0]"], "4:12: proxy.tls.ports: port 0 is out of range 1-65535"),
        (
            ["tls: {ports: [443]}"],
            "2:8: proxy.tls: name where certificates come from: certs: (a folder of PEM files), acme:, or both",
        ),
        (["tls: {acme: {email: ops}}"], "2:23: proxy.tls.acme.email: 'ops' is not an email address"),
        (
            ["tls: {acme: {email: a@b.co, directory: 'http://x/dir'}}"],
            "2:42: proxy.tls.acme.directory: 'http://x/dir' is not an https:// URL " + NOT_HTTPS,
        ),
        (
            ["tls: {acme: {email: a@b.co}, hsts: 800d}"],
            "2:38: proxy.tls.hsts: '800d' is longer than 730d, the most an HSTS max-age may be",
        ),
        (
            ["tls: {acme: {email: a@b.co}, ports: [443]}", 'listen: ["0.0.0.0:443"]'],
            "2:3: proxy: tls.acme and tls.redirect need a plain HTTP listen address " + NO_PLAIN,
        ),
        (["listen: []"], "2:11: proxy.listen: name at least one address, or leave listen out for 0.0.0.0:80"),
        (
            ["tls:", "  certs: /etc/certs", "  ports: []"],
            "4:12: proxy.tls.ports: name at least one port, or leave ports out for 443",
        ),
        (["image: haproxy:2.8"], "2:10: proxy.image: image is the repository only; put the tag in version: 2.8"),
    ],
)
def test_a_bad_proxy_field_is_refused_where_it_is(lines: list[str], error: str) -> None:
    assert the_error(proxy_file(*lines)) == f"{FILE}:{error}"


@pytest.mark.parametrize(
    ("listen", "error"),
    [
        ("80", "'80' is not IP:PORT (0.0.0.0:80, 127.0.0.1:8080, [::]:443)"),
        ("0.0.0.0:70000", "port 70000 is out of range 1-65535"),
    ],
)
def test_a_bad_sole_listen_address_is_refused_where_it_is(listen: str, error: str) -> None:
    # The entry's own error only: the list is not also said to be empty.
    assert errors_of(proxy_file(f'listen: ["{listen}"]')) == [f"{FILE}:2:12: proxy.listen[0]: {error}"]


def test_proxy_and_route_defaults() -> None:
    wanted = parse(proxy_file("tls: {certs: /etc/certs}"))
    assert wanted.proxy is not None
    assert wanted.proxy.listen == ("0.0.0.0:80",)
    assert wanted.proxy.ref == "haproxy:2.8"
    assert wanted.proxy.tls is not None and wanted.proxy.tls.ports == (443,)
    spec = wanted.apps["shop"].route
    assert spec is not None
    assert (spec.hosts, spec.path_prefix, spec.port, spec.drain, spec.keep_warm) == ((), "/", 8000, 10.0, None)


# -- 2. a routed app's gate and warm window -----------------------------------------------------------------


def test_a_bare_health_path_of_a_routed_app_is_asked_of_its_own_container_on_the_route_port() -> None:
    spec = route(health={"http": "/health"})
    assert spec.gate.http == f"http://{ON_CONTAINER}:8000/health" == "http://the-container.invalid:8000/health"
    assert spec.gate.probe == "http"
    assert spec.health is not None and spec.health.http == "/health"  # the file's text is unchanged
    assert route(port=9000, health={"http": "/ready?deep=1"}).gate.http == f"http://{ON_CONTAINER}:9000/ready?deep=1"


def routed_with_health(health: str) -> str:
    """``apps.shop`` routed on port 8000 with ``health: HEALTH`` on line 6 (the app starts at 4:5)."""
    return (
        "proxy: {}\n"  # 1
        "apps:\n"  # 2
        "  shop:\n"  # 3
        "    image: team/shop\n"  # 4
        "    version: v1\n"  # 5
        f"    health: {health}\n"  # 6
        "    route:\n"  # 7
        "      port: 8000\n"  # 8
    )


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000/health", "https://shop.example.com/health", "http://localhost/"]
)
def test_a_full_health_url_of_a_routed_app_is_refused(url: str) -> None:
    # A fixed address reaches the release that serves now (through the proxy), not the one being gated.
    assert the_error(routed_with_health(f"{{http: '{url}'}}")) == (
        f"{FILE}:4:5: apps.shop: health.http '{url}': with route:, write the path alone (/health); it is asked"
        " of the new release itself, on route.port, before any traffic goes to it"
    )


def test_a_health_tcp_of_a_routed_app_is_refused() -> None:
    assert the_error(routed_with_health("{tcp: '127.0.0.1:8000'}")) == (
        f"{FILE}:4:5: apps.shop: health.tcp: with route:, leave it out; without a probe the gate connects to the"
        " new release itself on route.port (or write http: /path)"
    )


def test_the_same_full_url_or_tcp_probe_without_a_route_is_accepted() -> None:
    for health in ("{http: 'http://127.0.0.1:8000/health'}", "{tcp: '127.0.0.1:8000'}"):
        text = f"apps:\n  shop:\n    image: team/shop\n    version: v1\n    health: {health}\n"
        assert parse(text).apps["shop"].route is None


def test_a_routed_app_without_health_is_gated_on_a_connection_to_its_own_container() -> None:
    spec = parse(routed_with_health("null")).apps["shop"]
    assert spec.health is None and spec.route is not None and spec.route.port == 8000
    assert spec.gate.tcp == f"{ON_CONTAINER}:8000" == "the-container.invalid:8000"
    assert spec.gate.probe == "tcp"
    assert route(port=9000).gate.tcp == f"{ON_CONTAINER}:9000"  # the route's port, whatever it is


def test_a_routed_app_keeps_its_exec_or_docker_probe() -> None:
    ran = parse(routed_with_health("{exec: [curl, -f, 'http://localhost:8000/health']}")).apps["shop"]
    assert ran.gate.probe == "exec" and ran.gate.tcp is None
    assert ran.gate.exec == ("curl", "-f", "http://localhost:8000/health")
    docker = parse(routed_with_health("{docker: true}")).apps["shop"]
    assert docker.gate.probe == "docker" and docker.gate.docker and docker.gate.tcp is None


def test_an_app_that_is_not_routed_without_health_still_has_no_probe() -> None:
    assert app().gate.probe is None
    assert app().gate.tcp is None
    plain = parse("apps:\n  worker:\n    image: team/worker\n    version: v1\n").apps["worker"]
    assert plain.gate.probe is None


def test_keep_warm_defaults_to_stable_after_and_0s_means_none() -> None:
    assert route().keep_warm == 600.0
    assert route(stable_after="2h").keep_warm == 7200.0
    assert route(stable_after="2h", keep_warm="5m").keep_warm == 300.0
    assert route(keep_warm="0s").keep_warm == 0.0
    assert app(stable_after="2h").keep_warm == 0.0  # not routed: nothing to keep warm


# -- 3. render: the haproxy.cfg -----------------------------------------------------------------------------


ROUTES = {
    "shop": route(hosts=["shop.example.com", "www.shop.example.com"]),
    "api": route(path_prefix="/api", port=9000, drain="1m"),
    "tenants": route(hosts=["*.example.com"], path_prefix="/app", port=8080),
    "site": route(port=80),
}


def test_render_is_deterministic_whatever_the_order_of_the_routes() -> None:
    live: dict[str, Server | None] = {"shop": Server("shop", "172.18.0.2", 8000), "api": None}
    first = render(proxy(), ROUTES, live, uid=99)
    assert render(proxy(), ROUTES, live, uid=99) == first
    reordered = dict(reversed(list(ROUTES.items())))
    assert render(proxy(), reordered, dict(reversed(list(live.items()))), uid=99) == first
    assert render(proxy(), ROUTES, {**live, "api": Server("api", "172.18.0.3", 9000)}, uid=99) != first


def test_one_frontend_per_listen_address_and_tls_only_on_the_tls_ports() -> None:
    plain = render(proxy(listen=["0.0.0.0:80", "127.0.0.1:443"]), ROUTES, {})
    assert [line for line in plain.splitlines() if line.startswith(("frontend", "  bind"))] == [
        "frontend listen_0",
        "  bind 0.0.0.0:80",
        "frontend listen_1",
        "  bind 127.0.0.1:443",  # no tls: no certificate, whatever the port
    ]
    tls = render(proxy(listen=["0.0.0.0:80", "0.0.0.0:443"], tls={"certs": "/etc/certs"}), ROUTES, {})
    assert [line for line in tls.splitlines() if line.startswith("  bind")] == [
        "  bind 0.0.0.0:80",
        f"  bind 0.0.0.0:443 ssl crt {CERTS_DIR}",
    ]
    assert CERTS_DIR == "/usr/local/etc/haproxy/certs"
    other = render(proxy(listen=["0.0.0.0:443", "0.0.0.0:8443"], tls={"certs": "/c", "ports": [8443]}), {}, {})
    assert [line for line in other.splitlines() if line.startswith("  bind")] == [
        "  bind 0.0.0.0:443",
        "  bind 0.0.0.0:8443 ssl crt /usr/local/etc/haproxy/certs",
    ]
    # Every frontend carries every route.
    sections = frontends(tls)
    assert len(sections) == 2 and sections[0][1:] == sections[1][1:]


def test_an_ipv6_listen_address_is_bound_in_brackets() -> None:
    config = render(proxy(listen=["[::1]:8080", "[::]:80"]), ROUTES, {})
    assert [line for line in config.splitlines() if line.startswith("  bind")] == [
        "  bind [::1]:8080",
        "  bind [::]:80",
    ]


def test_one_backend_per_routed_app_with_the_serving_address_or_a_disabled_placeholder() -> None:
    config = render(proxy(), ROUTES, {"shop": Server("shop", "172.18.0.2", 8000), "api": None})
    assert [line for line in config.splitlines() if line.startswith("backend ")] == [
        "backend be_api",
        "backend be_shop",
        "backend be_site",
        "backend be_tenants",
    ]
    retry = "http-request disable-l7-retry unless METH_GET"
    checked = CHECKS.strip()
    nowhere = "server warm 127.0.0.1:1 backup disabled"
    assert section(config, "backend be_shop") == [f"server live 172.18.0.2:8000 {checked}", nowhere, retry]
    assert section(config, "backend be_api") == [f"server live 127.0.0.1:1 disabled {checked}", nowhere, retry]
    # not in live at all
    assert section(config, "backend be_site") == [f"server live 127.0.0.1:1 disabled {checked}", nowhere, retry]
    assert section(config, "backend be_tenants") == [f"server live 127.0.0.1:1 disabled {checked}", nowhere, retry]


def test_the_live_server_is_checked_on_the_health_path_and_marked_down_at_its_first_refusal() -> None:
    routes = {"shop": route(health={"http": "/healthz"}), "api": route(path_prefix="/api")}
    config = render(proxy(), routes, {}, backup={"shop": Server("shop.prev", "172.18.0.7", 8000)})
    shop = section(config, "backend be_shop")
    assert shop[:2] == ["option httpchk GET /healthz", "http-check expect status 200-399"]
    assert shop[2].endswith("check inter 1s fall 2 rise 1 observe layer4 error-limit 1 on-error mark-down")
    assert shop[3] == "server warm 172.18.0.7:8000 backup"  # never checked: used once live is down
    # With no health path, a connection is the check.
    assert not any(line.startswith(("option httpchk", "http-check")) for line in section(config, "backend be_api"))


def test_host_and_path_acls_all_come_before_the_rules() -> None:
    config = render(proxy(), ROUTES, {})
    assert frontends(config)[0] == [
        "bind 0.0.0.0:80",
        "acl host_shop req.hdr(host),field(1,:),lower -m str shop.example.com www.shop.example.com",
        "acl wild_tenants req.hdr(host),field(1,:),lower -m end .example.com",
        "acl path_tenants path /app",
        "acl path_tenants path_beg /app/",
        "acl path_api path /api",
        "acl path_api path_beg /api/",
        "use_backend be_shop if host_shop",
        "use_backend be_tenants if wild_tenants path_tenants",
        "use_backend be_api if path_api",
        "use_backend be_site",
    ]


def test_an_app_with_named_and_wildcard_hosts_gets_a_rule_for_each() -> None:
    mixed = render(proxy(), {"web": route(hosts=["a.example.org", "*.example.com"], path_prefix="/x")}, {})
    assert frontends(mixed)[0][1:] == [
        "acl host_web req.hdr(host),field(1,:),lower -m str a.example.org",
        "acl path_web path /x",  # once, though both rules use it
        "acl path_web path_beg /x/",
        "acl wild_web req.hdr(host),field(1,:),lower -m end .example.com",
        "use_backend be_web if host_web path_web",
        "use_backend be_web if wild_web path_web",
    ]
    assert first_backend(mixed, "a.example.org", "/x/1") == "web"
    assert first_backend(mixed, "b.example.com", "/x") == "web"
    assert first_backend(mixed, "b.example.com", "/y") is None
    assert first_backend(mixed, "a.example.org", "/xy") is None  # /x is not a prefix of the word /xy
    assert first_backend(mixed, "example.com", "/x") is None  # *.example.com is not example.com itself


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api", "api"),
        ("/api/", "api"),
        ("/api/v1", "api"),
        ("/api/v1/users?id=1", "api"),
        ("/apiary", "site"),  # a longer word is not under /api: the every-path app serves it
        ("/apix/v1", "site"),
        ("/ap", "site"),
        ("/", "site"),
    ],
)
def test_a_prefix_without_a_trailing_slash_is_itself_and_what_lies_under_it(path: str, expected: str) -> None:
    config = render(proxy(), ROUTES, {})
    assert first_backend(config, "any.example.org", path) == expected
    alone = render(proxy(), {"api": route(path_prefix="/api")}, {})
    assert first_backend(alone, "any.example.org", path) == ("api" if expected == "api" else None)


def test_a_prefix_with_a_trailing_slash_is_what_lies_under_it_only() -> None:
    config = render(proxy(), {"api": route(path_prefix="/api/")}, {})
    assert [line for line in frontends(config)[0] if line.startswith("acl ")] == ["acl path_api path_beg /api/"]
    assert first_backend(config, "shop.example.com", "/api/") == "api"
    assert first_backend(config, "shop.example.com", "/api/v1") == "api"
    assert first_backend(config, "shop.example.com", "/api") is None
    assert first_backend(config, "shop.example.com", "/apiary") is None
    # /api and /api/ side by side: the longer prefix is tried first, and /api keeps /api itself.
    both = render(proxy(), {"bare": route(path_prefix="/api"), "slash": route(path_prefix="/api/")}, {})
    assert backend_order(both) == ["slash", "bare"]
    assert first_backend(both, "shop.example.com", "/api") == "bare"
    assert first_backend(both, "shop.example.com", "/api/v1") == "slash"
    assert first_backend(both, "shop.example.com", "/apiary") is None


def test_a_named_host_of_one_app_wins_over_a_wildcard_of_another_that_sorts_first() -> None:
    routes = {"aaa": route(hosts=["*.example.com"]), "shop": route(hosts=["shop.example.com"])}
    config = render(proxy(), routes, {})
    rules = [line for line in frontends(config)[0] if line.startswith("use_backend ")]
    assert rules == ["use_backend be_shop if host_shop", "use_backend be_aaa if wild_aaa"]
    assert first_backend(config, "shop.example.com", "/") == "shop"
    assert first_backend(config, "Shop.Example.com:8443", "/cart") == "shop"  # the port is cut, case folded
    assert first_backend(config, "cart.example.com", "/") == "aaa"
    # A named host wins even over a wildcard with a longer prefix.
    longer = {"aaa": route(hosts=["*.example.com"], path_prefix="/api"), "shop": route(hosts=["shop.example.com"])}
    assert backend_order(render(proxy(), longer, {})) == ["shop", "aaa"]
    assert first_backend(render(proxy(), longer, {}), "shop.example.com", "/api") == "shop"


def test_a_wildcard_with_more_labels_wins_over_a_shorter_one_of_an_app_that_sorts_first() -> None:
    routes = {
        "aaa": route(hosts=["*.example.com"]),
        "shop": route(hosts=["*.shop.example.com"]),
        "mixed": route(hosts=["*.example.org", "*.eu.example.org"], path_prefix="/api"),
    }
    config = render(proxy(), routes, {})
    assert backend_order(config) == ["mixed", "shop", "mixed", "aaa"]  # 3 labels, then 2; the longer prefix first
    assert first_backend(config, "a.shop.example.com", "/") == "shop"
    assert first_backend(config, "cart.example.com", "/") == "aaa"
    # Even over a shorter wildcard with a longer prefix; an app's wildcards of each length are a rule apart.
    longer = render(proxy(), {**routes, "aaa": route(hosts=["*.example.com"], path_prefix="/api")}, {})
    assert first_backend(longer, "a.shop.example.com", "/api") == "shop"
    assert "  use_backend be_mixed if wild_mixed_3 path_mixed" in longer.splitlines()


def test_named_then_wildcard_then_every_host_and_a_longer_prefix_first_within_each() -> None:
    routes = {
        "a_root": route(),
        "b_api": route(path_prefix="/api"),
        "c_api_v2": route(path_prefix="/api/v2"),
        "d_host_root": route(hosts=["shop.example.com"]),
        "e_host_api": route(hosts=["shop.example.com"], path_prefix="/api"),
        "f_other_api": route(hosts=["cart.example.com"], path_prefix="/api"),
        "g_wild_root": route(hosts=["*.example.com"]),
        "h_wild_api": route(hosts=["*.example.com"], path_prefix="/api"),
        "i_mixed": route(hosts=["mixed.example.org", "*.example.org"], path_prefix="/api/v2"),
        "j_abc": route(hosts=["shop.example.com"], path_prefix="/abc"),
    }
    config = render(proxy(), routes, {})
    # Within a kind: the longer prefix, then the prefix (/abc before /api), then the app name.
    assert backend_order(config) == [
        *("i_mixed", "j_abc", "e_host_api", "f_other_api", "d_host_root"),  # named hosts
        *("i_mixed", "h_wild_api", "g_wild_root"),  # wildcard hosts
        *("c_api_v2", "b_api", "a_root"),  # every host
    ]


def test_a_request_that_did_not_reach_a_release_is_sent_again_soon_and_only_gets_after_it_did() -> None:
    config = render(proxy(), ROUTES, {"shop": Server("shop", "172.18.0.2", 8000)})
    defaults = section(config, "defaults")
    # A dead container's address answers nothing: 100 ms, not 5 s, before the request is sent again (for
    # about 3 s, to where the route points by then: the backup once the live server is down).
    assert "timeout connect 100ms" in defaults
    assert {"retries 30", "option redispatch 1", "retry-on conn-failure empty-response"} <= set(defaults)
    for app in ROUTES:
        assert "http-request disable-l7-retry unless METH_GET" in section(config, f"backend be_{app}")


def test_while_the_proxy_is_away_a_pass_deploys_only_the_apps_without_a_route() -> None:
    file = desired(shop=route(hosts=["shop.example.com"]), worker=app(), api=route(path_prefix="/api"))
    actions = (
        Action(ActionKind.CREATE, "shop", "shop"),
        Action(ActionKind.REPLACE, "worker", "worker"),
        Action(ActionKind.CONFLICT, "api", "api"),  # a problem, not a change: it waits for nothing
        Action(ActionKind.REMOVE, "gone", "gone", (PRUNED,)),  # not in the file: no route to wait for
    )
    kept, waiting = unrouted(Plan("abc", actions), file)
    assert [action.app for action in kept.actions] == ["worker", "gone"]
    assert waiting == ["shop"]


def test_the_admin_socket_hands_over_listeners_and_is_at_admin_level() -> None:
    config = render(proxy(), ROUTES, {}, uid=1234)
    (socket,) = [line for line in config.splitlines() if line.strip().startswith("stats socket")]
    assert socket == (
        "  stats socket /usr/local/etc/haproxy/admin.sock mode 600 uid 1234 level admin expose-fd listeners"
    )
    assert "  master-worker" in config.splitlines()


@pytest.mark.parametrize(
    ("drains", "hard_stop"),
    [
        ([], "30s"),
        (["0s"], "30s"),
        (["10s"], "40s"),
        (["500ms", "1m", "10s"], "90s"),
        (["1h"], "3630s"),
    ],
)
def test_hard_stop_after_grows_with_the_longest_drain(drains: list[str], hard_stop: str) -> None:
    routes = {f"app{index}": route(path_prefix=f"/{index}", drain=drain) for index, drain in enumerate(drains)}
    assert f"  hard-stop-after {hard_stop}" in render(proxy(), routes, {}).splitlines()


def test_no_routes_render_a_proxy_that_serves_nothing() -> None:
    config = render(proxy(), {}, {})
    assert frontends(config) == [["bind 0.0.0.0:80"]]
    assert "backend" not in config


def test_the_proxy_container_changes_with_its_image_listen_and_certs_only() -> None:
    base = container_hash(proxy(), "sha256:aa")
    assert container_hash(proxy(), "sha256:aa") == base
    assert container_hash(proxy(), "sha256:bb") != base
    assert container_hash(proxy(listen=["0.0.0.0:8080"]), "sha256:aa") != base
    assert container_hash(proxy(version="2.9"), "sha256:aa") != base
    assert container_hash(proxy(tls={"certs": "/etc/certs"}), "sha256:aa") != base
    with_tls = container_hash(proxy(tls={"certs": "/etc/certs"}), "sha256:aa")
    # Which ports serve TLS is the config's (a reload), not the container's.
    assert container_hash(proxy(tls={"certs": "/etc/certs", "ports": [8443]}), "sha256:aa") == with_tls


HOST_CHOICES = ("shop.example.com", "cart.example.com", "*.example.com", "*.shop.example.com")
SEGMENTS = ("api", "v1", "static", "a")
REQUEST_HOSTS = (
    "shop.example.com",
    "Shop.Example.com:8080",
    "cart.example.com",
    "x.example.com",
    "a.shop.example.com",
    "example.com",
    "other.org",
)
REQUEST_PATHS = (
    "/",
    "/api",
    "/api/",
    "/api/v1",
    "/api/v1/",
    "/api/v1/static",
    "/api/v1x",
    "/apix",
    "/apiary",
    "/static",
    "/static/a",
    "/staticx",
    "/a",
    "/a/v1",
    "/ab",
    "/v1",
)
HOST_FETCH = "req.hdr(host),field(1,:),lower"


def first_backend(config: str, host: str, path: str) -> str | None:
    """The app the first frontend sends a request for ``host`` and ``path`` to, read as HAProxy reads it:
    the first ``use_backend`` whose ACLs all match (the lines of one ACL name are OR'ed); None: a 503."""
    matched: dict[str, bool] = {}
    for line in frontends(config)[0]:
        words = line.split()
        if words[0] == "acl":
            name, fetch, patterns = words[1], words[2], words[3:]
            if fetch == "path":
                hit = path in patterns  # exact
            elif fetch == "path_beg":
                hit = any(path.startswith(pattern) for pattern in patterns)
            else:
                assert fetch == HOST_FETCH and patterns[0] == "-m", line
                value = host.split(":")[0].lower()
                method, values = patterns[1], patterns[2:]
                assert method in ("str", "end"), line
                hit = value in values if method == "str" else any(value.endswith(end) for end in values)
            matched[name] = matched.get(name, False) or hit
        elif words[0] == "use_backend":
            conditions = words[3:] if len(words) > 2 else []
            assert len(words) == 2 or words[2] == "if", line
            if all(matched[condition] for condition in conditions):
                return words[1].removeprefix("be_")
    return None


def under(path: str, prefix: str) -> bool:
    """Whether a request for ``path`` falls under ``path_prefix: PREFIX``: ``/api`` is ``/api`` itself and
    what lies under ``/api/`` (never ``/apiary``); ``/api/`` and ``/`` are what lies under them."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


def most_specific(routes: dict[str, AppSpec], host: str, path: str) -> str | None:
    """The app whose claim on ``host`` and ``path`` is the most specific: a named host, then a wildcard (the one
    with more labels first), then every host; then the longer prefix, the prefix, the app name."""
    name = host.split(":")[0].lower()
    claims = []
    for app_name, spec in routes.items():
        assert spec.route is not None
        hosts, prefix = spec.route.hosts, spec.route.path_prefix
        if not under(path, prefix):
            continue
        wild = [one.count(".") for one in hosts if one.startswith("*.") and name.endswith(one[1:])]
        if name in hosts:
            kind, labels = 0, 0
        elif wild:
            kind, labels = 1, max(wild)
        elif not hosts:
            kind, labels = 2, 0
        else:
            continue
        claims.append((kind, -labels, -len(prefix), prefix, app_name))
    return min(claims)[4] if claims else None


@st.composite
def route_sets(draw: st.DrawFn) -> dict[str, AppSpec]:
    """Routes whose (host, path prefix) claims are distinct, as the file requires."""
    taken: set[tuple[str, str]] = set()
    routes: dict[str, AppSpec] = {}
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        hosts = tuple(draw(st.lists(st.sampled_from(HOST_CHOICES), max_size=3, unique=True)))
        parts = draw(st.lists(st.sampled_from(SEGMENTS), max_size=3))
        slash = draw(st.sampled_from(("", "/")))
        prefix = "/" + "/".join(parts) + (slash if parts else "")
        claims = {(host, prefix) for host in hosts or ("*",)}
        if claims & taken:
            continue
        taken |= claims
        name = draw(st.sampled_from(("shop", "cart", "web", "api", "x", "y-1", "z_2", "tenants")))
        routes[f"{name}{len(routes)}"] = route(hosts=list(hosts), path_prefix=prefix)
    return routes


def kinds(spec: AppSpec) -> list[tuple[int, int]]:
    """The rules an app's route renders to, as (kind, labels): (0, 0) for its named hosts, (1, N) for its
    wildcards of N labels (one rule per N), (2, 0) for every host."""
    assert spec.route is not None
    named = any(not host.startswith("*.") for host in spec.route.hosts)
    wild = sorted({host.count(".") for host in spec.route.hosts if host.startswith("*.")})
    return [(0, 0)] * named + [(1, labels) for labels in wild] + [(2, 0)] * (not spec.route.hosts)


@settings(max_examples=200, deadline=None)
@given(routes=route_sets())
def test_render_tries_the_most_specific_rule_first(routes: dict[str, AppSpec]) -> None:
    # The drawn set is one that the file accepts.
    file = DesiredState(apps=routes, proxy=ProxySpec())
    assert routed(file) == dict(sorted(routes.items()))
    config = render(proxy(listen=["0.0.0.0:80", "0.0.0.0:81"]), routes, {})
    assert [line for line in config.splitlines() if line.startswith("backend ")] == [
        f"backend be_{name}" for name in sorted(routes)
    ]
    sections = frontends(config)
    assert sections[0][1:] == sections[1][1:]  # every frontend carries every route
    lines = sections[0][1:]
    words = [line.split()[0] for line in lines]
    # Every ACL line before the first use_backend line.
    assert words == sorted(words, key=lambda word: word != "acl") and set(words) <= {"acl", "use_backend"}
    # One rule per kind of host an app names (per label count of its wildcards), in the order: kind, more
    # labels, longer prefix, prefix, app name.
    suffixes = {line.split()[1]: line.split()[5:] for line in lines if line.startswith("acl wild_")}
    keys = []
    for line in lines[words.index("use_backend") :]:
        parts = line.split()
        name = parts[1].removeprefix("be_")
        spec = routes[name].route
        assert spec is not None
        wild = [part for part in parts if part == f"wild_{name}" or part.startswith(f"wild_{name}_")]
        kind = 0 if f"host_{name}" in parts else 1 if wild else 2
        labels = {"*" + suffix for suffix in suffixes[wild[0]]} if wild else set()
        assert len({host.count(".") for host in labels}) <= 1  # one label count per rule
        keys.append((kind, -max((host.count(".") for host in labels), default=0), -len(spec.path_prefix),
                     spec.path_prefix, name))  # fmt: skip
    expected: list[tuple[int, int, int, str, str]] = []
    for name, app_spec in routes.items():
        assert app_spec.route is not None
        prefix = app_spec.route.path_prefix
        expected.extend((kind, -labels, -len(prefix), prefix, name) for kind, labels in kinds(app_spec))
    assert sorted(keys) == sorted(expected)
    assert keys == sorted(keys) and len(set(keys)) == len(keys), keys
    # And so each request goes to the app with the most specific claim on it.
    for host in REQUEST_HOSTS:
        for path in REQUEST_PATHS:
            assert first_backend(config, host, path) == most_specific(routes, host, path), (host, path)


# -- 4. serving: where a route points -------------------------------------------------------------------------


SHOP = route(hosts=["shop.example.com"])


def test_the_app_s_own_container_serves_when_it_runs_on_the_network() -> None:
    observed = engine(container("shop", ip="172.18.0.5"), container("shop.prev", ip="172.18.0.4"))
    server = serving("shop", SHOP, observed, NETWORK)
    assert server == Server("shop", "172.18.0.5", 8000)
    assert server.address == "172.18.0.5:8000"


def test_the_previous_release_serves_when_the_app_s_container_has_exited() -> None:
    observed = engine(container("shop", state="exited"), container("shop.prev", ip="172.18.0.4"))
    assert serving("shop", SHOP, observed, NETWORK) == Server("shop.prev", "172.18.0.4", 8000)
    gone = engine(container("shop.prev", ip="172.18.0.4"))
    assert serving("shop", SHOP, gone, NETWORK) == Server("shop.prev", "172.18.0.4", 8000)


def test_nothing_serves_when_neither_runs() -> None:
    assert serving("shop", SHOP, engine(), NETWORK) is None
    stopped = engine(container("shop", state="exited"), container("shop.prev", state="exited"))
    assert serving("shop", SHOP, stopped, NETWORK) is None
    others = engine(container("shop.next"), container("shop.failed"), container("cart"))
    assert serving("shop", SHOP, others, NETWORK) is None  # only APP and APP.prev ever serve


def test_a_container_that_is_not_ours_never_serves() -> None:
    squatter = engine(container("shop", managed=False))
    assert serving("shop", SHOP, squatter, NETWORK) is None
    both = engine(container("shop", managed=False), container("shop.prev", managed=False))
    assert serving("shop", SHOP, both, NETWORK) is None
    behind = engine(container("shop", managed=False), container("shop.prev", ip="172.18.0.4"))
    assert serving("shop", SHOP, behind, NETWORK) == Server("shop.prev", "172.18.0.4", 8000)


def test_a_container_not_on_the_proxy_network_does_not_serve() -> None:
    assert serving("shop", SHOP, engine(container("shop", ip=None)), NETWORK) is None
    assert serving("shop", SHOP, engine(container("shop")), "reconciler-staging") is None
    fallback = engine(container("shop", ip=None), container("shop.prev", ip="172.18.0.4"))
    assert serving("shop", SHOP, fallback, NETWORK) == Server("shop.prev", "172.18.0.4", 8000)


def test_servers_has_every_routed_app_and_only_those() -> None:
    wanted = desired(shop=SHOP, cart=route(path_prefix="/cart"), worker=app())
    observed = engine(container("shop"), container("worker"))
    assert servers(wanted, observed, NETWORK) == {"cart": None, "shop": Server("shop", "172.18.0.2", 8000)}


# -- 5. warm and to_cool: the previous release kept running -------------------------------------------------


def test_the_backup_is_the_warm_release_while_its_window_lasts_then_the_live_address_again() -> None:
    wanted = desired(shop=route(keep_warm="10m"), cart=route(path_prefix="/cart"))
    observed = engine(
        container("shop", created=T0, ip="172.18.0.2"), container("shop.prev", created=T0 - 60, ip="172.18.0.3")
    )
    assert backups(wanted, observed, NETWORK, {}, T0 + 599) == {
        "shop": Server("shop.prev", "172.18.0.3", 8000),
        "cart": None,  # nothing serves it: nor does its backup
    }
    # The window passed (it is being cooled): the live release's own address, waited for if it restarts.
    assert backups(wanted, observed, NETWORK, {}, T0 + 600)["shop"] == Server("shop", "172.18.0.2", 8000)
    alone = engine(container("shop", ip="172.18.0.2"))
    assert backups(wanted, alone, NETWORK, {}, T0)["shop"] == Server("shop", "172.18.0.2", 8000)
    # A warm release that serves (its successor is not running) is the live one, and its own backup.
    fallback = engine(container("shop", state="exited"), container("shop.prev", ip="172.18.0.3"))
    assert backups(wanted, fallback, NETWORK, {}, T0)["shop"] == Server("shop.prev", "172.18.0.3", 8000)
    # Services have no backup server: HAProxy balances over their tasks.
    service = app(route={"port": 8000}, replicas=2)
    assert backups(desired(api=service), engine(), NETWORK, {}, T0) == {}


def test_with_server_rewrites_the_live_or_the_backup_line_of_one_backend() -> None:
    config = render(proxy(), ROUTES, {"shop": Server("shop", "172.18.0.2", 8000)})
    moved = with_server(config, "shop", Server("shop.prev", "172.18.0.3", 8000), "warm")
    assert section(moved, "backend be_shop")[1] == "server warm 172.18.0.3:8000 backup"
    assert section(moved, "backend be_shop")[0] == section(config, "backend be_shop")[0]
    assert section(moved, "backend be_api") == section(config, "backend be_api")
    assert with_server(moved, "shop", None, "warm") == config
    assert with_server(config, "nowhere", None) == config


def test_the_previous_release_is_warm_until_keep_warm_after_its_successor_was_created() -> None:
    spec = route(keep_warm="10m")
    observed = engine(container("shop", created=T0 + 100), container("shop.prev", created=T0))
    found = warm("shop", spec, observed, NETWORK, {})
    assert found is not None
    assert found[0].name == "shop.prev" and found[1] == T0 + 100 + 600


def test_the_warm_window_starts_at_the_later_of_the_switch_and_the_successor_s_creation() -> None:
    spec = route(keep_warm="10m")
    observed = engine(container("shop", created=T0 + 100), container("shop.prev", created=T0))
    later = warm("shop", spec, observed, NETWORK, {"shop": T0 + 250})
    assert later is not None and later[1] == T0 + 250 + 600
    earlier = warm("shop", spec, observed, NETWORK, {"shop": T0 + 50})
    assert earlier is not None and earlier[1] == T0 + 100 + 600
    other = warm("shop", spec, observed, NETWORK, {"cart": T0 + 5000})
    assert other is not None and other[1] == T0 + 100 + 600


def test_to_cool_lists_a_warm_release_once_its_window_has_passed() -> None:
    wanted = desired(shop=route(keep_warm="10m"))
    observed = engine(container("shop", created=T0), container("shop.prev", created=T0 - 3600))
    assert to_cool(wanted, observed, NETWORK, {}, T0 + 599) == []
    assert [found.name for found in to_cool(wanted, observed, NETWORK, {}, T0 + 600)] == ["shop.prev"]
    assert [found.name for found in to_cool(wanted, observed, NETWORK, {}, T0 + 10**6)] == ["shop.prev"]
    # keep_warm: 0s cools it at the first pass after the switch.
    instant = desired(shop=route(keep_warm="0s"))
    assert [found.name for found in to_cool(instant, observed, NETWORK, {}, T0)] == ["shop.prev"]


def test_the_previous_release_is_not_warm_when_it_serves() -> None:
    spec = route(keep_warm="10m")
    for current in (container("shop", state="exited"), None):
        observed = engine(*[c for c in (current, container("shop.prev")) if c is not None])
        assert warm("shop", spec, observed, NETWORK, {}) is None
        assert to_cool(desired(shop=spec), observed, NETWORK, {}, T0 + 10**6) == []
        assert serving("shop", spec, observed, NETWORK) == Server("shop.prev", "172.18.0.2", 8000)


@pytest.mark.parametrize(
    "current",
    [
        container("shop", managed=False, created=T0),  # not ours: it never serves
        container("shop", ip=None, created=T0),  # not on the proxy's network
        container("shop", state="exited", created=T0),
        container("shop", state="created", created=T0),
    ],
    ids=["unmanaged", "off-network", "exited", "created"],
)
def test_a_previous_release_that_serves_in_place_of_the_app_is_never_cooled(current: ObservedContainer) -> None:
    spec = route(keep_warm="10m")
    observed = engine(current, container("shop.prev", ip="172.18.0.4", created=T0 - 3600))
    assert serving("shop", spec, observed, NETWORK) == Server("shop.prev", "172.18.0.4", 8000)
    assert warm("shop", spec, observed, NETWORK, {}) is None
    for now in (T0 + 600, T0 + 10**6):
        assert to_cool(desired(shop=spec), observed, NETWORK, {}, now) == []
        assert to_cool(desired(shop=spec), observed, NETWORK, {"shop": T0 - 10**6}, now) == []
    # Once the app's own container serves again, the previous release is warm and then cooled.
    back = engine(container("shop", created=T0), container("shop.prev", ip="172.18.0.4", created=T0 - 3600))
    assert [found.name for found in to_cool(desired(shop=spec), back, NETWORK, {}, T0 + 600)] == ["shop.prev"]


def test_warm_is_judged_on_the_network_it_is_asked_about() -> None:
    spec = route(keep_warm="10m")
    observed = engine(container("shop", created=T0), container("shop.prev", created=T0 - 3600))
    assert warm("shop", spec, observed, NETWORK, {}) == (observed.containers[1], T0 + 600)
    # On another instance's network nothing serves: nothing is warm, nothing is cooled.
    assert warm("shop", spec, observed, "reconciler-staging", {}) is None
    assert to_cool(desired(shop=spec), observed, "reconciler-staging", {}, T0 + 10**6) == []


def test_a_stopped_or_foreign_previous_container_is_not_warm() -> None:
    spec = route()
    stopped = engine(container("shop"), container("shop.prev", state="exited"))
    assert warm("shop", spec, stopped, NETWORK, {}) is None
    foreign = engine(container("shop"), container("shop.prev", managed=False))
    assert warm("shop", spec, foreign, NETWORK, {}) is None
    assert to_cool(desired(shop=spec), foreign, NETWORK, {}, T0 + 10**6) == []


def test_an_app_that_is_not_routed_never_has_a_warm_release() -> None:
    plain = app()
    observed = engine(container("worker"), container("worker.prev"), container("shop"), container("shop.prev"))
    assert warm("worker", plain, observed, NETWORK, {}) is None
    wanted = desired(worker=plain, shop=route(keep_warm="0s"))
    assert [found.name for found in to_cool(wanted, observed, NETWORK, {}, T0 + 10**6)] == ["shop.prev"]


# -- 6. route_lines: what reconcile prints -----------------------------------------------------------------


def test_route_lines_name_each_route_and_what_serves_it() -> None:
    wanted = desired(
        shop=route(hosts=["shop.example.com", "www.example.com"], path_prefix="/api"),
        site=route(),
        worker=app(),
    )
    observed = engine(container("shop", ip="172.18.0.5", version="v2"))
    assert route_lines(wanted, observed, NETWORK, {}) == [
        "route shop.example.com,www.example.com /api -> shop v2 (172.18.0.5:8000)",
        "route * / -> nothing (503)",
    ]


def test_route_lines_of_a_release_without_a_version_have_no_double_space() -> None:
    wanted = desired(shop=route(hosts=["*.example.com"], path_prefix="/shop"))
    observed = engine(container("shop", ip="172.18.0.5", version=""))
    assert route_lines(wanted, observed, NETWORK, {}) == ["route *.example.com /shop -> shop (172.18.0.5:8000)"]


def test_route_lines_name_the_warm_release_and_the_end_of_its_window() -> None:
    wanted = desired(shop=route(hosts=["shop.example.com"], keep_warm="10m"))
    observed = engine(
        container("shop", ip="172.18.0.5", version="v2", created=T0),
        container("shop.prev", ip="172.18.0.4", version="v1", created=T0 - 3600),
    )
    assert route_lines(wanted, observed, NETWORK, {}) == [
        "route shop.example.com / -> shop v2 (172.18.0.5:8000)",
        "warm  shop.prev v1 until 2023-11-14 22:23:20Z (serves if shop dies; a rollback to it is a switch)",
    ]
    # The window runs from the later switch, across midnight UTC: the date says which day.
    switched = {"shop": T0 + 2 * 3600}
    assert route_lines(wanted, observed, NETWORK, switched)[1] == (
        "warm  shop.prev v1 until 2023-11-15 00:23:20Z (serves if shop dies; a rollback to it is a switch)"
    )
    # When APP has stopped, the previous release serves and is not warm.
    fallen = engine(
        container("shop", state="exited", version="v2", created=T0),
        container("shop.prev", ip="172.18.0.4", version="v1", created=T0 - 3600),
    )
    assert route_lines(wanted, fallen, NETWORK, {}) == ["route shop.example.com / -> shop.prev v1 (172.18.0.4:8000)"]


def test_route_lines_of_a_file_without_routes_are_empty() -> None:
    assert route_lines(desired(worker=app()), engine(container("worker")), NETWORK, {}) == []


def test_a_switch_written_into_the_config_is_the_config_rendered_with_the_new_server() -> None:
    routes = {"shop": route(port=8000), "api": route(port=9000, path_prefix="/api")}
    old = {"shop": Server("shop", "172.18.0.2", 8000), "api": Server("api", "172.18.0.5", 9000)}
    text = render(proxy(), routes, old)
    new = Server("shop.next", "172.18.0.3", 8000)
    assert with_server(text, "shop", new) == render(proxy(), routes, {**old, "shop": new})
    assert with_server(text, "shop", None) == render(proxy(), routes, {**old, "shop": None})
    assert with_server(text, "gone", new) == text  # no such backend: nothing changes


# -- what to change: decided once, acted on by sync, described by the dry run --------------------------


def test_the_container_change_comes_first_and_a_new_or_removed_proxy_needs_nothing_else() -> None:
    from reconciler.core.proxy import Do, Seen, changes, container_change

    spec = proxy(listen=["127.0.0.1:8080"])
    assert container_change(None, Seen(ours=True, prunable=True), name="p")[0].do is Do.REMOVE
    assert container_change(None, Seen(ours=True, prunable=False), name="p") == []
    assert [c.do for c in container_change(spec, Seen(ours=False), name="p")] == [Do.START]
    assert [c.do for c in container_change(spec, Seen(ours=True, current=False, running=False), name="p")] == [
        Do.RECREATE
    ]
    assert [c.do for c in container_change(spec, Seen(ours=True, answers=False), name="p")] == [Do.REVIVE]
    stopped = Seen(ours=True, running=False, rerouted=True)
    assert [c.do for c in container_change(spec, stopped, name="p")] == [Do.RESTART, Do.RELOAD]
    assert [c.do for c in container_change(spec, Seen(ours=True, edited=True), name="p")] == [Do.REWRITE]
    assert [c.do for c in container_change(spec, Seen(ours=True, unrouted=True, edited=True), name="p")] == [Do.RELOAD]
    # A proxy that is started or made again routes as its new config says: no switch is listed for it.
    web = Server("web", "10.0.0.2", 80)
    wrong = {"web": Points("10.0.0.9", 80, True)}
    assert [c.do for c in changes(spec, Seen(ours=False), name="p", live={"web": web}, live_points=wrong)] == [Do.START]
    assert [c.do for c in changes(spec, Seen(ours=True), name="p", live={"web": web}, live_points=wrong)] == [Do.SWITCH]


def test_a_route_is_misrouted_only_where_the_runtime_said_where_it_points() -> None:
    from reconciler.core.proxy import Do, misrouted

    web, api = Server("web", "10.0.0.2", 80), Server("api", "10.0.0.3", 8080)
    points = {"web": Points("10.0.0.2", 80, True), "api": Points("10.0.0.3", 8080, False), "old": None}
    found = misrouted({"web": web, "api": api, "old": None, "unasked": None}, points)
    assert [(c.do, c.app, c.server) for c in found] == [(Do.SWITCH, "api", api)]
    assert misrouted({"web": None}, {"web": Points("127.0.0.1", 1, False)}) == []  # out of use, as wanted
    assert [c.do for c in misrouted({"web": None}, points, backup=True)] == [Do.BACKUP]


def test_each_change_says_itself_done_by_a_pass_and_to_do_by_a_dry_run() -> None:
    from reconciler.core.proxy import Change, Do, pool_changes

    web = Server("web", "10.0.0.2", 80)
    assert Change(Do.SWITCH, app="web", server=web).said(done=True) == "web: route switched to web"
    assert Change(Do.SWITCH, app="web").said(done=False) == "web: switch its route to nothing (503)"
    assert Change(Do.BACKUP, app="web").said(done=True) is None  # a pass points a backup server silently
    assert Change(Do.BACKUP, app="web", server=web).said(done=False) == "web: point its backup server at web"
    started = Change(Do.START, "reconciler-proxy", "haproxy:3, 127.0.0.1:8080")
    assert started.said(done=True) == "started the proxy reconciler-proxy (haproxy:3, 127.0.0.1:8080)"
    assert started.said(done=False) == "start the proxy reconciler-proxy (haproxy:3, 127.0.0.1:8080)"
    (pooled,) = pool_changes({"api": (web,)}, {"api": [Slot("task1", "127.0.0.1", 1, False)], "other": []})
    assert pooled.assigned == (("task1", web),)
    assert pooled.said(done=True) == "api: route follows its tasks: 10.0.0.2:80"
    assert pooled.said(done=False) == "api: point its route at its tasks: 10.0.0.2:80"
    assert pool_changes({"api": (web,)}, {}) == []  # slots not read (the runtime API away): left as they are
