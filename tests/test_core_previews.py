"""Pull-request previews, pure: the file's ``previews:`` (validated at FILE:LINE:COL), the forges' pull request
hooks as each sends them (``tests/data/previews``), which previews run (max, ttl, forks), how each is made from
its app, and the pass's rule that keeps a preview's trouble its own."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from reconciler.adapters.yamlfile import parse_yaml
from reconciler.core.desired import load_desired
from reconciler.core.events import Event
from reconciler.core.holdback import Say
from reconciler.core.model import DesiredState, ObservedState, RolloutSpec
from reconciler.core.plan import Action, ActionKind, Plan
from reconciler.core.previews import OpenPull, decide, deferred, preview_rule, with_previews
from reconciler.core.webhooks import HookVerdict, Provider, PullAction, judge
from reconciler.errors import InvalidDesiredState

DATA = Path(__file__).parent / "data" / "previews"
FILE = "desired-state.yaml"
SECRET = b"s3cret-hook"
SHA1 = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
SHA2 = "e5bd3914e2e596debea16f433f57875b5b90bcd6"
DAY = 86400.0

BASE = """\
proxy: {listen: ["127.0.0.1:8080"]}
apps:
  web:
    image: shop/web
    version: v1.0.0
    env: {LOG_LEVEL: info, DB_URL: postgres://db/shop}
    env_file: /etc/shop/web.env
    volumes: ["cache:/cache", "/srv/static:/static:rw"]
    secrets: [{source: /etc/shop/db-password, target: db-password}, {source: /etc/shop/api-key, target: api-key}]
    route: {hosts: [shop.example.com], port: 8000, shared_volumes: true}
  db:
    image: shop/db
    version: v1
"""


STEPS = RolloutSpec.model_validate({"steps": [{"weight": 10, "pause": "1m"}]})


def load(text: str) -> DesiredState:
    data, positions = parse_yaml(text, filename=FILE)
    return load_desired(data, positions, filename=FILE)


def errors_of(text: str) -> list[str]:
    with pytest.raises(InvalidDesiredState) as caught:
        load(text)
    return caught.value.errors


def previews(body: str) -> str:
    return BASE + "previews:\n" + body


GOOD = previews("""\
  web:
    host: "pr-{number}.preview.example.com"
    version: "pr-{number}"
    env: {FEATURE_FLAGS: all, LOG_LEVEL: debug}
    secrets: [api-key]
    max: 2
    ttl: 5d
""")


def pull(number: int, *, opened: float = 0.0, updated: float | None = None, fork: bool = False) -> OpenPull:
    return OpenPull(number, SHA1, opened, opened if updated is None else updated, fork, "github")


# -- the file ----------------------------------------------------------------------------------------------


def test_a_preview_section_is_read_with_its_defaults() -> None:
    desired = load(previews('  web: {host: "pr-{number}.p.example.com", version: "pr-{head_sha}"}\n'))
    assert desired.previews is not None
    spec = desired.previews["web"]
    assert (spec.max, spec.ttl, spec.forks, spec.env_file, spec.secrets) == (5, 7 * DAY, False, False, ())


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            '  web: {host: "pr-{number}.p.example.com", version: "pr-{number}", maxi: 3}\n',
            f"{FILE}:15:68: previews.web.maxi: unknown key 'maxi'; did you mean 'max'?",
        ),
        (
            '  web: {host: "pr.p.example.com", version: "pr-{number}"}\n',
            f"{FILE}:15:15: previews.web.host: 'pr.p.example.com': a preview's host differs per pull request: put"
            " {number} or {head_sha} in it",
        ),
        (
            '  web: {host: "pr-{nr}.p.example.com", version: "pr-{number}"}\n',
            f"{FILE}:15:15: previews.web.host: 'pr-{{nr}}.p.example.com': {{nr}} is not a placeholder: use"
            " {number} or {head_sha}",
        ),
        (
            '  web: {host: "PR-{number}.p.example.com", version: "pr-{number}"}\n',
            f"{FILE}:15:15: previews.web.host: 'PR-99999999.p.example.com' is not a host name once filled"
            " (lowercase, e.g. pr-7.preview.example.com)",
        ),
        (
            '  web: {host: "pr-{number}.p.example.com", version: "pr/{number}"}\n',
            f"{FILE}:15:53: previews.web.version: 'pr/99999999' is not a tag, a sha256: digest or stable",
        ),
        (
            '  web: {host: "pr-{number}.p.example.com", version: "pr-{number}", ttl: 0s}\n',
            f"{FILE}:15:73: previews.web.ttl: '0s': a preview's ttl is more than 0s and at most 365d",
        ),
        (
            '  wbe: {host: "pr-{number}.p.example.com", version: "pr-{number}"}\n',
            f"{FILE}:15:8: previews.wbe: no app 'wbe' to make previews of; did you mean 'web'?",
        ),
        (
            '  db: {host: "pr-{number}.p.example.com", version: "pr-{number}"}\n',
            f"{FILE}:15:7: previews.db: db has no route: a preview is served by the proxy at its own host",
        ),
        (
            '  web: {host: "pr-{number}.p.example.com", version: "pr-{number}", secrets: [nope]}\n',
            f"{FILE}:15:78: previews.web.secrets[0]: web has no secret with the target 'nope'",
        ),
    ],
)
def test_a_wrong_preview_is_one_line_at_its_place(body: str, expected: str) -> None:
    assert errors_of(previews(body)) == [expected]


def test_no_message_about_a_preview_shows_its_env_values() -> None:
    errors = errors_of(previews('  web: {host: "x-{number}.e.com", version: "pr-{number}", env: {"1A": hunter2}}\n'))
    assert errors == [f"{FILE}:15:64: previews.web.env: '1A' is not an environment variable name"]


# -- which run -----------------------------------------------------------------------------------------------


def test_a_preview_is_the_app_with_its_version_host_and_env_and_without_its_secrets() -> None:
    desired = load(GOOD)
    made = with_previews(desired, [pull(7)], now=100.0)
    web, preview = made.apps["web"], made.apps["web-pr-7"]
    assert web == desired.apps["web"]  # the app it is made from is the same
    assert preview.version == "pr-7" and preview.image == web.image
    assert preview.route is not None and preview.route.hosts == ("pr-7.preview.example.com",)
    assert preview.route.port == 8000 and preview.route.shared_volumes
    assert preview.env == {
        "LOG_LEVEL": "debug", "DB_URL": "postgres://db/shop", "FEATURE_FLAGS": "all",
        "PREVIEW_PR": "7", "PREVIEW_SHA": SHA1,
    }  # fmt: skip
    assert preview.env_file is None
    assert [secret.target for secret in preview.secrets] == ["api-key"]
    assert preview.volumes == ("web-pr-7-cache:/cache", "/srv/static:/static:ro")  # the app's files: read only
    assert made.previewed is not None and made.previewed.of == {"web-pr-7": "web"}
    assert made.previewed.pulls == {"web-pr-7": 7}
    rolled = desired.model_copy(update={"apps": {**desired.apps, "web": web.model_copy(update={"rollout": STEPS})}})
    assert with_previews(rolled, [pull(7)], now=100.0).apps["web-pr-7"].rollout is None  # replaced at once


def test_without_previews_or_pull_requests_the_state_is_the_file() -> None:
    plain = load(BASE)
    assert with_previews(plain, [pull(7)], now=0.0) is plain
    desired = load(GOOD)
    assert set(with_previews(desired, [], now=0.0).apps) == {"web", "db"}


def test_max_keeps_the_oldest_pull_requests_and_says_which_it_refused() -> None:
    desired = load(GOOD)  # max: 2
    pulls = [pull(9, opened=30), pull(3, opened=10), pull(5, opened=20)]
    decision = decide(desired.previews or {}, desired.apps, pulls, 40)
    assert sorted(decision.apps) == ["web-pr-3", "web-pr-5"]
    assert decision.previewed.notes == (
        ("preview:refused:web-pr-9", "preview.refused",
         "web-pr-9: not made: web has 2 previews already (max); it is made when one of them closes"),
    )  # fmt: skip


def test_a_preview_not_updated_within_its_ttl_expires_and_a_push_brings_it_back() -> None:
    desired = load(GOOD)  # ttl: 5d
    old = pull(4, opened=0.0, updated=1 * DAY)
    decision = decide(desired.previews or {}, desired.apps, [old], now=6 * DAY + 1)
    assert decision.apps == {}
    assert decision.previewed.notes == (
        ("preview:expired:web-pr-4", "preview.expired",
         "web-pr-4: removed: pull request #4 was not updated for 5d (ttl); a push to it brings it back"),
    )  # fmt: skip
    fresh = pull(4, opened=0.0, updated=6 * DAY)
    assert list(decide(desired.previews or {}, desired.apps, [fresh], now=6 * DAY + 1).apps) == ["web-pr-4"]


def test_an_expired_preview_frees_its_place_for_the_next() -> None:
    desired = load(GOOD)  # max: 2, ttl: 5d
    pulls = [pull(1, opened=0), pull(2, opened=1, updated=9 * DAY), pull(3, opened=2, updated=9 * DAY)]
    assert sorted(decide(desired.previews or {}, desired.apps, pulls, now=10 * DAY).apps) == ["web-pr-2", "web-pr-3"]


def test_a_fork_gets_no_preview_unless_forks_is_true() -> None:
    desired = load(GOOD)
    assert decide(desired.previews or {}, desired.apps, [pull(8, fork=True)], now=1).apps == {}
    allowed = load(GOOD + "    forks: true\n")
    assert list(decide(allowed.previews or {}, allowed.apps, [pull(8, fork=True)], now=1).apps) == ["web-pr-8"]


def test_a_preview_named_like_an_app_of_the_file_is_refused() -> None:
    text = GOOD.replace("  db:\n", "  web-pr-7:\n    image: other/app\n    version: v1\n  db:\n")
    desired = load(text)
    decision = decide(desired.previews or {}, desired.apps, [pull(7)], now=1)
    assert decision.apps == {} and decision.previewed.notes[0][0] == "preview:refused:web-pr-7"


# -- the pass's rule -----------------------------------------------------------------------------------------


def act(kind: ActionKind, app: str, message: str = "") -> Action:
    return Action(kind, app, app, message=message)


def test_a_preview_whose_image_is_missing_is_held_alone_and_said_once() -> None:
    desired = with_previews(load(GOOD), [pull(7)], now=1)
    plan = Plan("abc", (act(ActionKind.CREATE, "web"), act(ActionKind.ERROR, "web-pr-7", "shop/web:pr-7: not found")))
    kept, notices = preview_rule(desired, alone=False)(plan, ObservedState())
    assert [a.app for a in kept.actions] == ["web"]  # the file's app is not blocked by it
    held = [n for n in notices if n.say is Say.ONCE]
    assert [(n.key, n.event, n.message) for n in held] == [
        ("preview:held:web-pr-7", Event.PREVIEW_HELD, "web-pr-7: held: shop/web:pr-7: not found")
    ]


def test_in_an_atomic_pass_a_preview_deploys_alone() -> None:
    desired = with_previews(load(GOOD), [pull(3), pull(5, opened=1)], now=1)
    both = Plan("abc", (act(ActionKind.CREATE, "web-pr-3"), act(ActionKind.CREATE, "web-pr-5")))
    kept, _ = preview_rule(desired, alone=True)(both, ObservedState())
    assert [a.app for a in kept.actions] == ["web-pr-3"]
    assert deferred(desired, both, kept)
    with_app = Plan("abc", (act(ActionKind.REPLACE, "web"), act(ActionKind.CREATE, "web-pr-3"),
                            act(ActionKind.REMOVE, "web-pr-9")))  # fmt: skip
    kept, _ = preview_rule(desired, alone=True)(with_app, ObservedState())
    assert [a.app for a in kept.actions] == ["web", "web-pr-9"]  # removals are no release: they go
    one = Plan("abc", (act(ActionKind.CREATE, "web-pr-5"),))
    kept, _ = preview_rule(desired, alone=True)(one, ObservedState())
    assert kept == one and not deferred(desired, one, kept)
    kept, _ = preview_rule(desired, alone=False)(both, ObservedState())
    assert kept == both


# -- the forges' hooks --------------------------------------------------------------------------------------


def signed(provider: Provider, name: str, event: str, *, secret: bytes = SECRET) -> tuple[dict[str, str], bytes]:
    body = (DATA / name).read_bytes()
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    if provider is Provider.GITHUB:
        return {"x-github-event": event, "x-hub-signature-256": "sha256=" + digest}, body
    if provider is Provider.GITEA:
        return {"x-gitea-event": event, "x-gitea-signature": digest}, body
    return {"x-gitlab-event": event, "x-gitlab-token": secret.decode()}, body


@pytest.mark.parametrize(
    ("provider", "name", "event", "action", "number", "sha", "fork", "merged"),
    [
        (Provider.GITHUB, "github-opened.json", "pull_request", PullAction.OPENED, 7, SHA1, False, False),
        (Provider.GITHUB, "github-synchronize.json", "pull_request", PullAction.UPDATED, 7, SHA2, False, False),
        (Provider.GITHUB, "github-closed-merged.json", "pull_request", PullAction.CLOSED, 7, SHA2, False, True),
        (Provider.GITHUB, "github-opened-fork.json", "pull_request", PullAction.OPENED, 8, SHA1, True, False),
        (Provider.GITEA, "gitea-opened.json", "pull_request", PullAction.OPENED, 7, SHA1, False, False),
        (Provider.GITEA, "gitea-synchronized.json", "pull_request", PullAction.UPDATED, 7, SHA2, False, False),
        (Provider.GITEA, "gitea-closed.json", "pull_request", PullAction.CLOSED, 7, SHA2, False, False),
        (Provider.GITEA, "gitea-opened-fork.json", "pull_request", PullAction.OPENED, 8, SHA1, True, False),
        (Provider.GITLAB, "gitlab-open.json", "Merge Request Hook", PullAction.OPENED, 7, SHA1, False, False),
        (Provider.GITLAB, "gitlab-update.json", "Merge Request Hook", PullAction.UPDATED, 7, SHA2, False, False),
        (Provider.GITLAB, "gitlab-merge.json", "Merge Request Hook", PullAction.CLOSED, 7, SHA2, False, True),
        (Provider.GITLAB, "gitlab-open-fork.json", "Merge Request Hook", PullAction.OPENED, 8, SHA1, True, False),
    ],
)
def test_each_forges_pull_request_hook_is_read_as_it_sends_it(
    provider: Provider, name: str, event: str, action: PullAction, number: int, sha: str, fork: bool, merged: bool
) -> None:
    headers, body = signed(provider, name, event)
    answer = judge(provider, headers, body, SECRET, "refs/heads/main")
    assert (answer.verdict, answer.status) == (HookVerdict.PULL, 202)
    assert answer.pull is not None
    assert (answer.pull.action, answer.pull.number, answer.pull.head_sha) == (action, number, sha)
    assert (answer.pull.fork, answer.pull.merged, answer.pull.provider) == (fork, merged, provider)


@pytest.mark.parametrize("provider", list(Provider))
def test_a_pull_request_hook_with_a_wrong_proof_is_401_and_read_no_further(provider: Provider) -> None:
    name = {Provider.GITHUB: "github-opened.json", Provider.GITEA: "gitea-opened.json"}.get(provider)
    name = name or "gitlab-open.json"
    event = "Merge Request Hook" if provider is Provider.GITLAB else "pull_request"
    headers, body = signed(provider, name, event, secret=b"not-the-secret")
    answer = judge(provider, headers, body, SECRET, None)
    assert (answer.verdict, answer.status, answer.pull) == (HookVerdict.UNAUTHORIZED, 401, None)
    assert b"not-the-secret" not in answer.body


def test_other_pull_request_actions_are_ignored_and_a_bad_head_is_400() -> None:
    headers, body = signed(Provider.GITHUB, "github-labeled.json", "pull_request")
    assert judge(Provider.GITHUB, headers, body, SECRET, None).verdict is HookVerdict.IGNORED
    payload = json.loads((DATA / "github-opened.json").read_text())
    payload["pull_request"]["head"]["sha"] = "main; rm -rf /"
    body = json.dumps(payload).encode()
    headers = {"x-github-event": "pull_request",
               "x-hub-signature-256": "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()}  # fmt: skip
    answer = judge(Provider.GITHUB, headers, body, SECRET, None)
    assert (answer.verdict, answer.status) == (HookVerdict.BAD, 400)


def test_a_push_is_still_a_push() -> None:
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    headers = {"x-github-event": "push",
               "x-hub-signature-256": "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()}  # fmt: skip
    answer = judge(Provider.GITHUB, headers, body, SECRET, "refs/heads/main")
    assert (answer.verdict, answer.pull) == (HookVerdict.PUSH, None)
