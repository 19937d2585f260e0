"""How a gated forecaster (``gated_net``) learns a series: free runs, not one step.

A forecaster is scored on its free runs (NRMSE84 feeds each prediction back for 84 steps), so
that is what it trains on. Every Adam step draws ``batch`` windows of the training part: each is
``warmup`` teacher-forced steps, scored after the first ``burn`` (before that the state has not
seen a delay's worth of the series), then a free run of ``horizon_t`` steps fed its own
predictions, every step scored; the loss (in units of the series' variance) is back-propagated
through the whole window. The free run grows from 1 step to ``horizon`` over the first
``curriculum`` fraction of the steps; the learning rate follows one cycle; every ``eval_every``
steps NRMSE84 runs on a validation part the windows never touch, and the best weights are kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from training.history import History
from training.tasks.forecaster.gated_net import GatedForecaster
from training.tasks.forecaster.recipe import FreeRunTraining
from training.tasks.forecaster.scoring import NRMSE84_HORIZON, nrmse, spaced_starts

VALIDATION_FRACTION = 0.2
VALIDATION_TRIALS = 20


@dataclass(frozen=True)
class TrainedForecaster:
    net: GatedForecaster
    history: History
    steps: int
    best_validation_nrmse84: float
    time_s: float


def window_loss(net: GatedForecaster, windows: torch.Tensor, warmup: int, burn: int, horizon: int) -> torch.Tensor:
    """The loss of the module docstring for ``windows [B, warmup + horizon]`` (normalised by the net's σ²)."""
    state = net.initial_state(windows.shape[0])
    forced, *state = net(windows[:, :warmup, None], *state)
    errors = [forced[:, burn:, 0] - windows[:, burn + 1 : warmup + 1]]
    prediction = forced[:, -1:, :]
    for step in range(1, horizon):
        prediction, *state = net(prediction, *state)
        errors.append(prediction[:, 0, :] - windows[:, warmup + step : warmup + step + 1])
    return torch.cat(errors, dim=1).square().mean() / net.std.square().squeeze()


def validation_nrmse84(net: GatedForecaster, series: np.ndarray, first: int, warmup: int) -> float:
    """NRMSE84 of free runs started evenly in ``series[first:]``, each after ``warmup`` observed steps."""
    starts = np.asarray(spaced_starts(first + warmup, len(series) - NRMSE84_HORIZON, VALIDATION_TRIALS))
    observed = torch.from_numpy(np.stack([series[s - warmup : s] for s in starts]).astype(np.float32))
    with torch.no_grad():
        state = net.initial_state(len(starts))
        forced, *state = net(observed[:, :, None], *state)
        prediction = forced[:, -1:, :]
        for _ in range(NRMSE84_HORIZON - 1):
            prediction, *state = net(prediction, *state)
    targets = series[starts + NRMSE84_HORIZON - 1]
    return nrmse(prediction[:, 0, 0].numpy().astype(np.float64), targets, float(series.std()))


def train_free_runs(
    kind: str, hidden: int, series: np.ndarray, config: FreeRunTraining, *, seed: int, progress: bool = False
) -> TrainedForecaster:
    """Train a ``kind`` (gru | lstm) forecaster of ``hidden`` units per layer on ``series`` (raw units)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    cut = int(len(series) * (1 - VALIDATION_FRACTION))
    train = torch.from_numpy(series[:cut].astype(np.float32))
    net = GatedForecaster(
        kind, hidden=hidden, layers=config.layers, mean=float(series[:cut].mean()), std=float(series[:cut].std())
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.steps, pct_start=max(0.05, 2 / config.steps)
    )
    windows = torch.Generator().manual_seed(seed + 1)
    history, best, best_state = History(), math.inf, None
    started = time.perf_counter()
    for step in tqdm(range(config.steps), desc=f"{kind} forecaster", disable=not progress):
        net.train()
        horizon = max(1, min(config.horizon, round(config.horizon * step / (config.curriculum * config.steps))))
        length = config.warmup + horizon
        starts = torch.randint(0, len(train) - length, (config.batch,), generator=windows)
        loss = window_loss(net, train[starts[:, None] + torch.arange(length)], config.warmup, config.burn, horizon)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip_norm)
        optimizer.step()
        schedule.step()
        history.train.append(float(loss.detach()))
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            net.eval()
            score = validation_nrmse84(net, series, cut, config.warmup)
            history.val.append((step + 1, score))
            if score < best:  # NaN never wins
                best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
    if best_state is None:
        raise RuntimeError(f"{kind} forecaster: the validation NRMSE84 was never finite; lower lr or clip_norm")
    net.load_state_dict(best_state)
    net.eval()
    return TrainedForecaster(net, history, config.steps, best, time.perf_counter() - started)
