"""The per-model batching loop: the ready steps of all sessions become one ONNX Runtime call.

Client steps are tiny, and one by one their fixed per-call costs dominate: the ready steps of
every session run as one batch as soon as the last batch finishes (no fixed wait unless
``max_delay_ms`` asks; ``service.loop_alarm`` times it). Its rules are in docs/benchmarks.md:

* a batch holds at most ``max_batch`` steps of one chunk length K, never two of one session;
  steps passed over stay at the head of the queue, so each session's order holds;
* gather and scatter run on the event loop, the ORT call on the model's worker thread (but see below);
* steps that arrive in one turn of the loop batch together. A lone short step runs inline (the
  direct path), a lone Session stream's inside ``submit`` (the fast lane), and a small batch too
  when calls of its size cost under ``inline_call_us`` of CPU (less than a hand-off to the worker);
* ``--scheduler none`` is the naive baseline: a batch-1 ``InferenceSession.run`` per step, in a
  loop callback after the handler yields (inside the handler it ran slower, flattering our ratio);
* a failed call writes no state; a failed batch reruns one step at a time, so a bad step fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.calls import BatchCall, StepCalls
from service.contract import Arrays
from service.errors import SchedulerStopped
from service.loop_alarm import LoopAlarm
from service.metrics import Metrics
from service.process import ORT_WORKER_PREFIX, WINDOW_PREFIX, name_os_thread
from service.registry import LoadedModel
from service.slabs import Slabs

#: Derives more per-step arrays from a batch's outputs (``[B, K, ...]`` each) on the worker
#: thread, e.g. a language model's ranked next tokens; see ``Scheduler.postprocess``.
Postprocess = Callable[[Arrays], Arrays]
#: Takes the outcome of a step whose future its awaiter cancelled (a done future of its own);
#: see ``Scheduler.submit``.
Orphan = Callable[["asyncio.Future[Arrays]"], None]
log = logging.getLogger(__name__)

#: A lone step of at most this many time steps runs inline on the event loop (the direct path);
#: a longer chunk goes to the worker thread, so it cannot stall the loop.
INLINE_MAX_STEPS = 4
#: The largest batch (of single steps) that may run inline when its calls are cheap (``inline_call_us``).
INLINE_MAX_BATCH = 32
#: Weight of the newest call in a batch size's moving average of CPU per call.
CALL_COST_WEIGHT = 0.2
#: Weight of the newest gap between two steps' arrivals in the moving average the window reads.
ARRIVAL_GAP_WEIGHT = 0.1
#: The batching window opens when at least this many more steps are expected within it (the
#: window divided by the mean gap between arrivals). Measured on ``lstm256`` under paced load, a
#: 0.25 ms window paid at mean gaps of 278 and 417 µs and cost CPU at 833 µs (docs/benchmarks.md).
WINDOW_MIN_ARRIVALS = 0.5


@dataclass(slots=True, eq=False)
class StepJob:
    """One session's step (or chunk of K steps) waiting for a batch."""

    row: int
    inputs: Arrays  # each [K, *shape]
    steps: int  # K
    future: asyncio.Future[Arrays]
    enqueued: float
    orphan: Orphan | None = None


