"""Side by side with reservoirpy: the same reservoir size, splits and scores, two implementations.

    python -m training.experiments.reservoir_benchmark                 # both series, the tuned settings
    python -m training.experiments.reservoir_benchmark --series laser --json

For each series it trains the shipped recipe's ESN, exported and scored by ONNX Runtime in
float32 (what the server runs), and ``reservoirpy.ESN`` with the same units, input-to-readout
connections, washout and training part, scored by reservoirpy's own ``run`` and ``step`` in
float64; both are scored by the same functions (``training.tasks.forecaster.scoring``) on the same
start points. ``--tune`` first runs, for both, the same grid over spectral radius, leak, input
scaling and ridge on a validation part of the training part; the winners are
``RESERVOIRPY_SETTINGS`` and the shipped recipes. docs/benchmarks.md records the runs and what
each library keeps of its own defaults.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from training.tasks.forecaster.scoring import NRMSE84_HORIZON, nrmse, spaced_starts
from training.tasks.forecaster.series import score, training_data

#: The series compared, each with the shipped recipe of the same name.
BENCHMARKED = ("mackey_glass", "laser")
VALIDATION_FRACTION = 0.2
GRID = {
    "spectral_radius": (0.5, 0.9, 1.1),
    "leak": (0.5, 1.0),
    "input_scaling": (0.5, 1.0),
    "ridge": (1e-10, 1e-8, 1e-6, 1e-4),
}


@dataclass(frozen=True)
class Settings:
    """One ESN's hyper-parameters, as both libraries name them between them."""

    units: int
    spectral_radius: float
    leak: float
    input_scaling: float
    ridge: float
    washout: int


#: reservoirpy's winners of the validation grid (``--tune``, run 2026-12-02; docs/benchmarks.md), per series.
RESERVOIRPY_SETTINGS = {
    "mackey_glass": Settings(500, 1.1, 0.5, 1.0, 1e-8, 300),
    "laser": Settings(500, 0.9, 1.0, 0.5, 1e-4, 100),
}


class ReservoirpyRunner:
    """reservoirpy's ESN behind :class:`training.tasks.forecaster.scoring.Runner` (float64, one trial at a time)."""

    def __init__(self, settings: Settings, seed: int = 0) -> None:
        from reservoirpy import ESN

        self.settings = settings
        self.model = ESN(
            units=settings.units,
            sr=settings.spectral_radius,
            lr=settings.leak,
            input_scaling=settings.input_scaling,
            ridge=settings.ridge,
            input_to_readout=True,
            seed=seed,
        )
        self.mean, self.std = 0.0, 1.0

    def fit(self, train: np.ndarray) -> None:
        self.mean, self.std = float(train.mean()), float(train.std())
        u = self._norm(train)
        self.model.fit(u[:-1], u[1:], warmup=self.settings.washout)

    def _norm(self, series: np.ndarray) -> np.ndarray:
        return ((np.asarray(series, np.float64) - self.mean) / self.std).reshape(-1, 1)

    def teacher_forced(self, series: np.ndarray) -> np.ndarray:
        self.model.reset()
        return self.mean + self.std * np.asarray(self.model.run(self._norm(series)))[:, 0]

    def free_runs(self, series: np.ndarray, starts: Sequence[int], *, warmup: int, horizon: int) -> np.ndarray:
        out = np.empty((len(starts), horizon))
        for row, start in enumerate(starts):
            self.model.reset()
            y = np.asarray(self.model.run(self._norm(series[start - warmup : start])))[-1]
            for h in range(horizon):
                out[row, h] = y[0]
                if h + 1 < horizon:
                    y = np.asarray(self.model.step(y)).reshape(-1)
        return self.mean + self.std * out


def statestream_row(name: str, recipe: Any, *, units: int | None = None) -> dict[str, Any]:
    """Train the recipe's ESN, export it to a temporary folder, score the ONNX graph."""
    from service.contract import Manifest
    from training.checkpoints import WEIGHTS_FILE
    from training.onnx_replay import open_session, ort_step_fn
    from training.tasks import ExportOptions, TrainOptions, task_of
    from training.tasks.forecaster.scoring import GraphRunner

    task = task_of("forecaster")
    if units is not None:
        recipe = replace(recipe, units=units)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        task.train(recipe, TrainOptions(recipe_file=Path(f"{recipe.name}.toml"), out=tmp, progress=False))
        train_s = time.perf_counter() - started
        folder = Path(tmp) / "model"
        task.export(ExportOptions(checkpoint=Path(tmp) / WEIGHTS_FILE, out=folder))
        manifest = Manifest.load(folder)
        scores = score(name, GraphRunner(ort_step_fn(open_session(folder / manifest.step_graph)), manifest))
    return {
        "implementation": "statestream (ONNX, float32)",
        "series": name,
        "units": recipe.units,
        "train_s": train_s,
    } | scores


