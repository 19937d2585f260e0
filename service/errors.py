"""The server's errors, each carrying the gRPC status it maps to.

The core raises these; the servicers turn them into an in-stream ``Error`` message (a bad
request inside a live session) or into the RPC's status (a bad open, a broken stream). Keeping
the code on the exception means the mapping lives in exactly one place.
"""

from __future__ import annotations

import asyncio

import grpc

#: Longest message sent back: messages quote what the client sent (a name, a character), and an
#: answer must stay small whatever the request held.
MAX_MESSAGE_CHARS = 1024


class StatestreamError(Exception):
    """Base class: an error a client caused or must know about, with its status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        super().__init__(message)
        self.message = message


class InvalidArgument(StatestreamError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(StatestreamError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(StatestreamError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(StatestreamError):
    """A configured limit was reached; the message names the limit and its value."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, limit: str, value: int | float, detail: str = "") -> None:
        super().__init__(f"limit {limit}={value} reached" + (f": {detail}" if detail else ""))
        self.limit = limit


class Unavailable(StatestreamError):
    code = grpc.StatusCode.UNAVAILABLE


class ModelFailed(StatestreamError):
    """ONNX Runtime failed on a step that passed validation: a server-side fault, not the client's."""

    code = grpc.StatusCode.INTERNAL


class Unauthenticated(StatestreamError):
    code = grpc.StatusCode.UNAUTHENTICATED


class SchedulerStopped(RuntimeError):
    """The model's scheduler stopped before the step ran (server shutdown)."""


def as_statestream_error(exc: BaseException) -> StatestreamError:
    """Any failure of a step as the error a client sees: the one place such codes are chosen.

    A StatestreamError keeps its code; a stopped scheduler or a step cancelled before it ran is
    UNAVAILABLE (the server is going away, the session is unchanged); anything else is the model
    failing on a step that passed validation, INTERNAL, with the session unchanged.
    """
    if isinstance(exc, StatestreamError):
        return exc
    if isinstance(exc, SchedulerStopped):
        return Unavailable(f"the server is stopping: {exc}")
    if isinstance(exc, asyncio.CancelledError):
        return Unavailable("the step was cancelled before it ran; the session is unchanged")
    return ModelFailed(f"the model failed on this step ({type(exc).__name__}: {exc}); the session is unchanged")


def status_number(code: grpc.StatusCode) -> int:
    """The canonical numeric code (google.rpc.Code) of a grpc.StatusCode."""
    value = code.value[0]
    assert isinstance(value, int)
    return value
