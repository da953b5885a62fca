"""The stable clock (core.stable) as a pure record: times passed in, nothing sleeps."""

from __future__ import annotations

from reconciler.core.health import Sample
from reconciler.core.stable import Candidate, StableSample, StableWatch, died, track

AFTER = 600.0  # stable_after: 10m
DEPLOYED_AT = 1000.0


def ok(at: float, restarts: int = 0, started_at: float = DEPLOYED_AT - 5) -> StableSample:
    return StableSample(at=at, healthy=True, restarts=restarts, started_at=started_at)


def watch() -> StableWatch:
    return StableWatch("hash-v2", since=DEPLOYED_AT, stable_after=AFTER)


def candidate(**fields: object) -> Candidate:
    values: dict[str, object] = {
        "spec_hash": "hash-v2", "image_id": "sha256:v2", "stable_after": AFTER, "deployed_hash": "hash-v2",
        "deployed_at": DEPLOYED_AT, "stable_image_id": "sha256:v1",
    }  # fmt: skip
    return Candidate(**{**values, **fields})  # type: ignore[arg-type]


# -- the clock ------------------------------------------------------------------------------------------


def test_promoted_once_a_healthy_sample_comes_stable_after_the_deploy() -> None:
    w = watch().observe(ok(DEPLOYED_AT + 10))
    assert not w.promote and w.since == DEPLOYED_AT
    assert w.due(DEPLOYED_AT + 10) == AFTER - 10
    w = w.observe(ok(DEPLOYED_AT + AFTER - 0.1))
    assert not w.promote
    w = w.observe(ok(DEPLOYED_AT + AFTER))
    assert w.promote and w.due(DEPLOYED_AT + AFTER) == 0


def test_not_promoted_before_it_is_sampled() -> None:
    assert not watch().promote
    assert watch().due(DEPLOYED_AT + AFTER + 1) < 0  # overdue: the next sample decides


def test_a_failed_probe_starts_the_clock_over() -> None:
    bad = StableSample(at=DEPLOYED_AT + 300, healthy=False, restarts=0, started_at=DEPLOYED_AT - 5)
    w = watch().observe(ok(DEPLOYED_AT + 100)).observe(bad)
    assert w.since == DEPLOYED_AT + 300
    w = w.observe(ok(DEPLOYED_AT + AFTER + 1))
    assert not w.promote
    assert w.observe(ok(DEPLOYED_AT + 300 + AFTER)).promote


def test_a_restart_since_the_last_sample_starts_the_clock_over() -> None:
    w = watch().observe(ok(DEPLOYED_AT + 10, restarts=2))  # the first sample sets the count: no reset
    assert w.since == DEPLOYED_AT and w.restarts == 2
    w = w.observe(ok(DEPLOYED_AT + 200, restarts=3))
    assert w.since == DEPLOYED_AT + 200
    w = w.observe(ok(DEPLOYED_AT + 300, restarts=3))
    assert w.since == DEPLOYED_AT + 200  # no new restart: the clock runs on


def test_a_container_started_after_the_clock_started_starts_it_over() -> None:
    # Stopped and started again (a rollback of a later release, a manual restart): the count may not show it.
    w = watch().observe(ok(DEPLOYED_AT + 10)).observe(ok(DEPLOYED_AT + 500, started_at=DEPLOYED_AT + 450))
    assert w.since == DEPLOYED_AT + 450
    assert not w.observe(ok(DEPLOYED_AT + AFTER + 10, started_at=DEPLOYED_AT + 450)).promote


def test_a_gate_sample_reads_as_healthy_only_when_running_probed_and_not_unhealthy_to_docker() -> None:
    def healthy(**fields: object) -> bool:
        sample = Sample(**{"at": 1.0, "running": True, **fields})  # type: ignore[arg-type]
        return StableSample.of(sample, at=5.0, started_at=2.0).healthy

    assert healthy() and healthy(docker_health="healthy")
    assert not healthy(running=False)
    assert not healthy(probe_ok=False)
    assert not healthy(docker_health="starting") and not healthy(docker_health="unhealthy")
    read = StableSample.of(Sample(at=1.0, running=True, restarts=4), at=5.0, started_at=2.0)
    assert (read.at, read.restarts, read.started_at) == (5.0, 4, 2.0)  # the clock's time, not the gate's


# -- which apps are watched -----------------------------------------------------------------------------------


