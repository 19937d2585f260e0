"""State slabs in the execution provider's memory: on a GPU, a session's state never leaves it.

``StateSlabs`` keeps rows in host memory, so on CUDA each batch's state would cross the bus twice
per call. ``DeviceSlabs`` keeps the same ``[capacity, *shape]`` slabs as ORT ``OrtValue``s on the
device and moves rows there with ORT itself (``service.slab_graphs``): gathered into the call's
bound state input, scattered back into the slab in place. Only token ids and outputs cross the bus.

It keeps the ``Slabs`` contract, so the scheduler and the sessions do not know where state lives.
Rare row operations (snapshot, restore, fork, reset, a new session's zero row) go through the
host, one row at a time. On the CPU provider (``--state-memory device --provider cpu``) the same
code runs on host OrtValues, which is how the tests cover it without a GPU.

Every method runs on the event loop thread. A batch's gather and scatter use their own index
buffer (``_rows``), the direct path and the row operations another, so a row operation between
the two cannot change which rows the scatter writes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from service import slab_graphs as graphs
from service.buffers import Device, DeviceArray, StateBuffer, bind_input, bind_output, head, location
from service.calls import run_bound
from service.contract import ContextSpec, RowSpec, StateSpec
from service.providers import Providers
from service.slabs import AllocatedRows, RowAllocator

#: Cached IOBindings per operation before the cache is cleared (one per batch size in practice).
MAX_BINDINGS = 2048


class DeviceSlabs(AllocatedRows):
    """The state rows of all sessions of one model, in a device's memory."""

    def __init__(
        self,
        state: tuple[StateSpec, ...],
        capacity: int,
        device: Device,
        *,
        providers: Providers,
        options: ort.SessionOptions,
        context: tuple[ContextSpec, ...] = (),
    ) -> None:
        self.rows = RowAllocator(capacity)
        specs: tuple[RowSpec, ...] = (*state, *context)
        self.specs = specs
        self.state = state
        self.device = device
        self._gather = ort.InferenceSession(graphs.gather_graph(specs), options, providers=providers)
        # A batch writes back its state only; a row operation writes the whole row (with context).
        self._scatter = ort.InferenceSession(graphs.scatter_graph(state), options, providers=providers)
        self._write_rows = (
            ort.InferenceSession(graphs.scatter_graph(specs), options, providers=providers)
            if context
            else self._scatter
        )
        self._grow_graph = ort.InferenceSession(graphs.grow_graph(specs), options, providers=providers)
        self.arrays: dict[str, DeviceArray] = {
            s.input: DeviceArray.zeros((capacity, *s.shape), np.dtype(s.np_dtype), device) for s in specs
        }
        self._zero = {s.input: np.zeros((1, *s.shape), s.np_dtype) for s in specs}
        self._rows = np.zeros(0, dtype=np.int64)  # a batch's row indices, bound to gather and scatter
        self._one = np.zeros(1, dtype=np.int64)  # the direct path's row index
        self._bindings: dict[tuple[object, ...], ort.IOBinding] = {}

    # -- what StateSlabs has too -------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    @property
    def row_bytes(self) -> int:
        return sum(s.nbytes for s in self.specs)

    def allocate(self) -> int:
        """A zeroed row for a new session; grows the slabs when none is free."""
        if self.rows.full:
            self._grow()
        row = self.rows.take()
        self._write(row, self._zero)
        return row

    def gather(self, rows: np.ndarray, out: Mapping[str, StateBuffer]) -> None:
        """The state of ``rows`` into ``out`` (``[len(rows), *shape]`` each), on the device."""
        count = self._set_rows(rows)
        self._run(self._gather, self._gather_binding(self._rows, count, out))

    def gather_row(self, row: int, out: Mapping[str, StateBuffer]) -> None:
        """One session's state into the first row of ``out`` (the batch-1 direct path)."""
        self._one[0] = row
        self._run(self._gather, self._gather_binding(self._one, 1, out))

    def scatter(self, rows: np.ndarray, state: Mapping[str, StateBuffer]) -> None:
        """Writes ``state`` (keyed by state input name, ``[len(rows), *shape]``) as the rows' new state."""
        count = self._set_rows(rows)
        self._run(self._scatter, self._scatter_binding(self._rows, count, state))

    def scatter_row(self, row: int, state: Mapping[str, StateBuffer]) -> None:
        self._one[0] = row
        self._run(self._scatter, self._scatter_binding(self._one, 1, state))

    def read_row(self, row: int) -> dict[str, np.ndarray]:
        """A host copy of one session's state (a snapshot, a reset's undo)."""
        out = {s.input: np.empty((1, *s.shape), s.np_dtype) for s in self.specs}
        rows = np.array([row], dtype=np.int64)  # bound by address: must outlive the run
        binding = self._gather.io_binding()
        self._bind_gather(binding, rows, 1, out)
        self._run(self._gather, binding)
        return {name: value[0] for name, value in out.items()}

    def peek_row(self, row: int) -> Mapping[str, np.ndarray]:
        """The device's rows cannot be viewed from the host: a host copy, as ``read_row``."""
        return self.read_row(row)

    def write_row(self, row: int, state: Mapping[str, np.ndarray]) -> None:
        """Sets one session's state from host arrays (``[*shape]`` each): a restore, a reset."""
        self._write(row, {s.input: np.ascontiguousarray(state[s.input], s.np_dtype)[np.newaxis] for s in self.specs})

    def copy_row(self, source: int, target: int) -> None:
        """A fork: through the host, one row, which is rare and small next to a step."""
        self.write_row(target, self.read_row(source))

    # -- the graphs --------------------------------------------------------------------------

    def _set_rows(self, rows: np.ndarray) -> int:
        """Puts a batch's row indices in the buffer its bindings read; returns how many."""
        count = len(rows)
        if count > len(self._rows):  # bindings name the buffer's address: a new buffer voids them
            self._rows = np.zeros(max(count, 2 * len(self._rows)), dtype=np.int64)
            self._bindings.clear()
        self._rows[:count] = rows
        return count

    def _write(self, row: int, state: Mapping[str, np.ndarray]) -> None:
        rows = np.array([[row]], dtype=np.int64)  # bound by address: must outlive the run
        binding = self._write_rows.io_binding()
        self._bind_scatter(binding, rows, 1, state, self.specs)
        self._run(self._write_rows, binding)

    def _gather_binding(self, rows: np.ndarray, count: int, out: Mapping[str, StateBuffer]) -> ort.IOBinding:
        key = ("gather", rows.ctypes.data, count, *(location(out[s.input]) for s in self.specs))
        binding = self._bindings.get(key)
        if binding is None:
            binding = self._cached(key, self._gather.io_binding())
            self._bind_gather(binding, rows, count, out)
        return binding

    def _scatter_binding(self, rows: np.ndarray, count: int, state: Mapping[str, StateBuffer]) -> ort.IOBinding:
        key = ("scatter", rows.ctypes.data, count, *(location(state[s.input]) for s in self.state))
        binding = self._bindings.get(key)
        if binding is None:
            binding = self._cached(key, self._scatter.io_binding())
            self._bind_scatter(binding, rows.reshape(-1, 1), count, state, self.state)
        return binding

    def _cached(self, key: tuple[object, ...], binding: ort.IOBinding) -> ort.IOBinding:
        if len(self._bindings) >= MAX_BINDINGS:
            self._bindings.clear()
        self._bindings[key] = binding
        return binding

    def _bind_gather(
        self, binding: ort.IOBinding, rows: np.ndarray, count: int, out: Mapping[str, StateBuffer]
    ) -> None:
        bind_input(binding, graphs.ROWS, rows[:count])
        for s in self.specs:
            bind_input(binding, graphs.slab_input(s), self.arrays[s.input])
            bind_output(binding, graphs.rows_output(s), head(out[s.input], count))

    def _bind_scatter(
        self,
        binding: ort.IOBinding,
        rows: np.ndarray,
        count: int,
        state: Mapping[str, StateBuffer],
        specs: tuple[RowSpec, ...],
    ) -> None:
        bind_input(binding, graphs.ROWS, rows[:count])
        for s in specs:
            slab = self.arrays[s.input]
            bind_input(binding, graphs.slab_input(s), slab)
            bind_input(binding, graphs.rows_output(s), head(state[s.input], count))
            bind_output(binding, graphs.slab_output(s), slab)  # in place: see service.slab_graphs

    def _grow(self) -> None:
        """Doubles every slab on the device: ORT pads a copy with zero rows, the old one is freed."""
        old = self.capacity
        binding = self._grow_graph.io_binding()
        pads = {s.input: graphs.grow_pads(s, old) for s in self.specs}  # bound by address: kept alive
        for s in self.specs:
            bind_input(binding, graphs.slab_input(s), self.arrays[s.input])
            bind_input(binding, graphs.pads_input(s), pads[s.input])
            binding.bind_output(graphs.slab_output(s), self.device.kind, self.device.index)
        self._run(self._grow_graph, binding)
        grown = binding.get_outputs()
        self.arrays = {
            s.input: DeviceArray.wrap(value, self.device) for s, value in zip(self.specs, grown, strict=True)
        }
        self.rows.doubled()
        self._bindings.clear()  # they name the old slabs' addresses

    @staticmethod
    def _run(session: ort.InferenceSession, binding: ort.IOBinding) -> None:
        run_bound(session, binding)
