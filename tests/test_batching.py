"""The batching engine: results never depend on batching, and the scheduler keeps its rules.

End to end, hundreds of sessions run at once over real gRPC on loopback (per step, in chunks of
mixed lengths, and multiplexed), and every session's logits must equal an offline ONNX Runtime
run of that session alone, one character per call. Then the scheduler, the state slabs, the
bound call buffers and the metrics helpers are tested on their own.

Every state-touching test runs twice: with host slabs (numpy) and with device slabs (ORT
OrtValues moved by ORT graphs, ``service.device_slabs``). On this CPU-only machine the device
is the CPU, which runs the very code that serves state from GPU memory under the CUDA provider.

Tolerance: 1e-5 absolute on the logits, as the issue asks. A batch of B rows goes through other
matrix kernels than a batch of 1 (different summation order in float32), so equality is to
float tolerance, not bitwise; the tiny model's logits are O(1), so 1e-5 is ~1e-5 relative.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from service.api import statestream_pb2 as pb
from service.api import statestream_pb2_grpc as rpc
from service.buffers import HOST, Device
from service.calls import BatchCall
from service.device_slabs import DeviceSlabs
from service.metrics import CachedCounter, Metrics, observe_many
from service.registry import LoadedModel
from service.runtime import build_calls, build_slabs
from service.scheduler import Postprocess, Scheduler, StepJob
from service.settings import Settings
from service.slabs import Slabs, StateSlabs
from service.tasks import driver_class
from service.tensors import from_proto
from tests.conftest import OfflineLM
from tests.servers import ServerThread
from tests.waiting import Gate

TOLERANCE = 1e-5
STREAM_SESSIONS = 300
CHUNKED_SESSIONS = 200
MULTIPLEXED_SESSIONS = 1536
PER_MESSAGE = 1024  # one message's steps run as one batch: each session among 1,000+ others
STEPS = 12
ALPHABET = "abcdefghijklmnopqrstuvwxyz .,;!?ETAOINS"


def _text(index: int, length: int = STEPS) -> str:
    """A different text for every session (a walk through the alphabet with its own stride)."""
    stride = 1 + index % 7
    return "".join(ALPHABET[(index * 3 + i * stride) % len(ALPHABET)] for i in range(length))


def _logits(result: pb.StepResult) -> np.ndarray:
    return np.stack([from_proto(out.tensors[0]) for out in result.outputs])


def _batches_larger_than(server: ServerThread, size: int) -> float:
    registry = server.server.metrics.registry
    count = registry.get_sample_value("statestream_batch_size_count", {"model": "char_lm"}) or 0.0
    within = registry.get_sample_value("statestream_batch_size_bucket", {"model": "char_lm", "le": f"{size:.1f}"})
    return count - (within or 0.0)


def _mean_batch(server: ServerThread) -> float:
    registry = server.server.metrics.registry
    total = registry.get_sample_value("statestream_batch_size_sum", {"model": "char_lm"}) or 0.0
    count = registry.get_sample_value("statestream_batch_size_count", {"model": "char_lm"}) or 1.0
    return total / count


STATE_MEMORIES = ["host", "device"]


@pytest.fixture(scope="module", params=STATE_MEMORIES)
def batching_server(tiny_lm_dir: Path, request: pytest.FixtureRequest) -> Any:
    # A small initial capacity: the slabs grow while hundreds of sessions are stepping.
    settings = Settings(
        models_dir=tiny_lm_dir,
        max_chunk=64,
        max_sessions_per_caller=100_000,
        max_batch=1024,
        initial_capacity=4,
        state_memory=request.param,
    )
    running = ServerThread(settings)
    (runtime,) = list(running.server.runtimes)
    assert isinstance(runtime.slabs, DeviceSlabs if request.param == "device" else StateSlabs)
    yield running
    running.stop()


def _check_against_offline(texts: list[str], got: list[np.ndarray], offline_lm: OfflineLM) -> None:
    for index, (text, logits) in enumerate(zip(texts, got, strict=True)):
        expected = offline_lm.logits(text)
        assert logits.shape == expected.shape
        error = float(np.max(np.abs(logits - expected)))
        assert error <= TOLERANCE, f"session {index} ({text!r}) differs from its lone offline run by {error:.2e}"


async def _stream_sessions(target: str, texts: list[str], chunks: list[int]) -> list[np.ndarray]:
    """One Session stream per text, all at once; each sends its text in chunks of its own K."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    try:

        async def one(index: int) -> np.ndarray:
            stub = rpc.SessionServiceStub(channels[index % len(channels)])
            call = stub.Session()
            options = pb.SessionOptions(return_tensors=["logits"])
            await call.write(pb.SessionRequest(open=pb.OpenSession(model="char_lm", options=options)))
            assert (await call.read()).HasField("opened")
            text, k = texts[index], chunks[index]
            rows = []
            for seq, start in enumerate(range(0, len(text), k), start=1):
                await call.write(pb.SessionRequest(step=pb.Step(seq=seq, text=text[start : start + k])))
                response = await call.read()
                assert response.HasField("result"), response
                rows.append(_logits(response.result))
            await call.done_writing()
            return np.concatenate(rows)

        return list(await asyncio.gather(*(one(i) for i in range(len(texts)))))
    finally:
        for channel in channels:
            await channel.close()


