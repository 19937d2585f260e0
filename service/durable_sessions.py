"""Sessions that outlive their process: checkpoints to the session store, take-over and hand-over.

The engine calls its hooks: ``opened`` (the store learns the session), ``acknowledge`` and
``settle`` (before a state-changing request is answered), ``detached`` and ``closed``.
Every ``checkpoint_every`` acknowledged requests of a session, its record is written before
the answer goes out, so with K = 1 every answered step is durable. The writes of all the
sessions whose answers are ready in the same turn of the event loop (one scheduler batch) go
out as one pipelined round trip, not one per step.

A write the store refuses (another replica took the session over: the epoch moved) or cannot
take (the store is unreachable) means this process may no longer answer for the session: the
request is not acknowledged, the session is dropped here (its state is the store's now), and
the stream ends with UNAVAILABLE, so the client resumes wherever it lands and the replica there
loads the session from its last checkpoint. That is the fence: a stale owner's step is refused,
never acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from service.api import statestream_pb2 as pb
from service.errors import NotFound, StatestreamError, Unavailable
from service.metrics import Metrics
from service.redis_store import Checkpoint, RedisStore
from service.session_options import ResolvedOptions
from service.session_records import RecordEncoder, RecordIdentity, SessionRecord
from service.session_store import ReplyKind, Session, SessionStore

log = logging.getLogger(__name__)

_REPLY_TYPES: dict[str, type[Message]] = {
    ReplyKind.STEP.value: pb.StepResult,
    ReplyKind.GENERATE.value: pb.GenerateDone,
    ReplyKind.RUN.value: pb.RunDone,
}


class SessionMoved(Exception):
    """This process no longer answers for the session: the client must resume (UNAVAILABLE)."""


#: A checkpoint's outcome: True written, False fenced (another replica took the session over),
#: or why the store could not take it. A result, never the future's exception: a step that
#: stopped waiting leaves nothing unretrieved behind.
Outcome = bool | Unavailable
#: A record waiting for the next flush, and the step's wait for its outcome.
_Pending = tuple[Checkpoint, "asyncio.Future[Outcome]"]


@dataclass(slots=True)
class _Held:
    """What this process keeps for a session it holds: the record's encoder, and what it was made for."""

    encoder: RecordEncoder
    #: The runtime its identity's model and version are of (compared by identity: cheaper than both).
    runtime: object
    #: When a checkpoint last refreshed the session's expiry in the store (time.monotonic()).
    refreshed: float = -math.inf


