"""plan(desired, resolutions, observed): what to do to each container and why; images and report formatting.

Observed containers are built the way the engine lists them: a ``GET /containers/json`` row with the
labels ``Engine.create`` writes, turned into a record by ``reconciler.core.labels.observed_from_row``
(pure; no engine is contacted).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core import images, report
from reconciler.core.images import LocalImage
from reconciler.core.labels import LABEL, MANAGED, SOURCE, observed_from_row
from reconciler.core.model import (
    AppSpec,
    DesiredState,
    ObservedContainer,
    ObservedState,
    Owner,
    Role,
    container_name,
    image_ref,
)
from reconciler.core.plan import (
    Action,
    ActionKind,
    Change,
    Plan,
    Resolution,
    Target,
    fingerprint,
    plan,
    simulate,
    spec_hash,
)

REVISION = "0123456789abcdef0123456789abcdef01234567"
IMG1 = "sha256:" + "1" * 64
IMG2 = "sha256:" + "2" * 64
IMG3 = "sha256:" + "3" * 64
SECRET = "s3cr3t-Value-7Q"  # an env value that must never be printed


def spec(**fields: Any) -> AppSpec:
    return AppSpec.model_validate({"image": "team/web", "version": "v1", **fields})


def desired(apps: Mapping[str, AppSpec], revision: str = REVISION) -> DesiredState:
    return DesiredState(apps=dict(apps), revision=revision)


def resolved(app_spec: AppSpec, image_id: str = IMG1, digest: str = "") -> Resolution:
    return Resolution(ref=image_ref(app_spec), image_id=image_id, digest=digest)


def row(
    name: str,
    *,
    state: str = "running",
    image_id: str = IMG1,
    labels: Mapping[str, str] | None = None,
    container_id: str = "",
) -> dict[str, Any]:
    """A ``GET /containers/json`` row."""
    return {
        "Id": container_id or f"id-{name}",
        "Names": [f"/{name}"],
        "State": state,
        "ImageID": image_id,
        "Labels": dict(labels or {}),
    }


def ours(
    app: str,
    app_spec: AppSpec,
    *,
    role: Role = Role.CURRENT,
    state: str = "running",
    image_id: str = IMG1,
    env_file_hash: str = "",
    revision: str = REVISION,
) -> ObservedContainer:
    """A container reconciler created for ``app_spec``, labelled as ``Engine.create`` labels it."""
    print_ = fingerprint(app, app_spec, env_file_hash=env_file_hash)
    labels = {
        MANAGED: "true",
        f"{LABEL}.app": app,
        f"{LABEL}.commit": revision,
        f"{LABEL}.version": app_spec.version,
        f"{LABEL}.digest": image_id,
        f"{LABEL}.spec-hash": spec_hash(print_, image_id),
        f"{LABEL}.fingerprint": json.dumps(print_, sort_keys=True, separators=(",", ":")),
    }
    container = observed_from_row(row(container_name(app, role), state=state, image_id=image_id, labels=labels))
    assert container.managed and container.app == app and container.role is role
    return container


def foreign(name: str, *, state: str = "running", image_id: str = IMG3) -> ObservedContainer:
    container = observed_from_row(row(name, state=state, image_id=image_id, labels={"com.example": "x"}))
    assert not container.managed
    return container


def observed(*containers: ObservedContainer) -> ObservedState:
    return ObservedState(containers=containers)


def kinds(result: Plan) -> list[tuple[ActionKind, str]]:
    return [(action.kind, action.container) for action in result.actions]


# -- create, in sync, start ------------------------------------------------------------------------


def test_create_when_missing() -> None:
    web = spec(env={"A": "1"}, ports=["8000:8000"])
    result = plan(desired({"web": web}), {"web": resolved(web)}, observed())
    assert result.revision == REVISION
    assert result.actions == (
        Action(
            ActionKind.CREATE,
            "web",
            "web",
            (Change("container", "missing", "created"), Change("image", "(none)", "v1 111111111111")),
            Target(
                app="web",
                spec=web,
                resolution=resolved(web),
                fingerprint=fingerprint("web", web),
                revision=REVISION,
            ),
        ),
    )
    assert result.changes == result.actions
    assert result.problems == ()
    assert not result.in_sync


def test_no_action_when_in_sync() -> None:
    web = spec(
        env={"A": "1", "B": "two"},
        env_file="/etc/web.env",
        ports=["8000:8000", "53:53/udp"],
        volumes=["data:/data"],
        command=["/bin/server", "--port", "8000"],
        restart="always",
        init=True,
        stop_timeout="500ms",
    )
    state = observed(ours("web", web, env_file_hash="h1"), foreign("postgres"))
    result = plan(desired({"web": web}), {"web": resolved(web)}, state, env_file_hashes={"web": "h1"})
    assert result.actions == ()
    assert result.in_sync


def test_in_sync_does_not_depend_on_list_order_in_the_file() -> None:
    before = spec(ports=["1:1", "2:2"], volumes=["a:/a", "b:/b"])
    after = spec(ports=["2:2", "1:1"], volumes=["b:/b", "a:/a"])
    assert plan(desired({"web": after}), {"web": resolved(after)}, observed(ours("web", before))).in_sync


def test_health_and_stable_after_do_not_replace_the_container() -> None:
    before = spec(health={"http": "http://127.0.0.1:8000/"}, stable_after="10m")
    after = spec(health={"tcp": "127.0.0.1:8000", "timeout": "1m"}, stable_after="1h")
    assert plan(desired({"web": after}), {"web": resolved(after)}, observed(ours("web", before))).in_sync


@pytest.mark.parametrize("state", ["exited", "created", "dead"])
def test_start_when_stopped(state: str) -> None:
    web = spec()
    result = plan(desired({"web": web}), {"web": resolved(web)}, observed(ours("web", web, state=state)))
    assert len(result.actions) == 1
    action = result.actions[0]
    assert (action.kind, action.app, action.container) == (ActionKind.START, "web", "web")
    assert action.reasons == (Change("state", state, "running"),)


def test_restarting_counts_as_running() -> None:
    web = spec()
    assert plan(desired({"web": web}), {"web": resolved(web)}, observed(ours("web", web, state="restarting"))).in_sync


def test_stopped_and_different_is_replaced_not_started() -> None:
    old, new = spec(init=False), spec(init=True)
    result = plan(desired({"web": new}), {"web": resolved(new)}, observed(ours("web", old, state="exited")))
    assert kinds(result) == [(ActionKind.REPLACE, "web")]


# -- replace, with reasons ---------------------------------------------------------------------------

REPLACE_CASES: list[tuple[str, dict[str, Any], dict[str, Any], tuple[Change, ...]]] = [
    (
        "ports",
        {"ports": ["8000:8000"]},
        {"ports": ["8001:8000", "53:53/udp"]},
        (Change("ports", "[8000:8000]", "[53:53/udp, 8001:8000]"),),
    ),
    ("ports-removed", {"ports": ["8000:8000"]}, {}, (Change("ports", "[8000:8000]", "[]"),)),
    (
        "volumes",
        {"volumes": ["data:/data"]},
        {"volumes": ["data:/data:ro"]},
        (Change("volumes", "[data:/data]", "[data:/data:ro]"),),
    ),
    ("command", {}, {"command": ["/bin/server", "-v"]}, (Change("command", "(none)", "[/bin/server, -v]"),)),
    ("command-changed", {"command": ["a"]}, {"command": ["b"]}, (Change("command", "[a]", "[b]"),)),
    ("restart", {}, {"restart": "always"}, (Change("restart", "unless-stopped", "always"),)),
    ("init", {}, {"init": True}, (Change("init", "False", "True"),)),
    ("stop_timeout", {}, {"stop_timeout": "500ms"}, (Change("stop_timeout", "10.0", "0.5"),)),
    ("env_file-added", {}, {"env_file": "/etc/web.env"}, (Change("env_file", "(none)", "/etc/web.env"),)),
    ("env_file-dropped", {"env_file": "/etc/web.env"}, {}, (Change("env_file", "/etc/web.env", "(none)"),)),
    (
        "env_file-moved",
        {"env_file": "/etc/a.env"},
        {"env_file": "/etc/b.env"},
        (Change("env_file", "/etc/a.env", "/etc/b.env"),),
    ),
    (
        "several",
        {"init": False, "restart": "no"},
        {"init": True, "restart": "always"},
        (Change("restart", "no", "always"), Change("init", "False", "True")),
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "reasons"), [case[1:] for case in REPLACE_CASES], ids=[c[0] for c in REPLACE_CASES]
)
def test_replace_names_what_changed(old: dict[str, Any], new: dict[str, Any], reasons: tuple[Change, ...]) -> None:
    before, after = spec(**old), spec(**new)
    result = plan(desired({"web": after}), {"web": resolved(after)}, observed(ours("web", before)))
    assert kinds(result) == [(ActionKind.REPLACE, "web")]
    action = result.actions[0]
    assert action.reasons == reasons
    assert action.target is not None
    assert action.target.spec == after
    assert action.target.fingerprint == fingerprint("web", after)


def test_replace_on_image_change() -> None:
    before, after = spec(version="v1"), spec(version="v2")
    state = observed(ours("web", before, image_id=IMG1))
    result = plan(desired({"web": after}), {"web": resolved(after, IMG2)}, state)
    assert kinds(result) == [(ActionKind.REPLACE, "web")]
    assert result.actions[0].reasons == (Change("image", "v1 111111111111", "v2 222222222222"),)


def test_replace_when_a_tag_moved_to_another_image() -> None:
    web = spec(version="stable")
    result = plan(desired({"web": web}), {"web": resolved(web, IMG2)}, observed(ours("web", web, image_id=IMG1)))
    assert result.actions[0].reasons == (Change("image", "stable 111111111111", "stable 222222222222"),)


def test_an_image_not_local_yet_is_replaced_with_a_pull() -> None:
    web = spec()
    result = plan(desired({"web": web}), {"web": Resolution(ref="team/web:v1")}, observed(ours("web", web)))
    assert result.actions[0].reasons == (Change("image", "v1 111111111111", "v1 team/web:v1 (to pull)"),)


def test_env_keys_added_removed_and_changed_never_values() -> None:
    before = spec(env={"KEEP": "same", "GONE": "old-value", "CHANGED": "before-value"})
    after = spec(env={"KEEP": "same", "NEW": SECRET, "CHANGED": SECRET + "-2"})
    result = plan(desired({"web": after}), {"web": resolved(after)}, observed(ours("web", before)))
    assert kinds(result) == [(ActionKind.REPLACE, "web")]
    assert result.actions[0].reasons == (Change("env", "keys", "added NEW; removed GONE; changed CHANGED"),)
    for change in result.actions[0].reasons:
        for text in (str(change), change.was, change.now):
            assert SECRET not in text and "old-value" not in text and "before-value" not in text


@pytest.mark.parametrize(
    ("old", "new", "now"),
    [
        ({"A": "1"}, {"A": "1", "B": SECRET}, "added B"),
        ({"A": "1", "B": SECRET}, {"A": "1"}, "removed B"),
        ({"A": SECRET}, {"A": SECRET + "x"}, "changed A"),
        ({}, {"A": SECRET, "B": "2"}, "added A, B"),
    ],
)
def test_env_change_kinds(old: dict[str, str], new: dict[str, str], now: str) -> None:
    before, after = spec(env=old), spec(env=new)
    result = plan(desired({"web": after}), {"web": resolved(after)}, observed(ours("web", before)))
    assert result.actions[0].reasons == (Change("env", "keys", now),)


def test_env_fingerprint_holds_salted_hashes_not_values() -> None:
    print_ = fingerprint("web", spec(env={"TOKEN": SECRET}))
    assert SECRET not in json.dumps(print_)
    # Same value under another app or key hashes differently.
    assert fingerprint("api", spec(env={"TOKEN": SECRET}))["env"] != print_["env"]
    assert fingerprint("web", spec(env={"OTHER": SECRET}))["env"]["OTHER"] != print_["env"]["TOKEN"]


def test_env_file_contents_change_is_seen_through_its_hash() -> None:
    web = spec(env_file="/etc/web.env")
    state = observed(ours("web", web, env_file_hash="old-hash"))
    result = plan(desired({"web": web}), {"web": resolved(web)}, state, env_file_hashes={"web": "new-hash"})
    assert kinds(result) == [(ActionKind.REPLACE, "web")]
    assert result.actions[0].reasons == (Change("env_file", "/etc/web.env", "/etc/web.env (contents changed)"),)
    assert "old-hash" not in str(result.actions[0].reasons) and "new-hash" not in str(result.actions[0].reasons)


def test_health_only_change_with_other_changes_lists_only_container_fields() -> None:
    before = spec(init=False, health={"http": "http://x/"})
    after = spec(init=True, health={"tcp": "x:1"})
    result = plan(desired({"web": after}), {"web": resolved(after)}, observed(ours("web", before)))
    assert [change.field for change in result.actions[0].reasons] == ["init"]


def test_a_container_without_a_fingerprint_label_is_replaced() -> None:
    labels = {MANAGED: "true", f"{LABEL}.app": "web", f"{LABEL}.fingerprint": "not json"}
    broken = observed_from_row(row("web", labels=labels))
    assert broken.managed and broken.fingerprint == {}
    web = spec()
    result = plan(desired({"web": web}), {"web": resolved(web)}, observed(broken))
    assert kinds(result) == [(ActionKind.REPLACE, "web")]
    assert result.actions[0].reasons  # says what differs


# -- what is not ours --------------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_conflict_for_an_unmanaged_container_with_an_apps_name(role: Role) -> None:
    web = spec()
    name = container_name("web", role)
    result = plan(desired({"web": web}), {"web": resolved(web)}, observed(foreign(name)))
    assert kinds(result) == [(ActionKind.CONFLICT, name)]
    assert result.changes == ()
    assert result.problems == result.actions
    action = result.actions[0]
    assert action.target is None and action.reasons == ()
    assert name in action.message
    # --adopt takes over only the app's own container; the names reconciler keeps stay blocked.
    assert ("--adopt" in action.message) == (role is Role.CURRENT)
    adopted = plan(desired({"web": web}), {"web": resolved(web)}, observed(foreign(name)), adopt=True)
    if role is Role.CURRENT:
        assert kinds(adopted) == [(ActionKind.REPLACE, "web")]
    else:
        assert kinds(adopted) == [(ActionKind.CONFLICT, name)]


def test_conflict_blocks_every_change_of_that_app_only() -> None:
    web, api = spec(), spec(image="team/api")
    state = observed(ours("web", spec(init=True)), foreign("web.prev"), ours("api", spec(image="team/api", init=True)))
    result = plan(desired({"web": web, "api": api}), {"web": resolved(web), "api": resolved(api)}, state)
    assert kinds(result) == [(ActionKind.REPLACE, "api"), (ActionKind.CONFLICT, "web.prev")]


def test_a_labelled_container_under_another_apps_name_is_not_ours() -> None:
    # Labels say app "api", the name says "web": the name does not fit the app, so it is not managed.
    labels = {MANAGED: "true", f"{LABEL}.app": "api", f"{LABEL}.fingerprint": "{}"}
    stray = observed_from_row(row("web", labels=labels))
    assert not stray.managed
    web = spec()
    result = plan(desired({"web": web}), {"web": resolved(web)}, observed(stray))
    assert kinds(result) == [(ActionKind.CONFLICT, "web")]


def test_adopt_replaces_an_unmanaged_container() -> None:
    web = spec()
    state = observed(foreign("web", image_id=IMG1))
    result = plan(desired({"web": web}), {"web": resolved(web)}, state, adopt=True)
    assert kinds(result) == [(ActionKind.REPLACE, "web")]
    assert result.actions[0].reasons == (Change("owner", "not reconciler", "adopted"),)
    assert result.actions[0].target is not None


def test_adopt_leaves_unrelated_containers_alone() -> None:
    web = spec()
    state = observed(foreign("postgres"), foreign("webapp"), foreign("web-1"), foreign("prev"))
    result = plan(desired({"web": web}), {"web": resolved(web)}, state, adopt=True)
    assert kinds(result) == [(ActionKind.CREATE, "web")]


# -- errors -------------------------------------------------------------------------------------------


def test_error_when_the_image_could_not_be_resolved() -> None:
    web, api = spec(), spec(image="team/api")
    resolutions = {"web": Resolution(ref="team/web:v1", error="tag v1 not found in team/web"), "api": resolved(api)}
    state = observed(ours("web", spec(init=True)))
    result = plan(desired({"web": web, "api": api}), resolutions, state)
    assert kinds(result) == [(ActionKind.CREATE, "api"), (ActionKind.ERROR, "web")]
    error = result.actions[1]
    assert error.message == "tag v1 not found in team/web"
    assert error.reasons == () and error.target is None
    assert result.problems == (error,)


def test_error_when_an_app_has_no_resolution() -> None:
    web = spec()
    result = plan(desired({"web": web}), {}, observed())
    assert kinds(result) == [(ActionKind.ERROR, "web")]
    assert result.actions[0].message


# -- prune, stale .next ---------------------------------------------------------------------------------


def test_prune_managed_containers_of_apps_no_longer_in_the_file() -> None:
    web = spec()
    gone = spec(image="team/gone")
    state = observed(
        ours("web", web),
        ours("gone", gone),
        ours("gone", gone, role=Role.PREVIOUS, state="exited"),
        ours("gone", gone, role=Role.FAILED, state="exited"),
        foreign("unrelated"),
        foreign("other.prev", state="exited"),
    )
    result = plan(desired({"web": web}), {"web": resolved(web)}, state)
    assert kinds(result) == [
        (ActionKind.REMOVE, "gone"),
        (ActionKind.REMOVE, "gone.prev"),
        (ActionKind.REMOVE, "gone.failed"),
    ]
    assert all(action.reasons == (Change("app", "not in the file", "removed"),) for action in result.actions)
    assert all(action.app == "gone" for action in result.actions)


def test_an_empty_file_prunes_only_what_is_ours() -> None:
    state = observed(ours("web", spec()), foreign("postgres"), foreign("web2"))
    assert kinds(plan(desired({}), {}, state)) == [(ActionKind.REMOVE, "web")]


def test_previous_and_failed_of_a_desired_app_are_kept() -> None:
    web = spec()
    state = observed(
        ours("web", web),
        ours("web", spec(version="v0"), role=Role.PREVIOUS, state="exited"),
        ours("web", spec(version="v2"), role=Role.FAILED, state="exited"),
    )
    assert plan(desired({"web": web}), {"web": resolved(web)}, state).in_sync


def test_stale_next_is_removed() -> None:
    web = spec()
    state = observed(ours("web", web), ours("web", spec(version="v2"), role=Role.NEXT, state="created"))
    result = plan(desired({"web": web}), {"web": resolved(web)}, state)
    assert kinds(result) == [(ActionKind.REMOVE, "web.next")]
    assert result.actions[0].reasons == (Change("container", "left by an interrupted deploy", "removed"),)


def test_stale_next_is_removed_before_the_app_is_created() -> None:
    web = spec()
    state = observed(ours("web", web, role=Role.NEXT))
    assert kinds(plan(desired({"web": web}), {"web": resolved(web)}, state)) == [
        (ActionKind.REMOVE, "web.next"),
        (ActionKind.CREATE, "web"),
    ]


def test_apps_are_planned_in_name_order() -> None:
    apps = {name: spec() for name in ("zeta", "alpha", "mid")}
    result = plan(desired(apps), {name: resolved(s) for name, s in apps.items()}, observed())
    assert [action.app for action in result.actions] == ["alpha", "mid", "zeta"]


# -- values never printed -------------------------------------------------------------------------------


def _secret_plan() -> Plan:
    created = spec(env={"TOKEN": SECRET})
    replaced = spec(image="team/api", env={"TOKEN": SECRET + "-new", "EXTRA": SECRET})
    state = observed(ours("api", spec(image="team/api", env={"TOKEN": SECRET})))
    return plan(
        desired({"web": created, "api": replaced}), {"web": resolved(created), "api": resolved(replaced)}, state
    )


def test_env_values_never_appear_in_reports() -> None:
    result = _secret_plan()
    assert kinds(result) == [(ActionKind.REPLACE, "api"), (ActionKind.CREATE, "web")]
    for action in result.actions:
        assert all(SECRET not in str(change) for change in action.reasons)
        assert SECRET not in action.message
    assert SECRET not in "\n".join(report.plan_lines(result, file="desired-state.yaml"))
    assert SECRET not in json.dumps(report.plan_as_dict(result, file="desired-state.yaml"))


def test_env_values_never_appear_in_the_plans_own_text() -> None:
    # plan.py: "env changes name keys, never values"; a Plan that is logged or shown in a traceback must
    # not carry a secret in its text either.
    result = _secret_plan()
    for text in (str(result), repr(result)):
        at = text.find(SECRET)
        assert at < 0, f"env value in the plan's text: ...{text[max(0, at - 120) : at + 40]}..."


# -- properties ------------------------------------------------------------------------------------------

APP_NAMES = ["web", "api", "db", "worker", "cache-1", "x_2"]
UNRELATED = ["postgres", "traefik", "portainer", "webapp", "web-old", "api2", "prev", "db.bak", "next"]
IMAGE_IDS = [IMG1, IMG2, IMG3]
DURATIONS = ["500ms", "1s", "10s", "30s", "10m", "1h"]
STATES = ["running", "restarting", "exited", "created", "dead", "paused"]

env_values = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=8),
    st.integers(-5, 10**6),
    st.booleans(),
)
app_fields = st.fixed_dictionaries(
    {
        "image": st.sampled_from(["team/web", "nginx", "registry.local:5000/a/b"]),
        "version": st.sampled_from(["v1", "v2", "stable", "sha256:" + "a" * 64]),
    },
    optional={
        "ports": st.lists(st.sampled_from(["80", "8000:8000", "127.0.0.1:8080:80", "53:53/udp"]), unique=True),
        "env": st.dictionaries(st.sampled_from(["A", "B", "LOG_LEVEL", "TOKEN"]), env_values, max_size=4),
        "env_file": st.sampled_from(["/etc/a.env", "/etc/b.env"]),
        "volumes": st.lists(st.sampled_from(["data:/data", "/srv:/srv:ro", "cache:/cache"]), unique=True),
        "command": st.lists(st.sampled_from(["/bin/server", "-v", "--port", "8000"]), min_size=1, max_size=3),
        "restart": st.sampled_from(["no", "always", "unless-stopped", "on-failure"]),
        "init": st.booleans(),
        "stop_timeout": st.sampled_from(DURATIONS),
        "health": st.sampled_from([{"http": "http://127.0.0.1/"}, {"docker": True}, {"interval": "2s"}]),
        "stable_after": st.sampled_from(DURATIONS),
    },
)
app_specs = app_fields.map(AppSpec.model_validate)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[DesiredState, dict[str, Resolution], ObservedState, dict[str, str]]:
    """A desired state, resolutions that all have an image id, env file hashes and an engine's containers."""
    names = draw(st.lists(st.sampled_from(APP_NAMES), min_size=1, max_size=5, unique=True))
    apps = {name: draw(app_specs) for name in names}
    resolutions = {
        name: Resolution(
            ref=image_ref(s), image_id=draw(st.sampled_from(IMAGE_IDS)), digest=draw(st.sampled_from(["", "sha256:d"]))
        )
        for name, s in apps.items()
    }
    hashes = {name: draw(st.sampled_from(["h1", "h2"])) for name, s in apps.items() if s.env_file}
    containers: list[ObservedContainer] = []
    for name, wanted in apps.items():
        how = draw(st.sampled_from(["missing", "in-sync", "differs"]))
        if how != "missing":
            same = how == "in-sync"
            containers.append(
                ours(
                    name,
                    wanted if same else draw(app_specs),
                    state=draw(st.sampled_from(STATES)),
                    image_id=resolutions[name].image_id if same else draw(st.sampled_from(IMAGE_IDS)),
                    env_file_hash=hashes.get(name, "") if same else draw(st.sampled_from(["", "h1", "h2"])),
                )
            )
        for role in (Role.PREVIOUS, Role.NEXT, Role.FAILED):
            if draw(st.booleans()):
                containers.append(ours(name, draw(app_specs), role=role, state=draw(st.sampled_from(STATES))))
    for name in draw(st.lists(st.sampled_from([n for n in APP_NAMES if n not in apps]), unique=True)):
        for role in draw(st.lists(st.sampled_from(list(Role)), min_size=1, unique=True)):
            containers.append(ours(name, draw(app_specs), role=role, state=draw(st.sampled_from(STATES))))
    for name in draw(st.lists(st.sampled_from(UNRELATED), unique=True)):
        containers.append(foreign(name, state=draw(st.sampled_from(STATES))))
    order = draw(st.permutations(containers))
    return desired(apps), resolutions, ObservedState(containers=tuple(order)), hashes


