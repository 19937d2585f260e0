"""How the server's process runs: its event loop, and a garbage collector tuned for a server.

* **The event loop.** uvloop schedules callbacks, futures and task wake-ups for less CPU than
  asyncio's pure-Python loop, and a step of a Session stream is several of those.
  ``--event-loop auto`` takes uvloop where it is installed (a dependency on Linux and macOS);
  ``asyncio`` forces the standard loop, e.g. to rule the loop out when chasing a problem.
* **The garbage collector.** With the default thresholds a step's dicts, futures and frames
  trigger a young collection every few steps, and the older generations then walk every object
  the models and modules left on the heap. Once the models are loaded, ``settle_heap`` moves
  everything alive into the permanent generation (``gc.freeze``), which no collection walks
  again, and raises the thresholds. A step's own objects are still freed by reference counting;
  only the rare reference cycles (a failed step's traceback, a closed stream) wait longer.

Both choices were measured: docs/benchmarks.md, "The hot path, fourth session".
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

#: prctl's option to name the calling thread (linux/prctl.h).
PR_SET_NAME = 15
#: prctl's option that sets the calling thread's timer slack, in nanoseconds (linux/prctl.h).
PR_SET_TIMERSLACK = 29
#: Longest thread name Linux keeps (16 bytes with its terminating NUL).
MAX_OS_THREAD_NAME = 15
#: A model's ORT worker thread is named this and the model's name, in Python and to the OS
#: (``top -H``, py-spy, and the bench's per-thread CPU, which reads it to tell the worker apart).
ORT_WORKER_PREFIX = "ort-"
#: A model's batching-window clock (``service.loop_alarm``), named the same way.
WINDOW_PREFIX = "window-"
#: The prefixes of the threads statestream starts itself, as opposed to gRPC's.
OWN_THREAD_PREFIXES = (ORT_WORKER_PREFIX, WINDOW_PREFIX)
#: How long the tasks still pending when the server's main coroutine returns get to finish once
#: cancelled (``run``); past it the process exits without them.
TEARDOWN_S = 2.0
#: Net container allocations between young collections, young collections per middle one,
#: middle ones per full one (CPython's defaults: 700, 10, 10).
GC_THRESHOLDS = (10_000, 10, 10)


def uvloop_installed() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def event_loop_of(choice: str) -> str:
    """The loop ``--event-loop`` names: 'auto' is uvloop where it is installed, else asyncio."""
    if choice == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    return choice


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """Runs ``main`` to the end on the event loop ``choice`` names (``--event-loop``), as
    ``asyncio.run`` does, except that the tasks still pending then get TEARDOWN_S to finish.

    ``asyncio.run`` cancels them and waits for all, unbounded, so one task that cannot finish
    (redis-py's pub/sub teardown, shielded from cancellation, cut off by a SIGTERM right after
    start) kept a stopped server's process alive for ever. Here it is left behind, named in
    the log, and the process exits.
    """
    if event_loop_of(choice) == "uvloop":
        import uvloop  # a dependency on Linux and macOS; the CLI refuses 'uvloop' where it is missing

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_remaining(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    """Cancels the loop's pending tasks and runs it until they finish, or for TEARDOWN_S at most."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    loop.run_until_complete(asyncio.wait(tasks, timeout=TEARDOWN_S))
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {"message": "unhandled exception during shutdown", "exception": task.exception(), "task": task}
            )
    stuck = sorted(task.get_name() for task in tasks if not task.done())
    if stuck:
        log.warning("exiting with %d task(s) that did not finish when cancelled: %s", len(stuck), ", ".join(stuck))


def running_loop_name() -> str:
    """'uvloop' or 'asyncio': what runs the calling coroutine (the server logs it at start)."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


def settle_heap() -> None:
    """Called once the server holds its models: see the module's docstring."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def name_os_thread(name: str) -> None:
    """Names the calling thread ``name`` (its first 15 bytes) as the OS sees it, on Linux.

    Python's thread names stay inside Python: without this, ``top -H``, py-spy and the bench's
    per-thread CPU see every thread Python starts under the process's own name, and cannot tell
    the model's ORT worker from gRPC's Python poller. Elsewhere, or if libc refuses, nothing.
    """
    _prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:MAX_OS_THREAD_NAME]))


def set_timer_slack(nanoseconds: int) -> None:
    """Asks Linux to wake the calling thread from a sleep within ``nanoseconds`` of its deadline.

    The default slack is 50 µs, a quarter of a 200 µs batching window (``service.loop_alarm``).
    Elsewhere, or if libc refuses, nothing.
    """
    _prctl(PR_SET_TIMERSLACK, nanoseconds)


def _prctl(option: int, value: object) -> None:
    """``prctl(option, value)`` for the calling thread, on Linux; elsewhere, or if libc refuses, nothing."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        return
