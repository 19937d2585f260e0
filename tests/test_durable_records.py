"""Checkpoints made cheap stay as exact and as fenced as before (issue 26's durable path).

A session's header is built once (RecordEncoder) and reused: its records must stay byte for byte
what a record built from nothing writes, through every change of layout. A batch of checkpoints
is one round trip of plain ``SET ... XX`` commands: it must still refuse, session by session,
every write whose epoch moved. And a server with a store must be able to open hundreds of
sessions at once (redis-py's plain pool refused the 101st concurrent command).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import redis

from loadtest import durable_hotpath
from service.api import statestream_pb2 as pb
from service.client import Client
from service.durable_sessions import DurableSessions
from service.errors import FailedPrecondition, Unavailable
from service.redis_store import PREFIX, Checkpoint, RedisStore, record_key, session_key
from service.session_records import RecordEncoder, RecordIdentity, SessionRecord
from service.session_store import ReplyKind
from tests.cluster import RedisServer, redis_server, replica, stored_record
from tests.conftest import SHIPPED_MODELS

IDENTITY = RecordIdentity("abc", "m", "1", "alice", 3, ("logits",))


def _record(last_seq: int, rows: dict[str, np.ndarray], scratch: dict[str, np.ndarray], reply_kind: str,
            initial: dict[str, np.ndarray] | None = None) -> SessionRecord:  # fmt: skip
    reply = pb.StepResult(seq=last_seq).SerializeToString() if reply_kind == "step" else b"\x08\x01"
    return SessionRecord(
        session_id="abc", model="m", version="1", caller="alice", top_k=3, return_tensors=("logits",),
        last_seq=last_seq, rows=rows, initial=initial, scratch=scratch, reply_kind=reply_kind, reply=reply,
    )  # fmt: skip


def test_an_encoders_records_equal_records_built_from_nothing_through_layout_changes() -> None:
    encoder = RecordEncoder(IDENTITY)
    rows = {"h": np.zeros((2, 3), np.float32), "c": np.zeros((2, 3), np.float32)}
    steps: list[tuple[dict[str, np.ndarray], str, dict[str, np.ndarray] | None]] = [
        ({}, "step", None),  # the first record: the header is built
        ({}, "step", None),  # the same layout: the header is reused
        ({"logits": np.array([0.5, -1.0], np.float32)}, "step", None),  # scratch gains an array
        ({"logits": np.array([0.5, -1.0, 2.0], np.float32)}, "step", None),  # one changes shape
        ({"logits": np.array([1.0, 2.0, 3.0], np.float64)}, "step", None),  # one changes dtype
        ({"logits": np.array([1.0, 2.0, 3.0], np.float64)}, "generate", None),  # the answer's kind changes
        ({}, "step", {"h": np.ones((2, 3), np.float32), "c": np.ones((2, 3), np.float32)}),  # an initial row
    ]
    for seq, (scratch, kind, initial) in enumerate(steps, start=1):
        rows["h"][:] = seq
        record = _record(seq, rows, scratch, kind, initial)
        encoded = encoder.encode(seq, (rows, initial, scratch), kind, record.reply)
        assert encoded == record.to_bytes(), f"record {seq}"
        back = SessionRecord.from_bytes(encoded)
        assert (back.last_seq, back.reply_kind, back.reply) == (seq, kind, record.reply)
        np.testing.assert_array_equal(back.rows["h"], np.full((2, 3), seq, np.float32))
        assert sorted(back.scratch) == sorted(scratch)
        for name, value in scratch.items():
            assert back.scratch[name].dtype == value.dtype
            np.testing.assert_array_equal(back.scratch[name], value)
        assert (back.initial is None) == (initial is None)


def test_a_record_is_a_copy_of_the_row_when_it_was_made() -> None:
    """A row that moves after its record was made does not move the record (no view into the slab)."""
    rows = {"h": np.full((1, 4), 7.0, np.float32)}
    encoded = RecordEncoder(IDENTITY).encode(7, (rows, None, {}), "", b"")
    rows["h"][:] = -1.0
    np.testing.assert_array_equal(SessionRecord.from_bytes(encoded).rows["h"], np.full((1, 4), 7.0, np.float32))


def test_a_big_endian_array_is_written_little_endian() -> None:
    rows = {"h": np.array([1.0, 2.0], dtype=">f4")}
    encoded = RecordEncoder(IDENTITY).encode(1, (rows, None, {}), "", b"")
    assert struct.pack("<2f", 1.0, 2.0) in encoded
    np.testing.assert_array_equal(SessionRecord.from_bytes(encoded).rows["h"], [1.0, 2.0])


def test_a_format_1_record_is_still_read() -> None:
    """Written by a server of the version before (last seq and reply length in the JSON header)."""
    state, reply = struct.pack("<3f", 1.0, 2.0, 3.0), b"\x08\x05"
    header = json.dumps({
        "id": "abc", "model": "m", "version": "1", "caller": "alice", "top_k": 0, "return_tensors": [],
        "last_seq": 5, "has_initial": False, "reply_kind": "step", "reply_size": len(reply),
        "arrays": [{"group": "rows", "name": "h", "dtype": "f4", "shape": [3], "offset": 0, "size": 12}],
    }).encode()  # fmt: skip
    blob = b"SSRC" + struct.pack("<BI", 1, len(header)) + header + state + reply
    record = SessionRecord.from_bytes(blob)
    assert (record.session_id, record.caller, record.last_seq, record.reply) == ("abc", "alice", 5, reply)
    np.testing.assert_array_equal(record.rows["h"], [1.0, 2.0, 3.0])


def test_a_record_of_an_unknown_format_is_refused_by_name() -> None:
    blob = b"SSRC" + struct.pack("<BI", 9, 2) + b"{}"
    with pytest.raises(FailedPrecondition, match="not format 2"):
        SessionRecord.from_bytes(blob)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


def _calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_batch_of_checkpoints_is_one_round_trip_fenced_session_by_session(store: RedisServer) -> None:
    async def scenario(direct: redis.Redis) -> tuple[list[bool], list[int]]:
        owner = RedisStore(store.url, ttl_s=60, handover_timeout_s=0)
        rival = RedisStore(store.url, ttl_s=60, handover_timeout_s=0)
        sent: list[int] = []
        call_many = owner._line.call_many

        async def counted(pieces: list[bytes], count: int) -> list[object]:
            sent.append(count)
            return await call_many(pieces, count)

        owner._line.call_many = counted  # type: ignore[method-assign]
        try:
            for name in ("one", "two", "three"):
                assert await owner.create(name, "alice", b"created")
            assert await rival.claim("two") == (2, b"created")  # epoch 2: the owner is fenced for "two"
            before = {command: _calls(direct, command) for command in ("set", "evalsha")}
            written = await owner.checkpoint_many(
                [Checkpoint(name, 1, record, refresh=False)
                 for name, record in (("one", b"step 1"), ("two", b"stale"), ("three", b"step 1"))]
            )  # fmt: skip
            assert _calls(direct, "set") == before["set"] + 3, "one SET a record"
            assert _calls(direct, "evalsha") == before["evalsha"], "no script when no refresh is due"
            return written, sent
        finally:
            await owner.close()
            await rival.close()

    with store.client() as direct:
        written, sent = asyncio.run(scenario(direct))
        assert written == [True, False, True]
        assert sent == [3], "the batch went out in one round trip"
        assert stored_record(direct, "one") == b"step 1"
        assert stored_record(direct, "two") == b"created", "the fenced write changed nothing"
        assert stored_record(direct, "three") == b"step 1"
        assert not direct.exists(record_key("two", 1)), "the fenced write left no key behind"
        assert "cmdstat_script" not in direct.info("commandstats"), "no SCRIPT EXISTS round trip before a batch"


def test_a_take_over_moves_the_record_to_the_new_epoch_and_a_close_removes_both_keys(store: RedisServer) -> None:
    async def scenario(direct: redis.Redis) -> None:
        owner = RedisStore(store.url, ttl_s=60, handover_timeout_s=0)
        rival = RedisStore(store.url, ttl_s=60, handover_timeout_s=0)
        try:
            assert await owner.create("one", "alice", b"created")
            assert direct.get(record_key("one", 1)) == b"created"
            assert direct.pttl(record_key("one", 1)) > 60_000, "the record expires with its session"
            assert await rival.claim("one") == (2, b"created")
            assert not direct.exists(record_key("one", 1)) and direct.pttl(record_key("one", 2)) > 60_000
            assert await rival.checkpoint_many([Checkpoint("one", 2, b"step 1", refresh=False)]) == [True]
            assert await owner.delete("one", 1) is False, "a stale owner cannot delete it"
            assert await rival.delete("one", 2) is True
            assert direct.keys(f"{PREFIX}*") == [], "nothing of the session is left"
        finally:
            await owner.close()
            await rival.close()

    with store.client() as direct:
        asyncio.run(scenario(direct))


def test_a_session_stored_with_its_record_in_the_hash_is_taken_over(store: RedisServer) -> None:
    """Sessions written before records had keys of their own survive an upgrade: the take-over moves them."""

    async def scenario() -> tuple[int, bytes] | None:
        replica_store = RedisStore(store.url, ttl_s=60, handover_timeout_s=0)
        try:
            return await replica_store.claim("old")
        finally:
            await replica_store.close()

    with store.client() as direct:
        direct.hset(session_key("old"), mapping={"epoch": 3, "owner": "gone", "caller": "alice", "record": b"r"})
        direct.pexpire(session_key("old"), 30_000)
        assert asyncio.run(scenario()) == (4, b"r")
        assert stored_record(direct, "old") == b"r"
        assert 0 < direct.pttl(record_key("old", 4)) <= 30_000, "the record keeps the session's expiry"
        assert not direct.hexists(session_key("old"), "record")


def test_hundreds_of_sessions_reach_the_store_at_once(store: RedisServer) -> None:
    """More concurrent commands than the pool holds connections wait for one instead of failing."""
    count = 300

    async def scenario() -> list[bool]:
        owner = RedisStore(store.url, ttl_s=60, handover_timeout_s=0)
        try:
            return list(await asyncio.gather(*(owner.create(f"s{i}", "alice", b"r") for i in range(count))))
        finally:
            await owner.close()

    assert asyncio.run(scenario()) == [True] * count
    with store.client() as direct:
        assert len(direct.keys(session_key("*"))) == count


def test_every_acknowledged_step_is_in_the_store_with_its_answer(lm_dir: Path, store: RedisServer) -> None:
    """K = 1: when a step's answer reaches the client, the store holds its seq, its state and that answer."""
    with replica(lm_dir, store.url, "--checkpoint-every", "1") as (_, target), Client(target) as client:
        session = client.open("char_lm", return_tensors=["logits"])
        records = []
        with store.client() as direct:
            for char in "To be, or":
                result = session.step(text=char)
                record = SessionRecord.from_bytes(stored_record(direct, session.id))
                assert record.last_seq == result.seq
                assert pb.StepResult.FromString(record.reply) == result
                records.append(record)
        moved = [not np.array_equal(a.rows["h"], b.rows["h"]) for a, b in itertools.pairwise(records)]
        assert all(moved), "each step's record holds that step's state"
        session.close()


