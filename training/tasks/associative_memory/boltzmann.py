"""Boltzmann machines: stochastic binary units that sample from ``P(s) ∝ exp(-E(s) / T)``."""

from __future__ import annotations

import torch
from torch import nn

from training.tasks.associative_memory.sweep import SweepNet

#: Temperatures below this are raised to it inside a sweep, so ``z / T`` stays finite (T = 0 is a
#: greedy descent in the limit; 1e-4 is already one for any |z| > 1e-2).
MIN_TEMPERATURE = 1e-4


def _bernoulli(probability: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """A draw of ``s = 1`` with the given probability from given uniform numbers: ``s = [u < p]``."""
    return (uniform < probability).to(probability.dtype)


class BoltzmannMachine(SweepNet):
    r"""A general Boltzmann machine of ``N`` binary units ``s_i \in \{0, 1\}``.

    .. math::  E(s) = -\tfrac{1}{2} s^\top W s - b^\top s, \qquad
               P(s) = \frac{\exp(-E(s) / T)}{Z}

    ``W`` symmetric with a zero diagonal. Unit ``i``, given all the others, is on with

    .. math::  P(s_i = 1 \mid s_{\setminus i}) = \sigma(z_i / T), \qquad z_i = \sum_j w_{ij} s_j + b_i
               = E(s_i{=}0) - E(s_i{=}1)

    A sweep is one systematic-scan Gibbs pass: units ``0 .. N-1`` in turn, each redrawn from
    that conditional with the uniform ``noise[i]`` (``s_i = [u_i < \sigma(z_i / T)]``). At high
    ``T`` the chain wanders; lowering ``T`` slowly (simulated annealing) lets it settle into a
    low-energy state, which is how a cost written as ``E`` is minimised. Clamped units keep
    their values.

    Args:
        units: number of units ``N``.
    """

    stochastic = True
    bipolar = False

    def __init__(self, *, units: int) -> None:
        super().__init__()
        if units < 2:
            raise ValueError(f"BoltzmannMachine: units must be >= 2, got {units}")
        self.units = self.noise_units = units
        self.weight: torch.Tensor
        self.bias: torch.Tensor
        self.register_buffer("weight", torch.zeros(units, units))
        self.register_buffer("bias", torch.zeros(units))

    @classmethod
    def from_energy(cls, *, weight: torch.Tensor, bias: torch.Tensor) -> BoltzmannMachine:
        """A machine with the given couplings; ``weight`` must be symmetric with a zero diagonal."""
        if weight.ndim != 2 or weight.shape[0] != weight.shape[1] or bias.shape != (weight.shape[0],):
            raise ValueError(f"BoltzmannMachine: weight [N, N] and bias [N] expected, got {weight.shape}, {bias.shape}")
        if not torch.equal(weight, weight.T) or bool(weight.diagonal().ne(0).any()):
            raise ValueError("BoltzmannMachine: weight must be symmetric with a zero diagonal")
        net = cls(units=weight.shape[0])
        net.weight.copy_(weight)
        net.bias.copy_(bias)
        return net

    def energy(self, pattern: torch.Tensor) -> torch.Tensor:
        r"""``E(s) = -\tfrac{1}{2} s^\top W s - b^\top s`` of each row of ``pattern [B, N]``, ``[B]``."""
        return -0.5 * ((pattern @ self.weight.T) * pattern).sum(dim=1) - pattern @ self.bias

    def sweep(
        self,
        pattern: torch.Tensor,
        clamp_mask: torch.Tensor,
        clamp_values: torch.Tensor,
        noise: torch.Tensor | None,
        temperature: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One Gibbs sweep at ``temperature [B]``: ``(new_pattern [B, N], energy [B], changed [B])``."""
        if temperature is None or noise is None:
            raise ValueError("BoltzmannMachine: a sweep needs noise and a temperature")
        t = temperature.clamp(min=MIN_TEMPERATURE).unsqueeze(1)  # [B, 1]
        s0 = self.start(pattern, clamp_mask, clamp_values)
        free = clamp_mask <= 0
        s = s0
        for i in range(self.units):
            z = s @ self.weight[i : i + 1].T + self.bias[i]  # z_i = sum_j w_ij s_j + b_i: [B, 1]
            drawn = _bernoulli(torch.sigmoid(z / t), noise[:, i : i + 1])  # s_i ~ P(s_i = 1 | rest) = sigma(z_i / T)
            s = torch.cat([s[:, :i], torch.where(free[:, i : i + 1], drawn, s[:, i : i + 1]), s[:, i + 1 :]], dim=1)
        changed = (s != s0).sum(dim=1).to(s.dtype)
        return s, self.energy(s), changed


class RBM(SweepNet):
    r"""A restricted Boltzmann machine: binary visible ``v [V]`` and hidden ``h [H]`` units, no links within a layer.

    .. math::  E(v, h) = -a^\top v - b^\top h - v^\top W h

    Because each layer is independent given the other, a whole layer is drawn at once:

    .. math::  P(h_j = 1 \mid v) = \sigma\big((b_j + \textstyle\sum_i v_i w_{ij}) / T\big), \qquad
               P(v_i = 1 \mid h) = \sigma\big((a_i + \textstyle\sum_j w_{ij} h_j) / T\big)

    Summing ``h`` out gives the free energy of a visible pattern (at ``T = 1``),

    .. math::  F(v) = -a^\top v - \sum_j \log\big(1 + \exp(b_j + v^\top W_{:j})\big),
               \qquad P(v) \propto \exp(-F(v))

    which is the sweep's ``energy``. The state is the visible layer ``v [B, V]``; one sweep is
    one block-Gibbs step ``v -> h -> v`` with known pixels clamped, its randomness the input
    ``noise [B, V + H]`` (the first ``V`` numbers draw ``v``, the last ``H`` draw ``h``).

    Args:
        visible: number of visible units ``V`` (pixels).
        hidden: number of hidden units ``H`` (features).
    """

    stochastic = True
    bipolar = False

    def __init__(self, *, visible: int, hidden: int) -> None:
        super().__init__()
        if visible < 1 or hidden < 1:
            raise ValueError(f"RBM: visible and hidden must be >= 1, got {visible}, {hidden}")
        self.visible, self.hidden = visible, hidden
        self.units, self.noise_units = visible, visible + hidden
        self.weight = nn.Parameter(torch.zeros(visible, hidden))  # W
        self.visible_bias = nn.Parameter(torch.zeros(visible))  # a
        self.hidden_bias = nn.Parameter(torch.zeros(hidden))  # b

    def hidden_probability(self, v: torch.Tensor, temperature: torch.Tensor | float = 1.0) -> torch.Tensor:
        """``P(h_j = 1 | v) = sigma((b_j + sum_i v_i w_ij) / T)``, ``[B, H]``."""
        return torch.sigmoid((v @ self.weight + self.hidden_bias) / temperature)

    def visible_probability(self, h: torch.Tensor, temperature: torch.Tensor | float = 1.0) -> torch.Tensor:
        """``P(v_i = 1 | h) = sigma((a_i + sum_j w_ij h_j) / T)``, ``[B, V]``."""
        return torch.sigmoid((h @ self.weight.T + self.visible_bias) / temperature)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """``F(v) = -a.v - sum_j softplus(b_j + v.W_j)``, ``[B]``."""
        return -(v @ self.visible_bias) - nn.functional.softplus(v @ self.weight + self.hidden_bias).sum(dim=1)

    def sweep(
        self,
        pattern: torch.Tensor,
        clamp_mask: torch.Tensor,
        clamp_values: torch.Tensor,
        noise: torch.Tensor | None,
        temperature: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One Gibbs step ``v -> h -> v``: ``(new_visible [B, V], free_energy [B], changed [B])``."""
        if temperature is None or noise is None:
            raise ValueError("RBM: a sweep needs noise and a temperature")
        t = temperature.clamp(min=MIN_TEMPERATURE).unsqueeze(1)
        v0 = self.start(pattern, clamp_mask, clamp_values)
        h = _bernoulli(self.hidden_probability(v0, t), noise[:, self.visible :])  # h ~ P(h | v)
        v = _bernoulli(self.visible_probability(h, t), noise[:, : self.visible])  # v ~ P(v | h)
        v = torch.where(clamp_mask > 0, v0, v)  # known pixels stay
        changed = (v != v0).sum(dim=1).to(v.dtype)
        return v, self.free_energy(v), changed
