"""Choosing the next token from logits: greedy, temperature, top-k; seeded and reproducible."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidArgument


@dataclass(frozen=True)
class Sampler:
    """``temperature == 0`` is greedy; otherwise p_i ∝ exp(z_i / T) over the top_k logits (0 = all)."""

    temperature: float
    top_k: int
    vocabulary_size: int

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidArgument(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0 or self.top_k > self.vocabulary_size:
            raise InvalidArgument(f"top_k must be in 0..{self.vocabulary_size}, got {self.top_k}")

    def distribution(self, logits: np.ndarray) -> np.ndarray:
        """The probabilities the next token is drawn from."""
        z = logits.astype(np.float64)
        if self.temperature == 0:
            probs = np.zeros_like(z)
            probs[int(np.argmax(z))] = 1.0
            return probs
        z = z / self.temperature
        if self.top_k:
            cutoff = np.partition(z, -self.top_k)[-self.top_k]
            z = np.where(z >= cutoff, z, -np.inf)
        z -= z.max()
        probs = np.exp(z)
        return probs / probs.sum()  # type: ignore[no-any-return]

    def sample(self, logits: np.ndarray, rng: np.random.Generator) -> tuple[int, float]:
        """Draws one token id; returns it with its probability under the distribution."""
        probs = self.distribution(logits)
        if self.temperature == 0:
            token = int(np.argmax(probs))
        else:
            cumulative = np.cumsum(probs)
            token = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
            token = min(token, len(probs) - 1)
        return token, float(probs[token])