def test_the_in_process_durable_harness_measures_every_variant(store: RedisServer) -> None:
    """loadtest.durable_hotpath smoked: no store, K = 1 and K = 16, each answering every step."""
    assert store.process is not None
    rows = asyncio.run(durable_hotpath.drive(SHIPPED_MODELS, "lstm256", store.url, store.process.pid, 4, 3, 1))
    assert [row["variant"] for row in rows] == list(durable_hotpath.VARIANTS)
    assert all(row["steps"] == 12 and row["cpu_us_per_step"] > 0 for row in rows)
    with store.client() as direct:
        assert direct.info("commandstats")["cmdstat_evalsha"]["calls"] > 0, "K = 1 checkpointed"
    assert rows[1]["checkpoint_commands"] > 0 and rows[0]["checkpoint_commands"] == 0


def test_the_harness_runs_the_variants_it_is_given_in_their_order(store: RedisServer) -> None:
    """--variants K=1000,none: a store connected that checkpoints only when a stream ends, then none, twice."""
    assert store.process is not None
    rows = asyncio.run(
        durable_hotpath.drive(
            SHIPPED_MODELS, "lstm256", store.url, store.process.pid, 4, 3, 2, variants=("K=1000", "none")
        )
    )
    assert [(row["round"], row["variant"]) for row in rows] == [(1, "K=1000"), (1, "none"), (2, "K=1000"), (2, "none")]
    assert all(row["steps"] == 12 for row in rows)
    assert rows[1]["checkpoint_commands"] == 0


