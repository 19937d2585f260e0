"""Sub-millisecond waits for an event loop: the scheduler's batching window (``--max-delay-ms``).

Event-loop timers count whole milliseconds. uvloop rounds a ``call_later`` of under 0.5 ms down
to the next turn of the loop, and asyncio's epoll wait rounds every timeout up to a whole
millisecond, so ``asyncio.sleep(0.0002)`` waits ~0 ms on one loop and ~1.1 ms on the other. A
batching window is worth having at the scale of one step (tens to hundreds of microseconds),
so it gets a clock of its own: one thread per alarm sleeps with the kernel's nanosleep and
wakes the loop with ``call_soon_threadsafe``. That costs one thread wake-up and one loop wake-up
per wait, shared by every step the window lets into its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time

from service.process import name_os_thread, set_timer_slack

#: The alarm thread's timer slack (Linux's default, 50 µs, is a quarter of a 200 µs window).
TIMER_SLACK_NS = 1_000

#: What the alarm thread takes from its queue: when to ring, and the loop and future to ring.
_Wait = tuple[float, asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class LoopAlarm:
    """Sleeps of any length on an event loop, never short; they end ~50 µs late here (the thread's
    and the loop's wake-ups)."""

    def __init__(self, name: str) -> None:
        self._waits: queue.SimpleQueue[_Wait | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._ring, args=(name,), name=name, daemon=True)
        self._thread.start()

    async def sleep(self, seconds: float) -> None:
        """Returns ``seconds`` from now (measured with ``time.perf_counter``), or at once if <= 0."""
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waits.put((time.perf_counter() + seconds, loop, done))
        await done

    def close(self) -> None:
        """Stops the thread once the waits before this call have rung; idempotent."""
        if self._thread.is_alive():
            self._waits.put(None)
            self._thread.join()

    def _ring(self, name: str) -> None:
        name_os_thread(name)
        set_timer_slack(TIMER_SLACK_NS)
        while (wait := self._waits.get()) is not None:
            deadline, loop, done = wait
            left = deadline - time.perf_counter()
            if left > 0:
                time.sleep(left)
            with contextlib.suppress(RuntimeError):  # the loop closed while this wait slept: nobody waits
                loop.call_soon_threadsafe(_wake, done)


def _wake(done: asyncio.Future[None]) -> None:
    if not done.done():  # cancelled meanwhile (the scheduler stopped)
        done.set_result(None)
