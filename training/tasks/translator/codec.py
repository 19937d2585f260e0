"""The translator's texts <-> ids, and greedy decoding with any decoder step (PyTorch or ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.tasks.translator import dates

PAD, START, END = "<pad>", "<start>", "<end>"
TARGET_TOKENS = (START, END, "-", *"0123456789")
TARGET_STEPS = len("2026-11-27") + 1  # the ISO date, then END


class UnknownCharacter(ValueError):
    """A source text holds a character the translator was not built for."""


@dataclass(frozen=True)
class Codec:
    """Texts <-> id arrays. Source id 0 is padding; sources are padded to ``max_length``."""

    source: tuple[str, ...]
    target: tuple[str, ...] = TARGET_TOKENS
    max_length: int = dates.MAX_INPUT_CHARS

    @classmethod
    def for_dates(cls) -> Codec:
        return cls(source=(PAD, *dates.alphabet(dates.all_templates())))

    def encode_sources(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [N, L] int64, mask [N, L] float32)``; UnknownCharacter / ValueError on bad text."""
        index = {ch: i for i, ch in enumerate(self.source) if i > 0}
        ids = np.zeros((len(texts), self.max_length), np.int64)
        for row, text in enumerate(texts):
            if not 0 < len(text) <= self.max_length:
                raise ValueError(f"text of {len(text)} characters: must be 1..{self.max_length}")
            unknown = sorted({ch for ch in text if ch not in index})
            if unknown:
                raise UnknownCharacter(f"characters {unknown} are not in the vocabulary")
            ids[row, : len(text)] = [index[ch] for ch in text]
        return ids, (ids != 0).astype(np.float32)

    def encode_targets(self, isos: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(previous, targets)``, each ``[N, TARGET_STEPS]``: targets are the ISO characters
        then END; previous is START then the targets shifted by one (teacher forcing)."""
        index = {tok: i for i, tok in enumerate(self.target)}
        targets = np.array([[index[ch] for ch in iso] + [index[END]] for iso in isos], np.int64)
        previous = np.concatenate([np.full((len(isos), 1), index[START]), targets[:, :-1]], axis=1)
        return previous, targets

    def decode_target(self, ids: Sequence[int]) -> str:
        """Token ids to text, up to the first END."""
        out = []
        for i in ids:
            token = self.target[int(i)]
            if token == END:
                break
            out.append(token if len(token) == 1 else "")
        return "".join(out)


#: One decoder step on numpy arrays: ``(previous ids [B], state) -> (logits [B, V], weights [B, L], state)``.
DecoderStep = Callable[[np.ndarray, Any], tuple[np.ndarray, np.ndarray, Any]]


def greedy_decode(
    step: DecoderStep, state: Any, *, batch: int, start_id: int, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Feeds each step's most likely token to the next; returns ``(tokens [B, steps], weights [B, steps, L])``.

    Every row runs all ``steps`` (rows that ended keep decoding; the caller cuts at END), so a
    batch is one call per step for ONNX Runtime and PyTorch alike."""
    previous = np.full(batch, start_id, np.int64)
    tokens, weights = [], []
    for _ in range(steps):
        logits, attention, state = step(previous, state)
        previous = logits.argmax(axis=-1).astype(np.int64)
        tokens.append(previous)
        weights.append(attention)
    return np.stack(tokens, axis=1), np.stack(weights, axis=1)


def exact_match(predicted: Sequence[str], expected: Sequence[str]) -> float:
    return float(np.mean([p == e for p, e in zip(predicted, expected, strict=True)]))
