"""Forecasting scores, computed by running a one-step forecaster graph (or any step function like it).

A forecaster's step is ``observation u_t, state → prediction of u_{t+1}, state'``, one step per
call. :func:`teacher_forced` feeds every observation in turn; :func:`free_runs` feeds ``warmup``
observations before each start, then each prediction back as the next observation. The scores
on top of them (NRMSE, one step and over free runs, and Jaeger & Haas's NRMSE84: the error at the
84th free-running step over the signal's standard deviation, the literature's best ≈ 10^-4.2)
take a :class:`Runner`, anything that runs a series both ways: :class:`GraphRunner` (the exported
graph or the PyTorch net) or the benchmark's reservoirpy model, so both are scored by the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.contract import Arrays, Manifest, zero_state
from training.onnx_replay import StepFn

OBSERVATION, PREDICTION = "observation", "prediction"
NRMSE84_HORIZON = 84


def _step(step_fn: StepFn, manifest: Manifest, u: np.ndarray, state: Arrays) -> tuple[np.ndarray, Arrays]:
    """One call: ``u [B]`` → prediction ``[B]`` and the new state."""
    results = step_fn({OBSERVATION: u.astype(np.float32).reshape(-1, 1, 1)} | state)
    return results[PREDICTION].reshape(-1), {s.input: results[s.output] for s in manifest.state}


def teacher_forced(step_fn: StepFn, manifest: Manifest, series: np.ndarray) -> np.ndarray:
    """Predictions ``p[t]`` of ``series[t + 1]`` after feeding ``series[: t + 1]`` from the initial state."""
    state = zero_state(manifest, 1)
    out = np.empty(len(series))
    for t, value in enumerate(series):
        prediction, state = _step(step_fn, manifest, np.asarray([value]), state)
        out[t] = prediction[0]
    return out


def free_runs(
    step_fn: StepFn, manifest: Manifest, series: np.ndarray, starts: Sequence[int], *, warmup: int, horizon: int
) -> np.ndarray:
    """``[len(starts), horizon]``: free-run forecasts of ``series[s : s + horizon]`` for each start ``s``."""
    starts_array = np.asarray(starts)
    if starts_array.min() < warmup or starts_array.max() + horizon > len(series):
        raise ValueError("every start needs `warmup` observations before it and `horizon` after it")
    state = zero_state(manifest, len(starts_array))
    prediction = np.zeros(len(starts_array))
    for lag in range(warmup, 0, -1):
        prediction, state = _step(step_fn, manifest, series[starts_array - lag], state)
    out = np.empty((len(starts_array), horizon))
    for h in range(horizon):
        out[:, h] = prediction
        if h + 1 < horizon:
            prediction, state = _step(step_fn, manifest, prediction, state)
    return out


class Runner(Protocol):
    """A forecaster the scores can run: teacher-forced over a series, and free from start points."""

    def teacher_forced(self, series: np.ndarray) -> np.ndarray: ...

    def free_runs(self, series: np.ndarray, starts: Sequence[int], *, warmup: int, horizon: int) -> np.ndarray: ...


@dataclass(frozen=True)
class GraphRunner:
    """A one-step forecaster given as a step function (ONNX Runtime or PyTorch) and its manifest."""

    step_fn: StepFn
    manifest: Manifest

    def teacher_forced(self, series: np.ndarray) -> np.ndarray:
        return teacher_forced(self.step_fn, self.manifest, series)

    def free_runs(self, series: np.ndarray, starts: Sequence[int], *, warmup: int, horizon: int) -> np.ndarray:
        return free_runs(self.step_fn, self.manifest, series, starts, warmup=warmup, horizon=horizon)


def nrmse(predicted: np.ndarray, target: np.ndarray, std: float) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(predicted) - np.asarray(target)))) / std)


def spaced_starts(first: int, last: int, trials: int) -> list[int]:
    """``trials`` evenly spaced start points in ``[first, last]``."""
    return [int(s) for s in np.linspace(first, last, trials).round()]


@dataclass(frozen=True)
class FreeRunScore:
    nrmse_at_horizon: float
    nrmse_over_horizon: float
    trials: int


def score_free_runs(
    runner: Runner,
    series: np.ndarray,
    starts: Sequence[int],
    *,
    warmup: int,
    horizon: int,
    std: float,
) -> FreeRunScore:
    """NRMSE of the last free-run step (NRMSE84 when ``horizon`` is 84) and over all its steps."""
    forecasts = runner.free_runs(series, starts, warmup=warmup, horizon=horizon)
    targets = np.stack([series[s : s + horizon] for s in starts])
    return FreeRunScore(
        nrmse_at_horizon=nrmse(forecasts[:, -1], targets[:, -1], std),
        nrmse_over_horizon=nrmse(forecasts, targets, std),
        trials=len(starts),
    )


def one_step_nrmse(runner: Runner, train: np.ndarray, test: np.ndarray) -> float:
    """NRMSE of the one-step predictions of ``test`` (the whole series teacher-forced from its start),
    over ``test``'s standard deviation."""
    series = np.concatenate([train, test])
    predictions = runner.teacher_forced(series[:-1])
    return nrmse(predictions[len(train) - 1 :], test, float(test.std()))
