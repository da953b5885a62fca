"""The edit behind `rollback` and `set-version`: `set_versions` changes only `apps.APP.version` scalars.

What a reviewer of the commit sees is the file's bytes: every test compares the edited text with the
original line by line (only the version lines differ, and on them only the scalar), checks the old
quoting style is kept, and that the result still parses and validates to exactly the new versions.
Anchors and aliases: an app never changes unless it was asked for, byte for byte (an alias becomes the
app's own scalar; a shared anchor is refused with its name and the places that share it).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.adapters.yamledit import set_versions
from reconciler.converge.run import parse_desired
from reconciler.errors import InvalidDesiredState

FILE = "desired-state.yaml"
TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"  # the model's tag rule

# Every shape the editor must leave alone: a schema comment, full-line and trailing comments, blank
# lines, the three quoting styles, flow style, an anchor and its alias on env, odd spacing.
RICH = """\
# yaml-language-server: $schema=schemas/desired-state.schema.json
# The production host.

apps:
  # the public site
  web:                         # also the container name
    image: example/web         # repository, no tag
    version: 'v1.0.0'          # single-quoted, on purpose
    ports: ["127.0.0.1:8080:8000"]
    env: &common {LOG_LEVEL: info, MODE: "prod"}

    init: true
  api:
    image: example/api
    version:   "v2"   # double-quoted, odd spacing
    env: *common
  worker: {image: example/worker, version: v3, init: true}   # flow style
  cron:
    image: example/cron
    version: v4
    command: ["/bin/sh", "-c", "echo version: v4"]

# trailing comment, after a blank line
"""


def versions(text: str) -> dict[str, str]:
    """The validated file's version per app (raises when it does not validate)."""
    return {app: spec.version for app, spec in parse_desired(text.encode(), FILE, "").apps.items()}


