"""The base class of associative memories served as step functions: one step is one update sweep.

The state is the current pattern, ``pattern: [batch, units]``. Each step reads ``clamp_mask``
(1 where a unit is known and held at ``clamp_values``), ``clamp_values``, and for the nets that
draw, ``noise`` (uniform numbers the server draws from the session's seeded generator: the graph
holds no random generator, so a seeded session is reproducible whatever its batch-mates) and
``temperature``; it writes ``energy`` and ``changed``. A new session's state is all zeros; for
bipolar units a zero means "not set yet" and takes ``clamp_values`` before the sweep, which is how
the first call loads a noisy or partial probe. :class:`SweepNet` says each input's shape.
"""

from __future__ import annotations

import torch

from training.nets.step import StepNet


class SweepNet(StepNet):
    """An associative memory whose ``forward`` runs one update sweep per time step.

    Per-step inputs, ``[batch, time, ...]`` (the step contract of ``service/contract.py``):

    * ``clamp_mask [N]``: 1 where the unit is known and held at ``clamp_values``, 0 where it is free;
    * ``clamp_values [N]``: the values of the known units (ignored where the mask is 0, except to
      start a fresh session);
    * ``noise [noise_units]`` (nets with ``noise_units > 0``): uniform ``[0, 1)`` numbers: the
      asynchronous update order of a Hopfield net, the Gibbs draws of a Boltzmann machine;
    * ``temperature []`` (stochastic nets only): ``T`` in ``P(s_i = 1) = sigma(z_i / T)``;

    and per-step outputs ``energy []`` and ``changed []`` (units whose value the sweep changed).

    Subclasses set ``units``, ``noise_units`` (0 for a deterministic sweep, which then takes no
    noise input: an exporter drops unused graph inputs), ``stochastic`` and ``bipolar`` and
    implement :meth:`sweep`; ``forward`` is the step-contract wrapper shared by all of them.
    """

    units: int
    noise_units: int
    stochastic: bool
    bipolar: bool

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        """All units unset (zeros), the server's ``init: zeros``."""
        return (torch.zeros((batch, self.units), device=device),)

    def start(self, pattern: torch.Tensor, clamp_mask: torch.Tensor, clamp_values: torch.Tensor) -> torch.Tensor:
        """The pattern a sweep starts from: clamped units take their values; so do unset (zero) bipolar units."""
        take = clamp_mask > 0
        if self.bipolar:
            take = take | (pattern == 0)
        return torch.where(take, clamp_values, pattern)

    def sweep(
        self,
        pattern: torch.Tensor,
        clamp_mask: torch.Tensor,
        clamp_values: torch.Tensor,
        noise: torch.Tensor | None,
        temperature: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One sweep of every row: ``pattern [B, N] -> (new_pattern [B, N], energy [B], changed [B])``."""
        raise NotImplementedError

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step contract: ``(clamp_mask, clamp_values[, noise][, temperature], pattern_in)``.

        ``noise`` is an input only when ``noise_units > 0``, ``temperature`` only for a
        stochastic net. Per-step inputs are ``[B, T, ...]``; the state ``pattern_in`` is
        ``[B, N]``. Returns ``(energy [B, T], changed [B, T], pattern_out [B, N])``, ``T``
        sweeps run in order.
        """
        expected = 3 + (self.noise_units > 0) + self.stochastic
        if len(tensors) != expected:
            raise TypeError(f"{type(self).__name__}.forward takes {expected} tensors, got {len(tensors)}")
        clamp_mask, clamp_values, pattern = tensors[0], tensors[1], tensors[-1]
        noise = tensors[2] if self.noise_units > 0 else None
        temperature = tensors[-2] if self.stochastic else None
        energies, changes = [], []
        for t in range(clamp_mask.shape[1]):
            pattern, energy, changed = self.sweep(
                pattern,
                clamp_mask[:, t],
                clamp_values[:, t],
                None if noise is None else noise[:, t],
                None if temperature is None else temperature[:, t],
            )
            energies.append(energy)
            changes.append(changed)
        return torch.stack(energies, dim=1), torch.stack(changes, dim=1), pattern
