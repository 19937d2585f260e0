"""What durability costs a step, without gRPC: CPU per step with and without a session store.

The real Session handler in-process (loadtest/hotpath.py's streams) on a server with a Redis
session store started for the run, checkpointing every K acknowledged steps, beside the same
server without a store, alternated round by round so a noisy machine's drift falls on every
variant alike. It prints the server's CPU per step and the Redis server's (on 2 cores both
compete with the load): a checkpoint's cost is ``K=1`` minus ``none``, measured side by side.
In lockstep (the default) a batch's checkpoints are one command of all the streams; over gRPC
steps arrive spread out. ``--spread J`` holds each request back 0 to J loop turns, at random
(seeded), so batches and checkpoint commands come smaller, as there.

    python -m loadtest.durable_hotpath --streams 256 --steps 40 --rounds 3 [--spread 16]
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from loadtest.flags import model_folder
from loadtest.hotpath import Handlers, _measure
from loadtest.scale import redis_server
from loadtest.servers import stopping_children_on_sigterm
from service import command, process
from service.auth import Authenticator
from service.command import InRange, OutOfRange, Parser, int_in, nonempty_path, positive_int
from service.engine import SessionEngine
from service.metrics import Metrics
from service.registry import Registry
from service.runtime import Runtimes
from service.server import connect_session_store
from service.servicers.inference import InferenceServicer
from service.servicers.sessions import SessionServicer
from service.session_store import SessionStore
from service.settings import EVENT_LOOPS, Settings
from service.tasks import driver_class

#: The variants of a round by default: no store, then a checkpoint every K acknowledged steps.
VARIANTS = ("none", "K=1", "K=16")
#: The largest K a variant takes (``K=1000000``: a store connected, checkpoints only at the end).
MAX_EVERY = 1_000_000


@dataclass(frozen=True)
class VariantList:
    """An argparse type: ``none,K=16``, each ``none`` (no store) or ``K=N`` (a checkpoint every N steps, N in ``range``)."""

    range: InRange[int]

    def __call__(self, text: str) -> tuple[str, ...]:
        variants = tuple(part.strip() for part in text.split(","))
        for variant in variants:
            if variants.count(variant) > 1:
                raise OutOfRange(f"{variant} is given twice")
            if variant == "none":
                continue
            every = variant.removeprefix("K=")
            if every == variant:
                raise OutOfRange(f"{variant!r} is neither 'none' nor K=N (a checkpoint every N steps)")
            try:
                self.range(every)
            except OutOfRange as exc:
                raise OutOfRange(f"{variant}: {exc}") from None
        return variants


class _Spread:
    """A Session servicer whose streams' requests each come 0 to ``turns`` turns of the loop late."""

    def __init__(self, servicer: SessionServicer, turns: int) -> None:
        self.servicer, self.turns, self.random = servicer, turns, random.Random(0)

    def Session(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        return self.servicer.Session(self._late(requests), context)

    async def _late(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            for _ in range(self.random.randint(0, self.turns)):
                await asyncio.sleep(0)
            yield request


def process_cpu_s(pid: int) -> float:
    """A process's user + system CPU time so far (/proc/PID/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure_variant(
    variant: str, models_dir: Path, model: str, store_url: str, streams: int, steps: int, spread: int = 0
) -> dict[str, float]:
    every = None if variant == "none" else int(variant.removeprefix("K="))
    settings = Settings(
        models_dir=models_dir,
        port=0,
        log_session_events_per_s=0,
        session_store=store_url if every is not None else "",
        checkpoint_every=every,
    )
    metrics = Metrics()
    runtimes = Runtimes(Registry.from_folder(models_dir, settings, driver_class), settings, metrics)
    store = SessionStore(runtimes, settings, metrics)
    durable = await connect_session_store(settings, store, metrics)
    engine = SessionEngine(store, settings, durable)
    auth = Authenticator(None)
    native = SessionServicer(engine, metrics, auth)
    if spread:
        native = cast(SessionServicer, _Spread(native, spread))
    handlers = Handlers(native, InferenceServicer(engine, metrics, auth))
    runtimes.start()
    try:
        row = await _measure(handlers, runtimes, model, "statestream", streams, steps)
        samples = [s for m in metrics.checkpoint_seconds.collect() for s in m.samples]  # one a checkpoint command
        commands = next((s.value for s in samples if s.name.endswith("_count")), 0.0)
        return {**row, "checkpoint_commands": commands}
    finally:
        await runtimes.stop()
        if durable is not None:
            await durable.close()


async def drive(
    models_dir: Path,
    model: str,
    store_url: str,
    redis_pid: int,
    streams: int,
    steps: int,
    rounds: int,
    spread: int = 0,
    variants: Sequence[str] = VARIANTS,
) -> list[dict[str, Any]]:
    """Every variant ``rounds`` times, alternated; the server's and Redis's CPU per step of each."""
    rows = []
    for round_index in range(rounds):
        for variant in variants:
            redis_cpu = process_cpu_s(redis_pid)
            row = await _measure_variant(variant, models_dir, model, store_url, streams, steps, spread)
            redis_us = 1e6 * (process_cpu_s(redis_pid) - redis_cpu) / row["steps"]
            rows.append({"round": round_index + 1, "variant": variant, **row, "redis_cpu_us_per_step": redis_us})
    return rows


#: The most loop turns ``--spread`` holds a request back: more is a typo, and a run that never ends.
MAX_SPREAD = 10_000


def parser() -> Parser:
    made = Parser(prog="python -m loadtest.durable_hotpath", description=__doc__.split("\n\n")[0])
    made.add_argument("--models-dir", type=nonempty_path, default=Path("models"))
    made.add_argument("--model", default="lstm256")
    made.add_argument("--streams", type=positive_int, default=256)
    made.add_argument("--steps", type=positive_int, default=40, help="steps per stream in each measurement")
    made.add_argument("--rounds", type=positive_int, default=3, help="measurements of each variant, alternated")
    made.add_argument(
        "--spread", type=int_in(0, MAX_SPREAD), default=0, help="hold each request back 0 to J loop turns, at random"
    )
    made.add_argument(
        "--variants",
        type=VariantList(int_in(1, MAX_EVERY)),
        default=VARIANTS,
        help=f"comma-separated, each none or K=N (default {','.join(VARIANTS)})",
    )
    made.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto", help="as statestream serve's")
    return made


@stopping_children_on_sigterm
def main(argv: list[str] | None = None) -> int:
    made = parser()
    args = made.parse_args(argv)
    model_folder(made, args.models_dir, args.model)
    with redis_server() as (store_url, redis_pid):
        measured = drive(
            args.models_dir,
            args.model,
            store_url,
            redis_pid,
            args.streams,
            args.steps,
            args.rounds,
            args.spread,
            args.variants,
        )
        for row in process.run(measured, args.event_loop):
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(command.run(main, debug=command.debug_requested(sys.argv)))
