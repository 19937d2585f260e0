"""Prometheus metrics, one registry per server so several servers can share a process (tests).

Per model: requests and failures, queue and compute time, batch sizes, steps (``rate()`` of it is
steps/s), active sessions, evictions and state bytes. Exposed on ``--metrics-port`` when it is set.

The hot path never pays for a label lookup: ``labels(...)`` on these metrics returns a child
cached by its label values (prometheus_client's own lookup validates, locks and hashes on every
call), and the scheduler records a whole batch's queue times with one ``observe_many``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_TIME_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)


class _CachedLabels:
    """``labels(*values)`` answered from a dict after the first call for those values."""

    def labels(self, *values: Any, **named: Any) -> Any:
        if named:
            return super().labels(*values, **named)  # type: ignore[misc]
        cache: dict[tuple[Any, ...], Any] = self.__dict__.setdefault("_child_cache", {})
        try:
            return cache[values]
        except KeyError:
            child = cache[values] = super().labels(*values)  # type: ignore[misc]
            return child


class CachedCounter(_CachedLabels, Counter):
    pass


class CachedGauge(_CachedLabels, Gauge):
    pass


class CachedHistogram(_CachedLabels, Histogram):
    pass


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
    # Bucket i counts values <= upper[i] that are above upper[i - 1] (the library keeps them
    # non-cumulative and sums them at exposition).
    indices = np.searchsorted(np.asarray(upper, dtype=np.float64), array, side="left")
    counts = np.bincount(indices, minlength=len(upper))
    for index in np.flatnonzero(counts):
        buckets[int(index)].inc(int(counts[index]))
    total.inc(float(array.sum()))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = CachedCounter(
            "statestream_requests", "Session requests received", ["model", "kind"], registry=r
        )
        self.failures = CachedCounter(
            "statestream_failures", "Requests answered with an error", ["model", "code"], registry=r
        )
        self.steps = CachedCounter(
            "statestream_steps", "Time steps computed (rate() of it is steps/s)", ["model"], registry=r
        )
        self.batches = CachedCounter("statestream_batches", "ONNX Runtime calls made", ["model"], registry=r)
        self.batch_size = CachedHistogram(
            "statestream_batch_size",
            "Sessions per ONNX Runtime call",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_seconds = CachedHistogram(
            "statestream_queue_seconds",
            "Time a step waited for its batch",
            ["model"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.compute_seconds = CachedHistogram(
            "statestream_compute_seconds",
            "ONNX Runtime time per call",
            ["model"],
            buckets=_TIME_BUCKETS,
            registry=r,
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
        start_http_server(port, addr=host, registry=self.registry)
