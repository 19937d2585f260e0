"""The batching window's clock: sub-millisecond sleeps that event-loop timers cannot give.

A loop's own timers count whole milliseconds: on uvloop ``asyncio.sleep(0.0003)`` returns on the
next turn, and on asyncio it waits a whole millisecond. These tests hold ``LoopAlarm`` to what
the scheduler's ``--max-delay-ms`` window needs: never early, on both loops, and robust to a
waiter that gives up and to a loop that closes first.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from service import process
from service.loop_alarm import LoopAlarm

SUB_MS = 0.0003  # a window shorter than a loop timer's millisecond


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
def test_a_sub_millisecond_sleep_is_never_cut_short_on_either_loop(choice: str) -> None:
    async def main() -> tuple[list[float], list[float]]:
        alarm = LoopAlarm("window-test")
        try:
            ours, loops = [], []
            for _ in range(20):
                started = time.perf_counter()
                await alarm.sleep(SUB_MS)
                ours.append(time.perf_counter() - started)
                started = time.perf_counter()
                await asyncio.sleep(SUB_MS)
                loops.append(time.perf_counter() - started)
            return ours, loops
        finally:
            alarm.close()

    ours, loops = process.run(main(), choice)
    assert min(ours) >= SUB_MS
    if choice == "uvloop":  # why the alarm exists: uvloop's own timer rounds this wait down to none
        assert min(loops) < SUB_MS


def test_nothing_to_wait_returns_at_once_without_the_thread() -> None:
    async def main() -> bool:
        alarm = LoopAlarm("window-test")
        try:
            waiting = asyncio.ensure_future(alarm.sleep(0.0))
            await asyncio.sleep(0)  # one turn: a zero wait needs no ring from the thread
            return waiting.done()
        finally:
            alarm.close()

    assert asyncio.run(main())


def test_a_waiter_that_gives_up_leaves_the_alarm_working() -> None:
    async def main() -> float:
        alarm = LoopAlarm("window-test")
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(alarm.sleep(5.0), 0.01)  # cancelled: its ring must change nothing
            started = time.perf_counter()
            await alarm.sleep(SUB_MS)
            return time.perf_counter() - started
        finally:
            alarm.close()

    # The abandoned 5 s wait holds the thread until it rings, then the next one rings.
    assert asyncio.run(main()) >= SUB_MS


def test_a_wait_left_ringing_after_its_loop_closed_ends_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    alarm = LoopAlarm("window-test")
    failures: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))

    async def main() -> asyncio.Future[None]:
        waiting = asyncio.ensure_future(alarm.sleep(0.05))
        await asyncio.sleep(0)  # queued; the loop closes before it rings
        return waiting

    asyncio.run(main())
    alarm.close()  # waits for the ring to the closed loop
    assert failures == []
    assert not alarm._thread.is_alive()


def test_the_alarm_thread_carries_its_name_to_the_os() -> None:
    """``top -H``, py-spy and the bench's per-thread CPU (its ``python`` bucket) see it by name."""
    alarm = LoopAlarm("window-lstm256")
    try:
        native = alarm._thread.native_id
        comm = Path(f"/proc/self/task/{native}/comm")
        for _ in range(100):  # the thread names itself as it starts
            if comm.read_text().strip() == "window-lstm256":
                break
            time.sleep(0.01)
        assert comm.read_text().strip() == "window-lstm256"
    finally:
        alarm.close()
