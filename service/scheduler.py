"""The per-model batching loop: the ready steps of all sessions become one ONNX Runtime call.

Each client step is tiny (one character through an LSTM); run one by one, fixed per-call costs
dominate. The scheduler instead collects the steps of every session that is ready and runs them
as one batch, as soon as the previous batch finishes (no fixed wait unless ``max_delay_ms`` asks
for one). Rules it keeps:

* a batch holds at most ``max_batch`` session-steps, all with the same chunk length K, and
  never two steps of one session (the later one waits for the next batch, so order holds);
* state is gathered from the slabs before the call and scattered back after it, on the event
  loop; only the ONNX Runtime call runs on the model's worker thread, so the loop keeps
  receiving and decoding messages while the model computes;
* a step submitted never runs at once: it waits until the submitting tasks of this turn of the
  event loop have all enqueued theirs, so steps that arrive together batch together. When the
  batch is a single step it takes the direct path: it runs inline, with no thread hand-off,
  which is what a lone stream needs for low latency;
* ``batching=False`` (``--scheduler none``) is the naive baseline: every step is its own batch-1
  call, inline. It is kept as an option so the benchmark can always measure it.

A failed call fails every step of its batch and writes no state, so a session is never half-updated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.metrics import Metrics
from service.registry import LoadedModel
from service.slabs import StateSlabs

Arrays = dict[str, np.ndarray]


@dataclass
class StepJob:
    """One session's step (or chunk of K steps) waiting for a batch."""

    row: int
    inputs: Arrays  # each [K, *shape]
    steps: int  # K
    future: asyncio.Future[Arrays]
    enqueued: float = field(default_factory=time.perf_counter)


class Scheduler:
    """Runs the steps of one model's sessions, batched across sessions."""

    def __init__(
        self,
        model: LoadedModel,
        slabs: StateSlabs,
        *,
        max_batch: int,
        max_delay_ms: float,
        batching: bool,
        metrics: Metrics,
    ) -> None:
        self.model = model
        self.slabs = slabs
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self.batching = batching
        self._pending: deque[StepJob] = deque()
        self._wakeup = asyncio.Event()
        self._busy = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"ort-{model.manifest.name}")
        self._task: asyncio.Task[None] | None = None
        self._input_names = [t.name for t in model.manifest.inputs]
        self._state_pairs = [(s.input, s.output) for s in model.manifest.state]
        self._output_names = [t.name for t in model.manifest.outputs]
        name = model.manifest.name
        self._m_batch = metrics.batch_size.labels(name)
        self._m_queue = metrics.queue_seconds.labels(name)
        self._m_compute = metrics.compute_seconds.labels(name)
        self._m_steps = metrics.steps.labels(name)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"scheduler-{self.model.manifest.name}"
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    @property
    def idle(self) -> bool:
        return not self._busy and not self._pending

    async def run(self, row: int, inputs: Arrays, steps: int) -> Arrays:
        """Runs K steps of the session at ``row``; returns its outputs, each ``[K, *shape]``.

        The caller guarantees that a session has at most one call in flight.
        """
        if not self.batching:
            return self._run_direct(row, inputs)
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._pending.append(StepJob(row, inputs, steps, future))
        self._wakeup.set()
        return await future

    def _run_direct(self, row: int, inputs: Arrays) -> Arrays:
        rows = np.array([row], dtype=np.intp)
        feed = {name: value[np.newaxis] for name, value in inputs.items()}
        feed.update(self.slabs.gather(rows))
        results = self._compute(feed)
        self.slabs.scatter(rows, {i: results[o] for i, o in self._state_pairs})
        return {name: results[name][0] for name in self._output_names}

    def _compute(self, feed: Arrays) -> Arrays:
        """The ONNX Runtime call (on the worker thread when batched); feed includes the state."""
        started = time.perf_counter()
        results = self.model.run(feed)
        self._m_compute.observe(time.perf_counter() - started)
        batch, steps = feed[self._input_names[0]].shape[:2]
        self._m_batch.observe(batch)
        self._m_steps.inc(batch * steps)
        return results

    def _take_batch(self) -> list[StepJob]:
        """Up to max_batch jobs of the first job's chunk length, one per session, in FIFO order."""
        first = self._pending[0]
        batch: list[StepJob] = []
        rows: set[int] = set()
        kept: deque[StepJob] = deque()
        while self._pending:
            job = self._pending.popleft()
            if len(batch) < self.max_batch and job.steps == first.steps and job.row not in rows:
                batch.append(job)
                rows.add(job.row)
            else:
                kept.append(job)
        self._pending = kept
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                if self.max_delay_s and len(self._pending) < self.max_batch:
                    await asyncio.sleep(self.max_delay_s)
                batch = self._take_batch()
                if len(batch) == 1:
                    self._run_single(batch[0])
                    continue
                self._busy = True
                try:
                    await self._run_batch(loop, batch)
                finally:
                    self._busy = False

    def _run_single(self, job: StepJob) -> None:
        self._m_queue.observe(time.perf_counter() - job.enqueued)
        try:
            outputs = self._run_direct(job.row, job.inputs)
        except Exception as exc:
            if not job.future.done():
                job.future.set_exception(exc)
            return
        if not job.future.done():
            job.future.set_result(outputs)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[StepJob]) -> None:
        now = time.perf_counter()
        for job in batch:
            self._m_queue.observe(now - job.enqueued)
        rows = np.fromiter((job.row for job in batch), dtype=np.intp, count=len(batch))
        feed = {name: np.stack([job.inputs[name] for job in batch]) for name in self._input_names}
        feed.update(self.slabs.gather(rows))
        try:
            results = await loop.run_in_executor(self._executor, self._compute, feed)
        except Exception as exc:
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self.slabs.scatter(rows, {i: results[o] for i, o in self._state_pairs})
        for index, job in enumerate(batch):
            if not job.future.done():
                job.future.set_result({name: results[name][index] for name in self._output_names})
