"""A listener of the event log that raises (a bug in metrics or notifications) neither stops the line nor the
caller, and is never silent: its traceback reaches stderr whole."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import pytest

from reconciler.core.events import Event
from reconciler.telemetry.log import EventLog


def broken_listener(event: Event, message: str, fields: Mapping[str, Any]) -> None:
    raise KeyError("a bug in a listener")


def test_a_listener_that_raises_keeps_its_traceback_and_the_line_is_written(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    events = EventLog(stream=stream)
    heard: list[str] = []
    events.listeners += [broken_listener, lambda event, message, fields: heard.append(message)]

    events.emit(Event.DEPLOY_SUCCEEDED, "deployed web v2")

    assert "deploy.succeeded" in stream.getvalue()
    assert heard == ["deployed web v2"]  # the listeners after it still hear the line
    err = capsys.readouterr().err
    assert "the event listener broken_listener failed (a bug)" in err
    assert "Traceback (most recent call last)" in err
    assert "KeyError: 'a bug in a listener'" in err


def test_the_failure_goes_to_listener_failed_when_one_is_set() -> None:
    events = EventLog(stream=io.StringIO())
    failed: list[tuple[object, BaseException]] = []
    events.listener_failed = lambda listener, exc: failed.append((listener, exc))
    events.listeners.append(broken_listener)

    events.emit(Event.DEPLOY_FAILED, "web failed")

    assert [(listener, type(exc)) for listener, exc in failed] == [(broken_listener, KeyError)]
