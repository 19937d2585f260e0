"""The proof that a session outlives its process (``pytest -k failover``).

Redis, Envoy and two replicas are started by the tests; a client streams a session through
Envoy with the SDK; the replica holding the session is SIGKILLed (or drained with SIGTERM)
mid-stream; the SDK resumes through Envoy on the other replica, which takes the session over
from Redis. The whole output sequence must equal the one of an uninterrupted run, and of ONNX
Runtime run offline: no step missing, none applied twice. Also: a replica cut off while another
took the session over cannot apply a step after that; a Redis restart mid-run loses no
acknowledged step with --checkpoint-every 1.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from loadtest.front import free_port, run_envoy
from service.api import statestream_pb2 as pb
from service.client import Client
from service.client.sdk import make_step
from service.session_records import SessionRecord
from service.tensors import from_proto
from tests.cluster import RedisServer, checkpoint_failures, holds_session, redis_server, replica, stored_record
from tests.conftest import OfflineLM
from tests.waiting import wait_until

TOLERANCE = 1e-5  # as in test_service_sessions: batch composition moves float32 results by ~1e-7
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind"
CUT_AT = 20  # the step after which the holding replica is stopped


def logits_of(result: pb.StepResult) -> np.ndarray:
    assert len(result.outputs) == 1
    return from_proto(result.outputs[0].tensors[0])


def stream(target: str, text: str, after: Callable[[int], None] = lambda _: None) -> tuple[np.ndarray, list[int], int]:
    """Streams ``text`` one character per step; ``after(i)`` runs after step i. Returns logits, seqs, resumes."""
    with Client(target) as client:
        session = client.open("char_lm", return_tensors=["logits"], resume_timeout_s=60)
        rows, seqs = [], []
        for index, char in enumerate(text):
            result = session.step(text=char)
            rows.append(logits_of(result))
            seqs.append(int(result.seq))
            after(index)
        resumes = session.session.resumes
        session.close()
    return np.stack(rows), seqs, resumes


@pytest.fixture
def cluster(lm_dir: Path, tmp_path: Path) -> Iterator[tuple[RedisServer, list[subprocess.Popen[str]], list[str]]]:
    """Redis and two replicas checkpointing every step."""
    with (
        redis_server(tmp_path) as store,
        replica(lm_dir, store.url, "--checkpoint-every", "1") as (first, first_target),
        replica(lm_dir, store.url, "--checkpoint-every", "1") as (second, second_target),
    ):
        yield store, [first, second], [first_target, second_target]


def _fail_over(cluster: tuple[RedisServer, list[subprocess.Popen[str]], list[str]], sig: signal.Signals,
               shipped_lm: OfflineLM) -> None:  # fmt: skip
    _, processes, targets = cluster
    with run_envoy(targets) as (front, _):
        reference, reference_seqs, _ = stream(front, TEXT)
        stopped: list[int] = []

        def stop_the_holder(index: int) -> None:
            if index == CUT_AT:
                holder = [i for i, target in enumerate(targets) if holds_session(target)]
                assert len(holder) == 1, "exactly one replica holds the session"
                processes[holder[0]].send_signal(sig)
                stopped.append(holder[0])

        got, seqs, resumes = stream(front, TEXT, stop_the_holder)
    survivor = 1 - stopped[0]
    assert processes[stopped[0]].wait(timeout=30) is not None
    assert processes[survivor].poll() is None
    assert resumes >= 1, "the SDK resumed the session on the other replica"
    assert seqs == reference_seqs == list(range(1, len(TEXT) + 1)), "no step missing or doubled"
    np.testing.assert_allclose(got, reference, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(got, shipped_lm.logits(TEXT), atol=TOLERANCE, rtol=0)


def test_failover_sigkill_of_the_holding_replica(cluster, shipped_lm: OfflineLM) -> None:  # type: ignore[no-untyped-def]
    _fail_over(cluster, signal.SIGKILL, shipped_lm)


def test_failover_sigterm_drain_hands_sessions_over(cluster, shipped_lm: OfflineLM) -> None:  # type: ignore[no-untyped-def]
    _fail_over(cluster, signal.SIGTERM, shipped_lm)


def test_failover_a_partitioned_old_owner_cannot_apply_a_step(cluster, shipped_lm: OfflineLM) -> None:  # type: ignore[no-untyped-def]
    """The old owner is frozen (SIGSTOP: no Redis, no clients) while the other replica takes the session over.

    When it wakes, it still believes it holds the session and its client's stream is still
    open; the step sent there is refused (UNAVAILABLE), and the session goes on from where the
    new owner left it, as if the refused step had never been sent.
    """
    store, processes, (old_target, new_target) = cluster
    text = TEXT[:30]
    with Client(old_target) as old_client, Client(new_target) as new_client:
        old = old_client.open("char_lm", return_tensors=["logits"])
        rows = [logits_of(old.step(text=char)) for char in text[:10]]
        processes[0].send_signal(signal.SIGSTOP)
        try:
            new = new_client.attach(old.id)  # the old owner does not answer: taken over after the wait
            assert new.last_seq == 10
            rows += [logits_of(new.step(text=char)) for char in text[10:20]]
        finally:
            processes[0].send_signal(signal.SIGCONT)
        stale = make_step(11, text="Z")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            old.send_raw(pb.SessionRequest(step=stale))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with store.client() as redis_client:  # the stale step reached neither the new owner nor the store
            assert SessionRecord.from_bytes(stored_record(redis_client, old.id)).last_seq == 20
        rows += [logits_of(new.step(text=char)) for char in text[20:]]
        assert new.last_seq == len(text)
    np.testing.assert_allclose(np.stack(rows), shipped_lm.logits(text), atol=TOLERANCE, rtol=0)
    assert not holds_session(old_target)


def test_failover_live_handover_to_a_plain_attach(cluster, shipped_lm: OfflineLM) -> None:  # type: ignore[no-untyped-def]
    """A plain attach (no routing header) on the replica that does not hold the session: the holder hands it over."""
    _, _, (first, second) = cluster
    text = TEXT[:24]
    with Client(first) as one, Client(second) as two:
        session = one.open("char_lm", return_tensors=["logits"])
        rows = [logits_of(session.step(text=char)) for char in text[:12]]
        fork = two.attach(session.fork())  # a fork is in the store too
        assert fork.last_seq == 12
        fork.close()
        moved = two.attach(session.id)
        assert moved.last_seq == 12
        rows += [logits_of(moved.step(text=char)) for char in text[12:]]
        assert holds_session(second) and not holds_session(first)
    np.testing.assert_allclose(np.stack(rows), shipped_lm.logits(text), atol=TOLERANCE, rtol=0)


def test_failover_redis_restart_loses_no_acknowledged_step(lm_dir: Path, tmp_path: Path, shipped_lm: OfflineLM) -> None:
    """Redis is SIGKILLed and started again (same port, same append-only file) mid-stream, K = 1."""
    metrics_port = free_port()
    with (
        redis_server(tmp_path) as store,
        replica(lm_dir, store.url, "--checkpoint-every", "1", "--metrics-port", str(metrics_port)) as (_, target),
    ):

        def start_after_a_failed_checkpoint() -> None:
            wait_until(lambda: checkpoint_failures(metrics_port) > 0, 30, "a checkpoint failed while Redis was down")
            store.start()

        restarter = threading.Thread(target=start_after_a_failed_checkpoint)

        def restart(index: int) -> None:
            if index == CUT_AT:  # steps go on while Redis is down: they fail, and the SDK resumes
                store.kill()
                restarter.start()

        got, seqs, resumes = stream(target, TEXT, restart)
        restarter.join()
    assert resumes >= 1, "steps failed while Redis was down, and the SDK resumed"
    assert seqs == list(range(1, len(TEXT) + 1))
    np.testing.assert_allclose(got, shipped_lm.logits(TEXT), atol=TOLERANCE, rtol=0)