World = tuple[DesiredState, dict[str, Resolution], ObservedState, dict[str, str]]


@settings(max_examples=200, deadline=None)
@given(world=worlds())
def test_planning_the_result_of_a_plan_changes_nothing(world: World) -> None:
    wanted, resolutions, state, hashes = world
    first = plan(wanted, resolutions, state, env_file_hashes=hashes)
    after = simulate(first, state)
    second = plan(wanted, resolutions, after, env_file_hashes=hashes)
    assert second.changes == (), [str(change) for action in second.changes for change in action.reasons]
    assert second.problems == ()
    # Every app runs, as its current container, with what the file asks for.
    for app in wanted.apps:
        current = after.named(app)
        assert current is not None and current.managed and current.running
        assert current.image_id == resolutions[app].image_id


@settings(max_examples=200, deadline=None)
@given(world=worlds(), adopt=st.booleans())
def test_plan_is_deterministic(world: World, adopt: bool) -> None:
    wanted, resolutions, state, hashes = world
    first = plan(wanted, resolutions, state, env_file_hashes=hashes, adopt=adopt)
    again = plan(wanted, resolutions, state, env_file_hashes=hashes, adopt=adopt)
    assert first == again
    assert str(first) == str(again)
    assert report.plan_lines(first, file="f") == report.plan_lines(again, file="f")


