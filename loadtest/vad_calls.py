"""``statestream bench --vad-calls``: how many live calls one server holds in real time (Silero VAD).

Each of N streams is a call: it opens a session, then sends one 32 ms frame of PCM16 audio (512
samples) in a Step every 32 ms on its own schedule, the N schedules spread over the 32 ms
(spread arrivals), without waiting for answers, as a telephony gateway does. A call is held when
the p99 of its answers' latency (a Step sent to its StepResult read) is under 100 ms, every frame of the
window is answered, and the load generator never sent one of its frames more than a frame
late (a late send means the generator, not the server, fell behind: it is counted apart). N is
held when every call is. The ladder (32, 64, ... 1024) stops at the first N not held, per
server: statestream (``models/silero_vad``, batched) and the baseline (``loadtest.vad_baseline``,
one ORT session per call). Beside each rung: CPU per second of the server's event-loop thread,
of its other Python threads (ONNX Runtime's worker), of gRPC's threads, and of the load processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from loadtest.call_audio import call_audio
from loadtest.flags import model_folder
from loadtest.load import split
from loadtest.servers import THREAD_BUCKETS, ServerProcess, serve_command
from service.api import statestream_pb2 as pb
from service.api import statestream_pb2_grpc as rpc
from service.contract import Manifest
from service.tensors import to_proto

FRAME, RATE = 512, 16000
#: The task of the models a call's audio goes to, and the one --vad-calls serves unless --model says.
VAD_TASK, VAD_MODEL = "voice_activity", "silero_vad"
FRAME_S = FRAME / RATE
LADDER = (32, 64, 128, 256, 512, 1024)
HELD_P99_MS = 100.0
#: How long after the window the calls wait for their last answers before counting them lost.
DRAIN_S = 2.0
AUDIO_FRAMES = call_audio().reshape(-1, FRAME)


@dataclass(frozen=True)
class CallsSpec:
    """What one load process runs: ``calls`` calls starting at index ``first`` of ``total``."""

    target: str
    model: str
    calls: int
    first: int
    total: int


@dataclass
class CallStats:
    """One call's window: its answers' latencies, late sends, errors and unanswered frames."""

    latencies_s: list[float] = field(default_factory=list)
    late: int = 0
    errors: int = 0
    lost: int = 0

    def p99_ms(self) -> float:
        return 1000.0 * float(np.percentile(self.latencies_s, 99)) if self.latencies_s else math.inf


@dataclass
class WorkerReport:
    calls: list[CallStats]
    cpu_s: float


async def one_call(channel: grpc.aio.Channel, spec: CallsSpec, index: int, window: asyncio.Future[Any]) -> CallStats:
    """A live call: open, then a frame every 32 ms from its spread start until the window ends."""
    call = rpc.SessionServiceStub(channel).Session()  # type: ignore[no-untyped-call]
    await call.write(pb.SessionRequest(open=pb.OpenSession(model=spec.model)))
    await call.read()
    go, measure, end = await window
    stats, sent = CallStats(), dict[int, float]()
    offset = FRAME_S * index / spec.total

    async def read() -> None:
        while (response := await call.read()) is not grpc.aio.EOF:
            kind = response.WhichOneof("response")
            if kind in ("result", "error"):
                seq = response.result.seq if kind == "result" else response.error.seq
                started = sent.pop(seq, None)
                stats.errors += kind == "error"
                if started is not None and kind == "result":
                    stats.latencies_s.append(time.monotonic() - started)

    reader = asyncio.ensure_future(read())
    seq = 0
    while (due := go + offset + seq * FRAME_S) < end:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        now = time.monotonic()
        seq += 1
        audio = AUDIO_FRAMES[(seq + index) % len(AUDIO_FRAMES)]
        step = pb.Step(seq=seq, tensors=pb.TensorInput(tensors=[to_proto("audio", audio)]))
        if due >= measure:
            sent[seq] = now
            stats.late += now - due > FRAME_S
        await call.write(pb.SessionRequest(step=step))
    deadline = time.monotonic() + DRAIN_S
    while sent and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stats.lost = len(sent)
    call.cancel()
    reader.cancel()
    return stats


async def run_calls(spec: CallsSpec, conn: Connection) -> WorkerReport:
    loop = asyncio.get_running_loop()
    window: asyncio.Future[Any] = loop.create_future()
    channels = [grpc.aio.insecure_channel(spec.target) for _ in range(max(1, spec.calls // 64))]
    tasks = [
        asyncio.ensure_future(one_call(channels[i % len(channels)], spec, spec.first + i, window))
        for i in range(spec.calls)
    ]
    await asyncio.sleep(0)
    conn.send("ready")
    go, measure, end = await loop.run_in_executor(None, conn.recv)
    window.set_result((go, measure, end))
    await asyncio.sleep(max(0.0, measure - time.monotonic()))
    cpu_start = _own_cpu_s()
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    cpu_s = _own_cpu_s() - cpu_start
    calls = list(await asyncio.gather(*tasks))
    for channel in channels:
        await channel.close(None)
    return WorkerReport(calls, cpu_s)


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_main(spec: CallsSpec, conn: Connection) -> None:
    try:
        conn.send(asyncio.run(run_calls(spec, conn)))
    except BaseException as exc:  # report, so the parent does not wait for a dead worker
        conn.send(RuntimeError(f"VAD load worker failed: {exc!r}"))
        raise


@dataclass(frozen=True)
class Rung:
    """One N of the ladder on one server, as measured."""

    server: str
    calls: int
    held_calls: int
    worst_p99_ms: float
    late_sends: int
    errors: int
    lost: int
    #: CPU seconds per second of each of the server's thread buckets (ServerProcess.thread_cpu_seconds):
    loop_cpu: float  # its main (event-loop) thread
    ort_cpu: float  # its other Python threads: ONNX Runtime's worker (none in the baseline) and pools
    grpc_cpu: float  # gRPC's own threads, grpc.aio's poller included
    load_cpu: float  # CPU seconds per second of the load processes

    @property
    def held(self) -> bool:
        return self.held_calls == self.calls

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "held": self.held}


def measure_rung(server: ServerProcess, name: str, model: str, calls: int, processes: int, window_s: float) -> Rung:
    """Runs ``calls`` live calls over ``processes`` load processes for ``window_s`` after a 1 s warm-up."""
    context = mp.get_context("spawn")
    workers, pipes = [], []
    try:
        first = 0
        for count in split(calls, processes):
            parent, child = context.Pipe()
            spec = CallsSpec(server.target, model, count, first, calls)
            first += count
            worker = context.Process(target=worker_main, args=(spec, child), daemon=True)
            worker.start()
            workers.append(worker)
            pipes.append(parent)
        for pipe in pipes:
            _receive(pipe, 120.0)
        go = time.monotonic() + 0.2
        measure, end = go + 1.0, go + 1.0 + window_s
        for pipe in pipes:
            pipe.send((go, measure, end))
        time.sleep(max(0.0, measure - time.monotonic()))
        cpu_start = server.thread_cpu_seconds()
        time.sleep(max(0.0, end - time.monotonic()))
        cpu_end = server.thread_cpu_seconds()
        reports: list[WorkerReport] = [_receive(pipe, window_s + 120.0) for pipe in pipes]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()  # our own child, by its PID
    stats = [call for report in reports for call in report.calls]
    loop_cpu, ort_cpu, grpc_cpu = ((cpu_end[name] - cpu_start[name]) / window_s for name in THREAD_BUCKETS)
    held = [s for s in stats if s.p99_ms() < HELD_P99_MS and not s.late and not s.errors and not s.lost]
    return Rung(
        name,
        calls,
        len(held),
        max(s.p99_ms() for s in stats),
        sum(s.late for s in stats),
        sum(s.errors for s in stats),
        sum(s.lost for s in stats),
        loop_cpu,
        ort_cpu,
        grpc_cpu,
        sum(r.cpu_s for r in reports) / window_s,
    )


def _receive(pipe: Connection, timeout_s: float) -> Any:
    if not pipe.poll(timeout_s):
        raise RuntimeError(f"a VAD load worker said nothing for {timeout_s:g} s")
    answer = pipe.recv()
    if isinstance(answer, Exception):
        raise answer
    return answer


@contextmanager
def started(name: str, models_dir: Path) -> Iterator[ServerProcess]:
    command = (
        serve_command(models_dir, "batched")
        if name == "statestream"
        else [sys.executable, "-m", "loadtest.vad_baseline", "--host", "127.0.0.1", "--port", "0"]
    )
    with ServerProcess(name, command) as server:
        yield server


def run_ladder(
    models_dir: Path,
    model: str,
    ladder: tuple[int, ...],
    window_s: float,
    processes: int,
    log: Callable[[str], None],
    servers: tuple[str, ...] = ("statestream", "baseline"),
) -> list[Rung]:
    """Each server's rungs in order, up to and including its first N not held."""
    rungs: list[Rung] = []
    for name in servers:
        with started(name, models_dir) as server:
            for calls in ladder:
                rung = measure_rung(server, name, model, calls, processes, window_s)
                log(f"{name} N={calls}: {'held' if rung.held else 'not held'}, worst p99 {rung.worst_p99_ms:.1f} ms")
                rungs.append(rung)
                if not rung.held:
                    break
    return rungs


