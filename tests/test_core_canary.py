"""A weighted rollout's decisions, pure: each step's verdict from the proxy's counters, the next move, the record."""

from __future__ import annotations

import pytest

from reconciler.adapters.yamlfile import parse_yaml
from reconciler.core import canary
from reconciler.core.canary import Counters, Move, Rollout, Verdict
from reconciler.core.desired import load_desired
from reconciler.core.model import AnalysisSpec, AppSpec, OnNoTraffic, ProxySpec
from reconciler.core.proxy import Canary, Server, render
from reconciler.errors import InvalidDesiredState


def spec(on_no_traffic: str = "fail", sticky: bool = False, **analysis: object) -> AppSpec:
    return AppSpec.model_validate(
        {
            "image": "web",
            "version": "v2",
            "route": {"port": 8000},
            "rollout": {
                "steps": [{"weight": 5, "pause": "2m"}, {"weight": 25, "pause": "5m"}, {"weight": 50, "pause": "5m"}],
                "analysis": {"max_5xx_ratio": 0.01, "max_avg_ms": 400, "min_requests": 100,
                             "on_no_traffic": on_no_traffic, **analysis},
                "sticky": sticky,
            },
        }
    )  # fmt: skip


def record(**fields: object) -> Rollout:
    base: dict[str, object] = {
        "app": "web", "entry": 7, "revision": "abc", "spec_hash": "h2", "canary": "c2", "from_version": "v1",
        "to_version": "v2", "started": 1000.0, "since": 1000.0,
    }  # fmt: skip
    return Rollout(**{**base, **fields})  # type: ignore[arg-type]


def decide(rollout: Rollout, app: AppSpec | None, *, now: float = 1121.0, **fields: object) -> canary.Decision:
    options: dict[str, object] = {"superseded": False, "running": True, "now": now}
    options.update(canary=Counters(200, 0, 20), stable=Counters(4000, 4, 18))
    options.update(fields)
    return canary.decide(rollout, app, **options)  # type: ignore[arg-type]


def test_a_step_is_judged_only_once_its_pause_is_over() -> None:
    assert decide(record(), spec(), now=1119.0).move is Move.WAIT
    assert canary.ends(spec(), record()) == 1120.0
    assert canary.weight(spec(), record(step=1)) == 25
    assert canary.weight(spec(), record(step=9)) == 50  # steps removed from the file: the last one's


def test_a_good_step_advances_and_the_last_one_promotes() -> None:
    passed = decide(record(), spec())
    assert passed.move is Move.ADVANCE and passed.judged is not None and passed.judged.verdict is Verdict.PASSED
    moved = canary.moved(record(), passed, now=1121.0, canary=Counters(200, 0, 20), stable=Counters(4000, 4, 18))
    assert (moved.step, moved.since, moved.base_canary) == (1, 1121.0, Counters(200, 0, 20))
    assert moved.judged == (passed.judged,)
    assert decide(record(step=2, since=1000.0), spec(), now=1301.0).move is Move.PROMOTE


def test_5xx_over_the_limit_and_over_the_old_release_aborts_but_a_shared_cause_does_not() -> None:
    bad = decide(record(), spec(), canary=Counters(200, 11, 20), stable=Counters(4000, 4, 18))
    assert bad.move is Move.ABORT
    assert bad.reason == "5xx 5.5% > max_5xx_ratio 1% (the old release 0.1%)"
    shared = decide(record(), spec(), canary=Counters(200, 11, 20), stable=Counters(4000, 400, 18))
    assert shared.move is Move.ADVANCE
    assert shared.reason == "over a limit, as the old release is too: not the new release's doing"


def test_latency_over_the_limit_aborts() -> None:
    slow = decide(record(), spec(), canary=Counters(200, 0, 650), stable=Counters(4000, 0, 15))
    assert (slow.move, slow.reason) == (Move.ABORT, "avg 650 ms > max_avg_ms 400 (the old release 15 ms)")


@pytest.mark.parametrize(("setting", "move"), [("fail", Move.ABORT), ("advance", Move.ADVANCE), ("hold", Move.HOLD)])
def test_too_few_requests_is_inconclusive_and_settled_as_on_no_traffic_says(setting: str, move: Move) -> None:
    found = decide(record(), spec(setting), canary=Counters(12, 0, 20))
    assert found.move is move
    assert found.judged is not None and found.judged.verdict is Verdict.INCONCLUSIVE
    assert found.reason == f"12 answers < min_requests 100; on_no_traffic: {setting}"
    if move is Move.HOLD:
        held = canary.moved(record(), found, now=1121.0, canary=Counters(12, 0, 20), stable=Counters())
        assert (held.step, held.since, held.base_canary) == (0, 1121.0, Counters())  # counted on from the step's start


def test_counters_that_went_down_count_from_zero() -> None:
    since = Counters(150, 3, 40).since(Counters(900, 2, 10))  # a reload: a new worker counts from zero
    assert since == Counters(150, 3, 40)
    assert Counters(950, 5, 40).since(Counters(900, 2, 10)) == Counters(50, 3, 40)


