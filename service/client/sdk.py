"""Client SDK: sessions as objects, one call per step; the sync client wraps the async one.

``AsyncSession`` numbers the requests it sends (seq 1, 2, …) and reads the answer of each; an
in-stream error becomes a ``StepFailed`` exception that leaves the session usable. ``Client``
runs an ``AsyncClient`` on a private event loop thread, so both share one implementation.
Tensors go out as the wire's types: any float array as float32 (numpy's default float64
included), refused before sending if a value does not fit.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api import statestream_pb2 as pb
from service.api import statestream_pb2_grpc as rpc
from service.tensors import to_proto

T = TypeVar("T")
DEFAULT_TARGET = "127.0.0.1:50051"
#: Responses that a request's answer streams before its last one (Generate's tokens, Run's steps).
STREAMED = ("token", "run_output")
#: The dtypes a tensor travels as; every float input of a model is float32.
WIRE_DTYPES = ("float32", "int64", "int32", "int16")
FLOAT32_MAX = float(np.finfo(np.float32).max)


class StepFailed(Exception):
    """The server refused one request in the stream; the session goes on unchanged."""

    def __init__(self, error: pb.Error) -> None:
        super().__init__(f"{error.code_name}: {error.message}")
        self.error = error
        self.code = grpc.StatusCode[error.code_name] if error.code_name in grpc.StatusCode.__members__ else None


def wire_array(name: str, value: Any) -> np.ndarray:
    """``value`` as an array of a wire dtype, or a ValueError that says why it cannot be one.

    A float array of another width (numpy's default float64, Python floats) becomes float32, the
    type of every float input, rounded to the nearest float32 (a relative change of at most
    6e-8); a finite value beyond float32's range is refused rather than sent as infinity. An
    integer array for a float input (or the reverse) is the server's to refuse, by name.
    """
    array = np.asarray(value)
    if array.dtype.kind == "f" and array.dtype.name != "float32":
        with np.errstate(over="ignore"):
            converted = array.astype(np.float32)
        overflowed = np.isinf(converted) & np.isfinite(array)
        if overflowed.any():
            raise ValueError(
                f"tensor {name!r}: {array[overflowed].flat[0]:g} is beyond float32's range "
                f"(±{FLOAT32_MAX:.4g}), the type of the model's float inputs"
            )
        return converted
    if array.dtype.name not in WIRE_DTYPES:
        raise ValueError(
            f"tensor {name!r}: dtype {array.dtype.name} cannot be sent; give floats, int64, int32 or int16"
        )
    return array


def make_step(
    seq: int,
    *,
    text: str | None = None,
    tokens: Sequence[int] | None = None,
    tensors: dict[str, np.ndarray] | None = None,
    last_only: bool = False,
) -> pb.Step:
    """A Step message with exactly one kind of input."""
    given = [x is not None for x in (text, tokens, tensors)]
    if sum(given) != 1:
        raise ValueError("give exactly one of text, tokens or tensors")
    step = pb.Step(seq=seq, last_only=last_only)
    if text is not None:
        step.text = text
    elif tokens is not None:
        step.tokens.ids.extend(int(t) for t in tokens)
    else:
        assert tensors is not None
        step.tensors.tensors.extend(to_proto(name, wire_array(name, value)) for name, value in tensors.items())
    return step


#: The header every Session stream carries: a key fixed for the session's life, so a proxy that hashes
#: it (Envoy's ring_hash, docs/operations.md) sends the session's streams, resumes included, to one
#: replica. Without it (another client) a resume still works: the replica it reaches takes the session over.
ROUTE_HEADER = "x-statestream-route"

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


class SessionLost(Exception):
    """The stream broke and the session could not be resumed (expired, closed, or unreachable)."""


class StreamBroken(Exception):
    """The stream ended without an answer; the session may be resumed."""


class AsyncSession:
    """One open session on its own bidirectional stream, resumed by itself when the stream breaks.

    Every state-changing request carries the next seq. If the stream breaks before its answer
    arrives, the session reconnects, attaches, and sends the same request again: the server
    applies it if it had not, or answers from its cache if it had (``duplicate`` set), so the
    user sees one unbroken stream with every step applied exactly once.
    """

    def __init__(
        self, client: AsyncClient, call: Any, opened: pb.SessionOpened, *, resume_timeout_s: float, route: str
    ) -> None:
        self._client = client
        self._call = call
        self.opened = opened
        self.id = opened.session_id
        #: The routing key this session's streams carry (ROUTE_HEADER), the same on every resume.
        self.route = route
        self.last_seq = opened.last_applied_seq
        self.resume_timeout_s = resume_timeout_s
        self.resumes = 0
        self.answers_pending = False  # a generation was given up half-way: its answers still arrive

    async def _receive(self) -> pb.SessionResponse:
        response = await self._call.read()
        if response is grpc.aio.EOF:
            raise StreamBroken("the server ended the stream")
        assert isinstance(response, pb.SessionResponse)
        return response

    async def send_raw(self, request: pb.SessionRequest) -> pb.SessionResponse:
        """Sends any request as given and returns the next response (for tests and tools; no resume)."""
        await self._call.write(request)
        return await self._receive()

    async def _reconnect(self) -> None:
        """Attaches a new stream to this session, retrying with backoff until resume_timeout_s."""
        self._call.cancel()
        deadline = time.monotonic() + self.resume_timeout_s
        delay = 0.05
        while True:
            try:
                session = await self._client.attach(self.id, resume_timeout_s=self.resume_timeout_s, route=self.route)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() + delay > deadline:
                    raise SessionLost(f"cannot resume session: {exc.code().name}: {exc.details()}") from exc
            except (StreamBroken, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise SessionLost(f"cannot resume session: {exc}") from exc
            else:
                self._call = session._call
                self.opened = session.opened
                self.resumes += 1
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _exchange(self, request: pb.SessionRequest) -> AsyncIterator[pb.SessionResponse]:
        """Sends ``request`` and yields its responses; on a broken stream, resumes and resends.

        Streamed responses already yielded are not yielded again after a resend (a generation
        replayed with the same seed produces the same tokens). The final answer always is: a
        request the server had finished before the stream broke is answered by it alone (a
        duplicate), with no streamed responses before it.
        """
        yielded = 0
        while True:
            try:
                await self._call.write(request)
                seen = 0
                while True:
                    response = await self._receive()
                    seen += 1
                    final = response.WhichOneof("response") not in STREAMED
                    if seen > yielded or final:
                        yielded += 1
                        yield response
                    if final:
                        return
            except (grpc.aio.AioRpcError, StreamBroken, asyncio.InvalidStateError) as exc:
                if isinstance(exc, grpc.aio.AioRpcError) and exc.code() not in RETRYABLE:
                    raise
                await self._reconnect()
            except asyncio.CancelledError:
                # grpc.aio raises CancelledError from a read on a call that was cancelled under it
                # (the stream was dropped); a cancellation of this task itself must propagate.
                task = asyncio.current_task()
                if (task is not None and task.cancelling()) or not self._call.cancelled():
                    raise
                await self._reconnect()

    async def _one(self, request: pb.SessionRequest) -> pb.SessionResponse:
        async for response in self._exchange(request):
            if response.HasField("error"):
                raise StepFailed(response.error)
            return response
        raise StreamBroken("no answer")

    async def step(
        self,
        *,
        text: str | None = None,
        tokens: Sequence[int] | None = None,
        tensors: dict[str, np.ndarray] | None = None,
        last_only: bool = False,
        seq: int | None = None,
    ) -> pb.StepResult:
        """Sends the next step (or chunk) and returns its result; raises StepFailed on an in-stream error.

        ``seq`` defaults to the next one; give an earlier one to replay a step (it is answered
        as a duplicate and not applied again).
        """
        seq = self.last_seq + 1 if seq is None else seq
        step = make_step(seq, text=text, tokens=tokens, tensors=tensors, last_only=last_only)
        result = (await self._one(pb.SessionRequest(step=step))).result
        self.last_seq = max(self.last_seq, seq)
        return result

    async def generate(
        self, prompt: str, max_tokens: int, *, temperature: float = 0.0, top_k: int = 0, seed: int | None = None
    ) -> AsyncIterator[pb.Token | pb.GenerateDone]:
        """Streams each generated Token, then the GenerateDone.

        Without a seed the SDK draws one, so a generation resumed after a broken stream replays
        the same tokens.
        """
        seq = self.last_seq + 1
        request = pb.Generate(
            seq=seq,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=secrets.randbits(63) if seed is None else seed,
        )
        tokens = 0
        self.answers_pending = True  # until the answer ends: a caller may stop reading at any token
        async for response in self._exchange(pb.SessionRequest(generate=request)):
            kind = response.WhichOneof("response")
            if kind == "error":
                self.answers_pending = False
                raise StepFailed(response.error)
            if kind == "token":
                tokens += 1
                yield response.token
            elif kind == "generated":
                self.answers_pending = False
                done = response.generated
                for index in range(tokens, len(done.ids)):  # tokens lost with a broken stream
                    yield pb.Token(
                        seq=seq, index=index, id=done.ids[index], text=done.text[index], prob=done.probs[index]
                    )
                self.last_seq = seq
                yield done
                return

    async def run(
        self,
        max_steps: int,
        *,
        options: Mapping[str, float] | None = None,
        tensors: dict[str, np.ndarray] | None = None,
        seed: int | None = None,
    ) -> AsyncIterator[pb.RunOutput | pb.RunDone]:
        """Streams each step of a server-side Run (the model's task says what it does), then the RunDone.

        Without a seed the SDK draws one, so a run resumed after a broken stream (rolled back by
        the server, then sent again) replays the same steps; those already yielded are skipped.
        """
        seq = self.last_seq + 1
        request = pb.Run(
            seq=seq,
            max_steps=max_steps,
            options=dict(options or {}),
            seed=secrets.randbits(63) if seed is None else seed,
        )
        if tensors:
            request.tensors.CopyFrom(make_step(seq, tensors=tensors).tensors)
        async for response in self._exchange(pb.SessionRequest(run=request)):
            kind = response.WhichOneof("response")
            if kind == "error":
                raise StepFailed(response.error)
            if kind == "run_output":
                yield response.run_output
            elif kind == "run_done":
                self.last_seq = seq
                yield response.run_done
                return

    async def fork(self) -> str:
        """A new session with this one's state; returns its id (attach to it to use it)."""
        return (await self._one(pb.SessionRequest(fork=pb.Fork()))).forked.session_id

    async def reset(self) -> pb.ResetDone:
        seq = self.last_seq + 1
        done = (await self._one(pb.SessionRequest(reset=pb.Reset(seq=seq)))).reset
        self.last_seq = seq
        return done

    async def snapshot(self) -> pb.Snapshot:
        return (await self._one(pb.SessionRequest(snapshot=pb.SnapshotRequest()))).snapshot

    async def close(self) -> pb.Closed:
        """Closes the session on the server.

        After a generation given up half-way (its reader stopped: ``generate … | head``) the
        server is still sending its tokens; those are read past until the close is answered,
        so the session is closed now rather than left to the server's detach TTL.
        """
        request = pb.SessionRequest(close=pb.Close())
        if self.answers_pending:
            await self._call.write(request)
            while (response := await self._receive()).WhichOneof("response") != "closed":
                if response.HasField("error"):
                    raise StepFailed(response.error)
            self.answers_pending = False
            closed = response.closed
        else:
            closed = (await self._one(request)).closed
        await self._call.done_writing()
        return closed

    def cancel(self) -> None:
        """Drops the stream without closing: the session stays on the server for resume."""
        self._call.cancel()


@dataclass(frozen=True)
class SessionOptions:
    """A session's options, typed: what ``open(model, options=...)`` sends (defaults as the server's).

    ``return_tensors`` narrows a tensor model's answers to those outputs (empty: every output;
    other kinds return only those named); ``top_k`` is a language model's ranked next tokens;
    ``resume_timeout_s`` is how long the SDK keeps trying to resume a broken stream.
    """

    return_tensors: tuple[str, ...] = ()
    top_k: int = 0
    version: str = ""
    resume_timeout_s: float = 30.0


class AsyncClient:
    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.metadata = tuple(metadata)
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=list(options))
        else:
            self.channel = grpc.aio.secure_channel(target, credentials, options=list(options))
        self.models = rpc.ModelServiceStub(self.channel)
        self.sessions = rpc.SessionServiceStub(self.channel)
        self.health_checks = health_pb2_grpc.HealthStub(self.channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close(None)

    async def health(self, service: str = "", *, timeout_s: float = 5.0) -> str:
        """The server's ``grpc.health.v1`` status for ``service`` ("": the whole server), e.g. ``SERVING``.

        The question a load balancer or a container's health check asks: a draining server answers
        ``NOT_SERVING``. No answer within ``timeout_s`` raises DEADLINE_EXCEEDED.
        """
        request = health_pb2.HealthCheckRequest(service=service)
        answer = await self.health_checks.Check(request, timeout=timeout_s, metadata=self.metadata)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    async def list_models(self) -> list[pb.ModelInfo]:
        response = await self.models.ListModels(pb.ListModelsRequest(), metadata=self.metadata)
        return list(response.models)

    async def get_model(self, name: str, version: str = "") -> pb.ModelInfo:
        info: pb.ModelInfo = await self.models.GetModel(
            pb.GetModelRequest(name=name, version=version), metadata=self.metadata
        )
        return info

    async def start_raw(
        self, first: pb.SessionRequest, *, resume_timeout_s: float = 30.0, route: str = ""
    ) -> AsyncSession:
        """Starts a session stream with ``first`` sent as given (an open or an attach), for tests and
        tools that send what ``open`` and ``attach`` would not; a refusal raises as theirs does."""
        call = self.sessions.Session(metadata=(*self.metadata, (ROUTE_HEADER, route)) if route else self.metadata)
        try:
            await call.write(first)
            response = await call.read()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            # The server may end the call (a refusal) before our first write lands; the write then
            # fails with a transport error, and the status the server sent is the real answer.
            await _raise_status(call)
            raise
        if response is grpc.aio.EOF:
            await _raise_status(call)
            raise StreamBroken("the server ended the stream before answering")
        if response.HasField("error"):
            raise StepFailed(response.error)
        return AsyncSession(self, call, response.opened, resume_timeout_s=resume_timeout_s, route=route)

    async def open(
        self,
        model: str,
        *,
        version: str = "",
        top_k: int = 0,
        return_tensors: Sequence[str] = (),
        restore: bytes = b"",
        init: Mapping[str, np.ndarray] | bytes | None = None,
        resume_timeout_s: float = 30.0,
        options: SessionOptions | None = None,
    ) -> AsyncSession:
        """Opens a session (from a snapshot blob if ``restore`` is given).

        ``init`` is the payload of a model with an init graph: its init tensors by name, or
        encoded bytes (an image) for a task that decodes them. ``options``, when given, sets
        version, top_k, return_tensors and resume_timeout_s at once (the keywords are then
        ignored). Raises grpc.aio.AioRpcError (e.g. NOT_FOUND) if the server refuses.
        """
        if options is not None:
            version, top_k, return_tensors = options.version, options.top_k, options.return_tensors
            resume_timeout_s = options.resume_timeout_s
        wire_options = pb.SessionOptions(top_k=top_k, return_tensors=list(return_tensors))
        request = pb.OpenSession(model=model, version=version, options=wire_options, restore=restore)
        if isinstance(init, bytes):
            request.init.data = init
        elif init is not None:
            request.init.tensors.extend(to_proto(name, wire_array(name, value)) for name, value in init.items())
        first = pb.SessionRequest(open=request)
        return await self.start_raw(first, resume_timeout_s=resume_timeout_s, route=secrets.token_urlsafe(12))

    async def attach(self, session_id: str, *, resume_timeout_s: float = 30.0, route: str = "") -> AsyncSession:
        """Binds a new stream to an existing session (resume); its ``last_seq`` says where to go on.

        ``route`` is the routing key the session's streams carried (default: the session id).
        """
        request = pb.SessionRequest(attach=pb.AttachSession(session_id=session_id))
        return await self.start_raw(request, resume_timeout_s=resume_timeout_s, route=route or session_id)


async def _raise_status(call: Any) -> None:
    """Raises the status a finished call ended with, if it is not OK."""
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise grpc.aio.AioRpcError(
            code, await call.initial_metadata(), await call.trailing_metadata(), await call.details()
        )


class Client:
    """The synchronous SDK: the async client run on a private event-loop thread."""

    def __init__(self, target: str = DEFAULT_TARGET, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="statestream-client", daemon=True)
        self._thread.start()
        self._async = self._call(self._make(target, kwargs))

    @staticmethod
    async def _make(target: str, kwargs: dict[str, Any]) -> AsyncClient:
        return AsyncClient(target, **kwargs)

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel and ends the loop thread with no task left pending.

        A call abandoned half-way (an error raised out of a generation, a reader that went
        away) leaves grpc.aio tasks on the loop; closing the loop under them prints "Task was
        destroyed but it is pending!" at exit, so they are cancelled and awaited first.
        """
        try:
            self._call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    async def _shutdown(self) -> None:
        await self._async.close()
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()

    def list_models(self) -> list[pb.ModelInfo]:
        return self._call(self._async.list_models())

    def get_model(self, name: str, version: str = "") -> pb.ModelInfo:
        return self._call(self._async.get_model(name, version))

    def health(self, service: str = "", *, timeout_s: float = 5.0) -> str:
        return self._call(self._async.health(service, timeout_s=timeout_s))

    def open(self, model: str, **kwargs: Any) -> SyncSession:
        return SyncSession(self, self._call(self._async.open(model, **kwargs)))

    def attach(self, session_id: str, **kwargs: Any) -> SyncSession:
        return SyncSession(self, self._call(self._async.attach(session_id, **kwargs)))


async def _cancel(session: AsyncSession) -> None:
    session.cancel()


async def _next(stream: AsyncIterator[T]) -> T:
    return await anext(stream)


async def _aclose(stream: AsyncIterator[Any]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


class SyncSession:
    def __init__(self, client: Client, session: AsyncSession) -> None:
        self._client = client
        self.session = session

    @property
    def id(self) -> str:
        return self.session.id

    def step(self, **kwargs: Any) -> pb.StepResult:
        return self._client._call(self.session.step(**kwargs))

    def send_raw(self, request: pb.SessionRequest) -> pb.SessionResponse:
        """Sends any request as given and returns the next response, an error included (for tests and
        tools: no seq is numbered or recorded, nothing is raised for an in-stream error, no resume)."""
        return self._client._call(self.session.send_raw(request))

    def generate(
        self, prompt: str, max_tokens: int, **kwargs: Any
    ) -> Generator[pb.Token | pb.GenerateDone, None, None]:
        stream = self.session.generate(prompt, max_tokens, **kwargs)
        try:
            while True:
                try:
                    yield self._client._call(_next(stream))
                except StopAsyncIteration:
                    return
        finally:  # an error or an early stop leaves the async generator suspended: finish it on its loop
            self._client._call(_aclose(stream))

    @property
    def last_seq(self) -> int:
        return self.session.last_seq

    def run(self, max_steps: int, **kwargs: Any) -> Iterator[pb.RunOutput | pb.RunDone]:
        stream = self.session.run(max_steps, **kwargs)
        while True:
            try:
                yield self._client._call(_next(stream))
            except StopAsyncIteration:
                return

    def fork(self) -> str:
        return self._client._call(self.session.fork())

    def reset(self) -> pb.ResetDone:
        return self._client._call(self.session.reset())

    def snapshot(self) -> pb.Snapshot:
        return self._client._call(self.session.snapshot())

    def close(self) -> pb.Closed:
        return self._client._call(self.session.close())

    def cancel(self) -> None:
        """Breaks the stream (as a network failure would); the next call resumes the session."""
        self._client._call(_cancel(self.session))
