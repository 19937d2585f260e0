"""The hot path's cheaper pieces store and send exactly what the plain ones did.

Metric tallies must expose what prometheus_client's own ``inc``/``observe`` would have stored,
also when collected while more is being added; the fast tensor encoding must keep byte order,
layout and the refusal of types without a wire type; and ``loadtest.hotpath`` (the in-process
harness the A/B runs in docs/benchmarks.md use) must drive real steps to their answers; and the
step decoder's fast pass must accept and refuse exactly what the field-by-field checks do; and
the answers written as bytes must be the bytes of the messages they replace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from loadtest import hotpath
from loadtest.hotpath import drive
from loadtest.pacing import Pacing
from service.answer_bytes import varint
from service.api import statestream_pb2 as pb
from service.contract import Manifest, TensorSpec
from service.drivers.language import RANKED_IDS, RANKED_PROBS, ranked_logits
from service.drivers.steps import StepDecoder, StepInputs, decode_tensors
from service.errors import StatestreamError
from service.metrics import SMALL_BATCH, Metrics
from service.session_options import ResolvedOptions
from service.tasks import driver_class
from service.tensors import add_proto, from_proto, to_proto
from tests.conftest import SHIPPED_MODELS

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


def test_a_paced_run_releases_each_step_at_its_time_and_times_each_answer(tiny_lm_dir: Path) -> None:
    """``--rate``: 3 streams × 4 steps at 200 steps/s, stream i's k-th step at (k + i/3) × 15 ms."""
    (row,) = asyncio.run(drive(tiny_lm_dir, "char_lm", [(3, 4)], rate=200.0))
    assert (row["streams"], row["steps"], row["rate"]) == (3, 12, 200.0)
    last_release_s = (3 + 2 / 3) * 3 / 200
    assert row["wall_us_per_step"] * row["steps"] >= 1e6 * last_release_s  # paced: never faster than released
    assert 0 < row["p50_us"] <= row["p99_us"]
    assert row["feeder_cpu_us_per_step"] > 0 and row["loop_cpu_us_per_step"] > 0


def test_pacing_spreads_the_streams_steps_over_each_period() -> None:
    """3 streams × 2 steps at 300 steps/s: stream i's k-th step no sooner than (k + i/3) × 10 ms,
    in that order, each released to its stream's gate once."""
    started = time.perf_counter()

    async def fed() -> Pacing:
        pacing = Pacing.of(3)
        pacing.feed(asyncio.get_running_loop(), 300.0, 2)
        assert len(pacing.feeder_cpu) == 1
        for gate in pacing.gates:  # two steps let in, and no third
            for _ in range(2):
                await asyncio.wait_for(gate.acquire(), 1.0)
            assert gate.locked()
        return pacing

    pacing = asyncio.run(fed())
    order = sorted((t, stream) for stream, times in enumerate(pacing.released) for t in times)
    assert [stream for _, stream in order] == [0, 1, 2, 0, 1, 2]
    due = [(k + i / 3) * 3 / 300 for k in range(2) for i in range(3)]
    assert all(t >= started + at for (t, _), at in zip(order, due, strict=True))  # sleep never wakes early


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--rate", "-1"], "--rate: -1 is out of range (0-1000000)"),
        (["--rate", "nan"], "--rate: 'nan' is not a finite number"),
        (["--rate", "inf"], "--rate: 'inf' is not a finite number"),
        (["--rate", "100", "--protocols", "oip"], "Session streams only"),
        (["--protocols", "statestream,grpc"], "--protocols: 'grpc' is not one of statestream, oip"),
        (["--protocols", "oip,oip"], "--protocols: oip is given twice"),
        (["--streams", "0"], "--streams: 0 is out of range"),
    ],
)
def test_the_harness_refuses_a_rate_it_cannot_run(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        hotpath.main(argv)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


#: A model with a float input [2, 3] and an integer input [] (per time step).
DECODED = cast(Manifest, SimpleNamespace(inputs=(TensorSpec("x", "float32", (2, 3)), TensorSpec("ids", "int64", ()))))
MAX_CHUNK = 4


def _step(k: int = 2, x: np.ndarray | None = None, **change: Callable[[list[pb.Tensor]], None]) -> pb.TensorInput:
    """A well-formed step of K time steps, then each ``change`` applied to its tensor list."""
    x = np.arange(k * 6, dtype=np.float32).reshape(k, 2, 3) if x is None else x
    tensors = [to_proto("x", x), to_proto("ids", np.arange(k, dtype=np.int64))]
    for edit in change.values():
        edit(tensors)
    return pb.TensorInput(tensors=tensors)


def _outcome(decode: Callable[[], StepInputs]) -> tuple[str, object]:
    try:
        decoded = decode()
    except StatestreamError as exc:
        return "refused", (type(exc), exc.message)
    arrays = {name: (a.dtype.str, a.shape, a.tobytes()) for name, a in decoded.arrays.items()}
    return "decoded", (arrays, decoded.steps)


def _set(index: int, **fields: object) -> Callable[[list[pb.Tensor]], None]:
    def edit(tensors: list[pb.Tensor]) -> None:
        for name, value in fields.items():
            if name == "shape":
                del tensors[index].shape[:]
                tensors[index].shape.extend(cast(list[int], value))
            else:
                setattr(tensors[index], name, value)

    return edit


STEPS = {
    "one step": _step(1),
    "a chunk": _step(3),
    "the longest chunk": _step(MAX_CHUNK),
    "another order": _step(reverse=lambda t: t.reverse()),
    "huge finite values": _step(x=np.full((2, 2, 3), 3e38, np.float32)),
    "NaN": _step(x=np.array([[[0, 1, np.nan], [0, 0, 0]]] * 2, np.float32)),
    "Inf": _step(x=np.array([[[0, 1, -np.inf], [0, 0, 0]]] * 2, np.float32)),
    "a missing tensor": _step(drop=lambda t: t.pop()),
    "an extra tensor": _step(extra=lambda t: t.append(to_proto("z", np.zeros(2, np.float32)))),
    "a tensor twice": _step(twice=lambda t: t.__setitem__(1, t[0])),
    "a wrong name": _step(name=_set(1, name="id")),
    "a wrong dtype": _step(dtype=_set(1, dtype=pb.DATA_TYPE_INT32, data=np.arange(2, dtype=np.int32).tobytes())),
    "an unknown dtype": _step(dtype=_set(0, dtype=99)),
    "a wrong trailing shape": _step(shape=_set(0, shape=[2, 3, 2])),
    "too few dimensions": _step(shape=_set(0, shape=[12])),
    "two step counts": _step(shape=_set(1, shape=[1], data=np.zeros(1, np.int64).tobytes())),
    "no time step": _step(0),
    "a chunk too long": _step(MAX_CHUNK + 1),
    "a short payload": _step(data=_set(0, data=b"\0" * 44)),
    "a negative dimension": _step(shape=_set(0, shape=[-2, 2, 3])),
}


@pytest.mark.filterwarnings("ignore:overflow encountered in dot")  # the server's own filter, which pytest resets
@pytest.mark.parametrize("case", list(STEPS))
def test_the_step_decoder_decodes_and_refuses_like_the_full_checks(case: str) -> None:
    step = STEPS[case]
    fast = _outcome(lambda: StepDecoder(DECODED).decode(step, MAX_CHUNK))
    assert fast == _outcome(lambda: decode_tensors(DECODED, step, MAX_CHUNK))
    well_formed = case in ("one step", "a chunk", "the longest chunk", "another order", "huge finite values")
    assert fast[0] == ("decoded" if well_formed else "refused")


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**35, 2**64 - 1])
def test_varints_are_protobufs(value: int) -> None:
    assert varint(value) == pb.StepResult(seq=value).SerializeToString()[1:] or value == 0


