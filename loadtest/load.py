"""Load generators: N streams, each sends a step and waits for its answer, closed loop or paced.

A 2-core machine cannot drive a thousand streams from one Python process through one HTTP/2
connection, and the client shares the cores with the server it measures, so the load is spread
over a few ``spawn``ed worker processes, each over a few channels; workers send pre-encoded
request bytes and look only at an answer's first byte (``loadtest.messages``). Every worker
opens its sessions and reports ready; the parent then hands all of them one start time, warm-up
and measuring window (``time.monotonic`` is one clock for every process), samples the server's
CPU time at the window's edges, and counts only the answers inside the window.

Modes: ``stream`` (one session per Session stream, ``chunk`` steps per message) and
``multiplex`` (the next step of ``per_message`` sessions in each Multiplex message). Paced
(``interval_s``): a stream sends every ``interval_s``, never two in flight, so a server that
falls behind sees closed-loop load again; the schedules are spread or all in phase (``spread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

import grpc
import numpy as np

from loadtest import messages
from service.contract import Manifest

#: Keeps each channel on its own TCP connection (channels with equal arguments share one).
_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)]
_OPEN_CONCURRENCY = 64


@dataclass(frozen=True)
class LoadSpec:
    """What one worker process runs."""

    target: str
    model: str
    mode: str  # "stream", "multiplex" or "oip" (an Open Inference Protocol sequence per stream)
    streams: int  # Session streams, or Multiplex streams
    channels: int = 2
    chunk: int = 1  # characters (time steps) per step message
    last_only: bool = False
    per_message: int = 1  # sessions per Multiplex message
    text: bytes = b"the quick brown fox jumps over the lazy dog. "
    offset: int = 0  # where in ``text`` this worker's first stream starts
    #: A model that takes tensors: (name, dtype, per-step shape) of each input. Empty: send ``text``.
    tensors: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
    #: Outputs every session asks for (SessionOptions.return_tensors), so answers carry them.
    return_tensors: tuple[str, ...] = ()
    #: Every model input as (name, dtype, per-step shape), language models' too: what an
    #: ``oip`` stream sends (a token id is 0, valid in any vocabulary).
    model_inputs: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
    #: Paced load: each stream sends one message every this many seconds; 0: closed loop.
    interval_s: float = 0.0
    #: Paced load: the streams' schedules spread evenly over the interval, else all in phase.
    spread: bool = True


#: Distinct tensor steps each stream cycles through (made once, sent as pre-encoded bytes).
TENSOR_STEPS = 8


def model_fields(manifest: Manifest) -> dict[str, Any]:
    """LoadSpec fields for a model: text for a language model, else random tensors and every output back.

    Asking for every output makes a tensor model's answer carry what a client of it reads; a
    language model answers its top_k next tokens without asking.
    """
    if manifest.task == "language_model":
        return {}
    return {
        "tensors": tuple((t.name, t.dtype, t.shape) for t in manifest.inputs),
        "return_tensors": tuple(t.name for t in manifest.outputs),
    }


def model_inputs(manifest: Manifest) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """Every model input as (name, dtype, per-step shape): what an ``oip`` stream sends."""
    return tuple((t.name, t.dtype, t.shape) for t in manifest.inputs)


@dataclass
class WorkerResult:
    messages: int = 0
    steps: int = 0
    errors: int = 0
    response_bytes: int = 0
    latencies_s: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass
class LoadResult:
    """One closed-loop run, all workers together."""

    messages: int
    steps: int
    errors: int
    duration_s: float
    latencies_s: np.ndarray
    server_cpu_s: float
    response_bytes: int
    #: The server's CPU seconds in the window per thread bucket (``servers.THREAD_BUCKETS``); {}: no split.
    server_cpu_by_thread_s: dict[str, float] = field(default_factory=dict)

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.duration_s

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.duration_s

    def percentile_ms(self, q: float) -> float:
        if not len(self.latencies_s):
            return float("nan")
        return float(np.percentile(self.latencies_s, q) * 1e3)

    @property
    def cpu_us_per_step(self) -> float:
        return self.server_cpu_s / self.steps * 1e6 if self.steps else float("nan")

    @property
    def cpu_us_per_step_by_thread(self) -> dict[str, float]:
        """``cpu_us_per_step`` of each thread bucket ({} without a split)."""
        return {
            name: cpu_s / self.steps * 1e6 if self.steps else float("nan")
            for name, cpu_s in self.server_cpu_by_thread_s.items()
        }

    @property
    def bytes_per_message(self) -> float:
        return self.response_bytes / self.messages if self.messages else float("nan")


class _Window:
    def __init__(self, go: float, measure: float, end: float) -> None:
        self.go, self.measure, self.end = go, measure, end


def _random_steps(
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...], rng: np.random.Generator, chunk: int
) -> list[dict[str, np.ndarray]]:
    """``TENSOR_STEPS`` steps of ``[chunk, *shape]`` per input: floats standard normal, integers 0."""

    def value(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        full = (chunk, *shape)
        return rng.standard_normal(full).astype(dtype) if dtype.startswith("float") else np.zeros(full, dtype)

    return [{name: value(dtype, shape) for name, dtype, shape in inputs} for _ in range(TENSOR_STEPS)]


def _inputs(spec: LoadSpec, index: int) -> list[bytes]:
    """The step input fields one stream sends in turn (see ``messages.step_bytes``).

    Text: chunks of ``spec.text`` from the stream's own offset. Tensors: ``TENSOR_STEPS`` random
    steps of ``[chunk, *shape]`` (floats standard normal, integers 0, a valid id of any
    vocabulary), seeded by the stream's position so every run sends the same values.
    """
    if spec.tensors:
        rng = np.random.default_rng(spec.offset + index)
        return [messages.tensors_input(arrays) for arrays in _random_steps(spec.tensors, rng, spec.chunk)]
    text = spec.text
    start = (spec.offset + index * 7) % len(text)
    rolled = text[start:] + text[:start]
    count = len(rolled)
    chunks = [(rolled * (spec.chunk + 1))[i : i + spec.chunk] for i in range(0, count * spec.chunk, spec.chunk)]
    return [messages.text_input(chunk) for chunk in chunks[:count]]


async def _stream(
    channel: grpc.aio.Channel, spec: LoadSpec, index: int, gate: _Gate, opening: asyncio.Semaphore, out: WorkerResult
) -> None:
    method = channel.stream_stream(messages.SESSION_METHOD)  # bytes in, bytes out
    async with opening:
        call = method()
        await call.write(messages.open_request(spec.model, return_tensors=spec.return_tensors))
        messages.opened_session_id(await call.read())
    inputs = _inputs(spec, index)
    await _closed_loop(
        call, await gate.opened(), out, spec.chunk, _Pace.of(spec, index),
        lambda seq: messages.session_step_request(seq, inputs[seq % len(inputs)], spec.last_only),
        lambda response: int(response[0] != messages.RESULT_TAG),
    )  # fmt: skip


async def _multiplex(
    channel: grpc.aio.Channel, spec: LoadSpec, index: int, gate: _Gate, opening: asyncio.Semaphore, out: WorkerResult
) -> None:
    create = channel.unary_unary(messages.CREATE_METHOD)

    async def create_one() -> str:
        async with opening:
            return messages.created_session_id(await create(messages.create_request(spec.model, spec.return_tensors)))

    ids = await asyncio.gather(*(create_one() for _ in range(spec.per_message)))
    prefixes = [messages.session_step_prefix(i) for i in ids]
    all_inputs = [_inputs(spec, index * spec.per_message + j) for j in range(spec.per_message)]
    call = channel.stream_stream(messages.MULTIPLEX_METHOD)()
    await _closed_loop(
        call, await gate.opened(), out, spec.per_message * spec.chunk, _Pace.of(spec, index),
        lambda seq: messages.multiplex_request(prefixes, seq, [i[seq % len(i)] for i in all_inputs]),
        messages.multiplex_errors,
    )  # fmt: skip


async def _oip(
    channel: grpc.aio.Channel, spec: LoadSpec, index: int, gate: _Gate, opening: asyncio.Semaphore, out: WorkerResult
) -> None:
    """One Open Inference Protocol sequence on ModelStreamInfer (``loadtest.oip_load``), one step a request."""
    from loadtest import oip_load  # tritonclient: only this variant needs it

    sequence_id = spec.offset + index + 1  # workers' offsets are far apart: unique in the run
    steps = _random_steps(spec.model_inputs, np.random.default_rng(spec.offset + index), 1)
    requests = [oip_load.infer_request(spec.model, sequence_id, arrays) for arrays in steps]
    call = channel.stream_stream(oip_load.STREAM_METHOD)()
    async with opening:
        await call.write(oip_load.infer_request(spec.model, sequence_id, steps[0], start=True))
        if oip_load.is_error(await call.read()):
            raise RuntimeError(f"the server refused to start OIP sequence {sequence_id} of {spec.model!r}")
    await _closed_loop(
        call, await gate.opened(), out, 1, _Pace.of(spec, index),
        lambda seq: requests[seq % len(requests)],
        oip_load.is_error,
    )  # fmt: skip


@dataclass(frozen=True)
class _Pace:
    """A stream's schedule under paced load: every ``interval_s``, from ``phase_s`` after the start.

    A stream whose answer came late sends at once and keeps its schedule, so a server that cannot
    keep up sees closed-loop load (its rate then reads below the offered one).
    """

    interval_s: float
    phase_s: float

    @classmethod
    def of(cls, spec: LoadSpec, index: int) -> _Pace:
        phase = spec.interval_s * index / spec.streams if spec.spread else 0.0
        return cls(spec.interval_s, phase)


async def _closed_loop(
    call: Any,
    times: _Window,
    out: WorkerResult,
    steps_per_message: int,
    pace: _Pace,
    request: Callable[[int], bytes],
    errors: Callable[[bytes], int],
) -> None:
    """Send, wait for the answer, send the next (when its time comes, if paced): until the window
    ends, counting only answers inside it."""
    latencies: list[float] = []
    seq = 0
    clock = time.monotonic
    due = times.go + pace.phase_s
    while True:
        if pace.interval_s:
            wait = due - clock()
            if wait > 0:
                await asyncio.sleep(wait)
            due += pace.interval_s  # late: send now, and keep the schedule
        sent = clock()
        if sent >= times.end:
            break
        seq += 1
        await call.write(request(seq))
        response = await call.read()
        done = clock()
        if done < times.measure or done >= times.end:
            continue
        latencies.append(done - sent)
        out.errors += errors(response)
        out.response_bytes += len(response)
    out.messages += len(latencies)
    out.steps += len(latencies) * steps_per_message
    out.latencies_s = np.concatenate([out.latencies_s, np.asarray(latencies, np.float32)])
    call.cancel()


class _Gate:
    """Counts the streams that have opened their sessions, then hands them the measuring window."""

    def __init__(self, streams: int) -> None:
        loop = asyncio.get_running_loop()
        self.remaining = streams
        self.all_open: asyncio.Future[None] = loop.create_future()
        self.window: asyncio.Future[_Window] = loop.create_future()

    async def opened(self) -> _Window:
        self.remaining -= 1
        if self.remaining == 0:
            self.all_open.set_result(None)
        return await self.window


async def _worker(spec: LoadSpec, conn: Connection) -> WorkerResult:
    loop = asyncio.get_running_loop()
    channels = [
        grpc.aio.insecure_channel(spec.target, options=_CHANNEL_OPTIONS) for _ in range(spec.streams and spec.channels)
    ]
    gate = _Gate(spec.streams)
    out = WorkerResult()
    run = {"stream": _stream, "multiplex": _multiplex, "oip": _oip}[spec.mode]
    opening = asyncio.Semaphore(_OPEN_CONCURRENCY)
    tasks = [
        loop.create_task(run(channels[i % len(channels)], spec, i, gate, opening, out)) for i in range(spec.streams)
    ]
    waiting = [gate.all_open, *tasks]
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.result()  # a stream that failed to open raises here
    conn.send("ready")
    go, measure, end = await loop.run_in_executor(None, conn.recv)
    gate.window.set_result(_Window(go, measure, end))
    await asyncio.gather(*tasks)
    for channel in channels:
        await channel.close(None)
    return out


def worker_main(spec: LoadSpec, conn: Connection) -> None:
    try:
        conn.send(asyncio.run(_worker(spec, conn)))
    except BaseException as exc:  # report, so the parent does not wait for a dead worker
        conn.send(RuntimeError(f"load worker failed: {exc!r}"))
        raise


def split(total: int, parts: int) -> list[int]:
    """``total`` streams over at most ``parts`` workers, as evenly as possible (no empty worker)."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@contextlib.contextmanager
