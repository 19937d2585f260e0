"""Tensor messages ↔ numpy arrays, shared by the drivers and the client SDK."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.api import statestream_pb2 as pb
from service.errors import InvalidArgument

_TO_PROTO: dict[str, Any] = {
    "float32": pb.DATA_TYPE_FLOAT32,
    "int64": pb.DATA_TYPE_INT64,
    "int32": pb.DATA_TYPE_INT32,
    "int16": pb.DATA_TYPE_INT16,
}
_TO_NUMPY: dict[int, np.dtype[Any]] = {
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_INT64: np.dtype("<i8"),
    pb.DATA_TYPE_INT32: np.dtype("<i4"),
    pb.DATA_TYPE_INT16: np.dtype("<i2"),
}
#: dtype → (its DataType, the little-endian dtype to send it as, or None when it already is one).
#: Looked up by the array's dtype object: no dtype name or byte-order conversion per answer.
_WIRE: dict[np.dtype[Any], tuple[Any, np.dtype[Any] | None]] = {}
for _name, _number in _TO_PROTO.items():
    _little = np.dtype(_name).newbyteorder("<")
    _WIRE[_little] = (_number, None)
    _WIRE[_little.newbyteorder(">")] = (_number, _little)
#: DataType → (the dtype its bytes are, the same in this machine's byte order, or None when equal).
_FROM_WIRE: dict[int, tuple[np.dtype[Any], np.dtype[Any] | None]] = {
    number: (dtype, None if dtype.newbyteorder("=") == dtype else dtype.newbyteorder("="))
    for number, dtype in _TO_NUMPY.items()
}
#: Most dimensions a tensor may have (numpy's own limit is 64; no model here needs more than a few).
MAX_DIMS = 32


def proto_dtype(name: str) -> Any:
    """The DataType enum value of a manifest dtype name."""
    return _TO_PROTO[name]


def to_proto(name: str, array: np.ndarray | np.generic) -> pb.Tensor:
    """An array (or numpy scalar) as a Tensor message: little-endian bytes in C order."""
    return pb.Tensor(**_tensor_fields(name, array))


def add_proto(tensors: Any, name: str, array: np.ndarray | np.generic) -> None:
    """Appends ``array`` to a repeated Tensor field in place: no message is built and then copied
    in, as ``tensors.append(to_proto(...))`` does (docs/benchmarks.md, "answers built in place")."""
    tensors.add(**_tensor_fields(name, array))


def _tensor_fields(name: str, array: np.ndarray | np.generic) -> dict[str, Any]:
    """A Tensor's fields. On every answer's hot path: one dict lookup by the dtype object and
    ``tobytes`` (which writes C order from any layout), several times cheaper than going through
    dtype names and ``ascontiguousarray`` (docs/benchmarks.md, "tensors by dtype object")."""
    wire = _WIRE.get(array.dtype)
    if wire is None:
        raise ValueError(f"tensor {name!r}: dtype {array.dtype.name} has no wire type")
    number, swap_to = wire
    if swap_to is not None:
        array = array.astype(swap_to)
    return {"name": name, "dtype": number, "shape": array.shape, "data": array.tobytes()}


def from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Decodes a tensor, refusing a wrong byte count or an unknown type with INVALID_ARGUMENT."""
    wire = _FROM_WIRE.get(tensor.dtype)
    if wire is None:
        raise InvalidArgument(f"tensor {tensor.name!r}: dtype {tensor.dtype} is not a valid DataType")
    dtype, native = wire
    shape = tuple(tensor.shape)  # Python ints (repeated int64)
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(f"tensor {tensor.name!r}: {len(shape)} dimensions, at most {MAX_DIMS}")
    if min(shape, default=0) < 0:
        raise InvalidArgument(f"tensor {tensor.name!r}: negative dimension in shape {list(shape)}")
    data = tensor.data  # each read of a bytes field makes a new bytes object: read it once
    expected = math.prod(shape) * dtype.itemsize  # Python integers: a huge shape cannot wrap around to match
    if len(data) != expected:
        raise InvalidArgument(
            f"tensor {tensor.name!r}: shape {list(shape)} of {dtype.name} needs {expected} bytes, got {len(data)}"
        )
    array: np.ndarray = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array if native is None else array.astype(native)
