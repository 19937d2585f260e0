"""Export a speaker classifier: its one-step graph after parity, then its scores from the installed graph."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from service.contract import GoldenTrace, Manifest, TensorSpec
from service.datasets.vowels import FEATURES, SPEAKER_NAMES, load_vowels
from training.cell_export import cell_manifest, export_one_step
from training.checkpoints import load_weights
from training.onnx_export import GRAPH_FILE, record_scores
from training.recipes import recorded_recipe, recorded_recipe_file
from training.tasks import ExportOptions
from training.tasks.sequence_classifier.evaluate import evaluate
from training.tasks.sequence_classifier.recipe import ClassifierRecipe
from training.tasks.sequence_classifier.train import build_net

TASK = "sequence_classifier"


def manifest_of(recipe: ClassifierRecipe, net: Any, training: dict[str, Any]) -> Manifest:
    """The manifest of ``net`` (golden trace and scores come later)."""
    decoding: dict[str, Any] = {
        "classes": list(SPEAKER_NAMES),
        "mode": "stream" if recipe.net == "stream_gru" else "whole",
    }
    if recipe.net == "stream_gru":
        return cell_manifest(
            net,
            name=recipe.name,
            task=TASK,
            description=recipe.description,
            input_name="frame",
            input_doc="one frame: 12 LPC cepstrum coefficients, raw (the graph normalises them)",
            output_name="logits",
            output_doc="unnormalised log-probabilities of the 9 speakers after this frame",
            decoding=decoding,
            training=training,
        )
    return Manifest(
        name=recipe.name,
        version="1",
        task=TASK,
        description=recipe.description,
        step_graph=GRAPH_FILE,
        inputs=(
            TensorSpec(
                "frames",
                "float32",
                (recipe.max_frames, FEATURES),
                "one whole utterance, raw, zero-padded to max_frames",
            ),
            TensorSpec("length", "int64", (), "the utterance's real number of frames, 1..max_frames"),
        ),
        outputs=(
            TensorSpec("logits", "float32", (len(SPEAKER_NAMES),), "unnormalised log-probabilities of the 9 speakers"),
        ),
        state=(),
        golden=GoldenTrace({}, {}),
        decoding=decoding | {"max_frames": recipe.max_frames, "steps_per_call": 1},
        training=training,
    )


def parity_inputs(recipe: ClassifierRecipe) -> dict[str, np.ndarray]:
    """Held-out utterances in the graph's layout: three streams of back-to-back frames (streaming
    net), or three rows of eight padded utterances (whole-sequence net)."""
    test = load_vowels("test")
    if recipe.net == "stream_gru":
        frames = np.concatenate(test.utterances)
        per_stream = 300
        return {"frame": np.stack([frames[i * per_stream : (i + 1) * per_stream] for i in range(3)])}
    x, lengths = test.padded(recipe.max_frames)
    return {"frames": x[:24].reshape(3, 8, *x.shape[1:]), "length": lengths[:24].reshape(3, 8)}


def export(options: ExportOptions) -> str:
    weights = load_weights(options.checkpoint)
    recipe = ClassifierRecipe(**recorded_recipe(weights.metadata["recipe"]))
    net = build_net(recipe)
    net.load_state_dict(weights.model)
    net.eval()
    training = {
        "recipe": recipe.to_dict(),
        "recipe_file": recorded_recipe_file(weights.metadata),
        "data": weights.metadata.get("data", ""),
        **weights.training,
    }
    started = time.perf_counter()
    golden_steps = 16 if recipe.net == "stream_gru" else 2
    report = export_one_step(
        net,
        manifest_of(recipe, net, training),
        options.out,
        parity_inputs=parity_inputs(recipe),
        golden_steps=golden_steps,
    )
    scores = record_scores(options.out, evaluate(options.out))
    shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    return (
        f"wrote {report.folder}: parity max |diff| {report.parity.max_diff:.2e} over {report.parity.steps} steps; "
        f"{shown} (ONNX, export and scoring {time.perf_counter() - started:.1f} s)"
    )
