"""Model kinds are plug-ins: a test-only kind, its init graph, context and server-side loop.

The ``accumulator`` kind is added by touching only its driver file (tests/accumulator_driver.py)
and the tests: nothing in ``service/`` names it. Every test runs the real server on a loopback
port with real ONNX Runtime; values are compared to ``offline_run`` within 1e-5 (float32 sums of
a few terms of magnitude < 100).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import tests.accumulator_driver  # noqa: F401 - registers the test-only task
from service.api import statestream_pb2 as pb
from service.auth import ANONYMOUS
from service.client.sdk import AsyncClient, Client, StepFailed
from service.contract import MANIFEST_FILE, Manifest
from service.registry import LoadedModel
from service.settings import Settings
from service.tasks import driver_class
from service.tensors import from_proto
from tests.accumulator_model import UNITS, build, init_graph, offline_run
from tests.servers import ServerThread
from tests.waiting import until

TOLERANCE = 1e-5
OFFSET = np.array([0.25, -2.0, 1.5], np.float32)


@pytest.fixture(scope="module")
def kinds_dir(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kinds")
    shutil.copytree(tiny_lm_dir / "char_lm", root / "char_lm")
    build(root / "accumulator")
    return root


@pytest.fixture(scope="module")
def kind_server(kinds_dir: Path) -> Iterator[ServerThread]:
    running = ServerThread(Settings(models_dir=kinds_dir, max_run_steps=300, max_init_bytes=4096))
    yield running
    running.stop()


def _ys(results: list[pb.StepOutput]) -> np.ndarray:
    return np.stack([from_proto(out.tensors[0]) for out in results])


def _steps(session: object, xs: np.ndarray) -> np.ndarray:
    result = session.step(tensors={"x": xs})  # type: ignore[attr-defined]
    return _ys(list(result.outputs))


def test_the_kind_is_described_by_its_driver(kind_server: ServerThread) -> None:
    with Client(kind_server.target) as client:
        info = client.get_model("accumulator")
    assert info.task == "accumulator"
    assert "threshold" in info.task_info.run
    assert {o.name: o.default for o in info.task_info.run_options} == {
        "increment": 1.0,
        "threshold": 10.0,
        "on_copy": 0.0,
    }
    assert info.task_info.run_moves_state and not info.task_info.generates
    assert info.task_info.max_run_steps == 300  # the kind sets no bound of its own: the server's --max-run-steps
    assert [c.name for c in info.context] == ["scale"]
    assert [t.name for t in info.init_inputs] == ["offset"]
    assert info.state_bytes == 2 * UNITS * 4  # the state and the context, float32


def test_init_graph_and_context_make_steps_equal_an_offline_run(kind_server: ServerThread) -> None:
    xs = np.random.default_rng(0).normal(size=(12, UNITS)).astype(np.float32)
    with Client(kind_server.target) as client:
        session = client.open("accumulator", init={"offset": OFFSET}, return_tensors=["y"])
        chunked = _steps(session, xs[:5])
        single = np.concatenate([_steps(session, xs[t : t + 1]) for t in range(5, 12)])
    np.testing.assert_allclose(np.concatenate([chunked, single]), offline_run(OFFSET, xs), atol=TOLERANCE)


def test_a_float64_init_payload_and_float64_steps_are_sent_as_float32(kind_server: ServerThread) -> None:
    xs = np.random.default_rng(1).normal(size=(4, UNITS))  # float64, numpy's default
    with Client(kind_server.target) as client:
        session = client.open("accumulator", init={"offset": OFFSET.astype(np.float64)}, return_tensors=["y"])
        got = _steps(session, xs)
    np.testing.assert_allclose(got, offline_run(OFFSET, xs.astype(np.float32)), atol=TOLERANCE)


def test_context_is_read_at_every_step_and_never_written(kind_server: ServerThread) -> None:
    with Client(kind_server.target) as client:
        session = client.open("accumulator", init={"offset": OFFSET}, return_tensors=["y"])
        _steps(session, np.ones((6, UNITS), np.float32))
        stored = kind_server.server.store.get(session.id, ANONYMOUS)
        row = stored.runtime.slabs.read_row(stored.row)
    np.testing.assert_array_equal(row["scale"], np.abs(OFFSET) + 1)
    np.testing.assert_allclose(row["acc_in"], OFFSET + 6 * (np.abs(OFFSET) + 1), atol=TOLERANCE)


def test_fork_snapshot_restore_and_reset_carry_the_context(kind_server: ServerThread) -> None:
    xs = np.full((3, UNITS), 0.5, np.float32)
    with Client(kind_server.target) as client:
        parent = client.open("accumulator", init={"offset": OFFSET}, return_tensors=["y"])
        _steps(parent, xs)
        blob = parent.snapshot().blob
        child = client.attach(parent.fork())
        restored = client.open("accumulator", restore=blob, return_tensors=["y"])
        want = offline_run(OFFSET, np.concatenate([xs, xs]))[3:]
        for session in (parent, child, restored):
            np.testing.assert_allclose(_steps(session, xs), want, atol=TOLERANCE)
        parent.reset()  # back to what the init graph made, not to zeros
        np.testing.assert_allclose(_steps(parent, xs), offline_run(OFFSET, xs), atol=TOLERANCE)
        restored.reset()  # a restored session has no init payload: it resets to its snapshot
        np.testing.assert_allclose(_steps(restored, xs), want, atol=TOLERANCE)


def test_run_streams_until_its_stop_condition_and_equals_an_offline_run(kind_server: ServerThread) -> None:
    with Client(kind_server.target) as client:
        session = client.open("accumulator", init={"offset": OFFSET}, return_tensors=["y"])
        answers = list(session.run(50, options={"increment": 1.0, "threshold": 4.0}))
        outputs, done = answers[:-1], answers[-1]
        assert isinstance(done, pb.RunDone)
        # unit 0 grows by 1.25 a step from 0.25: it reaches 4 at the 3rd step
        assert (done.stop_reason, done.steps, len(outputs)) == ("threshold", 3, 3)
        want = offline_run(OFFSET, np.ones((3, UNITS), np.float32))
        got = np.stack([from_proto(o.output.tensors[0]) for o in outputs if isinstance(o, pb.RunOutput)])
        np.testing.assert_allclose(got, want, atol=TOLERANCE)
        assert [o.output.label for o in outputs if isinstance(o, pb.RunOutput)] == ["below", "below", "above"]
        assert session.last_seq == 1
        # the run moved the session: the next step continues from it
        np.testing.assert_allclose(_steps(session, np.zeros((1, UNITS), np.float32)), want[-1:], atol=TOLERANCE)
        capped = list(session.run(2, options={"threshold": 1e9}))[-1]
        assert isinstance(capped, pb.RunDone) and (capped.stop_reason, capped.steps) == ("max_steps", 2)


def test_a_run_on_a_borrowed_row_leaves_the_session_where_it_was(kind_server: ServerThread) -> None:
    """The rollout pattern (a forecaster's H steps ahead): a loop steps a fork-like copy of the row."""
    with Client(kind_server.target) as client:
        session = client.open("accumulator", init={"offset": OFFSET}, return_tensors=["y"])
        slabs = kind_server.server.store.get(session.id, ANONYMOUS).runtime.slabs
        rows_before = slabs.rows_in_use
        answers = list(session.run(4, options={"threshold": 1e9, "on_copy": 1.0}))
        got = np.stack([from_proto(a.output.tensors[0]) for a in answers if isinstance(a, pb.RunOutput)])
        np.testing.assert_allclose(got, offline_run(OFFSET, np.ones((4, UNITS), np.float32)), atol=TOLERANCE)
        assert slabs.rows_in_use == rows_before  # the borrowed row was given back
        assert session.last_seq == 1  # the run is applied (one seq) ...
        zero = np.zeros((1, UNITS), np.float32)
        np.testing.assert_allclose(_steps(session, zero), OFFSET[None], atol=TOLERANCE)  # ... but moved nothing


def test_a_resent_run_is_a_duplicate_and_runs_nothing(kind_server: ServerThread) -> None:
    with Client(kind_server.target) as client:
        session = client.open("accumulator", init={"offset": OFFSET})
        first = list(session.run(3, options={"threshold": 1e9}))[-1]
        answer = session.send_raw(pb.SessionRequest(run=pb.Run(seq=1, max_steps=3)))
    assert answer.run_done.duplicate and answer.run_done.steps == first.steps == 3  # type: ignore[union-attr]
    assert answer.run_done.stop_reason == "max_steps"


def test_a_run_cut_off_mid_loop_leaves_state_and_seq_agreeing(kind_server: ServerThread) -> None:
    def detached(session_id: str) -> bool:  # the stream's handler has ended, its rollback done
        held = kind_server.server.store.get(session_id, ANONYMOUS)
        return held.stream is None and not held.lock.locked()

    async def scenario() -> tuple[int, np.ndarray, np.ndarray]:
        async with AsyncClient(kind_server.target) as client:
            session = await client.open("accumulator", init={"offset": OFFSET}, return_tensors=["y"])
            seen = 0
            async for _answer in session.run(250, options={"threshold": 1e9}):
                seen += 1
                if seen == 5:
                    session.cancel()  # the stream breaks mid-run, as a network failure would
                    break
            await until(lambda: detached(session.id), 30, "the server noticed the broken stream and rolled back")
            resumed = await client.attach(session.id)
            applied = resumed.last_seq
            after = await resumed.step(tensors={"x": np.zeros((1, UNITS), np.float32)})
            return applied, from_proto(after.outputs[0].tensors[0]), OFFSET

    last_seq, after, offset = asyncio.run(scenario())
    assert last_seq == 0  # the run was not applied ...
    np.testing.assert_allclose(after, offset, atol=TOLERANCE)  # ... and the state is where it was


def test_runs_of_many_sessions_share_batches(kind_server: ServerThread) -> None:
    registry = kind_server.server.metrics.registry
    labels = {"model": "accumulator"}

    def counts() -> tuple[float, float]:
        return (
            registry.get_sample_value("statestream_batch_size_count", labels) or 0.0,
            registry.get_sample_value("statestream_batch_size_sum", labels) or 0.0,
        )

    async def one(client: AsyncClient, k: int) -> np.ndarray:
        session = await client.open("accumulator", init={"offset": OFFSET * k})
        outputs = [a async for a in session.run(40, options={"threshold": 1e9}) if isinstance(a, pb.RunOutput)]
        return np.stack([from_proto(o.output.tensors[0]) for o in outputs])

    async def many() -> list[np.ndarray]:
        async with AsyncClient(kind_server.target) as client:
            return list(await asyncio.gather(*(one(client, k) for k in range(8))))

    batches_before, steps_before = counts()
    results = asyncio.run(many())
    batches, steps = counts()
    assert steps - steps_before == 8 * 40
    assert (steps - steps_before) / (batches - batches_before) > 1.5  # loops batched together
    for k, got in enumerate(results):  # and each equals its solo run
        np.testing.assert_allclose(got, offline_run(OFFSET * k, np.ones((40, UNITS), np.float32)), atol=1e-4)


# -- bad input -----------------------------------------------------------------------------


def _open_fails(target: str, request: pb.OpenSession) -> grpc.aio.AioRpcError:
    async def attempt() -> None:
        async with AsyncClient(target) as client:
            await client.start_raw(pb.SessionRequest(open=request), resume_timeout_s=1.0)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        asyncio.run(attempt())
    return raised.value


def _tensor(name: str, value: np.ndarray) -> pb.Tensor:
    from service.tensors import to_proto

    return to_proto(name, value)


@pytest.mark.parametrize(
    ("model", "tensors", "data", "code", "message"),
    [
        ("char_lm", [("offset", OFFSET)], b"", "INVALID_ARGUMENT", "has no init graph"),
        ("accumulator", [], b"", "INVALID_ARGUMENT", "needs an init payload"),
        ("accumulator", [("offset", OFFSET[:2])], b"", "INVALID_ARGUMENT", "has shape [2]"),
        ("accumulator", [("offset", OFFSET.astype(np.int64))], b"", "INVALID_ARGUMENT", "has dtype int64"),
        ("accumulator", [("offset", np.array([np.nan, 0, 0], np.float32))], b"", "INVALID_ARGUMENT", "NaN"),
        ("accumulator", [("bias", OFFSET)], b"", "INVALID_ARGUMENT", "unknown init tensor"),
        ("accumulator", [], b"\x89PNG", "INVALID_ARGUMENT", "not bytes"),
        ("accumulator", [("offset", np.zeros(2000, np.float32))], b"", "RESOURCE_EXHAUSTED", "max_init_bytes"),
    ],
)
def test_a_bad_init_payload_is_refused_and_opens_nothing(
    kind_server: ServerThread,
    model: str,
    tensors: list[tuple[str, np.ndarray]],
    data: bytes,
    code: str,
    message: str,
) -> None:
    before = len(kind_server.server.store)
    request = pb.OpenSession(model=model, init=pb.InitPayload(tensors=[_tensor(n, v) for n, v in tensors], data=data))
    error = _open_fails(kind_server.target, request)
    assert error.code().name == code
    assert message in (error.details() or "")
    assert len(kind_server.server.store) == before


@pytest.mark.parametrize(
    ("run", "code", "message"),
    [
        (pb.Run(seq=1, max_steps=3, options={"speed": 2.0}), "INVALID_ARGUMENT", "unknown run option(s) ['speed']"),
        (pb.Run(seq=1, max_steps=0), "INVALID_ARGUMENT", "max_steps is required"),
        (pb.Run(seq=1, max_steps=301), "RESOURCE_EXHAUSTED", "max_run_steps"),
    ],
)
def test_a_bad_run_is_refused_in_the_stream_and_changes_nothing(
    kind_server: ServerThread, run: pb.Run, code: str, message: str
) -> None:
    with Client(kind_server.target) as client:
        session = client.open("accumulator", init={"offset": OFFSET}, return_tensors=["y"])
        reply = session.send_raw(pb.SessionRequest(run=run))
        assert reply.WhichOneof("response") == "error"
        assert reply.error.code_name == code and message in reply.error.message
        # nothing ran: seq 1 is still free and the state is the init graph's
        np.testing.assert_allclose(_steps(session, np.zeros((1, UNITS), np.float32)), OFFSET[None], atol=TOLERANCE)
        assert session.last_seq == 1


def test_a_language_model_has_no_run(kind_server: ServerThread) -> None:
    with Client(kind_server.target) as client:
        session = client.open("char_lm")
        with pytest.raises(StepFailed) as raised:
            list(session.run(3))
    assert raised.value.error.code_name == "INVALID_ARGUMENT" and "no server-side run" in raised.value.error.message


# -- refused at load -----------------------------------------------------------------------


def test_an_unknown_task_is_refused_at_load_naming_the_known_ones(tmp_path: Path) -> None:
    folder = build(tmp_path / "mystery", name="mystery", task="telepathy")
    with pytest.raises(Exception, match=r"unknown task 'telepathy'.*language_model.*sequence_model"):
        LoadedModel.from_folder(folder, Settings(), driver_class)


def test_an_init_graph_that_fails_its_golden_trace_is_refused(tmp_path: Path) -> None:
    folder = build(tmp_path / "accumulator")
    init_graph(folder / "init.onnx", scale_bias=2.0)  # a different graph under the same manifest
    with pytest.raises(Exception, match="init golden trace mismatch"):
        LoadedModel.from_folder(folder, Settings(), driver_class)


def test_a_manifest_whose_state_starts_from_a_missing_init_graph_is_refused(tmp_path: Path) -> None:
    folder = build(tmp_path / "accumulator")
    data = Manifest.load(folder).to_dict()
    del data["init"]
    (folder / MANIFEST_FILE).write_text(__import__("json").dumps(data))
    with pytest.raises(Exception, match="start from the init graph, but there is none"):
        Manifest.load(folder)


def test_context_lives_in_device_slabs_too(kinds_dir: Path) -> None:
    """The same kind with state and context in ORT device memory (CPU provider here): batches, forks, runs."""
    running = ServerThread(Settings(models_dir=kinds_dir, state_memory="device", initial_capacity=2))
    try:
        xs = np.full((3, UNITS), 0.5, np.float32)
        with Client(running.target) as client:
            sessions = [client.open("accumulator", init={"offset": OFFSET * k}, return_tensors=["y"]) for k in range(3)]
            for k, session in enumerate(sessions):  # the slabs grew past their 2 rows, context and all
                np.testing.assert_allclose(_steps(session, xs), offline_run(OFFSET * k, xs), atol=TOLERANCE)
            child = client.attach(sessions[1].fork())
            want = offline_run(OFFSET, np.concatenate([xs, xs]))[3:]
            np.testing.assert_allclose(_steps(child, xs), want, atol=TOLERANCE)
            outputs = [a for a in sessions[2].run(2, options={"threshold": 1e9}) if isinstance(a, pb.RunOutput)]
            got = np.stack([from_proto(o.output.tensors[0]) for o in outputs])
            ones = np.ones((2, UNITS), np.float32)
            np.testing.assert_allclose(got, offline_run(OFFSET * 2, np.concatenate([xs, ones]))[3:], atol=TOLERANCE)
    finally:
        running.stop()
