"""The Santa Fe laser (competition data set A): a real chaotic series, bundled with its provenance.

10,093 integer intensities of a far-infrared NH3 laser (``corpora/santafe_laser.txt``; where it
comes from is in ``corpora/README.md``). The protocol is the one the data's README gives: the
first 80 % trains, the last 20 % is held out, and the series is normalised with the training
part's mean and standard deviation, so nothing of the test part leaks into the scaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

LASER_PATH = Path(__file__).resolve().parent / "corpora" / "santafe_laser.txt"
TRAIN_FRACTION = 0.8
LASER_DESCRIPTION = "Santa Fe laser (data set A), 10,093 samples: first 80 % train, last 20 % test"


@dataclass(frozen=True)
class Series:
    """A scalar series cut into a training and a held-out part, in its own units.

    ``mean`` and ``std`` are the training part's: a forecaster normalises with them.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    mean: float
    std: float


def load_laser() -> Series:
    """The laser intensities (float64), split 80/20 in time order."""
    values = np.loadtxt(LASER_PATH, dtype=np.float64)
    cut = int(len(values) * TRAIN_FRACTION)
    train, test = values[:cut], values[cut:]
    return Series("santafe_laser", train, test, float(train.mean()), float(train.std()))
