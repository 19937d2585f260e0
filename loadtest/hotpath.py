"""The server's per-step cost without gRPC: for profilers and A/B runs on a noisy machine.

``statestream bench``'s wall-clock numbers move by ±20 % between runs on a shared machine. This
drives the real ``SessionServicer.Session`` handler in-process (the request bytes as gRPC hands
them over, each answer serialized as gRPC would), N streams on one event loop, and prints the CPU
time per step: statestream's own code alone, so it can run under callgrind or py-spy.
``--protocols statestream,oip`` drives OIP's ``ModelStreamInfer`` too (tritonclient's requests),
alternated with the native one round by round. ``--rate R`` paces the streams as the bench's
``--arrivals spread``: a feeder thread hands each step to the loop as gRPC's poller thread hands
over a message (``call_soon_threadsafe``), so the loop sleeps between steps as a paced server's
does; each row then gives the loop's own CPU per step and each step's latency.

    python -m loadtest.hotpath --model lstm256 --streams 1,256 --steps 1000,20
    python -m loadtest.hotpath --model lstm256 --streams 256 --steps 30 --rate 2400
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.flags import CountList, NameList, model_folder
from loadtest.load import _random_steps, model_fields, model_inputs
from loadtest.messages import open_request, session_step_request, tensors_input, text_input
from loadtest.pacing import Pacing, paced_rate
from service import process
from service.api import grpc_service_pb2 as oip
from service.api import statestream_pb2 as pb
from service.auth import Authenticator
from service.command import Parser, nonempty_path, positive_int
from service.contract import Manifest
from service.engine import SessionEngine
from service.metrics import Metrics
from service.registry import Registry
from service.runtime import Runtimes
from service.servicers.inference import InferenceServicer
from service.servicers.sessions import SessionServicer
from service.servicers.wire import serialize
from service.session_store import SessionStore
from service.settings import EVENT_LOOPS, Settings
from service.tasks import driver_class

#: The protocols a run can drive: statestream's Session stream, and OIP's ModelStreamInfer.
PROTOCOLS = ("statestream", "oip")


def step_inputs(manifest: Manifest, count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct one-step inputs: characters of the vocabulary, or random tensors."""
    fields = model_fields(manifest)
    if not fields:
        tokens = [t for t in manifest.vocabulary if len(t) == 1]
        return [text_input(tokens[i % len(tokens)].encode()) for i in range(count)]
    rng = np.random.default_rng(seed)
    return [
        tensors_input(
            {name: rng.standard_normal((1, *shape)).astype(dtype) for name, dtype, shape in fields["tensors"]}
        )
        for _ in range(count)
    ]


