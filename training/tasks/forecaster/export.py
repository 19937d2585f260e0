"""Export a one-step forecaster (an ESN, adaptive or not, or a gated RNN) as a servable model folder.

The graph is one step (``observation [B, 1, 1]``, state → ``prediction [B, 1, 1]``, state'),
exported with the shared TorchScript path, time axis fixed at 1. Nothing is installed unless
ONNX Runtime agrees with the PyTorch net teacher-forced (one step per call over held-out data)
and over free runs of the series' scored horizon (:func:`check_forecast_parity`; a free run
amplifies every rounding difference, so that is the check that matters in float32), and the
folder loads back through ``service.contract``. The scores then come from the installed graph.
docs/zoo.md has the bounds and what they measured.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.contract import GoldenTrace, Manifest, StateSpec, TensorSpec, check_graph
from training.cell_export import cell_state_specs
from training.checkpoints import load_weights
from training.nets.step import StepNet
from training.onnx_export import (
    GRAPH_FILE,
    OPSET,
    ParityError,
    export_step_graph,
    record_golden,
    record_scores,
    staged_folder,
    torch_step_fn,
)
from training.onnx_replay import StepFn, open_session, ort_step_fn
from training.recipes import from_table, recorded_recipe, recorded_recipe_file
from training.tasks import ExportOptions
from training.tasks.forecaster.evaluate import evaluate
from training.tasks.forecaster.gated_net import GatedForecaster
from training.tasks.forecaster.recipe import GATED_NETS, ForecastRecipe
from training.tasks.forecaster.scoring import free_runs, spaced_starts, teacher_forced
from training.tasks.forecaster.series import free_run_horizon, held_out
from training.tasks.forecaster.train import build_esn, wrap

TASK = "forecaster"
PARITY_STEPS = 1000
FREE_RUN_PARITY_TRIALS = 8
FREE_RUN_WARMUP = 200
GOLDEN_STEPS = 8
#: Max |ONNX − PyTorch| of any prediction over both runs, in units of the held-out series'
#: standard deviation. float32 kernels differ by ~1e-7 relative per step; 84 free-running steps
#: amplify that to ~1e-4 at most on these series (measured: docs/zoo.md); a graph that computes
#: something else differs by far more.
PARITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ForecastParity:
    teacher_forced_max_abs_diff: float
    free_run_max_abs_diff: float
    free_run_float32_vs_float64: float
    steps: int
    free_runs: int
    horizon: int


def forecast_manifest(
    *,
    name: str,
    description: str,
    state: tuple[StateSpec, ...],
    max_horizon: int,
    decoding: Mapping[str, Any],
    training: Mapping[str, Any],
) -> Manifest:
    return Manifest(
        name=name,
        version="1",
        task=TASK,
        description=description,
        step_graph=GRAPH_FILE,
        inputs=(TensorSpec("observation", "float32", (1,), "the observation of this step, in the series' units"),),
        outputs=(TensorSpec("prediction", "float32", (1,), "the predicted next observation, in the series' units"),),
        state=state,
        golden=GoldenTrace({}, {}),
        decoding={"steps_per_call": 1, "max_horizon": max_horizon, **decoding},
        training=dict(training),
    )


def float64_step_fn(net: StepNet, manifest: Manifest) -> StepFn:
    """The PyTorch net run in float64 (a copy), fed and read as float32 arrays like the graph."""
    import copy

    net64 = copy.deepcopy(net).double()
    step = torch_step_fn(net64, manifest)

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return step({k: v.astype(np.float64) for k, v in feed.items()})

    return run


def check_forecast_parity(
    net: StepNet, session: Any, manifest: Manifest, series: np.ndarray, *, horizon: int
) -> ForecastParity:
    """The two parity runs of the module docstring, free runs of ``horizon`` steps; :class:`ParityError`
    beyond the tolerance."""
    net.eval()
    reference, graph = torch_step_fn(net, manifest), ort_step_fn(session)
    observed = series[:PARITY_STEPS]
    scale = float(series.std())
    forced = float(
        np.max(np.abs(teacher_forced(graph, manifest, observed) - teacher_forced(reference, manifest, observed)))
    )
    starts = spaced_starts(FREE_RUN_WARMUP, len(series) - horizon, FREE_RUN_PARITY_TRIALS)
    runs = {
        name: free_runs(fn, manifest, series, starts, warmup=FREE_RUN_WARMUP, horizon=horizon)
        for name, fn in (("onnx", graph), ("torch", reference), ("float64", float64_step_fn(net, manifest)))
    }
    free = float(np.max(np.abs(runs["onnx"] - runs["torch"])))
    for what, diff in (("teacher-forced, one step per call", forced), (f"{horizon}-step free runs", free)):
        if not diff <= PARITY_TOLERANCE * scale:  # NaN fails too
            raise ParityError(
                f"parity failed ({what}): predictions differ from PyTorch by {diff:.3g} "
                f"(tolerance {PARITY_TOLERANCE:g} x the series' std {scale:.3g}); the export is refused"
            )
    drift = float(np.max(np.abs(runs["onnx"] - runs["float64"])))
    return ForecastParity(forced, free, drift, len(observed), len(starts), horizon)


def export_forecaster(
    net: StepNet, manifest: Manifest, out: Path, held_out: np.ndarray, *, horizon: int
) -> ForecastParity:
    """Write ``net`` to the model folder ``out`` after the parity checks on ``held_out`` (raw units),
    with free runs of ``horizon`` steps (the task's scored horizon)."""
    out = Path(out)
    golden = {"observation": [[float(v)] for v in held_out[:GOLDEN_STEPS]]}
    trace = record_golden(net, manifest, golden)
    # The golden replay's bound, like parity's, scales with the series (laser intensities reach 255).
    manifest = replace(manifest, golden=replace(trace, tolerance=PARITY_TOLERANCE * float(held_out.std())))
    with staged_folder(out) as staging:
        with torch.no_grad():
            export_step_graph(net, manifest, staging / GRAPH_FILE, exporter="torchscript", time_axis=False)
        session = open_session(staging / GRAPH_FILE)
        check_graph(manifest, session)
        parity = check_forecast_parity(net, session, manifest, held_out, horizon=horizon)
        facts = {
            "exporter": "torchscript",
            "opset": OPSET,
            "parity_max_abs_diff": parity.teacher_forced_max_abs_diff,
            "parity_free_run_horizon": horizon,
            "parity_free_run_max_abs_diff": parity.free_run_max_abs_diff,
            "free_run_float32_vs_float64_max_abs_diff": parity.free_run_float32_vs_float64,
        }
        manifest = replace(manifest, training=manifest.training | facts)
        manifest.save(staging)
    return parity


def restore(recipe: ForecastRecipe, weights: Mapping[str, Any]) -> StepNet:
    """The served net of ``recipe`` with the trained ``weights`` (a state dict), in eval mode."""
    if recipe.net in GATED_NETS:
        net = GatedForecaster(recipe.net, hidden=recipe.units, layers=recipe.bptt.layers)
        net.load_state_dict(weights)
        return net.eval()
    esn = build_esn(recipe)  # an adaptive net's weights are its reservoir's: its RLS starts at export
    esn.load_state_dict(weights)
    return wrap(recipe, esn).eval()


def served_state(recipe: ForecastRecipe, net: Any) -> tuple[StateSpec, ...]:
    """The manifest's state: a reservoir (and an adaptive session's RLS), or the cells' tensors."""
    if recipe.net in GATED_NETS:
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
    weights = load_weights(options.checkpoint)
    table = dict(weights.metadata["recipe"])
    if "series" not in table and "task" in table:  # written while ``series`` was named ``task`` (and the task ``kind``)
        table["series"] = table.pop("task")
    recipe = from_table(ForecastRecipe, recorded_recipe(table), where=str(options.checkpoint))
    net = restore(recipe, weights.model)
    normaliser: Any = net.esn if recipe.net == "adaptive_esn" else net  # whose mean and std the graph applies
    training = {
        "recipe": recipe.to_dict(),
        "recipe_file": recorded_recipe_file(weights.metadata),
        **weights.training,
    }
    manifest = forecast_manifest(
        name=recipe.name,
        description=recipe.description,
        state=served_state(recipe, net),
        max_horizon=recipe.max_horizon,
        decoding={"series": recipe.series, "mean": float(normaliser.mean[0]), "std": float(normaliser.std[0])},
        training=training,
    )
    started = time.perf_counter()
    horizon = free_run_horizon(recipe.series)
    parity = export_forecaster(net, manifest, options.out, held_out(recipe.series), horizon=horizon)
    scores = record_scores(options.out, evaluate(options.out))
    elapsed = time.perf_counter() - started
    shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    return (
        f"wrote {options.out}: parity max |diff| {parity.teacher_forced_max_abs_diff:.2e} teacher-forced, "
        f"{parity.free_run_max_abs_diff:.2e} over {parity.free_runs} free runs of {horizon} steps "
        f"(float32 vs float64 {parity.free_run_float32_vs_float64:.2e}); {shown} (ONNX, {elapsed:.1f} s)"
    )
