"""Paced arrivals in-process: steps released at their times by a thread, as gRPC hands them over.

Under paced load a server's event loop sleeps between steps, and a step's cost after a sleep is
what ``loadtest.hotpath --rate`` and its control ``loadtest.idle_gap`` measure. A feeder thread
releases each stream's steps at (k + i/N) × N/R (stream i of N, its k-th step, R steps a second
over all: ``statestream bench --arrivals spread``) and hands each release to the event loop with
``call_soon_threadsafe``, as gRPC's poller thread hands over a message, so the loop wakes as a
paced server's does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np

from service.command import float_in

#: A ``--rate``'s type: steps a second over all streams, 0 (back to back) up to bench ``--rate``'s top.
paced_rate = float_in(0.0, 1_000_000)


@dataclass(frozen=True)
class Pacing:
    """A paced run's gates (one per stream: each release lets one more step in), when each stream's
    steps were released and answered (perf_counter seconds, in step order; the driver appends the
    answers), and the feeder thread's CPU seconds once it has fed them all."""

    gates: list[asyncio.Semaphore]
    released: list[list[float]]
    answered: list[list[float]]
    feeder_cpu: list[float]

    @classmethod
    def of(cls, streams: int) -> Pacing:
        return cls([asyncio.Semaphore(0) for _ in range(streams)], [[] for _ in range(streams)],
                   [[] for _ in range(streams)], [])  # fmt: skip

    def started(self, rate: float, steps: int) -> threading.Thread:
        """The feeder thread, feeding this loop's gates; join it once every step was answered."""
        feeder = threading.Thread(target=self.feed, args=(asyncio.get_running_loop(), rate, steps), name="feeder")
        feeder.start()
        return feeder

    def feed(self, loop: asyncio.AbstractEventLoop, rate: float, steps: int) -> None:
        """Releases ``steps`` steps of each stream at their times, from this thread."""
        streams = len(self.gates)
        period = streams / rate
        schedule = sorted(((k + i / streams) * period, i) for i in range(streams) for k in range(steps))
        started, start = time.thread_time(), time.perf_counter()
        for at, index in schedule:
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.released[index].append(time.perf_counter())
            loop.call_soon_threadsafe(self.gates[index].release)
        self.feeder_cpu.append(time.thread_time() - started)

    def latencies_us(self) -> np.ndarray:
        """Each answered step's time from its release to its answer, in µs."""
        return 1e6 * np.concatenate(
            [np.subtract(done, sent) for done, sent in zip(self.answered, self.released, strict=True)]
        )
