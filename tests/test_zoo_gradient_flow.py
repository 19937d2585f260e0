"""The gradient-flow command: its measurements behave as the theory says, and the command runs end to end (tiny settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.experiments import gradient_flow
from training.nets.cells import ElmanCell


def test_orthogonal_scaling_sets_every_singular_value() -> None:
    weight = torch.empty(6, 6)
    gradient_flow.scaled_orthogonal_(weight, 1.5, seed=0)
    assert torch.allclose(torch.linalg.svdvals(weight), torch.full((6,), 1.5), atol=1e-5)  # float32 QR: ~1e-6


def test_gradient_vanishes_below_one_and_grows_above_in_the_linear_regime() -> None:
    """With tiny inputs tanh is ~linear, so ‖∂L/∂h_{T−k}‖ ≈ σ^k ‖w‖: check the slope to 1 % over 20 lags."""
    rates = {}
    for sigma in (0.8, 1.2):
        torch.manual_seed(0)
        cell = ElmanCell(input_size=4, hidden_size=8, bias=False)
        gradient_flow.scaled_orthogonal_(cell.weight_hh, sigma, seed=0)
        norms = gradient_flow.gradient_norms_by_lag(cell, steps=21, batch=4, input_scale=1e-4, seed=0)
        rates[sigma] = (norms[20] / norms[0]) ** (1 / 20)
    assert rates[0.8] == pytest.approx(0.8, rel=1e-2)
    assert rates[1.2] == pytest.approx(1.2, rel=1e-2)


def test_adding_batch_targets_are_the_sum_of_the_two_marked_values() -> None:
    x, target = gradient_flow.adding_batch(5, 10, torch.Generator().manual_seed(0))
    assert x.shape == (5, 10, 2)
    assert torch.equal(x[..., 1].sum(dim=1), torch.full((5,), 2.0))
    assert torch.equal(x[:, :5, 1].sum(dim=1), torch.ones(5))  # one marker in each half
    assert torch.allclose(target, (x[..., 0] * x[..., 1]).sum(dim=1))


def test_command_writes_both_plots_and_a_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = gradient_flow.main(
        ["--out", str(tmp_path), "--hidden", "4", "--lags", "6", "--adding-steps", "6", "--iterations", "2"]
    )
    assert (tmp_path / "gradient_flow.png").stat().st_size > 0
    assert (tmp_path / "adding_problem.png").stat().st_size > 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(summary))
    assert [m["model"] for m in summary["adding_problem"]["models"]] == [
        "LSTM",
        "vanilla tanh RNN",
        "vanilla tanh RNN, 8 units",
    ]