def test_the_harness_spreads_its_streams_out_of_lockstep(store: RedisServer) -> None:
    """--spread J: every step is still answered, and K = 1's checkpoints go out in more, smaller commands."""
    assert store.process is not None
    pid = store.process.pid
    lockstep, spread = (
        asyncio.run(durable_hotpath.drive(SHIPPED_MODELS, "lstm256", store.url, pid, 16, 6, 1, turns))[1]
        for turns in (0, 8)
    )
    assert lockstep["variant"] == spread["variant"] == "K=1"
    assert lockstep["steps"] == spread["steps"] == 96
    assert spread["checkpoint_commands"] > lockstep["checkpoint_commands"]


# -- issue 26, fourth session: the checkpoint command framed by hand, the expiry refreshed when due --


def test_records_of_any_bytes_are_written_exactly_through_the_framed_command(store: RedisServer) -> None:
    """The batch is framed here (RESP), not by redis-py: a record's bytes must arrive as they were."""
    records = {
        "framing": b"\r\n$3\r\nabc\r\n*2\r\n" * 3,  # what RESP itself is made of
        "every_byte": bytes(range(256)) * 4,
        "empty": b"",
        "big": bytes(range(251)) * 600,  # ~150 KB: past redis-py's and Redis's big-argument cut-offs
        "unicode_id_\u00e9": "caf\u00e9".encode(),
    }

    async def scenario() -> list[bool]:
        owner = RedisStore(store.url, ttl_s=60, handover_timeout_s=0)
        try:
            for name in records:
                assert await owner.create(name, "alice", b"created")
            return await owner.checkpoint_many([Checkpoint(name, 1, record) for name, record in records.items()])
        finally:
            await owner.close()

    assert asyncio.run(scenario()) == [True] * len(records)
    with store.client() as direct:
        for name, record in records.items():
            assert stored_record(direct, name) == record, name