@settings(max_examples=200, deadline=None)
@given(world=worlds(), data=st.data())
def test_plan_does_not_depend_on_the_engines_listing_order(world: World, data: st.DataObject) -> None:
    wanted, resolutions, state, hashes = world
    shuffled = ObservedState(containers=tuple(data.draw(st.permutations(state.containers))))
    first = plan(wanted, resolutions, state, env_file_hashes=hashes)
    second = plan(wanted, resolutions, shuffled, env_file_hashes=hashes)

    def key(action: Action) -> tuple[str, str]:
        return (action.container, action.kind.value)

    assert sorted(first.actions, key=key) == sorted(second.actions, key=key)


@st.composite
def worlds_with_squatters(draw: st.DrawFn) -> World:
    """Like ``worlds``, plus unmanaged containers under app names and their .prev/.next/.failed names."""
    wanted, resolutions, state, hashes = draw(worlds())
    taken = {c.name for c in state.containers}
    names = [container_name(app, role) for app in APP_NAMES for role in Role]
    squatters = [foreign(n) for n in draw(st.lists(st.sampled_from(names), unique=True)) if n not in taken]
    containers = draw(st.permutations([*state.containers, *squatters]))
    return wanted, resolutions, ObservedState(containers=tuple(containers)), hashes


@settings(max_examples=200, deadline=None)
@given(world=worlds_with_squatters())
def test_no_change_action_ever_touches_an_unmanaged_container(world: World) -> None:
    wanted, resolutions, state, hashes = world
    result = plan(wanted, resolutions, state, env_file_hashes=hashes)
    for action in result.changes:
        subject = state.named(action.container)
        if action.kind is ActionKind.CREATE:
            assert subject is None
        else:
            assert subject is not None and subject.managed, action
    # And every unmanaged container under one of an app's names is reported as a conflict.
    for container in state.containers:
        if not container.managed and any(container.name == container_name(a, r) for a in wanted.apps for r in Role):
            assert (ActionKind.CONFLICT, container.name) in kinds(result)