class Scheduler:
    """Runs the steps of one model's sessions, batched across sessions."""

    def __init__(
        self,
        model: LoadedModel,
        slabs: Slabs,
        *,
        max_batch: int,
        max_delay_ms: float,
        batching: bool,
        metrics: Metrics,
        calls: StepCalls | None = None,
        inline_call_us: float = 0.0,
    ) -> None:
        self.model = model
        self.slabs = slabs
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self.batching = batching
        self.calls = calls or StepCalls(model, io_binding=True, max_batch=max_batch, max_steps=max_batch * 64)
        self._pending: deque[StepJob] = deque()
        self._wakeup = asyncio.Event()
        self._busy = False
        worker = ORT_WORKER_PREFIX + model.manifest.name
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix=worker, initializer=name_os_thread, initargs=(worker,)
        )
        self._task: asyncio.Task[None] | None = None
        #: The batching window's clock: loop timers are whole milliseconds (see service.loop_alarm).
        self._alarm = LoopAlarm(WINDOW_PREFIX + model.manifest.name) if self.max_delay_s else None
        #: With a window: when the last step arrived, and a moving average of the gaps between
        #: arrivals (inf until two were seen), so the window opens only where it fills batches.
        self._last_arrival = float("-inf")
        self._arrival_gap_s = float("inf")
        #: The row of the last batch when that batch was a lone step, else -1: the fast lane's test.
        self._lone_row = -1
        #: A batch of single steps runs inline when its size's calls cost less CPU than this.
        self.inline_call_s = inline_call_us / 1e6
        #: Per batch size (single steps, up to INLINE_MAX_BATCH): a moving average of a call's CPU
        #: seconds on the thread that made it (``time.thread_time``: the compute, with ORT's one
        #: intra-op thread, and not the wait for the GIL after it); inf until one was measured.
        self._call_cpu = [float("inf")] * (INLINE_MAX_BATCH + 1)
        self._input_names = [t.name for t in model.manifest.inputs]
        self._output_names = [t.name for t in model.manifest.outputs]
        self._state_pairs = [(s.input, s.output) for s in model.manifest.state]
        name = model.manifest.name
        self._m_batch = metrics.batch_size.labels(name)
        self._m_batches = metrics.batches.labels(name)
        self._m_queue = metrics.queue_seconds.labels(name)
        self._m_compute = metrics.compute_seconds.labels(name)
        self._m_steps = metrics.steps.labels(name)
        #: Set by a driver: runs after each batched call, off the event loop, over the whole
        #: batch (one vectorised pass instead of one per session); its arrays join each step's
        #: outputs. Model-aware work stays in the driver; the scheduler only calls it. A failure
        #: fails the batch like a failed ORT call (no state is written).
        self.postprocess: Postprocess | None = None
        #: Seams for tests and tools, each one attribute test per batch while unset. ``on_batch``
        #: sees each batch the loop takes, on the event loop, before it runs (read each job's
        #: ``row`` and ``steps``; change nothing); a fast-lane step, run inside ``submit``, is no
        #: batch of the loop's. What it raises fails the batch.
        self.on_batch: Callable[[list[StepJob]], None] | None = None
        #: ``on_call`` is called just before each model call of the batching scheduler (a batch,
        #: a lone step, a step of a failed batch run alone), on the thread that makes it, with
        #: the call's inputs filled. What it raises is that call's failure, as if ONNX Runtime
        #: had raised it (no state is written); while it blocks, the call waits.
        self.on_call: Callable[[BatchCall], None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()  # bound to the loop that runs the scheduler
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"scheduler-{self.model.manifest.name}"
            )
            self._task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """The loop ended (stop, or a bug): no step may wait for it forever."""
        if not task.cancelled() and task.exception() is not None:
            log.error("scheduler of %s stopped", self.model.manifest.name, exc_info=task.exception())
        self._fail_pending()

    def _fail_pending(self) -> None:
        while self._pending:
            _settle(
                self._pending.popleft(), None, SchedulerStopped("the model's scheduler stopped before this step ran")
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail_pending()
        self._executor.shutdown(wait=True)
        if self._alarm is not None:
            self._alarm.close()

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The model's one ORT worker thread: other graph calls of the model (init) run there too."""
        return self._executor

    def submit(
        self, row: int, inputs: Arrays, steps: int, *, lane: bool = False, orphan: Orphan | None = None
    ) -> asyncio.Future[Arrays]:
        """Enqueues K steps of the session at ``row`` (or runs them now, on the fast lane); the future
        gets its outputs, each ``[K, *shape]``.

        ``lane`` allows the fast lane: a client's step, which needs another message before the
        next one comes. A server-side loop (a rollout, a decode) never asks for it, so its steps
        still give the event loop a turn each instead of holding it for the whole loop.

        Once submitted, the steps run and their state is written whether or not anyone still
        awaits the future: the scheduler never cancels it. An awaiter that is cancelled cancels
        the future (that is how asyncio cancels an ``await``); the step runs all the same, and
        its outcome goes to ``orphan`` instead, as a done future of its own. That is what lets
        a caller commit a step exactly once after its stream broke, without an
        ``asyncio.shield`` (a second future and an extra turn of the loop) on every step. The
        outputs are the caller's own arrays (no buffer of the scheduler's). The caller
        guarantees that a session has at most one step in flight; the scheduler still never
        puts two steps of one row in one batch.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Arrays] = loop.create_future()
        job = StepJob(row, inputs, steps, future, time.perf_counter(), orphan)
        if not self.batching:
            loop.call_soon(self._run_naive_job, job)
            return future
        if self._alarm is not None:
            self._arrived(job.enqueued)
        if self._task is None or self._task.done():
            raise SchedulerStopped("the model's scheduler is not running")
        if lane and row == self._lone_row and not self._busy and not self._pending and steps <= INLINE_MAX_STEPS:
            self._run_lone(job)
            return future
        self._pending.append(job)
        if not self._wakeup.is_set():
            self._wakeup.set()
        return future

    async def run(self, row: int, inputs: Arrays, steps: int) -> Arrays:
        """``submit`` and wait for the outputs."""
        return await self.submit(row, inputs, steps)

    # -- the loop ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        pending = self._pending
        while True:
            if not pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._alarm is not None and len(pending) < self.max_batch and self._window_pays():
                await self._alarm.sleep(pending[0].enqueued + self.max_delay_s - time.perf_counter())
            batch = self._take_batch()
            self._lone_row = batch[0].row if len(batch) == 1 else -1
            self._busy = True
            try:
                if self.on_batch is not None:
                    self.on_batch(batch)
                if len(batch) == 1 and batch[0].steps <= INLINE_MAX_STEPS:
                    self._run_inline(batch[0])
                else:
                    await self._run_batch(loop, batch, inline=self._cheap(batch))
            except asyncio.CancelledError:  # stop() during a batch: its steps must not wait forever
                _fail(batch, SchedulerStopped("the server stopped while this step was running"))
                raise
            except Exception as exc:  # never let one bad batch stop the loop
                _fail(batch, exc)
            finally:
                self._busy = False

    def _arrived(self, now: float) -> None:
        """Counts a step's arrival (at ``now``, perf_counter seconds) in the mean gap between arrivals."""
        gap, self._last_arrival = now - self._last_arrival, now
        self._arrival_gap_s = _moving_average(self._arrival_gap_s, gap, ARRIVAL_GAP_WEIGHT)

    def _window_pays(self) -> bool:
        """Whether steps arrive densely enough that waiting out the window is likely to fill the batch.

        Where they do not, a wait adds its latency and the two wake-ups of ``LoopAlarm`` to a
        batch of one, and saves nothing.
        """
        return self.max_delay_s >= WINDOW_MIN_ARRIVALS * self._arrival_gap_s

    def _take_batch(self) -> list[StepJob]:
        """Up to max_batch jobs of the first job's chunk length, one per session, oldest first.

        Jobs passed over (another K, or a session already in the batch) go back to the head of
        the queue in their order, so they are the first considered next time.
        """
        pending = self._pending
        first = pending.popleft()
        batch = [first]
        if not pending:
            return batch
        steps = first.steps
        rows = {first.row}
        skipped: list[StepJob] = []
        limit = self.max_batch
        while pending and len(batch) < limit:
            job = pending.popleft()
            if job.steps == steps and job.row not in rows:
                batch.append(job)
                rows.add(job.row)
            else:
                skipped.append(job)
        if skipped:
            pending.extendleft(reversed(skipped))
        return batch

    # -- the three ways to run ---------------------------------------------------------------

    def _run_lone(self, job: StepJob) -> None:
        """The fast lane: the step runs now, inside ``submit``, and its future is done on return."""
        self._busy = True
        try:
            self._run_inline(job)
        except Exception as exc:
            _fail([job], exc)
        finally:
            self._busy = False

    def _run_naive_job(self, job: StepJob) -> None:
        """The naive call, its outcome settled (a loop callback, see the module's docstring)."""
        try:
            outputs = self._run_naive(job.row, job.inputs, job.steps)
        except Exception as exc:
            _settle(job, None, exc)
            return
        _settle(job, outputs, None)

    def _run_naive(self, row: int, inputs: Arrays, steps: int) -> Arrays:
        """The baseline: one plain batch-1 InferenceSession.run per step, inline."""
        feed = {name: value[np.newaxis] for name, value in inputs.items()}
        current = self.slabs.read_row(row)  # the state and the context
        feed.update((name, value[np.newaxis]) for name, value in current.items())
        started = time.perf_counter()
        results = self.model.run(feed)
        outputs = {name: results[name] for name in self._output_names}
        if self.postprocess is not None:  # the same per-step outputs as the batched paths give
            outputs.update(self.postprocess(outputs))
        self._record(started, 1, steps)
        self.slabs.write_row(row, {**current, **{i: results[o][0] for i, o in self._state_pairs}})
        return {name: value[0] for name, value in outputs.items()}

    def _run_inline(self, job: StepJob) -> None:
        """The direct path: a lone step runs at once on the loop thread, with no hand-off."""
        call = self.calls.get(1, job.steps)
        for name, value in job.inputs.items():
            call.inputs[name][0] = value
        self.slabs.gather_row(job.row, call.state)
        started = time.perf_counter()
        self._m_queue.observe(started - job.enqueued)
        derived = self._call(call, 1, job.steps)
        self._record(started, 1, job.steps)
        self.slabs.scatter_row(job.row, call.new_state)
        reused = call.reused
        outputs = {name: out[0].copy() if reused else out[0] for name, out in call.outputs.items()}
        outputs.update((name, out[0]) for name, out in derived.items())
        _settle(job, outputs, None)

    def _cheap(self, batch: list[StepJob]) -> bool:
        """Whether a batch runs inline: single steps, few, and calls of its size cost under ``inline_call_s``."""
        count = len(batch)
        return _costed(count, batch[0].steps) and self._call_cpu[count] < self.inline_call_s

    def _call(self, call: BatchCall, count: int, steps: int) -> Arrays:
        """The ORT call and the driver's postprocess (on the worker thread when batched), its CPU
        time counted for its batch size (``count`` sessions of ``steps`` steps; see ``_call_cpu``)."""
        if self.on_call is not None:
            self.on_call(call)
        started = time.thread_time()
        call.run()
        postprocess = self.postprocess
        derived = postprocess(call.outputs) if postprocess is not None else {}
        if _costed(count, steps):
            used = time.thread_time() - started
            self._call_cpu[count] = _moving_average(self._call_cpu[count], used, CALL_COST_WEIGHT)
        return derived

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[StepJob], inline: bool = False) -> None:
        """Gathers on the loop, computes on the worker thread (on the loop too, if ``inline``),
        scatters on the loop."""
        count, steps = len(batch), batch[0].steps
        call = self.calls.get(count, steps)
        for name, view in call.inputs.items():
            flat = view.reshape(count * steps, *view.shape[2:])
            np.concatenate([job.inputs[name] for job in batch], axis=0, out=flat)
        rows = np.fromiter((job.row for job in batch), dtype=np.intp, count=count)
        self.slabs.gather(rows, call.state)
        started = time.perf_counter()
        self._m_queue.observe_many([started - job.enqueued for job in batch])
        try:
            derived = (
                self._call(call, count, steps)
                if inline
                else await loop.run_in_executor(self._executor, self._call, call, count, steps)
            )
        except Exception as exc:
            # Nothing was scattered: every session keeps its state. One step may have made the
            # whole call fail; run them one by one so only the faulty step fails, not its batch.
            log.warning(
                "a batch of %d steps of %s failed (%s); running them one by one", count, self.model.manifest.name, exc
            )
            self._isolate(batch)
            return
        self._record(started, count, steps)
        self.slabs.scatter(rows, call.new_state)
        outputs = _own(call)
        outputs.update(derived)
        names = list(outputs)
        # list(array) makes the per-row views in one C loop; each step gets a dict of its rows.
        for job, values in zip(batch, zip(*(list(out) for out in outputs.values()), strict=True), strict=True):
            _settle(job, dict(zip(names, values, strict=True)), None)

    def _isolate(self, batch: list[StepJob]) -> None:
        """Runs each step of a failed batch alone; each fails or succeeds on its own."""
        for job in batch:
            try:
                self._run_inline(job)
            except Exception as exc:
                _settle(job, None, exc)

    def _record(self, started: float, batch: int, steps: int) -> None:
        self._m_compute.observe(time.perf_counter() - started)
        self._m_batch.observe(batch)
        self._m_batches.inc()
        self._m_steps.inc(batch * steps)


