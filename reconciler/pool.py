"""The one thread pool: tasks side by side, at most ``parallel`` at once, waited for without polling.

Guarantees:
- ``run_all`` gives the tasks' results in their order. The first exception a task raises starts no
  further task, and is raised in the caller's thread once the tasks under way have ended (a task never
  started gives None). Ctrl-C while it waits: with ``on_interrupt`` that is called and every task is
  still run and waited for (each sees the caller's own stop and says where it stopped); without it, no
  further task starts and ``KeyboardInterrupt`` is raised once the running ones end.
- ``ask_all`` asks every key, at most ``parallel`` at once; each is waited for at most ``timeout``
  seconds from its own start. One past its time gives ``LATE`` and its slot up, so the keys after it
  are not held up (its thread is a daemon: a hung login does not keep the process alive). An exception
  is that key's answer. It returns when every key has an answer.
- Nothing here sleeps on a clock: the caller's thread waits on the tasks' own completion, or on the
  nearest deadline.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Final, Literal, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class _Late(Enum):
    LATE = "late"


LATE: Final = _Late.LATE  # a key that did not answer within its time


def run_all(
    tasks: Sequence[Callable[[], T]],
    *,
    parallel: int,
    name: str,
    on_interrupt: Callable[[], None] | None = None,
) -> list[T | None]:
    """Run ``tasks``, at most ``parallel`` at once; their results in their order (see the module)."""
    if on_interrupt is None and (parallel <= 1 or len(tasks) <= 1):
        return [task() for task in tasks]
    results: list[T | None] = [None] * len(tasks)
    errors: list[BaseException] = []
    stop = threading.Event()

    def run(index: int) -> None:
        if stop.is_set():
            return
        try:
            results[index] = tasks[index]()
        except BaseException as exc:  # handed to the caller's thread below
            errors.append(exc)
            stop.set()

    pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(tasks))), thread_name_prefix=name)
    try:
        futures = [pool.submit(run, index) for index in range(len(tasks))]
        try:
            concurrent.futures.wait(futures)
        except KeyboardInterrupt:
            if on_interrupt is None:
                stop.set()
                raise  # ``shutdown`` below still waits for the tasks under way
            on_interrupt()  # every task still runs, and sees the caller's own stop: each says where it stopped
            concurrent.futures.wait(futures)
    finally:
        pool.shutdown(wait=True)
    if errors:
        raise errors[0]
    return results


def ask_all(
    keys: Sequence[K], ask: Callable[[K], T], *, parallel: int, timeout: float, name: str
) -> dict[K, T | Exception | Literal[_Late.LATE]]:
    """``ask(key)`` for every key (see the module): its answer, the exception it raised, or ``LATE``."""
    answers: dict[K, T | Exception | Literal[_Late.LATE]] = {}
    slots = threading.Semaphore(max(1, parallel))
    changed = threading.Condition()
    started: dict[K, float] = {}

    def finish(key: K, answer: T | Exception | Literal[_Late.LATE]) -> None:
        """Under ``changed``: the first answer of a key counts, and frees its slot."""
        if key in answers:
            return
        answers[key] = answer
        slots.release()
        changed.notify_all()

    def run(key: K) -> None:
        slots.acquire()
        with changed:
            started[key] = time.monotonic()
            changed.notify_all()  # the caller's thread now waits for this key's deadline too
        try:
            answer: T | Exception = ask(key)
        except Exception as exc:  # the key's own trouble is its answer; the others go on
            answer = exc
        with changed:
            finish(key, answer)

    for key in keys:
        threading.Thread(target=run, args=(key,), name=f"{name}-{key}", daemon=True).start()
    with changed:
        while len(answers) < len(keys):
            now = time.monotonic()
            for key, at in started.items():
                if key not in answers and now - at >= timeout:
                    finish(key, LATE)
            waiting = [at + timeout for key, at in started.items() if key not in answers]
            if len(answers) < len(keys):
                changed.wait(max(0.0, min(waiting) - now) if waiting else None)
    return answers