# -- images -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "short"),
    [
        ("docker.io/library/nginx:1", "nginx:1"),
        ("index.docker.io/library/nginx:1", "nginx:1"),
        ("docker.io/team/web:v1", "team/web:v1"),
        ("index.docker.io/team/web:v1", "team/web:v1"),
        ("library/nginx:1", "nginx:1"),
        ("nginx:1", "nginx:1"),
        ("registry.local:5000/team/web:v1", "registry.local:5000/team/web:v1"),
        ("localhost:5000/library/web:v1", "localhost:5000/library/web:v1"),
        (f"docker.io/library/nginx@{IMG1}", f"nginx@{IMG1}"),
    ],
)
def test_normalize(ref: str, short: str) -> None:
    assert images.normalize(ref) == short
    assert images.normalize(short) == short


ENGINE_ROWS: list[dict[str, Any]] = [
    {
        "Id": IMG1,
        "RepoTags": ["docker.io/library/nginx:1", "nginx:stable", "<none>:<none>"],
        "RepoDigests": [f"docker.io/library/nginx@{IMG2}", "<none>@<none>"],
    },
    {
        "Id": IMG2,
        "RepoTags": ["registry.local:5000/team/web:v1"],
        "RepoDigests": [f"registry.local:5000/team/web@{IMG3}"],
    },
    {"Id": IMG3, "RepoTags": None, "RepoDigests": None},
    {"Id": "sha256:built", "RepoTags": ["team/built:v1"]},
]


