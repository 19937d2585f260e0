"""Export an associative memory's sweep as a servable step graph: ``step.onnx`` + ``manifest.json``.

The graph is one update sweep (``sweep.SweepNet``): state ``pattern_in -> pattern_out``; per-step
inputs ``clamp_mask``, ``clamp_values`` (and ``noise``, ``temperature`` for the nets that draw);
per-step outputs ``energy`` and ``changed``. The time axis is fixed at 1, one sweep per call
(docs/memory.md says why). Nothing is installed unless sweeps chained from a fresh state agree
with PyTorch, output by output and state by state, and the folder loads back through
``service.contract``; the scores then come from the installed graph (``evaluate.py``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from service.contract import GoldenTrace, Manifest, StateSpec, TensorSpec, check_graph
from service.datasets.patterns import LETTER_SHAPE, Digits, flip_bits, letter_patterns, load_digits_binary
from training.checkpoints import load_weights
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
from training.onnx_replay import open_session, ort_step_fn
from training.recipes import recorded_recipe, recorded_recipe_file
from training.tasks import ExportOptions
from training.tasks.associative_memory.boltzmann import RBM
from training.tasks.associative_memory.dense_hopfield import DenseHopfield
from training.tasks.associative_memory.evaluate import EVAL_NOISE, chained_sweeps, evaluate
from training.tasks.associative_memory.hopfield import Hopfield
from training.tasks.associative_memory.recipe import MemoryRecipe
from training.tasks.associative_memory.sweep import SweepNet

DIGITS_DATA = "scikit-learn load_digits (bundled), pixel on when > 8 of 16, seeded 80/20 split (seed 0)"
LETTERS_DATA = "the project's 5x7 letter bitmaps (service/datasets/patterns.py), bipolar"
TASK = "associative_memory"
#: Max |ONNX - PyTorch| over every output and state of every chained sweep: patterns (exact
#: +-1 or 0/1, or a softmax mix) and ``changed`` absolutely; ``energy``, a float32 sum of N^2
#: products computed in another order (|E| reaches ~100 for an RBM's free energy, where one
#: float32 ulp is ~8e-6), relative to ``max(1, |E|)``.
PARITY_TOLERANCE = 1e-5
RELATIVE_OUTPUTS = ("energy",)
PARITY_SWEEPS = 20
GOLDEN_SWEEPS = 6


@dataclass(frozen=True)
class MemoryExportReport:
    folder: Path
    manifest: Manifest
    parity_max_abs_diff: float


def memory_manifest(
    net: SweepNet,
    *,
    name: str,
    description: str,
    shape: tuple[int, int],
    decoding: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    scores: Mapping[str, float] | None = None,
    golden: GoldenTrace | None = None,
) -> Manifest:
    """The manifest of a sweep graph; ``shape`` is the image the units form (rows, cols)."""
    units = net.units
    if shape[0] * shape[1] != units:
        raise ValueError(f"shape {shape} has {shape[0] * shape[1]} cells, the net has {units} units")
    values = "bipolar" if net.bipolar else "binary"
    inputs = [
        TensorSpec(
            "clamp_mask", "float32", (units,), "1 where the unit is known and held at clamp_values, 0 where free"
        ),
        TensorSpec(
            "clamp_values",
            "float32",
            (units,),
            f"values ({values}) of the known units; a fresh session's unset units start from them"
            if net.bipolar
            else "values (binary) of the known units",
        ),
    ]
    if net.noise_units > 0:
        inputs.append(
            TensorSpec(
                "noise",
                "float32",
                (net.noise_units,),
                "uniform [0, 1) numbers from the session's seeded generator (update order keys or Gibbs draws)",
            )
        )
    if net.stochastic:
        inputs.append(TensorSpec("temperature", "float32", (), "T of P(s_i = 1) = sigmoid(z_i / T); > 0"))
    hints: dict[str, Any] = {
        "units": units,
        "values": values,
        "shape": list(shape),
        "stochastic": net.stochastic,
        "noise_units": net.noise_units,
        "sweeps_per_call": 1,
        "fresh_state": "unset units (0) take clamp_values" if net.bipolar else "zeros",
    }
    return Manifest(
        name=name,
        version="1",
        task=TASK,
        description=description,
        step_graph=GRAPH_FILE,
        inputs=tuple(inputs),
        outputs=(
            TensorSpec("energy", "float32", (), "energy of the pattern after the sweep (free energy for an RBM)"),
            TensorSpec("changed", "float32", (), "number of units the sweep changed; 0 at a fixed point"),
        ),
        state=(StateSpec("pattern_in", "pattern_out", "float32", (units,), "zeros", "the current pattern"),),
        golden=golden if golden is not None else GoldenTrace({}, {}),
        decoding=hints | dict(decoding or {}),
        training=dict(training or {}),
        scores=dict(scores or {}),
    )


def export_sweep_graph(net: SweepNet, manifest: Manifest, path: Path) -> None:
    """Write the one-sweep graph of ``net`` with the manifest's names (batch dynamic, time 1)."""
    export_step_graph(net, manifest, path, exporter="torchscript", time_axis=False)


