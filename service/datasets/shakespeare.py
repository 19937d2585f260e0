"""Tiny Shakespeare (public domain, 1,115,394 characters) as a character-level data set.

The vocabulary is the sorted set of characters of the whole corpus (65 of them), so a
character's id is its rank; the first 90% of the text trains, the last 10% is held out.
The held-out part is the end of the file, not a random sample, so no validation line
was seen in training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CORPUS_PATH = Path(__file__).resolve().parent / "corpora" / "tinyshakespeare.txt"
TRAIN_FRACTION = 0.9
#: How the training split is described in a model's manifest.
TRAIN_DATA_DESCRIPTION = "Tiny Shakespeare, first 90%"


class Vocabulary:
    """Characters <-> ids; ``chars[i]`` is the character with id ``i``."""

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars: tuple[str, ...] = tuple(chars)
        if not self.chars or any(len(ch) != 1 for ch in self.chars):
            raise ValueError("a vocabulary is a non-empty sequence of single characters")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("a vocabulary must not repeat a character")
        # Encoding works on code points: sorted code points and the id of each, for searchsorted.
        points = np.array([ord(ch) for ch in self.chars], dtype=np.int64)
        order = np.argsort(points)
        self._sorted_points = points[order]
        self._sorted_ids = order.astype(np.int64)

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.chars == other.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """Ids of ``text`` as int64 (vectorised: the whole corpus takes milliseconds)."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        pos = np.searchsorted(self._sorted_points, points)
        pos = np.minimum(pos, len(self._sorted_points) - 1)
        unknown = self._sorted_points[pos] != points
        if unknown.any():
            bad = sorted({chr(p) for p in points[unknown]})
            raise KeyError(f"characters not in the vocabulary: {bad!r}")
        return self._sorted_ids[pos]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


@dataclass(frozen=True)
class CharCorpus:
    """A text, its vocabulary and its train / validation split (as ids)."""

    vocab: Vocabulary
    train_ids: np.ndarray
    val_ids: np.ndarray

    @property
    def val_text(self) -> str:
        return self.vocab.decode(self.val_ids)


def load_shakespeare(path: Path = CORPUS_PATH) -> CharCorpus:
    """Load the corpus, build its vocabulary and split it 90 / 10 (in order, no shuffling)."""
    text = path.read_text(encoding="utf-8")
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    cut = int(len(ids) * TRAIN_FRACTION)
    return CharCorpus(vocab=vocab, train_ids=ids[:cut], val_ids=ids[cut:])
