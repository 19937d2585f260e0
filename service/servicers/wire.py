"""Registers servicers with request decoding that never raises.

grpc's own generated registration decodes each request with ``FromString``; a message that does
not parse then ends the call with INTERNAL before the servicer sees it. Here a request that does
not parse reaches the servicer as a ``Malformed`` value instead, so the servicer can answer
INVALID_ARGUMENT in the stream and keep the session going.

A request holding a field this server's proto does not define is ``Malformed`` too (proto3
would keep it silently, and a client that sets an option this server does not know must hear
so). Finding one costs a walk over the message in Python (timed in docs/benchmarks.md), so the
parser first asks protobuf's C code, which is cheaper: it drops unknown fields and compares the
re-encoded size with the bytes received. Known fields never encode shorter than protobuf's own
encoding of them (defaults written out, unpacked repeats, wide varints and repeated fields only
lengthen them; requests have no maps), so equal sizes prove there was nothing unknown; only a
request whose size differs is walked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, Message

from service.api import statestream_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Malformed:
    """A request whose bytes are not a valid message of the expected type, or name unknown fields.

    ``parsed`` is the decoded request when it parsed but held unknown fields (so an answer can
    still name its seq).
    """

    reason: str
    parsed: Message | None = None


def request_parser(message_type: type[M]) -> Callable[[bytes], M | Malformed]:
    """The deserializer the server registers for ``message_type`` (also driven by ``loadtest.hotpath``)."""

    def parse(data: bytes) -> M | Malformed:
        try:
            message = message_type.FromString(data)
            message.DiscardUnknownFields()
            if message.ByteSize() == len(data):
                return message  # nothing was unknown (see the module's docstring)
            original = message_type.FromString(data)  # with its unknown fields, to name the first
        except (DecodeError, ValueError, RecursionError) as exc:
            return Malformed(f"cannot decode {message_type.DESCRIPTOR.name} ({len(data)} bytes): {exc}")
        where = unknown_field(original)
        if where is None:
            return message  # known fields encoded longer than protobuf would: fine
        return Malformed(f"unknown field ({where}): an option this server does not support", original)

    return parse


def serialize(response: Message | bytes) -> bytes:
    """A handler answers with a message, or with its bytes already encoded (``service.answer_bytes``)."""
    return response if response.__class__ is bytes else cast(Message, response).SerializeToString()


_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_servicer(server: grpc.aio.Server, service_name: str, servicer: Any, module: ModuleType = pb) -> None:
    """Registers every method of ``<service_name>`` from the descriptor of its generated ``module``
    (statestream.v1's by default). A method the servicer names in its ``raw_requests`` gets its
    requests as the bytes that arrived, to read or parse (with ``request_parser``) itself."""
    service = module.DESCRIPTOR.services_by_name[service_name]
    raw: frozenset[str] = getattr(servicer, "raw_requests", frozenset())
    handlers = {}
    for method in service.methods:
        request_type = getattr(module, method.input_type.name)
        factory = _FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=None if method.name in raw else request_parser(request_type),
            response_serializer=serialize,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def unknown_field(message: Message, path: str = "") -> str | None:
    """The path of the first field this server's proto does not define, or None.

    proto3 keeps unknown fields silently; a client that sets an option this server does not know
    must hear so rather than have it ignored.
    """
    where = path or message.DESCRIPTOR.name
    unknown = unknown_fields.UnknownFieldSet(message)
    if len(unknown):
        return f"{where}: field number {unknown[0].field_number}"
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None or descriptor.message_type.GetOptions().map_entry:
            continue
        values = value if descriptor.is_repeated else [value]
        for item in values:
            found = unknown_field(item, f"{where}.{descriptor.name}")
            if found:
                return found
    return None
