"""``python -m loadtest.instructions``: what a step executes, counted by valgrind instead of timed.

On this shared two-core machine a few percent of CPU time drowns in noise; an instruction count
barely moves. Each variant of ``loadtest.durable_hotpath`` (the real Session handler in-process;
a Redis store for the variants with one) runs under callgrind at two step counts; the difference
over the extra steps is the instructions of a step, start-up and shut-down cancelled. Counted:
the user-space instructions of the event loop's thread (statestream's handler, scheduler and
store client, and the harness's streams, alike in every variant). Not counted: the kernel's work
(system calls), cache misses, stalls, other threads and processes (ORT's thread, Redis). It says
what the code does a step, not what a step costs on a busy machine. The counts repeat from run
to run, so two revisions compare by running it in a worktree of each.

    python -m loadtest.instructions --variants none,K=16 --streams 256 --steps 10,40
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from loadtest.durable_hotpath import MAX_EVERY, MAX_SPREAD, VARIANTS, VariantList
from loadtest.flags import CountList, model_folder
from loadtest.servers import child_environment, stopping_children_on_sigterm
from service import command
from service.command import CommandError, Parser, int_in, nonempty_path, positive_int
from service.settings import EVENT_LOOPS

#: The fewest steps the two runs may differ by: a run's start-up varies by a few million
#: instructions (a Redis polled until it listens, a loop that waits): over 2,000 steps, at most a
#: few thousand a step (1-2 %); over the default 256 x 30, a few hundred.
MIN_EXTRA_STEPS = 2_000


class PerStep(NamedTuple):
    """Instructions a step of one variant on the event loop's thread."""

    variant: str
    loop: float


def main_thread_count(folder: Path) -> int:
    """The main thread's count of what callgrind wrote to ``folder`` (``--separate-threads=yes``: one
    file a thread, the main thread's ending ``-01``). The other threads are left out: the ORT
    thread computes the model alike in every variant, and some threads' start-up work varies from
    run to run by far more than a variant's difference."""
    found = sorted(folder.glob("callgrind.out.*-01"))
    if len(found) != 1:
        raise CommandError(f"callgrind wrote no count for one main thread in {folder}")
    for line in found[0].read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise CommandError(f"{found[0]} holds no instruction count")


def count(argv: Sequence[str], environ: dict[str, str] | None = None) -> int:
    """Runs ``argv`` under callgrind and returns its main thread's instruction count; a CommandError if it fails."""
    with tempfile.TemporaryDirectory(prefix="statestream-callgrind-") as folder:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                f"--callgrind-out-file={folder}/callgrind.out.%p",
                *argv,
            ],
            env=environ,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            said = [line for line in done.stderr.splitlines() if not line.startswith("==")]
            raise CommandError(f"{' '.join(argv[:3])} failed under valgrind: {said[-1] if said else done.returncode}")
        return main_thread_count(Path(folder))


def per_step(variant: str, low: int, high: int, extra_steps: int) -> PerStep:
    """The instructions of the ``extra_steps`` the ``high`` run made beyond the ``low`` one, a step."""
    return PerStep(variant, (high - low) / extra_steps)


def harness(variant: str, steps: int, args: Sequence[str]) -> list[str]:
    """The harness's command line: one round of one variant, ``steps`` steps a stream."""
    return [
        sys.executable, "-m", "loadtest.durable_hotpath", "--variants", variant, "--rounds", "1",
        "--steps", str(steps), *args,
    ]  # fmt: skip


def measure(
    variants: Sequence[str], steps: tuple[int, int], streams: int, args: Sequence[str], jobs: int
) -> list[PerStep]:
    """Every variant at both step counts, ``jobs`` runs at a time (counts do not mind sharing the cores)."""
    runs = [(variant, n) for variant in variants for n in steps]
    environ = child_environment({})
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        counted = list(pool.map(lambda run: count(harness(run[0], run[1], args), environ), runs))
    by_run = dict(zip(runs, counted, strict=True))
    low, high = steps
    return [per_step(v, by_run[v, low], by_run[v, high], streams * (high - low)) for v in variants]


def table(rows: Sequence[PerStep]) -> str:
    first = rows[0]
    lines = [f"| variant | loop thread, instructions a step | − {first.variant}'s |", "|---|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row.variant} | {row.loop:,.0f} | {row.loop - first.loop:+,.0f} ({row.loop / first.loop - 1:+.1%}) |"
        )
    return "\n".join(lines)


def parser() -> Parser:
    made = Parser(prog="python -m loadtest.instructions", description=__doc__.split("\n\n")[0])
    made.add_argument("--models-dir", type=nonempty_path, default=Path("models"))
    made.add_argument("--model", default="lstm256")
    made.add_argument(
        "--variants",
        type=VariantList(int_in(1, MAX_EVERY)),
        default=VARIANTS,
        help=f"comma-separated, each none or K=N (default {','.join(VARIANTS)})",
    )
    made.add_argument("--streams", type=int_in(1, 4096), default=256)
    made.add_argument(
        "--steps",
        type=CountList(int_in(1, 10_000)),
        default="10,40",
        metavar="LOW,HIGH",
        help="the two runs' steps a stream; a step's count is their difference over the extra steps",
    )
    made.add_argument("--spread", type=int_in(0, MAX_SPREAD), default=16, help="as durable_hotpath's (default 16)")
    made.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto", help="as statestream serve's")
    made.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1, help="runs at a time (default: cores)")
    made.add_argument("--json", action="store_true", help="one JSON object a variant instead of the table")
    return made


@stopping_children_on_sigterm
def main(argv: Sequence[str] | None = None) -> int:
    made = parser()
    args = made.parse_args(argv)
    model_folder(made, args.models_dir, args.model)
    if len(args.steps) != 2 or args.steps[0] >= args.steps[1]:
        made.error(f"--steps takes two counts, the first below the second (got {','.join(map(str, args.steps))})")
    extra = args.streams * (args.steps[1] - args.steps[0])
    if extra < MIN_EXTRA_STEPS:
        made.error(
            f"--streams {args.streams} × ({args.steps[1]} − {args.steps[0]}) steps is {extra} steps between the runs; "
            f"give at least {MIN_EXTRA_STEPS:,} (the start-up's own variation would swamp fewer)"
        )
    if shutil.which("valgrind") is None:
        raise CommandError("valgrind is not installed", hint="install it (Debian: apt-get install valgrind)")
    passed = [
        "--streams", str(args.streams), "--spread", str(args.spread), "--models-dir", str(args.models_dir.resolve()),
        "--model", args.model, "--event-loop", args.event_loop,
    ]  # fmt: skip
    rows = measure(args.variants, args.steps, args.streams, passed, args.jobs)
    if args.json:
        for row in rows:
            print(json.dumps(row._asdict()))
    else:
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(command.run(main, debug=command.debug_requested(sys.argv)))