class _Context:
    """The little of a ``grpc.aio.ServicerContext`` an unauthenticated Session stream uses."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def auth_context(self) -> dict[str, Any]:
        return {}

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"stream aborted: {code} {details}")


@dataclass(frozen=True)
class Handlers:
    """The stream handlers of one in-process server: statestream.v1's Session and OIP's ModelStreamInfer."""

    native: SessionServicer
    oip: InferenceServicer


async def drive(
    models_dir: Path,
    model: str,
    runs: list[tuple[int, int]],
    *,
    settle: bool = False,
    protocols: tuple[str, ...] = ("statestream",),
    rounds: int = 1,
    rate: float = 0.0,
) -> list[dict[str, Any]]:
    """Each (N streams, steps per stream) of ``runs`` in turn on one server; CPU and wall time per step.

    Each run is measured ``rounds`` times, each round once per protocol of ``protocols`` in turn
    ("statestream": the Session stream; "oip": ModelStreamInfer), so a noisy machine's drift
    falls on every protocol alike. ``settle``: tune the garbage collector as ``statestream
    serve`` does once its models are loaded (``service.process.settle_heap``); for a process of
    its own, not a test's. ``rate``: steps a second over all streams, spread (0: closed loop).
    """
    settings = Settings(models_dir=models_dir, port=0, log_session_events_per_s=0)
    metrics = Metrics()
    runtimes = Runtimes(Registry.from_folder(models_dir, settings, driver_class), settings, metrics)
    store = SessionStore(runtimes, settings, metrics)
    engine = SessionEngine(store, settings)
    auth = Authenticator(None)
    handlers = Handlers(SessionServicer(engine, metrics, auth), InferenceServicer(engine, metrics, auth))
    runtimes.start()
    if settle:
        process.settle_heap()
    rows = []
    try:
        for streams, steps in runs:
            for _ in range(rounds):
                for protocol in protocols:
                    row = await _measure(handlers, runtimes, model, protocol, streams, steps, rate)
                    rows.append({"protocol": protocol, **row})
        return rows
    finally:
        await runtimes.stop()


#: One stream of a run: (its index, the event that lets it step, the answer counter) → its task.
#: It answers its opening request first, and steps only once the event is set.
StreamDriver = Callable[[int, asyncio.Event, list[int]], Coroutine[Any, Any, None]]


def _native_stream(
    handlers: Handlers, manifest: Manifest, streams: int, steps: int, pacing: Pacing | None
) -> StreamDriver:
    """Session streams: open, then ``steps`` pre-encoded Steps each, handed over as the bytes that
    arrived (the server registers Session with no deserializer)."""
    fields = model_fields(manifest)
    opening = open_request(manifest.name, return_tensors=fields.get("return_tensors", ()))
    inputs = step_inputs(manifest, 8)
    requests = [
        [session_step_request(seq, inputs[(seq + s) % 8]) for seq in range(1, steps + 1)] for s in range(streams)
    ]
    serialize = pb.SessionResponse.SerializeToString

    async def stream(index: int, ready: asyncio.Event, answered: list[int]) -> None:
        gate, done = (pacing.gates[index], pacing.answered[index]) if pacing else (None, None)

        async def incoming() -> AsyncIterator[Any]:
            yield opening
            await ready.wait()
            for data in requests[index]:
                if gate is not None:
                    await gate.acquire()
                yield data

        async for response in handlers.native.Session(incoming(), _Context()):
            data = response if isinstance(response, bytes) else serialize(response)
            if data[:1] == b"\x2a":
                raise RuntimeError(f"the server answered an error: {pb.SessionResponse.FromString(data)}")
            answered[0] += 1
            if done is not None and ready.is_set():  # a step's answer, not the opening's
                done.append(time.perf_counter())

    return stream


def _oip_stream(
    handlers: Handlers, manifest: Manifest, streams: int, steps: int, pacing: Pacing | None
) -> StreamDriver:
    """ModelStreamInfer streams: one sequence each, started before the clock, then ``steps`` requests,
    handed over as the bytes that arrived (the server registers this method with no deserializer);
    closed loop only."""
    if pacing is not None:
        raise ValueError("paced runs drive Session streams only")
    from loadtest import oip_load  # tritonclient: only this protocol needs it

    inputs = _random_steps(model_inputs(manifest), np.random.default_rng(0), 1)
    requests = [
        [oip_load.infer_request(manifest.name, s + 1, inputs[(t + s) % len(inputs)]) for t in range(steps)]
        for s in range(streams)
    ]

    async def stream(index: int, ready: asyncio.Event, answered: list[int]) -> None:
        async def incoming() -> AsyncIterator[Any]:
            yield oip_load.infer_request(manifest.name, index + 1, inputs[0], start=True)
            await ready.wait()
            for data in requests[index]:
                yield data
            yield oip_load.infer_request(manifest.name, index + 1, inputs[0], end=True)

        async for response in handlers.oip.ModelStreamInfer(incoming(), _Context()):
            data = serialize(response)
            if oip_load.is_error(data):
                raise RuntimeError(f"the server answered an error: {oip.ModelStreamInferResponse.FromString(data)}")
            answered[0] += 1

    return stream


async def _measure(
    handlers: Handlers, runtimes: Runtimes, model: str, protocol: str, streams: int, steps: int, rate: float = 0.0
) -> dict[str, float]:
    manifest = runtimes.get(model).model.manifest
    make = {"statestream": _native_stream, "oip": _oip_stream}[protocol]
    pacing = Pacing.of(streams) if rate else None
    stream = make(handlers, manifest, streams, steps, pacing)
    ready = asyncio.Event()
    answered = [0]
    tasks = [asyncio.create_task(stream(i, ready, answered)) for i in range(streams)]
    while answered[0] < streams:  # every stream's session opened (its first answer), before the clock
        await asyncio.sleep(0.001)
    answered[0] = 0
    cpu, loop_cpu, wall = time.process_time(), time.thread_time(), time.perf_counter()
    ready.set()
    feeder = pacing.started(rate, steps) if pacing is not None else None
    await asyncio.gather(*tasks)
    cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
    wall = time.perf_counter() - wall
    total = streams * steps
    if protocol == "oip":
        total += streams  # each sequence's ending request is a step too
    assert answered[0] == total, (answered[0], total)
    row = {
        "streams": streams,
        "steps": total,
        "cpu_us_per_step": 1e6 * cpu / total,
        "wall_us_per_step": 1e6 * wall / total,
        "loop_cpu_us_per_step": 1e6 * loop_cpu / total,
    }
    if pacing is not None and feeder is not None:
        feeder.join()
        (feeder_cpu,) = pacing.feeder_cpu
        latencies = pacing.latencies_us()
        row.update(
            rate=rate,
            steps_per_s=total / wall,
            cpu_us_per_step=1e6 * (cpu - feeder_cpu) / total,  # the server's: not the feeder's
            feeder_cpu_us_per_step=1e6 * feeder_cpu / total,
            p50_us=float(np.percentile(latencies, 50)),
            p99_us=float(np.percentile(latencies, 99)),
        )
    return row


def parser() -> Parser:
    made = Parser(prog="python -m loadtest.hotpath", description=__doc__.split("\n\n")[0])
    made.add_argument("--models-dir", type=nonempty_path, default=Path("models"))
    made.add_argument("--model", default="char_lm")
    made.add_argument(
        "--streams", type=CountList(positive_int), default=(1,), help="comma-separated stream counts, measured in turn"
    )
    made.add_argument(
        "--steps",
        type=CountList(positive_int),
        default=(200,),
        help="steps per stream, one for all or one per stream count",
    )
    made.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto", help="as statestream serve's")
    made.add_argument(
        "--protocols",
        type=NameList(PROTOCOLS),
        default="statestream",
        help="comma-separated: statestream (Session), oip (ModelStreamInfer)",
    )
    made.add_argument("--rounds", type=positive_int, default=1, help="measurements of each run, protocols alternated")
    made.add_argument(
        "--rate",
        type=paced_rate,
        default=0.0,
        help="steps/s over all streams, spread as bench's (default 0: closed loop)",
    )
    return made


def main(argv: list[str] | None = None) -> int:
    made = parser()
    args = made.parse_args(argv)
    model_folder(made, args.models_dir, args.model)
    streams, steps = args.streams, args.steps
    if len(steps) not in (1, len(streams)):
        made.error(f"--steps gives {len(steps)} counts for {len(streams)} stream counts: give one, or one each")
    runs = list(zip(streams, steps * len(streams) if len(steps) == 1 else steps, strict=True))
    protocols = args.protocols
    if args.rate and protocols != ("statestream",):
        made.error("--rate paces Session streams only: leave out --protocols")
    measured = drive(
        args.models_dir, args.model, runs, settle=True, protocols=protocols, rounds=args.rounds, rate=args.rate
    )
    for row in process.run(measured, args.event_loop):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