def _stopped_at_the_end() -> Iterator[list[Any]]:
    """The worker processes a caller starts (it appends them), stopped on the way out: joined once
    they have answered, or terminated at once when the caller is interrupted or fails (their load
    is not wanted any more); killed, by PID, if one is still there after 10 s."""
    processes: list[Any] = []
    try:
        yield processes
    except BaseException:
        for process in processes:
            process.terminate()
        raise
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()  # our own child, by its PID
                process.join(timeout=5)


def run_load(
    spec: LoadSpec,
    *,
    workers: int,
    warmup_s: float,
    duration_s: float,
    cpu_seconds: Callable[[], float],
    thread_cpu_seconds: Callable[[], dict[str, float]] = dict,
    open_timeout_s: float = 120.0,
) -> LoadResult:
    """Runs ``spec.streams`` streams over ``workers`` processes; ``cpu_seconds()`` reads the server's CPU.

    ``thread_cpu_seconds()`` reads it per thread bucket (``ServerProcess.thread_cpu_seconds``),
    beside the total at both edges of the window; the default reads no split.
    """
    context = mp.get_context("spawn")
    pipes: list[Connection] = []
    with _stopped_at_the_end() as processes:
        offset = 0
        for count in split(spec.streams, workers):
            parent, child = context.Pipe()
            worker_spec = replace(spec, streams=count, offset=offset)
            offset += count * 7 * max(1, spec.per_message)
            process = context.Process(target=worker_main, args=(worker_spec, child), daemon=True)
            process.start()
            child.close()
            processes.append(process)
            pipes.append(parent)
        for pipe in pipes:
            _expect(pipe, "ready", open_timeout_s)
        go = time.monotonic() + 0.05
        measure, end = go + warmup_s, go + warmup_s + duration_s
        for pipe in pipes:
            pipe.send((go, measure, end))
        time.sleep(max(0.0, measure - time.monotonic()))
        cpu_start, threads_start = cpu_seconds(), thread_cpu_seconds()
        time.sleep(max(0.0, end - time.monotonic()))
        cpu_end, threads_end = cpu_seconds(), thread_cpu_seconds()
        results = [_expect(pipe, None, open_timeout_s) for pipe in pipes]
    latencies = np.concatenate([r.latencies_s for r in results]) if results else np.zeros(0, np.float32)
    return LoadResult(
        messages=sum(r.messages for r in results),
        steps=sum(r.steps for r in results),
        errors=sum(r.errors for r in results),
        duration_s=duration_s,
        latencies_s=latencies,
        server_cpu_s=cpu_end - cpu_start,
        response_bytes=sum(r.response_bytes for r in results),
        server_cpu_by_thread_s={
            name: threads_end[name] - threads_start[name] for name in threads_start if name in threads_end
        },
    )


