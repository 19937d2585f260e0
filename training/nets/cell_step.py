"""The streaming form of the zoo's cells: a unidirectional cell stack with a linear readout.

A served streaming model is a step function ``(x_t, state_{t-1}) -> (y_t, state_t)``
(DESIGN.md, "The one contract"). :class:`CellStepNet` is that function for any stack of the
cells in :mod:`training.nets.cells` (Elman tanh/ReLU, Jordan, LSTM, GRU): the cells run bottom
first, and an optional linear readout maps the top layer's output to the model's output
(class logits, a forecast). ``training.cell_export`` exports it as a one-step graph.

Only forward-in-time layers stream: a bidirectional layer needs the future, so it is refused
here (``training.nets.sequence_classifier`` serves one as a whole-sequence call instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

from training.nets.cells import Cell, ElmanCell, GRUCell, JordanCell, LSTMCell, Recurrent, Stacked, State
from training.nets.step import StepNet

CellKind = Literal["elman_tanh", "elman_relu", "jordan", "lstm", "gru"]
CELL_KINDS: tuple[str, ...] = get_args(CellKind)


def make_cell(kind: str, *, input_size: int, hidden_size: int) -> Cell:
    """One zoo cell by name; a Jordan cell feeds back an output as wide as its hidden layer."""
    if kind == "elman_tanh":
        return ElmanCell(input_size=input_size, hidden_size=hidden_size, nonlinearity="tanh")
    if kind == "elman_relu":
        return ElmanCell(input_size=input_size, hidden_size=hidden_size, nonlinearity="relu")
    if kind == "jordan":
        return JordanCell(
            input_size=input_size, hidden_size=hidden_size, output_size=hidden_size, output_activation="tanh"
        )
    if kind == "lstm":
        return LSTMCell(input_size=input_size, hidden_size=hidden_size)
    if kind == "gru":
        return GRUCell(input_size=input_size, hidden_size=hidden_size)
    raise ValueError(f"cell kind must be one of {CELL_KINDS}, got {kind!r}")


class CellStepNet(StepNet):
    r"""Cells stacked bottom first, then ``y_t = W_o h^{(L)}_t + b_o`` (or ``h^{(L)}_t`` without readout).

    ``forward(x, *state)``: ``x [B, T, input_size]`` and the state of every layer, bottom layer
    first, each cell's tensors in its ``state_names`` order; returns ``(y [B, T, output_size],
    *state_after)``. :attr:`state_names` names each state tensor (``h0``, ``c0``, ``h1``...: the
    cell's name for it and the layer's index), which the exported graph uses.

    Args:
        layers: forward-in-time layers, bottom first; each reads what the one below writes.
        readout_size: width of the linear readout; ``None`` returns the top layer's output.
        input_mean, input_std: ``[input_size]``; when given, the net reads
            ``(x - input_mean) / input_std``, so the normalisation of the training data travels
            inside the exported graph and a client sends raw values.
    """

    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(
        self,
        layers: Sequence[Recurrent],
        *,
        readout_size: int | None = None,
        input_mean: torch.Tensor | None = None,
        input_std: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if any(not isinstance(layer, Recurrent) or layer.reverse for layer in layers):
            raise ValueError(
                "CellStepNet: every layer must be a forward-in-time Recurrent layer (a stream has no future)"
            )
        self.body = Stacked(layers)
        self.readout = nn.Linear(self.body.output_size, readout_size) if readout_size is not None else None
        self.input_size = self.body.input_size
        self.output_size = readout_size if readout_size is not None else self.body.output_size
        self.state_names = tuple(
            f"{name}{index}" for index, layer in enumerate(layers) for name in layer.cell.state_names
        )
        self.state_sizes = tuple(size for layer in layers for size in layer.cell.state_sizes)
        shape = (self.input_size,)
        self.register_buffer(
            "input_mean", torch.zeros(shape) if input_mean is None else input_mean.reshape(shape).float()
        )
        self.register_buffer("input_std", torch.ones(shape) if input_std is None else input_std.reshape(shape).float())

    @classmethod
    def build(
        cls,
        kind: str,
        *,
        input_size: int,
        hidden_size: int,
        layers: int = 1,
        readout_size: int | None = None,
        input_mean: torch.Tensor | None = None,
        input_std: torch.Tensor | None = None,
    ) -> CellStepNet:
        """``layers`` cells of one kind, ``hidden_size`` units each, with an optional readout and normalisation."""
        if layers < 1:
            raise ValueError(f"CellStepNet: layers must be >= 1, got {layers}")
        cells = [
            make_cell(kind, input_size=input_size if index == 0 else hidden_size, hidden_size=hidden_size)
            for index in range(layers)
        ]
        return cls(
            [Recurrent(cell) for cell in cells], readout_size=readout_size, input_mean=input_mean, input_std=input_std
        )

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """Zeros: the server's ``init: zeros``."""
        return self.body.initial_state(batch, device)

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, after = self.body.run((x - self.input_mean) / self.input_std, tuple(state))
        if self.readout is not None:
            y = self.readout(y)
        return (y, *after)
