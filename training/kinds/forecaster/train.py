"""Forecasters: echo state networks (fixed or adapting online) and gated RNNs on Mackey-Glass and the laser.

``statestream train RECIPE`` draws the reservoir from the recipe's seed and fits the readout by
ridge regression on the task's training part (seconds), or, for a GRU or LSTM, trains it on
free runs by back-propagation through time (``training.forecast_training``: minutes), and
writes ``OUT/weights.pt``;
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

from training.forecast_training import FreeRunTraining
from training.kinds import ExportOptions, TrainingKind, TrainOptions
from training.nets.gated_forecaster import GATED_KINDS
from training.recipes import describe_recipe_path

RESERVOIRS = ("esn", "adaptive_esn")
NETS = (*RESERVOIRS, *GATED_KINDS)
WEIGHTS_NAME = "weights.pt"
#: What a reservoir's fields are when a recipe leaves them out (a gated net must leave them out).
RESERVOIR_DEFAULTS = {
    "spectral_radius": 0.9,
    "leak": 1.0,
    "input_scaling": 0.5,
    "bias_scaling": 0.2,
    "ridge": 1e-8,
    "washout": 100,
    "forgetting": 1.0,
    "p_start": 1.0,
    "renewal": 0.0,
    "p_renewed": 1.0,
}


@dataclass(frozen=True)
class ForecastRecipe:
    """A shipped forecaster.

    ``task``: mackey_glass | laser | mackey_glass_drift (``training.forecast_tasks``); ``net``:
    esn | adaptive_esn | gru | lstm; ``units``: the reservoir's size, or a gated net's units per
    layer. A reservoir: ``spectral_radius``, ``leak``, ``input_scaling``, ``bias_scaling``,
    ``seed``; its readout: ``ridge`` (λ) after ``washout`` steps. ``adaptive_esn`` adds the
    recursive least squares of each session: ``forgetting`` (λ_RLS), ``p_start``, ``renewal``
    and ``p_renewed``. A gated net learns by the ``[bptt]`` table (``FreeRunTraining``) and
    leaves the reservoir's fields out. ``max_horizon`` bounds a served rollout.
    """

    name: str
    kind: str
    task: str
    net: str
    description: str
    out: str
    units: int
    spectral_radius: float = RESERVOIR_DEFAULTS["spectral_radius"]
    leak: float = RESERVOIR_DEFAULTS["leak"]
    input_scaling: float = RESERVOIR_DEFAULTS["input_scaling"]
    ridge: float = RESERVOIR_DEFAULTS["ridge"]
    washout: int = int(RESERVOIR_DEFAULTS["washout"])
    bias_scaling: float = RESERVOIR_DEFAULTS["bias_scaling"]
    seed: int = 0
    forgetting: float = RESERVOIR_DEFAULTS["forgetting"]
    p_start: float = RESERVOIR_DEFAULTS["p_start"]
    renewal: float = RESERVOIR_DEFAULTS["renewal"]
    p_renewed: float = RESERVOIR_DEFAULTS["p_renewed"]
    max_horizon: int = 500
    bptt: FreeRunTraining = dataclasses.field(default_factory=FreeRunTraining)

    def __post_init__(self) -> None:
        from training.forecast_tasks import TASKS

        if self.net not in NETS:
            raise ValueError(f"net must be one of {NETS}, got {self.net!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        rls = ("forgetting", "p_start", "renewal", "p_renewed")
        if self.net == "esn" and any(getattr(self, k) != RESERVOIR_DEFAULTS[k] for k in rls):
            raise ValueError("forgetting, p_start, renewal and p_renewed belong to an adaptive_esn")
        if self.net in GATED_KINDS:
            if any(getattr(self, k) != v for k, v in RESERVOIR_DEFAULTS.items()):
                raise ValueError(f"a {self.net} forecaster has no reservoir: leave out {', '.join(RESERVOIR_DEFAULTS)}")
        elif self.bptt != FreeRunTraining():
            raise ValueError("the [bptt] table belongs to a gru or lstm forecaster")
        if self.net == "adaptive_esn":
            from training.nets.esn import check_rls

            check_rls(forgetting=self.forgetting, p_start=self.p_start, renewal=self.renewal, p_renewed=self.p_renewed)

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

    if options.steps is not None and recipe.net in RESERVOIRS:
        raise ValueError(f"{recipe.name}: a readout is solved in closed form; --steps does not apply")
    if options.steps is not None:
        recipe = replace(recipe, bptt=replace(recipe.bptt, steps=options.steps))
    if options.out is not None:
        recipe = replace(recipe, out=options.out)
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    data = training_data(recipe.task)
    metadata = {"recipe": recipe.to_dict(), "recipe_file": describe_recipe_path(options.recipe_file)}
    training: dict[str, Any] = {"torch": str(torch.__version__), "device": "cpu", "data": data.description}
    net: Any
    if recipe.net in RESERVOIRS:
        started = time.perf_counter()
        net = build_esn(recipe)
        net.fit(data.train.reshape(-1, 1), washout=recipe.washout, ridge=recipe.ridge)
        training["time_s"] = round(time.perf_counter() - started, 2)
    else:
        from training.checkpoints import LOSS_CURVE_FILE
        from training.forecast_training import train_free_runs
        from training.loops import save_loss_curve

        torch.set_num_threads(1)
        trained = train_free_runs(
            recipe.net, recipe.units, data.train, recipe.bptt, seed=recipe.seed, progress=options.progress
        )
        net = trained.net
        training |= {
            "time_s": round(trained.time_s, 1),
            "device": "cpu (1 thread)",
            "steps": trained.steps,
            "best_validation_nrmse84": trained.best_validation_nrmse84,
        }
    write_weights(out / WEIGHTS_NAME, net, metadata, training)  # before the plot: a plotting error keeps the weights
    if recipe.net in GATED_KINDS:
        save_loss_curve(
            trained.history,
            out / LOSS_CURVE_FILE,
            f"{recipe.name}: train window MSE / variance; validation NRMSE84",
            ylabel="MSE / variance (train), NRMSE84 (validation)",
            log=True,
        )
    return {"name": recipe.name, "weights": str(out / WEIGHTS_NAME), **training}


def restore(recipe: ForecastRecipe, weights: Any) -> Any:
    """The served net of ``recipe`` with the trained ``weights`` (a state dict), in eval mode."""
    from training.nets.gated_forecaster import GatedForecaster

    if recipe.net in GATED_KINDS:
        net = GatedForecaster(recipe.net, hidden=recipe.units, layers=recipe.bptt.layers)
        net.load_state_dict(weights)
        return net.eval()
    esn = build_esn(recipe)  # an adaptive net's weights are its reservoir's: its RLS starts at export
    esn.load_state_dict(weights)
    return wrap(recipe, esn).eval()


def served_state(recipe: ForecastRecipe, net: Any) -> tuple[Any, ...]:
    """The manifest's state: a reservoir (and an adaptive session's RLS), or the cells' tensors."""
    from service.contract import StateSpec
    from training.export_cells import cell_state_specs

    if recipe.net in GATED_KINDS:
        return cell_state_specs(net)
    esn = net.esn if recipe.net == "adaptive_esn" else net
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
    return state


def export(options: ExportOptions) -> str:
    from training.checkpoints import load_weights
    from training.export import record_scores
    from training.export_forecast import export_forecaster, forecast_manifest
    from training.forecast_tasks import free_run_horizon, held_out
    from training.recipes import from_table

    weights = load_weights(options.checkpoint)
    recipe = from_table(ForecastRecipe, weights.metadata["recipe"], where=str(options.checkpoint))
    net = restore(recipe, weights.model)
    normaliser = net.esn if recipe.net == "adaptive_esn" else net  # whose mean and std the graph applies
    recipe_file = str(weights.metadata.get("recipe_file", ""))
    training = {
        "recipe": recipe.to_dict(),
        "recipe_file": describe_recipe_path(Path(recipe_file)) if recipe_file else "",
        **weights.training,
    }
    manifest = forecast_manifest(
        name=recipe.name,
        description=recipe.description,
        state=served_state(recipe, net),
        max_horizon=recipe.max_horizon,
        decoding={"series": recipe.task, "mean": float(normaliser.mean[0]), "std": float(normaliser.std[0])},
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