def test_per_step_outputs_of_hundreds_of_concurrent_sessions_equal_their_lone_runs(
    batching_server: ServerThread, offline_lm: OfflineLM
) -> None:
    texts = [_text(i) for i in range(STREAM_SESSIONS)]
    got = asyncio.run(_stream_sessions(batching_server.target, texts, [1] * len(texts)))
    _check_against_offline(texts, got, offline_lm)
    assert _mean_batch(batching_server) > 1.0, "the sessions never shared a batch: nothing was tested"


def test_chunked_outputs_of_mixed_chunk_lengths_equal_their_lone_runs(
    batching_server: ServerThread, offline_lm: OfflineLM
) -> None:
    texts = [_text(i, 16) for i in range(CHUNKED_SESSIONS)]
    chunks = [(1, 3, 4, 8, 16)[i % 5] for i in range(len(texts))]
    got = asyncio.run(_stream_sessions(batching_server.target, texts, chunks))
    _check_against_offline(texts, got, offline_lm)


async def _multiplexed(target: str, texts: list[str]) -> list[np.ndarray]:
    """Sessions from CreateSession, stepped by Multiplex messages of PER_MESSAGE sessions each."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = rpc.SessionServiceStub(channel)
        options = pb.SessionOptions(return_tensors=["logits"])
        ids: list[str] = []
        for start in range(0, len(texts), 256):  # a few hundred calls in flight at a time
            opened = await asyncio.gather(
                *(
                    stub.CreateSession(pb.OpenSession(model="char_lm", options=options))
                    for _ in texts[start : start + 256]
                )
            )
            ids.extend(o.session_id for o in opened)
        got: list[list[np.ndarray]] = [[] for _ in texts]
        groups = [range(i, min(i + PER_MESSAGE, len(texts))) for i in range(0, len(texts), PER_MESSAGE)]

        async def drive(group: range) -> None:
            call = stub.Multiplex()
            for t in range(STEPS):
                request = pb.MultiplexRequest(
                    steps=[pb.SessionStep(session_id=ids[i], step=pb.Step(seq=t + 1, text=texts[i][t])) for i in group]
                )
                await call.write(request)
                response = await call.read()
                assert len(response.results) == len(group)
                for i, result in zip(group, response.results, strict=True):
                    assert result.session_id == ids[i]
                    assert result.HasField("result"), result
                    got[i].append(_logits(result.result))
            await call.done_writing()

        await asyncio.gather(*(drive(group) for group in groups))
        return [np.concatenate(rows) for rows in got]


def test_multiplexed_outputs_equal_their_lone_runs(batching_server: ServerThread, offline_lm: OfflineLM) -> None:
    texts = [_text(i + 1000) for i in range(MULTIPLEXED_SESSIONS)]
    larger_before = _batches_larger_than(batching_server, 512)
    got = asyncio.run(_multiplexed(batching_server.target, texts))
    _check_against_offline(texts, got, offline_lm)
    assert _batches_larger_than(batching_server, 512) > larger_before, "no batch held 1,000 sessions"


# -- the scheduler on its own --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_lm_dir: Path) -> LoadedModel:
    return LoadedModel.from_folder(tiny_lm_dir / "char_lm", Settings(), driver_class)


def make_slabs(model: LoadedModel, memory: str, capacity: int) -> Slabs:
    """Host slabs, or device slabs on the CPU provider's memory, as the server builds them."""
    slabs = build_slabs(model, Settings(state_memory=memory, initial_capacity=capacity))
    assert isinstance(slabs, StateSlabs if memory == "host" else DeviceSlabs)
    return slabs


def all_state(slabs: Slabs, rows: list[int]) -> dict[int, dict[str, np.ndarray]]:
    return {row: slabs.read_row(row) for row in rows}


def assert_same_state(got: dict[int, dict[str, np.ndarray]], want: dict[int, dict[str, np.ndarray]]) -> None:
    assert got.keys() == want.keys()
    for row, state in want.items():
        for name, value in state.items():
            np.testing.assert_array_equal(got[row][name], value, err_msg=f"row {row}, state {name}")


