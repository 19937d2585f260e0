"""``statestream bench --scale``: the scale-out rows, measured side by side in one run.

* ``direct``: one plain ``statestream serve`` (one process, no session store): the reference;
* ``workers W``: ``serve --workers W`` for W = 1 … the cores, through its one address
  (SO_REUSEPORT; the workers' private Redis, checkpoints only on detach and hand-over);
* ``envoy W``: W single-process replicas behind Envoy (ring hash on the routing header);
* ``store K``: one process with a Redis session store, a checkpoint every K acknowledged steps
  (K = 1 and 16; the cost of durability, against ``direct`` which has none).

Each at 256 and 1,024 streams, repeated like the main table, every other round in reverse;
``direct`` and the ``store`` rows take turns cell by cell (``schedule``). The targets, each the
median of its rounds' own ratios, are steps/s of ``workers W`` ≥ 0.7 × W × ``workers 1``, for W
up to the cores the load generator leaves free (on a 2-core machine shared with the load
generator, none: the table says so), and ``store K=1`` ≥ 0.8 ×, ``store K=16`` ≥ 0.95 ×
``direct`` (issue 26: durability nearly free).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from loadtest.cells import Cell, Plan, Row, Target, client_layout, measure, median, summarize
from loadtest.front import free_port, run_envoy
from loadtest.load import LoadResult
from loadtest.servers import ServerProcess, serve_command
from service.command import EXIT_USAGE, CommandError
from service.contract import Manifest

SCALE_STREAMS = (256, 1024)
#: K of the ``store K`` rows, and the share of ``direct``'s steps/s each must keep (issue 26).
DURABILITY_TARGETS = {1: 0.8, 16: 0.95}
CHECKPOINT_EVERY = tuple(DURABILITY_TARGETS)
#: A scale row's ``extra`` key (and JSON field): its steps/s in each round, in round order.
BY_ROUND = "steps_per_s_by_round"
#: The table's order of the arrangements' kinds (each kind's own rows keep their order).
SHOWN_ORDER = ("direct", "workers", "envoy", "store")
#: Kinds of arrangement that run together through a round, their cells taken in turn: the
#: durability targets compare ``store`` with ``direct`` to 5 %, and on a shared machine two cells
#: a minute apart differ by up to 20 %. An idle server costs the one being measured nothing.
TOGETHER = ("store", "direct")


@dataclass(frozen=True)
class Setup:
    """One server arrangement: direct, workers (W processes), envoy (W replicas) or store (K)."""

    kind: str
    count: int = 1

    @property
    def name(self) -> str:
        return {"direct": "direct", "workers": f"workers {self.count}", "envoy": f"envoy {self.count}",
                "store": f"store K={self.count}"}[self.kind]  # fmt: skip


def setups(cores: int) -> list[Setup]:
    """Every arrangement, in the order a round runs them: each compared pair is measured side by
    side (``direct`` beside the ``store`` rows, ``workers 1`` beside ``workers 2``)."""
    arrangements = [Setup("store", k) for k in reversed(CHECKPOINT_EVERY)]
    arrangements += [Setup("direct")]
    arrangements += [Setup("workers", w) for w in range(1, cores + 1)]
    arrangements += [Setup("envoy", r) for r in range(1, cores + 1)]
    return arrangements


@dataclass(frozen=True)
class Stage:
    """Arrangements running at once during a round, and their cells (arrangement, streams) in the
    order they are measured."""

    setups: tuple[Setup, ...]
    cells: tuple[tuple[Setup, int], ...]


def schedule(arrangements: list[Setup], repeats: int) -> list[list[Stage]]:
    """Each round's stages: the ``TOGETHER`` kinds (adjacent in ``arrangements``) as one stage,
    every other arrangement a stage of its own, each started and stopped in turn.

    Every other round runs the stages, and each stage's members, in reverse. Within a stage the
    members take turns at each stream count, in reverse at the next, so at 256 streams the
    ``store`` rows and ``direct`` are measured one after the other and the machine's drift
    falls on both sides of each pair alike.
    """
    stages: list[tuple[Setup, ...]] = []
    for setup in arrangements:
        if stages and setup.kind in TOGETHER and stages[-1][-1].kind in TOGETHER:
            stages[-1] += (setup,)
        else:
            stages.append((setup,))
    rounds = []
    for repeat in range(repeats):
        forward = repeat % 2 == 0
        rounds.append(
            [_stage(members if forward else members[::-1]) for members in (stages if forward else stages[::-1])]
        )
    return rounds


def _stage(members: tuple[Setup, ...]) -> Stage:
    cells = [
        (setup, streams)
        for turn, streams in enumerate(SCALE_STREAMS)
        for setup in (members if turn % 2 == 0 else members[::-1])
    ]
    return Stage(members, tuple(cells))


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A private redis-server for one measurement (append-only, fsync each second); its URL and pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise CommandError("redis-server is not installed", EXIT_USAGE, hint="apt-get install redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="statestream-bench-redis-") as folder:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder, "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            yield f"redis://127.0.0.1:{port}", process.pid
        finally:
            process.terminate()
            process.wait(timeout=10)


#: Every scale server's stop: a second's grace, not the default's.
GRACE = ("--grace-s", "1")


def store_flags(url: str, every: int) -> tuple[str, ...]:
    """``serve``'s flags for a replica of the session store at ``url``, a checkpoint every ``every`` steps."""
    return (*GRACE, "--session-store", url, "--checkpoint-every", str(every))


