"""What a benchmark measures: one configuration (a cell) under load, and the row its runs make.

``statestream bench`` and its ``--scale`` rows (``loadtest.scale``) both drive cells with
``measure`` and fold each cell's repeated runs into a ``Row`` with ``summarize``; a ``Target`` is
a ratio of rows judged against its threshold.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest.load import LoadResult, LoadSpec, model_fields, model_inputs, run_load
from loadtest.servers import THREAD_BUCKETS, ServerProcess
from service.contract import Manifest

STREAMS_FULL = (1, 64, 256, 1024)
STREAMS_QUICK = (1, 256)
#: A row's ``extra`` key (and JSON field): the server's CPU µs per step of each thread bucket.
BY_THREAD = "cpu_us_per_step_by_thread"


@dataclass(frozen=True)
class Plan:
    """How long and how much: the full run, ``--quick``, or what the flags say."""

    streams: tuple[int, ...] = STREAMS_FULL
    warmup_s: float = 1.0
    duration_s: float = 4.0
    repeats: int = 3
    chunk: int = 16
    chunk_streams: int = 64
    per_message: int = 256
    multiplex_streams: int = 4
    memory_sessions: int = 100_000
    ort_duration_s: float = 2.0
    variants: tuple[str, ...] = ("echo", "naive", "minimal", "statestream", "chunked", "multiplexed")
    #: Messages a second offered to every row (paced load, see ``--rate``); 0: closed loop.
    rate: float = 0.0
    #: Paced load: the streams' schedules spread over the interval (else all send together).
    spread: bool = True
    #: Extra ``statestream serve`` flags for the statestream server (its rows and chunked,
    #: multiplexed, oip), e.g. to A/B a setting: ("--inline-call-us", "0").
    serve_flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cell:
    """One measured configuration."""

    variant: str  # echo, naive, minimal, statestream, chunked, multiplexed
    server: str  # which server process runs it
    mode: str  # stream or multiplex
    streams: int  # sessions driven at once
    chunk: int = 1
    per_message: int = 1

    @property
    def load_streams(self) -> int:
        """Streams the client opens: one per session, or one per multiplexed message in flight."""
        return self.streams // self.per_message if self.mode == "multiplex" else self.streams

    @property
    def steps_per_message(self) -> int:
        return self.chunk * self.per_message


@dataclass
class Row:
    """A table row: the median over repeats of one cell (or an ORT / memory measurement)."""

    variant: str
    streams: int
    steps_per_message: int
    messages_per_s: float
    steps_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_step: float = math.nan
    errors: int = 0
    response_bytes: float = math.nan
    repeats: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = {
            "kind": "load" if self.variant != "ort" else "ort",
            "variant": self.variant,
            "streams": self.streams,
            "steps_per_message": self.steps_per_message,
            "messages_per_s": rounded(self.messages_per_s),
            "steps_per_s": rounded(self.steps_per_s),
            "p50_ms": rounded(self.p50_ms, 3),
            "p99_ms": rounded(self.p99_ms, 3),
            "server_cpu_us_per_step": rounded(self.server_cpu_us_per_step, 1),
            "errors": self.errors,
            "response_bytes": rounded(self.response_bytes),
            "repeats": self.repeats,
        }
        data.update(self.extra)
        return data


@dataclass
class Target:
    name: str
    value: float
    threshold: float
    higher_is_better: bool
    detail: str
    #: Why this run may not judge the target ("machine busy", loadtest.machine); empty: judged.
    not_judged: str = ""

    @property
    def met(self) -> bool:
        """The value against the threshold; say it only where ``judged``."""
        if math.isnan(self.value):
            return False
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold

    @property
    def judged(self) -> bool:
        return not self.not_judged

    @property
    def verdict(self) -> str:
        """``met``, ``missed`` or ``not judged: <why>``."""
        if self.not_judged:
            return f"not judged: {self.not_judged}"
        return "met" if self.met else "missed"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "target",
            "target": self.name,
            "value": rounded(self.value, 3),
            "threshold": self.threshold,
            "met": self.met if self.judged else None,
            "judged": self.judged,
            "verdict": self.verdict,
            "detail": self.detail,
        }


def rounded(value: float, digits: int = 0) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits) if digits else round(value)


def client_layout(streams: int) -> tuple[int, int]:
    """(worker processes, channels per worker) for N streams: as few processes as keep up.

    The client shares the 2 cores with the server, so every extra process takes CPU from it;
    one process with a few connections drives up to a few hundred streams, two beyond that.
    """
    workers = 1 if streams <= 256 else 2
    channels = max(1, min(4, streams // 64))
    return workers, channels


def measure(cell: Cell, server: ServerProcess, plan: Plan, model: Manifest) -> LoadResult:
    workers, channels = client_layout(cell.load_streams)
    spec = LoadSpec(
        target=server.target,
        model=model.name,
        mode=cell.mode,
        streams=cell.load_streams,
        channels=channels,
        chunk=cell.chunk,
        per_message=cell.per_message,
        interval_s=cell.load_streams / plan.rate if plan.rate else 0.0,
        spread=plan.spread,
        model_inputs=model_inputs(model),
        **model_fields(model),
    )
    return run_load(
        spec,
        workers=workers,
        warmup_s=plan.warmup_s,
        duration_s=plan.duration_s,
        cpu_seconds=server.cpu_seconds,
        thread_cpu_seconds=server.thread_cpu_seconds,
    )


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def summarize(cell: Cell, results: list[LoadResult]) -> Row:
    """The median over ``results`` of each measure; with every run's thread split, its medians in ``extra``."""
    row = Row(
        variant=cell.variant,
        streams=cell.streams,
        steps_per_message=cell.steps_per_message,
        messages_per_s=median([r.messages_per_s for r in results]),
        steps_per_s=median([r.steps_per_s for r in results]),
        p50_ms=median([r.percentile_ms(50) for r in results]),
        p99_ms=median([r.percentile_ms(99) for r in results]),
        server_cpu_us_per_step=median([r.cpu_us_per_step for r in results]),
        errors=sum(r.errors for r in results),
        response_bytes=median([r.bytes_per_message for r in results]),
        repeats=len(results),
    )
    by_thread = [r.cpu_us_per_step_by_thread for r in results]
    if by_thread and all(by_thread):
        row.extra[BY_THREAD] = {
            name: rounded(median([split.get(name, math.nan) for split in by_thread]), 1) for name in THREAD_BUCKETS
        }
    return row
