"""Forecasters: echo state networks (fixed or adapting online) on Mackey-Glass and the Santa Fe laser.

``statestream train RECIPE`` draws the reservoir from the recipe's seed and fits the readout by
ridge regression on the task's training part (seconds) and writes ``OUT/weights.pt``;
``statestream export --checkpoint OUT/weights.pt --out models/NAME`` writes the one-step graph
(``training.export_forecast``: teacher-forced and 84-step free-run parity) and scores the
installed graph; ``statestream eval --model models/NAME`` recomputes the scores from the ONNX
graph (``training.forecast_tasks.score``: NRMSE84 on Mackey-Glass, one-step and 20-step
free-run NRMSE on the laser, recovery after a change of τ for the drifting series).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training.kinds import ExportOptions, TrainingKind, TrainOptions
from training.recipes import describe_recipe_path

NETS = ("esn", "adaptive_esn")
WEIGHTS_NAME = "weights.pt"


@dataclass(frozen=True)
class ForecastRecipe:
    """A shipped forecaster.

    ``task``: mackey_glass | laser | mackey_glass_drift (``training.forecast_tasks``). The
    reservoir: ``units``, ``spectral_radius``, ``leak``, ``input_scaling``, ``bias_scaling``,
    ``seed``; the readout: ``ridge`` (λ) after ``washout`` steps. ``adaptive_esn`` adds the
    recursive least squares of each session: ``forgetting`` (λ_RLS) and ``delta`` (P₀ = I/δ).
    ``max_horizon`` bounds a served rollout.
    """

    name: str
    kind: str
    task: str
    net: str
    description: str
    out: str
    units: int
    spectral_radius: float
    leak: float
    input_scaling: float
    ridge: float
    washout: int
    bias_scaling: float = 0.2
    seed: int = 0
    forgetting: float = 1.0
    p_start: float = 1.0
    renewal: float = 0.0
    p_renewed: float = 1.0
    max_horizon: int = 500

    def __post_init__(self) -> None:
        from training.forecast_tasks import TASKS

        if self.net not in NETS:
            raise ValueError(f"net must be one of {NETS}, got {self.net!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        rls = (self.forgetting, self.p_start, self.renewal, self.p_renewed)
        if self.net == "esn" and rls != (1.0, 1.0, 0.0, 1.0):
            raise ValueError("forgetting, p_start, renewal and p_renewed belong to an adaptive_esn")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_esn(recipe: ForecastRecipe) -> Any:
    from training.nets.esn import EchoStateNetwork

    return EchoStateNetwork(
        units=recipe.units,
        spectral_radius=recipe.spectral_radius,
        leak=recipe.leak,
        input_scaling=recipe.input_scaling,
        bias_scaling=recipe.bias_scaling,
        seed=recipe.seed,
    )


def wrap(recipe: ForecastRecipe, esn: Any) -> Any:
    """The served net: the ESN itself, or the adaptive forecaster built on it."""
    from training.nets.esn import AdaptiveESN

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
    import torch

    from training.checkpoints import write_weights
    from training.forecast_tasks import training_data

    if options.steps is not None:
        raise ValueError(f"{recipe.name}: a readout is solved in closed form; --steps does not apply")
    if options.out is not None:
        recipe = replace(recipe, out=options.out)
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    data = training_data(recipe.task)
    started = time.perf_counter()
    esn = build_esn(recipe)
    esn.fit(data.train.reshape(-1, 1), washout=recipe.washout, ridge=recipe.ridge)
    elapsed = time.perf_counter() - started
    metadata = {"recipe": recipe.to_dict(), "recipe_file": describe_recipe_path(options.recipe_file)}
    training = {"time_s": round(elapsed, 2), "torch": str(torch.__version__), "device": "cpu", "data": data.description}
    write_weights(out / WEIGHTS_NAME, esn, metadata, training)
    return {"name": recipe.name, "weights": str(out / WEIGHTS_NAME), **training}


def export(options: ExportOptions) -> str:
    from service.contract import StateSpec
    from training.checkpoints import load_weights
    from training.export import record_scores
    from training.export_forecast import export_forecaster, forecast_manifest
    from training.forecast_tasks import free_run_horizon, held_out

    weights = load_weights(options.checkpoint)
    recipe = ForecastRecipe(**weights.metadata["recipe"])
    esn = build_esn(recipe)
    esn.load_state_dict(weights.model)
    net = wrap(recipe, esn).eval()
    n, d = esn.units, esn.features
    state: tuple[StateSpec, ...] = (
        StateSpec("reservoir", "reservoir_out", "float32", (n,), "zeros", "the reservoir state r_t"),
    )
    if recipe.net == "adaptive_esn":
        state += (
            StateSpec(
                "features", "features_out", "float32", (d,), "zeros", "z_t = [1; u_t; r_t], the last readout input"
            ),
            StateSpec("readout", "readout_out", "float32", (d,), "zeros", "w − w₀: this session's readout change"),
            StateSpec("inverse_correlation", "inverse_correlation_out", "float32", (d, d), "zeros", "P − p₀ I"),
        )
    recipe_file = str(weights.metadata.get("recipe_file", ""))
    training = {
        "recipe": recipe.to_dict(),
        "recipe_file": describe_recipe_path(Path(recipe_file)) if recipe_file else "",
        **weights.training,
    }
    manifest = forecast_manifest(
        name=recipe.name,
        description=recipe.description,
        state=state,
        max_horizon=recipe.max_horizon,
        decoding={"series": recipe.task, "mean": float(esn.mean[0]), "std": float(esn.std[0])},
        training=training,
    )
    started = time.perf_counter()
    horizon = free_run_horizon(recipe.task)
    parity = export_forecaster(net, manifest, options.out, held_out(recipe.task), horizon=horizon)
    scores = record_scores(options.out, evaluate(options.out))
    elapsed = time.perf_counter() - started
    shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    return (
        f"wrote {options.out}: parity max |diff| {parity.teacher_forced_max_abs_diff:.2e} teacher-forced, "
        f"{parity.free_run_max_abs_diff:.2e} over {parity.free_runs} free runs of {horizon} steps "
        f"(float32 vs float64 {parity.free_run_float32_vs_float64:.2e}); {shown} (ONNX, {elapsed:.1f} s)"
    )


def evaluate(folder: Path, progress: bool = False) -> dict[str, Any]:
    """The task's scores from the ONNX graph (seconds: no progress bar)."""
    from service.contract import Manifest
    from training.evaluate import open_session, ort_step_fn
    from training.forecast_eval import GraphRunner
    from training.forecast_tasks import score

    manifest = Manifest.load(folder)
    runner = GraphRunner(ort_step_fn(open_session(Path(folder) / manifest.step_graph)), manifest)
    return {"model": manifest.name, **score(str(manifest.decoding["series"]), runner)}


KIND = TrainingKind("forecaster", ForecastRecipe, train, export, evaluate)
