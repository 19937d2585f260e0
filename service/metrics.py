"""Prometheus metrics, one registry per server so several servers can share a process (tests).

Per model: requests and failures, queue and compute time, batch sizes, steps, active sessions,
evictions and state bytes. Exposed on ``--metrics-port`` when it is set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_TIME_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("statestream_requests", "Session requests received", ["model", "kind"], registry=r)
        self.failures = Counter(
            "statestream_failures", "Requests answered with an error", ["model", "code"], registry=r
        )
        self.steps = Counter("statestream_steps", "Time steps computed", ["model"], registry=r)
        self.batch_size = Histogram(
            "statestream_batch_size",
            "Session-steps per ONNX Runtime call",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "statestream_queue_seconds",
            "Time a step waited for its batch",
            ["model"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "statestream_compute_seconds", "ONNX Runtime time per call", ["model"], buckets=_TIME_BUCKETS, registry=r
        )
        self.active_sessions = Gauge("statestream_active_sessions", "Open sessions", ["model"], registry=r)
        self.evictions = Counter(
            "statestream_evictions", "Sessions closed by the server", ["model", "reason"], registry=r
        )
        self.state_bytes = Gauge("statestream_state_bytes", "Bytes of state slabs allocated", ["model"], registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve_http(self, port: int, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)
