"""Per-model state slabs: every session's state is one row of a preallocated array.

For each state tensor of a model there is one array ``[capacity, *shape]``. A session owns a
row index; a batch gathers the rows of its sessions into the contiguous feed of its ONNX Runtime
call and scatters the new state back. Capacity doubles when the rows run out, so the hot path
allocates nothing per step and a session's memory is its raw state bytes plus a few counters.
New capacity is zero-filled lazily by the OS (``np.zeros`` maps untouched pages), so a slab's
resident memory follows the rows in use, not its capacity.

All methods run on the event loop thread (the scheduler gathers before and scatters after the
ONNX Runtime call), so growing a slab can never race a batch in flight.
"""

from __future__ import annotations

import numpy as np

from service.contract import StateSpec


class StateSlabs:
    """The state rows of all sessions of one model."""

    def __init__(self, specs: tuple[StateSpec, ...], capacity: int, max_batch: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"slab capacity must be >= 1, got {capacity}")
        self.specs = specs
        self.capacity = capacity
        self.arrays: dict[str, np.ndarray] = {s.input: np.zeros((capacity, *s.shape), dtype=s.np_dtype) for s in specs}
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self.rows_in_use = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the slabs (all rows, used or not)."""
        return sum(a.nbytes for a in self.arrays.values())

    @property
    def row_bytes(self) -> int:
        """Bytes of state one session holds."""
        return sum(a[0].nbytes for a in self.arrays.values())

    def allocate(self) -> int:
        """A zeroed row for a new session; grows the slabs when none is free."""
        if not self._free:
            self._grow()
        row = self._free.pop()
        for array in self.arrays.values():
            array[row] = 0
        self.rows_in_use += 1
        return row

    def release(self, row: int) -> None:
        self._free.append(row)
        self.rows_in_use -= 1

    def _grow(self) -> None:
        old = self.capacity
        self.capacity = old * 2
        for name, array in self.arrays.items():
            grown = np.zeros((self.capacity, *array.shape[1:]), dtype=array.dtype)
            grown[:old] = array
            self.arrays[name] = grown
        self._free.extend(range(self.capacity - 1, old - 1, -1))

    def gather(self, rows: np.ndarray, out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The state of ``rows`` as contiguous arrays ``[len(rows), *shape]``.

        Written into ``out`` (e.g. the buffers bound to the ONNX Runtime call) when given, so
        nothing is allocated; otherwise into new arrays.
        """
        result = {}
        for name, array in self.arrays.items():
            if out is None:
                result[name] = array.take(rows, axis=0, mode="clip")
            else:
                # mode="clip": rows are allocated rows, always in range; numpy's default "raise"
                # with out= copies through a temporary and is ~3x slower (86 vs 27 us, 256 rows).
                array.take(rows, axis=0, out=out[name], mode="clip")
                result[name] = out[name]
        return result

    def gather_row(self, row: int, out: dict[str, np.ndarray]) -> None:
        """One session's state into ``out[name][0]`` (the batch-1 direct path)."""
        for name, array in self.arrays.items():
            out[name][0] = array[row]

    def scatter(self, rows: np.ndarray, state: dict[str, np.ndarray]) -> None:
        """Writes the new state of ``rows`` (``state`` keyed by state *input* name, ``[len(rows), *shape]``)."""
        for name, array in self.arrays.items():
            # Row-major 2-D views: numpy's fancy assignment is ~20 % faster than on [N, *shape].
            flat = array.reshape(len(array), -1)
            flat[rows] = state[name].reshape(len(rows), -1)

    def scatter_row(self, row: int, state: dict[str, np.ndarray]) -> None:
        """Writes ``state[name][0]`` as the new state of one session."""
        for name, array in self.arrays.items():
            array[row] = state[name][0]

    def read_row(self, row: int) -> dict[str, np.ndarray]:
        """A copy of one session's state, e.g. for a snapshot."""
        return {name: array[row].copy() for name, array in self.arrays.items()}

    def write_row(self, row: int, state: dict[str, np.ndarray]) -> None:
        for name, array in self.arrays.items():
            array[row] = state[name]

    def copy_row(self, source: int, target: int) -> None:
        """Copies one session's state onto another's row (fork)."""
        for array in self.arrays.values():
            array[target] = array[source]
