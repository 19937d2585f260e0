"""Preallocated, IOBound call buffers: how the scheduler calls a model without per-step allocation.

``StepCalls`` holds feed and result arrays for a batch of B sessions × K steps, bound to the
graph once per (B, K) with ONNX Runtime's IOBinding, so a call is one bound run with no
conversion of Python dicts and no output allocation (what it saves: docs/benchmarks.md, "IOBinding
with preallocated buffers"). Context tensors are bound as inputs beside the state, never as outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from service.buffers import HOST, Device, DeviceArray, StateBuffer, bind_input, bind_output, head, host
from service.contract import Arrays, RowSpec

if TYPE_CHECKING:  # pragma: no cover - typing only
    from service.registry import LoadedModel

#: The onnxruntime versions ``run_bound`` was checked on (its private entry point may move);
#: tests/test_calls.py fails on a version outside this range, so it is checked again, not assumed.
ORT_CHECKED_VERSIONS = ((1, 20), (1, 32))


def run_bound(session: ort.InferenceSession, binding: ort.IOBinding) -> None:
    """One bound run through ORT's C++ method directly.

    ``InferenceSession.run_with_iobinding`` is a thin Python wrapper over the same call, but
    ``run_with_ort_values``' wrapper costs more per call (docs/benchmarks.md); this private path
    is the one place the server relies on ORT internals (pinned by ``ORT_CHECKED_VERSIONS``).
    """
    session._sess.run_with_iobinding(binding._iobinding, None)


StateBuffers = dict[str, StateBuffer]


class BatchCall:
    """The arrays of one (B, K) call: fill ``inputs`` and ``state``, ``run()``, read the results.

    ``inputs[name]`` is ``[B, K, *shape]``, ``state[input]`` is ``[B, *shape]``; after ``run()``,
    ``outputs[name]`` is ``[B, K, *shape]`` and ``new_state`` is keyed by the state's *input*
    name. With IOBinding the result arrays are views of buffers that the next call overwrites:
    copy what must outlive it (``reused`` says so). ``state`` and ``new_state`` are on the
    device when the slabs are (``StepCalls(state_device=...)``); inputs and outputs are always
    host arrays.
    """

    __slots__ = ("_binding", "_model", "inputs", "new_state", "outputs", "reused", "state")

    def __init__(
        self,
        model: LoadedModel,
        inputs: Arrays,
        state: StateBuffers,
        outputs: Arrays,
        new_state: StateBuffers,
        binding: ort.IOBinding | None,
    ) -> None:
        self._model = model
        self.inputs = inputs
        self.state = state
        self.outputs = outputs
        self.new_state = new_state
        self._binding = binding
        self.reused = binding is not None

    def run(self) -> None:
        """The ONNX Runtime call (releases the GIL while it computes)."""
        if self._binding is not None:
            run_bound(self._model.session, self._binding)
            return
        results = self._model.run({**self.inputs, **{name: host(value) for name, value in self.state.items()}})
        self.outputs = {t.name: results[t.name] for t in self._model.manifest.outputs}
        self.new_state = {s.input: results[s.output] for s in self._model.manifest.state}


class StepCalls:
    """Preallocated, IOBound arrays for calls of up to ``max_batch`` sessions × K steps.

    State buffers hold ``max_batch`` rows; per-step buffers hold B × K session-steps and grow
    (doubling) up to ``max_steps``. A (B, K) call uses their leading rows, which are contiguous,
    so ORT reads and writes them in place. Bindings are made once per (B, K) and kept (the cache
    is cleared past ``max_bindings`` shapes). A call larger than ``max_steps`` gets fresh arrays
    and no binding, so a rare huge chunk does not pin its memory; so does every call when
    ``io_binding`` is off. One call at a time: the scheduler runs one batch at a time, and a
    call's buffers are only reused by the next.

    With ``state_device`` (device-resident slabs), the state buffers are allocated on that
    device and bound there, so the state never crosses the bus; the unbound fallback keeps host
    state buffers, which device slabs gather into and scatter from as well.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        io_binding: bool,
        max_batch: int,
        max_steps: int,
        max_bindings: int = 1024,
        state_device: Device = HOST,
    ) -> None:
        self.model = model
        self.io_binding = io_binding
        self.max_batch = max_batch
        self.max_steps = max(max_steps, max_batch)
        self.max_bindings = max_bindings
        self._calls: dict[tuple[int, int], BatchCall] = {}
        self.state_device = state_device
        manifest = model.manifest
        self._state_in = self._state_buffers(manifest.rows)  # the state and the context it reads
        self._state_out = self._state_buffers(manifest.state)
        self._capacity = 0  # session-steps the per-step buffers hold
        self._per_step: dict[str, np.ndarray] = {}

    def _state_buffers(self, specs: Sequence[RowSpec]) -> dict[str, StateBuffer]:
        if self.state_device == HOST:
            return {s.input: np.zeros((self.max_batch, *s.shape), s.np_dtype) for s in specs}
        return {
            s.input: DeviceArray.empty((self.max_batch, *s.shape), np.dtype(s.np_dtype), self.state_device)
            for s in specs
        }

    def _grow(self, steps: int) -> None:
        capacity = min(max(steps, 2 * self._capacity, 64), self.max_steps)
        manifest = self.model.manifest
        self._per_step = {
            t.name: np.zeros((capacity, *t.shape), t.np_dtype) for t in (*manifest.inputs, *manifest.outputs)
        }
        self._capacity = capacity
        self._calls.clear()

    def prepare(self, steps: int = 1) -> None:
        """Binds every batch size up to max_batch for chunks of ``steps`` now.

        Under load the batch size takes every value up to max_batch; binding each on first use
        would cost the event loop during the first seconds of traffic instead of at start
        (docs/benchmarks.md, "Bindings made at start").
        """
        if not self.io_binding:
            return
        for batch in range(1, self.max_batch + 1):
            self.get(batch, steps)

    def get(self, batch: int, steps: int) -> BatchCall:
        """The arrays (and binding) of a call of ``batch`` sessions × ``steps`` time steps."""
        call = self._calls.get((batch, steps))
        if call is not None:
            return call
        if not self.io_binding or batch > self.max_batch or batch * steps > self.max_steps:
            return self._unbound(batch, steps)
        if steps > 1 and self.model.one_step_per_call:
            return self._unbound(batch, steps)  # the graph binds one step: LoadedModel.run makes K calls
        if batch * steps > self._capacity:
            self._grow(batch * steps)
        if len(self._calls) >= self.max_bindings:
            self._calls.clear()
        call = self._calls[(batch, steps)] = self._bound(batch, steps)
        return call

    def _bound(self, batch: int, steps: int) -> BatchCall:
        manifest = self.model.manifest

        def per_step(name: str, shape: tuple[int, ...]) -> np.ndarray:
            return self._per_step[name][: batch * steps].reshape(batch, steps, *shape)

        inputs = {t.name: per_step(t.name, t.shape) for t in manifest.inputs}
        outputs = {t.name: per_step(t.name, t.shape) for t in manifest.outputs}
        state = {name: head(buffer, batch) for name, buffer in self._state_in.items()}
        new_state = {name: head(buffer, batch) for name, buffer in self._state_out.items()}
        binding = self.model.session.io_binding()
        for name, buffer in (*inputs.items(), *state.items()):
            bind_input(binding, name, buffer)
        for name, array in outputs.items():
            bind_output(binding, name, array)
        for s in manifest.state:
            bind_output(binding, s.output, new_state[s.input])
        return BatchCall(self.model, inputs, state, outputs, new_state, binding)

    def _unbound(self, batch: int, steps: int) -> BatchCall:
        manifest = self.model.manifest
        inputs = {t.name: np.zeros((batch, steps, *t.shape), t.np_dtype) for t in manifest.inputs}
        state: StateBuffers = {s.input: np.zeros((batch, *s.shape), s.np_dtype) for s in manifest.rows}
        return BatchCall(self.model, inputs, state, {}, {}, None)