def test_from_engine() -> None:
    local = images.from_engine(ENGINE_ROWS)
    assert local == (
        LocalImage(id=IMG1, tags=("nginx:1", "nginx:stable"), digests=(f"nginx@{IMG2}",)),
        LocalImage(
            id=IMG2, tags=("registry.local:5000/team/web:v1",), digests=(f"registry.local:5000/team/web@{IMG3}",)
        ),
        LocalImage(id=IMG3, tags=(), digests=()),
        LocalImage(id="sha256:built", tags=("team/built:v1",), digests=()),
    )
    assert images.from_engine([]) == ()


@pytest.mark.parametrize(
    ("ref", "image_id"),
    [
        ("nginx:1", IMG1),
        ("docker.io/library/nginx:1", IMG1),
        ("nginx:stable", IMG1),
        (f"nginx@{IMG2}", IMG1),
        (f"docker.io/library/nginx@{IMG2}", IMG1),
        ("registry.local:5000/team/web:v1", IMG2),
        (f"registry.local:5000/team/web@{IMG3}", IMG2),
        ("team/built:v1", "sha256:built"),
        ("nginx:2", None),
        (f"nginx@{IMG3}", None),  # that digest belongs to another repository
        (f"team/web@{IMG3}", None),  # same path, other registry
        ("team/web:v1", None),
        ("nginx", None),
    ],
)
def test_find_local(ref: str, image_id: str | None) -> None:
    found = images.find_local(ref, images.from_engine(ENGINE_ROWS))
    assert (found.id if found else None) == image_id