def format_ladder(rungs: list[Rung]) -> str:
    """The ladder as a table, then the largest N held by each server and their ratio."""
    lines = [
        "| server | N calls | held | worst p99 ms | late sends | errors | lost "
        "| CPU/s: server loop | ORT worker | gRPC threads | load processes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rungs:
        lines.append(
            f"| {r.server} | {r.calls} | {r.held_calls}/{r.calls} | {r.worst_p99_ms:.1f} | {r.late_sends} | "
            f"{r.errors} | {r.lost} | {r.loop_cpu:.2f} | {r.ort_cpu:.2f} | {r.grpc_cpu:.2f} | {r.load_cpu:.2f} |"
        )
    best = largest_held(rungs)
    lines.append("largest N held: " + ", ".join(f"{name} {n}" for name, n in best.items()))
    if best.get("baseline"):
        lines.append(f"statestream / baseline: {best.get('statestream', 0) / best['baseline']:.2f}x")
    return "\n".join(lines)


def largest_held(rungs: list[Rung]) -> dict[str, int]:
    best: dict[str, int] = {}
    for r in rungs:
        best.setdefault(r.server, 0)
        if r.held:
            best[r.server] = max(best[r.server], r.calls)
    return best


def vad_model_folder(parser: argparse.ArgumentParser, models_dir: Path, model: str) -> Path:
    """``models_dir/model``, a voice-activity model whose frame is a call's (FRAME samples at RATE);
    else a usage error: another model answers every call with errors, or with frames of another size."""
    folder = model_folder(parser, models_dir, model, tasks=(VAD_TASK,))
    frame = list(Manifest.load(folder).inputs[0].shape)
    if frame != [FRAME]:
        parser.error(f"--model {model}: its frame is {frame} samples; a call sends {RATE} Hz audio in [{FRAME}]")
    return folder


def bench_vad_calls(args: Any, model: str, log: Callable[[str], None]) -> int:
    """``statestream bench --vad-calls``: the ladder for ``model`` (checked by vad_model_folder), printed as a table."""
    folder = (args.models_dir / model).resolve()
    ladder = tuple(args.ladder or LADDER)
    window_s = args.duration_s or 30.0
    processes = args.load_processes or max(1, min(4, len(os.sched_getaffinity(0)) // 2))
    started_at = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / model).symlink_to(folder)
        rungs = run_ladder(Path(scratch), model, ladder, window_s, processes, log)
    if args.json:
        for rung in rungs:
            print(json.dumps(rung.to_json()))
        return 0
    print(
        f"statestream bench --vad-calls: model {model}, {window_s:g} s windows, {processes} load process(es), "
        f"{len(os.sched_getaffinity(0))} cores, {time.monotonic() - started_at:.0f} s in all"
    )
    print(format_ladder(rungs))
    return 0
