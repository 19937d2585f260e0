"""A one-time-step Step read straight from its bytes, without a message.

A Session stream's step was parsed by protobuf, checked for unknown fields, then decoded by
``StepDecoder`` through upb's Python objects; yet every byte of a streamed step but its seq and
its values is the same each time. ``StepBytes`` compares those bytes with what the model's
inputs look like on the wire (made once) and reads each input with one ``frombuffer``.

It reads only what protobuf itself writes for a Step of seq > 0 holding one time step of every
input, in the manifest's order, with finite values, with or without ``last_only``, and nothing
else. Any other bytes (a chunk of several steps, another order, text or token ids, a padded
varint, an unknown field, NaN) read as None, and the caller parses and decodes them the checked
way, which accepts and refuses them exactly as before. So this path only ever says "this is the
step" or "look closer", as ``StepDecoder``'s fast pass does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.answer_bytes import LEN, VARINT, key, tensor_prefix, varint
from service.contract import Manifest
from service.drivers.steps import StepInputs, all_finite
from service.tensors import proto_dtype

#: Step.seq's key, and Step.last_only = true as protobuf writes it (false is left out).
_SEQ = key(1, VARINT)[0]
_LAST_ONLY = key(5, VARINT) + varint(1)
#: Longest seq varint read here: 9 bytes hold every seq below 2**63, and protobuf writes each
#: value in its fewest bytes, so a longer one is left to protobuf.
_MAX_SEQ_BYTES = 9


@dataclass(slots=True)
class ReadStep:
    """A Step read from its bytes: its seq, ``last_only``, and its inputs (``[1, *shape]`` each).

    The engine sets ``seq`` of a protocol that names its requests by key (the Open Inference
    Protocol), as it does a parsed ``pb.Step``'s."""

    seq: int
    last_only: bool
    inputs: StepInputs


def read_values(data: bytes, at: int, dtype: np.dtype[Any], size: int, shape: tuple[int, ...]) -> np.ndarray | None:
    """The ``size`` bytes of ``data`` at ``at`` as an aligned array of ``shape``; None where the bytes
    are cut short, or a float's values are not all finite by the fast test (the checked way then
    looks closer)."""
    if at + size > len(data):
        return None
    values = np.frombuffer(data, dtype, size // dtype.itemsize, at)
    if dtype.kind == "f" and not all_finite(values):
        return None
    if at % dtype.itemsize:  # keep the values aligned, as a bytes field's own copy would be
        values = values.copy()
    return values.reshape(shape)


def read_varint(data: bytes, at: int, limit: int) -> tuple[int, int]:
    """The varint at ``at`` of at most ``limit`` bytes, as protobuf writes it (its fewest bytes),
    and where the next field starts; (-1, at) for anything else, or bytes cut short."""
    if at + 1 < len(data):  # the usual widths first: a seq or a length under 128, or 16,384
        first, second = data[at], data[at + 1]
        if first < 0x80:
            return first, at + 1
        if 0 < second < 0x80 and limit > 1:
            return (first & 0x7F) | second << 7, at + 2
    value = shift = 0
    for index in range(at, min(at + limit, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and index > at:  # a padded varint: protobuf never writes one
                return -1, at
            return value, index + 1
        shift += 7
    return -1, at


class StepBytes:
    """One model's one-time-step Steps read from their bytes (see the module's docstring). A driver
    makes one only where the wire's byte order is the machine's (``steps.WIRE_IS_NATIVE``)."""

    def __init__(self, manifest: Manifest) -> None:
        pieces = []
        for spec in manifest.inputs:
            dtype = np.dtype(spec.np_dtype).newbyteorder("<")
            size = math.prod(spec.shape) * dtype.itemsize
            tensor = tensor_prefix(spec.name, int(proto_dtype(spec.dtype)), (1, *spec.shape), size)
            entry = key(1, LEN) + varint(len(tensor) + size) + tensor  # TensorInput.tensors
            pieces.append((entry, size, spec.name, dtype, (1, *spec.shape)))
        #: Step.tensors' key and length: what follows the seq.
        self._tensors = key(4, LEN) + varint(sum(len(entry) + size for entry, size, *_ in pieces))
        #: Per input: its entry's bytes before its values, their byte count, its name, dtype
        #: and shape [1, *shape].
        self._inputs = tuple(pieces)

    def read(self, data: bytes, at: int) -> ReadStep | None:
        """The Step whose bytes run from ``at`` to the end of ``data``, or None (see the module)."""
        if at >= len(data) or data[at] != _SEQ:
            return None
        seq, at = read_varint(data, at + 1, _MAX_SEQ_BYTES)
        if seq < 1 or not data.startswith(self._tensors, at):
            return None
        at += len(self._tensors)
        arrays = {}
        for entry, size, name, dtype, shape in self._inputs:
            if not data.startswith(entry, at):
                return None
            at += len(entry)
            values = read_values(data, at, dtype, size, shape)
            if values is None:
                return None
            arrays[name] = values
            at += size
        if at == len(data):
            return ReadStep(seq, False, StepInputs(arrays, 1))
        if len(data) - at == len(_LAST_ONLY) and data.startswith(_LAST_ONLY, at):
            return ReadStep(seq, True, StepInputs(arrays, 1))
        return None
