"""Sessions never lose or double a step: resume, fork, reset, snapshot and restore over real gRPC."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from service.api import statestream_pb2 as pb
from service.auth import ANONYMOUS
from service.client import Client, StepFailed
from service.settings import Settings
from service.tensors import from_proto
from tests.conftest import OfflineLM
from tests.servers import ServerThread
from tests.waiting import wait_until

TOLERANCE = 1e-5  # the float32 contract, as in test_service_sessions
TEXT = "If music be the food of love, play on;\nGive me excess of it"


def logits(result: pb.StepResult) -> np.ndarray:
    return np.stack([from_proto(out.tensors[0]) for out in result.outputs])


@pytest.fixture(scope="module")
def two_model_dir(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """char_lm plus the same graph published as version 2 and as another model name."""
    root = tmp_path_factory.mktemp("two_models")
    shutil.copytree(tiny_lm_dir / "char_lm", root / "char_lm")
    for folder, edit in (("char_lm_v2", {"version": "2"}), ("other_lm", {"name": "other_lm"})):
        shutil.copytree(tiny_lm_dir / "char_lm", root / folder)
        manifest = json.loads((root / folder / "manifest.json").read_text())
        manifest.update(edit)
        (root / folder / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module", params=["host", "device"])
def lifecycle_server(two_model_dir: Path, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    """Every lifecycle test runs with state in host slabs and in device slabs (CPU OrtValues here)."""
    settings = Settings(models_dir=two_model_dir, snapshot_secret="test-secret-of-16+chars", state_memory=request.param)
    running = ServerThread(settings)
    yield running
    running.stop()


# -- resume -----------------------------------------------------------------------------------


def test_resume_after_a_broken_stream_is_invisible_to_the_sdk_user(
    lifecycle_server: ServerThread, offline_lm: OfflineLM
) -> None:
    with Client(lifecycle_server.target) as client:
        session = client.open("char_lm", version="1", return_tensors=["logits"])
        rows = []
        for index, ch in enumerate(TEXT):
            if index in (10, 11, 30):
                session.cancel()  # the network drops the stream; the next call resumes by itself
            rows.append(logits(session.step(text=ch)))
        assert session.session.resumes == 3
        assert session.last_seq == len(TEXT)
        session.close()
    np.testing.assert_allclose(np.concatenate(rows), offline_lm.logits(TEXT), atol=TOLERANCE, rtol=0)


def test_resume_replaying_the_last_five_steps_applies_none_of_them_again(
    lifecycle_server: ServerThread, offline_lm: OfflineLM
) -> None:
    with Client(lifecycle_server.target) as client:
        session = client.open("char_lm", version="1", return_tensors=["logits"])
        first = [logits(session.step(text=ch)) for ch in TEXT[:20]]
        session.cancel()
        resumed = client.attach(session.id)
        assert resumed.last_seq == 20
        for seq in range(16, 21):  # the client resends its last 5 steps
            replay = resumed.step(text=TEXT[seq - 1], seq=seq)
            assert replay.duplicate
            np.testing.assert_array_equal(logits(replay), first[seq - 1])  # the cached answer
        rest = [logits(resumed.step(text=ch)) for ch in TEXT[20:]]
        resumed.close()
    np.testing.assert_allclose(np.concatenate(first + rest), offline_lm.logits(TEXT), atol=TOLERANCE, rtol=0)


def test_resume_with_a_gap_is_refused_as_failed_precondition(lifecycle_server: ServerThread) -> None:
    with Client(lifecycle_server.target) as client:
        session = client.open("char_lm", version="1")
        session.step(text="ab")
        with pytest.raises(StepFailed) as refused:
            session.step(text="c", seq=5)
        assert refused.value.error.code_name == "FAILED_PRECONDITION"
        assert "next expected is 2" in refused.value.error.message
        session.close()


def test_resume_of_another_stream_takes_the_session_over(lifecycle_server: ServerThread) -> None:
    with Client(lifecycle_server.target) as client:
        first = client.open("char_lm", version="1")
        first.step(text="a")
        second = client.attach(first.id)  # e.g. the client reconnected before the server saw the old stream die
        second.step(text="b")
        reply = first.send_raw(pb.SessionRequest(step=pb.Step(seq=3, text="c")))
        assert reply.error.code_name == "FAILED_PRECONDITION"
        assert "another stream" in reply.error.message
        assert second.step(text="c").seq == 3
        second.close()


def test_resume_of_an_interrupted_generation_replays_the_same_tokens(lifecycle_server: ServerThread) -> None:
    with Client(lifecycle_server.target) as client:
        reference = client.open("char_lm", version="1")
        expected = [e for e in reference.generate("ROMEO:", 80, temperature=1.0, seed=11)][-1]
        reference.close()

        session = client.open("char_lm", version="1")
        tokens = []
        for event in session.generate("ROMEO:", 80, temperature=1.0, seed=11):
            if isinstance(event, pb.Token):
                tokens.append(event.text)
                if len(tokens) == 25:
                    session.cancel()  # the stream breaks mid-generation
            else:
                done = event
        assert session.session.resumes == 1
        assert "".join(tokens) == expected.text == done.text
        assert [t for t in done.ids] == list(expected.ids)
        session.close()


def test_a_generation_that_finished_before_its_stream_broke_is_answered_whole_on_resume(
    lifecycle_server: ServerThread,
) -> None:
    """The resend is a duplicate, answered by the GenerateDone alone; the SDK still ends with it."""
    with Client(lifecycle_server.target) as client:
        reference = client.open("char_lm", version="1")
        expected = [e for e in reference.generate("ROMEO:", 12, temperature=1.0, seed=5)][-1]
        reference.close()

        session = client.open("char_lm", version="1")
        events = session.generate("ROMEO:", 12, temperature=1.0, seed=5)
        first = next(events)
        assert isinstance(first, pb.Token)
        held = lifecycle_server.server.store.get(session.id, ANONYMOUS)
        wait_until(lambda: held.last_seq == 1, 30, "the server finished the generation")
        session.cancel()  # the stream breaks after the server finished: the resend is a duplicate
        rest = list(events)
        assert session.session.resumes == 1
        assert isinstance(rest[-1], pb.GenerateDone) and rest[-1].duplicate
        tokens = [first, *rest[:-1]]
        assert "".join(t.text for t in tokens) == expected.text == rest[-1].text
        assert [t.index for t in tokens] == list(range(12))
        session.close()


RESUME_CHILD = textwrap.dedent(
    """
    import json, sys
    from service.client import Client
    from service.tensors import from_proto
    target, text = sys.argv[1], sys.argv[2]
    with Client(target) as client:
        session = client.open("char_lm", version="1", return_tensors=["logits"])
        print(json.dumps({"session": session.id}), flush=True)
        for ch in text:
            result = session.step(text=ch)
            print(json.dumps({"seq": result.seq, "logits": from_proto(result.outputs[0].tensors[0]).tolist()}), flush=True)
    """
)


def test_resume_after_the_client_process_is_killed_loses_and_doubles_nothing(
    lifecycle_server: ServerThread, offline_lm: OfflineLM
) -> None:
    text = TEXT * 4
    child = subprocess.Popen(
        [sys.executable, "-c", RESUME_CHILD, lifecycle_server.target, text],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    session_id = json.loads(child.stdout.readline())["session"]
    seen: dict[int, np.ndarray] = {}
    while len(seen) < 60:
        row = json.loads(child.stdout.readline())
        seen[row["seq"]] = np.asarray(row["logits"], dtype=np.float32)
    child.send_signal(signal.SIGKILL)  # killed mid-stream, steps possibly in flight
    child.wait()
    for line in child.stdout:  # answers printed before the kill landed
        row = json.loads(line)
        seen[row["seq"]] = np.asarray(row["logits"], dtype=np.float32)

    with Client(lifecycle_server.target) as client:
        resumed = client.attach(session_id)
        applied = resumed.last_seq
        assert applied >= max(seen)  # nothing the client saw acknowledged is lost
        for seq in range(applied - 4, applied + 1):  # resend the last 5: answered from cache, not applied
            replay = resumed.step(text=text[seq - 1], seq=seq)
            assert replay.duplicate
            seen.setdefault(seq, logits(replay)[0])
        for seq in range(applied + 1, len(text) + 1):
            seen[seq] = logits(resumed.step(text=text[seq - 1]))[0]
        resumed.close()
    assert sorted(seen) == list(range(1, len(text) + 1))  # 0 lost; and each seq once, in order
    np.testing.assert_allclose(
        np.stack([seen[s] for s in sorted(seen)]), offline_lm.logits(text), atol=TOLERANCE, rtol=0
    )


# -- fork and reset -----------------------------------------------------------------------------


def test_fork_copies_the_state_and_leaves_the_parent_unchanged(
    lifecycle_server: ServerThread, offline_lm: OfflineLM
) -> None:
    with Client(lifecycle_server.target) as client:
        parent = client.open("char_lm", version="1", return_tensors=["logits"])
        parent.step(text="To be")
        child = client.attach(parent.fork())
        assert child.last_seq == parent.last_seq == 1
        child_next = logits(child.step(text=", or"))
        parent_next = logits(parent.step(text=" wise"))
        child.close()
        parent.close()
    np.testing.assert_allclose(child_next, offline_lm.logits("To be, or")[5:], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(parent_next, offline_lm.logits("To be wise")[5:], atol=TOLERANCE, rtol=0)


def test_reset_returns_the_session_to_its_initial_state(lifecycle_server: ServerThread, offline_lm: OfflineLM) -> None:
    with Client(lifecycle_server.target) as client:
        session = client.open("char_lm", version="1", return_tensors=["logits"])
        session.step(text="Some history")
        assert not session.reset().duplicate
        after = logits(session.step(text="Fresh"))
        assert session.last_seq == 3
        session.close()
    np.testing.assert_allclose(after, offline_lm.logits("Fresh"), atol=TOLERANCE, rtol=0)


# -- snapshot and restore ---------------------------------------------------------------------


def test_snapshot_restore_round_trip_carries_state_and_seq(
    lifecycle_server: ServerThread, offline_lm: OfflineLM
) -> None:
    with Client(lifecycle_server.target) as client:
        session = client.open("char_lm", version="1", return_tensors=["logits"])
        session.step(text="Once more unto")
        snapshot = session.snapshot()
        assert snapshot.last_applied_seq == 1
        session.step(text=" the breach")  # moves on; the snapshot does not
        session.close()
        restored = client.open("char_lm", version="1", restore=snapshot.blob, return_tensors=["logits"])
        assert restored.last_seq == 1
        after = logits(restored.step(text=" the breach"))
        assert restored.last_seq == 2
        restored.close()
    np.testing.assert_allclose(after, offline_lm.logits("Once more unto the breach")[14:], atol=TOLERANCE, rtol=0)


def snapshot_blob(client: Client) -> bytes:
    session = client.open("char_lm", version="1")
    session.step(text="abc")
    blob = session.snapshot().blob
    session.close()
    return blob


@pytest.mark.parametrize("position", [0, 10, -40, -1])
def test_snapshot_that_was_tampered_with_is_refused(lifecycle_server: ServerThread, position: int) -> None:
    with Client(lifecycle_server.target) as client:
        blob = bytearray(snapshot_blob(client))
        blob[position] ^= 0x01
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            client.open("char_lm", version="1", restore=bytes(blob))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "snapshot" in (refused.value.details() or "")


@pytest.mark.parametrize(("model", "version"), [("other_lm", ""), ("char_lm", "2")])
def test_snapshot_of_another_model_or_version_is_refused(
    lifecycle_server: ServerThread, model: str, version: str
) -> None:
    with Client(lifecycle_server.target) as client:
        blob = snapshot_blob(client)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            client.open(model, version=version, restore=blob)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "char_lm" in (refused.value.details() or "")


def test_snapshot_from_a_server_with_another_key_is_refused(two_model_dir: Path) -> None:
    other = ServerThread(Settings(models_dir=two_model_dir, snapshot_secret="a-different-secret-key"))
    try:
        with Client(other.target) as client:
            blob = snapshot_blob(client)
    finally:
        other.stop()
    mine = ServerThread(Settings(models_dir=two_model_dir, snapshot_secret="test-secret-of-16+chars"))
    try:
        with Client(mine.target) as client, pytest.raises(grpc.aio.AioRpcError) as refused:
            client.open("char_lm", version="1", restore=blob)
    finally:
        mine.stop()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "checksum mismatch" in (refused.value.details() or "")
