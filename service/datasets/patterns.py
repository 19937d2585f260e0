"""Patterns for the associative memories: letter bitmaps, random patterns, digits, masks, noise.

Everything random takes a ``seed`` and draws from its own ``numpy.random.Generator``, so a
pattern set, a mask or a noisy probe is the same on every machine and every run.

Two value conventions are used, and each function says which it returns:

* **bipolar** ``{-1, +1}`` for Hopfield networks and dense memories (``s_i = +1`` is an "on" pixel);
* **binary** ``{0, 1}`` for Boltzmann machines.

:func:`to_bipolar` / :func:`to_binary` convert between them (``s = 2x - 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.datasets.digits import load_digits

#: Rows and columns of a letter bitmap.
LETTER_SHAPE = (7, 5)

# A 5x7 capital alphabet drawn for this project: '#' is an on pixel, '.' an off one.
_LETTER_ART = """
A .###. #...# #...# ##### #...# #...# #...#
B ####. #...# #...# ####. #...# #...# ####.
C .###. #...# #.... #.... #.... #...# .###.
D ####. #...# #...# #...# #...# #...# ####.
E ##### #.... #.... ####. #.... #.... #####
F ##### #.... #.... ####. #.... #.... #....
G .###. #...# #.... #.### #...# #...# .####
H #...# #...# #...# ##### #...# #...# #...#
I .###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.
J ..### ...#. ...#. ...#. ...#. #..#. .##..
K #...# #..#. #.#.. ##... #.#.. #..#. #...#
L #.... #.... #.... #.... #.... #.... #####
M #...# ##.## #.#.# #.#.# #...# #...# #...#
N #...# ##..# #.#.# #..## #...# #...# #...#
O .###. #...# #...# #...# #...# #...# .###.
P ####. #...# #...# ####. #.... #.... #....
Q .###. #...# #...# #...# #.#.# #..#. .##.#
R ####. #...# #...# ####. #.#.. #..#. #...#
S .#### #.... #.... .###. ....# ....# ####.
T ##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..
U #...# #...# #...# #...# #...# #...# .###.
V #...# #...# #...# #...# #...# .#.#. ..#..
W #...# #...# #...# #.#.# #.#.# #.#.# .#.#.
X #...# #...# .#.#. ..#.. .#.#. #...# #...#
Y #...# #...# .#.#. ..#.. ..#.. ..#.. ..#..
Z ##### ....# ...#. ..#.. .#... #.... #####
"""


def _parse_letters() -> dict[str, np.ndarray]:
    letters: dict[str, np.ndarray] = {}
    for line in _LETTER_ART.strip().splitlines():
        name, *rows = line.split()
        grid = np.array([[1 if ch == "#" else 0 for ch in row] for row in rows], dtype=np.int8)
        if grid.shape != LETTER_SHAPE:
            raise ValueError(f"letter {name!r} is drawn {grid.shape}, not {LETTER_SHAPE}")
        letters[name] = grid
    return letters


LETTERS: dict[str, np.ndarray] = _parse_letters()


def letter_patterns(names: str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ") -> np.ndarray:
    """The bitmaps of ``names`` as bipolar rows, ``[len(names), 35]`` float32 (row-major 7x5)."""
    unknown = sorted(set(names) - set(LETTERS))
    if unknown:
        raise ValueError(f"no bitmap for letter(s) {unknown}; known: A-Z")
    return np.stack([to_bipolar(LETTERS[n].reshape(-1)) for n in names])


def to_bipolar(binary: np.ndarray) -> np.ndarray:
    """``{0, 1} -> {-1, +1}``: ``s = 2x - 1``, float32."""
    return (2.0 * np.asarray(binary, dtype=np.float32) - 1.0).astype(np.float32)


def to_binary(bipolar: np.ndarray) -> np.ndarray:
    """``{-1, +1} -> {0, 1}``: ``x = (s + 1) / 2``, float32."""
    return ((np.asarray(bipolar, dtype=np.float32) + 1.0) / 2.0).astype(np.float32)


def random_bipolar(count: int, units: int, *, seed: int) -> np.ndarray:
    """``count`` independent uniform bipolar patterns, ``[count, units]`` float32."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(count, units))


def flip_bits(patterns: np.ndarray, fraction: float, *, seed: int) -> np.ndarray:
    """Bipolar ``patterns`` with exactly ``round(fraction * units)`` units flipped in each row.

    The flipped units of each row are drawn without replacement, so the Hamming distance to
    the original is exact (not just expected).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    out = np.array(patterns, dtype=np.float32, copy=True)
    count, units = out.shape
    flips = round(fraction * units)
    for row in range(count):
        out[row, rng.choice(units, size=flips, replace=False)] *= -1.0
    return out


def occlusion_mask(shape: tuple[int, int], region: str) -> np.ndarray:
    """A flat ``{0, 1}`` mask of the **known** units of a ``rows x cols`` image (1 = known).

    ``region`` names what is hidden: ``bottom``, ``top``, ``left`` or ``right`` half
    (the hidden half takes the extra row or column of an odd size), or ``none``.
    """
    rows, cols = shape
    known = np.ones(shape, dtype=np.float32)
    if region == "bottom":
        known[rows // 2 :, :] = 0.0
    elif region == "top":
        known[: (rows + 1) // 2, :] = 0.0
    elif region == "left":
        known[:, : (cols + 1) // 2] = 0.0
    elif region == "right":
        known[:, cols // 2 :] = 0.0
    elif region != "none":
        raise ValueError(f"region must be one of bottom, top, left, right, none; got {region!r}")
    return known.reshape(-1)


def nearest_on_known(train: np.ndarray, test: np.ndarray, known: np.ndarray) -> np.ndarray:
    """For each row of ``test``, the row of ``train`` closest in Hamming distance on the known units.

    ``known [units]`` is 1 where a unit is seen; the baseline a completion has to beat fills the
    hidden units from this nearest image. Returns ``[len(test), units]``.
    """
    seen = np.asarray(known) > 0
    distance = (test[:, None, seen] != train[None, :, seen]).sum(axis=2)
    nearest: np.ndarray = train[distance.argmin(axis=1)]
    return nearest


@dataclass(frozen=True)
class Digits:
    """The bundled 8x8 handwritten digits (scikit-learn's ``load_digits``), binarised, split into train and test.

    ``train`` / ``test`` are ``[count, 64]`` float32 in ``{0, 1}``; ``train_labels`` /
    ``test_labels`` the digit each image shows.
    """

    train: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray
    test_labels: np.ndarray
    threshold: float

    SHAPE = (8, 8)


def load_digits_binary(*, test_fraction: float = 0.2, threshold: float = 8.0, seed: int = 0) -> Digits:
    """The 1,797 bundled handwritten digits (intensities 0..16, :mod:`service.datasets.digits`), binarised.

    A pixel is on when its intensity is above ``threshold``. The split is a seeded permutation.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    data = load_digits()
    images = (data.flat > threshold).astype(np.float32)
    labels = data.labels.copy()
    order = np.random.default_rng(seed).permutation(len(images))
    cut = len(images) - round(test_fraction * len(images))
    train, test = order[:cut], order[cut:]
    return Digits(images[train], images[test], labels[train], labels[test], threshold)
