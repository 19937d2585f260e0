"""Associative memories as sweep step functions: energy, fixed points, learning rules, determinism, clamping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.datasets.maxcut import brute_force_max_cut, random_graph
from service.datasets.patterns import (
    LETTER_SHAPE,
    flip_bits,
    letter_patterns,
    load_digits_binary,
    occlusion_mask,
    random_bipolar,
)
from training.tasks.associative_memory.boltzmann import RBM, BoltzmannMachine
from training.tasks.associative_memory.dense_hopfield import DenseHopfield
from training.tasks.associative_memory.hopfield import Hopfield, hebbian_weights, storkey_weights
from training.tasks.associative_memory.rbm_training import RBMConfig, reconstruction_error, train_rbm
from training.tasks.associative_memory.sweep import SweepNet

#: Energies are float32 sums of N^2 products of size ~1; 1e-4 absolute is far above their rounding
#: (~1e-6 here) and far below any real energy step (a flip changes E by 2|h_i| >= 2/N in Hebb's units, or 0).
ENERGY_TOL = 1e-4


def _free(batch: int, units: int) -> torch.Tensor:
    return torch.zeros(batch, units)


def _direct_hebbian(xi: np.ndarray) -> np.ndarray:
    p, n = xi.shape
    w = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                w[i, j] = sum(xi[mu, i] * xi[mu, j] for mu in range(p)) / n
    return w


def _direct_storkey(xi: np.ndarray) -> np.ndarray:
    p, n = xi.shape
    w = np.zeros((n, n))
    for mu in range(p):
        old = w.copy()
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                h_ij = sum(old[i, k] * xi[mu, k] for k in range(n) if k not in (i, j))
                h_ji = sum(old[j, k] * xi[mu, k] for k in range(n) if k not in (i, j))
                w[i, j] = old[i, j] + (xi[mu, i] * xi[mu, j] - xi[mu, i] * h_ji - h_ij * xi[mu, j]) / n
    return w


def test_hebbian_and_storkey_weights_match_a_direct_loop_implementation() -> None:
    xi = random_bipolar(4, 7, seed=3).astype(np.float64)
    # float32 results of O(1) sums: 1e-6 is the float32 rounding of values up to ~4.
    np.testing.assert_allclose(hebbian_weights(xi), _direct_hebbian(xi), atol=1e-6)
    np.testing.assert_allclose(storkey_weights(xi), _direct_storkey(xi), atol=1e-6)
    for w in (hebbian_weights(xi), storkey_weights(xi)):
        np.testing.assert_array_equal(w, w.T)
        assert not np.diag(w).any()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), units=st.integers(3, 24), sweeps=st.integers(1, 4))
def test_asynchronous_sweeps_never_raise_the_energy(seed: int, units: int, sweeps: int) -> None:
    """Any symmetric zero-diagonal W and any bias: E(s) after each async sweep <= before."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(units, units, generator=gen)
    w = (w + w.T) / 2
    w.fill_diagonal_(0.0)
    net = Hopfield(units=units)
    net.weight.copy_(w)
    net.bias.copy_(torch.randn(units, generator=gen))
    s = torch.where(torch.rand(5, units, generator=gen) < 0.5, -1.0, 1.0)
    energy = net.energy(s)
    for _ in range(sweeps):
        s, after, _ = net.sweep(s, _free(5, units), _free(5, units), torch.rand(5, units, generator=gen))
        assert bool((after <= energy + ENERGY_TOL).all()), (energy, after)
        torch.testing.assert_close(after, net.energy(s))
        energy = after


@pytest.mark.parametrize("rule", ["hebbian", "storkey"])
@pytest.mark.parametrize("update", ["async", "sync"])
def test_stored_patterns_are_fixed_points_below_capacity(rule: str, update: str) -> None:
    """5 random patterns in 100 units (load 0.05, well below 0.138): every one is exactly stable."""
    xi = random_bipolar(5, 100, seed=1)
    net = Hopfield.from_patterns(xi, rule=rule, update=update)  # type: ignore[arg-type]
    s = torch.from_numpy(xi)
    noise = torch.rand(5, 100) if update == "async" else None
    new, _, changed = net.sweep(s, _free(5, 100), _free(5, 100), noise)
    assert changed.tolist() == [0.0] * 5
    torch.testing.assert_close(new, s, atol=0, rtol=0)


