"""Running an exported step graph the way the server does, with the contract's state threading.

A score in a manifest must describe the graph the server runs, not the PyTorch module it came
from, so every task's scorer runs its model folder's graphs here, in ONNX Runtime.
:func:`iter_chunks` / :func:`run_sequence` drive any step function (ONNX Runtime, or PyTorch
through ``training.onnx_export.torch_step_fn``) over a batch of sequences, carrying the state
from call to call; the exporters' parity checks use them too. No torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.contract import Arrays, Manifest, zero_state

if TYPE_CHECKING:  # pragma: no cover - typing only
    import onnxruntime

#: One call of a step model: graph-input name -> array, to graph-output name -> array.
StepFn = Callable[[Arrays], Arrays]


def open_session(graph: Path) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session for a graph file."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])


def ort_step_fn(session: onnxruntime.InferenceSession) -> StepFn:
    """Wrap an ONNX Runtime session as a :data:`StepFn`."""
    names = [o.name for o in session.get_outputs()]

    def step(feed: Arrays) -> Arrays:
        return dict(zip(names, session.run(names, feed), strict=True))

    return step


def iter_chunks(
    step_fn: StepFn, manifest: Manifest, inputs: Mapping[str, np.ndarray], chunk: int
) -> Iterator[tuple[int, Arrays]]:
    """Run ``inputs`` (each ``[batch, time, *shape]``) through a step model ``chunk`` steps per call.

    Starts from the manifest's initial state and feeds each call's state outputs to the next
    call. Yields ``(start, outputs)`` per call, ``outputs`` holding the manifest's per-step
    outputs for steps ``start .. start + chunk``.
    """
    first = next(iter(inputs.values()))
    batch, steps = first.shape[:2]
    state = zero_state(manifest, batch)
    for start in range(0, steps, chunk):
        feed = {name: np.ascontiguousarray(arr[:, start : start + chunk]) for name, arr in inputs.items()}
        results = step_fn(feed | state)
        state = {s.input: results[s.output] for s in manifest.state}
        yield start, {t.name: results[t.name] for t in manifest.outputs}


def run_sequence(step_fn: StepFn, manifest: Manifest, inputs: Mapping[str, np.ndarray], chunk: int) -> Arrays:
    """All per-step outputs of :func:`iter_chunks`, concatenated along time."""
    parts: dict[str, list[np.ndarray]] = {t.name: [] for t in manifest.outputs}
    for _, outputs in iter_chunks(step_fn, manifest, inputs, chunk):
        for name, value in outputs.items():
            parts[name].append(value)
    return {name: np.concatenate(values, axis=1) for name, values in parts.items()}