def test_a_checkpoint_refreshes_the_expiry_only_when_asked_and_only_if_not_fenced(store: RedisServer) -> None:
    async def scenario(direct: redis.Redis) -> None:
        owner = RedisStore(store.url, ttl_s=60, handover_timeout_s=0)
        rival = RedisStore(store.url, ttl_s=60, handover_timeout_s=0)
        try:
            assert owner.expiry_ms == 60_000 + 60_000 // 16
            for name in ("kept", "refreshed", "fenced"):
                assert await owner.create(name, "alice", b"created")
                assert direct.pttl(session_key(name)) > 60_000, "create sets the TTL and the slack"
                direct.pexpire(session_key(name), 5_000)  # as if the expiry had run down since
            assert await rival.claim("fenced") is not None
            written = await owner.checkpoint_many(
                [Checkpoint("kept", 1, b"a", refresh=False), Checkpoint("refreshed", 1, b"b", refresh=True),
                 Checkpoint("fenced", 1, b"c", refresh=True)]
            )  # fmt: skip
            assert written == [True, True, False]
        finally:
            await owner.close()
            await rival.close()

    with store.client() as direct:
        asyncio.run(scenario(direct))
        assert 0 < direct.pttl(session_key("kept")) <= 5_000, "a checkpoint not due to refresh leaves the expiry"
        assert direct.pttl(session_key("refreshed")) > 60_000, "a refresh sets the TTL and the slack again"
        assert 0 < direct.pttl(session_key("fenced")) <= 5_000, "a fenced write changes nothing, expiry included"
        assert stored_record(direct, "kept") == b"a"


def test_a_batch_goes_through_after_redis_forgot_its_scripts(store: RedisServer) -> None:
    """A restarted Redis knows no script (NOSCRIPT): the refreshing checkpoints load it and are sent again, once."""

    async def scenario(direct: redis.Redis) -> tuple[list[bool], list[bool]]:
        owner = RedisStore(store.url, ttl_s=60, handover_timeout_s=0)
        try:
            assert await owner.create("one", "alice", b"created")
            assert await owner.create("two", "alice", b"created")
            first = await owner.checkpoint_many([Checkpoint("one", 1, b"step 1")])
            direct.script_flush()
            sets = _calls(direct, "set")
            second = await owner.checkpoint_many(
                [Checkpoint("one", 1, b"step 2"), Checkpoint("two", 1, b"step 1", refresh=False)]
            )
            assert _calls(direct, "set") == sets + 2, "the plain SET was not sent again"
            return first, second
        finally:
            await owner.close()

    with store.client() as direct:
        assert asyncio.run(scenario(direct)) == ([True], [True, True])
        assert stored_record(direct, "one") == b"step 2"
        assert stored_record(direct, "two") == b"step 1"


