"""Tensor messages ↔ numpy arrays, shared by the drivers and the client SDK."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.api import statestream_pb2 as pb
from service.errors import InvalidArgument

_TO_PROTO: dict[str, Any] = {"float32": pb.DATA_TYPE_FLOAT32, "int64": pb.DATA_TYPE_INT64, "int32": pb.DATA_TYPE_INT32}
_TO_NUMPY: dict[int, np.dtype[Any]] = {
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_INT64: np.dtype("<i8"),
    pb.DATA_TYPE_INT32: np.dtype("<i4"),
}
#: Most dimensions a tensor may have (numpy's own limit is 64; no model here needs more than a few).
MAX_DIMS = 32


def proto_dtype(name: str) -> Any:
    """The DataType enum value of a manifest dtype name."""
    return _TO_PROTO[name]


def to_proto(name: str, array: np.ndarray) -> pb.Tensor:
    dtype = np.dtype(array.dtype).name
    if dtype not in _TO_PROTO:
        raise ValueError(f"tensor {name!r}: dtype {dtype} has no wire type")
    data = np.ascontiguousarray(array, dtype=np.dtype(array.dtype).newbyteorder("<")).tobytes()
    return pb.Tensor(name=name, dtype=_TO_PROTO[dtype], shape=list(array.shape), data=data)


def from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Decodes a tensor, refusing a wrong byte count or an unknown type with INVALID_ARGUMENT."""
    dtype = _TO_NUMPY.get(tensor.dtype)
    if dtype is None:
        raise InvalidArgument(f"tensor {tensor.name!r}: dtype {tensor.dtype} is not a valid DataType")
    if len(tensor.shape) > MAX_DIMS:
        raise InvalidArgument(f"tensor {tensor.name!r}: {len(tensor.shape)} dimensions, at most {MAX_DIMS}")
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"tensor {tensor.name!r}: negative dimension in shape {list(shape)}")
    expected = math.prod(shape) * dtype.itemsize  # Python integers: a huge shape cannot wrap around to match
    if len(tensor.data) != expected:
        raise InvalidArgument(
            f"tensor {tensor.name!r}: shape {list(shape)} of {dtype.name} needs {expected} bytes, got {len(tensor.data)}"
        )
    array: np.ndarray = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)
