"""Training a forecaster: a reservoir's readout by ridge regression, or a gated RNN on free runs.

An echo state network draws its reservoir from the recipe's seed and solves its readout on the
series' training part in closed form (seconds); a GRU or LSTM learns by back-propagation through
free runs (``free_run_training``: minutes). Either way the weights go to ``OUT/weights.pt``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from training.checkpoints import LOSS_CURVE_FILE, WEIGHTS_FILE, write_weights
from training.plots import save_loss_curve
from training.recipes import describe_recipe_path
from training.tasks import TrainOptions
from training.tasks.forecaster.esn import AdaptiveESN, EchoStateNetwork
from training.tasks.forecaster.free_run_training import train_free_runs
from training.tasks.forecaster.recipe import RESERVOIRS, ForecastRecipe
from training.tasks.forecaster.series import training_data


def build_esn(recipe: ForecastRecipe) -> EchoStateNetwork:
    return EchoStateNetwork(
        units=recipe.units,
        spectral_radius=recipe.spectral_radius,
        leak=recipe.leak,
        input_scaling=recipe.input_scaling,
        bias_scaling=recipe.bias_scaling,
        seed=recipe.seed,
    )


def wrap(recipe: ForecastRecipe, esn: EchoStateNetwork) -> EchoStateNetwork | AdaptiveESN:
    """The served net: the ESN itself, or the adaptive forecaster built on it."""
    if recipe.net == "adaptive_esn":
        return AdaptiveESN(
            esn,
            forgetting=recipe.forgetting,
            p_start=recipe.p_start,
            renewal=recipe.renewal,
            p_renewed=recipe.p_renewed,
        )
    return esn


def train(recipe: ForecastRecipe, options: TrainOptions) -> dict[str, Any]:
    if options.steps is not None and recipe.net in RESERVOIRS:
        raise ValueError(f"{recipe.name}: a readout is solved in closed form; --steps does not apply")
    if options.steps is not None:
        recipe = replace(recipe, bptt=replace(recipe.bptt, steps=options.steps))
    if options.out is not None:
        recipe = replace(recipe, out=options.out)
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    data = training_data(recipe.series)
    metadata = {"recipe": recipe.to_dict(), "recipe_file": describe_recipe_path(options.recipe_file)}
    training: dict[str, Any] = {"torch": str(torch.__version__), "device": "cpu", "data": data.description}
    if recipe.net in RESERVOIRS:
        started = time.perf_counter()
        esn = build_esn(recipe)
        esn.fit(data.train.reshape(-1, 1), washout=recipe.washout, ridge=recipe.ridge)
        training["time_s"] = round(time.perf_counter() - started, 2)
        write_weights(out / WEIGHTS_FILE, esn, metadata, training)
        return {"name": recipe.name, "weights": str(out / WEIGHTS_FILE), **training}
    torch.set_num_threads(1)
    trained = train_free_runs(
        recipe.net, recipe.units, data.train, recipe.bptt, seed=recipe.seed, progress=options.progress
    )
    training |= {
        "time_s": round(trained.time_s, 1),
        "device": "cpu (1 thread)",
        "steps": trained.steps,
        "best_validation_nrmse84": trained.best_validation_nrmse84,
    }
    write_weights(out / WEIGHTS_FILE, trained.net, metadata, training)  # before the plot: a plotting error keeps them
    save_loss_curve(
        trained.history,
        out / LOSS_CURVE_FILE,
        f"{recipe.name}: train window MSE / variance; validation NRMSE84",
        ylabel="MSE / variance (train), NRMSE84 (validation)",
        log=True,
    )
    return {"name": recipe.name, "weights": str(out / WEIGHTS_FILE), **training}
