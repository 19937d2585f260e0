"""statestream.v1.SessionService: sessions over bidirectional streams, multiplexing, unary open/close.

Each Session stream is one task that reads requests in order; a request is answered before the
next is read, which is what "applied exactly once, in order" needs. Errors about one request are
answered in the stream (the session is unchanged); only a protocol error before the session is
open ends the stream with a status.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from service import answer_bytes
from service.api import statestream_pb2 as pb
from service.auth import Authenticator
from service.contract import Arrays
from service.drivers import bounds
from service.drivers.loops import Loop, LoopContext
from service.drivers.steps import StepInputs, finish_step, start_step
from service.durable_sessions import DurableSessions, SessionMoved
from service.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    StatestreamError,
    Unavailable,
    status_number,
)
from service.metrics import Metrics
from service.servicers.wire import Context, Malformed
from service.session_log import events
from service.session_store import ReplyKind, SeqCheck, SessionStore
from service.session_store import Session as SessionState
from service.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def error_message(seq: int, error: StatestreamError) -> pb.Error:
    return pb.Error(seq=seq, code=status_number(error.code), code_name=error.code.name, message=error.message)


#: The server-side loops by request field: the kind of their cached answer, and the
#: SessionResponse field that carries their final answer.
LOOP_REPLIES = {
    "generate": (ReplyKind.GENERATE, "generated"),
    "run": (ReplyKind.RUN, "run_done"),
}


class SessionServicer:
    def __init__(
        self,
        store: SessionStore,
        settings: Settings,
        metrics: Metrics,
        auth: Authenticator,
        durable: DurableSessions | None = None,
    ) -> None:
        self.store = store
        #: The session store outside the process (--session-store), if any.
        self.durable = durable
        self.settings = settings
        self.metrics = metrics
        self.auth = auth
        self.limits = bounds.Limits.from_settings(settings)
        self.open_streams = 0

    def _enter_stream(self) -> None:
        if self.open_streams >= self.settings.max_streams:
            raise ResourceExhausted("max_streams", self.settings.max_streams, "the server holds its most open streams")
        self.open_streams += 1

    # -- opening -------------------------------------------------------------------------

    async def _open(self, request: pb.OpenSession, caller: str) -> SessionState:
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

    async def _find(self, session_id: str, caller: str) -> SessionState:
        """The caller's session for an attach: held here, or (with a session store) taken over from it."""
        if self.durable is not None and not self.store.accepting:  # its sessions went to the store
            raise Unavailable("the server is draining; its sessions are in the session store, resume on another")
        if self.durable is None:
            return self.store.get(session_id, caller)
        return await self.durable.attach(session_id, caller)

    @staticmethod
    def _opened(session: SessionState) -> pb.SessionOpened:
        manifest = session.runtime.model.manifest
        return pb.SessionOpened(
            session_id=session.id,
            model=manifest.name,
            version=manifest.version,
            last_applied_seq=session.last_seq,
            state_bytes=manifest.state_bytes,
        )

    async def _guard(self, context: Context, action: Callable[[], Awaitable[T]]) -> T:
        """Runs a unary action; a StatestreamError becomes the call's status."""
        try:
            return await action()
        except StatestreamError as exc:
            events.refused(exc)
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    async def CreateSession(self, request: pb.OpenSession | Malformed, context: Context) -> pb.SessionOpened:
        async def create() -> pb.SessionOpened:
            return self._opened(await self._open(checked(request), self.auth.caller(context)))

        return await self._guard(context, create)

    async def CloseSession(
        self, request: pb.CloseSessionRequest | Malformed, context: Context
    ) -> pb.CloseSessionResponse:
        async def close() -> pb.CloseSessionResponse:
            session = self.store.get(checked(request).session_id, self.auth.caller(context))
            await self.store.close(session)
            return pb.CloseSessionResponse(last_applied_seq=session.last_seq)

        return await self._guard(context, close)

    # -- the stream ------------------------------------------------------------------------

    async def Session(
        self, requests: AsyncIterator[pb.SessionRequest | Malformed], context: Context
    ) -> AsyncIterator[pb.SessionResponse | bytes]:
        stream = object()  # identifies this stream as the session's holder
        session: SessionState | None = None
        counted = False
        try:
            async for request in requests:
                if session is None:
                    # Refusals (auth, limits) come only after the first message is read: a client
                    # whose first write races a status it has not read yet would see INTERNAL.
                    session = await self._first(request, stream, context)
                    counted = True
                    yield pb.SessionResponse(opened=self._opened(session))
                    continue
                if session.closed and session.epoch:  # handed over, fenced or drained: resume elsewhere
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, "this server no longer holds the session; attach again"
                    )
                if session.stream is not stream:
                    taken = FailedPrecondition(
                        "another stream has attached this session; this stream no longer holds it"
                    )
                    yield pb.SessionResponse(error=error_message(0, taken))
                    return
                try:
                    if not isinstance(request, Malformed) and request.WhichOneof("request") == "step":
                        yield await self._answer_step(session, request)  # the hot path: no nested generator
                        continue
                    async for response in self._handle(session, request):
                        yield response
                except SessionMoved as exc:  # not acknowledged: the client resumes where the session is now
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                if session.closed:
                    return
        finally:
            if counted:
                self.open_streams -= 1
            if session is not None and not session.closed:
                self.store.detach(session, stream)
                if self.durable is not None:
                    self.durable.detached(session)

    async def _first(self, request: pb.SessionRequest | Malformed, stream: object, context: Context) -> SessionState:
        """Authenticates, admits the stream, and opens or attaches; any failure ends the stream."""
        try:
            caller = self.auth.caller(context)
            request = checked(request)
            kind = request.WhichOneof("request")
            if kind not in ("open", "attach"):
                raise InvalidArgument(f"the first message must be open or attach, got {kind or 'an empty message'}")
            self._enter_stream()
            try:
                session = (
                    await self._open(request.open, caller)
                    if kind == "open"
                    else await self._find(request.attach.session_id, caller)
                )
            except StatestreamError:
                self.open_streams -= 1
                raise
        except StatestreamError as exc:
            self.metrics.failures.labels("", exc.code.name).inc()
            events.refused(exc)
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises
        self.store.attach(session, stream)
        if kind == "attach":
            events.resumed(session)
        return session

    async def _answer_step(self, session: SessionState, request: pb.SessionRequest) -> pb.SessionResponse | bytes:
        """One Step of a Session stream, answered by a result (its bytes) or an in-stream error."""
        name = session.runtime.name
        self.metrics.requests.labels(name, "step").inc()
        try:
            return answer_bytes.session_response(await self.apply_step(session, checked(request).step, lane=True))
        except StatestreamError as exc:
            self.metrics.failures.labels(name, exc.code.name).inc()
            events.refused(exc, session)
            return pb.SessionResponse(error=error_message(request.step.seq, exc))

    async def _handle(
        self, session: SessionState, request: pb.SessionRequest | Malformed
    ) -> AsyncIterator[pb.SessionResponse]:
        """Answers one request of an open session; its errors stay in the stream."""
        name = session.runtime.name
        kind = "malformed" if isinstance(request, Malformed) else (request.WhichOneof("request") or "empty")
        self.metrics.requests.labels(name, kind).inc()
        try:
            request = checked(request)
            if kind in LOOP_REPLIES:
                async for response in self._loop(session, request, kind):
                    yield response
            elif kind == "close":
                await self.store.close(session)
                yield pb.SessionResponse(closed=pb.Closed(session_id=session.id, last_applied_seq=session.last_seq))
            elif kind == "fork":
                yield pb.SessionResponse(forked=await self._fork(session))
            elif kind == "reset":
                yield pb.SessionResponse(reset=await self._reset(session, request.reset.seq))
            elif kind == "snapshot":
                async with session.lock:
                    blob = self.store.snapshot(session)
                snapshot = pb.Snapshot(blob=blob, last_applied_seq=session.last_seq)
                if snapshot.ByteSize() + 16 > self.settings.max_message_bytes:  # could not be sent
                    raise ResourceExhausted(
                        "max_message_bytes",
                        self.settings.max_message_bytes,
                        f"the snapshot is {len(blob)} bytes (the session's state and its header)",
                    )
                yield pb.SessionResponse(snapshot=snapshot)
            elif kind in ("open", "attach"):
                raise InvalidArgument(
                    f"{kind}: this stream already holds session {session.id[:8]}…; open another stream"
                )
            else:
                raise InvalidArgument("empty message: set one of step, generate, run, fork, reset, snapshot or close")
        except StatestreamError as exc:
            self.metrics.failures.labels(name, exc.code.name).inc()
            events.refused(exc, session)
            yield pb.SessionResponse(error=error_message(_seq_of(request), exc))

    async def step(self, session: SessionState, step: pb.Step, *, lane: bool = False) -> pb.StepResult:
        """``apply_step``, its answer as a message."""
        return pb.StepResult.FromString(await self.apply_step(session, step, lane=lane))

    async def apply_step(self, session: SessionState, step: pb.Step, *, lane: bool = False) -> bytes:
        """Applies one Step exactly once; its answer is the StepResult's bytes (a duplicate's: the
        cached answer, marked duplicate).

        Safe against the caller's cancellation (a broken stream) without a task of its own: the
        session's lock is taken before anything starts, and once the step is handed to the
        scheduler it runs to the end. If the caller is cancelled while it runs, the commit
        (record the seq and the answer, release the lock) is the scheduler's to call when the
        step ends (the ``orphan`` callback of ``Scheduler.submit``), so the state and
        ``last_applied_seq`` can never disagree, which would double-apply the step on resume; a
        resend of that seq waits on the lock and is then answered as a duplicate. ``lane``: a
        Session stream's step may take the scheduler's fast lane (a Multiplex message's steps
        arrive together and batch instead).
        """
        lock = session.lock
        await lock.acquire()  # cancelled while waiting: nothing has started
        started = False
        try:
            if session.closed:
                raise _closed(session)
            if session.check_seq(step.seq) is SeqCheck.DUPLICATE:
                return _duplicate_result(session, step.seq)
            decoded = session.runtime.driver.decode_step(step, self.settings.max_chunk)
            self._check_answer_fits(session, 1 if step.last_only else decoded.steps)
            orphan = functools.partial(self._commit_orphan, session, step, decoded)
            future = start_step(session, decoded, lane=lane, orphan=orphan)
            started = True
        finally:
            if not started:  # refused, a duplicate, or failed to start: nothing runs, free the session
                lock.release()
        try:
            await future  # cancelled meanwhile: the future is cancelled, the step is not (see submit)
        except asyncio.CancelledError:
            if not future.cancelled():  # it finished, then the caller was cancelled before it resumed
                self._commit_orphan(session, step, decoded, future)
            raise
        except Exception:
            pass  # _commit reports the step's failure
        try:
            result = self._commit(session, step, decoded, future)
            if self.durable is not None:
                await self.durable.acknowledged(session)
            return result
        finally:
            lock.release()

    def _commit(
        self, session: SessionState, step: pb.Step, decoded: StepInputs, future: asyncio.Future[Arrays]
    ) -> bytes:
        """The answer of a finished step (encoded), recorded with its seq; a failed step records nothing."""
        outputs = finish_step(session, future)
        answer = session.runtime.driver.encode_result(session.options, step, decoded, outputs)
        session.record(step.seq, answer, self.settings.reply_cache)
        return answer

    def _commit_orphan(
        self, session: SessionState, step: pb.Step, decoded: StepInputs, future: asyncio.Future[Arrays]
    ) -> None:
        """Commits a step whose caller has gone (its stream broke) and frees the session."""
        try:
            self._commit(session, step, decoded, future)
        except StatestreamError:
            pass  # it failed: nothing was applied, nothing is recorded
        except Exception:
            log.exception("committing the step of a broken stream failed", extra={"model": session.runtime.name})
        finally:
            session.lock.release()

    def _check_answer_fits(self, session: SessionState, steps: int) -> None:
        """Refuses (before anything runs) a step whose answer could exceed max_message_bytes."""
        self.limits.check_fits(
            session.runtime.driver.answer_bytes_bound(session.options, steps),
            f"{steps} step(s)",
            "send fewer steps, set last_only, or return fewer tensors",
        )

    async def _fork(self, session: SessionState) -> pb.Forked:
        async with session.lock:
            if session.closed:
                raise FailedPrecondition("the session is closed")
            child = self.store.fork(session)
        if self.durable is not None:  # so that an attach, here or on another process, finds it
            await self.durable.opened(child)
        return pb.Forked(session_id=child.id, last_applied_seq=child.last_seq)

    async def _reset(self, session: SessionState, seq: int) -> pb.ResetDone:
        async with session.lock:
            if session.check_seq(seq) is SeqCheck.DUPLICATE:
                return pb.ResetDone(seq=seq, duplicate=True)
            self.store.reset(session)
            session.record(seq, None, 0, ReplyKind.RESET)
            if self.durable is not None:
                await self.durable.acknowledged(session)
        return pb.ResetDone(seq=seq)

    async def _loop(
        self, session: SessionState, request: pb.SessionRequest, kind: str
    ) -> AsyncIterator[pb.SessionResponse]:
        """A server-side loop (Generate, Run), applied entirely or not at all as one seq.

        The driver plans it (every check before anything runs); the session's row is
        checkpointed, and restored through the session store if the loop does not finish (the
        stream broke, the server stops), so the seq stays unapplied and a resend runs it again.
        """
        reply_kind, reply_field = LOOP_REPLIES[kind]
        message = getattr(request, kind)
        async with session.lock:
            if session.check_seq(message.seq) is SeqCheck.DUPLICATE:
                response = pb.SessionResponse()
                duplicate = getattr(response, reply_field)  # a GenerateDone or a RunDone
                duplicate.SetInParent()
                cached = session.cached_reply(message.seq, reply_kind)
                if cached is not None:
                    duplicate.MergeFromString(cached)
                duplicate.seq, duplicate.duplicate = message.seq, True
                yield response
                return
            driver = session.runtime.driver
            loop: Loop = (
                driver.plan_generate(session, message, self.limits)
                if kind == "generate"
                else driver.plan_run(session, message, self.limits)
            )
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
            if self.durable is not None:
                await self.durable.acknowledged(session)
            yield done

    # -- multiplexing ----------------------------------------------------------------------

    async def Multiplex(
        self, requests: AsyncIterator[pb.MultiplexRequest | Malformed], context: Context
    ) -> AsyncIterator[pb.MultiplexResponse | bytes]:
        caller: str | None = None
        try:
            async for request in requests:
                if caller is None:  # refusals only after the first message is read, as in Session
                    try:
                        caller = self.auth.caller(context)
                        self._enter_stream()
                    except StatestreamError as exc:
                        caller = None
                        events.refused(exc)
                        await context.abort(exc.code, exc.message)
                        raise  # unreachable: abort raises
                if isinstance(request, Malformed):
                    events.refused(InvalidArgument(request.reason))
                    yield pb.MultiplexResponse(
                        results=[pb.SessionStepResult(error=error_message(0, InvalidArgument(request.reason)))]
                    )
                    continue
                too_big = self._multiplex_too_big(request, caller)
                if too_big is not None:
                    events.refused(too_big)
                    yield pb.MultiplexResponse(results=[pb.SessionStepResult(error=error_message(0, too_big))])
                    continue
                # If this stream breaks meanwhile, each entry's step either never started or still
                # runs to the end and records its seq (see step()).
                outcomes = await self._multiplexed_all(request, caller)
                yield answer_bytes.multiplex_response(outcomes)
        finally:
            if caller is not None:
                self.open_streams -= 1

    def _multiplex_too_big(self, request: pb.MultiplexRequest, caller: str) -> ResourceExhausted | None:
        """The whole request is refused, before any step runs, if its one answer could exceed max_message_bytes.

        Each entry is bounded by the larger of an error and its result (at most max_chunk steps).
        """
        limit = self.settings.max_message_bytes
        bound = 16
        for entry in request.steps:
            bound += 16 + len(entry.session_id) + bounds.error_response(entry)
            step = entry.step
            kind = step.WhichOneof("input")
            claimed = (
                len(step.text)
                if kind == "text"
                else len(step.tokens.ids)
                if kind == "tokens"
                else max((t.shape[0] for t in step.tensors.tensors if t.shape), default=1)
            )
            steps = 1 if step.last_only else max(1, min(claimed, self.settings.max_chunk))
            with contextlib.suppress(StatestreamError):  # not the caller's session: the answer is an error
                session = self.store.get(entry.session_id, caller)
                cached = session.cached_reply(step.seq, ReplyKind.STEP)  # a duplicate gets its first answer
                bound += max(
                    session.runtime.driver.answer_bytes_bound(session.options, steps),
                    len(cached) + 32 if cached is not None else 0,
                )
            if bound > limit:
                return ResourceExhausted(
                    "max_message_bytes",
                    limit,
                    f"the answer to these {len(request.steps)} steps could exceed it; nothing was applied: "
                    "send fewer steps per request",
                )
        return None

    async def _multiplexed_all(self, request: pb.MultiplexRequest, caller: str) -> list[bytes]:
        return await asyncio.gather(*(self._multiplexed(entry, caller) for entry in request.steps))

    async def _multiplexed(self, entry: pb.SessionStep, caller: str) -> bytes:
        """One entry, answered by its result or its error (an encoded SessionStepResult)."""
        try:
            session = self.store.get(entry.session_id, caller)
            self.metrics.requests.labels(session.runtime.name, "multiplex").inc()
            answer = await self.apply_step(session, entry.step)
        except SessionMoved as exc:
            error = error_message(entry.step.seq, Unavailable(f"{exc}; attach to it with a Session stream"))
        except StatestreamError as exc:
            events.refused(exc)
            error = error_message(entry.step.seq, exc)
        else:
            return answer_bytes.session_step_result(entry.session_id, answer)
        return pb.SessionStepResult(session_id=entry.session_id, error=error).SerializeToString()