@contextlib.contextmanager
def started(setup: Setup, models_dir: Path, stack: contextlib.ExitStack) -> Iterator[ServerProcess]:
    """The arrangement running; yields the server process the load goes to (its CPU is counted)."""
    extra: tuple[str, ...]
    if setup.kind == "store":
        store, _ = stack.enter_context(redis_server())
        extra = store_flags(store, setup.count)
        yield stack.enter_context(ServerProcess(setup.name, serve_command(models_dir, "batched", extra)))
    elif setup.kind == "envoy":
        store, _ = stack.enter_context(redis_server())
        extra = store_flags(store, 0)
        replicas = [
            stack.enter_context(ServerProcess(f"{setup.name}/{i}", serve_command(models_dir, "batched", extra)))
            for i in range(setup.count)
        ]
        front, _ = stack.enter_context(run_envoy([r.target for r in replicas]))
        yield _Fronted(setup.name, replicas, front)
    else:
        extra = (*GRACE, "--workers", str(setup.count)) if setup.kind == "workers" else GRACE
        yield stack.enter_context(ServerProcess(setup.name, serve_command(models_dir, "batched", extra)))


class _Fronted(ServerProcess):
    """Replicas behind Envoy, measured as one server: the target is Envoy's, the CPU all of theirs."""

    def __init__(self, name: str, replicas: list[ServerProcess], front: str) -> None:
        super().__init__(name, [])
        self.replicas = replicas
        self.front = front

    @property
    def target(self) -> str:
        return self.front

    def cpu_seconds(self) -> float:
        return sum(r.cpu_seconds() for r in self.replicas)


def run_scale(
    plan: Plan, models_dir: Path, model: str, log: Callable[[str], None], cores: int | None = None
) -> list[Row]:
    """Every scale row; each arrangement is started, measured at every stream count, and stopped.

    Arrangements run one after another (not all at once: W workers of each would overcommit the
    cores), but for ``direct`` and the ``store`` rows, which run together through a round and take
    turns (``schedule``). The whole sequence is repeated ``plan.repeats`` times, every other round in
    reverse, so that each cell is a median over runs spread through the measurement and the
    machine's drift falls on both sides of a compared pair. Each row keeps its rounds' steps/s
    (``BY_ROUND``) for the targets' round-by-round ratios.
    """
    cores = cores or len(os.sched_getaffinity(0))
    manifest = Manifest.load(models_dir / model)
    arrangements = setups(cores)
    results: dict[tuple[str, int], list[LoadResult]] = {}
    for repeat, stages in enumerate(schedule(arrangements, plan.repeats)):
        for stage in stages:
            with contextlib.ExitStack() as stack:
                servers = {setup: stack.enter_context(started(setup, models_dir, stack)) for setup in stage.setups}
                for setup, streams in stage.cells:
                    result = measure(Cell(setup.name, setup.name, "stream", streams), servers[setup], plan, manifest)
                    results.setdefault((setup.name, streams), []).append(result)
                    log(
                        f"[{repeat + 1}/{plan.repeats}] {setup.name:<12} N={streams:<5} "
                        f"{result.steps_per_s:8.0f} steps/s  p99 {result.percentile_ms(99):7.2f} ms"
                        + (f"  {result.errors} errors" if result.errors else "")
                    )
    shown = [s.name for s in sorted(arrangements, key=lambda s: (SHOWN_ORDER.index(s.kind), s.count))]
    rows = []
    for (name, streams), runs in sorted(results.items(), key=lambda item: (shown.index(item[0][0]), item[0][1])):
        row = summarize(Cell(name, name, "stream", streams), runs)
        row.extra[BY_ROUND] = [round(run.steps_per_s, 1) for run in runs]
        rows.append(row)
    return rows


