"""Per-model state slabs: every session's state is one row of a preallocated array.

For each state tensor of a model there is one array ``[capacity, *shape]``. A session owns a
row index; a batch gathers the rows of its sessions into a contiguous feed and scatters the new
state back. Capacity doubles when the rows run out, so the hot path allocates nothing per step
and a session's memory is its raw state bytes plus a few counters.

All methods run on the event loop thread (the scheduler gathers before and scatters after the
ONNX Runtime call), so growing a slab can never race a batch in flight.
"""

from __future__ import annotations

import numpy as np

from service.contract import StateSpec


class StateSlabs:
    """The state rows of all sessions of one model."""

    def __init__(self, specs: tuple[StateSpec, ...], capacity: int, max_batch: int) -> None:
        self.specs = specs
        self.capacity = capacity
        self.arrays: dict[str, np.ndarray] = {s.input: np.zeros((capacity, *s.shape), dtype=s.np_dtype) for s in specs}
        # Reused gather buffers: a batch of B rows is the view [:B] of these, contiguous for ORT.
        self._gather: dict[str, np.ndarray] = {
            s.input: np.zeros((max_batch, *s.shape), dtype=s.np_dtype) for s in specs
        }
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self.rows_in_use = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the slabs (all rows, used or not)."""
        return sum(a.nbytes for a in self.arrays.values())

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

    def gather(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The state of ``rows`` as contiguous arrays ``[len(rows), *shape]`` (reused buffers).

        The result is valid until the next gather: the scheduler feeds it to ORT at once.
        """
        count = len(rows)
        out = {}
        for name, array in self.arrays.items():
            buffer = self._gather[name]
            if count > len(buffer):
                buffer = self._gather[name] = np.zeros((count, *array.shape[1:]), dtype=array.dtype)
            view = buffer[:count]
            np.take(array, rows, axis=0, out=view)
            out[name] = view
        return out

    def scatter(self, rows: np.ndarray, state: dict[str, np.ndarray]) -> None:
        """Writes the new state of ``rows`` (``state`` keyed by state *input* name)."""
        for name, array in self.arrays.items():
            array[rows] = state[name]

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
