"""The voice-activity scorer's test calls: the shipped utterances between pauses, in seeded noise, labelled per frame.

A call is the twelve clean utterances of ``eval_set``, each after a pause (lengths drawn once
from :data:`SEED`), then a last pause; the :data:`CALLS` calls take them in rotated orders, so
every call is as long. Each call is heard in each noise condition of :data:`CONDITIONS`: white
Gaussian noise at -60 dBFS (``clean``), or at 20, 10 and 5 dB below the speech's RMS (over the
speech frames of all calls). A frame (the model's: 512 samples at 16 kHz, 256 at 8 kHz) is
speech when the clean call's RMS over it is at least :data:`SPEECH_DBFS`; espeak-ng's silences
are near digital zero and its speech near -21 dBFS, so the labels are near-exact. The noise is
a function of the seed: the calls are the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.tasks.voice_activity.eval_set import load_utterances

SEED = 23
CALLS = 4
#: Noise before the first utterance; the pauses after each utterance are drawn from this range.
LEAD_S = 1.0
PAUSE_S = (0.3, 1.5)
#: A frame whose clean RMS is at least this is speech (about 30 dB under espeak-ng's speech level).
SPEECH_DBFS = -50.0
#: Each condition's noise: an SNR in dB against the speech's RMS, or None for a -60 dBFS floor.
CONDITIONS: dict[str, float | None] = {"clean": None, "snr20": 20.0, "snr10": 10.0, "snr5": 5.0}
CLEAN_NOISE_DBFS = -60.0


@dataclass(frozen=True)
class Calls:
    """The calls in every condition: ``audio [conditions, calls, frames, frame]``, float32 in [-1, 1].

    ``labels [calls, frames]``: which frames are speech (the same in every condition);
    ``utterances [calls, n, 2]``: each utterance's first and end sample, in the order heard.
    """

    rate: int
    audio: np.ndarray
    labels: np.ndarray
    utterances: np.ndarray

    @property
    def conditions(self) -> tuple[str, ...]:
        return tuple(CONDITIONS)


def clean_call(utterances: list[np.ndarray], pauses_s: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The utterances, each followed by its pause (exact zeros), float64; each utterance's ``[start, end)``."""
    parts, spans, at = [np.zeros(round(LEAD_S * rate))], [], round(LEAD_S * rate)
    for utterance, pause_s in zip(utterances, pauses_s, strict=True):
        spans.append((at, at + len(utterance)))
        parts += [utterance.astype(np.float64), np.zeros(round(pause_s * rate))]
        at += len(utterance) + len(parts[-1])
    return np.concatenate(parts), np.array(spans, np.int64)


def framed(track: np.ndarray, frame: int) -> np.ndarray:
    """The whole frames of ``track``: ``[frames, frame]``."""
    frames = len(track) // frame
    return track[: frames * frame].reshape(frames, frame)


def make_calls(rate: int, frame: int) -> Calls:
    """The test calls at ``rate`` (16000 or 8000), cut into frames of ``frame`` samples."""
    utterances = load_utterances(rate)
    pauses_s = np.random.default_rng(SEED).uniform(*PAUSE_S, size=len(utterances))
    shift = len(utterances) // CALLS
    made = [
        clean_call(utterances[k * shift :] + utterances[: k * shift], np.roll(pauses_s, k), rate) for k in range(CALLS)
    ]
    clean = np.stack([framed(track, frame) for track, _ in made])
    labels = np.sqrt(np.mean(np.square(clean), axis=-1)) >= 10 ** (SPEECH_DBFS / 20)
    speech_rms = float(np.sqrt(np.mean(np.square(clean[labels]))))
    audio = np.empty((len(CONDITIONS), *clean.shape), np.float32)
    for index, snr_db in enumerate(CONDITIONS.values()):
        noise_rms = 10 ** (CLEAN_NOISE_DBFS / 20) if snr_db is None else speech_rms * 10 ** (-snr_db / 20)
        noise = np.random.default_rng([SEED, rate, index]).standard_normal(clean.shape) * noise_rms
        audio[index] = np.clip(clean + noise, -1.0, 32767 / 32768)
    return Calls(rate, audio, labels, np.stack([spans for _, spans in made]))
