"""Where a paced step's CPU goes, library by library: ``perf`` samples of a server under paced load.

The bench's thread split says which thread spent a step's CPU, not on what. This starts each
server the bench compares (echo, the bare server, statestream) in turn, drives it with the
bench's own load generator (N streams, R messages a second spread over the interval), samples
it meanwhile with ``perf record`` (the kernel included, where perf may read it), and prints each
library's share of the samples as µs per step: the kernel, CPython, gRPC core, ONNX Runtime...
Sampling costs the server CPU of its own, so compare the rows with each other, not with the bench.
docs/benchmarks.md has what it measured.

    python -m loadtest.profile_paced --variants echo,minimal,statestream --rate 1200
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

from loadtest.bench import server_variants
from loadtest.cells import Cell, Plan, measure
from loadtest.flags import NameList, model_folder
from loadtest.servers import stopping_children_on_sigterm
from service import command
from service.command import EXIT_USAGE, CommandError, Parser, float_in, int_in, nonempty_path, positive_int
from service.contract import Manifest

#: The columns, in order; a shared object that matches none of them is ``other``.
LIBRARIES = ("kernel", "python", "grpc", "onnxruntime", "libc", "numpy", "protobuf", "event loop", "other")
#: (column, what its shared objects' names contain), first match wins.
_MATCHES = (
    ("kernel", ("[kernel",)),
    ("python", ("libpython",)),
    ("grpc", ("cygrpc",)),
    ("onnxruntime", ("onnxruntime",)),
    ("libc", ("libc.so", "libc-")),
    ("numpy", ("_multiarray", "openblas", "_umath")),
    ("protobuf", ("_message.", "upb")),
    ("event loop", ("uvloop", "loop.cpython", "_asyncio")),
)
VARIANTS = ("echo", "minimal", "statestream")
_ROW = re.compile(r"^\s*([\d.]+)%\s+(.+?)\s*$")


def library_of(shared_object: str) -> str:
    """The column a shared object's samples count in."""
    for library, parts in _MATCHES:
        if any(part in shared_object for part in parts):
            return library
    return "other"


def shares(report: str) -> dict[str, float]:
    """Each library's share (0-1) of the samples, from ``perf report --sort dso --stdio``'s text."""
    found = dict.fromkeys(LIBRARIES, 0.0)
    for line in report.splitlines():
        match = _ROW.match(line)
        if match and not line.lstrip().startswith("#"):
            found[library_of(match.group(2))] += float(match.group(1)) / 100
    return found


@dataclass
class Profile:
    variant: str
    rate: float
    steps_per_s: float
    cpu_us_per_step: float
    us_per_step: dict[str, float]  # per library


def _perf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["perf", *args], capture_output=True, text=True, timeout=120)


def profile(variant: str, args: argparse.Namespace, folder: Path) -> Profile:
    """One server under the load, sampled for ``--duration-s`` after ``--warmup-s``: the bench's own
    server command and measurement of a paced row (``cells.measure``)."""
    plan = Plan(streams=(args.streams,), warmup_s=args.warmup_s, duration_s=args.duration_s, rate=args.rate)
    variants = {v.name: v for v in server_variants(plan, args.models_dir, args.model)}
    manifest = Manifest.load(args.models_dir / args.model)
    data = folder / f"{variant}.data"
    sampled: list[subprocess.CompletedProcess[str]] = []
    with variants[variant].server() as server:

        def sample() -> None:  # over the measured window
            time.sleep(args.warmup_s)
            record = ["record", "-F", str(args.frequency), "-p", str(server.pid), "-o", str(data), "--"]
            sampled.append(_perf(*record, "sleep", str(args.duration_s)))

        sampler = threading.Thread(target=sample, name="perf")
        sampler.start()
        result = measure(Cell(variant, variant, "stream", args.streams), server, plan, manifest)
        sampler.join()
    if sampled[0].returncode != 0:
        said = (sampled[0].stderr.strip().splitlines() or ["no message"])[-1]
        raise CommandError(f"perf record failed on the {variant} server: {said}", EXIT_USAGE)
    report = _perf("report", "-i", str(data), "--sort", "dso", "--stdio")
    cpu_us = result.server_cpu_s / max(1, result.steps) * 1e6
    return Profile(
        variant,
        args.rate,
        result.steps / args.duration_s,
        cpu_us,
        {library: share * cpu_us for library, share in shares(report.stdout).items()},
    )


def format_table(profiles: Sequence[Profile]) -> str:
    head = f"{'server':<12} {'msg/s':>7} {'CPU us/step':>11} " + " ".join(f"{name:>11}" for name in LIBRARIES)
    lines = [head, "-" * len(head)]
    for p in profiles:
        cells = " ".join(f"{p.us_per_step[name]:>11.0f}" for name in LIBRARIES)
        lines.append(f"{p.variant:<12} {p.steps_per_s:>7.0f} {p.cpu_us_per_step:>11.0f} {cells}")
    return "\n".join(lines)


def parser() -> Parser:
    made = Parser(prog="python -m loadtest.profile_paced", description=__doc__.split("\n\n")[0])
    made.add_argument("--rate", type=float_in(1, 1_000_000), required=True, help="messages a second, all streams")
    made.add_argument(
        "--variants", type=NameList(VARIANTS), default=",".join(VARIANTS), help="comma-separated, in that order"
    )
    made.add_argument("--streams", type=positive_int, default=256, help="streams (default 256)")
    made.add_argument("--models-dir", type=nonempty_path, default=Path("models"))
    made.add_argument("--model", default="lstm256")
    made.add_argument("--duration-s", type=float_in(0.5, 600), default=4.0, help="seconds sampled (default 4)")
    made.add_argument("--warmup-s", type=float_in(0, 600), default=1.5, help="seconds before (default 1.5)")
    made.add_argument("--frequency", type=int_in(1, 20_000), default=1999, help="samples a second (default 1999)")
    return made


@stopping_children_on_sigterm
def main(argv: Sequence[str] | None = None) -> int:
    def run() -> int:
        made = parser()
        args = made.parse_args(argv)
        variants = list(args.variants)
        model_folder(made, args.models_dir, args.model)
        if shutil.which("perf") is None:
            raise CommandError("perf is not installed", hint="install Linux's perf tool (Debian: linux-perf)")
        with TemporaryDirectory(prefix="profile-paced-") as folder:
            print(format_table([profile(v, args, Path(folder)) for v in variants]))
        return 0

    return command.run(run)


if __name__ == "__main__":
    raise SystemExit(main())
