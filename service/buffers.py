"""Where a state buffer lives, and how an ONNX Runtime call is bound to it.

State is either host memory (a numpy array) or the memory of an execution provider's device (a
``DeviceArray``: an ORT ``OrtValue``, e.g. on the GPU). ONNX Runtime's IOBinding takes both the
same way, as (device, element type, shape, address), so the code that binds a call does not
care which it got: ``bind_input`` / ``bind_output`` are the one place that tells them apart.

With the CUDA provider, binding device memory means ORT reads and writes it in place; binding
host memory means ORT copies it over the bus on every call. That difference is why state slabs
can live on the device (``service.device_slabs``) while tokens and logits stay on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort


@dataclass(frozen=True, slots=True)
class Device:
    """An ORT memory location: ``kind`` is ORT's device type name (``cpu``, ``cuda``)."""

    kind: str
    index: int = 0

    def __str__(self) -> str:
        return self.kind if self.kind in ("cpu", "host") else f"{self.kind}:{self.index}"


#: Plain numpy memory. Not ``Device("cpu")``: that is ORT-allocated CPU memory, which the device
#: slab code path uses when it runs without a GPU.
HOST = Device("host")


class DeviceArray:
    """A C-contiguous array in a device's memory, or the leading rows of one.

    ``owner`` keeps the memory alive; ``head(n)`` is a view of the first ``n`` rows (the same
    address, a shorter leading axis), which is how one preallocated buffer of ``max_batch`` rows
    serves every batch size without copying.
    """

    __slots__ = ("address", "device", "dtype", "owner", "shape")

    def __init__(self, owner: ort.OrtValue, device: Device, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.owner = owner
        self.device = device
        self.dtype = dtype
        self.shape = shape
        self.address = int(owner.data_ptr())

    @classmethod
    def empty(cls, shape: tuple[int, ...], dtype: np.dtype, device: Device) -> DeviceArray:
        """Uninitialised memory on ``device`` (ORT's allocator for that device)."""
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype.type, device.kind, device.index)
        return cls(value, device, dtype, shape)

    @classmethod
    def zeros(cls, shape: tuple[int, ...], dtype: np.dtype, device: Device) -> DeviceArray:
        """Zeros on ``device``: copied once from the host (ORT's allocator does not clear memory)."""
        value = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype), device.kind, device.index)
        return cls(value, device, dtype, shape)

    @classmethod
    def wrap(cls, value: ort.OrtValue, device: Device) -> DeviceArray:
        """An OrtValue that ORT allocated for an output (e.g. a grown slab)."""
        dtype = np.dtype(_NUMPY_OF_ORT_TYPE[value.data_type()])
        return cls(value, device, dtype, tuple(value.shape()))

    def head(self, rows: int) -> DeviceArray:
        view = DeviceArray.__new__(DeviceArray)
        view.owner, view.device, view.dtype = self.owner, self.device, self.dtype
        view.shape, view.address = (rows, *self.shape[1:]), self.address
        return view

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


#: A batch's state buffer, on the host or on a device.
StateBuffer = np.ndarray | DeviceArray

#: ORT's tensor type names (``OrtValue.data_type()``) for the dtypes a state may have.
_NUMPY_OF_ORT_TYPE = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _where(buffer: StateBuffer) -> tuple[str, int, np.dtype, list[int], int]:
    """What IOBinding needs to bind ``buffer`` in place: device type and id, element type, shape, address."""
    if isinstance(buffer, np.ndarray):
        return ("cpu", 0, buffer.dtype, list(buffer.shape), buffer.ctypes.data)
    return (buffer.device.kind, buffer.device.index, buffer.dtype, list(buffer.shape), buffer.address)


def bind_input(binding: ort.IOBinding, name: str, buffer: StateBuffer) -> None:
    """Binds graph input ``name`` to ``buffer`` in place, wherever it lives."""
    binding.bind_input(name, *_where(buffer))


def bind_output(binding: ort.IOBinding, name: str, buffer: StateBuffer) -> None:
    """Binds graph output ``name`` to ``buffer``: ORT writes the result there, allocating nothing."""
    binding.bind_output(name, *_where(buffer))


def host(buffer: StateBuffer) -> np.ndarray:
    """``buffer`` as a numpy array; only host buffers are (a device buffer here is a wiring bug)."""
    if not isinstance(buffer, np.ndarray):
        raise TypeError(f"expected a host array, got a buffer on {buffer.device}")
    return buffer


def head(buffer: StateBuffer, rows: int) -> StateBuffer:
    """The first ``rows`` rows of a buffer: contiguous, so ORT reads or writes them in place.

    A call for B sessions uses the leading B rows of its ``max_batch``-row buffers.
    """
    return buffer[:rows] if isinstance(buffer, np.ndarray) else buffer.head(rows)


def location(buffer: StateBuffer) -> tuple[str, int]:
    """Where a buffer starts, e.g. as a binding cache key (a host and a device address may be equal)."""
    kind, _, _, _, address = _where(buffer)
    return (kind, address)
