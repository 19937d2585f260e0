"""Waiting in tests without fixed sleeps: deadline polls, and a gate that holds a thread at a point.

A test waits for what it needs to be true, never for a time it hopes is long enough: on a slow
machine such a test gets slower, not wrong. A poll that runs out of time fails, naming what it
waited for.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

#: The first pause between two looks at a condition; it doubles up to ``LONGEST_PAUSE_S``.
FIRST_PAUSE_S = 0.001
LONGEST_PAUSE_S = 0.05


def _pauses(timeout_s: float, what: str) -> Iterator[float]:
    """The pauses between looks at a condition until ``timeout_s``, then an AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    pause = FIRST_PAUSE_S
    while time.monotonic() <= deadline:
        yield pause
        pause = min(2 * pause, LONGEST_PAUSE_S)
    raise AssertionError(f"{what}: not reached within {timeout_s} s")


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Returns once ``predicate()`` is true; raises AssertionError naming ``what`` after ``timeout_s``."""
    for pause in _pauses(timeout_s, what):
        if predicate():
            return
        time.sleep(pause)


async def until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """``wait_until`` for a coroutine: the event loop runs other tasks between two looks."""
    for pause in _pauses(timeout_s, what):
        if predicate():
            return
        await asyncio.sleep(pause)


def wait_for_event(event: threading.Event, timeout_s: float, what: str) -> None:
    """Returns once ``event`` is set; raises AssertionError naming ``what`` after ``timeout_s``."""
    if not event.wait(timeout_s):
        raise AssertionError(f"{what}: not reached within {timeout_s} s")


class Gate:
    """Holds every thread that calls ``hold`` until ``open`` is called; ``arrived`` is set by the first.

    ``hold`` takes and ignores any arguments, so it can stand for a hook (a scheduler's
    ``on_call`` holds a model call on the worker thread with it). A gate never opened lets its
    threads go after ``timeout_s`` with an AssertionError, so a failing test cannot hang.
    """

    def __init__(self, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self.arrived = threading.Event()
        self._opened = threading.Event()

    def hold(self, *_: object) -> None:
        self.arrived.set()
        wait_for_event(self._opened, self.timeout_s, "the gate was opened")

    def open(self) -> None:
        self._opened.set()

    async def arrival(self, timeout_s: float = 10.0) -> None:
        """Waits, without blocking the event loop, until a thread is held at the gate."""
        await asyncio.to_thread(wait_for_event, self.arrived, timeout_s, "a thread reached the gate")
