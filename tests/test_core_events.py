"""The agent's event names (core.events.Event): the names people match on, one member each."""

from __future__ import annotations

import pytest

from reconciler.core.events import Event
from reconciler.core.holdback import Notice, Say
from reconciler.core.plan import ActionKind
from tests.support.agent import KNOWN_EVENTS


def test_the_members_are_the_documented_names() -> None:
    # KNOWN_EVENTS: what the agent tests accept from a healthy run; the rest mark a bug, a blocked
    # commit, or a removal skipped.
    assert {event.value for event in Event} == KNOWN_EVENTS | {"pass.crashed", "commit.blocked", "app.remove"}


@pytest.mark.parametrize(
    ("kind", "event"),
    [
        (ActionKind.CONFLICT, Event.APP_CONFLICT),
        (ActionKind.ERROR, Event.APP_ERROR),
        (ActionKind.REMOVE, Event.APP_REMOVE),
        ("foreign", Event.APP_FOREIGN),
        ("unlabelled", Event.APP_UNLABELLED),
        ("unchecked", Event.APP_UNCHECKED),
    ],
)
def test_what_an_app_skipped_or_noted_has_its_event(kind: str, event: Event) -> None:
    assert Event.of_app(kind) is event


def test_a_kind_without_an_event_is_refused() -> None:
    with pytest.raises(ValueError):
        Event.of_app(ActionKind.CREATE)


def test_a_notice_that_logs_has_an_event_and_a_clear_has_none() -> None:
    assert Notice.clear("k").event is None
    with pytest.raises(ValueError):
        Notice("k")
    with pytest.raises(ValueError):
        Notice("k", Event.DRIFT_FOUND, say=Say.CLEAR)
