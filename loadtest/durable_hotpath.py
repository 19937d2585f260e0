"""What durability costs a step, without gRPC: CPU per step with and without a session store.

``statestream bench --scale`` compares whole servers, whose steps/s move by ±20 % on a shared
machine. This drives the real Session handler in-process (loadtest/hotpath.py's streams) on a
server with a Redis session store started for the run, checkpointing every K acknowledged
steps, beside the same server without a store, alternated round by round so a noisy machine's
drift falls on every variant alike. It prints the server's CPU per step and the Redis server's
(on a 2-core machine both compete with the load), so the cost of a checkpoint can be read as a
difference measured side by side: ``K=1`` minus ``none``.

    python -m loadtest.durable_hotpath --streams 256 --steps 40 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from loadtest.hotpath import Handlers, _measure
from loadtest.scale import redis_server
from service import process
from service.auth import Authenticator
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

#: The variants of a round: no store, then a checkpoint every K acknowledged steps.
VARIANTS = ("none", "K=1", "K=16")


def process_cpu_s(pid: int) -> float:
    """A process's user + system CPU time so far (/proc/PID/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure_variant(
    variant: str, models_dir: Path, model: str, store_url: str, streams: int, steps: int
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
    handlers = Handlers(SessionServicer(engine, metrics, auth), InferenceServicer(engine, metrics, auth))
    runtimes.start()
    try:
        return await _measure(handlers, runtimes, model, "statestream", streams, steps)
    finally:
        await runtimes.stop()
        if durable is not None:
            await durable.close()


async def drive(
    models_dir: Path, model: str, store_url: str, redis_pid: int, streams: int, steps: int, rounds: int
) -> list[dict[str, Any]]:
    """Every variant ``rounds`` times, alternated; the server's and Redis's CPU per step of each."""
    rows = []
    for round_index in range(rounds):
        for variant in VARIANTS:
            redis_cpu = process_cpu_s(redis_pid)
            row = await _measure_variant(variant, models_dir, model, store_url, streams, steps)
            redis_us = 1e6 * (process_cpu_s(redis_pid) - redis_cpu) / row["steps"]
            rows.append({"round": round_index + 1, "variant": variant, **row, "redis_cpu_us_per_step": redis_us})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.durable_hotpath", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model", default="lstm256")
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40, help="steps per stream in each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each variant, alternated")
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto", help="as statestream serve's")
    args = parser.parse_args(argv)
    if min(args.streams, args.steps, args.rounds) < 1:
        parser.error("--streams, --steps and --rounds must each be at least 1")
    with redis_server() as (store_url, redis_pid):
        measured = drive(args.models_dir, args.model, store_url, redis_pid, args.streams, args.steps, args.rounds)
        for row in process.run(measured, args.event_loop):
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
