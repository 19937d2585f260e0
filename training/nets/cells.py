r"""The recurrent zoo, one cell per class, each written from its equations.

A *cell* computes one time step, ``y_t, state_t = cell(x_t, state_{t-1})``, with ``x_t: [B, F]``
and a tuple of ``[B, ...]`` state tensors. :class:`Recurrent` runs one cell forward (or backward)
in time, :class:`Bidirectional` two cells, one each way (it needs the whole sequence, so it
cannot stream), :class:`Stacked` feeds each layer's outputs to the next. The layers follow the
step contract (``forward(x, *state) -> (y, *state_after)``, state batch-leading; a layer's state
is its cells' states in order: forward before backward, bottom layer first).

The parameters carry ``torch.nn.RNN/LSTM/GRU``'s names, shapes, gate order (LSTM ``i, f, g, o``;
GRU ``r, z, n``) and initialisation, ``U(-1/\sqrt{H}, 1/\sqrt{H})``, so weights copy across one
to one and the tests check each cell against PyTorch's kernels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from training.nets.step import StepNet

State = tuple[torch.Tensor, ...]
Nonlinearity = Literal["tanh", "relu"]
OutputActivation = Literal["identity", "tanh", "sigmoid"]


def _check_sizes(owner: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{owner}: {name} must be >= 1, got {value}")


class Cell(nn.Module):
    """One time step of a recurrent network. Subclasses define ``forward`` and the state shapes.

    Attributes:
        input_size: features of ``x_t`` (``F``).
        output_size: features of ``y_t``.
        state_sizes: the width of each state tensor, in the order ``forward`` takes them.
        state_names: a short name of each state tensor (``h``, ``c``, ``y``), in the same order;
            an exported graph names its state inputs after them.
    """

    input_size: int
    output_size: int
    state_sizes: tuple[int, ...]
    state_names: tuple[str, ...]

    def initial_state(
        self, batch: int, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> State:
        """Zeros, as ``torch.nn.RNN/LSTM/GRU`` use when no state is given."""
        dtype = dtype if dtype is not None else next(self.parameters()).dtype
        return tuple(torch.zeros(batch, size, dtype=dtype, device=device) for size in self.state_sizes)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError


class _GatedAffine(Cell):
    r"""The two affine maps every torch-style cell shares: ``W_i x + b_i`` and ``W_h h + b_h``.

    Each holds ``gates`` blocks of ``H`` rows stacked, in PyTorch's order, so one matrix product
    computes all gates' pre-activations.
    """

    def __init__(self, *, input_size: int, hidden_size: int, gates: int, bias: bool) -> None:
        super().__init__()
        _check_sizes(type(self).__name__, input_size=input_size, hidden_size=hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size)) if bias else None
        bound = 1.0 / math.sqrt(hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def input_part(self, x: torch.Tensor) -> torch.Tensor:
        """``W_i x_t + b_i`` for all gates: ``[B, gates * H]``."""
        return nn.functional.linear(x, self.weight_ih, self.bias_ih)

    def hidden_part(self, h: torch.Tensor) -> torch.Tensor:
        """``W_h h_{t-1} + b_h`` for all gates: ``[B, gates * H]``."""
        return nn.functional.linear(h, self.weight_hh, self.bias_hh)


class ElmanCell(_GatedAffine):
    r"""The simple (Elman) recurrent cell, as ``torch.nn.RNN``:

    .. math:: h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}), \quad y_t = h_t

    Args:
        input_size: features of ``x_t``.
        hidden_size: units ``H``.
        nonlinearity: ``\phi``, ``"tanh"`` or ``"relu"``.
        bias: learn ``b_{ih}, b_{hh}`` (else they are zero).
    """

    def __init__(
        self, *, input_size: int, hidden_size: int, nonlinearity: Nonlinearity = "tanh", bias: bool = True
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"ElmanCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size=input_size, hidden_size=hidden_size, gates=1, bias=bias)
        self.nonlinearity = nonlinearity
        self.output_size, self.state_sizes, self.state_names = hidden_size, (hidden_size,), ("h",)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        (h,) = state
        pre = self.input_part(x) + self.hidden_part(h)
        h = (
            torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)
        )  # h_t = φ(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
        return h, (h,)


class JordanCell(Cell):
    r"""The Jordan cell: the hidden layer sees the previous *output*, not its own previous state.

    .. math::

        h_t &= \tanh(W_{ih} x_t + b_{ih} + W_{yh} y_{t-1} + b_{yh}) \\
        y_t &= \psi(W_{hy} h_t + b_{hy})

    The state is ``y_{t-1}`` alone. With ``W_{hy} = I``, ``b_{hy} = 0`` and ``\psi`` the
    identity it is an Elman tanh cell (the tests use that to check it against ``nn.RNN``).

    Args:
        input_size: features of ``x_t``.
        hidden_size: units of ``h_t``.
        output_size: features of ``y_t`` (the fed-back state).
        output_activation: ``\psi``: ``"identity"``, ``"tanh"`` or ``"sigmoid"``.
        bias: learn the biases (else they are zero).
    """

    def __init__(
        self,
        *,
        input_size: int,
        hidden_size: int,
        output_size: int,
        output_activation: OutputActivation = "identity",
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_sizes("JordanCell", input_size=input_size, hidden_size=hidden_size, output_size=output_size)
        if output_activation not in ("identity", "tanh", "sigmoid"):
            raise ValueError(
                f"JordanCell: output_activation must be 'identity', 'tanh' or 'sigmoid', got {output_activation!r}"
            )
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size
        self.state_sizes, self.state_names = (output_size,), ("y",)
        self.output_activation = output_activation
        self.input_to_hidden = nn.Linear(input_size, hidden_size, bias=bias)
        self.output_to_hidden = nn.Linear(output_size, hidden_size, bias=bias)
        self.hidden_to_output = nn.Linear(hidden_size, output_size, bias=bias)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        (y_prev,) = state
        h = torch.tanh(
            self.input_to_hidden(x) + self.output_to_hidden(y_prev)
        )  # h_t = tanh(W_ih x_t + b_ih + W_yh y_{t-1} + b_yh)
        a = self.hidden_to_output(h)  # W_hy h_t + b_hy
        y = (
            a
            if self.output_activation == "identity"
            else torch.tanh(a)
            if self.output_activation == "tanh"
            else torch.sigmoid(a)
        )  # y_t = ψ(...)
        return y, (y,)


class LSTMCell(_GatedAffine):
    r"""Long short-term memory (Hochreiter & Schmidhuber 1997, with the forget gate), as ``nn.LSTM``:

    .. math::

        i_t &= \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t &= \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t &= \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t &= \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t &= o_t \odot \tanh(c_t), \quad y_t = h_t

    State ``(h, c)``. ``∂c_t/∂c_{t-1} = diag(f_t)`` (plus terms through the gates): the cell
    path is scaled by the forget gate instead of a repeated matrix product.

    Args:
        input_size: features of ``x_t``.
        hidden_size: units ``H``.
        bias: learn the biases (else they are zero).
        forget_bias: added to ``b_{if}`` after initialisation (1.0 is Jozefowicz et al. 2015's
            choice; 0.0 keeps PyTorch's initialisation).
    """

    def __init__(self, *, input_size: int, hidden_size: int, bias: bool = True, forget_bias: float = 0.0) -> None:
        super().__init__(input_size=input_size, hidden_size=hidden_size, gates=4, bias=bias)
        if forget_bias != 0.0 and self.bias_ih is None:
            raise ValueError("LSTMCell: forget_bias needs bias=True")
        if self.bias_ih is not None:
            with torch.no_grad():
                self.bias_ih[hidden_size : 2 * hidden_size] += forget_bias
        self.output_size, self.state_sizes, self.state_names = hidden_size, (hidden_size, hidden_size), ("h", "c")

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c = state
        i, f, g, o = (self.input_part(x) + self.hidden_part(h)).chunk(4, dim=-1)
        i = torch.sigmoid(i)  # i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
        f = torch.sigmoid(f)  # f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
        g = torch.tanh(g)  # g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        o = torch.sigmoid(o)  # o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
        c = f * c + i * g  # c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h = o * torch.tanh(c)  # h_t = o_t ⊙ tanh(c_t)
        return h, (h, c)


class GRUCell(_GatedAffine):
    r"""Gated recurrent unit (Cho et al. 2014), as ``nn.GRU`` (the reset gate applies after ``W_{hn}``):

    .. math::

        r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}, \quad y_t = h_t

    Args:
        input_size: features of ``x_t``.
        hidden_size: units ``H``.
        bias: learn the biases (else they are zero).
    """

    def __init__(self, *, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__(input_size=input_size, hidden_size=hidden_size, gates=3, bias=bias)
        self.output_size, self.state_sizes, self.state_names = hidden_size, (hidden_size,), ("h",)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        (h,) = state
        xr, xz, xn = self.input_part(x).chunk(3, dim=-1)
        hr, hz, hn = self.hidden_part(h).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)  # r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z = torch.sigmoid(xz + hz)  # z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n = torch.tanh(xn + r * hn)  # n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
        h = (1 - z) * n + z * h  # h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}
        return h, (h,)


class SequenceLayer(StepNet):
    """A layer over sequences ``[B, T, F] -> [B, T, output_size]`` with a flat tuple of state tensors."""

    input_size: int
    output_size: int

    def initial_state(
        self, batch: int, device: torch.device | str | None = None, *, dtype: torch.dtype | None = None
    ) -> State:
        raise NotImplementedError

    def run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """``forward`` with the state as one tuple: ``(y, state_after)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The step contract: ``(y, *state_after)`` from ``x: [B, T, F]`` and the state before it."""
        y, after = self.run(x, tuple(state))
        return (y, *after)


class Recurrent(SequenceLayer):
    """Runs a cell over a sequence: ``y_t, s_t = cell(x_t, s_{t-1})`` for t = 1..T (or T..1 when ``reverse``).

    Args:
        cell: the step.
        reverse: run from the last step to the first (the backward half of a bidirectional layer;
            ``y`` is still returned in input order).
    """

    def __init__(self, cell: Cell, *, reverse: bool = False) -> None:
        super().__init__()
        self.cell, self.reverse = cell, reverse
        self.input_size, self.output_size = cell.input_size, cell.output_size
        self.state_count = len(cell.state_sizes)

    def initial_state(
        self, batch: int, device: torch.device | str | None = None, *, dtype: torch.dtype | None = None
    ) -> State:
        return self.cell.initial_state(batch, dtype=dtype, device=device)

    def run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"Recurrent: x must be [B, T, {self.input_size}], got {list(x.shape)}")
        if len(state) != self.state_count:
            raise ValueError(f"Recurrent: the cell takes {self.state_count} state tensors, got {len(state)}")
        steps = range(x.shape[1] - 1, -1, -1) if self.reverse else range(x.shape[1])
        outputs: list[torch.Tensor] = []
        for t in steps:
            y, state = self.cell(x[:, t], state)
            outputs.append(y)
        if self.reverse:
            outputs.reverse()
        return torch.stack(outputs, dim=1), state


class Bidirectional(SequenceLayer):
    r"""Two cells over the whole sequence, one forward and one backward: ``y_t = [\overrightarrow{h}_t ; \overleftarrow{h}_t]``.

    ``\overleftarrow{h}_t`` depends on ``x_t .. x_T``, so the layer needs the whole sequence and
    cannot stream. The state is the forward cell's state followed by the backward cell's; the
    backward cell's "final" state is the one after reading ``x_1``.
    """

    def __init__(self, forward_cell: Cell, backward_cell: Cell) -> None:
        super().__init__()
        if forward_cell.input_size != backward_cell.input_size:
            raise ValueError(
                f"Bidirectional: the cells read different inputs ({forward_cell.input_size} and {backward_cell.input_size} features)"
            )
        self.forward_layer = Recurrent(forward_cell)
        self.backward_layer = Recurrent(backward_cell, reverse=True)
        self.input_size = forward_cell.input_size
        self.output_size = forward_cell.output_size + backward_cell.output_size

    def initial_state(
        self, batch: int, device: torch.device | str | None = None, *, dtype: torch.dtype | None = None
    ) -> State:
        return self.forward_layer.initial_state(batch, device, dtype=dtype) + self.backward_layer.initial_state(
            batch, device, dtype=dtype
        )

    def run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        split = self.forward_layer.state_count
        y_forward, state_forward = self.forward_layer.run(x, state[:split])
        y_backward, state_backward = self.backward_layer.run(x, state[split:])
        return torch.cat([y_forward, y_backward], dim=-1), state_forward + state_backward


class Stacked(SequenceLayer):
    """A deep RNN: layer ``l`` reads the outputs of layer ``l - 1``; the state is every layer's, bottom first.

    Args:
        layers: the layers, bottom first; each must read what the one below writes.
    """

    def __init__(self, layers: Sequence[Recurrent | Bidirectional]) -> None:
        super().__init__()
        if not layers:
            raise ValueError("Stacked: needs at least one layer")
        for below, above in itertools.pairwise(layers):
            if above.input_size != below.output_size:
                raise ValueError(
                    f"Stacked: a layer reads {above.input_size} features but the one below writes {below.output_size}"
                )
        self.layers = nn.ModuleList(layers)
        self.input_size, self.output_size = layers[0].input_size, layers[-1].output_size
        self._counts = [len(layer.initial_state(1)) for layer in layers]

    def initial_state(
        self, batch: int, device: torch.device | str | None = None, *, dtype: torch.dtype | None = None
    ) -> State:
        state: State = ()
        for layer in self.layers:
            assert isinstance(layer, SequenceLayer)
            state += layer.initial_state(batch, device, dtype=dtype)
        return state

    def run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if len(state) != sum(self._counts):
            raise ValueError(f"Stacked: expected {sum(self._counts)} state tensors, got {len(state)}")
        after: State = ()
        start = 0
        for layer, count in zip(self.layers, self._counts, strict=True):
            assert isinstance(layer, SequenceLayer)
            x, layer_after = layer.run(x, state[start : start + count])
            after += layer_after
            start += count
        return x, after