class DurableSessions:
    """Keeps the session store in step with the sessions this process holds."""

    def __init__(self, store: SessionStore, redis_store: RedisStore, checkpoint_every: int, metrics: Metrics) -> None:
        self.store = store
        self.redis = redis_store
        self.every = checkpoint_every  # 0: only on detach, hand-over and drain
        self.metrics = metrics
        self._pending: list[_Pending] = []
        self._flush_scheduled = False
        self._background: set[asyncio.Task[None]] = set()
        self._held: dict[str, _Held] = {}  # by session id, while this process holds it

    def start(self) -> None:
        self.redis.listen(self._handover_requested)

    # -- records -------------------------------------------------------------------------

    def record_of(self, session: Session) -> bytes:
        """The session's record now (the caller holds its lock, or nothing can run on it).

        Built on the event loop, synchronously, under the session's lock: nothing can move the
        row between reading it and the record's bytes, and its few microseconds (the header is
        built once per session: RecordEncoder) cost less than a hand-off to a thread would.
        """
        return self._record(session, self._holding(session))

    def _record(self, session: Session, held: _Held) -> bytes:
        kind, reply = "", b""
        if session.replies:
            seq, (reply_kind, encoded) = next(reversed(session.replies.items()))
            if seq == session.last_seq:
                kind, reply = reply_kind._value_, encoded  # not .value: a descriptor call, every record
        rows = session.runtime.slabs.peek_row(session.row)  # encoded before anything can move it
        return held.encoder.encode(session.last_seq, (rows, session.initial, session.scratch), kind, reply)

    def _holding(self, session: Session) -> _Held:
        """The session's encoder, made again if what its header says (model, caller, options) changed."""
        held = self._held.get(session.id)
        options = session.options
        if held is not None:
            made_for = held.encoder.identity
            if (
                held.runtime is session.runtime
                and made_for.caller == session.owner
                and made_for.top_k == options.top_k
                and made_for.return_tensors == options.return_tensors
            ):
                return held
        manifest = session.runtime.model.manifest
        identity = RecordIdentity(
            session.id, manifest.name, manifest.version, session.owner, options.top_k, options.return_tensors
        )
        refreshed = held.refreshed if held is not None else -math.inf
        held = self._held[session.id] = _Held(RecordEncoder(identity), session.runtime, refreshed)
        return held

    def _adopt(self, record: SessionRecord, epoch: int) -> Session:
        session = self.store.adopt(
            record.session_id,
            record.model,
            record.version,
            record.caller,
            ResolvedOptions(top_k=record.top_k, return_tensors=record.return_tensors),
            record.rows,
        )
        session.last_seq = record.last_seq
        session.initial = record.initial
        session.scratch = dict(record.scratch)
        session.epoch = epoch
        if record.reply_kind in _REPLY_TYPES:
            _REPLY_TYPES[record.reply_kind].FromString(record.reply)  # a record that does not parse fails here
            session.replies[record.last_seq] = (ReplyKind(record.reply_kind), record.reply)
        return session

    # -- the hooks -------------------------------------------------------------------------

    async def opened(self, session: Session) -> None:
        """Writes the new session's first record, so another process can resume it."""
        session.epoch = 1
        try:
            held = self._holding(session)
            await self.redis.create(session.id, session.owner, self._record(session, held))
            held.refreshed = time.monotonic()  # create set its expiry
        except BaseException:  # the engine drops the session: keep nothing for it
            self._held.pop(session.id, None)
            raise

    def acknowledge(self, session: Session) -> asyncio.Future[Outcome] | None:
        """Called with the session's lock held, after a request was applied and before it is answered:
        None, or the future of the checkpoint now due, whose outcome the caller hands to ``settle``.

        Not a coroutine: most requests write nothing, and the one that does waits on its future
        directly, a chain of coroutines fewer to resume (the engine's hot path).
        """
        session.unsaved += 1
        if self.every and session.unsaved >= self.every:
            return self._enqueue(session)
        return None

    def settle(self, session: Session, outcome: Outcome) -> None:
        """The request is acknowledged if its checkpoint was written; else the session is dropped here
        and SessionMoved raised (the client resumes where the session is now)."""
        if outcome is True:
            session.unsaved = 0
            return
        if isinstance(outcome, Unavailable):
            self._drop(session, "store_unavailable")
            raise SessionMoved(f"the session could not be checkpointed: {outcome.message}; resume it") from outcome
        self._drop(session, "fenced")
        raise SessionMoved("another replica has taken this session over; resume it there")

    def detached(self, session: Session) -> None:
        """Its stream ended: checkpoint now, so a resume elsewhere finds the latest state."""
        if session.unsaved:
            self._spawn(self._save_locked(session))

    def closed(self, session: Session) -> None:
        self._held.pop(session.id, None)
        if session.epoch:
            self._spawn(self._forget(session.id, session.epoch))

    # -- taking over, handing over ---------------------------------------------------------

    async def attach(self, session_id: str, caller: str) -> Session:
        """The caller's session for a new stream: held here under the store's epoch, or taken over.

        A copy held here under an older epoch (this process was cut off while another took the
        session over) is never answered from: it is dropped and the session taken back.
        """
        stored = await self.redis.read(session_id)
        if stored is None or stored.caller != caller:
            raise NotFound("no such session (it was closed, expired, or never existed)")
        local = self.store.find(session_id)
        if local is not None and local.epoch == stored.epoch and stored.owner == self.redis.replica:
            return self.store.get(session_id, caller)
        if stored.owner and stored.owner != self.redis.replica:
            await self.redis.ask_owner(session_id, stored.owner)
        claimed = await self.redis.claim(session_id)
        if claimed is None:
            raise NotFound("no such session (it was closed, expired, or never existed)")
        epoch, blob = claimed
        existing = self.store.find(session_id)
        if existing is not None:  # a session this process still held under an older epoch
            self._drop(existing, "taken_over")
        self.metrics.takeovers.inc()
        return self._adopt(SessionRecord.from_bytes(blob), epoch)

    async def _handover_requested(self, session_id: str, reply: str) -> None:
        session = self.store.find(session_id)
        try:
            if session is not None:
                await self.release(session, "handed_over")
        except StatestreamError as exc:
            log.warning("handing session %s… over failed: %s", session_id[:8], exc.message)
        finally:
            with contextlib.suppress(StatestreamError):  # unanswered, the asker takes over when its wait is over
                await self.redis.answer(reply)

    async def release(self, session: Session, reason: str) -> None:
        """Checkpoints the session, lets go of it in the store and drops it here (hand-over, drain)."""
        async with session.lock:
            if session.closed:
                return
            try:
                if session.unsaved:
                    await self._save(session)
                await self.redis.release(session.id, session.epoch)
            finally:
                if not session.closed:
                    self._drop(session, reason)

    async def drain(self) -> None:
        """Hands every session this process holds back to the store (SIGTERM)."""
        await asyncio.gather(*(self._release_quietly(s) for s in self.store), return_exceptions=True)

    async def _release_quietly(self, session: Session) -> None:
        try:
            await self.release(session, "drained")
        except (StatestreamError, SessionMoved) as exc:
            log.warning("draining session %s… to the store failed: %s", session.id[:8], exc)

    # -- writing -----------------------------------------------------------------------------

    async def _save_locked(self, session: Session) -> None:
        async with session.lock:
            if session.closed or not session.unsaved:
                return
            try:
                await self._save(session)
            except SessionMoved as exc:
                log.info("checkpoint on detach refused: %s", exc)

    async def _save(self, session: Session) -> None:
        """Writes the session's record, in the next pipelined batch; drops the session if refused."""
        self.settle(session, await self._enqueue(session))

    def _enqueue(self, session: Session) -> asyncio.Future[Outcome]:
        """The session's record, queued for the next flush (this turn's); the future of its outcome.

        A cancelled wait cancels only the future: the flush skips it, the write still goes out.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcome] = loop.create_future()
        held = self._holding(session)
        record, now = self._record(session, held), time.monotonic()
        refresh = now - held.refreshed >= self.redis.refresh_s
        if refresh:  # it is written, or the session is dropped here: either way it is not due again
            held.refreshed = now
        self._pending.append((Checkpoint(session.id, session.epoch, record, refresh), done))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        return done

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            self._spawn(self._flush(batch))

    async def _flush(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            results = await self.redis.checkpoint_many([checkpoint for checkpoint, _ in batch])
        except Unavailable as exc:
            self.metrics.checkpoint_failures.labels("unavailable").inc(len(batch))
            for _, done in batch:
                if not done.done():
                    done.set_result(exc)
            return
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        self.metrics.checkpoint_bytes.inc(sum(len(checkpoint.record) for checkpoint, _ in batch))
        self.metrics.checkpoints.inc(len(batch))
        for (_, done), written in zip(batch, results, strict=True):
            if not written:
                self.metrics.checkpoint_failures.labels("fenced").inc()
            if not done.done():
                done.set_result(written)

    async def _forget(self, session_id: str, epoch: int) -> None:
        try:
            await self.redis.delete(session_id, epoch)
        except StatestreamError as exc:
            log.warning("removing closed session %s… from the store failed: %s", session_id[:8], exc.message)

    def _drop(self, session: Session, reason: str) -> None:
        """Lets go of the session here without closing it in the store (it is another process's now)."""
        self._held.pop(session.id, None)
        self.store.drop(session, reason)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.redis.close()
