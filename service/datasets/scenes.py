"""Scenes of real handwriting for the captioner: 1-3 handwritten digits on a canvas, and a caption.

The digits are the bundled ``load_digits`` (:mod:`service.datasets.digits`), scaled to two
sizes and placed at random. Every scene records each digit's box, so a captioner's attention
can be checked against where the digit really is (the pointing metric). A small grammar makes
the caption follow from the image alone (``a large 3 to the left of a small 7``); the samples
are split 60/20/20 into train/validation/test pools, and a few (digit, digit, relation)
combinations are held out of training to make the ``composition`` split. All seeded. The
grammar and the splits in full: docs/attention.md, "The data".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise, product
from pathlib import Path

import numpy as np

from service.datasets.digits import MAX_INTENSITY, load_digits

CANVAS = 64
#: Side in pixels of each size of digit (the 8×8 samples scaled up).
SIZES = {"small": 12, "large": 20}
RELATIONS = {"horizontal": "to the left of", "vertical": "above"}
START, END, PAD = "<START>", "<END>", "<PAD>"
WORDS = ("a", "small", "large", "to", "the", "left", "of", "above")
VOCABULARY = (PAD, START, END, *WORDS, *(str(d) for d in range(10)))
#: Longest caption in tokens, its <END> included: three digits of two sizes in a row.
MAX_CAPTION_TOKENS = 18
SPLITS = ("train", "validation", "test", "composition")
POOL_FRACTIONS = (0.6, 0.2, 0.2)
HELD_OUT_COMBINATIONS = 12
DATA_DESCRIPTION = (
    "scenes of scikit-learn load_digits handwriting (bundled; 60/20/20 seeded split of the samples), "
    f"{CANVAS}x{CANVAS}, 1-3 digits of {sorted(SIZES.values())} px, grammar captions; "
    f"{HELD_OUT_COMBINATIONS} (digit, digit, relation) combinations held out of training"
)


@dataclass(frozen=True)
class Box:
    """A digit's place on the canvas, in pixels: rows ``top .. top+size``, columns ``left .. left+size``."""

    top: int
    left: int
    size: int

    def contains(self, row: float, column: float) -> bool:
        return self.top <= row < self.top + self.size and self.left <= column < self.left + self.size


@dataclass(frozen=True)
class Scene:
    """One image, its caption, and its digits (in the order the caption names them) with their boxes."""

    image: np.ndarray  # [CANVAS, CANVAS] float32 in [0, 1]
    caption: str
    digits: tuple[int, ...]
    boxes: tuple[Box, ...]