def test_a_noisy_probe_is_cleaned_up_from_a_fresh_session() -> None:
    """A zero (fresh) state loads the probe from clamp_values, and a few sweeps restore the pattern."""
    xi = random_bipolar(5, 100, seed=2)
    net = Hopfield.from_patterns(xi, rule="storkey")
    probe = torch.from_numpy(flip_bits(xi, 0.1, seed=0))
    s = _free(5, 100)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        s, _, _ = net.sweep(s, _free(5, 100), probe, torch.rand(5, 100, generator=gen))
    torch.testing.assert_close(s, torch.from_numpy(xi), atol=0, rtol=0)


def _nets() -> list[tuple[str, SweepNet]]:
    torch.manual_seed(0)
    letters = letter_patterns("ACHLTX")
    rbm = RBM(visible=35, hidden=12)
    with torch.no_grad():
        rbm.weight.normal_(0, 1.0)
    w = torch.randn(35, 35)
    w = (w + w.T) / 2
    w.fill_diagonal_(0)
    return [
        ("hopfield_async", Hopfield.from_patterns(letters, rule="storkey")),
        ("hopfield_sync", Hopfield.from_patterns(letters, rule="hebbian", update="sync")),
        ("dense", DenseHopfield(patterns=letter_patterns(), beta=2.0)),
        ("boltzmann", BoltzmannMachine.from_energy(weight=w, bias=torch.randn(35))),
        ("rbm", rbm),
    ]


def _inputs(net: SweepNet, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    n = net.units
    start = torch.bernoulli(torch.full((batch, n), 0.5), generator=gen)
    if net.bipolar:
        start = 2 * start - 1
    mask = (torch.rand(batch, n, generator=gen) < 0.3).float()
    noise = torch.rand(batch, net.noise_units, generator=gen) if net.noise_units else torch.zeros(batch, 0)
    temperature = torch.full((batch,), 0.8)
    return start, mask, noise, temperature


def _sweep(
    net: SweepNet, pattern: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    return net.sweep(pattern, mask, values, noise if net.noise_units else None, t if net.stochastic else None)


@pytest.mark.parametrize(("name", "net"), _nets(), ids=[n for n, _ in _nets()])
def test_a_sweep_is_reproducible_and_independent_of_batch_mates(name: str, net: SweepNet) -> None:
    """Same inputs, same outputs (bit for bit); each row of a batch of 4 equals that row swept alone."""
    start, mask, noise, t = _inputs(net, 4, seed=5)
    first = _sweep(net, start, mask, start, noise, t)
    again = _sweep(net, start, mask, start, noise, t)
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    for row in range(4):
        alone = _sweep(
            net, start[row : row + 1], mask[row : row + 1], start[row : row + 1], noise[row : row + 1], t[row : row + 1]
        )
        # Patterns and counts are exact; energies may differ in the last float32 bit between a
        # batched and a single-row matmul (1e-5 relative).
        # The dense memory's state is a softmax mix: 1e-6 covers its float32 rounding (~2e-7 seen).
        exact = 1e-6 if name == "dense" else 0.0
        torch.testing.assert_close(alone[0], first[0][row : row + 1], atol=exact, rtol=0)
        torch.testing.assert_close(alone[2], first[2][row : row + 1], atol=0, rtol=0)
        torch.testing.assert_close(alone[1], first[1][row : row + 1], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("name", "net"), _nets(), ids=[n for n, _ in _nets()])
def test_clamped_units_never_change(name: str, net: SweepNet) -> None:
    start, mask, noise, t = _inputs(net, 3, seed=6)
    values = -start if net.bipolar else 1 - start  # clamp to the opposite of the current state
    pattern = start
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        noise = torch.rand(noise.shape, generator=gen)
        pattern, _, _ = _sweep(net, pattern, mask, values, noise, t)
        held = mask > 0
        torch.testing.assert_close(pattern[held], values[held], atol=0, rtol=0)


def test_dense_memory_retrieves_ten_n_patterns_in_one_update() -> None:
    """N = 64, P = 640 random patterns, 20% of bits flipped: one update restores >= 99% of bits."""
    xi = random_bipolar(640, 64, seed=4)
    target = xi[:100]
    probe = torch.from_numpy(flip_bits(target, 0.2, seed=5))
    net = DenseHopfield(patterns=xi, beta=1.0)
    new, energy, _ = net.sweep(_free(100, 64), _free(100, 64), probe, None)
    assert float((torch.sign(new).numpy() == target).mean()) >= 0.99
    assert bool((energy <= net.energy(probe) + ENERGY_TOL).all())  # the CCCP update does not raise E


def test_cd_k_lowers_reconstruction_error() -> None:
    digits = load_digits_binary()
    data = digits.train[:300]
    x = torch.from_numpy(data)
    untrained, _ = train_rbm(data, RBMConfig(hidden=32, epochs=1, lr=1e-9))
    before = reconstruction_error(untrained, x)
    cd1 = RBMConfig(hidden=32, k=1, epochs=20, batch=10, lr=0.1)
    pcd = RBMConfig(hidden=32, k=1, persistent=True, epochs=20, batch=10, lr=0.05)
    for config in (cd1, pcd):
        trained, history = train_rbm(data, config)
        # 600 updates cut the error of the untrained net (which already has the pixel means as
        # visible biases, ~0.13) by at least a fifth; seen: CD-1 ~0.07, PCD ~0.09.
        assert reconstruction_error(trained, x) < 0.8 * before, config
        assert history.reconstruction_error[-1] < history.reconstruction_error[0]


def test_max_cut_energy_is_minus_the_cut_and_annealing_finds_the_optimum() -> None:
    graph = random_graph(10, edge_probability=0.5, max_weight=3, seed=1)
    best, count = brute_force_max_cut(graph)
    assert count >= 2  # swapping the two sides gives the same cut
    w, b = graph.boltzmann_couplings()
    net = BoltzmannMachine.from_energy(weight=torch.from_numpy(w), bias=torch.from_numpy(b))
    gen = torch.Generator().manual_seed(0)
    s = torch.bernoulli(torch.full((64, 10), 0.5), generator=gen)
    np.testing.assert_allclose(-net.energy(s).numpy(), graph.cut_value(s.numpy()), atol=1e-4)
    for t in np.geomspace(5.0, 0.05, 60):
        s, _, _ = net.sweep(s, _free(64, 10), _free(64, 10), torch.rand(64, 10, generator=gen), torch.full((64,), t))
    # 10 nodes, 60 sweeps: annealing reaches the optimum in most runs (measured 64/64); >= half is the claim.
    assert float(np.isclose(graph.cut_value(s.numpy()), best).mean()) >= 0.5


def test_invalid_constructions_are_refused() -> None:
    with pytest.raises(ValueError, match="update"):
        Hopfield(units=4, update="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="-1 and \\+1"):
        Hopfield.from_patterns(np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="beta"):
        DenseHopfield(patterns=np.ones((2, 3)), beta=0.0)
    with pytest.raises(ValueError, match="symmetric"):
        BoltzmannMachine.from_energy(weight=torch.tensor([[0.0, 1.0], [2.0, 0.0]]), bias=torch.zeros(2))
    with pytest.raises(ValueError, match="temperature"):
        RBM(visible=4, hidden=2).sweep(torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(1, 6))


def test_patterns_are_seeded_and_shaped() -> None:
    letters = letter_patterns()
    assert letters.shape == (26, LETTER_SHAPE[0] * LETTER_SHAPE[1])
    assert len({row.tobytes() for row in letters}) == 26  # every letter is drawn differently
    np.testing.assert_array_equal(random_bipolar(3, 9, seed=1), random_bipolar(3, 9, seed=1))
    flipped = flip_bits(letters, 0.2, seed=0)
    assert ((flipped != letters).sum(axis=1) == 7).all()  # exactly round(0.2 * 35) flips
    assert occlusion_mask((8, 8), "bottom").reshape(8, 8)[4:].sum() == 0
    assert occlusion_mask((8, 8), "bottom").reshape(8, 8)[:4].all()
