"""The names of the agent's log lines: every event it can emit, and nothing else. Pure.

Guarantees: the values are the names in the log (text and JSON) and never change, since people and
their alerting match on them; an event is emitted only by its member (``telemetry.log.EventLog`` takes no
other), so this list is the whole vocabulary. ``app.*`` names what one app's pass skipped or noted, after its
``ActionKind`` (conflict, error, remove) or its ``Note.kind`` (``Event.of_app``).
"""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    # the agent's life
    AGENT_STARTED = "agent.started"
    AGENT_STOPPED = "agent.stopped"
    AGENT_SUSPENDED = "agent.suspended"
    AGENT_RESUMED = "agent.resumed"
    # the branch and its file
    COMMIT_SEEN = "commit.seen"
    COMMIT_BLOCKED = "commit.blocked"  # an app of the commit cannot be deployed: none of it is
    DESIRED_INVALID = "desired.invalid"
    COMMIT_UNSIGNED = "commit.unsigned"  # --require-signed-by: the commit carries no signature; not applied
    COMMIT_BAD_SIGNATURE = "commit.bad-signature"  # signed, but not by an allowed key (or it expired)
    COMMIT_REFUSED = "commit.refused"  # --policy: the commit asks for more than the server allows
    POLICY_WARNING = "policy.warning"  # no --policy, and the file mounts /, /proc, /sys or the Docker socket
    WEBHOOK_REFUSED = "webhook.refused"  # a hook whose signature or token is wrong: not fetched
    UI_ACTION = "ui.action"  # the dashboard: a login, a logout, or an action, with the session that asked
    # deploys, one line per verdict
    DEPLOY_SUCCEEDED = "deploy.succeeded"
    DEPLOY_ROLLED_BACK = "deploy.rolled-back"
    DEPLOY_FAILED = "deploy.failed"
    DEPLOY_SUPERSEDED = "deploy.superseded"
    DEPLOY_HELD = "deploy.held"
    DEPLOY_DONE = "deploy.done"
    DEPLOY_CLEANUP = "deploy.cleanup"  # APP.next left by an interrupted deploy, removed
    # a weighted rollout (rollout:): begun, and each step's verdict; its end is a deploy verdict above
    ROLLOUT_STARTED = "rollout.started"
    ROLLOUT_STEP = "rollout.step"
    # the proxy of routed apps: started, reloaded, a route switched, a warm release stopped
    PROXY_CHANGED = "proxy.changed"
    PROXY_FAILED = "proxy.failed"
    # certificates by ACME: each issued or renewed; a host's failure once, until it has one again
    CERT_ISSUED = "cert.issued"
    CERT_RENEWED = "cert.renewed"
    CERT_FAILED = "cert.failed"
    CERT_RECOVERED = "cert.recovered"
    NOTIFY_FAILED = "notify.failed"  # a --notify target that errs or hangs (once, until it delivers again)
    NOTIFY_RECOVERED = "notify.recovered"  # it could not be brought in line after a pass's deploys (once, until it is)
    # drift: what the host changed, not git
    DRIFT_HEALING = "drift.healing"
    DRIFT_FOUND = "drift.found"
    # one app, reported rather than changed
    APP_REMOVED = "app.removed"
    APP_REMOVE = "app.remove"  # a removal skipped: the container is not ours, or already gone
    APP_CONFLICT = "app.conflict"
    APP_ERROR = "app.error"
    APP_FOREIGN = "app.foreign"
    APP_UNLABELLED = "app.unlabelled"
    APP_UNCHECKED = "app.unchecked"
    APP_ROLLOUT = "app.rollout"  # its weighted rollout is under way: the plan leaves it to that
    APP_WAITING = "app.waiting"  # not deployed: a dependency (depends_on) is not as it needs it
    # pull-request previews: a forge's hook recorded, a preview refused (max), expired (ttl) or held (its image)
    PREVIEW_OPENED = "preview.opened"
    PREVIEW_UPDATED = "preview.updated"
    PREVIEW_CLOSED = "preview.closed"
    PREVIEW_REFUSED = "preview.refused"
    PREVIEW_EXPIRED = "preview.expired"
    PREVIEW_HELD = "preview.held"
    # stable
    STABLE_PROMOTED = "stable.promoted"
    STABLE_UNPUBLISHED = "stable.unpublished"
    # outside systems: each outage once, its recovery once
    REMOTE_UNREACHABLE = "remote.unreachable"
    REMOTE_RECOVERED = "remote.recovered"
    ENGINE_UNREACHABLE = "engine.unreachable"
    ENGINE_RECOVERED = "engine.recovered"
    NODE_DOWN = "node.down"  # a swarm node of the manager's is not ready: Swarm places its tasks elsewhere
    NODE_RECOVERED = "node.recovered"
    LOCK_HELD = "lock.held"
    LOCK_RECOVERED = "lock.recovered"
    STATE_ERROR = "state.error"
    STATE_RECOVERED = "state.recovered"
    JOURNAL_RESET = "journal.reset"
    MIRROR_RESET = "mirror.reset"
    # a pass that failed as a whole
    PASS_ERROR = "pass.error"
    PASS_CRASHED = "pass.crashed"  # a bug: its traceback is kept apart
    PASS_RECOVERED = "pass.recovered"  # a pass went through after pass.error
    PASS_DONE = "pass.done"  # a pass ended, whatever it did: only with RECONCILE_PASS_DONE (tests, drills)

    @classmethod
    def of_app(cls, kind: str) -> Event:
        """``app.KIND`` for a skipped action (``ActionKind``) or a plan's note (``Note.kind``); ``ValueError``
        for a kind that has no event, so that a new kind cannot log a name missing from this list."""
        return cls(f"app.{kind}")