def test_registry_digest() -> None:
    nginx, web, bare, built = images.from_engine(ENGINE_ROWS)
    assert images.registry_digest(nginx, "nginx") == IMG2
    assert images.registry_digest(nginx, "docker.io/library/nginx") == IMG2
    assert images.registry_digest(web, "registry.local:5000/team/web") == IMG3
    assert images.registry_digest(web, "team/web") == ""
    assert images.registry_digest(bare, "anything") == ""
    assert images.registry_digest(built, "team/built") == ""  # built here, never pulled


# -- report -----------------------------------------------------------------------------------------------


def _mixed_plan() -> Plan:
    web, api, db = spec(), spec(image="team/api", init=True), spec(image="team/db")
    state = observed(
        ours("api", spec(image="team/api")),
        ours("gone", spec()),
        foreign("db"),
        ours("worker", spec(image="team/worker"), state="exited"),
    )
    worker = spec(image="team/worker")
    return plan(
        desired({"web": web, "api": api, "db": db, "worker": worker, "bad": spec()}),
        {
            "web": resolved(web),
            "api": resolved(api),
            "db": resolved(db),
            "worker": resolved(worker),
            "bad": Resolution(ref="team/web:v1", error="tag v1 not found"),
        },
        state,
    )


def test_plan_lines_name_the_short_commit_and_every_action() -> None:
    lines = report.plan_lines(_mixed_plan(), file="desired-state.yaml")
    assert lines[0] == "desired-state.yaml @ 01234567: 4 changes, 2 problems"
    assert lines[1:] == [
        "  ~ replace  api",
        "      init: False -> True",
        "  ! error    bad: tag v1 not found",
        "  ! conflict db: container db exists and was not created by reconciler; remove or rename it, "
        "or pass --adopt to take it over",
        "  + create   web",
        "      container: missing -> created",
        "      image: (none) -> v1 111111111111",
        "  > start    worker",
        "      state: exited -> running",
        "  - remove   gone",
        "      app: not in the file -> removed",
    ]


