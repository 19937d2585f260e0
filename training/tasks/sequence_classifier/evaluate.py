"""A speaker classifier's test accuracy from its ONNX graph: the running answer by fraction heard, or the whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from service.contract import Manifest
from service.datasets.vowels import load_vowels
from training.onnx_replay import StepFn, open_session, ort_step_fn, run_sequence

#: The fractions of an utterance at which the streaming model's running answer is scored.
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def stream_logits(step: StepFn, manifest: Manifest, x: np.ndarray) -> np.ndarray:
    """A streaming graph's logits after every frame of padded utterances ``x [N, frames, 12]``: ``[N, frames, C]``."""
    return run_sequence(step, manifest, {manifest.inputs[0].name: x}, chunk=1)["logits"]


def accuracy_by_fraction(logits: np.ndarray, lengths: np.ndarray, labels: np.ndarray) -> dict[float, float]:
    """Accuracy of the running answer after ``ceil(f * length)`` frames, for each f in :data:`FRACTIONS`."""
    result = {}
    for fraction in FRACTIONS:
        seen = np.maximum(1, np.ceil(fraction * lengths - 1e-9).astype(np.int64))
        guess = logits[np.arange(len(labels)), seen - 1].argmax(axis=-1)
        result[fraction] = float((guess == labels).mean())
    return result


def evaluate(folder: Path, progress: bool = False) -> dict[str, Any]:
    """Test accuracy from the ONNX graph (370 utterances, seconds: no progress bar).

    Streaming model: ``test_accuracy_final_frame`` (the answer after the last frame) and
    ``test_accuracy_at_<p>pct`` (after the first p % of the frames, rounded up). Whole-sequence
    model: ``test_accuracy``.
    """
    manifest = Manifest.load(folder)
    step = ort_step_fn(open_session(Path(folder) / manifest.step_graph))
    test = load_vowels("test")
    if manifest.decoding.get("mode") == "stream":
        x, lengths = test.padded(int(test.lengths.max()))
        by_fraction = accuracy_by_fraction(stream_logits(step, manifest, x), lengths, test.labels)
        scores = {"test_accuracy_final_frame": by_fraction[1.0]}
        scores |= {f"test_accuracy_at_{round(100 * f)}pct": a for f, a in by_fraction.items() if f < 1.0}
    else:
        x, lengths = test.padded(int(manifest.decoding["max_frames"]))
        logits = step({"frames": x[:, None], "length": lengths[:, None]})["logits"][:, 0]
        scores = {"test_accuracy": float((logits.argmax(axis=-1) == test.labels).mean())}
    return {"model": manifest.name, **scores}