def random_sweep_inputs(
    manifest: Manifest, *, batch: int, sweeps: int, seed: int, start: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Seeded per-step inputs ``[batch, sweeps, *shape]`` for a parity or golden run.

    Sweep 0 loads ``start`` (``[batch, units]``, free units) or a random pattern of the net's
    values; about a quarter of the units are clamped to it from then on, and the temperature
    (if any) falls from 2 to 0.25, so both the hot and the nearly greedy regimes are covered.
    """
    rng = np.random.default_rng(seed)
    units = int(manifest.decoding["units"])
    bipolar = manifest.decoding["values"] == "bipolar"
    if start is None:
        start = rng.integers(0, 2, size=(batch, units)).astype(np.float32)
        if bipolar:
            start = 2.0 * start - 1.0
    mask = np.broadcast_to((rng.random((batch, 1, units)) < 0.25).astype(np.float32), (batch, sweeps, units)).copy()
    values = np.broadcast_to(start[:, None, :], (batch, sweeps, units)).astype(np.float32).copy()
    feed: dict[str, np.ndarray] = {"clamp_mask": mask, "clamp_values": values}
    if manifest.decoding["noise_units"] > 0:
        feed["noise"] = rng.random((batch, sweeps, int(manifest.decoding["noise_units"])), dtype=np.float32)
    if manifest.decoding["stochastic"]:
        feed["temperature"] = np.broadcast_to(np.geomspace(2.0, 0.25, sweeps, dtype=np.float32), (batch, sweeps)).copy()
    return feed


def check_sweep_parity(
    net: SweepNet,
    session: Any,
    manifest: Manifest,
    inputs: Mapping[str, np.ndarray],
    *,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Largest |ONNX - PyTorch| (energy: relative, see :data:`PARITY_TOLERANCE`) over all outputs and states of
    chained sweeps; :class:`ParityError` above ``tolerance``."""
    net.eval()
    want = chained_sweeps(torch_step_fn(net, manifest), manifest, inputs)
    got = chained_sweeps(ort_step_fn(session), manifest, inputs)
    worst = 0.0
    for name, expected in want.items():
        diff = np.abs(got[name].astype(np.float64) - expected.astype(np.float64))
        if name in RELATIVE_OUTPUTS:
            diff /= np.maximum(1.0, np.abs(expected.astype(np.float64)))
        per_sweep = diff.reshape(diff.shape[0], diff.shape[1], -1).max(axis=(0, 2))
        bad = np.flatnonzero(~(per_sweep <= tolerance))  # NaN counts as bad
        if bad.size:
            raise ParityError(
                f"parity failed: {name!r} differs from PyTorch by {per_sweep[bad[0]]:.3g} at sweep {bad[0]} "
                f"(tolerance {tolerance:g}); the export is refused"
            )
        worst = max(worst, float(per_sweep.max()))
    return worst


def export_memory(
    net: SweepNet,
    out: Path,
    *,
    name: str,
    description: str,
    shape: tuple[int, int],
    golden_start: np.ndarray,
    decoding: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    scores: Mapping[str, float] | None = None,
    seed: int = 0,
) -> MemoryExportReport:
    """Export ``net`` to the model folder ``out``; nothing is written unless parity and the self-check pass.

    ``golden_start`` (``[units]``) is the probe the golden trace completes: it is loaded on the
    first sweep and ``GOLDEN_SWEEPS`` sweeps are recorded from PyTorch.
    """
    out = Path(out)
    manifest = memory_manifest(
        net, name=name, description=description, shape=shape, decoding=decoding, training=training, scores=scores
    )
    golden_feed = random_sweep_inputs(
        manifest, batch=1, sweeps=GOLDEN_SWEEPS, seed=seed, start=np.asarray(golden_start, np.float32)[None]
    )
    manifest = replace(
        manifest, golden=record_golden(net, manifest, {k: v[0].tolist() for k, v in golden_feed.items()})
    )
    parity_feed = random_sweep_inputs(manifest, batch=3, sweeps=PARITY_SWEEPS, seed=seed + 1)

    with staged_folder(out) as staging:
        export_sweep_graph(net, manifest, staging / GRAPH_FILE)
        session = open_session(staging / GRAPH_FILE)
        check_graph(manifest, session)
        diff = check_sweep_parity(net, session, manifest, parity_feed)
        manifest = replace(
            manifest,
            training=manifest.training | {"exporter": "torchscript", "opset": OPSET, "parity_max_abs_diff": diff},
        )
        manifest.save(staging)
    return MemoryExportReport(folder=out, manifest=manifest, parity_max_abs_diff=diff)


def restore_net(recipe: MemoryRecipe, state: dict[str, Any]) -> Any:
    """The net of a weights file: an empty net of the recipe's shape with the saved tensors loaded."""
    net: Any
    if recipe.net == "hopfield":
        net = Hopfield(units=LETTER_SHAPE[0] * LETTER_SHAPE[1], update=recipe.update)  # type: ignore[arg-type]
    elif recipe.net == "dense_hopfield":
        net = DenseHopfield(patterns=letter_patterns(recipe.letters), beta=recipe.beta)
    else:
        net = RBM(visible=64, hidden=recipe.hidden)
    net.load_state_dict(state)
    net.eval()
    return net


def export(options: ExportOptions) -> str:
    weights = load_weights(options.checkpoint)
    recipe = MemoryRecipe(**recorded_recipe(weights.metadata["recipe"]))
    net = restore_net(recipe, weights.model)
    decoding: dict[str, Any]
    if recipe.net == "rbm":
        shape, data = Digits.SHAPE, DIGITS_DATA
        decoding = {}
        golden_start = load_digits_binary().test[0]
    else:
        shape, data = LETTER_SHAPE, LETTERS_DATA
        stored = letter_patterns(recipe.letters)
        decoding = {"pattern_names": list(recipe.letters), "patterns": stored.tolist()}
        golden_start = flip_bits(stored[:1], EVAL_NOISE, seed=recipe.seed)[0]
    training = {
        "recipe": recipe.to_dict(),
        "recipe_file": recorded_recipe_file(weights.metadata),
        "data": data,
        **weights.training,
    }
    started = time.perf_counter()
    report = export_memory(
        net,
        options.out,
        name=recipe.name,
        description=recipe.description,
        shape=shape,
        golden_start=golden_start,
        decoding=decoding,
        training=training,
        seed=recipe.seed,
    )
    # The scores describe the installed graph: computed from it, then written into its manifest.
    scores = record_scores(options.out, evaluate(options.out))
    elapsed = time.perf_counter() - started
    shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    return (
        f"wrote {report.folder}: parity max |diff| {report.parity_max_abs_diff:.2e}; {shown} "
        f"(ONNX, export and scoring {elapsed:.1f} s)"
    )
