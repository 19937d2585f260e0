"""Cutting one long sequence into parallel contiguous streams.

A recurrent model's loss on a text depends on how much context its state has seen, so the
training loop's validation (PyTorch) and ``training.evaluate`` (ONNX Runtime) must cut the
held-out text the same way to report the same number. Both use :func:`as_streams` and the
constants below: the text becomes ``EVAL_STREAMS`` rows, each row is read from a zero state
to its end with the state carried across chunks of ``EVAL_CHUNK`` steps.
"""

from __future__ import annotations

import numpy as np

#: Rows the held-out text is cut into for evaluation (each starts from a zero state).
EVAL_STREAMS = 32
#: Steps per model call during evaluation; only speed depends on it, not the loss.
EVAL_CHUNK = 256


def as_streams(sequence: np.ndarray, streams: int) -> np.ndarray:
    """Return ``sequence`` (``[N, ...]``) as ``[streams, N // streams, ...]`` contiguous rows.

    Row ``i`` is ``sequence[i*L:(i+1)*L]``; the last ``N % streams`` items are dropped so that
    every row has the same length ``L`` and a batch of rows can run in one call.
    """
    if streams < 1:
        raise ValueError(f"streams must be >= 1, got {streams}")
    length = len(sequence) // streams
    if length < 2:
        raise ValueError(f"a sequence of {len(sequence)} items is too short for {streams} streams")
    return sequence[: streams * length].reshape(streams, length, *sequence.shape[1:])
