"""A live call's audio chunk through the server in-process: CPU per frame of the Step path against the Run path.

``statestream bench --vad-calls`` measures whole servers, whose numbers move with the load of a
shared machine. This drives the real ``SessionServicer.Session`` handler without gRPC (as
``loadtest.hotpath`` does for plain steps): N calls at once on one event loop, each sending its
audio in chunks of 20 or 32 ms as a ``Step`` (the live-call path) or a ``Run`` (the path with
options), handed over as the bytes that arrived (the server parses them itself). The variants alternate
round by round, so the machine's drift falls on each alike, and it prints the process's CPU time
(the event loop and ONNX Runtime's thread together) per 512-sample frame, with the run/step ratio.

    python -m loadtest.vad_hotpath --calls 256 --chunks 40 --chunk-ms 20,32 --rounds 3
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from loadtest.call_audio import call_audio
from loadtest.flags import CountList
from loadtest.hotpath import _Context as HandlerContext
from loadtest.vad_calls import FRAME, RATE, vad_model_folder
from service import process
from service.api import statestream_pb2 as pb
from service.auth import Authenticator
from service.command import Parser, float_in, nonempty_path, positive_int
from service.engine import SessionEngine
from service.metrics import Metrics
from service.registry import Registry
from service.runtime import Runtimes
from service.servicers.sessions import SessionServicer
from service.session_store import SessionStore
from service.settings import EVENT_LOOPS, Settings
from service.tasks import driver_class
from service.tensors import to_proto

PATHS = ("step", "run")
AUDIO = call_audio()


def chunk_requests(path: str, chunk: int, chunks: int, offset: int) -> list[bytes]:
    """One call's ``chunks`` chunks of ``chunk`` samples (from ``offset`` in the call's audio) as Steps or Runs."""
    requests = []
    for seq in range(1, chunks + 1):
        first = (offset + (seq - 1) * chunk) % (len(AUDIO) - chunk)
        audio = pb.TensorInput(tensors=[to_proto("audio", AUDIO[first : first + chunk])])
        if path == "step":
            request = pb.SessionRequest(step=pb.Step(seq=seq, tensors=audio))
        else:
            request = pb.SessionRequest(run=pb.Run(seq=seq, max_steps=chunk // FRAME + 1, tensors=audio))
        requests.append(request.SerializeToString())
    return requests


async def measure(
    servicer: SessionServicer, model: str, path: str, calls: int, chunk: int, chunks: int
) -> dict[str, Any]:
    """``calls`` calls at once, each ``chunks`` chunks; CPU and wall time per frame answered."""
    opening = pb.SessionRequest(open=pb.OpenSession(model=model)).SerializeToString()
    requests = [chunk_requests(path, chunk, chunks, 7919 * index) for index in range(calls)]
    ready = asyncio.Event()
    frames = [0]

    async def call(index: int) -> None:
        async def incoming() -> AsyncIterator[Any]:
            yield opening
            await ready.wait()
            for data in requests[index]:
                yield data

        async for response in servicer.Session(incoming(), HandlerContext()):
            answer = pb.SessionResponse.FromString(response) if isinstance(response, bytes) else response
            kind = answer.WhichOneof("response")
            if kind == "error":
                raise RuntimeError(f"the server answered an error: {answer.error}")
            frames[0] += len(answer.result.outputs) if kind == "result" else kind == "run_output"

    tasks = [asyncio.create_task(call(i)) for i in range(calls)]
    await asyncio.sleep(0.05)
    cpu, wall = time.process_time(), time.perf_counter()
    ready.set()
    await asyncio.gather(*tasks)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    want = calls * (chunks * chunk // FRAME)
    if frames[0] != want:
        raise RuntimeError(f"{frames[0]} frames answered, {want} sent")
    return {
        "path": path,
        "calls": calls,
        "chunk_ms": 1000 * chunk / RATE,
        "frames": want,
        "cpu_us_per_frame": 1e6 * cpu / want,
        "wall_us_per_frame": 1e6 * wall / want,
    }


async def compare(
    models_dir: Path, model: str, calls: int, chunk_ms: list[float], chunks: int, rounds: int, *, settle: bool = False
) -> list[dict[str, Any]]:
    """Every (chunk size, path) measured once per round, the paths alternating; one server for all."""
    settings = Settings(models_dir=models_dir, port=0, log_session_events_per_s=0, max_sessions_per_caller=100_000)
    metrics = Metrics()
    runtimes = Runtimes(Registry.from_folder(models_dir, settings, driver_class), settings, metrics)
    servicer = SessionServicer(
        SessionEngine(SessionStore(runtimes, settings, metrics), settings), metrics, Authenticator(None)
    )
    runtimes.start()
    if settle:
        process.settle_heap()
    rows = []
    try:
        for round_index in range(rounds):
            for ms in chunk_ms:
                order = PATHS if round_index % 2 == 0 else PATHS[::-1]
                for path in order:
                    row = await measure(servicer, model, path, calls, round(RATE * ms / 1000), chunks)
                    rows.append({"round": round_index + 1, **row})
    finally:
        await runtimes.stop()
    return rows


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Per chunk size: the median CPU per frame of each path over the rounds, and their ratio."""
    lines = []
    for ms in sorted({row["chunk_ms"] for row in rows}):
        median = {
            path: statistics.median(r["cpu_us_per_frame"] for r in rows if r["chunk_ms"] == ms and r["path"] == path)
            for path in PATHS
        }
        lines.append(
            f"{ms:g} ms chunks: CPU per frame, median of {len(rows) // (2 * len({r['chunk_ms'] for r in rows}))} "
            f"rounds: step {median['step']:.0f} us, run {median['run']:.0f} us, run/step {median['run'] / median['step']:.2f}x"
        )
    return lines


#: The longest chunk, in ms: half the call's audio, which a chunk is cut from.
MAX_CHUNK_MS = 1000 * len(AUDIO) / RATE / 2


def parser() -> Parser:
    made = Parser(prog="python -m loadtest.vad_hotpath", description=__doc__.split("\n\n")[0])
    made.add_argument("--models-dir", type=nonempty_path, default=Path("models"))
    made.add_argument("--model", default="silero_vad")
    made.add_argument("--calls", type=positive_int, default=256, help="calls at once")
    made.add_argument("--chunks", type=positive_int, default=40, help="chunks per call and measurement")
    made.add_argument(
        "--chunk-ms",
        type=CountList(float_in(1000 / RATE, MAX_CHUNK_MS)),
        default=(20.0, 32.0),
        help="comma-separated chunk lengths, measured in turn",
    )
    made.add_argument("--rounds", type=positive_int, default=3, help="rounds of every chunk size and path")
    made.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto", help="as statestream serve's")
    return made


def main(argv: list[str] | None = None) -> int:
    made = parser()
    args = made.parse_args(argv)
    vad_model_folder(made, args.models_dir, args.model)
    chunk_ms = list(args.chunk_ms)
    short = [ms for ms in chunk_ms if args.chunks * round(RATE * ms / 1000) < FRAME]
    if short:
        made.error(f"--chunks {args.chunks} of --chunk-ms {short[0]:g} fill no {1000 * FRAME / RATE:g} ms frame")
    rows = process.run(
        compare(args.models_dir, args.model, args.calls, chunk_ms, args.chunks, args.rounds, settle=True),
        args.event_loop,
    )
    for row in rows:
        print(json.dumps(row))
    for line in summary(rows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
