"""Export a captioner: the init graph (image -> state and context) and the step graph, then its scores.

Both graphs are checked against PyTorch by ``training.decoder_export`` (every init output for a
batch of scenes; teacher-forced decoding of their captions); the scores are computed from the
staged graphs (``evaluate.py``) before the folder is installed.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from service.contract import ContextSpec, GoldenTrace, InitSpec, Manifest, StateSpec, TensorSpec
from service.datasets.scenes import CANVAS, END, START, VOCABULARY, scenes
from training.checkpoints import LOSS_CURVE_FILE, load_weights
from training.decoder_export import INIT_FILE, STEP_FILE, DecoderParity, check_parity, export_graphs, record_golden
from training.onnx_export import staged_folder
from training.recipes import from_table, recorded_recipe, recorded_recipe_file
from training.tasks import ExportOptions
from training.tasks.captioner.evaluate import EVAL_SEED, evaluate
from training.tasks.captioner.net import Captioner
from training.tasks.captioner.recipe import CaptionerRecipe
from training.tasks.captioner.train import build_net, teacher_forcing

PARITY_SESSIONS = 8


def restore(checkpoint: Path) -> tuple[CaptionerRecipe, Captioner, dict[str, Any]]:
    weights = load_weights(checkpoint)
    recipe = from_table(CaptionerRecipe, recorded_recipe(weights.metadata["recipe"]), where=str(checkpoint))
    net = build_net(recipe.model)
    net.load_state_dict(weights.model)
    net.eval()
    return recipe, net, {**weights.metadata, "training": weights.training}


def manifest_of(recipe: CaptionerRecipe, net: Captioner, training: dict[str, Any]) -> Manifest:
    hidden = recipe.model.hidden
    features = net.decoder.attend.key_size
    locations = (CANVAS // 8) ** 2
    empty = GoldenTrace({}, {})
    return Manifest(
        name=recipe.name,
        version="1",
        task="captioner",
        description=recipe.description,
        step_graph=STEP_FILE,
        inputs=(TensorSpec("word", "int64", (), "the previous word's id (decoding.vocabulary); <START> first"),),
        outputs=(
            TensorSpec("logits", "float32", (len(VOCABULARY),), "unnormalised log-probabilities of the next word"),
            TensorSpec("attention", "float32", (locations,), "weights over the annotation grid (row-major), sum 1"),
        ),
        state=(
            StateSpec("h", "h_out", "float32", (hidden,), "init", "LSTM hidden state"),
            StateSpec("c", "c_out", "float32", (hidden,), "init", "LSTM cell state"),
        ),
        golden=GoldenTrace({"word": [0]}, {}),
        context=(
            ContextSpec("annotations", "float32", (locations, features), "the CNN's grid of annotation vectors"),
            ContextSpec("mask", "float32", (locations,), "1 at every location (an image has no padding)"),
        ),
        init=InitSpec(INIT_FILE, (TensorSpec("image", "float32", (CANVAS, CANVAS), "grey levels in [0, 1]"),), empty),
        decoding={
            "vocabulary": list(VOCABULARY),
            "start_token": START,
            "end_token": END,
            "separator": " ",
            "image": {"height": CANVAS, "width": CANVAS},
        },
        training=training,
    )


def install(
    net: Captioner,
    recipe: CaptionerRecipe,
    out: Path,
    training: dict[str, Any],
    *,
    score: bool = True,
    loss_curve: Path | None = None,
) -> tuple[DecoderParity, dict[str, float]]:
    """Exports ``net`` to the model folder ``out`` after its parity checks (and scores it from the
    staged graphs when ``score``); returns the parity report and the scores."""
    manifest = manifest_of(recipe, net, training)
    parity_scenes = scenes("validation", PARITY_SESSIONS, seed=EVAL_SEED)
    payload = {"image": np.stack([s.image for s in parity_scenes])}
    tokens, _ = teacher_forcing([s.caption for s in parity_scenes])
    golden_tokens = [VOCABULARY.index(w) for w in [START, *parity_scenes[0].caption.split()]]
    init_trace, step_trace = record_golden(
        net.init_graph, net.step_graph, manifest, {"image": payload["image"][:1]}, golden_tokens, 1e-4
    )
    assert manifest.init is not None
    manifest = replace(manifest, golden=step_trace, init=replace(manifest.init, golden=init_trace))
    scores: dict[str, float] = {}
    with staged_folder(out) as staging:
        export_graphs(net.init_graph, net.step_graph, manifest, staging, payload)
        parity = check_parity(net.init_graph, net.step_graph, manifest, staging, payload, tokens)
        manifest = replace(
            manifest, training=manifest.training | {"exporter": "torchscript", "parity_max_abs_diff": parity.max_diff}
        )
        manifest.save(staging)
        if score:
            scores = {k: v for k, v in evaluate(staging).items() if k != "model"}
            manifest = replace(manifest, scores=scores)
            manifest.save(staging)
        if loss_curve is not None and loss_curve.exists():
            shutil.copyfile(loss_curve, staging / loss_curve.name)
    return parity, scores


def export(options: ExportOptions) -> str:
    started = time.perf_counter()
    recipe, net, meta = restore(options.checkpoint)
    training = {
        "recipe": recipe.to_dict(),
        "recipe_file": recorded_recipe_file(meta),
        "data": meta.get("data", ""),
        **meta["training"],
    }
    curve = options.loss_curve or options.checkpoint.parent / LOSS_CURVE_FILE
    parity, scores = install(net, recipe, Path(options.out), training, loss_curve=curve)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    return (
        f"wrote {options.out}: parity max |diff| {parity.max_diff:.2e} (init and {parity.steps} decoder steps of "
        f"{parity.sessions} sessions); {shown} (ONNX; export and scoring {time.perf_counter() - started:.1f} s)"
    )
