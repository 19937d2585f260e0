"""statestream.v1.SessionService: sessions over bidirectional streams, multiplexing, unary open/close.

Each Session stream is one task that reads requests in order; a request is answered before the
next is read, which is what "applied exactly once, in order" needs. Errors about one request are
answered in the stream (the session is unchanged); only a protocol error before the session is
open ends the stream with a status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar, TypeVar

import grpc

from service import answer_bytes, session_store
from service.answer_bytes import LEN, key
from service.api import statestream_pb2 as pb
from service.auth import Authenticator
from service.drivers import bounds
from service.drivers.step_bytes import ReadStep, StepBytes, read_varint
from service.durable_sessions import SessionMoved
from service.engine import SessionEngine
from service.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    StatestreamError,
    Unavailable,
    status_number,
)
from service.metrics import Metrics
from service.servicers.admission import admit_stream
from service.servicers.wire import Context, Malformed, request_parser
from service.session_log import events

log = logging.getLogger(__name__)
T = TypeVar("T")


def error_message(seq: int, error: StatestreamError) -> pb.Error:
    return pb.Error(seq=seq, code=status_number(error.code), code_name=error.code.name, message=error.message)


#: Session's deserializer, called by the servicer for a request not read from its bytes.
parse_session_request = request_parser(pb.SessionRequest)
#: SessionRequest.step's key: the first byte of a request that holds a Step.
_STEP_REQUEST = key(3, LEN)[0]
#: Longest SessionRequest.step length varint read here (4 bytes: up to 256 MiB).
_MAX_LENGTH_BYTES = 4


def read_step_request(data: bytes, reader: StepBytes) -> ReadStep | None:
    """A SessionRequest holding only a Step, read from its bytes where ``reader`` reads that Step
    (one time step of the model's inputs, as protobuf writes it); None for any other request."""
    if not data or data[0] != _STEP_REQUEST:
        return None
    size, at = read_varint(data, 1, _MAX_LENGTH_BYTES)
    if size < 0 or at + size != len(data):
        return None
    return reader.read(data, at)


class SessionServicer:
    """statestream.v1's SessionService over the session engine: translation to and from the wire only."""

    #: Methods grpc hands the bytes that arrived (``wire.add_servicer``): Session reads its own.
    raw_requests: ClassVar[frozenset[str]] = frozenset({"Session"})

    def __init__(self, engine: SessionEngine, metrics: Metrics, auth: Authenticator) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.metrics = metrics
        self.auth = auth

    @staticmethod
    def _opened(session: session_store.Session) -> pb.SessionOpened:
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
            return self._opened(await self.engine.open(checked(request), self.auth.caller(context)))

        return await self._guard(context, create)

    async def CloseSession(
        self, request: pb.CloseSessionRequest | Malformed, context: Context
    ) -> pb.CloseSessionResponse:
        async def close() -> pb.CloseSessionResponse:
            session = self.engine.get(checked(request).session_id, self.auth.caller(context))
            await self.engine.close(session)
            return pb.CloseSessionResponse(last_applied_seq=session.last_seq)

        return await self._guard(context, close)

    # -- the stream ------------------------------------------------------------------------

    async def Session(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[pb.SessionResponse | bytes]:
        """Reads each request as the bytes that arrived: a streamed step of one time step is read
        from them (``read_step_request``), any other request is parsed and checked whole."""
        stream = object()  # identifies this stream as the session's holder
        session: session_store.Session | None = None
        counted = False
        try:
            async for data in requests:
                if session is None:
                    # Refusals (auth, limits) come only after the first message is read: a client
                    # whose first write races a status it has not read yet would see INTERNAL.
                    session = await self._first(parse_session_request(data), stream, context)
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
                    reader = session.runtime.driver.step_bytes
                    read = read_step_request(data, reader) if reader is not None else None
                    if read is not None:  # the hot path: no message parsed, no nested generator
                        yield await self._answer_step(session, read)
                        continue
                    request = parse_session_request(data)
                    if not isinstance(request, Malformed) and request.WhichOneof("request") == "step":
                        yield await self._answer_step(session, request.step)
                        continue
                    async for response in self._handle(session, request):
                        yield response
                except SessionMoved as exc:  # not acknowledged: the client resumes where the session is now
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                if session.closed:
                    return
        finally:
            if counted:
                self.engine.leave_stream()
            if session is not None:
                self.engine.detach(session, stream)

    async def _first(
        self, request: pb.SessionRequest | Malformed, stream: object, context: Context
    ) -> session_store.Session:
        """Authenticates, admits the stream, and opens or attaches; any failure ends the stream."""
        try:
            caller = self.auth.caller(context)
            request = checked(request)
            kind = request.WhichOneof("request")
            if kind not in ("open", "attach"):
                raise InvalidArgument(f"the first message must be open or attach, got {kind or 'an empty message'}")
            self.engine.enter_stream()
            try:
                session = (
                    await self.engine.open(request.open, caller)
                    if kind == "open"
                    else await self.engine.find(request.attach.session_id, caller)
                )
            except StatestreamError:
                self.engine.leave_stream()
                raise
        except StatestreamError as exc:
            self.metrics.failures.labels("", exc.code.name).inc()
            events.refused(exc)
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises
        self.engine.attach(session, stream)
        if kind == "attach":
            events.resumed(session)
        return session

    async def _answer_step(
        self, session: session_store.Session, step: pb.Step | ReadStep
    ) -> pb.SessionResponse | bytes:
        """One Step of a Session stream (parsed, or read from its bytes), answered by a result (its
        bytes) or an in-stream error."""
        name = session.runtime.name
        self.metrics.requests.labels(name, "step").inc()
        try:
            return answer_bytes.session_response(await self.engine.apply_step(session, step, lane=True))
        except StatestreamError as exc:
            self.metrics.failures.labels(name, exc.code.name).inc()
            events.refused(exc, session)
            return pb.SessionResponse(error=error_message(step.seq, exc))

    async def _handle(
        self, session: session_store.Session, request: pb.SessionRequest | Malformed
    ) -> AsyncIterator[pb.SessionResponse]:
        """Answers one request of an open session; its errors stay in the stream."""
        name = session.runtime.name
        kind = "malformed" if isinstance(request, Malformed) else (request.WhichOneof("request") or "empty")
        self.metrics.requests.labels(name, kind).inc()
        try:
            request = checked(request)
            if kind == "generate":
                async for response in self.engine.run_loop(session, kind, request.generate):
                    yield response
            elif kind == "run":
                async for response in self.engine.run_loop(session, kind, request.run):
                    yield response
            elif kind == "close":
                await self.engine.close(session)
                yield pb.SessionResponse(closed=pb.Closed(session_id=session.id, last_applied_seq=session.last_seq))
            elif kind == "fork":
                yield pb.SessionResponse(forked=await self.engine.fork(session))
            elif kind == "reset":
                yield pb.SessionResponse(reset=await self.engine.reset(session, request.reset.seq))
            elif kind == "snapshot":
                yield pb.SessionResponse(snapshot=await self.engine.snapshot(session))
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

    # -- multiplexing ----------------------------------------------------------------------

    async def Multiplex(
        self, requests: AsyncIterator[pb.MultiplexRequest | Malformed], context: Context
    ) -> AsyncIterator[pb.MultiplexResponse | bytes]:
        caller: str | None = None
        try:
            async for request in requests:
                if caller is None:  # refusals only after the first message is read, as in Session
                    caller = await admit_stream(self.engine, self.auth, context)
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
                self.engine.leave_stream()

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
                session = self.engine.get(entry.session_id, caller)
                cached = session.cached_reply(
                    step.seq, session_store.ReplyKind.STEP
                )  # a duplicate gets its first answer
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
            session = self.engine.get(entry.session_id, caller)
            self.metrics.requests.labels(session.runtime.name, "multiplex").inc()
            answer = await self.engine.apply_step(session, entry.step)
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
