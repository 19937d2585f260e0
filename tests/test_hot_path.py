"""The hot path's cheaper pieces store and send exactly what the plain ones did.

Metric tallies must expose what prometheus_client's own ``inc``/``observe`` would have stored,
also when collected while more is being added; the fast tensor encoding must keep byte order,
layout and the refusal of types without a wire type; and ``loadtest.hotpath`` (the in-process
harness the A/B runs in docs/benchmarks.md use) must drive real steps to their answers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from loadtest.hotpath import drive
from service.api import statestream_pb2 as pb
from service.metrics import SMALL_BATCH, Metrics
from service.tensors import add_proto, from_proto, to_proto

BUCKETS = (1e-4, 1e-3, 1e-2, 0.1)
VALUES = [5e-5, 1e-4, 2e-4, 1e-3, 0.5, 0.05, 0.05, 2.0]


def _samples(registry: CollectorRegistry, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the metric family named ``prefix``, keyed without the family's own name prefix."""
    return {
        (s.name.removeprefix(prefix), tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        if family.name == prefix
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_tallied_histograms_and_counters_expose_what_observe_and_inc_would() -> None:
    metrics = Metrics()
    plain = CollectorRegistry()
    want_queue = Histogram(
        "statestream_queue_seconds", "x", ["model"], buckets=metrics.queue_seconds._upper_bounds[:-1], registry=plain
    )
    want_steps = Counter("statestream_steps", "x", ["model"], registry=plain)
    queue, steps = metrics.queue_seconds.labels("m"), metrics.steps.labels("m")
    for value in VALUES[:3]:
        queue.observe(value)
        want_queue.labels("m").observe(value)
    many = VALUES * 10  # past SMALL_BATCH: counted by numpy, not by a bisect per value
    assert len(VALUES[3:]) <= SMALL_BATCH < len(many)
    for batch in (VALUES[3:], many):
        queue.observe_many(batch)
        for value in batch:
            want_queue.labels("m").observe(value)
    steps.inc(3)
    want_steps.labels("m").inc(3)
    assert _samples(metrics.registry, "statestream_queue_seconds") == pytest.approx(
        _samples(plain, "statestream_queue_seconds")
    )
    assert _samples(metrics.registry, "statestream_steps") == _samples(plain, "statestream_steps")


def test_collecting_twice_adds_each_increment_once_and_later_ones_too() -> None:
    metrics = Metrics()
    batches = metrics.batches.labels("m")
    batches.inc()
    first = metrics.registry.get_sample_value("statestream_batches_total", {"model": "m"})
    again = metrics.registry.get_sample_value("statestream_batches_total", {"model": "m"})
    batches.inc(2)
    later = metrics.registry.get_sample_value("statestream_batches_total", {"model": "m"})
    assert (first, again, later) == (1.0, 1.0, 3.0)
    assert b'statestream_batches_total{model="m"} 3.0' in metrics.exposition()


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<i8", ">i8", "<i4", ">i4"])
def test_tensors_keep_values_and_layout_whatever_the_byte_order(dtype: str) -> None:
    array = np.arange(12).astype(dtype).reshape(3, 4)[:, ::2]  # not contiguous, either byte order
    tensor = to_proto("x", array)
    assert list(tensor.shape) == [3, 2]
    assert tensor.data == np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    decoded = from_proto(tensor)
    assert decoded.dtype.isnative and np.array_equal(decoded, array)
    output = pb.StepOutput()
    add_proto(output.tensors, "x", array)
    assert output.tensors[0] == tensor


def test_a_numpy_scalar_is_a_tensor_of_no_dimensions() -> None:
    tensor = to_proto("energy", np.float32(-2.5))
    assert list(tensor.shape) == [] and from_proto(tensor) == np.float32(-2.5)


def test_a_dtype_without_a_wire_type_is_refused() -> None:
    with pytest.raises(ValueError, match="float64 has no wire type"):
        to_proto("x", np.zeros(2))


def test_the_hot_path_harness_answers_every_step(tiny_lm_dir: Path) -> None:
    rows = asyncio.run(drive(tiny_lm_dir, "char_lm", [(1, 5), (3, 4)]))
    assert [(row["streams"], row["steps"]) for row in rows] == [(1, 5), (3, 12)]
    assert all(row["cpu_us_per_step"] > 0 for row in rows)