def ratio_by_round(row: Row, reference: Row, scale: float = 1.0) -> tuple[float, str]:
    """``row`` over ``scale`` × ``reference`` in steps/s: the median of the rounds' own ratios (each
    round measures the two side by side, so the machine's drift between rounds cancels), and
    those ratios as text; the ratio of the two rows' medians where the rounds are not known."""
    mine, theirs = row.extra.get(BY_ROUND), reference.extra.get(BY_ROUND)
    if not mine or not theirs or len(mine) != len(theirs):
        return row.steps_per_s / (scale * reference.steps_per_s), ""
    ratios = [a / (scale * b) for a, b in zip(mine, theirs, strict=True)]
    return median(ratios), "rounds " + ", ".join(f"{r:.2f}" for r in ratios)


def load_processes(streams: int) -> int:
    """The client processes the load generator runs at ``streams`` (cells.client_layout decides)."""
    return client_layout(streams)[0]


def scale_targets(rows: list[Row], cores: int) -> list[Target]:
    """The scaling targets, then the cost of durability (``durability_targets``)."""
    return _scaling_targets(rows, cores) + durability_targets(rows)


def durability_targets(rows: list[Row]) -> list[Target]:
    """``store K`` against ``direct`` steps/s at each stream count: K = 1 ≥ 0.8×, K = 16 ≥ 0.95×."""
    by_name = {(row.variant, row.streams): row for row in rows}
    targets: list[Target] = []
    for streams in SCALE_STREAMS:
        direct = by_name.get(("direct", streams))
        for every, threshold in DURABILITY_TARGETS.items():
            store = by_name.get((Setup("store", every).name, streams))
            if direct is None or store is None:
                continue
            value, rounds = ratio_by_round(store, direct)
            targets.append(
                Target(
                    name=f"store_k{every}_vs_direct_n{streams}",
                    value=value,
                    threshold=threshold,
                    higher_is_better=True,
                    detail=f"store K={every} / direct steps/s at N={streams} (a checkpoint every {every} steps)"
                    + (f"; {rounds}" if rounds else ""),
                )
            )
    return targets


def _scaling_targets(rows: list[Row], cores: int) -> list[Target]:
    """workers W against W × workers 1, at each stream count; judged only where W cores are left free."""
    by_name = {(row.variant, row.streams): row for row in rows}
    targets: list[Target] = []
    for streams in SCALE_STREAMS:
        one = by_name.get(("workers 1", streams))
        free = cores - load_processes(streams)
        for workers in range(2, cores + 1):
            row = by_name.get((f"workers {workers}", streams))
            if one is None or row is None:
                continue
            unjudged = (
                ""
                if workers <= free
                else f"{cores} cores, {load_processes(streams)} taken by the load generator, "
                f"{max(free, 0)} free for {workers} workers"
            )
            value, rounds = ratio_by_round(row, one, workers)
            targets.append(
                Target(
                    name=f"workers_{workers}_scaling_n{streams}",
                    value=value,
                    threshold=0.7,
                    higher_is_better=True,
                    detail=f"workers {workers} / ({workers} x workers 1) steps/s at N={streams}"
                    + (f"; {rounds}" if rounds else ""),
                    not_judged=unjudged,
                )
            )
    return targets
