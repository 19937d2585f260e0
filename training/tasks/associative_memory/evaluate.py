"""An associative memory's scores from its ONNX graph, every draw seeded.

Letter memories: ``recall_from_25pct_noise`` (the fraction of probes, each a stored letter with
exactly 25 % of its 35 pixels flipped, that settle on exactly that letter within ``EVAL_SWEEPS``
asynchronous sweeps), ``bit_accuracy_from_25pct_noise`` and ``stored_fixed_points`` (the fraction
of stored letters one sweep leaves unchanged). The RBM: ``pixel_accuracy_bottom_half`` (clamped
Gibbs completion of the held-out digits' hidden bottom half, the mean of sweeps ``RBM_BURN_IN ..
RBM_SWEEPS`` above 0.5) against ``nearest_neighbour_baseline`` (the nearest training image on the
visible half).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from service.contract import Arrays, Manifest, zero_state
from service.datasets.patterns import flip_bits, load_digits_binary, nearest_on_known, occlusion_mask
from training.onnx_replay import StepFn, open_session, ort_step_fn

EVAL_NOISE = 0.25
EVAL_TRIALS = 20  # noisy probes per stored letter
EVAL_SWEEPS = 20
EVAL_SEED = 2024
RBM_SWEEPS = 200
RBM_BURN_IN = 50


def chained_sweeps(step_fn: StepFn, manifest: Manifest, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one sweep per call from a fresh state; every output and the state after each sweep, ``[B, T, ...]``."""
    batch, sweeps = next(iter(inputs.values())).shape[:2]
    state: Arrays = zero_state(manifest, batch)
    state_outputs = {s.output for s in manifest.state}
    trace: dict[str, list[np.ndarray]] = {}
    for t in range(sweeps):
        results = step_fn({name: np.ascontiguousarray(arr[:, t : t + 1]) for name, arr in inputs.items()} | state)
        state = {s.input: results[s.output] for s in manifest.state}
        for name, value in results.items():  # per-step outputs are [B, 1, ...]; a state is [B, ...]
            trace.setdefault(name, []).append(value[:, None] if name in state_outputs else value)
    return {name: np.concatenate(parts, axis=1) for name, parts in trace.items()}


def evaluate(folder: Path, progress: bool = False) -> dict[str, Any]:
    """Recall and accuracy from the ONNX graph; a memory is scored in seconds, so ``progress`` draws no bar."""
    manifest = Manifest.load(folder)
    step = ort_step_fn(open_session(Path(folder) / manifest.step_graph))
    scores = letter_scores(step, manifest) if manifest.decoding["values"] == "bipolar" else rbm_scores(step, manifest)
    return {"model": manifest.name, **scores}


def _feed(
    manifest: Any, values: np.ndarray, known: np.ndarray, sweeps: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Inputs ``[B, sweeps, ...]`` that hold ``known`` units at ``values`` (and load the rest on sweep 0)."""
    batch, units = values.shape
    feed = {
        "clamp_mask": np.broadcast_to(known.astype(np.float32), (batch, sweeps, units)).copy(),
        "clamp_values": np.broadcast_to(values[:, None, :], (batch, sweeps, units)).astype(np.float32),
    }
    noise_units = int(manifest.decoding["noise_units"])
    if noise_units:
        feed["noise"] = rng.random((batch, sweeps, noise_units), dtype=np.float32)
    if manifest.decoding["stochastic"]:
        feed["temperature"] = np.ones((batch, sweeps), np.float32)
    return feed


def letter_scores(step: Any, manifest: Any) -> dict[str, float]:
    stored = np.asarray(manifest.decoding["patterns"], np.float32)
    units = stored.shape[1]
    rng = np.random.default_rng(EVAL_SEED)
    free = np.zeros(units, np.float32)
    targets = np.repeat(stored, EVAL_TRIALS, axis=0)
    probes = flip_bits(targets, EVAL_NOISE, seed=EVAL_SEED)
    final = chained_sweeps(step, manifest, _feed(manifest, probes, free, EVAL_SWEEPS, rng))["pattern_out"][:, -1]
    agree = np.sign(final) == targets
    once = chained_sweeps(step, manifest, _feed(manifest, stored, free, 1, rng))
    return {
        "recall_from_25pct_noise": float(agree.all(axis=1).mean()),
        "bit_accuracy_from_25pct_noise": float(agree.mean()),
        "stored_fixed_points": float((once["changed"][:, 0] == 0).mean()),
    }


def rbm_scores(step: Any, manifest: Any) -> dict[str, float]:
    digits = load_digits_binary()
    known = occlusion_mask(digits.SHAPE, "bottom")
    hidden = known == 0
    rng = np.random.default_rng(EVAL_SEED)
    states = chained_sweeps(step, manifest, _feed(manifest, digits.test * known, known, RBM_SWEEPS, rng))
    guess = states["pattern_out"][:, RBM_BURN_IN:].mean(axis=1) > 0.5
    nearest = nearest_on_known(digits.train, digits.test, known)
    truth = digits.test[:, hidden]
    return {
        "pixel_accuracy_bottom_half": float((guess[:, hidden] == truth).mean()),
        "nearest_neighbour_baseline": float((nearest[:, hidden] == truth).mean()),
    }
