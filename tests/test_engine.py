"""The session engine's exactly-once protocol, driven directly: no gRPC, no servicer.

Every protocol's servicer calls the engine, so its guarantees are proved here once: the seq
rule, duplicates answered from the cache, a step that commits although its caller went away,
a loop rolled back whole, reset as one seq, fork, the snapshot bound, stream admission and the
drain; and a step of no model step (a voice-activity chunk short of a frame), applied at once. The reference is ONNX Runtime run directly on the same graph (``OfflineLM``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from service.api import statestream_pb2 as pb
from service.engine import SessionEngine
from service.errors import FailedPrecondition, NotFound, ResourceExhausted, StatestreamError, Unavailable
from service.metrics import Metrics
from service.registry import Registry
from service.runtime import Runtimes
from service.scheduler import Scheduler
from service.session_store import SessionStore
from service.settings import Settings
from service.tasks import driver_class
from service.tensors import to_proto
from tests.conftest import SHIPPED_MODELS, OfflineLM
from tests.test_batching import model_fails
from tests.vad_model import write_energy_vad
from tests.waiting import Gate, until

TOLERANCE = 1e-5  # the float32 contract, as in test_service_sessions
CALLER = "anonymous"
T = TypeVar("T")


@contextlib.asynccontextmanager
async def running_engine(models_dir: Path, **overrides: Any) -> AsyncIterator[SessionEngine]:
    """A session engine over the models in ``models_dir``, its schedulers running, and nothing else."""
    settings = Settings(models_dir=models_dir, snapshot_secret="test-secret-of-16+chars", **overrides)
    metrics = Metrics()
    runtimes = Runtimes(Registry.from_folder(models_dir, settings, driver_class), settings, metrics)
    runtimes.start()
    try:
        yield SessionEngine(SessionStore(runtimes, settings, metrics), settings)
    finally:
        await runtimes.stop()


def run(models_dir: Path, scenario: Callable[[SessionEngine], Awaitable[T]], **overrides: Any) -> T:
    async def main() -> T:
        async with running_engine(models_dir, **overrides) as engine:
            return await scenario(engine)

    return asyncio.run(main())


def open_request(*, logits: bool = True) -> pb.OpenSession:
    return pb.OpenSession(model="char_lm", options=pb.SessionOptions(return_tensors=["logits"] if logits else []))


def logits_of(answer: bytes) -> np.ndarray:
    result = pb.StepResult.FromString(answer)
    return np.stack([np.frombuffer(out.tensors[0].data, np.float32) for out in result.outputs])


def test_steps_are_applied_in_order_and_a_resent_seq_is_answered_from_the_cache(
    tiny_lm_dir: Path, offline_lm: OfflineLM
) -> None:
    async def scenario(engine: SessionEngine) -> tuple[list[bytes], bytes, int]:
        session = await engine.open(open_request(), CALLER)
        answers = [await engine.apply_step(session, pb.Step(seq=i + 1, text=ch)) for i, ch in enumerate("To be")]
        resent = await engine.apply_step(session, pb.Step(seq=3, text="b"))  # the resend need not match
        return answers, resent, session.last_seq

    answers, resent, last_seq = run(tiny_lm_dir, scenario)
    np.testing.assert_allclose(
        np.concatenate([logits_of(a) for a in answers]), offline_lm.logits("To be"), atol=TOLERANCE, rtol=0
    )
    assert last_seq == 5
    duplicate = pb.StepResult.FromString(resent)
    assert duplicate.duplicate and duplicate.seq == 3
    np.testing.assert_array_equal(logits_of(resent), logits_of(answers[2]))  # the first answer, not a new one


def test_a_gap_or_a_missing_seq_is_refused_and_changes_nothing(tiny_lm_dir: Path) -> None:
    async def scenario(engine: SessionEngine) -> list[str]:
        session = await engine.open(open_request(), CALLER)
        await engine.apply_step(session, pb.Step(seq=1, text="T"))
        before = session.runtime.slabs.read_row(session.row)
        messages = []
        for seq in (3, 0):
            with pytest.raises(FailedPrecondition) as refused:
                await engine.apply_step(session, pb.Step(seq=seq, text="o"))
            messages.append(refused.value.message)
        after = session.runtime.slabs.read_row(session.row)
        assert all(np.array_equal(before[name], after[name]) for name in before)
        assert session.last_seq == 1 and not session.lock.locked()
        return messages

    skipped, missing = run(tiny_lm_dir, scenario)
    assert "seq 3 skips ahead" in skipped and "next expected is 2" in skipped
    assert "seq must be >= 1" in missing


@pytest.mark.parametrize("state_memory", ["host", "device"])
def test_a_step_whose_caller_is_cancelled_while_it_runs_is_applied_and_recorded_exactly_once(
    tiny_lm_dir: Path, offline_lm: OfflineLM, state_memory: str
) -> None:
    """The stream breaks while its step runs on the model's thread: the step still commits, once."""
    chunk = "To be or"  # longer than the direct path takes: the step runs on the worker thread

    async def scenario(engine: SessionEngine) -> tuple[bool, bool, bytes, bytes]:
        session = await engine.open(open_request(), CALLER)
        gate = Gate()  # holds the step's model call on the worker thread until its caller is gone
        session.runtime.scheduler.on_call = gate.hold
        try:
            caller = asyncio.ensure_future(engine.apply_step(session, pb.Step(seq=1, text=chunk)))
            await gate.arrival()  # the caller took the lock, and its step runs on the model's thread
            caller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await caller
            # The caller is gone but its step is still running: it keeps the session until it commits.
            held_while_running = session.lock.locked() and session.last_seq == 0
        finally:
            session.runtime.scheduler.on_call = None
            gate.open()
        await until(lambda: not session.lock.locked(), 10, "the orphaned step committed")
        resent = await engine.apply_step(session, pb.Step(seq=1, text=chunk))  # the client's resend
        after = await engine.apply_step(session, pb.Step(seq=2, text="b"))
        return held_while_running, caller.cancelled(), resent, after

    held_while_running, cancelled, resent, after = run(tiny_lm_dir, scenario, state_memory=state_memory)
    assert held_while_running and cancelled
    assert pb.StepResult.FromString(resent).duplicate  # recorded by the step's completion: not applied again
    np.testing.assert_allclose(logits_of(resent), offline_lm.logits(chunk), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(logits_of(after), offline_lm.logits(chunk + "b")[-1:], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("state_memory", ["host", "device"])
def test_a_generation_cancelled_while_its_step_waits_leaves_the_state_as_it_was(
    tiny_lm_dir: Path, state_memory: str
) -> None:
    """The rollback of a broken generation comes after its in-flight step has landed, never before."""

    async def scenario(engine: SessionEngine) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int, int]:
        session = await engine.open(open_request(logits=False), CALLER)
        await engine.apply_step(session, pb.Step(seq=1, text="To be"))
        before = session.runtime.slabs.read_row(session.row)

        async def consume() -> None:
            async for _ in engine.run_loop(session, "generate", pb.Generate(seq=2, max_tokens=5, seed=1)):
                pass

        other = await engine.open(open_request(logits=False), CALLER)
        scheduler = session.runtime.scheduler
        gate = Gate()  # holds the batch's model call on the worker thread while the generation is cancelled
        batches: list[list[int]] = []
        scheduler.on_call = gate.hold
        scheduler.on_batch = lambda batch: batches.append(sorted(job.row for job in batch))
        try:
            # Another session's step in the same turn: the batch of two runs on the worker thread.
            bystander = asyncio.ensure_future(engine.apply_step(other, pb.Step(seq=1, text="x")))
            task = asyncio.ensure_future(consume())
            await gate.arrival()  # it yielded its first token, and the step that feeds it back waits
            assert batches == [sorted([session.row, other.row])]
            task.cancel()
        finally:
            scheduler.on_call = None
            scheduler.on_batch = None
            gate.open()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bystander
        await until(lambda: not session.lock.locked(), 10, "the cancelled generation let its session go")
        after = session.runtime.slabs.read_row(session.row)
        return before, after, session.last_seq, other.last_seq

    before, after, last_seq, other_seq = run(tiny_lm_dir, scenario, state_memory=state_memory)
    assert last_seq == 1 and other_seq == 1  # the generation's seq stays unapplied; the bystander's step counts
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def test_a_finished_generation_is_recorded_and_its_resend_is_answered_from_the_cache(tiny_lm_dir: Path) -> None:
    async def scenario(engine: SessionEngine) -> tuple[list[pb.SessionResponse], list[pb.SessionResponse], int]:
        session = await engine.open(open_request(logits=False), CALLER)
        request = pb.Generate(seq=1, prompt="To", max_tokens=4, temperature=0.5, seed=3)
        first = [r async for r in engine.run_loop(session, "generate", request)]
        resent = [r async for r in engine.run_loop(session, "generate", request)]
        return first, resent, session.last_seq

    first, resent, last_seq = run(tiny_lm_dir, scenario)
    assert last_seq == 1
    assert [r.WhichOneof("response") for r in first] == ["token"] * 4 + ["generated"]
    assert len(resent) == 1 and resent[0].generated.duplicate
    assert resent[0].generated.text == first[-1].generated.text and resent[0].generated.seed == 3


def test_reset_is_one_seq_and_returns_to_the_initial_state(tiny_lm_dir: Path, offline_lm: OfflineLM) -> None:
    async def scenario(engine: SessionEngine) -> tuple[pb.ResetDone, pb.ResetDone, bytes]:
        session = await engine.open(open_request(), CALLER)
        await engine.apply_step(session, pb.Step(seq=1, text="To be"))
        done = await engine.reset(session, 2)
        again = await engine.reset(session, 2)
        return done, again, await engine.apply_step(session, pb.Step(seq=3, text="K"))

    done, again, after = run(tiny_lm_dir, scenario)
    assert not done.duplicate and again.duplicate
    np.testing.assert_allclose(logits_of(after), offline_lm.logits("K"), atol=TOLERANCE, rtol=0)


def test_a_fork_goes_on_from_the_parents_state_and_leaves_the_parent_alone(
    tiny_lm_dir: Path, offline_lm: OfflineLM
) -> None:
    async def scenario(engine: SessionEngine) -> tuple[pb.Forked, bytes, bytes]:
        parent = await engine.open(open_request(), CALLER)
        await engine.apply_step(parent, pb.Step(seq=1, text="To b"))
        forked = await engine.fork(parent)
        child = engine.get(forked.session_id, CALLER)
        child_answer = await engine.apply_step(child, pb.Step(seq=2, text="e"))
        parent_answer = await engine.apply_step(parent, pb.Step(seq=2, text="y"))
        return forked, child_answer, parent_answer

    forked, child_answer, parent_answer = run(tiny_lm_dir, scenario)
    assert forked.last_applied_seq == 1
    np.testing.assert_allclose(logits_of(child_answer), offline_lm.logits("To be")[-1:], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(logits_of(parent_answer), offline_lm.logits("To by")[-1:], atol=TOLERANCE, rtol=0)


def test_a_snapshot_that_could_not_be_sent_is_refused(tmp_path: Path) -> None:
    """The shipped ``lstm256`` keeps 2 KB of state a session: more than the smallest message limit."""
    shutil.copytree(SHIPPED_MODELS / "lstm256", tmp_path / "lstm256")

    async def scenario(engine: SessionEngine) -> str:
        session = await engine.open(pb.OpenSession(model="lstm256"), CALLER)
        with pytest.raises(ResourceExhausted) as refused:
            await engine.snapshot(session)
        return refused.value.message

    message = run(tmp_path, scenario, max_message_bytes=1024)
    assert "max_message_bytes" in message and "the snapshot is" in message


def test_streams_past_the_limit_are_refused_and_leaving_frees_a_place(tiny_lm_dir: Path) -> None:
    async def scenario(engine: SessionEngine) -> int:
        engine.enter_stream()
        engine.enter_stream()
        with pytest.raises(ResourceExhausted):
            engine.enter_stream()
        engine.leave_stream()
        engine.enter_stream()  # a place again
        return engine.open_streams

    assert run(tiny_lm_dir, scenario, max_streams=2) == 2


def test_a_draining_engine_opens_nothing_and_a_closed_session_takes_no_step(tiny_lm_dir: Path) -> None:
    async def scenario(engine: SessionEngine) -> None:
        session = await engine.open(open_request(), CALLER)
        await engine.close(session)
        with pytest.raises(FailedPrecondition):
            await engine.apply_step(session, pb.Step(seq=1, text="T"))
        with pytest.raises(NotFound):
            engine.get(session.id, CALLER)
        engine.store.accepting = False
        with pytest.raises(Unavailable):
            await engine.open(open_request(), CALLER)

    run(tiny_lm_dir, scenario)


# -- steps of no model step: a voice-activity chunk short of a frame ------------------------------

#: 16 frames of audio for the stand-in VAD (tests/vad_model.py): quiet, loud from frame 4 to 9,
#: quiet again; its probabilities and events depend on every sample fed before.
VAD_AUDIO = np.random.default_rng(7).uniform(-0.02, 0.02, 16 * 512).astype(np.float32)
VAD_AUDIO[4 * 512 : 10 * 512] *= 20


@pytest.fixture(scope="module")
def vad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vad_models")
    write_energy_vad(folder, "energy_vad", 512)
    return folder


def audio_step(seq: int, first: int, end: int) -> pb.Step:
    """A Step carrying ``VAD_AUDIO[first:end]``."""
    return pb.Step(seq=seq, tensors=pb.TensorInput(tensors=[to_proto("audio", VAD_AUDIO[first:end])]))


def frames_of(answer: bytes) -> list[pb.StepOutput]:
    return list(pb.StepResult.FromString(answer).outputs)


def count_calls(scheduler: Scheduler) -> list[int]:
    """Counts the scheduler's model calls from now on (one entry per call)."""
    calls: list[int] = []
    scheduler.on_call = lambda call: calls.append(1)
    return calls


def test_a_step_that_completes_no_frame_is_applied_at_once_without_a_model_call(vad_dir: Path) -> None:
    """300 samples only fill the buffer: seq 1 is applied (answered with no frame, cached, the
    lock free) with no model call; its resend is a duplicate that does not add the samples
    again, so the next 300 complete exactly the frame a session fed 512 at once answers."""

    async def scenario(engine: SessionEngine) -> None:
        session = await engine.open(pb.OpenSession(model="energy_vad"), CALLER)
        reference = await engine.open(pb.OpenSession(model="energy_vad"), CALLER)
        calls = count_calls(session.runtime.scheduler)
        first = await engine.apply_step(session, audio_step(1, 0, 300))
        assert pb.StepResult.FromString(first) == pb.StepResult(seq=1)
        assert not calls and session.last_seq == 1 and not session.lock.locked()
        resent = pb.StepResult.FromString(await engine.apply_step(session, audio_step(1, 0, 300)))
        assert resent.duplicate and resent.seq == 1 and not resent.outputs and not calls
        second = await engine.apply_step(session, audio_step(2, 300, 600))
        assert len(calls) == 1 and session.last_seq == 2
        whole = await engine.apply_step(reference, audio_step(1, 0, 512))
        assert frames_of(second) == frames_of(whole) and len(frames_of(whole)) == 1

    run(vad_dir, scenario)


def test_a_keyed_step_of_no_model_step_takes_the_next_seq_once(vad_dir: Path) -> None:
    """The Open Inference Protocol's path: a request id names the step; resent, it is not applied again."""

    async def scenario(engine: SessionEngine) -> None:
        session = await engine.open(pb.OpenSession(model="energy_vad"), CALLER)
        reference = await engine.open(pb.OpenSession(model="energy_vad"), CALLER)
        first = pb.StepResult.FromString(await engine.apply_step(session, audio_step(0, 0, 300), key="a"))
        resent = pb.StepResult.FromString(await engine.apply_step(session, audio_step(0, 0, 300), key="a"))
        second = await engine.apply_step(session, audio_step(0, 300, 1100), key="b")
        assert (first.seq, first.duplicate, resent.seq, resent.duplicate) == (1, False, 1, True)
        assert session.last_seq == 2 and pb.StepResult.FromString(second).seq == 2
        assert frames_of(second) == frames_of(await engine.apply_step(reference, audio_step(1, 0, 1100)))

    run(vad_dir, scenario)


def test_a_failed_model_call_leaves_the_buffer_and_the_events_as_they_were(vad_dir: Path) -> None:
    """The buffer and the speech tracker are state: a chunk whose model call fails changes neither,
    and its seq stays unapplied; resent, the session answers every later frame (probabilities and
    events) as one that never saw the failure."""

    async def scenario(engine: SessionEngine) -> None:
        session = await engine.open(pb.OpenSession(model="energy_vad"), CALLER)
        reference = await engine.open(pb.OpenSession(model="energy_vad"), CALLER)
        await engine.apply_step(session, audio_step(1, 0, 2500))
        session.runtime.scheduler.on_call = model_fails
        try:
            with pytest.raises(StatestreamError):
                await engine.apply_step(session, audio_step(2, 2500, 3000))
        finally:
            session.runtime.scheduler.on_call = None
        assert session.last_seq == 1 and not session.lock.locked()
        answers = [await engine.apply_step(session, audio_step(2, 2500, 3000))]
        answers.append(await engine.apply_step(session, audio_step(3, 3000, len(VAD_AUDIO))))
        whole = await engine.apply_step(reference, audio_step(1, 0, len(VAD_AUDIO)))
        assert [f for a in answers for f in frames_of(a)] == frames_of(whole)[4:]
        assert {f.label for f in frames_of(whole)} >= {"speech_start"}  # the tracker's events are compared

    run(vad_dir, scenario)


def test_a_chunk_whose_caller_is_cancelled_while_its_frames_run_is_committed_with_its_buffer(vad_dir: Path) -> None:
    """The orphan path commits the driver's part too: the buffer left by the chunk is the one the
    next chunk joins, exactly once."""

    async def scenario(engine: SessionEngine) -> None:
        session = await engine.open(pb.OpenSession(model="energy_vad"), CALLER)
        reference = await engine.open(pb.OpenSession(model="energy_vad"), CALLER)
        gate = Gate()  # 6 frames: more than the direct path takes, so they run on the worker thread
        session.runtime.scheduler.on_call = gate.hold
        try:
            caller = asyncio.ensure_future(engine.apply_step(session, audio_step(1, 0, 6 * 512 + 100)))
            await gate.arrival()
            caller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await caller
        finally:
            session.runtime.scheduler.on_call = None
            gate.open()
        await until(lambda: not session.lock.locked(), 10, "the orphaned chunk committed")
        resent = pb.StepResult.FromString(await engine.apply_step(session, audio_step(1, 0, 6 * 512 + 100)))
        assert resent.duplicate and len(resent.outputs) == 6
        after = await engine.apply_step(session, audio_step(2, 6 * 512 + 100, 8 * 512))
        whole = await engine.apply_step(reference, audio_step(1, 0, 8 * 512))
        assert list(resent.outputs) + frames_of(after) == frames_of(whole)

    run(vad_dir, scenario)