def test_plan_lines_in_sync_and_singular() -> None:
    web = spec()
    in_sync = plan(desired({"web": web}), {"web": resolved(web)}, observed(ours("web", web)))
    assert report.plan_lines(in_sync, file="f.yaml") == ["f.yaml @ 01234567: in sync, nothing to do"]
    one = plan(desired({"web": web}, revision=""), {"web": resolved(web)}, observed())
    assert report.plan_lines(one, file="f.yaml")[0] == "f.yaml @ (no commit): 1 change"
    problem = plan(desired({"web": web}), {}, observed())
    assert report.plan_lines(problem, file="f.yaml")[0] == "f.yaml @ 01234567: 0 changes, 1 problem"


def test_plan_as_dict_shape() -> None:
    data = report.plan_as_dict(_mixed_plan(), file="desired-state.yaml")
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"revision", "file", "in_sync", "notes", "actions"}
    assert (data["revision"], data["file"], data["in_sync"]) == (REVISION, "desired-state.yaml", False)
    assert [(a["app"], a["action"], a["container"]) for a in data["actions"]] == [
        ("api", "replace", "api"),
        ("bad", "error", "bad"),
        ("db", "conflict", "db"),
        ("web", "create", "web"),
        ("worker", "start", "worker"),
        ("gone", "remove", "gone"),
    ]
    for action in data["actions"]:
        assert set(action) == {"app", "action", "container", "changes", "message"}
        for change in action["changes"]:
            assert set(change) == {"field", "was", "now"}
    assert data["actions"][0]["changes"] == [{"field": "init", "was": "False", "now": "True"}]
    assert data["actions"][1]["message"] == "tag v1 not found"


def test_plan_as_dict_in_sync() -> None:
    assert report.plan_as_dict(Plan(revision=""), file="f") == {
        "revision": "",
        "file": "f",
        "in_sync": True,
        "notes": [],
        "actions": [],
    }


def test_outcome_lines_and_dicts() -> None:
    outcomes = [
        report.Outcome("web", ActionKind.CREATE, "web", report.Result.APPLIED),
        report.Outcome("api", ActionKind.REPLACE, "api", report.Result.ROLLED_BACK, "health: not healthy after 30s"),
        report.Outcome("db", ActionKind.CONFLICT, "db", report.Result.SKIPPED, "not ours"),
    ]
    assert report.outcome_lines(outcomes, revision=REVISION, file="f.yaml") == [
        "applied     create   web @ 01234567",
        "rolled-back replace  api @ 01234567: health: not healthy after 30s",
        "skipped     conflict db @ 01234567: not ours",
    ]
    assert report.outcome_lines([], revision=REVISION, file="f.yaml") == ["f.yaml @ 01234567: in sync, nothing to do"]
    assert report.outcome_lines([], revision="", file="f.yaml") == ["f.yaml @ (no commit): in sync, nothing to do"]
    assert outcomes[1].as_dict() == {
        "app": "api",
        "action": "replace",
        "container": "api",
        "result": "rolled-back",
        "message": "health: not healthy after 30s",
    }
    assert [result for result in report.Result if result.ok] == [report.Result.APPLIED, report.Result.ROLLING_OUT]


def test_action_kinds_that_change_the_engine() -> None:
    assert {kind for kind in ActionKind if kind.changes} == {
        ActionKind.CREATE,
        ActionKind.REPLACE,
        ActionKind.START,
        ActionKind.REMOVE,
    }


# -- sources: a pass changes only what its own repository, branch and file deployed ------------------

HERE = Owner(root="r00t", location="/srv/deploy", branch="main", file="desired-state.yaml")


def owned(app: str, owner: Owner | None, *, role: Role = Role.CURRENT) -> ObservedContainer:
    """``ours(app, ...)`` as deployed by ``owner`` (None: before containers carried their source)."""
    container = ours(app, spec(), role=role)
    return container.model_copy(update={"owner": owner})