def checked(request: T | Malformed) -> T:
    """The request, if it decoded and every field in it is one this server knows (see wire.py)."""
    if isinstance(request, Malformed):
        raise InvalidArgument(request.reason)
    return request


def _closed(session: SessionState) -> Exception:
    """Why a closed session refuses a request: closed by its client, or held by the session store now."""
    if session.epoch:  # handed over, drained or fenced: not an error of the client's, it resumes elsewhere
        return SessionMoved("this server no longer holds the session; attach again")
    return FailedPrecondition("the session is closed")


def _duplicate_result(session: SessionState, seq: int) -> bytes:
    """The first answer to ``seq`` (its seq and outputs), marked duplicate; without it, only those marks."""
    cached = session.cached_reply(seq, ReplyKind.STEP)  # the seq may have been a Generate, a Run or a Reset
    if cached is None:
        return pb.StepResult(seq=seq, duplicate=True).SerializeToString()
    return cached + answer_bytes.DUPLICATE  # a field appended to an encoded message is set in it


def _seq_of(request: pb.SessionRequest | Malformed) -> int:
    """The seq an error answer names: the request's own, where it has one and it parsed."""
    if isinstance(request, Malformed):
        if not isinstance(request.parsed, pb.SessionRequest):
            return 0
        request = request.parsed
    kind = request.WhichOneof("request")
    if kind in ("step", "generate", "reset", "run"):
        return int(getattr(request, kind).seq)
    return 0
