"""The series a forecaster is trained and scored on, and their protocols: data, splits, start points, scores.

Every number a forecaster's manifest, ``statestream eval`` and the reservoirpy comparison report
comes from :func:`score`, so they measure the same thing on the same splits. The series, by
name: ``mackey_glass`` (τ = 17, NRMSE84), ``laser`` (the Santa Fe laser: one-step NRMSE and
20-step free runs) and ``mackey_glass_drift`` (τ moves from 17 to 23, or to 19 for the scores
prefixed ``tau19_``: the one-step error before and after the change, and the recovery).
docs/zoo.md gives each protocol's splits, start points and σ.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from service.datasets.laser import LASER_DESCRIPTION, load_laser
from service.datasets.mackey_glass import (
    DRIFT_CHANGE,
    DRIFT_SAMPLES,
    MG_DESCRIPTION,
    MG_SAMPLES,
    MG_TRAIN,
    drifting_mackey_glass,
    mackey_glass,
)
from training.tasks.forecaster.scoring import (
    NRMSE84_HORIZON,
    Runner,
    one_step_nrmse,
    score_free_runs,
    spaced_starts,
)

SERIES = ("mackey_glass", "laser", "mackey_glass_drift")
MG_WARMUP = 500
MG_TRIALS = 50
LASER_HORIZON = 20
LASER_WARMUP = 200
LASER_FREE_TRIALS = 100
#: Window (steps) of the running one-step error in the drift experiment.
DRIFT_WINDOW = 100
#: The drift test: after the change the error must come back within this factor of its level before.
DRIFT_RECOVERY_FACTOR = 2.0
DRIFT_RECOVERY_STEPS = 500


@dataclass(frozen=True)
class ForecastData:
    """A series' training part (the readout is fitted on it) and what it is scored on."""

    name: str
    train: np.ndarray
    description: str


@cache
def mackey_glass_series() -> np.ndarray:
    return mackey_glass(MG_SAMPLES)


#: The drifts an adaptive forecaster is scored on: τ after the change (17 before it) by the
#: prefix of its scores. τ = 23, the issue's example, is the harder regime: the best readout over
#: the shipped reservoir forecasts it ~4× worse than τ = 17, so no session that forecasts well
#: before the change can come back within ``DRIFT_RECOVERY_FACTOR`` of that level after it.
#: τ = 19 is as predictable as τ = 17 (`python -m training.experiments.drift_ceiling --tau-after 19`), so
#: there the criterion measures the tracking alone (docs/zoo.md).
DRIFTS = {"": 23.0, "tau19_": 19.0}


@cache
def drift_series(tau_after: float = DRIFTS[""]) -> np.ndarray:
    return drifting_mackey_glass(DRIFT_SAMPLES, DRIFT_CHANGE, tau_after=tau_after)


def training_data(name: str) -> ForecastData:
    if name == "laser":
        return ForecastData(name, load_laser().train, LASER_DESCRIPTION)
    if name in ("mackey_glass", "mackey_glass_drift"):
        return ForecastData(name, mackey_glass_series()[:MG_TRAIN], f"{MG_DESCRIPTION}; first {MG_TRAIN} samples")
    raise ValueError(f"unknown series {name!r}; known: {SERIES}")


def held_out(name: str) -> np.ndarray:
    """The part of the series the readout never saw: for parity checks and golden traces."""
    if name == "laser":
        return load_laser().test
    if name == "mackey_glass":
        return mackey_glass_series()[MG_TRAIN:]
    if name == "mackey_glass_drift":
        return drift_series()[DRIFT_CHANGE:]
    raise ValueError(f"unknown series {name!r}; known: {SERIES}")


#: The adaptive forecaster is a one-step tracker: its small reservoir's readout (the offline
#: one too) weighs the input directly by more than 1, so a free run grows without bound within
#: tens of steps and two float32 implementations part as fast (docs/zoo.md). Its rollouts and
#: its free-run parity check stop at this many steps.
DRIFT_FREE_RUN_HORIZON = 5


def free_run_horizon(name: str) -> int:
    """The free-run length the series scores (and the exporter checks parity over)."""
    return {"laser": LASER_HORIZON, "mackey_glass_drift": DRIFT_FREE_RUN_HORIZON}.get(name, NRMSE84_HORIZON)


