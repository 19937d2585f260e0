"""Export a one-step forecaster (an ESN, adaptive or not) as a servable model folder.

The graph is one step (``observation [B, 1, F]``, state → ``prediction [B, 1, F]``, state'),
exported with the shared TorchScript path (``training.export.export_step_graph`` with the time
axis fixed at 1, as the associative memories' sweeps are). Nothing is installed unless:

1. **teacher-forced parity**: ONNX Runtime against the PyTorch net (float32 both), one step per
   call over ``PARITY_STEPS`` steps of the task's held-out data, outputs and state;
   (every bound is in units of the held-out series' standard deviation);
2. **free-run parity**: the same two, now each feeding its own predictions back, over the
   task's scored horizon (84 steps for Mackey-Glass's NRMSE84, 20 for the laser) from several
   start points. A free run amplifies every
   rounding difference, so this is the check that matters for a forecaster served in float32;
   both runs' largest difference is written into the manifest, together with how far the float32
   graph drifts from the float64 PyTorch net over the same free runs (information, no bound);
3. the folder loads back through ``service.contract`` (signature, golden replay).

The scores are then computed from the installed graph (``training.forecast_tasks.score``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.contract import GoldenTrace, Manifest, StateSpec, TensorSpec, check_graph
from training.evaluate import StepFn, open_session, ort_step_fn
from training.export import (
    GRAPH_FILE,
    OPSET,
    ParityError,
    export_step_graph,
    record_golden,
    staged_folder,
    torch_step_fn,
)
from training.forecast_eval import free_runs, spaced_starts, teacher_forced
from training.nets.step import StepNet

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
