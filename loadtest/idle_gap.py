"""What an idle gap costs any code on this machine: the control for a paced step's CPU.

Under paced load a server's event loop sleeps between steps, and a step run after a sleep costs
more CPU than the same step back to back: the loop's wake-up, and caches, TLB and branch
predictors that other work took over meanwhile. ``loadtest.hotpath --rate`` measures that for
statestream's own step. This measures it for a fixed workload with no statestream in it, paced
the same way (``loadtest.pacing``), so the two can be read side by side: a step that grows by
the same factor as the workload pays the machine's cost of idling, not a cost of its own.

The workloads: ``none`` (the wake-up alone), ``python`` (a dict walk), ``numpy`` (a
matrix-vector product over 1 MiB of weights, the size of ``lstm256``'s) and ``both``.

    python -m loadtest.idle_gap --rates 0,2400,600 --rounds 2
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np

from loadtest.flags import CountList, NameList
from loadtest.pacing import Pacing, paced_rate
from service import process
from service.command import Parser, positive_int
from service.settings import EVENT_LOOPS

_WEIGHTS = np.random.default_rng(0).standard_normal((1024, 256)).astype(np.float32)  # 1 MiB
_VECTOR = np.ones(256, np.float32)
_TABLE = {f"k{i}": i for i in range(200)}


def _python() -> None:
    total = 0
    for i in range(300):
        total += _TABLE[f"k{i % 200}"]


def _numpy() -> None:
    _WEIGHTS @ _VECTOR


def _both() -> None:
    _python()
    _numpy()


WORKLOADS: dict[str, Callable[[], None]] = {"none": lambda: None, "python": _python, "numpy": _numpy, "both": _both}


async def measure(workload: str, rate: float, steps: int) -> dict[str, float | str]:
    """The loop thread's CPU per step, and the workload's share of it: back to back (rate 0) or
    each step after its release at ``rate`` a second."""
    work = WORKLOADS[workload]
    pacing = Pacing.of(1) if rate else None
    gate = pacing.gates[0] if pacing is not None else None
    worked = 0.0
    started = time.thread_time()
    feeder = pacing.started(rate, steps) if pacing is not None else None
    for _ in range(steps):
        if gate is not None:
            await gate.acquire()
        before = time.thread_time()
        work()
        worked += time.thread_time() - before
    used = time.thread_time() - started
    if feeder is not None:
        feeder.join()
    return {
        "workload": workload,
        "rate": rate,
        "steps": steps,
        "loop_cpu_us_per_step": 1e6 * used / steps,
        "work_cpu_us_per_step": 1e6 * worked / steps,
    }


async def measure_all(
    workloads: list[str], rates: list[float], steps: int, rounds: int
) -> list[dict[str, float | str]]:
    """Every workload at every rate, ``rounds`` times over, so a drifting machine falls on all alike."""
    return [await measure(workload, rate, steps) for _ in range(rounds) for workload in workloads for rate in rates]


def parser() -> Parser:
    made = Parser(prog="python -m loadtest.idle_gap", description=__doc__.split("\n\n")[0])
    made.add_argument(
        "--workloads",
        type=NameList(tuple(WORKLOADS)),
        default=",".join(WORKLOADS),
        help="comma-separated, in that order",
    )
    made.add_argument(
        "--rates",
        type=CountList(paced_rate),
        default=(0.0, 2400.0, 600.0),
        help="comma-separated steps/s (0: back to back)",
    )
    made.add_argument("--steps", type=positive_int, default=2000, help="steps per measurement")
    made.add_argument("--rounds", type=positive_int, default=2, help="times each measurement is repeated, in turn")
    made.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto", help="as statestream serve's")
    return made


def main(argv: list[str] | None = None) -> int:
    made = parser()
    args = made.parse_args(argv)
    workloads = list(args.workloads)
    rates = list(args.rates)
    for row in process.run(measure_all(workloads, rates, args.steps, args.rounds), args.event_loop):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
