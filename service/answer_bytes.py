"""StepResult answers written straight in protobuf's wire format, for the two hot kinds.

Its wire helpers (``varint``, ``key``, ``length_delimited``) also write the load generators'
requests (``loadtest.messages``).

Building a StepResult message and then serializing it was a large part of a step's cost
(docs/benchmarks.md, "The hot path, fourth session"): a message object per output, tensor and
token, every field set through upb, then the encoder walks them all again.
A tensor model's answer and a language model's have the same few fields every step; only the
values change. So their bytes are assembled from pieces made once per model (each output's
name, type and shape; each token's id and text) and the step's values. The bytes are exactly
what ``SerializeToString`` writes for the message ``build_result`` builds (the tests compare
them), so clients, the reply cache and the session store cannot tell the difference.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence

import numpy as np

from service.contract import TensorSpec
from service.tensors import proto_dtype

_SMALL = [bytes([value]) for value in range(0x80)]
#: Wire types of the fields written here (a key is ``number << 3 | wire type``).
VARINT, LEN, I32 = 0, 2, 5


def varint(value: int) -> bytes:
    """A non-negative integer as a protobuf varint."""
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field ``number`` holding ``payload`` (a string, bytes, or an encoded message)."""
    return key(number, LEN) + varint(len(payload)) + payload


def packed_varints(values: Iterable[int]) -> bytes:
    """The payload of a packed repeated field of non-negative integers (a shape)."""
    return b"".join(varint(value) for value in values)


def tensor_prefix(name: str, number: int, shape: Sequence[int], size: int) -> bytes:
    """A Tensor message's bytes before its ``size`` bytes of data: its name, DataType ``number``
    and shape, and its data's key and length, as protobuf writes them (proto3 leaves out a zero
    DataType, an empty shape and empty data)."""
    return (
        length_delimited(1, name.encode())
        + (key(2, VARINT) + varint(number) if number else b"")
        + (length_delimited(3, packed_varints(shape)) if shape else b"")
        + (key(4, LEN) + varint(size) if size else b"")
    )


#: StepResult.seq, StepResult.outputs, and StepResult.duplicate = true.
_SEQ = key(1, VARINT)
_OUTPUT = key(2, LEN)
DUPLICATE = key(3, VARINT) + varint(1)
#: SessionResponse.result: a Session stream's answer to a Step is this, its length, the StepResult.
SESSION_RESULT = key(2, LEN)


def step_result(seq: int, outputs: Iterable[bytes]) -> bytes:
    """A StepResult of encoded StepOutputs (proto3 leaves out a zero seq, and so does this)."""
    parts = [_SEQ + varint(seq)] if seq else []
    for output in outputs:
        parts.append(_OUTPUT + varint(len(output)) + output)
    return b"".join(parts)


def session_response(result: bytes) -> bytes:
    """The SessionResponse whose ``result`` is the encoded StepResult ``result``."""
    return SESSION_RESULT + varint(len(result)) + result


def session_step_result(session_id: str, result: bytes) -> bytes:
    """A Multiplex entry's SessionStepResult whose ``result`` is the encoded StepResult ``result``."""
    return (length_delimited(1, session_id.encode()) if session_id else b"") + length_delimited(2, result)


def multiplex_response(results: Iterable[bytes]) -> bytes:
    """The MultiplexResponse of encoded SessionStepResults, in order."""
    return b"".join(length_delimited(1, result) for result in results)


class OutputTensors:
    """StepOutput.tensors entries of a model's outputs: each one's fixed part made once.

    An entry is its key and length, the Tensor's name, DataType and shape, and the key and
    length of its data; only the data changes from step to step. ``encode`` returns None for
    an array that is not what the manifest says (another dtype or shape), and the caller then
    builds the message the slow way, which encodes whatever it is given.
    """

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self._fixed: dict[str, tuple[bytes, np.dtype[np.generic], tuple[int, ...]]] = {}
        for spec in specs:
            dtype = np.dtype(spec.np_dtype).newbyteorder("<")
            number = int(proto_dtype(spec.dtype))
            size = math.prod(spec.shape) * dtype.itemsize
            tensor = tensor_prefix(spec.name, number, spec.shape, size)
            prefix = key(3, LEN) + varint(len(tensor) + size) + tensor
            self._fixed[spec.name] = (prefix, dtype, spec.shape)

    def encode(self, names: Iterable[str], outputs: dict[str, np.ndarray], t: int) -> bytes | None:
        """The tensors entries of time step ``t`` for the outputs ``names``, or None (see the class)."""
        parts = []
        for name in names:
            fixed = self._fixed.get(name)
            array = outputs[name][t]
            if fixed is None or array.dtype != fixed[1] or array.shape != fixed[2]:
                return None
            parts.append(fixed[0] + array.tobytes())  # C order from any layout
        return b"".join(parts)


_FLOAT = struct.Struct("<f").pack


class RankedTokens:
    """StepOutput.input and StepOutput.top entries of a vocabulary: each token's fixed part made once."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._inputs = [length_delimited(1, token.encode()) if token else b"" for token in tokens]
        #: Per token: its TokenProb entry up to the prob, for a non-zero prob and for a zero one.
        self._top: list[tuple[bytes, bytes]] = []
        for index, token in enumerate(tokens):
            fixed = (key(1, VARINT) + varint(index) if index else b"") + (
                length_delimited(2, token.encode()) if token else b""
            )
            with_prob = key(2, LEN) + varint(len(fixed) + 5) + fixed + key(3, I32)
            self._top.append((with_prob, key(2, LEN) + varint(len(fixed)) + fixed))

    def input(self, token_id: int) -> bytes:
        return self._inputs[token_id]

    def top(self, ids: Sequence[int], probs: Sequence[float]) -> bytes:
        """The ``top`` entries of ranked ids and their probabilities (float32 values: exact on the wire)."""
        table, pack = self._top, _FLOAT
        return b"".join([table[i][0] + pack(p) if p else table[i][1] for i, p in zip(ids, probs, strict=True)])
