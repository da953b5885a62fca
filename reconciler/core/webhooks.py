"""Push webhooks from GitHub, GitLab and Gitea, judged without I/O: authentic, a push, to the followed branch.

Guarantees:
- A hook is authentic only when its provider's proof matches the shared secret: GitHub's
  ``X-Hub-Signature-256`` and Gitea's ``X-Gitea-Signature`` (HMAC-SHA256 of the raw body), GitLab's
  ``X-Gitlab-Token`` (the secret itself). Every comparison is constant-time (``hmac.compare_digest``),
  and nothing is parsed before the proof holds: an unauthenticated body is never read as JSON. An
  authentic body that is not a JSON object with a ``ref`` (or nests too deeply to parse) is ``400``.
- An authentic push to the followed branch is ``HookVerdict.PUSH`` (the agent fetches and runs a pass at
  once); any other authentic hook (a ping, another event, another branch) is acknowledged and ignored.
- An authentic pull request event (GitHub's and Gitea's ``pull_request``, GitLab's ``Merge Request Hook``) that
  opens, reopens, pushes to, closes or merges one is ``HookVerdict.PULL`` with its facts (``PullEvent``: number,
  head commit, whether it comes from a fork, merged); its other actions (edited, labeled, ...) are ignored. A
  number that is not a positive integer below 10^8 or a head that is not a full hex commit id is ``400``.
- ``RateLimit`` is a token bucket per source, its clock passed in: a flood is answered ``429`` and never
  queued; its memory is bounded (``max_sources``; the oldest source is forgotten first).
- No answer quotes the secret or the proof a client sent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Provider(StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    GITEA = "gitea"


class HookVerdict(StrEnum):
    PUSH = "push"  # authentic, a push to the followed branch: fetch and converge now
    PULL = "pull-request"  # authentic, a pull request opened, pushed to or closed: its preview follows
    IGNORED = "ignored"  # authentic, but not a push to the followed branch
    UNAUTHORIZED = "unauthorized"  # the proof is missing or wrong
    BAD = "bad-request"  # authentic, but not a JSON object


@dataclass(frozen=True)
class Answer:
    verdict: HookVerdict
    status: int
    reason: str
    ref: str = ""  # the pushed ref, when the hook names one
    pull: PullEvent | None = None  # a pull request's event (``HookVerdict.PULL``)

    @property
    def body(self) -> bytes:
        return (json.dumps({"result": str(self.verdict), "reason": self.reason}) + "\n").encode()


# The header that names the event, and the value a push has, per provider.
_EVENT = {
    Provider.GITHUB: ("x-github-event", "push"),
    Provider.GITLAB: ("x-gitlab-event", "Push Hook"),
    Provider.GITEA: ("x-gitea-event", "push"),
}


class PullAction(StrEnum):
    OPENED = "opened"  # opened or reopened
    UPDATED = "updated"  # new commits pushed to it (GitLab: any update)
    CLOSED = "closed"  # closed or merged


@dataclass(frozen=True)
class PullEvent:
    """A pull request's event as a forge sends it, reduced to what a preview needs."""

    provider: Provider
    action: PullAction
    number: int
    head_sha: str
    fork: bool  # its head lives in another repository than its base
    merged: bool = False


# The header's value of a pull request's event, and its actions as each provider names them.
_PULL_EVENT = {Provider.GITHUB: "pull_request", Provider.GITLAB: "Merge Request Hook", Provider.GITEA: "pull_request"}
_PULL_ACTIONS = {
    Provider.GITHUB: {"opened": PullAction.OPENED, "reopened": PullAction.OPENED,
                      "synchronize": PullAction.UPDATED, "closed": PullAction.CLOSED},
    Provider.GITEA: {"opened": PullAction.OPENED, "reopened": PullAction.OPENED,
                     "synchronized": PullAction.UPDATED, "closed": PullAction.CLOSED},
    Provider.GITLAB: {"open": PullAction.OPENED, "reopen": PullAction.OPENED, "update": PullAction.UPDATED,
                      "close": PullAction.CLOSED, "merge": PullAction.CLOSED},
}  # fmt: skip
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
MAX_PULL = 10**8


