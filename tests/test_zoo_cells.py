"""The zoo's cells against their equations as PyTorch implements them, with the same weights.

Tolerance: 1e-6 max abs difference over a whole sequence (the issue's bar). The comparisons run
in float64: both sides compute the same equations and differ only in the order of floating-point
sums, which in float64 is ~1e-15 per step; in float32 the same rounding is ~1e-7 per step and
grows over a sequence, which would test float32 rather than the equations.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from training.nets.cells import (
    Bidirectional,
    Cell,
    ElmanCell,
    GRUCell,
    JordanCell,
    LSTMCell,
    Recurrent,
    Stacked,
)

TOLERANCE = 1e-6
BATCH, STEPS, FEATURES, HIDDEN = 3, 17, 5, 7


@pytest.fixture(autouse=True)
def _forward_only() -> Iterator[None]:
    """These tests compare forward values only (the backward pass is tested in test_zoo_bptt.py)."""
    with torch.no_grad():
        yield


def _copy_from_torch(cell: Cell, reference: nn.RNNBase, layer: int, suffix: str = "") -> None:
    """Copies layer ``layer`` (direction ``suffix``) of a torch RNN into a zoo cell: the names match."""
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(reference, f"{name}_l{layer}{suffix}"))


def _make_cell(kind: str, input_size: int) -> Cell:
    if kind == "lstm":
        return LSTMCell(input_size=input_size, hidden_size=HIDDEN)
    if kind == "gru":
        return GRUCell(input_size=input_size, hidden_size=HIDDEN)
    return ElmanCell(input_size=input_size, hidden_size=HIDDEN, nonlinearity="relu" if kind == "relu" else "tanh")


def _make_reference(kind: str, *, layers: int = 1, bidirectional: bool = False) -> nn.RNNBase:
    common = {"num_layers": layers, "bidirectional": bidirectional, "batch_first": True}
    if kind == "lstm":
        return nn.LSTM(FEATURES, HIDDEN, **common).double()
    if kind == "gru":
        return nn.GRU(FEATURES, HIDDEN, **common).double()
    return nn.RNN(FEATURES, HIDDEN, nonlinearity=kind, **common).double()


def _to_torch_state(kind: str, state: tuple[torch.Tensor, ...], slots: int) -> tuple[torch.Tensor, ...] | torch.Tensor:
    """Zoo state (flat tuple, per slot: h or h, c) -> torch's ``[slots, B, H]`` (h, or (h, c) for LSTM)."""
    per_slot = 2 if kind == "lstm" else 1
    parts = [torch.stack(state[k::per_slot][:slots]) for k in range(per_slot)]
    return (parts[0], parts[1]) if kind == "lstm" else parts[0]


def _random_state(kind: str, slots: int) -> tuple[torch.Tensor, ...]:
    per_slot = 2 if kind == "lstm" else 1
    return tuple(torch.randn(BATCH, HIDDEN, dtype=torch.float64) for _ in range(per_slot * slots))


def _max_state_difference(kind: str, ours: tuple[torch.Tensor, ...], theirs: object, slots: int) -> float:
    expected = _to_torch_state(kind, ours, slots)
    pairs = zip(expected, theirs, strict=True) if isinstance(expected, tuple) else [(expected, theirs)]
    return max(float((a - b).abs().max()) for a, b in pairs)  # type: ignore[operator]


KINDS = ["tanh", "relu", "lstm", "gru"]


@pytest.mark.parametrize("kind", KINDS)
def test_cell_matches_torch_over_a_sequence_from_a_given_state(kind: str) -> None:
    torch.manual_seed(0)
    reference = _make_reference(kind)
    layer = Recurrent(_make_cell(kind, FEATURES)).double()
    _copy_from_torch(layer.cell, reference, 0)
    x = torch.randn(BATCH, STEPS, FEATURES, dtype=torch.float64)
    state = _random_state(kind, 1)
    y, *after = layer(x, *state)
    y_ref, after_ref = reference(x, _to_torch_state(kind, state, 1))
    assert float((y - y_ref).abs().max()) <= TOLERANCE
    assert _max_state_difference(kind, tuple(after), after_ref, 1) <= TOLERANCE


@pytest.mark.parametrize("kind", KINDS)
def test_stacked_matches_torch_multi_layer(kind: str) -> None:
    torch.manual_seed(1)
    layers = 3
    reference = _make_reference(kind, layers=layers)
    cells = [_make_cell(kind, FEATURES if layer == 0 else HIDDEN) for layer in range(layers)]
    for index, cell in enumerate(cells):
        _copy_from_torch(cell, reference, index)
    stack = Stacked([Recurrent(cell) for cell in cells]).double()
    x = torch.randn(BATCH, STEPS, FEATURES, dtype=torch.float64)
    state = _random_state(kind, layers)
    y, *after = stack(x, *state)
    y_ref, after_ref = reference(x, _to_torch_state(kind, state, layers))
    assert float((y - y_ref).abs().max()) <= TOLERANCE
    assert _max_state_difference(kind, tuple(after), after_ref, layers) <= TOLERANCE