def from_here(apps: Mapping[str, AppSpec]) -> DesiredState:
    return desired(apps).model_copy(update={"source": HERE})


def test_the_source_labels_read_back_as_the_owner() -> None:
    labels = {MANAGED: "true", f"{LABEL}.app": "web"} | {f"{SOURCE}.{k}": v for k, v in HERE.model_dump().items()}
    assert observed_from_row(row("web", labels=labels)).owner == HERE
    assert observed_from_row(row("web", labels={MANAGED: "true", f"{LABEL}.app": "web"})).owner is None


def test_an_app_gone_from_the_file_of_its_own_source_is_removed() -> None:
    result = plan(from_here({}), {}, observed(owned("old", HERE)))
    assert kinds(result) == [(ActionKind.REMOVE, "old")]
    assert result.notes == ()


@pytest.mark.parametrize(
    "other",
    [
        HERE.model_copy(update={"root": "0ther", "location": "/home/me/other"}),  # another repository
        HERE.model_copy(update={"branch": "staging"}),  # another branch of it
        HERE.model_copy(update={"file": "staging.yaml"}),  # another file in it
    ],
)
def test_a_container_of_another_source_is_never_pruned(other: Owner) -> None:
    result = plan(from_here({}), {}, observed(owned("demo", other)))
    assert result.actions == ()
    assert [note.message for note in result.notes] == [
        f"owned by another source: {other.describe()}; not removed (--prune-foreign to remove it)"
    ]
    assert result.in_sync  # nothing to do: a note is not drift
    assert kinds(plan(from_here({}), {}, observed(owned("demo", other)), prune_foreign=True)) == [
        (ActionKind.REMOVE, "demo")
    ]


def test_a_clone_moved_elsewhere_or_rewritten_in_place_is_the_same_source() -> None:
    moved = HERE.model_copy(update={"location": "/home/me/clone"})
    rewritten = HERE.model_copy(update={"root": "n3w"})
    for owner in (moved, rewritten):
        assert kinds(plan(from_here({}), {}, observed(owned("old", owner)))) == [(ActionKind.REMOVE, "old")]


@pytest.mark.parametrize("role", [Role.CURRENT, Role.PREVIOUS, Role.FAILED])
def test_an_apps_container_of_another_source_is_a_conflict_unless_adopted(role: Role) -> None:
    web = spec()
    other = HERE.model_copy(update={"branch": "other"})
    state = observed(owned("web", other, role=role))
    result = plan(from_here({"web": web}), {"web": resolved(web)}, state)
    assert kinds(result) == [(ActionKind.CONFLICT, container_name("web", role))]
    assert result.actions[0].message == (
        f"container {container_name('web', role)} was deployed by another source: /srv/deploy (other) "
        "desired-state.yaml; not changed (--adopt to take it over)"
    )
    if role is Role.CURRENT:
        adopted = plan(from_here({"web": web}), {"web": resolved(web)}, state, adopt=True)
        assert kinds(adopted) == [(ActionKind.REPLACE, "web")]
        assert adopted.actions[0].reasons[0] == Change("source", other.describe(), HERE.describe())


def test_a_container_without_source_labels_counts_as_ours_with_a_note() -> None:
    web = spec()
    state = observed(owned("web", None), owned("old", None))
    result = plan(from_here({"web": web}), {"web": resolved(web)}, state)
    assert kinds(result) == [(ActionKind.REMOVE, "old")]
    assert sorted(note.container for note in result.notes) == ["old", "web"]
    assert all("`reconcile --relabel`" in note.message for note in result.notes)
    relabelled = plan(from_here({"web": web}), {"web": resolved(web)}, state, relabel=True)
    assert kinds(relabelled) == [(ActionKind.REPLACE, "web"), (ActionKind.REMOVE, "old")]
    assert relabelled.actions[0].reasons == (Change("source", "(none)", HERE.describe()),)


def test_an_env_file_that_cannot_be_read_here_is_not_checked() -> None:
    web = spec(env_file="/etc/web.env")
    state = observed(ours("web", web, env_file_hash="abc"))
    result = plan(desired({"web": web}), {"web": resolved(web)}, state, env_file_hashes={"web": None})
    assert result.actions == ()
    assert [note.message for note in result.notes] == [
        "env_file /etc/web.env: not checked (it cannot be read from here)"
    ]
    changed = plan(desired({"web": web}), {"web": resolved(web)}, state, env_file_hashes={"web": "def"})
    assert [c.field for c in changed.actions[0].reasons] == ["env_file"]


@pytest.mark.parametrize(
    ("stop_timeout", "expected"),
    [("500ms", 0.5), ("0s", 0.0), ("1h", 3600.0)],
)
def test_a_container_of_ours_stops_with_the_timeout_it_was_deployed_with(stop_timeout: str, expected: float) -> None:
    assert ours("web", spec(stop_timeout=stop_timeout)).stop_timeout == expected


def test_a_container_without_a_recorded_stop_timeout_stops_with_dockers_default() -> None:
    assert foreign("web").stop_timeout == 10.0
    labels = {MANAGED: "true", f"{LABEL}.app": "web", f"{LABEL}.fingerprint": '{"stop_timeout":"soon"}'}
    assert observed_from_row(row("web", labels=labels)).stop_timeout == 10.0
