"""A fleet's canary (``canary: {on: ..., version: ...}``), pure: placement and validation.

On the hosts that ``canary.on`` picks (of those the app runs on) the app's version is the canary's; on
its other hosts it is ``version`` (``stable``, followed from the registry by the shell). Each mistake
is one ``FILE:LINE:COL: path: message`` line, at the place a person has to fix.
"""

from __future__ import annotations

import json

import pytest

from reconciler.converge.run import parse_desired
from reconciler.core import schema
from reconciler.core.fleet import is_canary, placed
from reconciler.errors import InvalidDesiredState

FILE = "desired-state.yaml"
HOSTS = """\
hosts:
  web-1: {engine: "ssh://deploy@web-1", labels: {role: web, canary: true}}
  web-2: {engine: "ssh://deploy@web-2", labels: {role: web}}
  web-3: {engine: "ssh://deploy@web-3", labels: {role: web}}
  jobs-1: {labels: {role: worker}}
"""
WEB = """\
  web:
    image: registry.example.com/web
    version: stable
    on: {role: web}
    stable_after: 10m
    canary:
      on: {canary: true}
      version: v1.5.0
"""


def versions(text: str) -> dict[str, dict[str, str]]:
    """Host -> app -> the version that host runs, for every host of the file."""
    desired = parse_desired(text.encode(), FILE, "")
    assert desired.hosts is not None
    return {host: {app: spec.version for app, spec in placed(desired, host).apps.items()} for host in desired.hosts}


def errors(text: str) -> list[str]:
    with pytest.raises(InvalidDesiredState) as caught:
        parse_desired(text.encode(), FILE, "")
    return caught.value.errors


def test_canary_hosts_run_the_candidate_and_the_others_the_apps_version() -> None:
    text = HOSTS + "apps:\n" + WEB + "  worker: {image: x/worker, version: v3, on: [jobs-1]}\n"

    assert versions(text) == {
        "web-1": {"web": "v1.5.0"},
        "web-2": {"web": "stable"},
        "web-3": {"web": "stable"},
        "jobs-1": {"worker": "v3"},
    }
    desired = parse_desired(text.encode(), FILE, "")
    assert desired.hosts is not None
    # The placed app keeps its canary: the shell reads it to follow the registry's stable on web-2 and web-3.
    on_follower = placed(desired, "web-2").apps["web"]
    assert on_follower.canary is not None and on_follower.canary.version == "v1.5.0"
    assert is_canary(desired.apps["web"], "web-1", desired.hosts["web-1"])
    assert not is_canary(desired.apps["web"], "web-2", desired.hosts["web-2"])


def test_canary_by_host_names_and_a_pinned_version_elsewhere() -> None:
    text = (
        HOSTS
        + "apps:\n"
        + WEB.replace("version: stable", "version: v1.4.2").replace("on: {canary: true}", "on: [web-2, web-3]")
    )

    assert versions(text) == {
        "web-1": {"web": "v1.4.2"},
        "web-2": {"web": "v1.5.0"},
        "web-3": {"web": "v1.5.0"},
        "jobs-1": {},
    }


def test_a_canary_label_only_counts_on_the_apps_own_hosts() -> None:
    # jobs-1 carries canary=true too, but the app does not run there: it gets nothing, not a canary.
    text = HOSTS.replace("labels: {role: worker}", "labels: {role: worker, canary: true}") + "apps:\n" + WEB

    found = versions(text)

    assert found["jobs-1"] == {} and found["web-1"] == {"web": "v1.5.0"} and found["web-2"] == {"web": "stable"}


def test_a_canary_digest_is_a_version() -> None:
    digest = "sha256:" + "ab" * 32

    assert versions(HOSTS + "apps:\n" + WEB.replace("v1.5.0", digest))["web-1"] == {"web": digest}


def test_a_canary_without_hosts_is_an_error_at_its_place() -> None:
    assert errors("apps:\n" + WEB.replace("    on: {role: web}\n", "")) == [
        f"{FILE}:7:7: apps.web.canary: canary: picks some of the app's hosts: declare them in a top-level hosts:"
    ]


def test_a_canary_that_picks_none_of_the_apps_hosts_is_an_error() -> None:
    text = HOSTS + "apps:\n" + WEB.replace("on: {canary: true}", "on: {role: worker}")

    assert errors(text) == [
        f"{FILE}:13:11: apps.web.canary.on: none of the app's hosts has the labels role=worker (the app runs on"
        " web-1, web-2, web-3): the canary would run nowhere"
    ]


def test_canary_host_names_that_are_unknown_or_do_not_run_the_app_are_errors() -> None:
    text = HOSTS + "apps:\n" + WEB.replace("on: {canary: true}", "on: [web-1, wbe-2, jobs-1]")

    assert errors(text) == [
        f"{FILE}:13:19: apps.web.canary.on[1]: no host 'wbe-2' is declared in hosts; did you mean 'web-2'?",
        f"{FILE}:13:26: apps.web.canary.on[2]: host 'jobs-1' does not run the app (the app runs on web-1, web-2,"
        " web-3): it cannot be its canary",
    ]
    assert errors(HOSTS + "apps:\n" + WEB.replace("on: {canary: true}", "on: []")) == [
        f"{FILE}:13:11: apps.web.canary.on: an empty canary.on picks no host: name one of the app's hosts, or leave"
        " canary: out"
    ]


def test_a_canary_of_stable_is_an_error() -> None:
    text = HOSTS + "apps:\n" + WEB.replace("version: v1.5.0", "version: stable")

    assert errors(text) == [
        f"{FILE}:14:16: apps.web.canary.version: the canary runs a candidate, not stable: give its tag or sha256:"
        " digest"
    ]


def test_a_canary_misspelt_or_half_written_names_what_is_wrong() -> None:
    text = HOSTS + "apps:\n" + WEB.replace("      version: v1.5.0\n", "      verison: v1.5.0\n")

    assert errors(text) == [
        f"{FILE}:12:5: apps.web.canary.version: required key is missing",
        f"{FILE}:14:7: apps.web.canary.verison: unknown key 'verison'; did you mean 'version'?",
    ]
    assert errors(HOSTS + "apps:\n" + WEB.replace("      on: {canary: true}\n", "")) == [
        f"{FILE}:12:5: apps.web.canary.on: required key is missing"
    ]
    assert errors(HOSTS + "apps:\n" + WEB.replace("version: v1.5.0", "version: v1.5.0:rc")) == [
        f"{FILE}:14:16: apps.web.canary.version: 'v1.5.0:rc' is not a tag, a sha256: digest or stable"
    ]


def test_the_schema_knows_the_canary() -> None:
    data = json.loads(schema.render())
    canary = data["$defs"]["CanarySpec"]

    assert canary["additionalProperties"] is False
    assert set(canary["properties"]) == {"on", "version"} and sorted(canary["required"]) == ["on", "version"]
    assert "canary" in data["$defs"]["AppSpec"]["properties"]


def test_a_canary_of_every_host_or_of_no_label_is_an_error() -> None:
    every = HOSTS + "apps:\n" + WEB.replace("on: {canary: true}", "on: {role: web}")
    assert errors(every) == [
        f"{FILE}:13:11: apps.web.canary.on: canary.on picks every host of the app (the app runs on web-1, web-2,"
        " web-3): leave one to run version:"
    ]
    assert errors(HOSTS + "apps:\n" + WEB.replace("on: {canary: true}", "on: {}")) == [
        f"{FILE}:13:11: apps.web.canary.on: an empty canary.on picks no host: name one of the app's hosts, or leave"
        " canary: out"
    ]