def mackey_glass_starts() -> list[int]:
    return spaced_starts(MG_TRAIN + MG_WARMUP, MG_SAMPLES - NRMSE84_HORIZON, MG_TRIALS)


def laser_starts() -> list[int]:
    laser = load_laser()
    first = len(laser.train)
    return spaced_starts(first, first + len(laser.test) - LASER_HORIZON, LASER_FREE_TRIALS)


def score(name: str, runner: Runner) -> dict[str, float]:
    """The series' scores of a forecaster (rounded to 4 significant digits)."""
    scores: dict[str, float]
    if name == "mackey_glass":
        series = mackey_glass_series()
        runs = score_free_runs(
            runner,
            series,
            mackey_glass_starts(),
            warmup=MG_WARMUP,
            horizon=NRMSE84_HORIZON,
            std=float(series.std()),
        )
        scores = {"nrmse84": runs.nrmse_at_horizon, "log10_nrmse84": float(np.log10(runs.nrmse_at_horizon))}
        scores["trials"] = runs.trials
        # The same fixed forecaster on the drifting series: what an adaptive session is compared with.
        scores |= {f"drift_{key}": value for key, value in drift_scores(runner).items()}
    elif name == "laser":
        laser = load_laser()
        series = np.concatenate([laser.train, laser.test])
        runs = score_free_runs(
            runner,
            series,
            laser_starts(),
            warmup=LASER_WARMUP,
            horizon=LASER_HORIZON,
            std=float(laser.test.std()),
        )
        scores = {
            "one_step_nrmse": one_step_nrmse(runner, laser.train, laser.test),
            f"free_run_{LASER_HORIZON}_nrmse": runs.nrmse_over_horizon,
            "trials": runs.trials,
        }
    elif name == "mackey_glass_drift":
        scores = drift_scores(runner)
    else:
        raise ValueError(f"unknown series {name!r}; known: {SERIES}")
    return {key: float(f"{value:.4g}") for key, value in scores.items()}


def drift_scores(runner: Runner) -> dict[str, float]:
    """The one-step errors around the change and the recovery, for each of ``DRIFTS``."""
    scores: dict[str, float] = {}
    for prefix, tau_after in DRIFTS.items():
        errors = drift_errors(runner, tau_after)
        scores |= {
            f"{prefix}one_step_nrmse_before_change": errors.before,
            f"{prefix}one_step_nrmse_after_change": errors.after,
            f"{prefix}recovery_steps": float(errors.recovery_steps),
        }
    return scores


@dataclass(frozen=True)
class DriftErrors:
    """One-step errors on the drifting series, in units of its standard deviation.

    ``before``: RMS over the ``DRIFT_RECOVERY_STEPS`` steps before the change; ``after``: over
    the last ``DRIFT_RECOVERY_STEPS`` steps of the series; ``recovery_steps``: steps after the
    change until the running error (window ``DRIFT_WINDOW``) is back within
    ``DRIFT_RECOVERY_FACTOR`` × ``before`` (-1: never); ``running``: that running error, per step.
    """

    before: float
    after: float
    recovery_steps: int
    running: np.ndarray


def drift_errors(runner: Runner, tau_after: float = DRIFTS[""]) -> DriftErrors:
    series = drift_series(tau_after)
    predictions = runner.teacher_forced(series[:-1])
    squared = np.square(predictions - series[1:]) / series.var()
    running = np.sqrt(np.convolve(squared, np.ones(DRIFT_WINDOW) / DRIFT_WINDOW, mode="full")[: len(squared)])
    change = DRIFT_CHANGE - 1  # predictions[t] is of series[t + 1]
    before = float(np.sqrt(squared[change - DRIFT_RECOVERY_STEPS : change].mean()))
    after = float(np.sqrt(squared[-DRIFT_RECOVERY_STEPS:].mean()))
    back = np.flatnonzero(running[change + DRIFT_WINDOW :] <= DRIFT_RECOVERY_FACTOR * before)
    recovery = int(back[0]) + DRIFT_WINDOW if back.size else -1
    return DriftErrors(before, after, recovery, running)
