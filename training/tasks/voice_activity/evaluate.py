"""A voice-activity model's scores from its step graph, on synthetic speech with exact labels.

The test calls are ``calls.py``'s (the shipped espeak-ng utterances, pauses, seeded noise) at the
folder's rate (the import spec's ``sr``), run through ``step.onnx`` as the server runs it: one
frame per step, the state threaded from step to step, all calls in one batch. Scores, over the
frames of all calls in each condition ``C`` of clean, snr20, snr10, snr5:

- ``C_f1``: frame F1 of ``p >= 0.5`` against the labels (scikit-learn's ``f1_score``);
- ``C_auc``: ROC AUC of p against the labels (its ``roc_auc_score``: ties count half);

and at 10 dB SNR the speech segments that the served driver's own event state machine makes
(``SpeechTracker``: VADIterator's, default options): ``snr10_utterances_found``, the fraction of
utterances where a segment starts (after the previous utterance, before this one's end: an
utterance merged into the last one's segment is not found), and ``snr10_false_segments``, the
segments that overlap no utterance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from service.contract import ContractError, Manifest
from service.drivers.voice_activity import FRAME_SAMPLES, NO_EVENTS_YET, SPEECH_START, SpeechTracker, VadOptions
from training.onnx_replay import open_session, ort_step_fn, run_sequence
from training.tasks.voice_activity.calls import Calls, make_calls

THRESHOLD = 0.5
SEGMENTS_AT = "snr10"


def speech_segments(probabilities: np.ndarray, rate: int, frame: int) -> list[tuple[int, int]]:
    """``[start, end)`` samples of the segments the driver's event state machine makes of one call's frames."""
    tracker = SpeechTracker(NO_EVENTS_YET, VadOptions(), rate, frame)
    segments, start = [], None
    for probability in probabilities:
        event = tracker.frame(float(probability))
        if event is not None and event[0] == SPEECH_START:
            start = event[1]
        elif event is not None:
            segments.append((start or 0, event[1]))
            start = None
    if start is not None:  # open when the call ends: it ends there
        segments.append((start, len(probabilities) * frame))
    return segments


def segment_scores(segments: list[tuple[int, int]], utterances: np.ndarray) -> tuple[int, int]:
    """Of one call: the utterances where a segment starts (after the previous one's end, before their own),
    and the segments that overlap no utterance."""
    starts = np.array([start for start, _ in segments], np.int64)
    since = np.concatenate([[0], utterances[:-1, 1]])
    found = sum(bool(np.any((starts >= low) & (starts < end))) for low, (_, end) in zip(since, utterances, strict=True))
    false = sum(not np.any((s < utterances[:, 1]) & (e > utterances[:, 0])) for s, e in segments)
    return found, false


def probabilities_of(folder: Path, manifest: Manifest, calls: Calls) -> np.ndarray:
    """Every frame's speech probability from the folder's step graph: ``[conditions, calls, frames]``."""
    step = ort_step_fn(open_session(Path(folder) / manifest.step_graph))
    conditions, count, frames, frame = calls.audio.shape
    batch = calls.audio.reshape(conditions * count, frames, frame)
    outputs = run_sequence(step, manifest, {manifest.inputs[0].name: batch}, chunk=1)
    return outputs[manifest.outputs[0].name].reshape(conditions, count, frames).astype(np.float64)


def rate_of(manifest: Manifest) -> int:
    """The rate the folder was imported for (its spec's constant ``sr``); ContractError if the eval set lacks it."""
    rate = manifest.training.get("spec", {}).get("constant", {}).get("sr")
    frame = manifest.inputs[0].shape[-1] if manifest.inputs and manifest.inputs[0].shape else None
    if rate not in FRAME_SAMPLES or frame != FRAME_SAMPLES[rate]:
        raise ContractError(
            f"model {manifest.name!r}: the voice-activity scorer takes Silero's frames at {FRAME_SAMPLES} "
            f"(sample rate: frame), not sr {rate} with frames of {frame}"
        )
    return int(rate)


def evaluate(folder: Path, progress: bool = False) -> dict[str, Any]:
    """The scores of the module docstring (seconds: no progress bar)."""
    manifest = Manifest.load(folder)
    rate = rate_of(manifest)
    calls = make_calls(rate, FRAME_SAMPLES[rate])
    probabilities = probabilities_of(folder, manifest, calls)
    scores: dict[str, Any] = {"model": manifest.name}
    for condition, heard in zip(calls.conditions, probabilities, strict=True):
        heard, labels = heard.ravel(), calls.labels.ravel()
        scores[f"{condition}_f1"] = float(f1_score(labels, heard >= THRESHOLD))
        scores[f"{condition}_auc"] = float(roc_auc_score(labels, heard))
    found = false = 0
    for heard, utterances in zip(probabilities[calls.conditions.index(SEGMENTS_AT)], calls.utterances, strict=True):
        in_call = segment_scores(speech_segments(heard, rate, FRAME_SAMPLES[rate]), utterances)
        found, false = found + in_call[0], false + in_call[1]
    scores[f"{SEGMENTS_AT}_utterances_found"] = found / calls.utterances[:, :, 0].size
    scores[f"{SEGMENTS_AT}_false_segments"] = false
    return scores
