"""The exactly-once session protocol, free of any transport: every protocol's servicer calls it.

A step takes its session's lock, passes the seq rule, runs through the scheduler and is
committed (seq, cached answer) before the lock is released (a step that decodes to no model
step, audio short of a frame, is committed at once); a server-side loop is applied whole
or rolled back; with a session store, a state-changing request is acknowledged there before it
is answered. The servicers only translate their wire format to these calls and their
``StatestreamError``s to statuses, so a second protocol reuses the same guarantees.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator

from service.answer_bytes import DUPLICATE
from service.api import statestream_pb2 as pb
from service.contract import Arrays
from service.drivers import bounds
from service.drivers.loops import Loop, LoopContext
from service.drivers.step_bytes import ReadStep
from service.drivers.steps import StepHeader, StepInputs, finish_step, start_step
from service.durable_sessions import DurableSessions, SessionMoved
from service.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, StatestreamError, Unavailable
from service.session_store import ReplyKind, SeqCheck, Session, SessionStore
from service.settings import Settings

log = logging.getLogger(__name__)

#: The server-side loops by request field: the kind of their cached answer, and the
#: SessionResponse field that carries their final answer.
LOOP_REPLIES = {
    "generate": (ReplyKind.GENERATE, "generated"),
    "run": (ReplyKind.RUN, "run_done"),
}


class SessionEngine:
    """Opens, finds and closes sessions, and applies their requests exactly once, in order."""

    def __init__(self, store: SessionStore, settings: Settings, durable: DurableSessions | None = None) -> None:
        self.store = store
        self.settings = settings
        #: The session store outside the process (--session-store), if any.
        self.durable = durable
        self.limits = bounds.Limits.from_settings(settings)
        #: Streams of every protocol open now, bounded by --max-streams.
        self.open_streams = 0

    # -- streams -------------------------------------------------------------------------

    def enter_stream(self) -> None:
        """Admits one more stream; RESOURCE_EXHAUSTED past --max-streams. Pair with ``leave_stream``."""
        if self.open_streams >= self.settings.max_streams:
            raise ResourceExhausted("max_streams", self.settings.max_streams, "the server holds its most open streams")
        self.open_streams += 1

    def leave_stream(self) -> None:
        self.open_streams -= 1

    # -- opening, finding, closing -------------------------------------------------------

    async def open(self, request: pb.OpenSession, caller: str) -> Session:
        """Checks everything (options, the init payload) before running the init graph and opening."""
        if not self.store.accepting:
            raise Unavailable("the server is draining and opens no new sessions")
        if not request.model:
            raise InvalidArgument("open: model is required")
        runtime = self.store.runtimes.get(request.model, request.version)
        options = runtime.driver.resolve_options(request.options)
        feed = runtime.driver.decode_init(request.init, self.settings.max_init_bytes, bool(request.restore))
        initial = await runtime.initial_rows(feed) if feed is not None else None
        if not self.store.accepting:  # the server began to drain while the init graph ran
            raise Unavailable("the server is draining and opens no new sessions")
        session = self.store.open(request.model, request.version, caller, options, request.restore, initial)
        if self.durable is not None:
            try:
                await self.durable.opened(session)
            except StatestreamError:
                self.store.drop(session, "store_unavailable")
                raise
        return session

    def get(self, session_id: str, caller: str) -> Session:
        """The caller's session held here (NOT_FOUND otherwise): for a request that names it."""
        return self.store.get(session_id, caller)

    async def find(self, session_id: str, caller: str) -> Session:
        """The caller's session for an attach: held here, or (with a session store) taken over from it."""
        if self.durable is None:
            return self.store.get(session_id, caller)
        if not self.store.accepting:  # its sessions went to the store
            raise Unavailable("the server is draining; its sessions are in the session store, resume on another")
        return await self.durable.attach(session_id, caller)

    def attach(self, session: Session, holder: object) -> None:
        """``holder`` (a stream) holds the session now; an earlier holder no longer does."""
        self.store.attach(session, holder)

    def detach(self, session: Session, holder: object) -> None:
        """``holder`` ended without closing: the session waits for a resume until its detach TTL."""
        if session.closed:
            return
        self.store.detach(session, holder)
        if self.durable is not None:
            self.durable.detached(session)

    async def close(self, session: Session) -> None:
        await self.store.close(session)

    # -- requests that change state ------------------------------------------------------

    async def apply_step(
        self,
        session: Session,
        step: pb.Step | ReadStep,
        *,
        lane: bool = False,
        key: str | None = None,
    ) -> bytes:
        """Applies one Step exactly once; its answer is the StepResult's bytes (a duplicate's: the
        cached answer, marked duplicate).

        ``key``: for a protocol whose clients name a request by an id instead of numbering it
        (the Open Inference Protocol), the step's seq is chosen here, under the session's lock,
        and ``step.seq`` set: the seq that key was applied as (a duplicate), else the next one
        (always the next one for the key "", a request without id).

        Safe against the caller's cancellation (a broken stream) without a task of its own: the
        lock is taken before anything starts, and once the step is handed to the scheduler it
        runs to the end; if the caller is cancelled meanwhile, the commit is the scheduler's to
        call (the ``orphan`` callback of ``Scheduler.submit``), so the state and
        ``last_applied_seq`` never disagree. ``lane``: a lone stream's step may take the
        scheduler's fast lane (steps that arrive together batch instead). A ``ReadStep`` (a step
        read from its bytes by the driver's ``step_bytes``) brings its inputs decoded; a
        ``pb.Step`` is decoded by the driver.
        """
        lock = session.lock
        await lock.acquire()  # cancelled while waiting: nothing has started
        started = False
        try:
            if session.closed:
                raise closed_error(session)
            if key is not None:
                step.seq = session.seq_for_key(key) if key else session.last_seq + 1
            if session.check_seq(step.seq) is SeqCheck.DUPLICATE:
                return duplicate_result(session, step.seq)
            decoded = (
                step.inputs
                if isinstance(step, ReadStep)
                else session.runtime.driver.decode_session_step(session, step, self.settings.max_chunk)
            )
            self._check_answer_fits(session, 1 if step.last_only else decoded.steps)
            if decoded.steps == 0:  # nothing for the model (audio short of a frame): applied now
                return await self._apply_without_model(session, step, decoded, key)
            orphan = functools.partial(self._commit_orphan, session, step, decoded, key)
            future = start_step(session, decoded, lane=lane, orphan=orphan)
            started = True
        finally:
            if not started:  # refused, a duplicate, or failed to start: nothing runs, free the session
                lock.release()
        try:
            await future  # cancelled meanwhile: the future is cancelled, the step is not (see submit)
        except asyncio.CancelledError:
            if not future.cancelled():  # it finished, then the caller was cancelled before it resumed
                self._commit_orphan(session, step, decoded, key, future)
            raise
        except Exception:
            pass  # _commit reports the step's failure
        try:
            result = self._commit(session, step, decoded, future, key)
            durable = self.durable  # _acknowledge, inlined: the hot path, a coroutine a step fewer
            if durable is not None and (checkpoint := durable.acknowledge(session)) is not None:
                durable.settle(session, await checkpoint)
            return result
        finally:
            lock.release()

    def _commit(
        self,
        session: Session,
        step: StepHeader,
        decoded: StepInputs,
        future: asyncio.Future[Arrays],
        key: str | None = None,
    ) -> bytes:
        """The answer of a finished step (encoded), recorded with its seq (and key); a failed step records nothing."""
        return self._record(session, step, decoded, finish_step(session, future), key)

    def _record(
        self, session: Session, step: StepHeader, decoded: StepInputs, outputs: Arrays, key: str | None
    ) -> bytes:
        """Records an applied step: the driver's answer (and scratch), the seq, the key, the reply cache."""
        answer = session.runtime.driver.encode_session_result(session, step, decoded, outputs)
        session.record(step.seq, answer, self.settings.reply_cache)
        if key:
            session.remember_key(key, step.seq)
        return answer

    async def _apply_without_model(
        self, session: Session, step: StepHeader, decoded: StepInputs, key: str | None
    ) -> bytes:
        """A step of 0 model steps, under the caller's lock: nothing can fail, so it is recorded at
        once, then acknowledged like any step. Cancelled while acknowledging, it stays applied (as
        a step whose caller goes away after its commit does)."""
        answer = self._record(session, step, decoded, {}, key)
        await self._acknowledge(session)
        return answer

    def _commit_orphan(
        self, session: Session, step: StepHeader, decoded: StepInputs, key: str | None, future: asyncio.Future[Arrays]
    ) -> None:
        """Commits a step whose caller has gone (its stream broke) and frees the session."""
        try:
            self._commit(session, step, decoded, future, key)
        except StatestreamError:
            pass  # it failed: nothing was applied, nothing is recorded
        except Exception:
            log.exception("committing the step of a broken stream failed", extra={"model": session.runtime.name})
        finally:
            session.lock.release()

    def _check_answer_fits(self, session: Session, steps: int) -> None:
        """Refuses (before anything runs) a step whose answer could exceed max_message_bytes."""
        self.limits.check_fits(
            session.runtime.driver.answer_bytes_bound(session.options, steps),
            f"{steps} step(s)",
            "send fewer steps, set last_only, or return fewer tensors",
        )

    async def _acknowledge(self, session: Session) -> None:
        """With a session store, the request is durable there before it is answered (every K-th)."""
        durable = self.durable
        if durable is not None and (checkpoint := durable.acknowledge(session)) is not None:
            durable.settle(session, await checkpoint)

    async def run_loop(
        self, session: Session, kind: str, message: pb.Generate | pb.Run
    ) -> AsyncIterator[pb.SessionResponse]:
        """A server-side loop (``kind`` "generate" or "run"), applied entirely or not at all as one seq.

        The driver plans it (every check before anything runs); the session's row is
        checkpointed and rolled back if the loop does not finish (the caller went away, the
        server stops), so the seq stays unapplied and a resend runs it again.
        """
        reply_kind, reply_field = LOOP_REPLIES[kind]
        async with session.lock:
            if session.closed:
                raise closed_error(session)
            if session.check_seq(message.seq) is SeqCheck.DUPLICATE:
                yield duplicate_loop_answer(session, message.seq, reply_kind, reply_field)
                return
            loop = self._plan(session, kind, message)
            checkpoint = self.store.checkpoint(session)
            context = LoopContext(session)
            try:
                async for response in loop.run(context):
                    yield response
            except BaseException:
                self.store.rollback(session, checkpoint)
                raise
            finally:
                context.release()
            done = loop.done()
            answer = getattr(done, reply_field).SerializeToString()
            session.record(message.seq, answer, self.settings.reply_cache, reply_kind)
            await self._acknowledge(session)
            yield done

    def _plan(self, session: Session, kind: str, message: pb.Generate | pb.Run) -> Loop:
        driver = session.runtime.driver
        if isinstance(message, pb.Generate):
            return driver.plan_generate(session, message, self.limits)
        return driver.plan_run(session, message, self.limits)

    async def reset(self, session: Session, seq: int) -> pb.ResetDone:
        """Back to the session's initial state, as one seq (a resent reset is not applied twice)."""
        async with session.lock:
            if session.closed:
                raise closed_error(session)
            if session.check_seq(seq) is SeqCheck.DUPLICATE:
                return pb.ResetDone(seq=seq, duplicate=True)
            self.store.reset(session)
            session.record(seq, None, 0, ReplyKind.RESET)
            await self._acknowledge(session)
        return pb.ResetDone(seq=seq)

    # -- requests that copy state --------------------------------------------------------

    async def fork(self, session: Session) -> pb.Forked:
        """A new, detached session with this one's state and seq (what-if rollouts, beams)."""
        async with session.lock:
            if session.closed:
                raise FailedPrecondition("the session is closed")
            child = self.store.fork(session)
        if self.durable is not None:  # so that an attach, here or on another process, finds it
            await self.durable.opened(child)
        return pb.Forked(session_id=child.id, last_applied_seq=child.last_seq)

    async def snapshot(self, session: Session) -> pb.Snapshot:
        """The session's state as a sealed blob; refused if it could not be sent in one message."""
        async with session.lock:
            if session.closed:
                raise closed_error(session)
            blob = self.store.snapshot(session)
        snapshot = pb.Snapshot(blob=blob, last_applied_seq=session.last_seq)
        if snapshot.ByteSize() + 16 > self.settings.max_message_bytes:
            raise ResourceExhausted(
                "max_message_bytes",
                self.settings.max_message_bytes,
                f"the snapshot is {len(blob)} bytes (the session's state and its header)",
            )
        return snapshot


def closed_error(session: Session) -> Exception:
    """Why a closed session refuses a request: closed by its client, or held by the session store now."""
    if session.epoch:  # handed over, drained or fenced: not an error of the client's, it resumes elsewhere
        return SessionMoved("this server no longer holds the session; attach again")
    return FailedPrecondition("the session is closed")


def duplicate_result(session: Session, seq: int) -> bytes:
    """The first answer to ``seq`` (its seq and outputs), marked duplicate; without it, only those marks."""
    cached = session.cached_reply(seq, ReplyKind.STEP)  # the seq may have been a Generate, a Run or a Reset
    if cached is None:
        return pb.StepResult(seq=seq, duplicate=True).SerializeToString()
    return cached + DUPLICATE  # a field appended to an encoded message is set in it


def duplicate_loop_answer(session: Session, seq: int, kind: ReplyKind, field: str) -> pb.SessionResponse:
    """A resent loop's final answer (GenerateDone or RunDone) from the cache, marked duplicate."""
    response = pb.SessionResponse()
    duplicate = getattr(response, field)
    duplicate.SetInParent()
    cached = session.cached_reply(seq, kind)
    if cached is not None:
        duplicate.MergeFromString(cached)
    duplicate.seq, duplicate.duplicate = seq, True
    return response