def changed(before: str, after: str) -> list[tuple[str, str]]:
    """The (old, new) pairs of lines that differ; the files must have the same number of lines."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(old) == len(new), f"line count changed:\n{before}\n---\n{after}"
    return [(a, b) for a, b in zip(old, new, strict=True) if a != b]


# -- examples ------------------------------------------------------------------------------------


def test_single_quoted_version_changes_and_nothing_else() -> None:
    after = set_versions(RICH, {"web": "v0.9.1"}, filename=FILE)

    assert after == RICH.replace("version: 'v1.0.0'", "version: 'v0.9.1'", 1)
    assert versions(after) == {"web": "v0.9.1", "api": "v2", "worker": "v3", "cron": "v4"}


def test_double_quoted_version_keeps_its_quotes_and_spacing() -> None:
    after = set_versions(RICH, {"api": "v1"}, filename=FILE)

    assert changed(RICH, after) == [
        ('    version:   "v2"   # double-quoted, odd spacing\n', '    version:   "v1"   # double-quoted, odd spacing\n')
    ]
    assert versions(after)["api"] == "v1"


def test_flow_style_app_is_edited_in_place() -> None:
    after = set_versions(RICH, {"worker": "v2.9"}, filename=FILE)

    assert changed(RICH, after) == [
        (
            "  worker: {image: example/worker, version: v3, init: true}   # flow style\n",
            "  worker: {image: example/worker, version: v2.9, init: true}   # flow style\n",
        )
    ]
    assert versions(after)["worker"] == "v2.9"


def test_a_version_lookalike_in_a_command_is_not_touched() -> None:
    after = set_versions(RICH, {"cron": "v5"}, filename=FILE)

    assert changed(RICH, after) == [("    version: v4\n", "    version: v5\n")]
    assert '"echo version: v4"' in after


def test_several_apps_in_one_edit() -> None:
    after = set_versions(RICH, {"cron": "c9", "web": "w9", "worker": "k9", "api": "a9"}, filename=FILE)

    assert [new for _, new in changed(RICH, after)] == [
        "    version: 'w9'          # single-quoted, on purpose\n",
        '    version:   "a9"   # double-quoted, odd spacing\n',
        "  worker: {image: example/worker, version: k9, init: true}   # flow style\n",
        "    version: c9\n",
    ]
    assert versions(after) == {"web": "w9", "api": "a9", "worker": "k9", "cron": "c9"}


def test_the_anchor_and_alias_elsewhere_still_resolve() -> None:
    after = set_versions(RICH, {"web": "v7", "api": "v8"}, filename=FILE)

    desired = parse_desired(after.encode(), FILE, "")
    assert desired.apps["api"].env == desired.apps["web"].env == {"LOG_LEVEL": "info", "MODE": "prod"}


def test_same_version_gives_the_same_bytes() -> None:
    assert set_versions(RICH, {"web": "v1.0.0", "worker": "v3"}, filename=FILE) == RICH


def test_crlf_line_endings_are_kept() -> None:
    text = RICH.replace("\n", "\r\n")

    after = set_versions(text, {"web": "v9", "worker": "w9"}, filename=FILE)

    assert after == text.replace("version: 'v1.0.0'", "version: 'v9'", 1).replace("version: v3,", "version: w9,", 1)
    assert "\n" not in after.replace("\r\n", "")
    assert versions(after)["web"] == "v9"


def test_a_document_start_marker_and_no_trailing_newline() -> None:
    text = "---\napps:\n  web:\n    image: example/web\n    version: v1"

    assert (
        set_versions(text, {"web": "v2"}, filename=FILE)
        == "---\napps:\n  web:\n    image: example/web\n    version: v2"
    )


@pytest.mark.parametrize(
    "version",
    ["1.10", "1.0", "10", "0755", "0x1F", "0o17", "1e5", "true", "True", "FALSE", "null", "NULL", "2024-01-01",
     "1_000", "0b101"],
)  # fmt: skip
@pytest.mark.parametrize("app", ["cron", "worker"])  # a plain block scalar and a plain flow scalar
def test_a_plain_version_that_would_read_back_as_another_type_gets_quoted(app: str, version: str) -> None:
    after = set_versions(RICH, {app: version}, filename=FILE)

    [(_, new)] = changed(RICH, after)
    assert f'version: "{version}"' in new
    assert versions(after)[app] == version


@pytest.mark.parametrize(
    "version", ["v1.2.3", "1.2.3", "latest", "2024.01.01", "release_7", "sha-abc123", "nan", "inf"]
)
def test_a_version_that_reads_back_as_itself_stays_plain(version: str) -> None:
    after = set_versions(RICH, {"cron": version}, filename=FILE)

    assert changed(RICH, after) == [("    version: v4\n", f"    version: {version}\n")]
    assert versions(after)["cron"] == version


@pytest.mark.parametrize("version", ["yes", "on", "off", "no"])
def test_a_yaml_1_1_boolean_is_quoted_even_in_a_yaml_1_2_file(version: str) -> None:
    # Strings in YAML 1.2, booleans in 1.1: quoted, so that no reader of either version sees a bool.
    after = set_versions(RICH, {"cron": version}, filename=FILE)

    assert changed(RICH, after) == [("    version: v4\n", f'    version: "{version}"\n')]
    assert versions(after)["cron"] == version


def test_a_digest_is_written_and_validates() -> None:
    digest = "sha256:" + "ab" * 32

    after = set_versions(RICH, {"cron": digest}, filename=FILE)

    assert versions(after)["cron"] == digest


def test_a_yaml_1_1_file_gets_yes_quoted() -> None:
    """Under a `%YAML 1.1` directive, plain `yes`/`on` are booleans: they must be quoted too."""
    text = "%YAML 1.1\n---\napps:\n  web:\n    image: example/web\n    version: v1\n"

    after = set_versions(text, {"web": "yes"}, filename=FILE)

    assert versions(after) == {"web": "yes"}, after


# -- anchors and aliases: only the apps asked for ever change ---------------------------------------

SHARED = """\
apps:
  web:
    image: example/web
    version: &v v1
  api:
    image: example/api
    version: *v   # the same release as web
  cron: {image: example/cron, version: *v}