@lru_cache(maxsize=1)
def digit_pools(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The handwriting samples of each pool: ``(images [N, 8, 8] in [0, 1], labels [N])``."""
    digits = load_digits()
    images = (digits.images / MAX_INTENSITY).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(images))
    cut1 = int(POOL_FRACTIONS[0] * len(order))
    cut2 = cut1 + int(POOL_FRACTIONS[1] * len(order))
    parts = {"train": order[:cut1], "validation": order[cut1:cut2], "test": order[cut2:]}
    return {name: (images[index], digits.labels[index]) for name, index in parts.items()}


def held_out_combinations(seed: int = 0) -> frozenset[tuple[int, int, str]]:
    """The (first digit, second digit, relation) combinations no training scene shows."""
    every = list(product(range(10), range(10), RELATIONS))
    chosen = np.random.default_rng(seed + 1).choice(len(every), HELD_OUT_COMBINATIONS, replace=False)
    return frozenset(every[int(i)] for i in chosen)


def caption_of(digits: tuple[int, ...], sizes: tuple[str, ...], relation: str) -> str:
    """The grammar: sizes named when a single digit or when the scene's sizes differ."""
    named = len(digits) == 1 or len(set(sizes)) > 1
    phrases = [f"a {size} {d}" if named else f"a {d}" for d, size in zip(digits, sizes, strict=True)]
    return f" {RELATIONS[relation]} ".join(phrases)


def resize_matrix(size: int, source: int = 8) -> np.ndarray:
    """``[size, source]`` bilinear interpolation weights (pixel centres aligned, edges clamped)."""
    centres = (np.arange(size) + 0.5) * source / size - 0.5
    low = np.clip(np.floor(centres), 0, source - 1).astype(int)
    high = np.clip(low + 1, 0, source - 1)
    frac = np.clip(centres - low, 0.0, 1.0)
    weights = np.zeros((size, source), np.float32)
    np.add.at(weights, (np.arange(size), low), 1 - frac)
    np.add.at(weights, (np.arange(size), high), frac)
    return weights


def scale_digits(samples: np.ndarray, size: int) -> np.ndarray:
    """8×8 samples ``[N, 8, 8]`` resized bilinearly to ``[N, size, size]``, values kept in [0, 1]."""
    weights = resize_matrix(size, samples.shape[-1])
    scaled: np.ndarray = np.einsum("ij,njk,lk->nil", weights, samples, weights)
    clipped: np.ndarray = np.clip(scaled, 0.0, 1.0).astype(np.float32)
    return clipped


def _row_positions(rng: np.random.Generator, sizes: list[int]) -> list[int]:
    """Starts along the row: the digits in order, the slack spread at random between them."""
    slack = CANVAS - sum(sizes)
    cuts = np.sort(rng.integers(0, slack + 1, size=len(sizes)))
    gaps = np.diff(np.concatenate([[0], cuts]))
    starts, at = [], 0
    for gap, size in zip(gaps, sizes, strict=True):
        at += int(gap)
        starts.append(at)
        at += size
    return starts


def _across_positions(rng: np.random.Generator, sizes: list[int]) -> list[int] | None:
    """Starts across the row: near a common centre, every pair overlapping (else None: redraw)."""
    centre = rng.uniform(max(sizes) / 2, CANVAS - max(sizes) / 2)
    starts = [int(np.clip(round(centre - s / 2 + rng.uniform(-s / 3, s / 3)), 0, CANVAS - s)) for s in sizes]
    for (a, sa), (b, sb) in product(zip(starts, sizes, strict=True), repeat=2):
        if a + sa <= b or b + sb <= a:
            return None
    return starts


def _combinations_of(digits: tuple[int, ...], relation: str) -> set[tuple[int, int, str]]:
    return {(a, b, relation) for a, b in pairwise(digits)}


@lru_cache(maxsize=4)
def scaled_pool(name: str) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """A pool's samples scaled to every size once (``{size: [N, size, size]}``), and their labels."""
    images, labels = digit_pools()[name]
    return {size: scale_digits(images, size) for size in SIZES.values()}, labels


def make_scene(
    rng: np.random.Generator, pool: tuple[dict[int, np.ndarray], np.ndarray], digits: tuple[int, ...], relation: str
) -> Scene:
    """A scene of ``digits`` in reading order, each drawn from ``pool``'s handwriting of that digit."""
    scaled, labels = pool
    size_names = tuple(str(rng.choice(list(SIZES))) for _ in digits)
    sizes = [SIZES[name] for name in size_names]
    along = _row_positions(rng, sizes)
    across = _across_positions(rng, sizes)
    while across is None:
        across = _across_positions(rng, sizes)
    canvas = np.zeros((CANVAS, CANVAS), np.float32)
    boxes = []
    for digit, size, a, b in zip(digits, sizes, along, across, strict=True):
        sample = scaled[size][rng.choice(np.flatnonzero(labels == digit))]
        top, left = (b, a) if relation == "horizontal" else (a, b)
        canvas[top : top + size, left : left + size] = sample
        boxes.append(Box(top, left, size))
    canvas = np.round(canvas * 255) / np.float32(255)  # 8-bit grey levels: a PNG of it is exact
    return Scene(canvas.astype(np.float32), caption_of(digits, size_names, relation), digits, tuple(boxes))


def scenes(split: str, count: int, seed: int = 0) -> list[Scene]:
    """``count`` scenes of ``split`` (one of SPLITS); the same for the same arguments everywhere."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pool = scaled_pool("test" if split == "composition" else split)
    held = held_out_combinations()
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    made: list[Scene] = []
    for digits, relation in _contents(rng, split, held):
        made.append(make_scene(rng, pool, digits, relation))
        if len(made) == count:
            break
    return made


def _contents(
    rng: np.random.Generator, split: str, held: frozenset[tuple[int, int, str]]
) -> Iterator[tuple[tuple[int, ...], str]]:
    """Digits and relation of each scene: held-out combinations only in ``composition`` (which
    has only scenes of two or three digits containing one), never in the other splits."""
    while True:
        relation = str(rng.choice(list(RELATIONS)))
        if split == "composition":
            first, second, relation = sorted(held)[rng.integers(len(held))]
            digits: tuple[int, ...] = (first, second)
            if rng.random() < 1 / 3:
                digits = (*digits, int(rng.integers(10))) if rng.random() < 0.5 else (int(rng.integers(10)), *digits)
            yield digits, relation
            continue
        count = int(rng.integers(1, 4))
        digits = tuple(int(d) for d in rng.integers(0, 10, size=count))
        if not _combinations_of(digits, relation) & held:
            yield digits, relation


def encode_caption(caption: str) -> list[int]:
    """Token ids of ``caption`` followed by <END>."""
    index = {token: i for i, token in enumerate(VOCABULARY)}
    return [index[word] for word in caption.split()] + [index[END]]


def caption_batch(captions: list[str]) -> np.ndarray:
    """``[B, MAX_CAPTION_TOKENS]`` ids: each caption, <END>, then <PAD>."""
    out = np.zeros((len(captions), MAX_CAPTION_TOKENS), np.int64)
    for row, caption in enumerate(captions):
        ids = encode_caption(caption)
        out[row, : len(ids)] = ids
    return out


def is_digit_word(token: str) -> bool:
    return len(token) == 1 and token.isdigit()


def to_png(image: np.ndarray) -> bytes:
    """A scene's image as greyscale PNG bytes (what the served captioner takes)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_scenes(folder: Path, split: str, count: int, seed: int) -> list[str]:
    """Writes ``scene_NNN.png`` and ``scenes.json`` (caption and boxes of each); returns one line per scene."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    lines, index = [], []
    for number, scene in enumerate(scenes(split, count, seed)):
        name = f"scene_{number:03d}.png"
        (folder / name).write_bytes(to_png(scene.image))
        boxes = [
            {"digit": d, "top": b.top, "left": b.left, "size": b.size}
            for d, b in zip(scene.digits, scene.boxes, strict=True)
        ]
        index.append({"file": name, "caption": scene.caption, "boxes": boxes})
        lines.append(f"{folder / name}: {scene.caption}")
    (folder / "scenes.json").write_text(json.dumps(index, indent=1) + "\n")
    return lines
