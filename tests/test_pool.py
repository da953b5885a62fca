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
