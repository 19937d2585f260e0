"""Client SDK: sessions as objects, one call per step; the sync client wraps the async one.

``AsyncSession`` numbers the requests it sends (seq 1, 2, …) and reads the answer of each; an
in-stream error becomes a ``StepFailed`` exception that leaves the session usable. ``Client``
runs an ``AsyncClient`` on a private event loop thread, so both share one implementation.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np

from service.api import statestream_pb2 as pb
from service.api import statestream_pb2_grpc as rpc
from service.tensors import to_proto

T = TypeVar("T")
DEFAULT_TARGET = "127.0.0.1:50051"


class StepFailed(Exception):
    """The server refused one request in the stream; the session goes on unchanged."""

    def __init__(self, error: pb.Error) -> None:
        super().__init__(f"{error.code_name}: {error.message}")
        self.error = error
        self.code = grpc.StatusCode[error.code_name] if error.code_name in grpc.StatusCode.__members__ else None


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
        step.tensors.tensors.extend(to_proto(name, np.asarray(value)) for name, value in tensors.items())
    return step


class AsyncSession:
    """One open session on its own bidirectional stream."""

    def __init__(self, call: Any, opened: pb.SessionOpened) -> None:
        self._call = call
        self.opened = opened
        self.id = opened.session_id
        self.last_seq = opened.last_applied_seq

    async def _send(self, request: pb.SessionRequest) -> None:
        await self._call.write(request)

    async def _receive(self) -> pb.SessionResponse:
        response = await self._call.read()
        if response is grpc.aio.EOF:
            raise ConnectionError("the server ended the stream")
        assert isinstance(response, pb.SessionResponse)
        return response

    async def step(
        self,
        *,
        text: str | None = None,
        tokens: Sequence[int] | None = None,
        tensors: dict[str, np.ndarray] | None = None,
        last_only: bool = False,
    ) -> pb.StepResult:
        """Sends the next step (or chunk) and returns its result; raises StepFailed on an in-stream error."""
        seq = self.last_seq + 1
        await self._send(
            pb.SessionRequest(step=make_step(seq, text=text, tokens=tokens, tensors=tensors, last_only=last_only))
        )
        response = await self._receive()
        if response.HasField("error"):
            raise StepFailed(response.error)
        self.last_seq = seq
        return response.result

    async def send_raw(self, request: pb.SessionRequest) -> pb.SessionResponse:
        """Sends any request as given and returns the next response (for tests and tools)."""
        await self._send(request)
        return await self._receive()

    async def generate(
        self, prompt: str, max_tokens: int, *, temperature: float = 0.0, top_k: int = 0, seed: int | None = None
    ) -> AsyncIterator[pb.Token | pb.GenerateDone]:
        """Streams each generated Token, then the GenerateDone."""
        seq = self.last_seq + 1
        request = pb.Generate(seq=seq, prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k)
        if seed is not None:
            request.seed = seed
        await self._send(pb.SessionRequest(generate=request))
        while True:
            response = await self._receive()
            kind = response.WhichOneof("response")
            if kind == "error":
                raise StepFailed(response.error)
            if kind == "token":
                yield response.token
            elif kind == "generated":
                self.last_seq = seq
                yield response.generated
                return

    async def close(self) -> pb.Closed:
        await self._send(pb.SessionRequest(close=pb.Close()))
        response = await self._receive()
        await self._call.done_writing()
        if response.HasField("error"):
            raise StepFailed(response.error)
        return response.closed

    def cancel(self) -> None:
        """Drops the stream without closing: the session stays on the server for resume."""
        self._call.cancel()


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

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close(None)

    async def list_models(self) -> list[pb.ModelInfo]:
        response = await self.models.ListModels(pb.ListModelsRequest(), metadata=self.metadata)
        return list(response.models)

    async def get_model(self, name: str, version: str = "") -> pb.ModelInfo:
        info: pb.ModelInfo = await self.models.GetModel(
            pb.GetModelRequest(name=name, version=version), metadata=self.metadata
        )
        return info

    async def _start(self, first: pb.SessionRequest) -> AsyncSession:
        call = self.sessions.Session(metadata=self.metadata)
        await call.write(first)
        response = await call.read()
        if response is grpc.aio.EOF:
            await call  # raises the stream's status
            raise ConnectionError("the server ended the stream before answering")
        if response.HasField("error"):
            raise StepFailed(response.error)
        return AsyncSession(call, response.opened)

    async def open(
        self, model: str, *, version: str = "", top_k: int = 0, return_tensors: Sequence[str] = ()
    ) -> AsyncSession:
        """Opens a session; raises grpc.aio.AioRpcError (e.g. NOT_FOUND) if the server refuses."""
        options = pb.SessionOptions(top_k=top_k, return_tensors=list(return_tensors))
        return await self._start(pb.SessionRequest(open=pb.OpenSession(model=model, version=version, options=options)))

    async def attach(self, session_id: str) -> AsyncSession:
        """Binds a new stream to an existing session (resume)."""
        return await self._start(pb.SessionRequest(attach=pb.AttachSession(session_id=session_id)))


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
        self._call(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def list_models(self) -> list[pb.ModelInfo]:
        return self._call(self._async.list_models())

    def get_model(self, name: str, version: str = "") -> pb.ModelInfo:
        return self._call(self._async.get_model(name, version))

    def open(self, model: str, **kwargs: Any) -> SyncSession:
        return SyncSession(self, self._call(self._async.open(model, **kwargs)))

    def attach(self, session_id: str) -> SyncSession:
        return SyncSession(self, self._call(self._async.attach(session_id)))


async def _next(stream: AsyncIterator[T]) -> T:
    return await anext(stream)


class SyncSession:
    def __init__(self, client: Client, session: AsyncSession) -> None:
        self._client = client
        self.session = session

    @property
    def id(self) -> str:
        return self.session.id

    def step(self, **kwargs: Any) -> pb.StepResult:
        return self._client._call(self.session.step(**kwargs))

    def generate(self, prompt: str, max_tokens: int, **kwargs: Any) -> Iterator[pb.Token | pb.GenerateDone]:
        stream = self.session.generate(prompt, max_tokens, **kwargs)
        while True:
            try:
                yield self._client._call(_next(stream))
            except StopAsyncIteration:
                return

    def close(self) -> pb.Closed:
        return self._client._call(self.session.close())

    def cancel(self) -> None:
        self._client._loop.call_soon_threadsafe(self.session.cancel)