def test_a_new_release_is_watched_from_the_end_of_its_deploy() -> None:
    watches, look = track({}, {"web": candidate()}, now=DEPLOYED_AT + 50)
    assert look == ("web",) and watches == {"web": watch()}
    watches, _ = track({}, {"web": candidate(deployed_at=None)}, now=DEPLOYED_AT + 50)
    assert watches["web"].since == DEPLOYED_AT + 50  # no end time journaled: from now


def test_a_running_watch_keeps_its_clock_and_takes_the_file_stable_after() -> None:
    running = watch().observe(ok(DEPLOYED_AT + 300, restarts=1))
    watches, look = track({"web": running}, {"web": candidate(stable_after=60.0)}, now=DEPLOYED_AT + 400)
    assert look == ("web",)
    assert watches["web"].since == DEPLOYED_AT and watches["web"].restarts == 1
    assert watches["web"].stable_after == 60.0


def test_another_release_of_the_app_starts_a_new_watch() -> None:
    old = StableWatch("hash-v1", since=10.0, stable_after=AFTER, restarts=3)
    watches, _ = track({"web": old}, {"web": candidate()}, now=DEPLOYED_AT + 50)
    assert watches["web"] == watch()


def test_no_container_of_ours_or_one_already_promoted_is_no_longer_watched() -> None:
    promoted = candidate(stable_image_id="sha256:v2")  # its image is already IMAGE:stable
    watches, look = track({"web": watch(), "api": watch()}, {"web": None, "api": promoted}, now=DEPLOYED_AT)
    assert watches == {} and look == ()


def test_a_container_that_is_not_the_last_succeeded_deploy_keeps_its_watch_unsampled() -> None:
    running = watch().observe(ok(DEPLOYED_AT + 300))
    for other in (candidate(deployed_hash="hash-v3"), candidate(deployed_hash=None)):
        watches, look = track({"web": running}, {"web": other}, now=DEPLOYED_AT + 400)
        assert watches == {"web": running} and look == ()
    watches, look = track({}, {"web": candidate(deployed_hash=None)}, now=DEPLOYED_AT)
    assert watches == {} and look == ()


# -- a release that dies inside its window -----------------------------------------------------------------


def dead(at: float, *, restarts: int = 0, restarting: bool = False, exit_code: int = 3) -> StableSample:
    return StableSample(
        at=at, healthy=False, restarts=restarts, started_at=DEPLOYED_AT - 5, running=False, restarting=restarting,
        exit_code=exit_code,
    )  # fmt: skip


def test_a_release_that_docker_keeps_restarting_is_a_failed_release_and_never_promoted() -> None:
    w = watch().observe(ok(DEPLOYED_AT + 1)).observe(dead(DEPLOYED_AT + 9, restarting=True))
    assert w.failure == "it exited with code 3 after it went live, and Docker keeps restarting it"
    # Back up between two restarts: still the failed release it was, and never promoted.
    w = w.observe(ok(DEPLOYED_AT + AFTER + 60, restarts=1))
    assert w.failure and not w.promote


def test_a_restart_counted_between_two_looks_is_a_failure_and_the_first_look_only_sets_the_count() -> None:
    w = watch().observe(ok(DEPLOYED_AT + 1, restarts=4))  # an agent that started late: no verdict on the past
    assert not w.failure
    w = w.observe(ok(DEPLOYED_AT + 9, restarts=5))
    assert w.failure == "it restarted after it went live (1x since the last look)"


def test_a_restart_count_that_went_down_is_a_start_by_hand_or_by_the_engine_not_a_death() -> None:
    w = watch().observe(ok(DEPLOYED_AT + 1, restarts=2)).observe(ok(DEPLOYED_AT + 9, restarts=0))
    assert not w.failure


def test_an_exit_is_a_failure_unless_it_is_a_stop() -> None:
    assert died(0, dead(1.0, exit_code=3)) == "it exited with code 3 after it went live"
    for stopped in (0, 137, 143):  # docker stop, by SIGTERM or SIGKILL: a person or the engine, not the release
        assert died(0, dead(1.0, exit_code=stopped)) == ""
    assert died(-1, ok(1.0, restarts=9)) == ""  # the first look: nothing to compare with


def test_with_stable_after_0s_an_unhealthy_sample_is_never_promoted() -> None:
    w = StableWatch("hash-v2", since=DEPLOYED_AT, stable_after=0.0)
    bad = StableSample(at=DEPLOYED_AT + 1, healthy=False, restarts=0, started_at=DEPLOYED_AT - 5)
    assert not w.observe(bad).promote
    assert w.observe(bad).observe(ok(DEPLOYED_AT + 2)).promote
