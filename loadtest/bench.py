"""``statestream bench``: the serving benchmark, every variant measured side by side in one run.

It starts each server variant on 127.0.0.1 as a child process (stopped by its PID at the end,
whatever happens: SIGTERM too, ``stopping_children_on_sigterm``), drives it from separate client
processes (``loadtest.load``), and prints one table and the targets as ratios measured in this
run. The variants are listed in ``DESCRIPTION`` (the ``--help`` text) and explained in
docs/benchmarks.md; ``--scale`` measures the scale-out rows instead (``loadtest.scale``). The machine is shared and noisy, so the cells are measured
interleaved and each is the median of ``--repeats`` runs.

    python -m loadtest.bench [--quick] [--json] [--models-dir models] [--model char_lm] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from loadtest.cells import BY_THREAD, STREAMS_QUICK, Cell, Plan, Row, Target, measure, median, summarize
from loadtest.flags import CountList, NameList, model_folder
from loadtest.load import LoadResult, create_sessions
from loadtest.machine import NoiseGuard
from loadtest.ortrate import OrtBench
from loadtest.scale import run_scale, scale_targets
from loadtest.servers import (
    THREAD_BUCKETS,
    ServerProcess,
    ServerVariant,
    echo_command,
    minimal_command,
    serve_command,
    stopping_children_on_sigterm,
)
from loadtest.vad_calls import VAD_MODEL, bench_vad_calls, vad_model_folder
from service import command, grpc_environment
from service.command import EXIT_USAGE, CommandError, Parser, float_in, int_in, nonempty_path
from service.contract import Manifest

#: ``statestream bench --help``: what it runs and what each variant stands for.
DESCRIPTION = """The serving benchmark: every variant measured side by side in one run.

