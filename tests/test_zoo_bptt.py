"""The training modes of training/bptt.py: the backward pass, truncation, its unbiased randomized form, clipping."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from training.bptt import (
    clip_by_norm,
    full_bptt,
    geometric_truncation,
    randomized_truncated_bptt,
    truncated_bptt,
)
from training.nets.cells import GRUCell, JordanCell, LSTMCell, Recurrent, Stacked


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    """float64 for the gradient comparisons (the tolerances are 1e-10), restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _sum_of_squares(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((y - target) ** 2).sum()  # additive over time, as the modes require


def _net(seed: int) -> Stacked:
    torch.manual_seed(seed)
    return Stacked([Recurrent(LSTMCell(input_size=3, hidden_size=4)), Recurrent(GRUCell(input_size=4, hidden_size=2))])


def _problem(net: Stacked, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, steps, 3, generator=generator)
    target = torch.randn(2, steps, 2, generator=generator)
    state = tuple(torch.randn(s.shape, generator=generator) for s in net.initial_state(2))
    return x, target, state


def _gradients(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in net.parameters()])


def _full_gradient(
    net: Stacked, x: torch.Tensor, target: torch.Tensor, state: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    net.zero_grad()
    full_bptt(net, x, target, state, loss_fn=_sum_of_squares)
    return _gradients(net)


@pytest.mark.parametrize("cell", ["lstm", "gru", "jordan"])
def test_cell_backward_pass_matches_finite_differences(cell: str) -> None:
    """torch.autograd.gradcheck: analytic vs central differences, float64, its default tolerances (atol 1e-5, rtol 1e-3)."""
    torch.manual_seed(0)
    step = (
        LSTMCell(input_size=3, hidden_size=2)
        if cell == "lstm"
        else GRUCell(input_size=3, hidden_size=2)
        if cell == "gru"
        else JordanCell(input_size=3, hidden_size=4, output_size=2, output_activation="tanh")
    )
    layer = Recurrent(step)
    names = [name for name, _ in layer.named_parameters()]
    x = torch.randn(2, 5, 3, requires_grad=True)
    state = tuple(torch.randn(s.shape, requires_grad=True) for s in layer.initial_state(2))

    def outputs(x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        parameters = dict(zip(names, rest[: len(names)], strict=True))
        y, *_ = torch.func.functional_call(layer, parameters, (x, *rest[len(names) :]))
        return y  # type: ignore[no-any-return]

    weights = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    assert torch.autograd.gradcheck(outputs, (x, *weights, *state))


@pytest.mark.parametrize(("k1", "steps"), [(1, 12), (4, 12), (5, 12), (12, 12)])
def test_truncated_bptt_equals_full_bptt_when_k2_covers_the_sequence(k1: int, steps: int) -> None:
    """No optimizer step between updates: the updates' gradients add up to the full one (float64, 1e-10: only summation order differs)."""
    net = _net(1)
    x, target, state = _problem(net, steps, 2)
    full = _full_gradient(net, x, target, state)
    net.zero_grad()
    result = truncated_bptt(net, x, target, state, loss_fn=_sum_of_squares, k1=k1, k2=steps)
    assert result.updates == -(-steps // k1)
    assert float((_gradients(net) - full).abs().max()) <= 1e-10


def test_truncated_bptt_with_short_k2_is_a_different_gradient() -> None:
    """The truncation bias is real: with k2 = 2 over 12 steps the gradient differs from the full one."""
    net = _net(1)
    x, target, state = _problem(net, 12, 2)
    full = _full_gradient(net, x, target, state)
    net.zero_grad()
    truncated_bptt(net, x, target, state, loss_fn=_sum_of_squares, k1=2, k2=2)
    assert float((_gradients(net) - full).abs().max()) > 1e-3


def test_truncated_bptt_k1_k2_matches_a_direct_computation() -> None:
    """BPTT(2, 3) by hand: each block's loss, gradient stopped at the state 3 steps before the block's end."""
    net = _net(3)
    x, target, state = _problem(net, 6, 4)
    net.zero_grad()
    truncated_bptt(net, x, target, state, loss_fn=_sum_of_squares, k1=2, k2=3)
    ours = _gradients(net)
    net.zero_grad()
    with torch.no_grad():
        states = [state]
        for t in range(6):
            _, *after = net(x[:, t : t + 1], *states[-1])
            states.append(tuple(after))
    for end in (2, 4, 6):
        begin = max(0, end - 3)
        y, *_ = net(x[:, begin:end], *states[begin])
        _sum_of_squares(y[:, end - 2 - begin :], target[:, end - 2 : end]).backward()
    assert float((ours - _gradients(net)).abs().max()) <= 1e-10


def test_randomized_truncation_is_unbiased_exactly_over_every_cut_pattern() -> None:
    """Σ over all 2^(T−1) cut patterns of P(pattern)·ĝ(pattern) = ∇L (float64, 1e-10: an exact identity up to rounding)."""
    net = _net(5)
    steps, keep = 6, 0.7
    x, target, state = _problem(net, steps, 6)
    full = _full_gradient(net, x, target, state)
    expected = torch.zeros_like(full)
    for pattern in itertools.product([False, True], repeat=steps - 1):
        net.zero_grad()
        randomized_truncated_bptt(
            net, x, target, state, loss_fn=_sum_of_squares, keep_probability=lambda _: keep, cuts=pattern
        )
        probability = 1.0
        for cut in pattern:
            probability *= (1 - keep) if cut else keep
        expected += probability * _gradients(net)
    assert float((expected - full).abs().max()) <= 1e-10


def test_randomized_truncation_average_over_draws_approaches_the_full_gradient() -> None:
    """Monte Carlo: the mean of 600 estimates is within 5 standard errors of ∇L in every coordinate.

    5 standard errors: for a Gaussian mean, a coordinate falls outside with probability ~6e-7, so
    the test fails by chance essentially never, while a bias as large as plain truncation's is far outside.
    """
    torch.manual_seed(7)
    net = Stacked([Recurrent(GRUCell(input_size=3, hidden_size=2))])  # one small cell keeps 600 draws fast
    x, target, state = _problem(net, 6, 8)
    full = _full_gradient(net, x, target, state)
    generator = torch.Generator().manual_seed(9)
    draws = []
    for _ in range(600):
        net.zero_grad()
        randomized_truncated_bptt(
            net,
            x,
            target,
            state,
            loss_fn=_sum_of_squares,
            keep_probability=geometric_truncation(3.0),
            generator=generator,
        )
        draws.append(_gradients(net))
    samples = torch.stack(draws)
    standard_error = samples.std(dim=0) / len(draws) ** 0.5
    assert bool(((samples.mean(dim=0) - full).abs() <= 5 * standard_error + 1e-12).all())
    assert float((samples[0] - full).abs().max()) > 1e-6  # one draw alone is not the full gradient


def test_randomized_truncation_that_never_cuts_is_full_bptt() -> None:
    net = _net(10)
    x, target, state = _problem(net, 8, 11)
    full = _full_gradient(net, x, target, state)
    net.zero_grad()
    result = randomized_truncated_bptt(net, x, target, state, loss_fn=_sum_of_squares, keep_probability=lambda _: 1.0)
    assert result.updates == 1
    assert float((_gradients(net) - full).abs().max()) <= 1e-10


def test_clip_by_norm_matches_torch_and_leaves_small_gradients_alone() -> None:
    torch.manual_seed(12)
    ours, theirs = nn.Linear(4, 3), nn.Linear(4, 3)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        p.grad = torch.randn(p.shape) * 10
        q.grad = p.grad.clone()
    norm = clip_by_norm(ours.parameters(), 1.0)
    torch_norm = nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
    assert abs(norm - float(torch_norm)) <= 1e-12
    assert float(_gradients(ours).norm()) == pytest.approx(
        1.0, abs=1e-9
    )  # clipped to the bound (the 1e-12 guard moves it ~1e-13)
    # torch divides by (‖g‖ + 1e-6), we by (‖g‖ + 1e-12): the clipped gradients differ by ~1e-6 relative.
    assert float((_gradients(ours) - _gradients(theirs)).abs().max()) <= 1e-6
    before = _gradients(ours).clone()
    clip_by_norm(ours.parameters(), 100.0)
    assert torch.equal(_gradients(ours), before)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda net, x, t, s: truncated_bptt(net, x, t, s, loss_fn=_sum_of_squares, k1=0, k2=3), "k1"),
        (lambda net, x, t, s: truncated_bptt(net, x, t, s, loss_fn=_sum_of_squares, k1=4, k2=3), "k2 must be >= k1"),
        (
            lambda net, x, t, s: randomized_truncated_bptt(
                net, x, t, s, loss_fn=_sum_of_squares, keep_probability=lambda _: 0.0
            ),
            "keep_probability",
        ),
        (
            lambda net, x, t, s: randomized_truncated_bptt(
                net, x, t, s, loss_fn=_sum_of_squares, keep_probability=lambda _: 0.5, cuts=[True]
            ),
            "cuts needs",
        ),
    ],
)
def test_invalid_modes_are_refused(call: object, message: str) -> None:
    net = _net(13)
    x, target, state = _problem(net, 4, 14)
    with pytest.raises(ValueError, match=message):
        call(net, x, target, state)  # type: ignore[operator]


