"""Mackey-Glass series, generated here (never downloaded): the classic chaotic forecasting benchmark.

The delay differential equation (Mackey & Glass 1977), with the usual constants::

    dx/dt = β x(t − τ) / (1 + x(t − τ)^n) − γ x(t),    β = 0.2, γ = 0.1, n = 10

is chaotic for τ = 17. It is integrated by fourth-order Runge-Kutta with ``dt = 0.1`` (the
delayed half-step value linearly interpolated), from a constant history ``x = 1.2``; the first
``TRANSIENT`` time units are dropped, then one sample per time unit (Jaeger & Haas 2004).
``drifting_mackey_glass`` continues one integration while τ changes at a given sample: the
signal an adaptive forecaster has to follow (docs/zoo.md).
"""

from __future__ import annotations

import numpy as np

BETA, GAMMA, POWER = 0.2, 0.1, 10
DT = 0.1
STEPS_PER_UNIT = 10
TRANSIENT = 1000
X0 = 1.2
#: The benchmark's cut (``training/forecast_tasks.py``): samples generated, the first of them train.
MG_SAMPLES = 10_000
MG_TRAIN = 6_000
#: The drifting series: its length, and the sample where tau changes.
DRIFT_SAMPLES = 6_000
DRIFT_CHANGE = 3_000
MG_DESCRIPTION = (
    "Mackey-Glass tau=17 (beta 0.2, gamma 0.1, n 10), RK4 dt=0.1 from x=1.2, "
    f"first {TRANSIENT} time units dropped, sampled every time unit"
)


def _rate(x: float, delayed: float) -> float:
    return BETA * delayed / (1.0 + delayed**POWER) - GAMMA * x


def integrate(taus: np.ndarray) -> np.ndarray:
    """Samples ``0 .. len(taus) - 1`` (one per time unit, after the transient); sample ``i`` is
    integrated towards with delay ``taus[i]`` (whole multiples of ``DT``)."""
    samples = len(taus)
    schedule = np.concatenate([np.full(TRANSIENT, taus[0]), taus])
    lags = np.rint(schedule / DT).astype(np.int64)
    history = int(lags.max())
    grid = np.full(history + len(schedule) * STEPS_PER_UNIT + 1, X0)
    at = history  # grid[at] is x(t); grid[: history] is the constant past
    for lag in lags:
        for _ in range(STEPS_PER_UNIT):
            x = grid[at]
            back, back_next = grid[at - lag], grid[at - lag + 1]
            back_mid = 0.5 * (back + back_next)
            k1 = _rate(x, back)
            k2 = _rate(x + 0.5 * DT * k1, back_mid)
            k3 = _rate(x + 0.5 * DT * k2, back_mid)
            k4 = _rate(x + DT * k3, back_next)
            grid[at + 1] = x + DT / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
            at += 1
    sampled = grid[history + STEPS_PER_UNIT :: STEPS_PER_UNIT]
    return sampled[TRANSIENT : TRANSIENT + samples].copy()


def mackey_glass(samples: int, tau: float = 17.0) -> np.ndarray:
    """``samples`` points of the τ series, one per time unit (float64)."""
    return integrate(np.full(samples, float(tau)))


def drifting_mackey_glass(
    samples: int, change_at: int, tau_before: float = 17.0, tau_after: float = 23.0
) -> np.ndarray:
    """One integration whose delay moves from ``tau_before`` to ``tau_after`` at sample ``change_at``."""
    taus = np.where(np.arange(samples) < change_at, tau_before, tau_after)
    return integrate(taus)