It starts each server variant on 127.0.0.1 as a child process (stopped at the end, whatever
happens), drives it with closed-loop load from separate client processes, and prints one table
and the targets as ratios measured in this run. Variants:
  echo         the same proto and message sizes with no model: the ceiling of a Python server
  naive        --scheduler none, one batch-1 ONNX Runtime call per step: the baseline
  minimal      a bare grpc.aio server, same proto, state in the handler, one batch-1 ORT call
               per step, no sessions or scheduler: what statestream's machinery costs. It
               stands for a user's own server: asyncio's loop, gRPC core's settings as given
               (GRPC_EXPERIMENTS=-event_engine_listener in the environment gives it statestream's)
  statestream  the batching scheduler, at N = 1, 64, 256, 1024 streams
  chunked      16 characters per message
  multiplexed  256 sessions per message
  ort          the model alone, at the batch shapes of those two (and batch 256 for the
               residual target); its CPU column is ORT's own CPU per step
  memory       RSS growth per idle session against its raw state bytes
  oip          (only when named in --variants) the statestream server driven over the Open
               Inference Protocol instead: one ModelStreamInfer sequence per stream, requests
               built with tritonclient's generated classes; same N as the statestream rows
Each cell is the median of --repeats runs, measured interleaved (the machine is noisy).
--rate R offers every row the same paced load instead (R messages a second over its streams,
--arrivals spread or together), so CPU per step and latency compare at equal load. Then the
judged targets are issue 26's (beside the memory one): statestream's p50 <= the bare server's,
its p99 <= 0.5x and its CPU per step <= 0.9x, with echo's ratio printed as the floor; meant at
25, 50 and 75 % of the bare server's closed-loop capacity, and not judged where a server fell
behind the rate.
Noise guard (every mode): the machine's load average (/proc/loadavg) is printed before and
after the run with the CPU time stolen by the hypervisor in between (/proc/stat's steal). When
the 1-min load before the run is above half the machine's cores, every target reads "not
judged: machine busy" instead of met or missed (--json: "verdict", "judged", "met": null, and
a "machine" row): targets are judged only on a quiet machine."""


def cells_of(plan: Plan) -> list[Cell]:
    cells: list[Cell] = []
    for streams in plan.streams:
        cells.append(Cell("echo", "echo", "stream", streams))
        cells.append(Cell("naive", "naive", "stream", streams))
        cells.append(Cell("minimal", "minimal", "stream", streams))
        cells.append(Cell("statestream", "statestream", "stream", streams))
        cells.append(Cell("oip", "statestream", "oip", streams))
    cells.append(Cell("chunked", "statestream", "stream", plan.chunk_streams, chunk=plan.chunk))
    cells.append(
        Cell(
            "multiplexed",
            "statestream",
            "multiplex",
            plan.per_message * plan.multiplex_streams,
            per_message=plan.per_message,
        )
    )
    return [cell for cell in cells if cell.variant in plan.variants]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_memory(models_dir: Path, model: str, sessions: int) -> dict[str, Any]:
    """RSS growth of a fresh server per idle session (CreateSession), against the raw state bytes."""
    state_bytes = Manifest.load(models_dir / model).state_bytes
    with ServerProcess("memory", serve_command(models_dir, "batched", ("--grace-s", "1"))) as server:
        create_sessions(server.target, model, min(1000, sessions))  # warm: first-use allocations
        time.sleep(0.5)
        before = server.rss_bytes()
        made = create_sessions(server.target, model, sessions)
        time.sleep(0.5)
        after = server.rss_bytes()
    per_session = (after - before) / made
    return {
        "kind": "memory",
        "variant": "memory",
        "sessions": made,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "rss_per_session_bytes": round(per_session),
        "state_bytes_per_session": state_bytes,
        "ratio": round(per_session / state_bytes, 3),
    }


def targets_of(rows: list[Row], memory: dict[str, Any] | None, plan: Plan) -> list[Target]:
    def find(variant: str, streams: int | None = None) -> Row | None:
        for row in rows:
            if row.variant == variant and (streams is None or row.streams == streams):
                return row
        return None

    targets: list[Target] = []
    if plan.rate:
        # Under paced load the rates compare nothing (every row answers what the schedule sends),
        # and CPU per message depends on how requests arrive (echo's is 1.6-1.9x higher spread
        # than together, docs/benchmarks.md), so a residual against a paced echo would flatter:
        # only issue 26's paced targets against the bare server are judged.
        return _paced_targets(find, plan) + _memory_targets(memory)
    common = [n for n in plan.streams if n <= 256]
    at = max(common) if common else max(plan.streams)
    echo, naive, ours = find("echo", at), find("naive", at), find("statestream", at)
    if echo and naive and ours:
        targets.append(
            Target(
                f"statestream msg/s / echo msg/s at {at} streams",
                ours.messages_per_s / echo.messages_per_s,
                0.9,
                True,
                f"{ours.messages_per_s:.0f} / {echo.messages_per_s:.0f}",
            )
        )
        targets.append(
            Target(
                f"statestream steps/s / naive steps/s at {at} streams",
                ours.steps_per_s / naive.steps_per_s,
                3.0,
                True,
                f"{ours.steps_per_s:.0f} / {naive.steps_per_s:.0f}",
            )
        )
        targets.append(
            Target(
                f"statestream p99 / echo p99 at {at} streams",
                ours.p99_ms / echo.p99_ms,
                1.5,
                False,
                f"{ours.p99_ms:.2f} ms / {echo.p99_ms:.2f} ms",
            )
        )
    lone, lone_naive = find("statestream", 1), find("naive", 1)
    if lone and lone_naive:
        targets.append(
            Target(
                "statestream p50 / naive p50 at 1 stream",
                lone.p50_ms / lone_naive.p50_ms,
                1.1,
                False,
                f"{lone.p50_ms:.3f} ms / {lone_naive.p50_ms:.3f} ms",
            )
        )
    targets += _minimal_targets(find)
    targets += _oip_targets(find, plan)
    residual = _residual_target(find, _find_ort(rows, RESIDUAL_STREAMS, 1))
    if residual is not None:
        targets.append(residual)
    for variant, (batch, steps) in (
        ("chunked", (plan.chunk_streams, plan.chunk)),
        ("multiplexed", (min(plan.per_message, 256), 1)),
    ):
        row, ort = find(variant), _find_ort(rows, batch, steps)
        if row and ort:
            targets.append(
                Target(
                    f"{variant} steps/s / ORT steps/s (batch {batch} x {steps})",
                    row.steps_per_s / ort.steps_per_s,
                    0.6,
                    True,
                    f"{row.steps_per_s:.0f} / {ort.steps_per_s:.0f}",
                )
            )
    return targets + _memory_targets(memory)


def _oip_targets(find: Callable[[str, int | None], Row | None], plan: Plan) -> list[Target]:
    """The Open Inference Protocol against the native stream, same server, same load (issue 24: >= 0.9x)."""
    targets = []
    for streams in plan.streams:
        oip, native = find("oip", streams), find("statestream", streams)
        if oip and native:
            targets.append(
                Target(
                    f"oip steps/s / statestream steps/s at {streams} streams",
                    oip.steps_per_s / native.steps_per_s,
                    0.9,
                    True,
                    f"{oip.steps_per_s:.0f} / {native.steps_per_s:.0f}",
                )
            )
    return targets


def _memory_targets(memory: dict[str, Any] | None) -> list[Target]:
    if memory is None:
        return []
    return [
        Target(
            f"RSS growth per idle session / raw state bytes ({memory['sessions']} sessions)",
            float(memory["ratio"]),
            1.5,
            False,
            f"{memory['rss_per_session_bytes']} B / {memory['state_bytes_per_session']} B",
        )
    ]


#: Issue 14's targets against the bare server: (streams, measure, threshold).
MINIMAL_TARGETS = ((1, "p50", 1.1), (16, "steps/s", 1.0), (256, "steps/s", 2.5))


def _minimal_targets(find: Callable[[str, int | None], Row | None]) -> list[Target]:
    """statestream against the bare server (``minimal``), and where echo puts the ceiling.

    Echo answers without a model, so no server of one message per step can pass its rate; its
    ratio to the bare server is the most any target on steps/s can read in this run.
    """
    targets = []
    for streams, quantity, threshold in MINIMAL_TARGETS:
        ours, minimal, echo = find("statestream", streams), find("minimal", streams), find("echo", streams)
        if not (ours and minimal):
            continue
        if quantity == "p50":
            value, detail = ours.p50_ms / minimal.p50_ms, f"{ours.p50_ms:.3f} ms / {minimal.p50_ms:.3f} ms"
            targets.append(
                Target(f"statestream p50 / minimal p50 at {streams} stream", value, threshold, False, detail)
            )
            continue
        detail = f"{ours.steps_per_s:.0f} / {minimal.steps_per_s:.0f}"
        if echo:
            detail += f"; echo's ceiling {echo.messages_per_s / minimal.steps_per_s:.2f}x"
        targets.append(
            Target(
                f"statestream steps/s / minimal steps/s at {streams} streams",
                ours.steps_per_s / minimal.steps_per_s,
                threshold,
                True,
                detail,
            )
        )
    return targets


#: Issue 26's paced targets against the bare server: (measure, the most statestream's may be of the
#: bare server's). Meant at 25, 50 and 75 % of the bare server's closed-loop capacity (docs/benchmarks.md).
PACED_TARGETS = (("p50", 1.0), ("p99", 0.5), ("CPU/step", 0.9))
#: A row answering less than this share of the offered rate fell behind it: it was not paced.
KEPT_UP = 0.97


def _paced_targets(find: Callable[[str, int | None], Row | None], plan: Plan) -> list[Target]:
    """statestream against the bare server at the same offered rate, with echo's floor beside them.

    Echo answers without a model on the same transport, so its ratio to the bare server is about
    the least any server's latency can read in this run; a target below it asks for a server
    faster than one that does nothing. Where either server fell behind the rate, its row is
    closed-loop load, not paced, and the targets are not judged.
    """
    targets = []
    for streams in plan.streams:
        ours, minimal, echo = find("statestream", streams), find("minimal", streams), find("echo", streams)
        if not (ours and minimal):
            continue
        behind = [row.variant for row in (minimal, ours) if row.messages_per_s < KEPT_UP * plan.rate]
        not_judged = f"{' and '.join(behind)} fell behind {plan.rate:g} msg/s" if behind else ""
        for quantity, threshold in PACED_TARGETS:
            value, detail = _paced_ratio(quantity, ours, minimal)
            if echo and quantity != "CPU/step":
                detail += f"; echo's floor {_paced_ratio(quantity, echo, minimal)[0]:.2f}x"
            targets.append(
                Target(
                    f"statestream {quantity} / minimal {quantity} at {streams} streams, {plan.rate:g} msg/s",
                    value,
                    threshold,
                    False,
                    detail,
                    not_judged=not_judged,
                )
            )
    return targets


def _paced_ratio(quantity: str, row: Row, minimal: Row) -> tuple[float, str]:
    """``row`` over the bare server in ``quantity`` (p50, p99 or CPU/step), and the two readings."""
    if quantity == "CPU/step":
        ours, theirs = row.server_cpu_us_per_step, minimal.server_cpu_us_per_step
        return ours / theirs, f"{ours:.0f} us / {theirs:.0f} us"
    ours, theirs = (row.p50_ms, minimal.p50_ms) if quantity == "p50" else (row.p99_ms, minimal.p99_ms)
    return ours / theirs, f"{ours:.2f} ms / {theirs:.2f} ms"


#: Issue 14's residual: statestream's CPU per step at this many streams, less echo's per message
#: and ORT's per step at a batch of this size, is what the session layer itself costs.
RESIDUAL_STREAMS = 256
RESIDUAL_TARGET_US = 40.0


def _residual_target(find: Callable[[str, int | None], Row | None], ort: Row | None) -> Target | None:
    """What a step costs the server beyond gRPC's message (echo) and the model (ORT alone), in µs.

    All three are CPU time per step measured in this run: the two servers' over their load
    windows, ORT's in this process over back-to-back calls at a full batch (the best case: the
    server's own batches are smaller and its caches colder, so the residual includes that).
    """
    ours, echo = find("statestream", RESIDUAL_STREAMS), find("echo", RESIDUAL_STREAMS)
    if not (ours and echo and ort) or math.isnan(ort.server_cpu_us_per_step):
        return None
    value = ours.server_cpu_us_per_step - (echo.server_cpu_us_per_step + ort.server_cpu_us_per_step)
    return Target(
        f"statestream CPU/step - (echo CPU/message + ORT CPU/step at batch {RESIDUAL_STREAMS}) "
        f"at {RESIDUAL_STREAMS} streams, us",
        value,
        RESIDUAL_TARGET_US,
        False,
        f"{ours.server_cpu_us_per_step:.0f} - ({echo.server_cpu_us_per_step:.0f} + "
        f"{ort.server_cpu_us_per_step:.1f}) us",
    )


def _find_ort(rows: list[Row], batch: int, steps: int) -> Row | None:
    for row in rows:
        if row.variant == "ort" and row.streams == batch and row.steps_per_message == steps:
            return row
    return None


def ratios_of(row: Row, rows: list[Row]) -> dict[str, float]:
    """A statestream row against the other servers at the same N: msg/s vs echo, steps/s vs naive and minimal.

    Against the bare server also p50 over p50 (issue 14 asks a lone stream for p50, and many for
    steps/s). Shown in the table's last column and in the row's JSON as ``vs``.
    """
    if row.variant != "statestream":
        return {}

    def same(variant: str) -> Row | None:
        return next((r for r in rows if r.variant == variant and r.streams == row.streams), None)

    ratios: dict[str, float] = {}
    echo, naive, minimal = same("echo"), same("naive"), same("minimal")
    if echo:
        ratios["echo_messages_per_s"] = row.messages_per_s / echo.messages_per_s
    if naive:
        ratios["naive_steps_per_s"] = row.steps_per_s / naive.steps_per_s
    if minimal:
        ratios["minimal_steps_per_s"] = row.steps_per_s / minimal.steps_per_s
        ratios["minimal_p50"] = row.p50_ms / minimal.p50_ms
    return ratios


#: How each ratio reads in the table.
_RATIO_LABELS = {
    "echo_messages_per_s": "x echo",
    "naive_steps_per_s": "x naive",
    "minimal_steps_per_s": "x minimal",
    "minimal_p50": "x minimal p50",
}


def _ratio(row: Row, rows: list[Row]) -> str:
    """The comparison printed beside a row: ours against echo, naive and minimal at the same N."""
    return ", ".join(f"{value:.2f}{_RATIO_LABELS[name]}" for name, value in ratios_of(row, rows).items())


def format_table(rows: list[Row], targets: list[Target], memory: dict[str, Any] | None, header: str) -> str:
    lines = [header, ""]
    columns = (
        f"{'variant':<12} {'streams':>7} {'steps/msg':>9} {'msg/s':>8} {'steps/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'CPU us/step':>11}  vs"
    )
    lines += [columns, "-" * len(columns)]
    for row in rows:
        cpu = "" if math.isnan(row.server_cpu_us_per_step) else f"{row.server_cpu_us_per_step:.0f}"
        vs = _ratio(row, rows)
        if row.variant in ("chunked", "multiplexed"):
            batch, steps = (row.streams, row.steps_per_message) if row.variant == "chunked" else (256, 1)
            ort = _find_ort(rows, batch, steps)
            vs = f"{row.steps_per_s / ort.steps_per_s:.2f}x ORT {batch}x{steps}" if ort else ""
        if row.errors:
            vs += f"  ({row.errors} errors)"
        lines.append(
            f"{row.variant:<12} {row.streams:>7} {row.steps_per_message:>9} {row.messages_per_s:>8.0f} "
            f"{row.steps_per_s:>9.0f} {row.p50_ms:>8.2f} {row.p99_ms:>8.2f} {cpu:>11}  {vs}"
        )
    lines += thread_block(rows)
    if memory is not None:
        lines += [
            "",
            f"memory: {memory['sessions']} idle sessions, RSS {memory['rss_before_mb']} -> {memory['rss_after_mb']} MB, "
            f"{memory['rss_per_session_bytes']} B per session for {memory['state_bytes_per_session']} B of state "
            f"({memory['ratio']:.2f}x)",
        ]
    lines += ["", "targets (ratios from this run):"]
    for target in targets:
        sign = ">=" if target.higher_is_better else "<="
        status = target.verdict if not target.judged else "met " if target.met else "MISS"
        lines.append(
            f"  [{status}] {target.name}: {target.value:.2f} (target {sign} {target.threshold}) {target.detail}"
        )
    return "\n".join(lines)


def thread_block(rows: list[Row]) -> list[str]:
    """Each row's server CPU per step by thread bucket (``servers.thread_cpu_seconds``), after the table.

    Rows without a split (ORT alone, a server of several processes) are left out; so is the
    block when no row has one.
    """
    split = [row for row in rows if row.extra.get(BY_THREAD)]
    if not split:
        return []
    columns = f"{'variant':<12} {'streams':>7} " + " ".join(f"{name:>8}" for name in THREAD_BUCKETS)
    lines = ["", "server CPU per step by thread (us):", columns]
    for row in split:
        cells = " ".join(_us(row.extra[BY_THREAD].get(name)) for name in THREAD_BUCKETS)
        lines.append(f"{row.variant:<12} {row.streams:>7} {cells}")
    return lines


def _us(value: float | None) -> str:
    return f"{'':>8}" if value is None else f"{value:>8.1f}"


#: The model the rows serve unless --model says (--vad-calls: VAD_MODEL).
MODEL = "char_lm"
#: The most streams (or sessions) a row may drive: the server's default ``--max-streams``.
MAX_STREAMS = 10_000


def parser() -> Parser:
    parser = Parser(prog="statestream bench", description=DESCRIPTION)
    parser.add_argument(
        "--models-dir", type=nonempty_path, default=Path("models"), help="folder holding the model folder"
    )
    parser.add_argument("--model", help=f"model to serve (default {MODEL}; {VAD_MODEL} with --vad-calls)")
    parser.add_argument("--quick", action="store_true", help="N = 1 and 256, one repeat, short windows (< 2 min)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row on stdout")
    streams = int_in(1, MAX_STREAMS)
    parser.add_argument(
        "--streams", type=CountList(streams), help="comma-separated stream counts (default 1,64,256,1024)"
    )
    parser.add_argument("--repeats", type=int_in(1, 100), help="runs of each cell; the table shows medians (default 3)")
    parser.add_argument("--duration-s", type=float_in(0.01, 3600), help="measuring window per run (default 4)")
    parser.add_argument("--warmup-s", type=float_in(0, 600), help="warm-up before each window (default 1)")
    parser.add_argument(
        "--memory-sessions", type=int_in(0, 100_000), help="idle sessions for the memory row (0: skip; default 100000)"
    )
    parser.add_argument("--chunk-streams", type=streams, help="streams of the chunked row (default 64)")
    parser.add_argument("--multiplex-streams", type=int_in(1, 64), help="multiplexed messages in flight (default 4)")
    parser.add_argument("--per-message", type=int_in(1, 4096), help="sessions per multiplexed message (default 256)")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="the scale-out rows instead (loadtest/scale.py): --workers W, Envoy in front of W replicas, "
        "and the session store's checkpoint cost, at 256 and 1,024 streams; each round runs the compared "
        "rows side by side, every other round in reverse, and a target is the median of its rounds' ratios",
    )
    parser.add_argument(
        "--variants",
        type=NameList((*Plan.variants, "oip")),
        help="comma-separated subset of echo,naive,minimal,statestream,chunked,multiplexed,oip (default: all but oip)",
    )
    parser.add_argument(
        "--rate",
        type=float_in(0.1, 1_000_000),
        help="paced load: messages per second offered to every row, over its streams (default: closed loop)",
    )
    parser.add_argument(
        "--vad-calls",
        action="store_true",
        help="live calls held in real time instead (loadtest/vad_calls.py): the largest N of --ladder that "
        "statestream and a one-ORT-session-per-call baseline hold with Silero VAD (--model default silero_vad)",
    )
    parser.add_argument("--ladder", type=CountList(int_in(1, 4096)), help="--vad-calls: N (default 32,...,1024)")
    parser.add_argument("--load-processes", type=int_in(1, 64), help="--vad-calls: load processes (default cores/2)")
    parser.add_argument(
        "--serve-flags",
        help="extra 'statestream serve' flags for the statestream server, as one quoted string "
        '(e.g. "--inline-call-us 0"), to compare a setting by running the bench with and without it',
    )
    parser.add_argument(
        "--arrivals",
        choices=("spread", "together"),
        help="paced load: the streams' schedules spread over the interval (default), or all streams send together",
    )
    return parser


def serve_flags(text: str) -> tuple[str, ...]:
    """``--serve-flags``, split as a shell would, checked by serve's own parser (one line if wrong)."""
    from service import settings as settings_module

    try:
        flags = tuple(shlex.split(text))
    except ValueError as exc:
        raise CommandError(f"--serve-flags {text!r}: {exc}", EXIT_USAGE) from exc
    if {"-h", "--help"} & set(flags):  # serve's parser would print its help and end the bench, having run nothing
        raise CommandError(
            f"--serve-flags {text!r}: serve's flags are listed by 'statestream serve --help'", EXIT_USAGE
        )
    parser = _ServeFlags(prog="statestream serve")
    settings_module.add_arguments(parser)
    try:
        settings_module.from_namespace(parser.parse_args(list(flags)))
    except ValueError as exc:
        raise CommandError(f"--serve-flags {text!r}: {exc}", EXIT_USAGE) from exc
    return flags


class _ServeFlags(Parser):
    """serve's parser, whose usage error is a ValueError to report as --serve-flags' (not an exit)."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def plan_of(args: argparse.Namespace) -> Plan:
    plan = (
        Plan(streams=STREAMS_QUICK, warmup_s=0.5, duration_s=2.0, repeats=1, memory_sessions=10_000, ort_duration_s=1.0)
        if args.quick
        else Plan()
    )
    changes: dict[str, Any] = {}
    if args.streams:
        changes["streams"] = args.streams
    if args.variants:
        changes["variants"] = args.variants
    if args.rate is not None:
        changes["rate"] = args.rate
    if args.arrivals is not None:
        if args.rate is None:
            raise CommandError("--arrivals applies to paced load: give --rate too", EXIT_USAGE)
        changes["spread"] = args.arrivals == "spread"
    if args.serve_flags:
        changes["serve_flags"] = serve_flags(args.serve_flags)
    for name in (
        "repeats",
        "duration_s",
        "warmup_s",
        "memory_sessions",
        "chunk_streams",
        "multiplex_streams",
        "per_message",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    return replace(plan, **changes) if changes else plan


def server_variants(plan: Plan, models_dir: Path, model: str) -> list[ServerVariant]:
    """Each server variant the bench can compare (``--serve-flags`` go to statestream's).

    The bare server stands for a user's own grpc.aio server, so it runs with gRPC core's settings
    as the user gave them, not with the ones statestream sets for itself and echo
    (``service.grpc_environment``).
    """
    grace = ("--grace-s", "1")
    return [
        ServerVariant("echo", echo_command()),
        ServerVariant("naive", serve_command(models_dir, "none", grace)),
        ServerVariant("minimal", minimal_command(models_dir, model), grpc_environment.GIVEN),
        ServerVariant("statestream", serve_command(models_dir, "batched", (*grace, *plan.serve_flags))),
    ]


def run(
    plan: Plan, models_dir: Path, model: str, log: Callable[[str], None] = _log
) -> tuple[list[Row], dict[str, Any] | None]:
    """Every measurement of the benchmark; servers are started here and always stopped."""
    cells = cells_of(plan)
    manifest = Manifest.load(models_dir / model)
    results: dict[Cell, list[LoadResult]] = {cell: [] for cell in cells}
    # The model alone at the batch shapes of the variants compared with it (none without them).
    ort_shapes = [
        shape
        for variant, shape in (
            ("multiplexed", (min(plan.per_message, 256), 1)),
            ("chunked", (plan.chunk_streams, plan.chunk)),
        )
        if variant in plan.variants
    ]
    if RESIDUAL_STREAMS in plan.streams and {"echo", "statestream"} <= set(plan.variants):
        ort_shapes.append((RESIDUAL_STREAMS, 1))  # for the residual target (see _residual_target)
    ort_shapes = list(dict.fromkeys(ort_shapes))
    ort_runs: dict[tuple[int, int], list[Any]] = {shape: [] for shape in ort_shapes}
    servers: dict[str, ServerProcess] = {}
    needed = {cell.server for cell in cells}
    try:
        for variant in server_variants(plan, models_dir, model):
            name = variant.name
            if name not in needed:
                continue
            server = variant.server()
            servers[name] = server  # registered before start, so a failed start is still stopped
            server.start()
            log(f"started {name} (pid {server.pid}) on {server.target}")
        ort = OrtBench(models_dir / model)
        for repeat in range(plan.repeats):
            for cell in cells:
                result = measure(cell, servers[cell.server], plan, manifest)
                results[cell].append(result)
                log(
                    f"[{repeat + 1}/{plan.repeats}] {cell.variant:<12} N={cell.streams:<5} "
                    f"{result.steps_per_s:8.0f} steps/s  p50 {result.percentile_ms(50):7.2f} ms  "
                    f"p99 {result.percentile_ms(99):7.2f} ms  cpu {result.cpu_us_per_step:6.0f} us/step"
                    + (f"  {result.errors} errors" if result.errors else "")
                )
            for shape in ort_shapes:
                rate = ort.rate(*shape, plan.ort_duration_s)
                ort_runs[shape].append(rate)
                log(
                    f"[{repeat + 1}/{plan.repeats}] ort          B={shape[0]} K={shape[1]} {rate.steps_per_s:8.0f} steps/s"
                )
    finally:
        for server in servers.values():
            server.stop()
    rows = [summarize(cell, results[cell]) for cell in cells]
    for row in rows:
        ratios = ratios_of(row, rows)
        if ratios:
            row.extra["vs"] = {name: round(value, 3) for name, value in ratios.items()}
    for (batch, steps), rates in ort_runs.items():
        rows.append(
            Row(
                variant="ort",
                streams=batch,
                steps_per_message=steps,
                messages_per_s=median([r.calls / r.duration_s for r in rates]),
                steps_per_s=median([r.steps_per_s for r in rates]),
                p50_ms=median([r.percentile_ms(50) for r in rates]),
                p99_ms=median([r.percentile_ms(99) for r in rates]),
                server_cpu_us_per_step=median([r.cpu_us_per_step for r in rates]),  # ORT's own, in this process
                repeats=len(rates),
            )
        )
    memory = None
    if plan.memory_sessions > 0:
        memory = measure_memory(models_dir, model, plan.memory_sessions)
        log(f"memory: {memory['ratio']:.2f}x state bytes per idle session")
    return rows, memory


@stopping_children_on_sigterm
def main(argv: Sequence[str] | None = None) -> int:
    made = parser()
    args = made.parse_args(sys.argv[1:] if argv is None else argv)
    if args.vad_calls:
        model = args.model or VAD_MODEL
        vad_model_folder(made, args.models_dir, model)
        guard = NoiseGuard(_log)
        code = bench_vad_calls(args, model, _log)  # it judges no target: the readings are printed after its table
        window = guard.finish()
        print(json.dumps(window.to_json()) if args.json else f"\n{window.describe()}")
        return code
    plan = plan_of(args)
    model = args.model or MODEL
    model_folder(made, args.models_dir, model)
    started = time.monotonic()
    guard = NoiseGuard(_log)
    if args.scale:
        cores = len(os.sched_getaffinity(0))
        rows, memory = run_scale(plan, args.models_dir, model, _log, cores), None
        targets = scale_targets(rows, cores)
    else:
        rows, memory = run(plan, args.models_dir, model)
        targets = targets_of(rows, memory, plan)
    window = guard.finish()
    targets = window.judge(targets)
    if args.json:
        print(json.dumps(window.to_json()))
        for row in rows:
            print(json.dumps(row.to_json()))
        if memory is not None:
            print(json.dumps(memory))
        for target in targets:
            print(json.dumps(target.to_json()))
    else:
        bare = grpc_environment.socket_reader(grpc_environment.given())
        ours = grpc_environment.socket_reader(grpc_environment.given(defaults=True))
        header = (
            f"statestream bench: model {model} from {args.models_dir}, "
            f"median of {plan.repeats} run(s) of {plan.duration_s:g} s each, "
            f"{time.monotonic() - started:.0f} s in all\n"
            f"sockets read by: statestream and echo the {ours}, minimal the {bare}"
        )
        if plan.rate:
            header += (
                f"\npaced load: {plan.rate:g} msg/s offered to every row (each of its N streams sends "
                f"every N / {plan.rate:g} s), arrivals {'spread' if plan.spread else 'together'}"
            )
        print(format_table(rows, targets, memory, f"{header}\n{window.describe()}"))
    return 0


if __name__ == "__main__":
    sys.exit(command.run(main, debug=command.debug_requested(sys.argv)))
