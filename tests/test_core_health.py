"""The deploy gate as a pure state machine: samples with explicit times in, verdicts out. Nothing sleeps."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.health import Gate, Health, Sample, Verdict, probe_timeout
from reconciler.core.model import HealthSpec


def health(**fields: Any) -> HealthSpec:
    """Durations as the file spells them; default here: interval 1s, timeout 30s, healthy_for 5s."""
    return HealthSpec.model_validate({"interval": "1s", "timeout": "30s", "healthy_for": "5s", **fields})


def good(at: float, **fields: Any) -> Sample:
    return Sample(at=at, running=True, **fields)


def bad(at: float, detail: str = "") -> Sample:
    return Sample(at=at, running=True, probe_ok=False, detail=detail)


def feed(gate: Gate, samples: Iterable[Sample]) -> list[Gate]:
    """The gate after each sample."""
    gates = []
    for sample in samples:
        gate = gate.observe(sample)
        gates.append(gate)
    return gates


# -- passing ---------------------------------------------------------------------------------------------


def test_passes_only_after_healthy_for_of_good_samples() -> None:
    gates = feed(Gate(health(), started_at=0.0), [good(t) for t in range(7)])
    assert [g.verdict for g in gates] == [Verdict.PENDING] * 5 + [Verdict.PASSED, Verdict.PASSED]
    assert gates[0].healthy_since == 0.0
    assert gates[5].healthy_since == 0.0 and gates[5].reason == ""


def test_healthy_for_counts_from_the_first_good_sample_not_from_the_start() -> None:
    gates = feed(Gate(health(), started_at=100.0), [bad(100), bad(101), good(102), good(106), good(107)])
    assert [g.verdict for g in gates] == [Verdict.PENDING] * 4 + [Verdict.PASSED]
    assert gates[2].healthy_since == 102


def test_passes_on_sparse_samples_once_healthy_for_has_gone_by() -> None:
    gates = feed(Gate(health(), started_at=0.0), [good(0.5), good(5.4), good(5.5)])
    assert [g.verdict for g in gates] == [Verdict.PENDING, Verdict.PENDING, Verdict.PASSED]


def test_zero_healthy_for_passes_on_the_first_good_sample() -> None:
    assert Gate(health(healthy_for="0s"), started_at=0.0).observe(good(0.0)).verdict is Verdict.PASSED


def test_without_a_probe_running_is_enough() -> None:
    spec = HealthSpec()
    assert spec.probe is None
    gates = feed(Gate(spec, started_at=0.0), [Sample(at=t, running=True) for t in (0, 1, 2, 3, 4, 5)])
    assert gates[-1].verdict is Verdict.PASSED
    assert [g.verdict for g in gates[:-1]] == [Verdict.PENDING] * 5


def test_a_decided_gate_stays_decided() -> None:
    passed = feed(Gate(health(healthy_for="0s"), started_at=0.0), [good(0)])[-1]
    assert passed.observe(Sample(at=1, running=False)) is passed
    failed = Gate(health(), started_at=0.0).observe(Sample(at=0, running=False))
    assert failed.observe(good(1)) is failed


def test_the_gate_is_a_value() -> None:
    gate = Gate(health(), started_at=0.0)
    after = gate.observe(good(0))
    assert gate.healthy_since is None and gate.verdict is Verdict.PENDING
    assert after is not gate


# -- failing fast --------------------------------------------------------------------------------------------


def test_fails_at_once_when_not_running() -> None:
    gate = feed(Gate(health(), started_at=0.0), [good(0), good(1), Sample(at=2, running=False)])[-1]
    assert gate.verdict is Verdict.FAILED
    assert gate.reason == "the container is not running"


def test_not_running_carries_the_detail() -> None:
    gate = Gate(health(), started_at=0.0).observe(Sample(at=0.1, running=False, detail="exited with code 1"))
    assert (gate.verdict, gate.reason) == (Verdict.FAILED, "exited with code 1")


def test_fails_at_once_on_a_restart() -> None:
    gate = Gate(health(), started_at=0.0, restarts_at_start=2)
    assert gate.observe(good(0, restarts=2)).verdict is Verdict.PENDING
    failed = gate.observe(good(0, restarts=2)).observe(good(1, restarts=3))
    assert failed.verdict is Verdict.FAILED
    assert failed.reason == "the container restarted (1x)"
    assert gate.observe(good(0, restarts=5)).reason == "the container restarted (3x)"


@pytest.mark.parametrize("spec", [health(), health(http="http://127.0.0.1:8000/"), health(docker=True)])
def test_fails_at_once_when_docker_says_unhealthy(spec: HealthSpec) -> None:
    gate = Gate(spec, started_at=0.0).observe(good(0, docker_health="unhealthy", detail="curl: 500"))
    assert gate.verdict is Verdict.FAILED
    assert gate.reason == "Docker reports the container unhealthy: curl: 500"


def test_a_probe_failing_after_healthy_fails_at_once() -> None:
    gates = feed(Gate(health(), started_at=0.0), [bad(0), good(1), good(2), bad(3, "HTTP 500")])
    assert [g.verdict for g in gates] == [Verdict.PENDING] * 3 + [Verdict.FAILED]
    assert gates[-1].reason == "it was healthy, then the probe failed: HTTP 500"


# -- timeout ------------------------------------------------------------------------------------------------


def test_never_healthy_fails_at_timeout_not_before() -> None:
    gates = feed(Gate(health(), started_at=10.0), [bad(10.0 + t, "connection refused") for t in range(31)])
    assert [g.verdict for g in gates[:30]] == [Verdict.PENDING] * 30
    assert gates[30].verdict is Verdict.FAILED
    assert gates[30].reason == "not healthy after 30s: connection refused"


def test_timeout_in_the_message_reads_in_seconds() -> None:
    gate = Gate(health(timeout="1500ms"), started_at=0.0).observe(bad(1.5))
    assert gate.reason == "not healthy after 1.5s"


def test_healthy_before_timeout_may_finish_healthy_for_after_it() -> None:
    # Healthy by the timeout (29s < 30s): the deploy is good once it stays healthy, at 34s.
    gates = feed(Gate(health(), started_at=0.0), [bad(0), good(29), good(30), good(31), good(34)])
    assert [g.verdict for g in gates] == [Verdict.PENDING] * 4 + [Verdict.PASSED]


def test_first_healthy_after_the_timeout_fails() -> None:
    # DESIGN: "timeout: not healthy by then: the deploy failed". A slow probe may make the first sample
    # after 0s arrive after the timeout; healthy at 31s is not healthy by 30s.
    gate = feed(Gate(health(), started_at=0.0), [bad(0), good(31)])[-1]
    assert gate.verdict is Verdict.FAILED


# -- docker's own health check -----------------------------------------------------------------------------


def test_docker_probe_needs_docker_to_say_healthy() -> None:
    spec = health(docker=True)
    assert spec.probe == "docker"
    gate = Gate(spec, started_at=0.0)
    starting = feed(gate, [good(t, docker_health="starting") for t in range(10)])
    assert all(g.verdict is Verdict.PENDING and g.healthy_since is None for g in starting)
    no_check = feed(gate, [good(t, docker_health="") for t in range(10)])
    assert all(g.healthy_since is None for g in no_check)
    ok = feed(gate, [good(t, docker_health="healthy") for t in range(6)])
    assert ok[-1].verdict is Verdict.PASSED


def test_docker_probe_ignores_probe_ok() -> None:
    gate = Gate(health(docker=True), started_at=0.0)
    assert (
        feed(gate, [Sample(at=t, running=True, probe_ok=False, docker_health="healthy") for t in range(6)])[-1].verdict
        is Verdict.PASSED
    )


def test_docker_probe_starting_until_timeout_fails() -> None:
    gates = feed(Gate(health(docker=True), started_at=0.0), [good(t, docker_health="starting") for t in range(31)])
    assert gates[29].verdict is Verdict.PENDING
    assert gates[30].verdict is Verdict.FAILED


def test_docker_probe_healthy_then_starting_fails() -> None:
    gates = feed(Gate(health(docker=True), started_at=0.0), [good(0, docker_health="healthy"), good(1)])
    assert gates[-1].verdict is Verdict.FAILED


# -- when to look again ---------------------------------------------------------------------------------------


def test_next_sample_is_one_interval_on_while_not_healthy() -> None:
    gate = Gate(health(interval="2s"), started_at=0.0).observe(bad(0))
    assert gate.next_sample_at(0.0) == 2.0
    assert gate.next_sample_at(7.5) == 9.5


def test_next_sample_never_sleeps_past_the_moment_the_gate_could_pass() -> None:
    gate = Gate(health(interval="4s", healthy_for="5s"), started_at=0.0).observe(good(3))
    assert gate.next_sample_at(3.0) == 7.0  # one interval
    assert gate.next_sample_at(6.0) == 8.0  # not 10: the gate can pass at 3 + 5
    assert gate.next_sample_at(9.0) == 9.0  # overdue: look now, never in the past


millis = st.integers(min_value=1, max_value=120_000)


@settings(max_examples=200, deadline=None)
@given(
    interval=millis,
    healthy_for=st.integers(min_value=0, max_value=120_000),
    started_at=st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
    delay=st.integers(min_value=0, max_value=10_000),
)
def test_good_samples_at_the_times_next_sample_at_gives_pass_exactly_when_they_can(
    interval: int, healthy_for: int, started_at: float, delay: int
) -> None:
    spec = health(interval=f"{interval}ms", healthy_for=f"{healthy_for}ms", timeout="1h")
    gate = Gate(spec, started_at=started_at)
    now = started_at + delay / 1000
    first = now
    for _ in range(int(spec.healthy_for / spec.interval) + 10):
        gate = gate.observe(good(now))
        if gate.verdict.done:
            break
        wake = gate.next_sample_at(now)
        assert wake > now, f"pending gate asked to be sampled again at once ({now!r}, healthy since {first!r})"
        assert wake <= now + spec.interval
        assert wake <= first + spec.healthy_for or wake == now + spec.interval
        now = wake
    assert gate.verdict is Verdict.PASSED
    assert gate.healthy_since == first
    assert now == pytest.approx(max(first + spec.healthy_for, first), abs=1e-9)  # not one interval late


@settings(max_examples=200, deadline=None)
@given(
    interval=st.integers(min_value=100, max_value=120_000),
    timeout=st.integers(min_value=1, max_value=600_000),
    started_at=st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
)
def test_never_healthy_fails_within_one_interval_after_timeout(interval: int, timeout: int, started_at: float) -> None:
    spec = health(interval=f"{interval}ms", timeout=f"{timeout}ms")
    gate = Gate(spec, started_at=started_at)
    now = started_at
    for _ in range(100_000):
        gate = gate.observe(bad(now))
        if gate.verdict.done:
            break
        assert now - started_at < spec.timeout
        now = gate.next_sample_at(now)
    assert gate.verdict is Verdict.FAILED
    assert spec.timeout <= now - started_at < spec.timeout + spec.interval + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    now=st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
    since=st.one_of(st.none(), st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)),
    interval=millis,
    healthy_for=millis,
)
def test_next_sample_at_is_never_in_the_past_nor_later_than_an_interval(
    now: float, since: float | None, interval: int, healthy_for: int
) -> None:
    spec = health(interval=f"{interval}ms", healthy_for=f"{healthy_for}ms")
    gate = Gate(spec, started_at=0.0, healthy_since=since)
    wake = gate.next_sample_at(now)
    assert now <= wake <= now + spec.interval
    if since is not None:
        assert wake <= max(now, since + spec.healthy_for)


# -- each probe's own deadline -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "timeout", "expected"),
    [("1s", "30s", 1.0), ("200ms", "2s", 1.0), ("10s", "30s", 2.0), ("5s", "1500ms", 1.5), ("50ms", "5s", 1.0)],
)
def test_a_probe_may_take_at_most_the_interval_the_timeout_or_2s_and_at_least_1s(
    interval: str, timeout: str, expected: float
) -> None:
    assert probe_timeout(health(interval=interval, timeout=timeout)) == pytest.approx(expected)


@given(interval=st.integers(1, 100_000), timeout=st.integers(1, 100_000))
def test_a_probe_deadline_never_outlasts_the_gate_by_more_than_its_floor(interval: int, timeout: int) -> None:
    spec = health(interval=f"{interval}ms", timeout=f"{timeout}ms")
    deadline = probe_timeout(spec)
    assert 1.0 <= deadline <= 2.0
    assert deadline <= max(1.0, spec.interval) and deadline <= max(1.0, spec.timeout)


# -- health codes ------------------------------------------------------------------------------------------


def test_health_values_and_verdicts() -> None:
    assert [h.value for h in Health] == ["healthy", "progressing", "unhealthy", "missing"]
    assert Health("unhealthy") is Health.UNHEALTHY
    assert [v.done for v in Verdict] == [False, True, True]


# -- the health of an app, for status ----------------------------------------------------------------


def test_health_is_ordered_from_healthy_to_missing() -> None:
    from reconciler.core.health import is_worse, worst

    order = [Health.HEALTHY, Health.PROGRESSING, Health.UNHEALTHY, Health.MISSING]
    assert sorted(Health, key=lambda h: h.rank) == order
    assert is_worse(Health.UNHEALTHY, Health.PROGRESSING) and not is_worse(Health.HEALTHY, Health.HEALTHY)
    assert worst(Health.HEALTHY, Health.MISSING, Health.PROGRESSING) is Health.MISSING
    assert worst() is Health.HEALTHY


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (good(0), Health.HEALTHY),
        (good(0, docker_health="healthy"), Health.HEALTHY),
        (good(0, docker_health="unhealthy"), Health.UNHEALTHY),
        (bad(0), Health.UNHEALTHY),
        (good(0, docker_health="starting"), Health.PROGRESSING),
        (Sample(at=0, running=True, probe_ok=False, docker_health="starting"), Health.PROGRESSING),
        (Sample(at=0, running=False), Health.UNHEALTHY),
    ],
)
def test_a_sample_reads_as_the_worse_of_docker_and_the_probe_unless_docker_is_starting(
    sample: Sample, expected: Health
) -> None:
    from reconciler.core.health import of_sample

    assert of_sample(sample) is expected
