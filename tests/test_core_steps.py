"""The deploy strategies as data: each a sequence of named steps over one table of rules.

What the tables guarantee, checked without an engine (the end-to-end tests run them against one):
stop-first and start-first share the rule table; on the start-first path nothing that happens before
the switch can take traffic back (a failure there sets the new release aside, a crash there replans),
names move only after the switch, and the old release is never stopped before the new one passed.
"""

from __future__ import annotations

from reconciler.core.steps import RULES, START_FIRST, STOP_FIRST, SWAP, Resume, Step, Undo


def test_each_strategy_names_its_steps_once_and_every_step_has_a_rule() -> None:
    for steps in (STOP_FIRST, START_FIRST):
        assert len(set(steps)) == len(steps)
        assert all(step in RULES for step in steps), [step for step in steps if step not in RULES]
    assert set(SWAP) <= set(STOP_FIRST)


def test_start_first_gates_the_new_release_before_the_switch_and_moves_names_after_it() -> None:
    order = {step: index for index, step in enumerate(START_FIRST)}
    assert order[Step.START_NEXT] < order[Step.GATE_NEXT] < order[Step.SWITCH]
    assert order[Step.SWITCH] < order[Step.KEEP_OLD] < order[Step.RENAME_NEW] < order[Step.DRAIN]
    # The old release is never stopped on the way in: no stop-old, no start-new.
    assert Step.STOP_OLD not in START_FIRST and Step.START_NEW not in START_FIRST


def test_before_the_switch_a_failure_sets_the_new_release_aside_and_a_crash_replans() -> None:
    before = START_FIRST[: START_FIRST.index(Step.SWITCH) + 1]
    for step in before:
        assert RULES[step].undo in (Undo.NOTHING, Undo.DISCARD, Undo.SET_ASIDE), step
        assert RULES[step].resume is Resume.REPLAN, step
    assert RULES[Step.GATE_NEXT].undo is Undo.SET_ASIDE
    # Once APP is the new release (it passed its gate), a crash is verified by the next pass.
    assert RULES[Step.DRAIN].resume is Resume.VERIFY


def test_stop_first_replans_until_the_new_release_holds_the_name_and_verifies_after() -> None:
    holds = STOP_FIRST.index(Step.START_NEW)
    assert all(RULES[step].resume is Resume.REPLAN for step in STOP_FIRST[:holds])
    assert all(RULES[step].resume is Resume.VERIFY for step in STOP_FIRST[holds:])
    assert RULES[Step.GATE].undo is Undo.ROLL_BACK
