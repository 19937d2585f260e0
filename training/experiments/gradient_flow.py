r"""The course's lesson, measured: gradients vanish or explode through a vanilla RNN, and an LSTM keeps them.

``python -m training.experiments.gradient_flow --out docs/img`` does two things and prints a JSON summary:

1. **Gradient norm against lag** (:func:`gradient_norms_by_lag`): for a loss on the last state,
   :math:`\lVert \partial L / \partial h_{T-k} \rVert` for every lag ``k``, for an Elman tanh RNN
   whose :math:`W_{hh}` has every singular value :math:`\sigma` below or above 1, and for an LSTM
   at its usual initialisation. Plot: ``gradient_flow.png``.
2. **The adding problem** (Hochreiter & Schmidhuber 1997, as Le, Jaitly & Hinton 2015 pose it):
   a small LSTM and vanilla RNNs of the same width and of twice its units train with the same
   optimiser, steps and clipping. Plot: ``adding_problem.png``.

docs/zoo.md has the set-up and the numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.bptt import clip_by_norm, full_bptt
from training.nets.cells import Cell, ElmanCell, LSTMCell, Recurrent, State
from training.nets.step import StepNet


def gradient_norms_by_lag(cell: Cell, *, steps: int, batch: int, input_scale: float, seed: int) -> list[float]:
    r"""``[‖∂L/∂h_{T−k}‖ for k = 0..steps−1]``, averaged over the batch, for :math:`L = w^\top h_T`.

    .. math:: \frac{\partial L}{\partial h_{T-k}} = \frac{\partial L}{\partial h_T} \prod_{j=0}^{k-1} \operatorname{diag}(\phi'(a_{T-j}))\, W_{hh}

    so in a vanilla RNN the norm is bounded by :math:`(\sigma_{\max}(W_{hh}) \max|\phi'|)^k`: below 1
    it must vanish geometrically, above 1 it can explode (Pascanu, Mikolov & Bengio 2013).
    """
    generator = torch.Generator().manual_seed(seed)
    x = input_scale * torch.randn(batch, steps, cell.input_size, generator=generator)
    readout = torch.randn(cell.output_size, generator=generator)
    state: State = cell.initial_state(batch)
    hidden: list[torch.Tensor] = []
    for t in range(steps):
        _, state = cell(x[:, t], state)
        state[0].retain_grad()  # h_t: the first state tensor of both cells
        hidden.append(state[0])
    torch.autograd.backward((hidden[-1] @ readout).sum())
    norms = []
    for k in range(steps):
        grad = hidden[steps - 1 - k].grad
        assert grad is not None
        norms.append(float(grad.norm(dim=-1).mean()))
    return norms


def scaled_orthogonal_(weight: torch.Tensor, sigma: float, seed: int) -> None:
    """``W ← σ Q`` with ``Q`` a random orthogonal matrix: every singular value of ``W`` is ``σ``."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(weight.shape, generator=generator))
    with torch.no_grad():
        weight.copy_(sigma * q * torch.sign(torch.diagonal(r)))


class Regressor(StepNet):
    """A recurrent layer and a linear head on every step's output (the adding problem reads the last)."""

    def __init__(self, cell: Cell) -> None:
        super().__init__()
        self.layer = Recurrent(cell)
        self.head = nn.Linear(cell.output_size, 1)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> State:
        return self.layer.initial_state(batch, device)

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, after = self.layer.run(x, tuple(state))
        return (self.head(y), *after)


def adding_batch(batch: int, steps: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Inputs ``[B, T, 2]`` (value, marker) and targets ``[B]``: the sum of the two marked values.

    A value :math:`u_t \sim U[0, 1]` and a marker that is 1 at exactly two steps, one in each half;
    always answering 1 scores the variance of the sum, MSE = 1/6.
    """
    values = torch.rand(batch, steps, generator=generator)
    half = steps // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, steps, (batch,), generator=generator)
    markers = torch.zeros(batch, steps)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    return torch.stack([values, markers], dim=-1), (values * markers).sum(dim=1)


@dataclass(frozen=True)
class AddingResult:
    """One model's run on the adding problem."""

    model: str
    parameters: int
    final_test_mse: float
    best_test_mse: float
    seconds: float
    curve: list[tuple[int, float]]


def train_adding(
    name: str, cell: Cell, *, steps: int, iterations: int, batch: int, lr: float, clip: float, seed: int
) -> AddingResult:
    """Adam on the last step's MSE with full BPTT and clipping by norm; test MSE on 1,000 fixed sequences."""
    torch.manual_seed(seed)
    model = Regressor(cell)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    train_generator = torch.Generator().manual_seed(seed)
    test_x, test_y = adding_batch(1000, steps, torch.Generator().manual_seed(seed + 1))

    def last_step_mse(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((y[:, -1, 0] - target) ** 2).mean()

    def update() -> None:
        clip_by_norm(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad()

    def test_mse() -> float:
        with torch.no_grad():
            y, *_ = model(test_x, *model.initial_state(len(test_x)))
            return float(last_step_mse(y, test_y))

    curve: list[tuple[int, float]] = [(0, test_mse())]
    started = time.perf_counter()
    for iteration in range(1, iterations + 1):
        x, target = adding_batch(batch, steps, train_generator)
        full_bptt(model, x, target, model.initial_state(batch), loss_fn=last_step_mse, on_update=update)
        if iteration % max(1, iterations // 20) == 0 or iteration == iterations:
            curve.append((iteration, test_mse()))
    seconds = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    return AddingResult(name, parameters, curve[-1][1], min(mse for _, mse in curve), seconds, curve)


def _plot_gradients(norms: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for label, values in norms.items():
        axes.semilogy(range(len(values)), values, label=label)
    axes.set_xlabel("lag k (steps back from the loss)")
    axes.set_ylabel("‖∂L/∂h_{T−k}‖ (batch mean)")
    axes.set_title("Gradient flow back through time")
    axes.legend()
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_adding(results: list[AddingResult], steps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for result in results:
        axes.plot(
            [i for i, _ in result.curve],
            [m for _, m in result.curve],
            marker=".",
            label=f"{result.model} ({result.parameters} params)",
        )
    axes.axhline(1 / 6, color="grey", linestyle="--", label="always 1 (MSE 1/6)")
    axes.set_yscale("log")
    axes.set_xlabel("training step")
    axes.set_ylabel("test MSE (1,000 sequences)")
    axes.set_title(f"Adding problem, T = {steps}")
    axes.legend()
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m training.experiments.gradient_flow", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for gradient_flow.png and adding_problem.png")
    parser.add_argument("--hidden", type=int, default=32, help="units of every network (default 32)")
    parser.add_argument(
        "--lags", type=int, default=100, help="sequence length of the gradient measurement (default 100)"
    )
    parser.add_argument("--adding-steps", type=int, default=50, help="T of the adding problem (default 50)")
    parser.add_argument("--iterations", type=int, default=1000, help="training steps per model (default 1000)")
    parser.add_argument(
        "--lr", type=float, default=1e-2, help="Adam's learning rate on the adding problem (default 1e-2)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("hidden", "lags", "adding_steps", "iterations"):
        if getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be >= 2")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    norms: dict[str, list[float]] = {}
    for sigma in (0.9, 1.5):
        torch.manual_seed(args.seed)
        elman = ElmanCell(input_size=args.hidden, hidden_size=args.hidden)
        scaled_orthogonal_(elman.weight_hh, sigma, args.seed)
        norms[f"vanilla tanh RNN, σ_max(W_hh) = {sigma}"] = gradient_norms_by_lag(
            elman, steps=args.lags, batch=32, input_scale=0.1, seed=args.seed
        )
    for forget_bias in (1.0, 3.0):
        torch.manual_seed(args.seed)
        lstm = LSTMCell(input_size=args.hidden, hidden_size=args.hidden, forget_bias=forget_bias)
        norms[f"LSTM, forget bias {forget_bias:g}"] = gradient_norms_by_lag(
            lstm, steps=args.lags, batch=32, input_scale=0.1, seed=args.seed
        )
    _plot_gradients(norms, args.out / "gradient_flow.png")

    results = [
        train_adding(
            name,
            cell,
            steps=args.adding_steps,
            iterations=args.iterations,
            batch=64,
            lr=args.lr,
            clip=1.0,
            seed=args.seed,
        )
        for name, cell in (
            ("LSTM", LSTMCell(input_size=2, hidden_size=args.hidden, forget_bias=1.0)),
            ("vanilla tanh RNN", ElmanCell(input_size=2, hidden_size=args.hidden)),
            # twice the units: about as many parameters as the LSTM, so size is not the excuse
            (f"vanilla tanh RNN, {2 * args.hidden} units", ElmanCell(input_size=2, hidden_size=2 * args.hidden)),
        )
    ]
    _plot_adding(results, args.adding_steps, args.out / "adding_problem.png")

    lags = [k for k in (0, 10, 25, 50, 99) if k < args.lags]
    summary: dict[str, Any] = {
        "gradient_norm_by_lag": {label: {str(k): values[k] for k in lags} for label, values in norms.items()},
        "adding_problem": {
            "steps": args.adding_steps,
            "baseline_mse": 1 / 6,
            "models": [{k: v for k, v in asdict(r).items() if k != "curve"} for r in results],
        },
        "seconds": round(time.perf_counter() - started, 1),
        "images": [str(args.out / "gradient_flow.png"), str(args.out / "adding_problem.png")],
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead (set here, not in main, which tests call)
    main()