@pytest.mark.parametrize("kind", KINDS)
def test_stacked_bidirectional_matches_torch_bidirectional(kind: str) -> None:
    torch.manual_seed(2)
    layers = 2
    reference = _make_reference(kind, layers=layers, bidirectional=True)
    bidirectional_layers = []
    for index in range(layers):
        width = FEATURES if index == 0 else 2 * HIDDEN
        forward_cell, backward_cell = _make_cell(kind, width), _make_cell(kind, width)
        _copy_from_torch(forward_cell, reference, index)
        _copy_from_torch(backward_cell, reference, index, "_reverse")
        bidirectional_layers.append(Bidirectional(forward_cell, backward_cell))
    stack = Stacked(bidirectional_layers).double()
    x = torch.randn(BATCH, STEPS, FEATURES, dtype=torch.float64)
    # torch orders the state slots layer-major, forward then backward: the zoo's flat order too.
    state = _random_state(kind, 2 * layers)
    y, *after = stack(x, *state)
    y_ref, after_ref = reference(x, _to_torch_state(kind, state, 2 * layers))
    assert y.shape == (BATCH, STEPS, 2 * HIDDEN)
    assert float((y - y_ref).abs().max()) <= TOLERANCE
    assert _max_state_difference(kind, tuple(after), after_ref, 2 * layers) <= TOLERANCE


def test_jordan_cell_with_identity_readout_is_an_elman_cell() -> None:
    """h_t = tanh(W_ih x_t + b + W_yh y_{t-1}), y_t = h_t: the Jordan equations collapse to nn.RNN's."""
    torch.manual_seed(3)
    reference = _make_reference("tanh")
    cell = JordanCell(input_size=FEATURES, hidden_size=HIDDEN, output_size=HIDDEN).double()
    with torch.no_grad():
        cell.input_to_hidden.weight.copy_(reference.weight_ih_l0)
        cell.input_to_hidden.bias.copy_(reference.bias_ih_l0)
        cell.output_to_hidden.weight.copy_(reference.weight_hh_l0)
        cell.output_to_hidden.bias.copy_(reference.bias_hh_l0)
        cell.hidden_to_output.weight.copy_(torch.eye(HIDDEN))
        cell.hidden_to_output.bias.zero_()
    x = torch.randn(BATCH, STEPS, FEATURES, dtype=torch.float64)
    h0 = torch.randn(BATCH, HIDDEN, dtype=torch.float64)
    y, y_last = Recurrent(cell)(x, h0)
    y_ref, h_ref = reference(x, h0.unsqueeze(0))
    assert float((y - y_ref).abs().max()) <= TOLERANCE
    assert float((y_last - h_ref[0]).abs().max()) <= TOLERANCE


def test_jordan_feedback_is_the_previous_output() -> None:
    """One step by hand: the state after a step is y_t, and it is what the next step reads."""
    torch.manual_seed(4)
    cell = JordanCell(input_size=2, hidden_size=4, output_size=3, output_activation="sigmoid").double()
    x = torch.randn(1, 2, dtype=torch.float64)
    y_prev = torch.randn(1, 3, dtype=torch.float64)
    h = torch.tanh(cell.input_to_hidden(x) + cell.output_to_hidden(y_prev))
    expected = torch.sigmoid(cell.hidden_to_output(h))
    y, (state,) = cell(x, (y_prev,))
    assert torch.equal(y, state)
    assert float((y - expected).abs().max()) <= 1e-15  # the same operations in the same order


def test_chunked_run_equals_one_call() -> None:
    """The step contract: carrying the returned state across chunks changes nothing.

    1e-12 in float64, not bit for bit: a chunk is a different view of x, and BLAS may take another path for it.
    """
    torch.manual_seed(5)
    stack = Stacked(
        [
            Recurrent(LSTMCell(input_size=FEATURES, hidden_size=HIDDEN)),
            Recurrent(GRUCell(input_size=HIDDEN, hidden_size=HIDDEN)),
        ]
    ).double()
    x = torch.randn(BATCH, STEPS, FEATURES, dtype=torch.float64)
    y_whole, *state_whole = stack(x, *stack.initial_state(BATCH, dtype=torch.float64))
    state = stack.initial_state(BATCH, dtype=torch.float64)
    pieces = []
    for chunk in x.split(5, dim=1):
        y, *state_list = stack(chunk, *state)
        state = tuple(state_list)
        pieces.append(y)
    assert float((torch.cat(pieces, dim=1) - y_whole).abs().max()) <= 1e-12
    assert max(float((a - b).abs().max()) for a, b in zip(state, state_whole, strict=True)) <= 1e-12


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ElmanCell(input_size=3, hidden_size=4, nonlinearity="sigmoid"), "nonlinearity"),  # type: ignore[arg-type]
        (lambda: ElmanCell(input_size=0, hidden_size=4), "input_size"),
        (lambda: GRUCell(input_size=3, hidden_size=0), "hidden_size"),
        (lambda: LSTMCell(input_size=3, hidden_size=4, bias=False, forget_bias=1.0), "forget_bias"),
        (lambda: JordanCell(input_size=3, hidden_size=4, output_size=2, output_activation="relu"), "output_activation"),  # type: ignore[arg-type]
        (
            lambda: Stacked(
                [Recurrent(GRUCell(input_size=3, hidden_size=4)), Recurrent(GRUCell(input_size=5, hidden_size=4))]
            ),
            "reads 5",
        ),
        (
            lambda: Bidirectional(GRUCell(input_size=3, hidden_size=4), GRUCell(input_size=2, hidden_size=4)),
            "different inputs",
        ),
        (lambda: Stacked([]), "at least one"),
    ],
)
def test_invalid_combinations_are_refused_at_construction(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_wrong_state_count_is_refused() -> None:
    layer = Recurrent(LSTMCell(input_size=2, hidden_size=3))
    with pytest.raises(ValueError, match="2 state tensors"):
        layer(torch.zeros(1, 4, 2), torch.zeros(1, 3))
