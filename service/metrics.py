"""Prometheus metrics, one registry per server so several servers can share a process (tests).

Per model: requests and failures, queue and compute time, batch sizes, steps (``rate()`` of it is
steps/s), active sessions, evictions and state bytes. Exposed on ``--metrics-port`` when it is set.

The hot path never pays for prometheus_client's bookkeeping. ``labels(...)`` returns a child
cached by its label values; on the hot path's metrics (requests, steps, batches, batch size,
queue and compute time) that child is a *tally*: plain Python numbers that the event loop adds
to (a counter's total; a histogram's per-bucket counts and sum). prometheus_client's own ``inc``
and ``observe`` take a lock and, for a histogram, walk the buckets in Python, several times a
step (docs/benchmarks.md, "metric tallies"). A collector registered first in the registry
folds what is new in every tally into the real children whenever the registry is collected (a
scrape, ``get_sample_value``), so what is exposed is what the per-value calls would have stored.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.metrics_core import Metric

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
#: Up to this many values, ``HistogramTally.observe_many`` bisects per value instead of using numpy.
SMALL_BATCH = 48
_TIME_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)


class CounterTally:
    """A counter child's increments as a plain number, added to the child when collected.

    The total only grows and is never reset, so the collector (on the metrics server's thread)
    only reads it while the event loop writes: nothing is lost between the two threads.
    """

    __slots__ = ("_child", "_flushed", "total")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.total = 0.0
        self._flushed = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.total += amount

    def flush(self) -> None:
        total = self.total
        if total != self._flushed:
            self._child.inc(total - self._flushed)
            self._flushed = total


class HistogramTally:
    """A histogram child's observations as per-bucket counts and a sum, added to it when collected."""

    __slots__ = ("_child", "_flushed_counts", "_flushed_sum", "_upper", "counts", "sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._upper: list[float] = list(child._upper_bounds)
        self.counts = [0] * len(self._upper)
        self.sum = 0.0
        self._flushed_counts = [0] * len(self._upper)
        self._flushed_sum = 0.0

    def observe(self, value: float) -> None:
        # Bucket i counts values <= upper[i] that are above upper[i - 1] (prometheus_client keeps
        # them non-cumulative and sums them at exposition); the last bound is +Inf.
        self.counts[bisect.bisect_left(self._upper, value)] += 1
        self.sum += value

    def observe_many(self, values: Sequence[float] | np.ndarray) -> None:
        """Many observations with one update per bucket (a batch's queue times).

        Up to ``SMALL_BATCH`` values a bisect per value is cheaper than numpy's fixed cost, and a
        small batch is the common case below ~50 streams (measured in docs/benchmarks.md).
        """
        if len(values) <= SMALL_BATCH:
            for value in values:
                self.observe(value)
            return
        counts, total = bucket_counts(self._upper, values)
        for index in np.flatnonzero(counts):
            self.counts[index] += int(counts[index])
        self.sum += total

    def flush(self) -> None:
        counts, total = list(self.counts), self.sum
        buckets = self._child._buckets
        for index, (now, before) in enumerate(zip(counts, self._flushed_counts, strict=True)):
            if now != before:
                buckets[index].inc(now - before)
        if total != self._flushed_sum:
            self._child._sum.inc(total - self._flushed_sum)
        self._flushed_counts, self._flushed_sum = counts, total


class _Tallies:
    """The registry's first collector: it yields no metric, it folds every tally into its child."""

    def __init__(self) -> None:
        self.tallies: list[CounterTally | HistogramTally] = []
        self._lock = threading.Lock()  # two scrapes at once must not add the same increments twice

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            for tally in self.tallies:
                tally.flush()
        return ()


class _CachedLabels:
    """``labels(*values)`` answered from a dict after the first call for those values."""

    def labels(self, *values: Any, **named: Any) -> Any:
        if named:
            return super().labels(*values, **named)  # type: ignore[misc]
        cache: dict[tuple[Any, ...], Any] = self.__dict__.setdefault("_child_cache", {})
        try:
            return cache[values]
        except KeyError:
            child = cache[values] = self._wrap(super().labels(*values))  # type: ignore[misc]
            return child

    def _wrap(self, child: Any) -> Any:
        return child


class _Tallied(_CachedLabels):
    """Cached children that are tallies (see the module's docstring), registered with ``tallies``."""

    def __init__(self, *args: Any, tallies: _Tallies | None = None, **kwargs: Any) -> None:
        self._tallies = tallies  # None in the children prometheus_client makes of the same class
        super().__init__(*args, **kwargs)

    def _wrap(self, child: Any) -> Any:
        assert self._tallies is not None
        tally = HistogramTally(child) if isinstance(child, Histogram) else CounterTally(child)
        self._tallies.tallies.append(tally)
        return tally


class CachedCounter(_CachedLabels, Counter):
    pass


class CachedGauge(_CachedLabels, Gauge):
    pass


class TalliedCounter(_Tallied, Counter):
    pass


class TalliedHistogram(_Tallied, Histogram):
    pass


def bucket_counts(upper: Sequence[float], values: Sequence[float] | np.ndarray) -> tuple[np.ndarray, float]:
    """How many of ``values`` fall in each bucket (non-cumulative, as prometheus_client keeps them), and their sum."""
    array = np.asarray(values, dtype=np.float64)
    indices = np.searchsorted(np.asarray(upper, dtype=np.float64), array, side="left")
    return np.bincount(indices, minlength=len(upper)), float(array.sum())


def observe_many(child: Any, values: Sequence[float] | np.ndarray) -> None:
    """Records many observations in a histogram child with one update per bucket.

    prometheus_client's ``observe`` takes a lock and bisects per value; a batch of 256 steps
    would pay that 256 times on the event loop. This counts the values per bucket with numpy and
    adds the counts, which is what the per-value path would have stored.
    """
    array = np.asarray(values, dtype=np.float64)
    if not array.size:
        return
    upper = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if upper is None or buckets is None or total is None:  # another client version: the slow, safe way
        for value in array:
            child.observe(float(value))
        return
    counts, added = bucket_counts(upper, array)
    for index in np.flatnonzero(counts):
        buckets[int(index)].inc(int(counts[index]))
    total.inc(added)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._http: WSGIServer | None = None  # /metrics, once serve_http started it
        r = self.registry
        tallies = _Tallies()
        r.register(tallies)  # first, so every collection folds the tallies in before reading
        self.requests = TalliedCounter(
            "statestream_requests", "Session requests received", ["model", "kind"], registry=r, tallies=tallies
        )
        self.failures = CachedCounter(
            "statestream_failures", "Requests answered with an error", ["model", "code"], registry=r
        )
        self.steps = TalliedCounter(
            "statestream_steps", "Time steps computed (rate() of it is steps/s)", ["model"], registry=r, tallies=tallies
        )
        self.batches = TalliedCounter(
            "statestream_batches", "ONNX Runtime calls made", ["model"], registry=r, tallies=tallies
        )
        self.batch_size = TalliedHistogram(
            "statestream_batch_size",
            "Sessions per ONNX Runtime call",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
            tallies=tallies,
        )
        self.queue_seconds = TalliedHistogram(
            "statestream_queue_seconds",
            "Time a step waited for its batch",
            ["model"],
            buckets=_TIME_BUCKETS,
            registry=r,
            tallies=tallies,
        )
        self.compute_seconds = TalliedHistogram(
            "statestream_compute_seconds",
            "ONNX Runtime time per call",
            ["model"],
            buckets=_TIME_BUCKETS,
            registry=r,
            tallies=tallies,
        )
        self.active_sessions = CachedGauge("statestream_active_sessions", "Open sessions", ["model"], registry=r)
        self.evictions = CachedCounter(
            "statestream_evictions", "Sessions closed by the server", ["model", "reason"], registry=r
        )
        self.state_bytes = CachedGauge(
            "statestream_state_bytes", "Bytes of state slabs allocated", ["model"], registry=r
        )

        # The session store (--session-store): one checkpoint is one session's record written.
        self.checkpoints = Counter(
            "statestream_checkpoints", "Session records written to the session store", registry=r
        )
        self.checkpoint_seconds = Histogram(
            "statestream_checkpoint_seconds",
            "Time of one pipelined checkpoint round trip (all the sessions of a batch)",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.checkpoint_bytes = Counter(
            "statestream_checkpoint_bytes", "Bytes of session records written to the session store", registry=r
        )
        self.checkpoint_failures = CachedCounter(
            "statestream_checkpoint_failures",
            "Checkpoints not written: 'fenced' (another replica owns the session) or 'unavailable' (store down)",
            ["reason"],
            registry=r,
        )
        self.takeovers = Counter(
            "statestream_takeovers", "Sessions this process took over from the session store", registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve_http(self, port: int, host: str) -> None:
        """Serves /metrics from a thread of its own (an OSError if the port cannot be bound)."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)

    def stop_http(self) -> None:
        """Stops serving /metrics and frees its port (nothing to do if it was never served)."""
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()
