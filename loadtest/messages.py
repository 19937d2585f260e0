"""Request bytes for the load generators, encoded by hand, and cheap checks of the answers.

The client shares the machine with the server it measures, so every microsecond it spends is
taken from the server. Building a ``SessionRequest`` through protobuf and parsing every answer
would cost the client about as much as the server's own work; instead the load generators send
bytes encoded here (with the server's own wire helpers, ``service.answer_bytes``; checked
against the generated classes in the tests) and only look at the first byte of an answer to
tell a result from an error.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from service.answer_bytes import SESSION_RESULT, VARINT, key, length_delimited, varint
from service.api import statestream_pb2 as pb
from service.tensors import to_proto

# Fields, by number.
_SESSION_REQUEST_STEP = 3
_STEP_SEQ = key(1, VARINT)
_STEP_TEXT = 2
_STEP_TENSORS = 4
_STEP_LAST_ONLY = key(5, VARINT) + varint(1)
_MULTIPLEX_STEPS = 1
_SESSION_STEP_ID = 1
_SESSION_STEP_STEP = 2
#: First byte of a SessionResponse carrying a StepResult (field 2); anything else is an error.
RESULT_TAG = SESSION_RESULT[0]

SESSION_METHOD = "/statestream.v1.SessionService/Session"
MULTIPLEX_METHOD = "/statestream.v1.SessionService/Multiplex"
CREATE_METHOD = "/statestream.v1.SessionService/CreateSession"


def text_input(text: bytes) -> bytes:
    """A Step's ``text`` input field, to pass as ``step_input`` below."""
    return length_delimited(_STEP_TEXT, text)


def tensors_input(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A Step's ``tensors`` input field (one tensor per model input, ``[K, *shape]``).

    Encoded through protobuf once per distinct step: the load generators reuse the bytes.
    """
    body = pb.TensorInput(tensors=[to_proto(name, array) for name, array in arrays.items()]).SerializeToString()
    return length_delimited(_STEP_TENSORS, body)


def step_bytes(seq: int, step_input: bytes, last_only: bool = False) -> bytes:
    """A serialized ``Step``: seq, an input field (``text_input`` or ``tensors_input``), last_only."""
    body = _STEP_SEQ + varint(seq) + step_input
    return body + _STEP_LAST_ONLY if last_only else body


def session_step_request(seq: int, step_input: bytes, last_only: bool = False) -> bytes:
    """A serialized ``SessionRequest`` holding one step."""
    return length_delimited(_SESSION_REQUEST_STEP, step_bytes(seq, step_input, last_only))


def session_step_prefix(session_id: str) -> bytes:
    """The ``session_id`` field of a ``SessionStep``; reused for every message of that session."""
    return length_delimited(_SESSION_STEP_ID, session_id.encode())


def multiplex_request(prefixes: list[bytes], seq: int, step_inputs: list[bytes]) -> bytes:
    """A serialized ``MultiplexRequest``: one step with ``seq`` for each session."""
    parts = []
    for prefix, step_input in zip(prefixes, step_inputs, strict=True):
        entry = prefix + length_delimited(_SESSION_STEP_STEP, step_bytes(seq, step_input))
        parts.append(length_delimited(_MULTIPLEX_STEPS, entry))
    return b"".join(parts)


def open_request(model: str, top_k: int = 0, return_tensors: tuple[str, ...] = ()) -> bytes:
    return pb.SessionRequest(open=open_session(model, top_k, return_tensors)).SerializeToString()


def create_request(model: str, return_tensors: tuple[str, ...] = ()) -> bytes:
    return open_session(model, 0, return_tensors).SerializeToString()


def open_session(model: str, top_k: int = 0, return_tensors: tuple[str, ...] = ()) -> pb.OpenSession:
    return pb.OpenSession(model=model, options=pb.SessionOptions(top_k=top_k, return_tensors=return_tensors))


def opened_session_id(response: bytes) -> str:
    """The session id of a ``SessionResponse`` that must be ``opened``."""
    message = pb.SessionResponse.FromString(response)
    if message.WhichOneof("response") != "opened":
        raise RuntimeError(f"expected opened, got {message}")
    return message.opened.session_id


def multiplex_errors(response: bytes) -> int:
    """Entries of a ``MultiplexResponse`` that carry an error (parsed: one parse per many steps)."""
    message = pb.MultiplexResponse.FromString(response)
    return sum(1 for r in message.results if r.WhichOneof("outcome") != "result")


def created_session_id(response: bytes) -> str:
    """The session id of a ``SessionOpened`` (the answer to CreateSession)."""
    return str(pb.SessionOpened.FromString(response).session_id)