def test_an_unreachable_store_fails_a_batch_as_unavailable(store: RedisServer) -> None:
    async def scenario() -> None:
        owner = RedisStore(store.url, ttl_s=60, handover_timeout_s=0)
        try:
            assert await owner.create("one", "alice", b"created")
            store.kill()
            with pytest.raises(Unavailable, match="checkpoint"):
                await owner.checkpoint_many([Checkpoint("one", 1, b"step 1")])
        finally:
            await owner.close()

    asyncio.run(scenario())


def _pexpire_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_pexpire", {}).get("calls", 0))


def test_a_replicas_checkpoints_refresh_a_sessions_expiry_only_when_due(lm_dir: Path, store: RedisServer) -> None:
    """K = 1 with the default TTL (an hour): a burst of steps sets the expiry once (at open), yet the
    session still outlives its last checkpoint by the TTL; with a TTL of 1.6 s (a refresh due every
    0.1 s), steps 0.3 s apart refresh it every time."""
    with store.client() as direct:
        with replica(lm_dir, store.url, "--checkpoint-every", "1") as (_, target), Client(target) as client:
            session = client.open("char_lm")
            before = _pexpire_calls(direct)
            for char in "To be, or not":
                session.step(text=char)
            assert _pexpire_calls(direct) == before, "no refresh was due: the create set the expiry"
            assert direct.pttl(session_key(session.id)) > 3600 * 1000, "it outlives the last step by the TTL"
            session.close()
        args = ("--checkpoint-every", "1", "--idle-timeout-s", "1.6")
        with replica(lm_dir, store.url, *args) as (_, target), Client(target) as client:
            session = client.open("char_lm")
            before = _pexpire_calls(direct)
            for char in "abc":
                time.sleep(0.3)
                session.step(text=char)
            assert _pexpire_calls(direct) == before + 3, "each step came after a refresh was due"
            assert direct.pttl(session_key(session.id)) > 1600 - 300
            session.close()


def _fake_session(owner: str, top_k: int, runtime: object) -> SimpleNamespace:
    rows = {"h": np.arange(4, dtype=np.float32).reshape(1, 4)}
    runtime.slabs = SimpleNamespace(peek_row=lambda row: rows)  # type: ignore[attr-defined]
    return SimpleNamespace(
        id="abc", runtime=runtime, owner=owner, options=SimpleNamespace(top_k=top_k, return_tensors=("y",)),
        replies={3: (ReplyKind.STEP, b"\x08\x03")}, last_seq=3, row=0, initial=None, scratch={},
    )  # fmt: skip


def test_a_records_header_follows_what_the_session_says_of_itself() -> None:
    """A session's encoder is kept while its model, caller and options stay; a change makes a new header."""
    durable = DurableSessions.__new__(DurableSessions)
    durable._held = {}
    manifest = SimpleNamespace(name="m", version="1")
    runtime = SimpleNamespace(model=SimpleNamespace(manifest=manifest))
    session = _fake_session("alice", 3, runtime)
    first = SessionRecord.from_bytes(durable.record_of(session))  # type: ignore[arg-type]
    assert (first.caller, first.top_k, first.last_seq, first.reply) == ("alice", 3, 3, b"\x08\x03")
    session.options = SimpleNamespace(top_k=5, return_tensors=("y", "h"))
    second = SessionRecord.from_bytes(durable.record_of(session))  # type: ignore[arg-type]
    assert (second.top_k, second.return_tensors) == (5, ("y", "h"))
    session.runtime = SimpleNamespace(model=SimpleNamespace(manifest=SimpleNamespace(name="m", version="2")))
    session.runtime.slabs = runtime.slabs
    assert SessionRecord.from_bytes(durable.record_of(session)).version == "2"  # type: ignore[arg-type]
    np.testing.assert_array_equal(first.rows["h"], [[0, 1, 2, 3]])