def _expect(pipe: Connection, want: str | None, timeout_s: float) -> Any:
    if not pipe.poll(timeout_s):
        raise TimeoutError(f"a load worker did not answer within {timeout_s:.0f}s")
    message = pipe.recv()
    if isinstance(message, BaseException):
        raise message
    if want is not None and message != want:
        raise RuntimeError(f"a load worker said {message!r}, expected {want!r}")
    return message


async def _create_sessions(target: str, model: str, count: int, concurrency: int) -> int:
    channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
    create = channel.unary_unary(messages.CREATE_METHOD)
    request = messages.create_request(model)
    remaining = count

    async def creator() -> int:
        nonlocal remaining
        made = 0
        while remaining > 0:
            remaining -= 1
            messages.created_session_id(await create(request))
            made += 1
        return made

    made = sum(await asyncio.gather(*(creator() for _ in range(concurrency))))
    await channel.close(None)
    return made


def _create_main(target: str, model: str, count: int, concurrency: int, conn: Connection) -> None:
    try:
        conn.send(asyncio.run(_create_sessions(target, model, count, concurrency)))
    except BaseException as exc:
        conn.send(RuntimeError(f"session creator failed: {exc!r}"))
        raise


def create_sessions(target: str, model: str, count: int, *, workers: int = 2, timeout_s: float = 600.0) -> int:
    """Opens ``count`` idle sessions with CreateSession from ``workers`` processes; returns how many."""
    context = mp.get_context("spawn")
    pipes: list[Connection] = []
    with _stopped_at_the_end() as processes:
        for part in split(count, workers):
            parent, child = context.Pipe()
            process = context.Process(target=_create_main, args=(target, model, part, 64, child), daemon=True)
            process.start()
            child.close()
            processes.append(process)
            pipes.append(parent)
        return sum(int(_expect(pipe, None, timeout_s)) for pipe in pipes)
