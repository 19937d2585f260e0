"""The modern (dense) Hopfield memory of Ramsauer et al. 2020, "Hopfield Networks is All You Need"."""

from __future__ import annotations

import math

import numpy as np
import torch

from training.tasks.associative_memory.sweep import SweepNet


class DenseHopfield(SweepNet):
    r"""A continuous Hopfield memory with exponential interactions over stored patterns ``X [N, P]``.

    The stored patterns are the columns ``x_1 .. x_P`` of ``X``. The energy of a state ``\xi`` is

    .. math::  E(\xi) = -\beta^{-1} \log \sum_{\mu=1}^{P} \exp(\beta x_\mu^\top \xi)
               + \tfrac{1}{2} \xi^\top \xi + \beta^{-1} \log P + \tfrac{1}{2} M^2,
               \qquad M = \max_\mu \lVert x_\mu \rVert

    and one update (a CCCP step that never raises ``E``) is

    .. math::  \xi \leftarrow X \operatorname{softmax}(\beta X^\top \xi)

    The softmax picks out the stored patterns most similar to ``\xi``; with ``\beta`` large enough
    for the patterns to be well separated, one update lands on (almost exactly) the nearest
    one. Storage grows exponentially with ``N`` rather than linearly, so far more than ``N``
    patterns can be held.

    The state is continuous; ``changed`` counts the units whose **sign** the update changed
    (the bipolar read-out), so a fixed point is a sweep with ``changed = 0``. The update is
    synchronous and deterministic, so the graph takes no ``noise`` input. Clamped units keep
    their values.

    Args:
        patterns: the stored patterns as rows, ``[P, N]`` (bipolar here, but any reals work).
        beta: inverse temperature ``\beta > 0`` of the softmax.
    """

    stochastic = False
    bipolar = True

    def __init__(self, *, patterns: np.ndarray, beta: float) -> None:
        super().__init__()
        xi = np.asarray(patterns, dtype=np.float32)
        if xi.ndim != 2 or xi.shape[0] < 1 or xi.shape[1] < 1:
            raise ValueError(f"DenseHopfield: patterns must be a non-empty [P, N] array, got shape {xi.shape}")
        if not beta > 0.0 or not math.isfinite(beta):
            raise ValueError(f"DenseHopfield: beta must be a positive finite number, got {beta}")
        self.memories, self.units = xi.shape
        self.noise_units = 0
        self.beta = float(beta)
        self.stored: torch.Tensor
        self.register_buffer("stored", torch.from_numpy(xi.T.copy()))  # X: [N, P], one pattern per column
        norm = float(np.linalg.norm(xi, axis=1).max())
        self.constant = math.log(self.memories) / self.beta + 0.5 * norm**2  # beta^-1 log P + M^2 / 2

    def energy(self, pattern: torch.Tensor) -> torch.Tensor:
        r"""The lse-energy ``E(\xi)`` above of each row of ``pattern [B, N]``, ``[B]``."""
        # beta^-1 log sum_mu exp(beta x_mu^T xi)
        lse = torch.logsumexp(self.beta * (pattern @ self.stored), dim=1) / self.beta
        return -lse + 0.5 * (pattern * pattern).sum(dim=1) + self.constant

    def sweep(
        self,
        pattern: torch.Tensor,
        clamp_mask: torch.Tensor,
        clamp_values: torch.Tensor,
        noise: torch.Tensor | None,
        temperature: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One update: ``pattern [B, N] -> (new_pattern [B, N], energy [B], changed [B])``."""
        if temperature is not None:
            raise ValueError("DenseHopfield: a deterministic net takes no temperature")
        xi = self.start(pattern, clamp_mask, clamp_values)
        attention = torch.softmax(self.beta * (xi @ self.stored), dim=1)  # softmax(beta X^T xi): [B, P]
        new = attention @ self.stored.T  # X softmax(...): [B, N]
        new = torch.where(clamp_mask > 0, xi, new)
        changed = (torch.sign(new) != torch.sign(xi)).sum(dim=1).to(new.dtype)
        return new, self.energy(new), changed