def _hmac(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def authentic(provider: Provider, headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    """Whether the hook carries its provider's proof of ``secret`` (header names in lower case)."""
    if provider is Provider.GITHUB:
        sent = headers.get("x-hub-signature-256", "")
        return hmac.compare_digest(sent.encode(), ("sha256=" + _hmac(secret, body)).encode())
    if provider is Provider.GITEA:
        sent = headers.get("x-gitea-signature", "")
        return hmac.compare_digest(sent.encode(), _hmac(secret, body).encode())
    sent = headers.get("x-gitlab-token", "")
    return hmac.compare_digest(sent.encode(), secret)


def judge(provider: Provider, headers: Mapping[str, str], body: bytes, secret: bytes, followed: str | None) -> Answer:
    """What to do with one hook. ``followed`` is the branch's full ref (``refs/heads/main``); None
    follows the repository's default branch, whose name the hook cannot be checked against: any push
    then wakes the agent, and the fetch finds whether its branch moved."""
    if not secret or not authentic(provider, headers, body, secret):
        return Answer(HookVerdict.UNAUTHORIZED, 401, "the signature or token does not match the shared secret")
    header, push = _EVENT[provider]
    event = headers.get(header, "")
    if event == _PULL_EVENT[provider]:
        return _pull(provider, body)
    if event != push:
        return Answer(HookVerdict.IGNORED, 202, f"{event or 'an event'} is not a push: ignored")
    payload = _object(body)
    if isinstance(payload, Answer):
        return payload
    ref = payload.get("ref")
    if not isinstance(ref, str):
        return Answer(HookVerdict.BAD, 400, "a push without a ref")
    if followed is not None and ref != followed:
        return Answer(HookVerdict.IGNORED, 202, f"a push to {ref}, not to {followed}: ignored", ref)
    return Answer(HookVerdict.PUSH, 202, f"a push to {ref}: fetching", ref)


def _object(body: bytes) -> dict[str, Any] | Answer:
    """An authentic body as a JSON object, or the ``400`` that says why it is not one."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Answer(HookVerdict.BAD, 400, "the body is not JSON")
    except RecursionError:  # a signed body of 100,000 nested brackets: no hook nests that deep
        return Answer(HookVerdict.BAD, 400, "the body is JSON nested too deeply")
    if not isinstance(payload, dict):
        return Answer(HookVerdict.BAD, 400, "the body is not a JSON object")
    return payload


def _at(node: object, *path: str) -> object:
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _pull(provider: Provider, body: bytes) -> Answer:
    """An authentic pull request event: its facts (``HookVerdict.PULL``), ignored, or ``400``."""
    payload = _object(body)
    if isinstance(payload, Answer):
        return payload
    if provider is Provider.GITLAB:
        attributes = _at(payload, "object_attributes")
        action, number = _at(attributes, "action"), _at(attributes, "iid")
        sha = _at(attributes, "last_commit", "id")
        source, target = _at(attributes, "source_project_id"), _at(attributes, "target_project_id")
        fork = source is None or source != target
        merged = action == "merge"
    else:
        pull = _at(payload, "pull_request")
        action, number, sha = _at(payload, "action"), _at(payload, "number"), _at(pull, "head", "sha")
        if provider is Provider.GITHUB:  # a fork deleted since has no head repository: a fork still
            head, base = _at(pull, "head", "repo", "id"), _at(pull, "base", "repo", "id")
        else:
            head, base = _at(pull, "head", "repo_id"), _at(pull, "base", "repo_id")
        fork = head is None or head != base
        merged = _at(pull, "merged") is True
    kind = _PULL_ACTIONS[provider].get(action) if isinstance(action, str) else None
    if kind is None:
        return Answer(HookVerdict.IGNORED, 202, f"a pull request {str(action)[:32]}: ignored")
    if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < MAX_PULL:
        return Answer(HookVerdict.BAD, 400, "a pull request without a number")
    if not isinstance(sha, str) or not _SHA.match(sha):
        return Answer(HookVerdict.BAD, 400, f"pull request #{number} without its head commit")
    event = PullEvent(provider, kind, number, sha, fork, merged)
    return Answer(HookVerdict.PULL, 202, f"pull request #{number} {kind}: recorded", pull=event)


class RateLimit:
    """A token bucket per source: ``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, *, rate: float = 10.0, burst: float = 20.0, max_sources: int = 1024) -> None:
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (tokens, at)

    def allow(self, source: str, now: float) -> bool:
        tokens, at = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed
