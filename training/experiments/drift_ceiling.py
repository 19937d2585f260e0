"""The best any readout over a reservoir can do on each side of the drift: the adaptive criterion's floor.

    python -m training.experiments.drift_ceiling                 # the grid below, 100 units (minutes)
    python -m training.experiments.drift_ceiling --units 200 --json

An adaptive session (``models/mackey_glass_adaptive``) changes only its linear readout, so after
τ moves from 17 to 23 (or ``--tau-after``) its one-step error cannot fall below what the *best*
fixed readout over the same reservoir reaches on the new regime, nor before the change below the
best on τ = 17. This command fits both optima offline (ridge regression in float64, scored on the
500-step windows of the drift score) for every reservoir of a grid and prints their ratio: where
it is above ``DRIFT_RECOVERY_FACTOR`` (2), only a session that forecasts worse than it could
before the change can come back within 2x of its pre-change level. docs/zoo.md has the numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from service.datasets.mackey_glass import DRIFT_CHANGE
from training.tasks.forecaster.esn import EchoStateNetwork, ridge_readout
from training.tasks.forecaster.series import DRIFT_RECOVERY_STEPS, DRIFTS, drift_series, training_data

GRID = {
    "spectral_radius": (0.9, 0.99, 1.1),
    "leak": (0.2, 0.3, 0.5, 1.0),
    "input_scaling": (0.2, 0.5),
}
RIDGES = (1e-10, 1e-8, 1e-6)
#: Steps of each regime dropped before fitting: the reservoir forgetting the other regime.
SETTLE = 300


@dataclass(frozen=True)
class Ceiling:
    units: int
    spectral_radius: float
    leak: float
    input_scaling: float
    best_before: float
    best_after: float

    @property
    def ratio(self) -> float:
        return self.best_after / self.best_before


def ceiling(
    units: int,
    spectral_radius: float,
    leak: float,
    input_scaling: float,
    *,
    bias_scaling: float = 0.2,
    seed: int = 0,
    tau_after: float = DRIFTS[""],
) -> Ceiling:
    """The two offline optima of one reservoir, each with the best of ``RIDGES``."""
    series = drift_series(tau_after)
    train = training_data("mackey_glass_drift").train
    esn = EchoStateNetwork(
        units=units,
        spectral_radius=spectral_radius,
        leak=leak,
        input_scaling=input_scaling,
        bias_scaling=bias_scaling,
        seed=seed,
    )
    esn.mean.fill_(float(train.mean()))
    esn.std.fill_(float(train.std()))
    features = esn.teacher_forced_features(series[:-1, None])
    targets = (series[1:] - train.mean()) / train.std()
    end = len(series) - 1
    parts = {
        "before": (
            slice(SETTLE, DRIFT_CHANGE - DRIFT_RECOVERY_STEPS),
            slice(DRIFT_CHANGE - 1 - DRIFT_RECOVERY_STEPS, DRIFT_CHANGE - 1),
        ),
        "after": (slice(DRIFT_CHANGE + SETTLE, end - DRIFT_RECOVERY_STEPS), slice(end - DRIFT_RECOVERY_STEPS, end)),
    }

    def error(part: str, ridge: float) -> float:
        fit, scored = parts[part]
        w = ridge_readout(features[fit], targets[fit, None], ridge)
        residual = features[scored] @ w[0] - targets[scored]
        return float(np.sqrt(np.mean(np.square(residual)) * train.var() / series.var()))

    return Ceiling(
        units,
        spectral_radius,
        leak,
        input_scaling,
        min(error("before", ridge) for ridge in RIDGES),
        min(error("after", ridge) for ridge in RIDGES),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.experiments.drift_ceiling", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--units", type=int, default=100, help="reservoir size (default: 100, the shipped adaptive one's)"
    )
    parser.add_argument(
        "--tau-after", type=float, default=DRIFTS[""], help="tau after the change (default: 23; before it, 17)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    args = parser.parse_args(argv)
    if args.tau_after <= 0:
        parser.error(f"--tau-after must be > 0, got {args.tau_after}")
    if not args.json:
        print("units  rho   leak  input  best before  best after  ratio")
    for rho, leak, scale in itertools.product(*GRID.values()):
        found = ceiling(args.units, rho, leak, scale, tau_after=args.tau_after)
        if args.json:
            print(json.dumps(asdict(found) | {"ratio": found.ratio}), flush=True)
        else:
            print(
                f"{found.units:5d}  {rho:<4}  {leak:<4}  {scale:<5}  {found.best_before:11.2e}"
                f"  {found.best_after:10.2e}  {found.ratio:5.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