"""


def test_an_aliased_version_gets_its_own_scalar_and_the_anchor_stays() -> None:
    after = set_versions(SHARED, {"api": "v0"}, filename=FILE)

    assert changed(SHARED, after) == [
        ("    version: *v   # the same release as web\n", "    version: v0   # the same release as web\n")
    ]
    assert versions(after) == {"web": "v1", "api": "v0", "cron": "v1"}


def test_an_aliased_version_in_a_flow_mapping_gets_its_own_scalar() -> None:
    after = set_versions(SHARED, {"cron": "1.10"}, filename=FILE)

    assert changed(SHARED, after) == [
        ("  cron: {image: example/cron, version: *v}\n", '  cron: {image: example/cron, version: "1.10"}\n')
    ]
    assert versions(after) == {"web": "v1", "api": "v1", "cron": "1.10"}


def test_an_aliased_version_that_already_reads_so_is_left_as_it_is() -> None:
    assert set_versions(SHARED, {"api": "v1"}, filename=FILE) == SHARED


def test_the_anchor_of_a_version_others_share_is_refused_naming_the_anchor_and_them() -> None:
    with pytest.raises(InvalidDesiredState) as caught:
        set_versions(SHARED, {"web": "v2"}, filename=FILE)

    assert caught.value.errors == [
        f"{FILE}:4:14: apps.web.version: this value is shared through the anchor &v with apps.api.version, "
        "apps.cron.version; changing it would change them too: give web a version of its own, or set all of "
        "them to the same version"
    ]


def test_the_anchor_changes_when_every_app_that_shares_it_is_set_to_the_same_version() -> None:
    after = set_versions(SHARED, {"web": "v2", "api": "v2", "cron": "v2"}, filename=FILE)

    assert changed(SHARED, after) == [("    version: &v v1\n", "    version: &v v2\n")]
    assert versions(after) == {"web": "v2", "api": "v2", "cron": "v2"}


def test_the_anchor_changes_when_the_apps_that_share_it_get_their_own_versions() -> None:
    after = set_versions(SHARED, {"web": "v2", "api": "v3", "cron": "v4"}, filename=FILE)

    assert [new for _, new in changed(SHARED, after)] == [
        "    version: &v v2\n",
        "    version: v3   # the same release as web\n",
        "  cron: {image: example/cron, version: v4}\n",
    ]
    assert versions(after) == {"web": "v2", "api": "v3", "cron": "v4"}


def test_an_anchored_version_used_by_an_env_value_is_refused() -> None:
    text = SHARED.replace("  cron: {image: example/cron, version: *v}", "  cron: {image: c, version: v9, env: {V: *v}}")

    with pytest.raises(InvalidDesiredState) as caught:
        set_versions(text, {"web": "v2", "api": "v2"}, filename=FILE)

    [error] = caught.value.errors
    assert error.startswith(f"{FILE}:4:14: apps.web.version: this value is shared through the anchor &v with ")
    assert "apps.cron.env.V;" in error


def test_an_anchored_version_no_one_else_uses_keeps_its_anchor() -> None:
    text = "apps:\n  web:\n    image: example/web\n    version: &v v1\n"

    after = set_versions(text, {"web": "v2"}, filename=FILE)

    assert after == text.replace("&v v1", "&v v2")


ALIASED_APP = """\
apps:
  web: &w
    image: example/web
    version: v1
  api: *w
"""


@pytest.mark.parametrize(("app", "other"), [("web", "api"), ("api", "web")])
def test_an_app_that_is_an_alias_of_another_is_refused_for_either(app: str, other: str) -> None:
    with pytest.raises(InvalidDesiredState) as caught:
        set_versions(ALIASED_APP, {app: "v2"}, filename=FILE)

    assert caught.value.errors == [
        f"{FILE}:4:14: apps.{app}.version: this value is shared through the anchor &w with apps.{other}.version; "
        f"changing it would change them too: give {app} a version of its own, or set all of them to the same version"
    ]


def test_an_app_that_is_an_alias_of_another_changes_with_it_when_both_are_asked() -> None:
    after = set_versions(ALIASED_APP, {"web": "v2", "api": "v2"}, filename=FILE)

    assert changed(ALIASED_APP, after) == [("    version: v1\n", "    version: v2\n")]


MERGED = """\
apps:
  web: &w {image: example/web, version: v1}
  api:
    <<: *w
    image: example/api
  db:
    <<: *w
    version: v9