def test_the_order_of_moves() -> None:
    assert decide(record(), None).move is Move.SUPERSEDE
    assert decide(record(), spec(), superseded=True).move is Move.SUPERSEDE
    gone = spec().model_copy(update={"rollout": None})
    assert decide(record(), gone).move is Move.PROMOTE
    assert decide(record(), spec(), running=False).reason == "the new release v2 stopped running"
    assert decide(record(asked="abort"), spec(), now=1001.0).move is Move.ABORT
    assert decide(record(asked="promote"), spec(), now=1001.0).move is Move.PROMOTE
    unread = decide(record(), spec(), canary=None)
    assert (unread.move, unread.reason) == (
        Move.WAIT,
        "the proxy's counters could not be read: judged at the next pass",
    )


def test_a_record_survives_its_json_and_a_broken_one_is_a_value_error() -> None:
    judged = canary.Judged(0, 5, Counters(200, 0, 20), Counters(4000, 4, 18), Verdict.PASSED, "ok", 1121.0)
    kept = record(step=1, judged=(judged,), base_canary=Counters(1, 2, 3), asked="abort")
    assert Rollout.from_json(kept.to_json()) == kept
    with pytest.raises(ValueError, match="not a rollout record"):
        Rollout.from_json('{"app": "web"}')


def test_lines_say_the_step_the_weights_and_each_verdict() -> None:
    judged = canary.Judged(0, 5, Counters(200, 0, 20), Counters(4000, 4, 18), Verdict.PASSED, "ok", 1121.0)
    said = canary.lines(record(step=1, since=1121.0, judged=(judged,)), spec())
    assert said[0].startswith("rollout web v1 -> v2: step 2/3, 25% of requests to v2, 75% to v1; judged at ")
    assert said[1] == ("  step 1 (5%): passed: 200 answers, 5xx 0.0%, avg 20 ms (the old v1: 5xx 0.1%, avg 18 ms); ok")


def test_the_backend_of_an_app_with_a_rollout_weighs_live_and_canary() -> None:
    proxy = ProxySpec.model_validate({"listen": ["127.0.0.1:8080"]})
    live = Server("web", "10.0.0.2", 8000)
    text = render(
        proxy,
        {"web": spec(sticky=True)},
        {"web": live},
        canaries={"web": Canary(Server("web.next", "10.0.0.3", 8000), 5)},
    )
    assert "  cookie rcv_web insert indirect nocache httponly" in text
    assert "  server live 10.0.0.2:8000 weight 95 cookie live check" in text
    assert "  server canary 10.0.0.3:8000 weight 5 cookie canary check" in text
    idle = render(proxy, {"web": spec()}, {"web": live})
    assert "  server live 10.0.0.2:8000 weight 100 check" in idle
    assert "  server canary 127.0.0.1:1 weight 0 disabled check" in idle
    plain = render(proxy, {"web": spec().model_copy(update={"rollout": None})}, {"web": live})
    assert "canary" not in plain and "weight" not in plain  # an app without rollout: is as it always was


def test_the_file_refuses_a_rollout_it_cannot_carry_out() -> None:
    with pytest.raises(ValueError, match="weights grow step by step: 5 after 25"):
        steps = [{"weight": 25, "pause": "1m"}, {"weight": 5, "pause": "1m"}]
        AppSpec.model_validate({"image": "w", "version": "v", "route": {"port": 80}, "rollout": {"steps": steps}})
    with pytest.raises(ValueError, match="rollout: weighs the proxy's requests between two releases: it needs route:"):
        AppSpec.model_validate({"image": "w", "version": "v", "rollout": {"steps": [{"weight": 5, "pause": "1m"}]}})
    with pytest.raises(ValueError, match="less than or equal to 99"):
        AppSpec.model_validate({"image": "w", "version": "v", "route": {"port": 80},
                                "rollout": {"steps": [{"weight": 100, "pause": "1m"}]}})  # fmt: skip
    assert AnalysisSpec().on_no_traffic is OnNoTraffic.FAIL


def test_a_mistyped_key_of_rollout_is_placed_and_the_nearest_one_named() -> None:
    text = (
        "apps:\n  web:\n    image: w\n    version: v\n    route: {port: 80}\n"
        "    rollout: {steps: [{weight: 5, pauze: 1m}], analysis: {min_request: 3}, sticki: true}\n"
        "  api:\n    image: w\n    version: v\n    route: {port: 80, hosts: [a.test]}\n    rollout: {steps: []}\n"
    )
    data, positions = parse_yaml(text.encode(), filename="f.yaml")
    with pytest.raises(InvalidDesiredState) as raised:
        load_desired(data, positions, filename="f.yaml")
    assert raised.value.errors == [
        "f.yaml:6:23: apps.web.rollout.steps[0].pause: required key is missing",
        "f.yaml:6:35: apps.web.rollout.steps[0].pauze: unknown key 'pauze'; did you mean 'pause'?",
        "f.yaml:6:59: apps.web.rollout.analysis.min_request: unknown key 'min_request'; did you mean 'min_requests'?",
        "f.yaml:6:76: apps.web.rollout.sticki: unknown key 'sticki'; did you mean 'sticky'?",
        "f.yaml:11:22: apps.api.rollout.steps: a rollout needs at least one step: [{weight: 5, pause: 2m}, ...]",
    ]
