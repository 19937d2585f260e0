"""The 1,797 handwritten 8x8 digits that scikit-learn calls ``load_digits``, bundled and read with numpy.

The file is scikit-learn's own copy (``corpora/digits.csv.gz``; provenance and licence in
``corpora/README.md``), so the RBM's client command and the captioner's scenes run on the
serving install, which has no scikit-learn. A row is one image: 64 intensities 0..16 in
reading order, then the digit it shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

DIGITS_PATH = Path(__file__).resolve().parent / "corpora" / "digits.csv.gz"
#: Rows and columns of one image.
DIGIT_SHAPE = (8, 8)
#: The largest intensity: a pixel counts the on bits of a 4x4 block of the original 32x32 bitmap.
MAX_INTENSITY = 16


@dataclass(frozen=True)
class HandwrittenDigits:
    """``images`` is ``[1797, 8, 8]`` float64 intensities 0..16, ``labels`` ``[1797]`` int64; both read-only."""

    images: np.ndarray
    labels: np.ndarray

    @property
    def flat(self) -> np.ndarray:
        """The images as ``[1797, 64]`` rows (scikit-learn's ``data``)."""
        return self.images.reshape(len(self.images), -1)


@cache
def load_digits() -> HandwrittenDigits:
    """Every digit of the bundled file, in the file's order (the same arrays as scikit-learn's)."""
    table = np.loadtxt(DIGITS_PATH, delimiter=",", dtype=np.float64)
    images = table[:, :-1].reshape(-1, *DIGIT_SHAPE)
    labels = table[:, -1].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return HandwrittenDigits(images, labels)
