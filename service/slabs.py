"""Per-model state slabs: every session's state is one row of a preallocated array.

For each state tensor of a model there is one array ``[capacity, *shape]``. A session owns a row
index; a batch gathers its sessions' rows into the contiguous feed of its ONNX Runtime call and
scatters the new state back. Capacity doubles when the rows run out, so the hot path allocates
nothing per step and a session's memory is its raw state bytes plus a few counters. New capacity
is zero-filled lazily by the OS (``np.zeros`` maps untouched pages), so a slab's resident memory
follows the rows in use. All methods run on the event loop thread (gather before, scatter after
the call), so growth never races a batch in flight.

A model's context tensors (per-session, read-only step inputs made by its init graph) are rows
in the same slabs: gathered like the state, never scattered back, carried by fork, snapshot, restore.

``Slabs`` is the contract the scheduler and the sessions use; ``StateSlabs`` keeps rows in host
memory, ``service.device_slabs.DeviceSlabs`` in a provider's; both share one ``RowAllocator``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from service.buffers import StateBuffer, host
from service.contract import ContextSpec, RowSpec, StateSpec


class RowAllocator:
    """Which rows of a model's slabs are free: one free list for host and device slabs alike.

    Rows are handed out lowest first, so a slab's used rows stay packed at its start.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"slab capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self.rows_in_use = 0

    @property
    def full(self) -> bool:
        return not self._free

    def take(self) -> int:
        """A free row; the caller grows its slabs first when ``full``."""
        row = self._free.pop()
        self.rows_in_use += 1
        return row

    def give_back(self, row: int) -> None:
        self._free.append(row)
        self.rows_in_use -= 1

    def doubled(self) -> int:
        """Doubles the capacity (the slabs have grown); returns the old capacity."""
        old = self.capacity
        self.capacity = old * 2
        self._free.extend(range(self.capacity - 1, old - 1, -1))
        return old


class AllocatedRows:
    """What host and device slabs share: their rows handed out by one ``RowAllocator``."""

    rows: RowAllocator

    @property
    def capacity(self) -> int:
        return self.rows.capacity

    @property
    def rows_in_use(self) -> int:
        return self.rows.rows_in_use

    def release(self, row: int) -> None:
        self.rows.give_back(row)


class Slabs(Protocol):
    """Per-session state rows of one model, wherever they live.

    ``gather``/``scatter`` move a batch's rows to and from a call's state buffers (``[B, *shape]``
    per state input name); the ``_row`` variants are the batch-1 direct path; ``read_row`` /
    ``write_row`` / ``copy_row`` are the rare row operations (snapshot, restore, reset, fork),
    always through host arrays of one row's shape, and move whole rows: state and context;
    ``peek_row`` is ``read_row`` without a copy where the rows are on the host (a checkpoint).
    ``gather`` fills the state and context inputs; ``scatter`` writes the state only.
    """

    specs: tuple[RowSpec, ...]

    @property
    def capacity(self) -> int: ...
    @property
    def rows_in_use(self) -> int: ...

    @property
    def nbytes(self) -> int: ...
    @property
    def row_bytes(self) -> int: ...
    def allocate(self) -> int: ...
    def release(self, row: int) -> None: ...
    def gather(self, rows: np.ndarray, out: Mapping[str, StateBuffer]) -> None: ...
    def gather_row(self, row: int, out: Mapping[str, StateBuffer]) -> None: ...
    def scatter(self, rows: np.ndarray, state: Mapping[str, StateBuffer]) -> None: ...
    def scatter_row(self, row: int, state: Mapping[str, StateBuffer]) -> None: ...
    def read_row(self, row: int) -> dict[str, np.ndarray]: ...
    def peek_row(self, row: int) -> Mapping[str, np.ndarray]: ...
    def write_row(self, row: int, state: Mapping[str, np.ndarray]) -> None: ...
    def copy_row(self, source: int, target: int) -> None: ...


class StateSlabs(AllocatedRows):
    """The state (and context) rows of all sessions of one model."""

    def __init__(self, state: tuple[StateSpec, ...], capacity: int, context: tuple[ContextSpec, ...] = ()) -> None:
        self.rows = RowAllocator(capacity)
        self.specs: tuple[RowSpec, ...] = (*state, *context)
        self.arrays: dict[str, np.ndarray] = {
            s.input: np.zeros((capacity, *s.shape), dtype=s.np_dtype) for s in self.specs
        }
        #: The slabs a step writes back: the state's, never the context's.
        self._written = [(s.input, self.arrays[s.input]) for s in state]

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
        if self.rows.full:
            self._grow()
        row = self.rows.take()
        for array in self.arrays.values():
            array[row] = 0
        return row

    def _grow(self) -> None:
        old = self.rows.doubled()
        for name, array in self.arrays.items():
            grown = np.zeros((self.capacity, *array.shape[1:]), dtype=array.dtype)
            grown[:old] = array
            self.arrays[name] = grown
        self._written = [(name, self.arrays[name]) for name, _ in self._written]

    def gather(self, rows: np.ndarray, out: Mapping[str, StateBuffer]) -> None:
        """The state and context of ``rows`` into ``out`` (the host buffers bound to the ONNX Runtime call).

        ``[len(rows), *shape]`` each; nothing is allocated.
        """
        for name, array in self.arrays.items():
            # mode="clip": rows are allocated rows, always in range; numpy's default "raise"
            # with out= copies through a temporary (measured in docs/benchmarks.md).
            array.take(rows, axis=0, out=host(out[name]), mode="clip")

    def gather_row(self, row: int, out: Mapping[str, StateBuffer]) -> None:
        """One session's state into ``out[name][0]`` (the batch-1 direct path)."""
        for name, array in self.arrays.items():
            host(out[name])[0] = array[row]

    def scatter(self, rows: np.ndarray, state: Mapping[str, StateBuffer]) -> None:
        """Writes the new state of ``rows`` (``state`` keyed by state *input* name, ``[len(rows), *shape]``)."""
        for name, array in self._written:
            # Row-major 2-D views: numpy's fancy assignment is faster there than on [N, *shape]
            # (docs/benchmarks.md, "Why these design choices").
            flat = array.reshape(len(array), -1)
            flat[rows] = host(state[name]).reshape(len(rows), -1)

    def scatter_row(self, row: int, state: Mapping[str, StateBuffer]) -> None:
        """Writes ``state[name][0]`` as the new state of one session."""
        for name, array in self._written:
            array[row] = host(state[name])[0]

    def read_row(self, row: int) -> dict[str, np.ndarray]:
        """A copy of one session's state, e.g. for a snapshot."""
        return {name: array[row].copy() for name, array in self.arrays.items()}

    def peek_row(self, row: int) -> Mapping[str, np.ndarray]:
        """One session's state as it is now, for a caller that copies it before anything can run
        (a checkpoint record's bytes): views into the slab, no copy of their own."""
        return {name: array[row] for name, array in self.arrays.items()}

    def write_row(self, row: int, state: Mapping[str, np.ndarray]) -> None:
        """Sets one session's whole row (state and context) from host arrays: a restore, a reset."""
        for name, array in self.arrays.items():
            array[row] = state[name]

    def copy_row(self, source: int, target: int) -> None:
        """Copies one session's state onto another's row (fork)."""
        for array in self.arrays.values():
            array[target] = array[source]
