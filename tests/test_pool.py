"""The one thread pool: order, the first error, deadlines per task (milliseconds, no engine)."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler import pool


def test_results_come_in_the_tasks_order_whatever_ends_first() -> None:
    def task(index: int, pause: float) -> int:
        time.sleep(pause)
        return index

    tasks = [lambda i=i, p=p: task(i, p) for i, p in enumerate([0.05, 0.0, 0.02])]
    assert pool.run_all(tasks, parallel=3, name="t") == [0, 1, 2]


def test_the_first_error_starts_no_further_task_and_is_raised_after_the_running_ones() -> None:
    started: list[int] = []
    finished = threading.Event()

    def slow() -> int:
        started.append(0)
        time.sleep(0.05)
        finished.set()
        return 0

    def broken() -> int:
        started.append(1)
        raise RuntimeError("engine went away")

    def later() -> int:
        started.append(2)
        return 2

    with pytest.raises(RuntimeError, match="engine went away"):
        pool.run_all([slow, broken, later], parallel=2, name="t")
    assert finished.is_set()  # the running task ended before the error was raised
    assert 2 not in started


def test_a_late_key_gives_its_slot_up_and_the_others_answer() -> None:
    hang = threading.Event()

    def ask(key: str) -> str:
        if key == "hangs":
            hang.wait(5)
        if key == "breaks":
            raise ValueError("no login")
        return key.upper()

    started = time.monotonic()
    answers = pool.ask_all(["a", "hangs", "breaks", "d"], ask, parallel=1, timeout=0.2, name="t")
    took = time.monotonic() - started
    hang.set()
    assert answers["a"] == "A" and answers["d"] == "D"
    assert answers["hangs"] is pool.LATE
    assert isinstance(answers["breaks"], ValueError)
    assert took < 2  # one slot: "d" did not wait for "hangs" to end


def test_ctrl_c_with_on_interrupt_still_runs_every_task_which_sees_the_callers_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import concurrent.futures

    stop = threading.Event()
    real_wait = concurrent.futures.wait
    calls = {"n": 0}

    def interrupted_once(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real_wait(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(concurrent.futures, "wait", interrupted_once)
    tasks = [lambda i=i: "not started" if stop.is_set() else f"ran {i}" for i in range(3)]
    gate = threading.Event()

    def first() -> str:
        gate.wait(1)
        return "ran 0"

    def ctrl_c() -> None:
        stop.set()
        gate.set()

    results = pool.run_all([first, *tasks[1:]], parallel=1, name="t", on_interrupt=ctrl_c)
    assert results[0] == "ran 0"
    assert results[1:] == ["not started", "not started"]  # run, and each said where it stopped