def reservoirpy_row(name: str, settings: Settings) -> dict[str, Any]:
    runner = ReservoirpyRunner(settings)
    started = time.perf_counter()
    runner.fit(training_data(name).train)
    train_s = time.perf_counter() - started
    scores = score(name, runner)
    return {
        "implementation": "reservoirpy (float64)",
        "series": name,
        "units": settings.units,
        "train_s": train_s,
    } | scores


def validation_score(name: str, runner: Any, validation: np.ndarray, context: np.ndarray) -> float:
    """The tuning criterion on the validation part (``context``: the training part before it)."""
    series = np.concatenate([context, validation])
    if name == "laser":
        predictions = runner.teacher_forced(series[:-1])[len(context) - 1 :]
        return nrmse(predictions, validation, float(validation.std()))
    starts = spaced_starts(len(context) + 100, len(series) - NRMSE84_HORIZON, 20)
    forecasts = runner.free_runs(series, starts, warmup=300, horizon=NRMSE84_HORIZON)
    targets = np.stack([series[s : s + NRMSE84_HORIZON] for s in starts])
    return nrmse(forecasts, targets, float(series.std()))


def tune(name: str, library: str, units: int, washout: int) -> tuple[Settings, float]:
    """The grid's best settings for ``library`` on the validation part, and their score."""
    train = training_data(name).train
    cut = int(len(train) * (1 - VALIDATION_FRACTION))
    best: tuple[Settings, float] | None = None
    for rho, leak, scale, ridge in itertools.product(*GRID.values()):
        settings = Settings(units, rho, leak, scale, ridge, washout)
        runner = _runner(library, settings, train[:cut])
        value = validation_score(name, runner, train[cut:], train[:cut])
        print(json.dumps({"tune": library, "series": name, **settings.__dict__, "validation_nrmse": value}), flush=True)
        if best is None or value < best[1]:
            best = (settings, value)
    assert best is not None
    return best


def _runner(library: str, settings: Settings, train: np.ndarray) -> Any:
    if library == "reservoirpy":
        runner = ReservoirpyRunner(settings)
        runner.fit(train)
        return runner
    from service.contract import StateSpec
    from training.onnx_export import torch_step_fn
    from training.tasks.forecaster.esn import EchoStateNetwork
    from training.tasks.forecaster.export import forecast_manifest
    from training.tasks.forecaster.scoring import GraphRunner

    esn = EchoStateNetwork(
        units=settings.units,
        spectral_radius=settings.spectral_radius,
        leak=settings.leak,
        input_scaling=settings.input_scaling,
    )
    esn.fit(train.reshape(-1, 1), washout=settings.washout, ridge=settings.ridge)
    state = (StateSpec("reservoir", "reservoir_out", "float32", (settings.units,), "zeros", ""),)
    manifest = forecast_manifest(name="tune", description="", state=state, max_horizon=1, decoding={}, training={})
    return GraphRunner(torch_step_fn(esn, manifest), manifest)


def main(argv: Sequence[str] | None = None) -> int:
    from training.recipes import load_recipe, recipe_path
    from training.tasks.forecaster.recipe import ForecastRecipe

    parser = argparse.ArgumentParser(
        prog="python -m training.experiments.reservoir_benchmark", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--series", choices=BENCHMARKED, action="append", help="a series (default: both)")
    parser.add_argument("--units", type=int, help="reservoir size for both (default: the recipe's)")
    parser.add_argument("--tune", action="store_true", help="run the validation grid for both libraries first")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    args = parser.parse_args(argv)
    for name in args.series or BENCHMARKED:
        recipe: ForecastRecipe = load_recipe(recipe_path(name))
        settings = RESERVOIRPY_SETTINGS[name]
        if args.units is not None:
            settings = replace(settings, units=args.units)
        if args.tune:
            settings, _ = tune(name, "reservoirpy", settings.units, settings.washout)
            ours, _ = tune(name, "statestream", settings.units, recipe.washout)
            recipe = replace(
                recipe,
                spectral_radius=ours.spectral_radius,
                leak=ours.leak,
                input_scaling=ours.input_scaling,
                ridge=ours.ridge,
            )
        rows = [statestream_row(name, recipe, units=args.units), reservoirpy_row(name, settings)]
        for row in rows:
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                shown = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "train_s")
                print(
                    f"{name:<13} {row['implementation']:<28} N={row['units']:<4} train {row['train_s']:6.2f} s  {shown}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