def _moving_average(known: float, new: float, weight: float) -> float:
    """An exponential moving average after one more value; ``known`` is inf until the first one."""
    return new if known == float("inf") else known + weight * (new - known)


def _costed(count: int, steps: int) -> bool:
    """Whether calls of ``count`` sessions × ``steps`` steps have their CPU kept (``_call_cpu``), and so
    may run inline: batches of single steps, at most INLINE_MAX_BATCH of them."""
    return steps == 1 and count <= INLINE_MAX_BATCH


def _own(call: BatchCall) -> Arrays:
    """The call's outputs as arrays no later call writes to (one copy per batch, not per step)."""
    if call.reused:
        return {name: out.copy() for name, out in call.outputs.items()}
    return dict(call.outputs)


def _fail(batch: list[StepJob], exc: BaseException) -> None:
    for job in batch:
        _settle(job, None, exc)


def _settle(job: StepJob, outputs: Arrays | None, exc: BaseException | None) -> None:
    """Gives a finished step's outcome to its future, or, if its awaiter cancelled that, to its orphan callback.

    Exactly one of ``outputs`` and ``exc`` is set. The orphan callback gets a done future of its
    own, so it reads the outcome as any awaiter would.
    """
    future, orphan = job.future, None
    if future.done():  # its awaiter cancelled it
        orphan = job.orphan
        if orphan is None:
            return  # nobody commits it: a caller that needed to would have passed an orphan callback
        future = future.get_loop().create_future()
    if exc is not None:
        future.set_exception(exc)
    else:
        assert outputs is not None
        future.set_result(outputs)
    if orphan is not None:
        orphan(future)
