"""UCI Japanese Vowels (bundled, ``corpora/README.md`` gives provenance): speaker identification.

Nine male speakers say /ae/; a case (an utterance) is 7-29 frames of 12 LPC cepstrum
coefficients, and its label is the speaker. The UEA/UCR split ships as is: 270 training cases
(30 per speaker) and 370 test cases. The files are in the ``.ts`` text format: ``#`` comments
and ``@`` header lines, then one case per line, the 12 dimensions joined by ``:`` (each a
comma-separated series over the frames), then ``:label``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

CORPORA = Path(__file__).resolve().parent / "corpora"
FEATURES = 12
SPEAKERS = 9
#: The class names, in class-index order: the UCI labels "1".."9".
SPEAKER_NAMES = tuple(f"speaker {i}" for i in range(1, SPEAKERS + 1))
DATA_DESCRIPTION = "UCI Japanese Vowels (Kudo et al. 1999), UEA/UCR split: 270 training utterances, 370 test"


@dataclass(frozen=True)
class VowelSplit:
    """One split: ``utterances[i]`` is ``[frames, 12]`` float32, ``labels[i]`` the speaker index 0..8."""

    utterances: tuple[np.ndarray, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(u) for u in self.utterances], dtype=np.int64)

    def padded(self, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x [N, frames, 12] zero-padded, lengths [N])``; refuses an utterance longer than ``frames``."""
        lengths = self.lengths
        if lengths.max() > frames:
            raise ValueError(f"an utterance has {lengths.max()} frames, more than {frames}")
        x = np.zeros((len(self), frames, FEATURES), np.float32)
        for i, utterance in enumerate(self.utterances):
            x[i, : len(utterance)] = utterance
        return x, lengths


def parse_ts(text: str) -> VowelSplit:
    """Reads a ``.ts`` file's text; a case with another number of dimensions is a ValueError naming its line."""
    utterances, labels = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(("#", "@")):
            continue
        *dimensions, label = line.split(":")
        if len(dimensions) != FEATURES:
            raise ValueError(f"line {number}: {len(dimensions)} dimensions, expected {FEATURES}")
        series = np.array([[float(v) for v in d.split(",")] for d in dimensions], dtype=np.float32)
        utterances.append(np.ascontiguousarray(series.T))  # [frames, 12]
        labels.append(int(label) - 1)
    return VowelSplit(tuple(utterances), np.array(labels, dtype=np.int64))


@cache
def load_vowels(split: str) -> VowelSplit:
    """The bundled ``train`` or ``test`` split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return parse_ts((CORPORA / f"JapaneseVowels_{split.upper()}.ts").read_text())


def feature_stats(split: VowelSplit) -> tuple[np.ndarray, np.ndarray]:
    """Per-coefficient mean and standard deviation over every frame of ``split`` (the training normalisation)."""
    frames = np.concatenate(split.utterances)
    return frames.mean(axis=0), frames.std(axis=0)