@pytest.mark.parametrize("mode", ["truncated", "randomized"])
def test_truncated_modes_carry_the_forward_state_and_call_on_update_per_backward(mode: str) -> None:
    """Without weight changes the returned state is the plain forward run's (1e-12, float64), and on_update runs once per backward."""
    net = _net(15)
    x, target, state = _problem(net, 10, 16)
    with torch.no_grad():
        _, *expected = net(x, *state)
    calls: list[int] = []
    if mode == "truncated":
        result = truncated_bptt(
            net, x, target, state, loss_fn=_sum_of_squares, k1=3, k2=4, on_update=lambda: calls.append(1)
        )
        assert result.updates == 4  # blocks of 3, 3, 3, 1
    else:
        result = randomized_truncated_bptt(
            net,
            x,
            target,
            state,
            loss_fn=_sum_of_squares,
            keep_probability=lambda _: 0.5,
            cuts=[True, False] * 4 + [True],
            on_update=lambda: calls.append(1),
        )
        assert result.updates == 6  # five cuts: six segments
    assert len(calls) == result.updates
    assert max(float((a - b).abs().max()) for a, b in zip(result.state, expected, strict=True)) <= 1e-12
    with torch.no_grad():
        y, *_ = net(x, *state)
    assert result.loss == pytest.approx(float(_sum_of_squares(y, target)), rel=1e-12)