@pytest.mark.parametrize("model", ["lstm256", "char_lm"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("last_only", [False, True])
def test_answers_written_as_bytes_are_the_bytes_of_the_built_message(model: str, steps: int, last_only: bool) -> None:
    manifest = Manifest.load(SHIPPED_MODELS / model)
    driver = driver_class(manifest.task)(manifest)
    rng = np.random.default_rng(steps)
    outputs = {t.name: rng.standard_normal((steps, *t.shape)).astype(t.np_dtype) for t in manifest.outputs}
    names = tuple(t.name for t in manifest.outputs)
    option_sets = [ResolvedOptions(top_k=5, return_tensors=names), ResolvedOptions(top_k=1, return_tensors=())]
    if manifest.task == "language_model":
        logits = outputs["logits"]
        logits[0, 0] = logits[0, 1] = 200.0  # two first; the rest round to a zero float32
        outputs.update(ranked_logits("logits")(outputs))
        assert (outputs[RANKED_PROBS][0, 2:] == 0).all() and 0 in outputs[RANKED_IDS][0, :2]
        vocabulary = len(manifest.vocabulary)
        option_sets.append(ResolvedOptions(top_k=vocabulary, return_tensors=("logits",)))
        token_ids = rng.integers(0, vocabulary, steps)
        token_ids[0] = 0
        decoded = StepInputs({"ids": token_ids}, steps, token_ids)
    else:
        decoded = StepInputs({}, steps)
    for options in option_sets:
        for seq in (0, 1, 300, 2**40):
            step = pb.Step(seq=seq, last_only=last_only)
            built = driver.build_result(options, step, decoded, outputs).SerializeToString()
            assert driver.encode_result(options, step, decoded, outputs) == built


def test_an_output_unlike_its_manifest_is_still_answered_through_the_message() -> None:
    manifest = Manifest.load(SHIPPED_MODELS / "lstm256")
    driver = driver_class(manifest.task)(manifest)
    odd = {t.name: np.arange(3, dtype=np.float64) for t in manifest.outputs}  # float64: not the manifest's float32
    step, options = pb.Step(seq=2), ResolvedOptions(return_tensors=(manifest.outputs[0].name,))
    with pytest.raises(ValueError, match="float64 has no wire type"):
        driver.encode_result(options, step, StepInputs({}, 1), odd)
    float32 = {name: value.astype(np.float32)[np.newaxis] for name, value in odd.items()}  # the wrong shape
    answer = pb.StepResult.FromString(driver.encode_result(options, step, StepInputs({}, 1), float32))
    assert list(answer.outputs[0].tensors[0].shape) == [3] and answer.seq == 2
