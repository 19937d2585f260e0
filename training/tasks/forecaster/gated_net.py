r"""A gated recurrent forecaster: a GRU or LSTM stack that predicts the next observation's change.

With ``u_t`` the observation, normalised as ``ũ_t = (u_t − μ) / σ`` (μ, σ: the training part's)::

    h_t = cells(ũ_t, h_{t−1})                   one or more GRU / LSTM layers (training.nets.cells)
    ỹ_t = ũ_t + W_o h_t + b_o                   the readout predicts the *change* (a residual)
    y_t = μ + σ ỹ_t                             in the series' units; y_t predicts u_{t+1}

Predicting the change rather than the value matters for a smooth series sampled finely: the
next value is mostly the current one, and a network asked for the whole value spends its
precision on repeating it. The cells are the zoo's own (checked against ``torch.nn`` in
``tests/test_cells.py``); only the readout's residual and the normalisation are added here, so
the exported graph takes and returns raw values like the echo state networks' do.
"""

from __future__ import annotations

import torch

from training.nets.cell_step import CellStepNet
from training.nets.step import StepNet
from training.tasks.forecaster.recipe import GATED_NETS


class GatedForecaster(StepNet):
    """The forecaster of the module docstring; ``forward(u [B, T, 1], *state)`` like every step net."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, kind: str, *, hidden: int, layers: int = 1, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        if kind not in GATED_NETS:
            raise ValueError(f"a gated forecaster's cell must be one of {GATED_NETS}, got {kind!r}")
        self.stack = CellStepNet.build(kind, input_size=1, hidden_size=hidden, layers=layers, readout_size=1)
        self.register_buffer("mean", torch.tensor([mean], dtype=torch.float32))
        self.register_buffer("std", torch.tensor([std], dtype=torch.float32))
        self.state_names = self.stack.state_names
        self.state_sizes = self.stack.state_sizes

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        return tuple(self.stack.initial_state(batch, device))

    def forward(self, u: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        normalised = (u - self.mean) / self.std
        change, *after = self.stack(normalised, *state)
        return (self.mean + self.std * (normalised + change), *after)
