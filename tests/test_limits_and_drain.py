"""Every limit has its own clear error and disturbs nothing else; SIGTERM drains without losing a step."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from service.api import statestream_pb2 as pb
from service.api import statestream_pb2_grpc as rpc
from service.auth import Authenticator
from service.client import Client, SessionLost, StepFailed
from service.settings import Settings
from service.tensors import from_proto
from tests import float_rnn
from tests.conftest import OfflineLM
from tests.servers import ServerThread, serve_process
from tests.waiting import wait_until

TOLERANCE = 1e-5  # the float32 contract, as in test_service_sessions


@pytest.fixture
def limited(tiny_lm_dir: Path, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    """A server with the limits a test names through ``@pytest.mark.parametrize('limited', [...], indirect=True)``."""
    options, auth = request.param if isinstance(request.param, tuple) else (request.param, None)
    running = ServerThread(Settings(models_dir=tiny_lm_dir, **options), auth)
    yield running
    running.stop()


def store_size(server: ServerThread) -> int:
    async def size() -> int:
        return len(server.server.store)

    return server.call(size())


def resource_exhausted(call: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        call()  # type: ignore[operator]
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return refused.value.details() or ""


@pytest.mark.parametrize("limited", [{"max_sessions": 3}], indirect=True)
def test_limit_max_sessions_refuses_new_sessions_and_keeps_the_open_ones(limited: ServerThread) -> None:
    with Client(limited.target) as client:
        sessions = [client.open("char_lm") for _ in range(3)]
        assert "max_sessions=3" in resource_exhausted(lambda: client.open("char_lm"))
        assert all(s.step(text="a").seq == 1 for s in sessions)  # nobody was evicted to make room
        sessions[0].close()
        client.open("char_lm").close()  # room again once one closed


TOKENS = {"token-of-alice-0123456789": "alice", "token-of-bob-0123456789ab": "bob"}


@pytest.mark.parametrize("limited", [({"max_sessions_per_caller": 2}, Authenticator(TOKENS))], indirect=True)
def test_limit_max_sessions_per_caller_counts_each_caller_separately(limited: ServerThread) -> None:
    alice = Client(limited.target, metadata=[("authorization", "Bearer token-of-alice-0123456789")])
    bob = Client(limited.target, metadata=[("authorization", "Bearer token-of-bob-0123456789ab")])
    try:
        held = [alice.open("char_lm"), alice.open("char_lm")]
        assert "max_sessions_per_caller=2" in resource_exhausted(lambda: alice.open("char_lm"))
        assert bob.open("char_lm").step(text="b").seq == 1
        assert held[0].step(text="a").seq == 1
    finally:
        alice.close()
        bob.close()


@pytest.mark.parametrize("limited", [{"max_sessions": 2, "evict_detached": True}], indirect=True)
def test_limit_full_server_evicts_the_least_recently_used_detached_session_when_configured(
    limited: ServerThread,
) -> None:
    with Client(limited.target) as client:
        old = client.open("char_lm")
        old.step(text="a")
        old.cancel()  # detached: resumable, but first in line for eviction
        wait_until(lambda: limited.server.store.get(old.id, "anonymous").stream is None, 10, "the server detached it")
        live = client.open("char_lm")
        newcomer = client.open("char_lm")  # the server is full: the detached one makes room
        assert newcomer.step(text="n").seq == 1 and live.step(text="l").seq == 1
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            client.attach(old.id)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        exposition = limited.server.metrics.exposition().decode()
        assert re.search(r'statestream_evictions_total\{model="char_lm",reason="evicted_lru"\} 1\.0', exposition)
        assert "max_sessions=2" in resource_exhausted(lambda: client.open("char_lm"))  # attached ones stay


@pytest.mark.parametrize("limited", [{"detach_ttl_s": 0.3}], indirect=True)
def test_limit_detach_ttl_closes_abandoned_sessions_and_the_count_returns_to_zero(limited: ServerThread) -> None:
    with Client(limited.target) as client:
        for _ in range(40):
            session = client.open("char_lm")
            session.step(text="hi")
            session.cancel()  # abandoned without close
        wait_until(lambda: store_size(limited) == 0, 10, "the detach TTL closed every session")
    runtime = next(iter(limited.server.runtimes))
    assert runtime.slabs.rows_in_use == 0


@pytest.mark.parametrize("limited", [{"idle_timeout_s": 0.3}], indirect=True)
def test_limit_idle_timeout_closes_a_session_without_a_stream(limited: ServerThread) -> None:
    channel = grpc.insecure_channel(limited.target)
    stub = rpc.SessionServiceStub(channel)
    opened = stub.CreateSession(pb.OpenSession(model="char_lm"))
    wait_until(lambda: store_size(limited) == 0, 10, "the idle timeout closed the session")
    with pytest.raises(grpc.RpcError) as gone:
        stub.CloseSession(pb.CloseSessionRequest(session_id=opened.session_id))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    channel.close()


@pytest.mark.parametrize("limited", [{"max_streams": 2}], indirect=True)
def test_limit_max_streams_refuses_a_third_stream(limited: ServerThread) -> None:
    with Client(limited.target) as client:
        first, second = client.open("char_lm"), client.open("char_lm")
        assert "max_streams=2" in resource_exhausted(lambda: client.open("char_lm"))
        first.close()

        def opens() -> bool:  # the closed stream's slot frees once the server has ended that call
            try:
                client.open("char_lm").close()
            except grpc.aio.AioRpcError:
                return False
            return True

        wait_until(opens, 10, "the closed stream's slot was freed")
        second.close()


@pytest.mark.parametrize("limited", [{"max_message_bytes": 2048}], indirect=True)
def test_limit_max_message_size_refuses_the_message_and_the_server_goes_on(limited: ServerThread) -> None:
    with Client(limited.target) as client:
        session = client.open("char_lm")
        with pytest.raises((grpc.aio.AioRpcError, StepFailed, SessionLost)) as refused:
            session.session.resume_timeout_s = 0.5
            session.step(text="a" * 5000)
        if isinstance(refused.value, grpc.aio.AioRpcError):
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        other = client.open("char_lm")
        assert other.step(text="ok").seq == 1


@pytest.mark.parametrize("limited", [{"max_generate_tokens": 10, "max_chunk": 8}], indirect=True)
def test_limit_generation_length_and_chunk_size_are_refused_in_stream(limited: ServerThread) -> None:
    with Client(limited.target) as client:
        session = client.open("char_lm")
        with pytest.raises(StepFailed, match="max_generate_tokens=10"):
            list(session.generate("A", 11))
        with pytest.raises(StepFailed, match="max_chunk=8"):
            session.step(text="abcdefghi")
        assert len([e for e in session.generate("A", 10)]) == 11  # 10 tokens + done: at the limit is fine
        session.close()


@pytest.mark.parametrize("limited", [{"max_message_bytes": 2048}], indirect=True)
def test_limit_a_generation_whose_answer_could_not_be_sent_is_refused_before_it_runs(limited: ServerThread) -> None:
    with Client(limited.target) as client:
        session = client.open("char_lm")
        with pytest.raises(StepFailed, match="max_message_bytes=2048") as refused:
            list(session.generate("A", 400))  # 400 tokens x (id, prob, text) > 2 KiB
        assert "ask for fewer tokens" in str(refused.value)
        assert session.last_seq == 0  # nothing ran
        events = list(session.generate("A", 50))
        assert isinstance(events[-1], pb.GenerateDone) and events[-1].tokens == 50
        session.close()


def test_limit_a_snapshot_larger_than_a_message_is_refused_in_stream(tmp_path: Path) -> None:
    float_rnn.build(tmp_path / "models" / "wide_rnn", name="wide_rnn", hidden=1024)  # 4 KiB of state
    running = ServerThread(Settings(models_dir=tmp_path / "models", max_message_bytes=2048))
    try:
        with Client(running.target) as client:
            # A step's answer (all 4 KiB of y) would not fit either, so the session is reset around it.
            session = client.open("wide_rnn")
            assert session.reset().seq == 1
            with pytest.raises(StepFailed, match="max_message_bytes=2048") as refused:
                session.snapshot()
            assert "the snapshot is" in str(refused.value)
            assert session.reset().seq == 2  # the stream and the session go on
            session.close()
    finally:
        running.stop()


@pytest.mark.parametrize("limited", [{"detach_ttl_s": 0.2}], indirect=True)
def test_limit_soak_of_short_sessions_ends_with_an_empty_store_and_flat_memory(limited: ServerThread) -> None:
    """A bounded soak: rounds of abandoned and closed sessions; RSS after the first round is the baseline."""
    process = psutil.Process()

    def round_of_sessions(client: Client, count: int) -> None:
        for index in range(count):
            session = client.open("char_lm")
            session.step(text="soak")
            if index % 2:
                session.close()
            else:
                session.cancel()
        wait_until(lambda: store_size(limited) == 0, 10, "the round's sessions were closed or expired")

    with Client(limited.target) as client:
        round_of_sessions(client, 150)
        baseline = process.memory_info().rss
        for _ in range(4):
            round_of_sessions(client, 150)
        growth = (process.memory_info().rss - baseline) / baseline
    assert store_size(limited) == 0
    assert growth < 0.05, f"RSS grew {growth:.1%} over 600 sessions"


# -- drain ------------------------------------------------------------------------------------

DRAIN_TEXT = "The quality of mercy is not strained; it droppeth as the gentle rain from heaven " * 20


def test_drain_on_sigterm_answers_in_flight_steps_refuses_new_sessions_and_exits_in_time(
    tiny_lm_dir: Path, offline_lm: OfflineLM
) -> None:
    env = {**os.environ, "STATESTREAM_MODELS_DIR": str(tiny_lm_dir), "STATESTREAM_GRACE_S": "1.5"}
    with serve_process([], env, stderr=subprocess.DEVNULL) as (server, _, target):
        acked: list[list[np.ndarray]] = [[] for _ in range(4)]
        started = threading.Barrier(5)

        def stream(index: int) -> None:
            with Client(target) as client:
                session = client.open("char_lm", return_tensors=["logits"], resume_timeout_s=0.5)
                started.wait()
                try:
                    for ch in DRAIN_TEXT:
                        acked[index].append(from_proto(session.step(text=ch).outputs[0].tensors[0]))
                except (SessionLost, StepFailed, grpc.aio.AioRpcError):
                    return  # the server went away: what was acknowledged is checked below

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        started.wait()
        wait_until(lambda: min(len(a) for a in acked) >= 20, 30, "every stream had 20 steps acknowledged")
        server.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        wait_until(lambda: _health(target) == "NOT_SERVING", 10, "the signal was handled: draining")
        with Client(target) as late:  # new sessions are refused while draining
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                late.open("char_lm")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.wait(timeout=20) == 0
        assert time.monotonic() - sent < 1.5 + 3.0  # grace plus process teardown
        for thread in threads:
            thread.join(timeout=10)
        reference = offline_lm.logits(DRAIN_TEXT[: max(len(a) for a in acked)])
        for rows in acked:  # every acknowledged step was applied exactly once, in order
            np.testing.assert_allclose(np.stack(rows), reference[: len(rows)], atol=TOLERANCE, rtol=0)


def _health(target: str) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))


def test_drain_in_process_refuses_new_sessions_and_reports_not_serving(tiny_lm_dir: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    running = ServerThread(Settings(models_dir=tiny_lm_dir, grace_s=2.0))
    channel = grpc.insecure_channel(running.target)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    with Client(running.target) as client:
        session = client.open("char_lm")
        draining = asyncio.run_coroutine_threadsafe(running.server.drain(), running.loop)
        wait_until(lambda: not running.server.store.accepting, 10, "the drain began")
        assert session.step(text="still answered").seq == 1  # in-flight streams go on during the grace
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            client.open("char_lm")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        draining.result(timeout=10)
    channel.close()
    running.loop.call_soon_threadsafe(running.loop.stop)
    running.thread.join(timeout=10)