@pytest.fixture(params=STATE_MEMORIES)
def memory(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Recorder:
    """Runs jobs through a fresh scheduler per event loop, over shared slabs; records every batch as (row, K).

    ``on_call`` and ``postprocess``, when set, are given to each scheduler it makes (a model call
    made to fail, or held; a driver's postprocess).
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_batch: int = 256,
        io_binding: bool = True,
        memory: str = "host",
        inline_call_us: float = 0.0,
        max_delay_ms: float = 0.0,
    ) -> None:
        self.model = model
        self.max_batch = max_batch
        self.inline_call_us = inline_call_us
        self.max_delay_ms = max_delay_ms
        self.slabs = make_slabs(model, memory, 4)
        settings = Settings(state_memory=memory, io_binding=io_binding, max_batch=max_batch)
        self.calls = build_calls(model, settings)
        self.batches: list[list[tuple[int, int]]] = []
        self.on_call: Callable[[BatchCall], None] | None = None
        self.postprocess: Postprocess | None = None

    def scheduler(self) -> Scheduler:
        scheduler = Scheduler(
            self.model,
            self.slabs,
            max_batch=self.max_batch,
            max_delay_ms=self.max_delay_ms,
            batching=True,
            metrics=Metrics(),
            calls=self.calls,
            inline_call_us=self.inline_call_us,
        )
        scheduler.on_batch = self.record
        scheduler.on_call = self.on_call
        scheduler.postprocess = self.postprocess
        return scheduler

    def record(self, batch: list[StepJob]) -> None:
        self.batches.append([(job.row, job.steps) for job in batch])


def model_fails(call: BatchCall) -> None:
    """An ``on_call`` under which every model call fails, as a failing ONNX Runtime call would."""
    raise RuntimeError("ORT failed")


def fails_on(poison: int) -> Callable[[BatchCall], None]:
    """An ``on_call`` under which a call fails if any of its steps feeds ``poison`` (an input the graph cannot take)."""

    def check(call: BatchCall) -> None:
        if (call.inputs["char_id"] == poison).any():
            raise RuntimeError("ORT failed on one row")

    return check


def _ids(offline_lm: OfflineLM, text: str) -> np.ndarray:
    return np.array([offline_lm.vocab[ch] for ch in text], dtype=np.int64)


def _run_jobs(recorder: Recorder, jobs: list[tuple[int, np.ndarray]]) -> list[Any]:
    """Submits every (row, ids) in the same turn of the loop; returns outputs or exceptions, in order."""

    async def main() -> list[Any]:
        scheduler = recorder.scheduler()
        scheduler.start()
        try:
            tasks = [asyncio.ensure_future(scheduler.run(row, {"char_id": ids}, len(ids))) for row, ids in jobs]
            return list(await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30))
        finally:
            await scheduler.stop()

    return asyncio.run(main())


def test_two_steps_of_one_session_never_share_a_batch_and_keep_their_order(
    tiny_model: LoadedModel, offline_lm: OfflineLM, memory: str
) -> None:
    recorder = Recorder(tiny_model, memory=memory)
    rows = [recorder.slabs.allocate() for _ in range(6)]
    text = "hello"
    # Five steps of rows[0] interleaved with single steps of the others, all submitted at once.
    jobs = [(rows[0], _ids(offline_lm, ch)) for ch in text]
    jobs[1:1] = [(row, _ids(offline_lm, "x")) for row in rows[1:]]
    outputs = _run_jobs(recorder, jobs)
    for batch in recorder.batches:
        batch_rows = [row for row, _ in batch]
        assert len(batch_rows) == len(set(batch_rows)), f"a session twice in one batch: {batch}"
    assert sum(1 for batch in recorder.batches if (rows[0], 1) in batch) == len(text)
    # The steps of rows[0] applied in order: its outputs are the offline run of "hello".
    mine = [out["logits"][0] for (row, _), out in zip(jobs, outputs, strict=True) if row == rows[0]]
    np.testing.assert_allclose(np.stack(mine), offline_lm.logits(text), atol=TOLERANCE)
    others = [out["logits"][0] for (row, _), out in zip(jobs, outputs, strict=True) if row != rows[0]]
    for logits in others:
        np.testing.assert_allclose(logits, offline_lm.logits("x")[0], atol=TOLERANCE)


def test_batches_are_capped_and_hold_one_chunk_length(
    tiny_model: LoadedModel, offline_lm: OfflineLM, memory: str
) -> None:
    recorder = Recorder(tiny_model, max_batch=4, memory=memory)
    rows = [recorder.slabs.allocate() for _ in range(13)]
    texts = {row: ("ab" if row % 3 == 0 else "c") for row in rows}
    outputs = _run_jobs(recorder, [(row, _ids(offline_lm, texts[row])) for row in rows])
    assert all(len(batch) <= 4 for batch in recorder.batches)
    assert all(len({k for _, k in batch}) == 1 for batch in recorder.batches)
    assert sorted(row for batch in recorder.batches for row, _ in batch) == sorted(rows)
    for row, out in zip(rows, outputs, strict=True):
        np.testing.assert_allclose(out["logits"], offline_lm.logits(texts[row]), atol=TOLERANCE)


def test_a_failing_call_fails_every_step_of_its_batch_and_writes_no_state(
    tiny_model: LoadedModel, offline_lm: OfflineLM, memory: str
) -> None:
    recorder = Recorder(tiny_model, memory=memory)
    rows = [recorder.slabs.allocate() for _ in range(5)]
    for row in rows:  # give every session some state first
        recorder.slabs.write_row(row, {s.input: np.full(s.shape, 0.25, s.np_dtype) for s in tiny_model.manifest.state})
    before = all_state(recorder.slabs, rows)
    recorder.on_call = model_fails
    outputs = _run_jobs(recorder, [(row, _ids(offline_lm, "a")) for row in rows])
    assert all(isinstance(out, RuntimeError) for out in outputs)
    assert len(recorder.batches) == 1 and len(recorder.batches[0]) == len(rows)
    assert_same_state(all_state(recorder.slabs, rows), before)
    recorder.on_call = None
    # The scheduler survived: the same sessions step normally afterwards.
    outputs = _run_jobs(recorder, [(row, _ids(offline_lm, "a")) for row in rows])
    assert all(isinstance(out, dict) for out in outputs)


def test_a_step_that_makes_the_model_fail_fails_alone_and_its_batch_mates_go_on(
    tiny_model: LoadedModel, offline_lm: OfflineLM, memory: str
) -> None:
    recorder = Recorder(tiny_model, memory=memory)
    rows = [recorder.slabs.allocate() for _ in range(6)]
    poisoned = rows[2]
    before = recorder.slabs.read_row(poisoned)
    recorder.on_call = fails_on(int(_ids(offline_lm, "z")[0]))
    outputs = _run_jobs(recorder, [(row, _ids(offline_lm, "z" if row == poisoned else "a")) for row in rows])
    assert len(recorder.batches) == 1 and len(recorder.batches[0]) == len(rows)  # they did share one batch
    for row, out in zip(rows, outputs, strict=True):
        if row == poisoned:
            assert isinstance(out, RuntimeError)
        else:
            np.testing.assert_allclose(out["logits"], offline_lm.logits("a"), atol=TOLERANCE)
    for name, value in recorder.slabs.read_row(poisoned).items():
        np.testing.assert_array_equal(value, before[name])  # the failed step wrote no state


def test_a_failing_lone_step_on_the_direct_path_writes_no_state(
    tiny_model: LoadedModel, offline_lm: OfflineLM, memory: str
) -> None:
    recorder = Recorder(tiny_model, memory=memory)
    row = recorder.slabs.allocate()
    before = recorder.slabs.read_row(row)
    recorder.on_call = model_fails
    (out,) = _run_jobs(recorder, [(row, _ids(offline_lm, "q"))])
    assert isinstance(out, RuntimeError)
    for name, value in recorder.slabs.read_row(row).items():
        np.testing.assert_array_equal(value, before[name])


def test_a_lone_streams_step_runs_inside_submit_and_a_second_session_brings_batching_back(
    tiny_model: LoadedModel, offline_lm: OfflineLM, memory: str
) -> None:
    recorder = Recorder(tiny_model, memory=memory)
    a, b = recorder.slabs.allocate(), recorder.slabs.allocate()
    lane_done: list[bool] = []

    async def main() -> list[Any]:
        scheduler = recorder.scheduler()
        scheduler.start()
        try:
            first = await scheduler.run(a, {"char_id": _ids(offline_lm, "h")}, 1)  # a lone batch, via the loop
            looped = scheduler.submit(a, {"char_id": _ids(offline_lm, "e")}, 1)  # a server-side loop's step
            lane_done.append(looped.done())
            second = await looped  # a lone batch again
            lane = scheduler.submit(a, {"char_id": _ids(offline_lm, "l")}, 1, lane=True)
            lane_done.append(lane.done())  # the fast lane: it ran inside submit
            together = [
                scheduler.submit(b, {"char_id": _ids(offline_lm, "x")}, 1, lane=True),
                scheduler.submit(a, {"char_id": _ids(offline_lm, "l")}, 1, lane=True),
            ]
            lane_done.extend(future.done() for future in together)
            return [first, second, await lane, *await asyncio.gather(*together)]
        finally:
            await scheduler.stop()

    first, second, third, other, fourth = asyncio.run(main())
    assert lane_done == [False, True, False, False]
    # The loop's step queued; the fast-lane step skipped the queue; the next two batched together.
    assert recorder.batches == [[(a, 1)], [(a, 1)], [(b, 1), (a, 1)]]
    mine = np.stack([out["logits"][0] for out in (first, second, third, fourth)])
    np.testing.assert_allclose(mine, offline_lm.logits("hell"), atol=TOLERANCE)
    np.testing.assert_allclose(other["logits"][0], offline_lm.logits("x")[0], atol=TOLERANCE)


@pytest.mark.parametrize("window_ms", [0.0, 300.0])
def test_a_step_that_arrives_within_the_window_joins_the_first_steps_batch(
    tiny_model: LoadedModel, offline_lm: OfflineLM, memory: str, window_ms: float
) -> None:
    """``--max-delay-ms``: once steps arrive densely, the first step of a batch waits up to the
    window for others to join it; without a window it runs at once. Either way each step's
    answer is its lone run's."""
    recorder = Recorder(tiny_model, memory=memory, max_delay_ms=window_ms)
    a, b, *others = (recorder.slabs.allocate() for _ in range(6))

    async def main() -> tuple[list[Any], float]:
        scheduler = recorder.scheduler()
        scheduler.start()
        try:
            # Four steps in one turn: arrivals are dense, so the window opens from now on.
            await asyncio.gather(*(scheduler.run(row, {"char_id": _ids(offline_lm, "x")}, 1) for row in others))
            started = time.perf_counter()
            first = asyncio.ensure_future(scheduler.run(a, {"char_id": _ids(offline_lm, "h")}, 1))
            await asyncio.sleep(0.03)  # well inside the window, well after a turn of the loop
            second = scheduler.run(b, {"char_id": _ids(offline_lm, "x")}, 1)
            outputs = await asyncio.wait_for(asyncio.gather(first, second), 30)
            return list(outputs), time.perf_counter() - started
        finally:
            await scheduler.stop()

    (first, second), elapsed = asyncio.run(main())
    if window_ms:
        assert recorder.batches[-1:] == [[(a, 1), (b, 1)]]
        assert elapsed >= window_ms / 1000  # the first step waited out the window
    else:
        assert recorder.batches[-2:] == [[(a, 1)], [(b, 1)]]
    np.testing.assert_allclose(first["logits"][0], offline_lm.logits("h")[0], atol=TOLERANCE)
    np.testing.assert_allclose(second["logits"][0], offline_lm.logits("x")[0], atol=TOLERANCE)


def test_the_window_stays_shut_while_steps_arrive_too_sparsely_to_fill_it(
    tiny_model: LoadedModel, offline_lm: OfflineLM
) -> None:
    """A wait pays only when another step is likely to come within it: with no step seen
    before, or arrivals more than two windows apart, a step runs at once."""
    window_s = 5.0
    recorder = Recorder(tiny_model, max_delay_ms=window_s * 1000)
    row = recorder.slabs.allocate()

    async def main() -> float:
        scheduler = recorder.scheduler()
        scheduler.start()
        try:
            started = time.perf_counter()
            await asyncio.wait_for(scheduler.run(row, {"char_id": _ids(offline_lm, "h")}, 1), 30)
            elapsed = time.perf_counter() - started
            # The rule on its own, fed arrival times: gaps of 11 s keep a 5 s window shut, gaps
            # of 1 s open it.
            later = time.perf_counter() + 100  # after the real arrival above
            for gap in (11.0, 11.0, 11.0):
                later += gap
                scheduler._arrived(later)
            assert not scheduler._window_pays()
            for _ in range(40):  # the mean forgets the long gaps at a tenth an arrival
                later += 1.0
                scheduler._arrived(later)
            assert scheduler._window_pays()
            return elapsed
        finally:
            await scheduler.stop()

    assert asyncio.run(main()) < window_s / 2  # the first step of all did not wait the window out
    assert recorder.batches == [[(row, 1)]]


@pytest.mark.parametrize("inline_call_us", [0.0, 10_000.0])
def test_a_small_batch_runs_on_the_loop_once_calls_of_its_size_proved_cheap(
    tiny_model: LoadedModel, offline_lm: OfflineLM, memory: str, inline_call_us: float
) -> None:
    """Under ``inline_call_us`` a batch of single steps runs on the event loop's thread, once a call
    of its size was measured; a chunk never does, and the answers are the same either way."""
    recorder = Recorder(tiny_model, memory=memory, inline_call_us=inline_call_us)
    rows = [recorder.slabs.allocate() for _ in range(3)]
    threads: list[tuple[int, bool]] = []  # per model call: its rows, and whether it ran on the loop's thread
    recorder.on_call = lambda call: threads.append(
        (len(call.inputs["char_id"]), threading.current_thread() is threading.main_thread())
    )
    text = "abcd"

    async def main() -> list[list[Any]]:
        scheduler = recorder.scheduler()
        scheduler.start()
        try:
            rounds = []
            for ch in text:  # three sessions' steps together, four times
                ids = _ids(offline_lm, ch)
                rounds.append(await asyncio.gather(*(scheduler.run(row, {"char_id": ids}, 1) for row in rows)))
            chunks = _ids(offline_lm, "ef")  # two steps each: a chunk, never inline
            rounds.append(await asyncio.gather(*(scheduler.run(row, {"char_id": chunks}, 2) for row in rows)))
            return rounds
        finally:
            await scheduler.stop()

    rounds = asyncio.run(main())
    on_loop = [loop for rows_in_call, loop in threads if rows_in_call == len(rows)]
    expected = (
        [False] + [inline_call_us > 0] * (len(text) - 1) + [False]
    )  # the first call of 3 is measured on the worker
    assert on_loop == expected
    for row_index in range(len(rows)):
        logits = np.concatenate([outputs[row_index]["logits"] for outputs in rounds])
        np.testing.assert_allclose(logits, offline_lm.logits(text + "ef"), atol=TOLERANCE)


@pytest.mark.skipif(sys.platform != "linux", reason="OS thread names are read from /proc (Linux)")
def test_the_models_worker_thread_carries_its_name_to_the_os(tiny_model: LoadedModel, offline_lm: OfflineLM) -> None:
    """``top -H``, py-spy and the bench's per-thread CPU see the ORT worker as ``ort-<model>``."""
    recorder = Recorder(tiny_model)
    rows = [recorder.slabs.allocate() for _ in range(2)]
    names: list[str] = []
    recorder.on_call = lambda call: names.append(
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
    )
    _run_jobs(recorder, [(row, _ids(offline_lm, "a")) for row in rows])  # a batch of two: the worker's
    assert names == [f"ort-{tiny_model.manifest.name}"[:15]]


def test_a_failing_step_on_the_fast_lane_fails_alone_and_writes_no_state(
    tiny_model: LoadedModel, offline_lm: OfflineLM, memory: str
) -> None:
    recorder = Recorder(tiny_model, memory=memory)
    row = recorder.slabs.allocate()

    async def main() -> tuple[dict[str, np.ndarray], BaseException | None]:
        scheduler = recorder.scheduler()
        scheduler.start()
        try:
            await scheduler.run(row, {"char_id": _ids(offline_lm, "h")}, 1)
            before = recorder.slabs.read_row(row)
            scheduler.on_call = model_fails
            failed = scheduler.submit(row, {"char_id": _ids(offline_lm, "e")}, 1, lane=True)
            scheduler.on_call = None
            assert failed.done()
            return before, failed.exception()
        finally:
            await scheduler.stop()

    before, exc = asyncio.run(main())
    assert isinstance(exc, RuntimeError)
    for name, value in recorder.slabs.read_row(row).items():
        np.testing.assert_array_equal(value, before[name])


def test_outputs_handed_out_are_not_overwritten_by_later_batches(
    tiny_model: LoadedModel, offline_lm: OfflineLM, memory: str
) -> None:
    recorder = Recorder(tiny_model, memory=memory)
    row = recorder.slabs.allocate()
    first = _run_jobs(recorder, [(row, _ids(offline_lm, "a"))])[0]["logits"].copy()
    kept = _run_jobs(recorder, [(row, _ids(offline_lm, "a"))])
    held = kept[0]["logits"]
    snapshot = held.copy()
    _run_jobs(recorder, [(row, _ids(offline_lm, "z"))])
    np.testing.assert_array_equal(held, snapshot)
    assert not np.array_equal(first, snapshot)  # the state moved on between the calls


@pytest.mark.parametrize("io_binding", [True, False])
def test_bound_and_unbound_calls_compute_the_same(
    tiny_model: LoadedModel, offline_lm: OfflineLM, io_binding: bool, memory: str
) -> None:
    recorder = Recorder(tiny_model, io_binding=io_binding, memory=memory)
    rows = [recorder.slabs.allocate() for _ in range(3)]
    texts = ["abcd", "efgh", "ijkl"]
    outputs = _run_jobs(recorder, [(row, _ids(offline_lm, t)) for row, t in zip(rows, texts, strict=True)])
    for text, out in zip(texts, outputs, strict=True):
        np.testing.assert_allclose(out["logits"], offline_lm.logits(text), atol=TOLERANCE)


# -- slabs ---------------------------------------------------------------------------------------


def _filled(model: LoadedModel, value: float) -> dict[str, np.ndarray]:
    return {s.input: np.full(s.shape, value, s.np_dtype) for s in model.manifest.state}


def test_slabs_grow_keeping_every_row_and_reuse_released_rows_zeroed(tiny_model: LoadedModel, memory: str) -> None:
    slabs = make_slabs(tiny_model, memory, 2)
    rows = [slabs.allocate() for _ in range(9)]
    assert len(set(rows)) == 9 and slabs.capacity == 16 and slabs.rows_in_use == 9
    assert slabs.nbytes == 16 * slabs.row_bytes == 16 * tiny_model.manifest.state_bytes
    for row in rows:
        slabs.write_row(row, _filled(tiny_model, row))
    slabs.allocate()  # no growth needed, but every earlier row must be intact
    for row in rows:
        assert all(np.all(value == row) for value in slabs.read_row(row).values())
    slabs.release(rows[3])
    again = slabs.allocate()
    assert again == rows[3]
    assert all(np.all(value == 0) for value in slabs.read_row(again).values())


def test_slab_gather_and_scatter_move_exactly_the_named_rows(tiny_model: LoadedModel, memory: str) -> None:
    slabs = make_slabs(tiny_model, memory, 8)
    rows = [slabs.allocate() for _ in range(8)]
    for row in rows:
        slabs.write_row(row, _filled(tiny_model, row))
    picked = np.array([rows[5], rows[1], rows[6]], dtype=np.intp)
    specs = tiny_model.manifest.state
    out = {s.input: np.empty((3, *s.shape), s.np_dtype) for s in specs}
    slabs.gather(picked, out)
    for array in out.values():
        assert [float(array[i].flat[0]) for i in range(3)] == [float(r) for r in picked]
        assert all(np.all(array[i] == array[i].flat[0]) for i in range(3))  # whole rows, not their first value
    slabs.scatter(picked, {n: -a for n, a in out.items()})
    for row in rows:
        expected = -row if row in picked else row
        assert all(np.all(value == expected) for value in slabs.read_row(row).values())
    slabs.copy_row(rows[2], rows[3])  # a fork
    assert all(np.all(value == rows[2]) for value in slabs.read_row(rows[3]).values())
    assert all(np.all(value == rows[2]) for value in slabs.read_row(rows[2]).values())
    one = {s.input: np.zeros((1, *s.shape), s.np_dtype) for s in specs}
    slabs.gather_row(rows[4], one)
    slabs.scatter_row(rows[0], {n: a + 0.5 for n, a in one.items()})
    assert all(np.all(value == rows[4] + 0.5) for value in slabs.read_row(rows[0]).values())


def test_slabs_that_grow_between_a_batchs_gather_and_scatter_keep_its_new_state(
    tiny_model: LoadedModel, memory: str
) -> None:
    """A session opened while a batch is on the model's thread grows the slabs under it."""

    def two_steps(memory: str, grow_during_second: bool) -> tuple[Slabs, list[int], list[int]]:
        slabs = make_slabs(tiny_model, memory, 2)
        call = build_calls(tiny_model, Settings(state_memory=memory, max_batch=4)).get(2, 1)
        rows = [slabs.allocate() for _ in range(2)]
        for row in rows:
            slabs.write_row(row, _filled(tiny_model, row + 1))
        batch = np.array(rows, dtype=np.intp)
        newcomers: list[int] = []
        for step in range(2):  # the first step leaves cached bindings that name the old slabs
            call.inputs["char_id"][...] = step
            slabs.gather(batch, call.state)
            call.run()  # on the worker thread in the server; the slabs may grow meanwhile
            if step == 1 and grow_during_second:
                newcomers = [slabs.allocate() for _ in range(3)]
                assert slabs.capacity == 8
            slabs.scatter(batch, call.new_state)
        return slabs, rows, newcomers

    grown, rows, newcomers = two_steps(memory, grow_during_second=True)
    reference, _, _ = two_steps("host", grow_during_second=False)
    for row in rows:
        for name, value in grown.read_row(row).items():
            np.testing.assert_allclose(value, reference.read_row(row)[name], atol=1e-6)
    for row in newcomers:
        assert all(np.all(value == 0) for value in grown.read_row(row).values())


def test_state_memory_auto_keeps_state_where_the_model_runs(tiny_model: LoadedModel) -> None:
    assert tiny_model.provider == "CPUExecutionProvider"
    assert tiny_model.state_device("auto") == HOST  # numpy's gather beats ORT's on the CPU
    assert tiny_model.state_device("host") == HOST
    assert tiny_model.state_device("device") == Device("cpu")
    with pytest.raises(ValueError, match="state_memory: 'gpu' is not one of auto, host, device"):
        Settings(state_memory="gpu")


# -- metrics ---------------------------------------------------------------------------------------


def test_observe_many_records_what_observe_would() -> None:
    buckets = (1e-4, 1e-3, 1e-2, 0.1)
    values = [5e-5, 1e-4, 2e-4, 1e-3, 0.5, 0.05, 0.05, 2.0]
    registries = CollectorRegistry(), CollectorRegistry()
    one, many = (Histogram("h", "x", ["m"], buckets=buckets, registry=r).labels("a") for r in registries)
    for value in values:
        one.observe(value)
    observe_many(many, values)

    def samples(registry: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        return [
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    want, got = (samples(r) for r in registries)
    assert len(got) == len(buckets) + 3  # the buckets, +Inf, the count and the sum
    assert [s[:2] for s in got] == [s[:2] for s in want]
    assert [s[2] for s in got] == pytest.approx([s[2] for s in want])


def test_cached_labels_return_the_same_child() -> None:
    registry = CollectorRegistry()
    counter = CachedCounter("c", "x", ["model", "kind"], registry=registry)
    assert counter.labels("m", "step") is counter.labels("m", "step")
    counter.labels("m", "step").inc(2)
    counter.labels(model="m", kind="step").inc(1)
    assert registry.get_sample_value("c_total", {"model": "m", "kind": "step"}) == 3


def test_a_postprocess_runs_over_the_batch_and_each_step_gets_its_rows(
    tiny_model: LoadedModel, offline_lm: OfflineLM, memory: str
) -> None:
    from service.drivers.language import RANKED_IDS, RANKED_PROBS, ranked_logits

    recorder = Recorder(tiny_model, memory=memory)
    rows = [recorder.slabs.allocate() for _ in range(4)]
    texts = ["ab", "cd", "ef", "gh"]
    recorder.postprocess = ranked_logits("logits")
    outputs = _run_jobs(recorder, [(row, _ids(offline_lm, t)) for row, t in zip(rows, texts, strict=True)])
    tokens = list(offline_lm.manifest.vocabulary)
    for text, out in zip(texts, outputs, strict=True):
        logits = offline_lm.logits(text).astype(np.float64)  # the reference: a plain per-step softmax
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        assert out[RANKED_IDS].shape == (2, len(tokens))
        for t in range(2):
            expected = sorted(range(len(tokens)), key=lambda i: (-probs[t][i], i))[:5]  # ties: lower id
            assert out[RANKED_IDS][t, :5].tolist() == expected
            np.testing.assert_allclose(out[RANKED_PROBS][t, :5], probs[t][expected], rtol=1e-6)


def test_a_failing_postprocess_fails_the_batch_and_writes_no_state(
    tiny_model: LoadedModel, offline_lm: OfflineLM, memory: str
) -> None:
    recorder = Recorder(tiny_model, memory=memory)
    rows = [recorder.slabs.allocate() for _ in range(3)]
    before = all_state(recorder.slabs, rows)

    def broken(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ValueError("postprocess failed")

    recorder.postprocess = broken
    outputs = _run_jobs(recorder, [(row, _ids(offline_lm, "a")) for row in rows])
    assert all(isinstance(out, ValueError) for out in outputs)
    assert_same_state(all_state(recorder.slabs, rows), before)


def test_stopping_during_a_batch_fails_its_steps_instead_of_leaving_them_waiting(
    tiny_model: LoadedModel, offline_lm: OfflineLM, memory: str
) -> None:
    from service.scheduler import SchedulerStopped

    recorder = Recorder(tiny_model, memory=memory)
    rows = [recorder.slabs.allocate() for _ in range(2)]
    gate = Gate()  # holds the batch's model call on the worker thread
    recorder.on_call = gate.hold

    async def main() -> list[Any]:
        scheduler = recorder.scheduler()
        scheduler.start()
        tasks = [asyncio.ensure_future(scheduler.run(row, {"char_id": _ids(offline_lm, "a")}, 1)) for row in rows]
        await gate.arrival()
        # The batch is still on the worker thread when stop() comes: stop() cancels the loop at
        # once, before the event loop can take the call's result; opening the gate first only
        # lets stop() join the worker thread.
        gate.open()
        await scheduler.stop()
        return list(await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5))

    outputs = asyncio.run(main())
    assert all(isinstance(out, SchedulerStopped) for out in outputs)


@pytest.mark.parametrize("fails", [False, True])
def test_a_step_whose_future_its_awaiter_cancelled_still_runs_and_hands_its_outcome_to_the_orphan(
    tiny_model: LoadedModel, offline_lm: OfflineLM, fails: bool
) -> None:
    """Cancelling an ``await`` cancels the future; the step runs all the same and ``orphan`` gets its outcome."""
    recorder = Recorder(tiny_model)
    rows = [recorder.slabs.allocate() for _ in range(2)]
    before = all_state(recorder.slabs, rows)
    recorder.on_call = model_fails if fails else None
    handed: list[asyncio.Future[dict[str, np.ndarray]]] = []

    async def main() -> list[Any]:
        scheduler = recorder.scheduler()
        scheduler.start()
        try:
            ids = _ids(offline_lm, "a")
            abandoned = scheduler.submit(rows[0], {"char_id": ids}, 1, orphan=handed.append)
            kept = scheduler.submit(rows[1], {"char_id": ids}, 1, orphan=handed.append)
            abandoned.cancel()  # what asyncio does to the awaited future of a cancelled task
            return list(await asyncio.wait_for(asyncio.gather(kept, return_exceptions=True), 30))
        finally:
            await scheduler.stop()

    (kept,) = asyncio.run(main())
    assert len(recorder.batches) == 1 and len(recorder.batches[0]) == 2  # the cancelled step still ran
    assert len(handed) == 1 and handed[0].done()  # only the cancelled one is handed over
    if fails:
        assert isinstance(kept, RuntimeError) and isinstance(handed[0].exception(), RuntimeError)
        assert_same_state(all_state(recorder.slabs, rows), before)
        return
    np.testing.assert_allclose(handed[0].result()["logits"], kept["logits"], atol=TOLERANCE)
    np.testing.assert_allclose(handed[0].result()["logits"][0], offline_lm.logits("a")[0], atol=TOLERANCE)
    after = all_state(recorder.slabs, rows)
    for name, value in after[rows[0]].items():
        np.testing.assert_array_equal(value, after[rows[1]][name])  # its state was written like its batch-mate's
        assert not np.array_equal(value, before[rows[0]][name])


async def _broken_multiplex_then_check(target: str, sessions: int) -> list[tuple[bool, np.ndarray]]:
    """Cancels a Multiplex call right after sending seq 1 of many sessions, then steps each on.

    Returns, per session, whether seq 1 had been applied (answered as a duplicate) and the
    logits of seq 2 ("b"), which must follow from exactly the steps that were applied.
    """
    async with grpc.aio.insecure_channel(target) as channel:
        stub = rpc.SessionServiceStub(channel)
        options = pb.SessionOptions(return_tensors=["logits"])
        opened = await asyncio.gather(
            *(stub.CreateSession(pb.OpenSession(model="char_lm", options=options)) for _ in range(sessions))
        )
        ids = [o.session_id for o in opened]
        call = stub.Multiplex()
        await call.write(
            pb.MultiplexRequest(steps=[pb.SessionStep(session_id=i, step=pb.Step(seq=1, text="a")) for i in ids])
        )
        call.cancel()
        # At once, no wait: a resent step whose first copy still runs waits on its session's
        # lock, then is answered as a duplicate.
        call = stub.Multiplex()
        await call.write(
            pb.MultiplexRequest(steps=[pb.SessionStep(session_id=i, step=pb.Step(seq=1, text="a")) for i in ids])
        )
        first = await call.read()
        await call.write(
            pb.MultiplexRequest(steps=[pb.SessionStep(session_id=i, step=pb.Step(seq=2, text="b")) for i in ids])
        )
        second = await call.read()
        await call.done_writing()
        out = []
        for one, two in zip(first.results, second.results, strict=True):
            assert one.HasField("result") and two.HasField("result"), (one, two)
            out.append((one.result.duplicate, _logits(two.result)[0]))
        return out


def test_a_broken_multiplex_call_applies_each_started_step_exactly_once(
    batching_server: ServerThread, offline_lm: OfflineLM
) -> None:
    results = asyncio.run(_broken_multiplex_then_check(batching_server.target, 256))
    expected = offline_lm.logits("ab")[1]
    for _, logits in results:
        # Whether or not seq 1 ran before the cancel, it ran exactly once: "b" follows "a".
        np.testing.assert_allclose(logits, expected, atol=TOLERANCE)


@pytest.mark.parametrize("scheduler", ["none", "batched"])
def test_both_schedulers_answer_the_same_top_k_and_logits(
    tiny_lm_dir: Path, offline_lm: OfflineLM, scheduler: str
) -> None:
    """The naive baseline the benchmark compares against serves the same answers as the batching scheduler."""
    from service.client import Client

    text = "Wherefore art thou"
    running = ServerThread(Settings(models_dir=tiny_lm_dir, scheduler=scheduler))
    try:
        with Client(running.target) as client:
            session = client.open("char_lm", top_k=3, return_tensors=["logits"])
            results = [session.step(text=ch).outputs[0] for ch in text]
            session.close()
    finally:
        running.stop()
    logits = offline_lm.logits(text).astype(np.float64)
    np.testing.assert_allclose(np.stack([from_proto(r.tensors[0]) for r in results]), logits, atol=TOLERANCE)
    for out, row in zip(results, logits, strict=True):
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        best = sorted(range(len(row)), key=lambda i: (-probs[i], i))[:3]
        assert [t.id for t in out.top] == best
        np.testing.assert_allclose([t.prob for t in out.top], probs[best], rtol=1e-5)