"""


def test_a_version_merged_in_from_another_app_is_refused() -> None:
    with pytest.raises(InvalidDesiredState) as caught:
        set_versions(MERGED, {"api": "v2"}, filename=FILE)

    [error] = caught.value.errors
    assert error.startswith(f"{FILE}:2:41: apps.api.version: this value is shared through the anchor &w with ")
    assert "apps.web.version" in error
    assert "apps.db" not in error  # db's own version hides the merged one


def test_an_app_s_own_version_beside_a_merge_is_edited_alone() -> None:
    after = set_versions(MERGED, {"db": "v2"}, filename=FILE)

    assert changed(MERGED, after) == [("    version: v9\n", "    version: v2\n")]
    assert versions(after) == {"web": "v1", "api": "v1", "db": "v2"}


def test_an_unknown_app_raises_and_names_it() -> None:
    with pytest.raises(InvalidDesiredState) as caught:
        set_versions(RICH, {"web": "v2", "nope": "v1"}, filename=FILE)

    assert caught.value.errors == [f"{FILE}: apps.nope.version: not found"]


def test_a_broken_file_raises_with_its_place() -> None:
    with pytest.raises(InvalidDesiredState) as caught:
        set_versions("apps:\n  web: [\n", {"web": "v2"}, filename=FILE)

    assert all(re.match(rf"^{FILE}:\d+:\d+: ", line) for line in caught.value.errors), caught.value.errors


# -- property ------------------------------------------------------------------------------------

STYLES = {
    "plain": "{v}",
    "single": "'{v}'",
    "double": '"{v}"',
}


def rich_with(style: str) -> str:
    """RICH with web's version `v1.0.0` written in `style`."""
    return RICH.replace("'v1.0.0'", STYLES[style].format(v="v1.0.0"), 1)


def split_at_version(line: str) -> tuple[str, str]:
    """(the line up to the first `version:` and the spaces after it, the rest)."""
    match = re.match(r"^(.*?version:\s*)(.*)$", line, re.S)
    assert match, line
    return match[1], match[2]


OLD_SCALARS = {"api": '"v2"', "worker": "v3", "cron": "v4"}


@settings(max_examples=300, deadline=None)
@given(
    version=st.from_regex(TAG, fullmatch=True),
    style=st.sampled_from(sorted(STYLES)),
    app=st.sampled_from(["web", "api", "worker", "cron"]),
)
def test_any_valid_tag_round_trips_and_every_other_line_is_unchanged(version: str, style: str, app: str) -> None:
    text = rich_with(style)

    after = set_versions(text, {app: version}, filename=FILE)

    assert versions(after)[app] == version
    diff = changed(text, after)
    assert len(diff) <= 1
    for old, new in diff:
        old_scalar = STYLES[style].format(v="v1.0.0") if app == "web" else OLD_SCALARS[app]
        if old_scalar.startswith(("'", '"')):
            allowed = [old_scalar[0] + version + old_scalar[0]]  # the quoting style is kept
        else:
            allowed = [version, f'"{version}"']  # plain, or quoted when plain would not read back
        old_head, old_rest = split_at_version(old)
        new_head, new_rest = split_at_version(new)
        assert new_head == old_head, (old, new)
        assert old_rest.startswith(old_scalar), (old, new)
        after_scalar = old_rest[len(old_scalar) :]  # spaces, comment, the rest of a flow mapping
        assert new_rest in [scalar + after_scalar for scalar in allowed], (old, new)
    others = {name: v for name, v in versions(after).items() if name != app}
    assert others == {name: v for name, v in versions(text).items() if name != app}


@settings(max_examples=100, deadline=None)
@given(
    web=st.from_regex(TAG, fullmatch=True),
    worker=st.from_regex(TAG, fullmatch=True),
    cron=st.from_regex(TAG, fullmatch=True),
)
def test_several_generated_versions_at_once(web: str, worker: str, cron: str) -> None:
    after = set_versions(RICH, {"web": web, "worker": worker, "cron": cron}, filename=FILE)

    assert versions(after) == {"web": web, "api": "v2", "worker": worker, "cron": cron}
    assert len(changed(RICH, after)) <= 3
