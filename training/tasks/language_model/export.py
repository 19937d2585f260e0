"""Export a character language model: ``step.onnx`` and its manifest, after parity over held-out text.

Parity runs the net and the graph over ``PARITY_STEPS`` held-out characters of three passages,
one step per call and in chunks (``training.onnx_export.check_parity``); the validation loss in
the manifest is then computed from the staged graph (``training.tasks.language_model.evaluate``).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from service.contract import GoldenTrace, Manifest, StateSpec, TensorSpec, check_graph
from service.datasets.shakespeare import TRAIN_DATA_DESCRIPTION, Vocabulary, load_shakespeare
from training.checkpoints import LOSS_CURVE_FILE, load_weights
from training.onnx_export import (
    GRAPH_FILE,
    OPSET,
    ParityReport,
    check_parity,
    export_step_graph,
    record_golden,
    staged_folder,
)
from training.onnx_replay import open_session
from training.recipes import recorded_recipe, recorded_recipe_file
from training.tasks import ExportOptions
from training.tasks.language_model.evaluate import val_loss_from_onnx
from training.tasks.language_model.net import CharLSTM

PARITY_STEPS = 1000
PARITY_BATCH = 3
GOLDEN_TEXT = "ROMEO:\nBut soft,"  # 16 characters fed one per call from the zero state


@dataclass(frozen=True)
class ExportReport:
    folder: Path
    manifest: Manifest
    parity: ParityReport
    exporter: str
    val_loss_nats_per_char: float


def char_lm_manifest(net: CharLSTM, vocab: Vocabulary, *, training: Mapping[str, Any], golden: GoldenTrace) -> Manifest:
    """The manifest of a character language model (without scores)."""
    state_shape = (net.layers, net.hidden)
    return Manifest(
        name="char_lm",
        version="1",
        task="language_model",
        description=(
            f"Character-level LSTM language model ({net.layers} x {net.hidden}) trained on Tiny Shakespeare; "
            "one character in, the next character's logits out."
        ),
        step_graph=GRAPH_FILE,
        inputs=(TensorSpec("char_id", "int64", (), "id of the current character: its index in decoding.vocabulary"),),
        outputs=(
            TensorSpec("logits", "float32", (len(vocab),), "unnormalised log-probabilities of the next character"),
        ),
        state=(
            StateSpec(
                "h", "h_out", "float32", state_shape, "zeros", "LSTM hidden state h of each layer, [layers, hidden]"
            ),
            StateSpec(
                "c", "c_out", "float32", state_shape, "zeros", "LSTM cell state c of each layer, [layers, hidden]"
            ),
        ),
        golden=golden,
        decoding={"vocabulary": list(vocab.chars), "tokenizer": "char"},
        training=dict(training),
    )


def export_char_lm(
    checkpoint: Path,
    out: Path,
    *,
    parity_steps: int = PARITY_STEPS,
    loss_curve: Path | None = None,
    exporter: str = "auto",
) -> ExportReport:
    """Export a char-LM checkpoint (weights or resumable) to the model folder ``out``.

    ``loss_curve`` defaults to the ``loss_curve.png`` beside the checkpoint and is copied into
    the folder when it exists. Raises :class:`ParityError` (nothing written) if ONNX Runtime
    and PyTorch disagree.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    weights = load_weights(checkpoint)
    corpus = load_shakespeare()
    vocab = Vocabulary(weights.metadata["vocabulary"])
    if vocab != corpus.vocab:
        raise ValueError(f"{checkpoint}: its vocabulary is not the Tiny Shakespeare vocabulary")
    net = CharLSTM(**weights.metadata["model"])
    net.load_state_dict(weights.model)
    net.eval()

    facts = weights.training
    training = {
        "recipe": recorded_recipe(weights.metadata.get("recipe", {})),
        "recipe_file": recorded_recipe_file(weights.metadata),
        "data": TRAIN_DATA_DESCRIPTION,
        "steps": facts.get("steps"),
        "time_s": facts.get("time_s"),
        "device": facts.get("device"),
        "torch": facts.get("torch"),
        "final_train_loss": facts.get("final_train_loss"),
        "checkpoint": checkpoint.name,
    }
    manifest = char_lm_manifest(net, vocab, training=training, golden=GoldenTrace({}, {}))
    manifest = replace(manifest, golden=record_golden(net, manifest, {"char_id": vocab.encode(GOLDEN_TEXT).tolist()}))

    if parity_steps < PARITY_STEPS:
        raise ValueError(f"parity needs >= {PARITY_STEPS} steps, got {parity_steps}")
    val = corpus.val_ids
    starts = [0, len(val) // 3, 2 * len(val) // 3]  # three different passages of held-out text
    streams = {"char_id": np.stack([val[s : s + parity_steps] for s in starts[:PARITY_BATCH]])}

    with staged_folder(out) as staging:
        used = export_step_graph(net, manifest, staging / GRAPH_FILE, exporter=exporter)
        session = open_session(staging / GRAPH_FILE)
        check_graph(manifest, session)
        parity = check_parity(net, session, manifest, streams)
        manifest = replace(
            manifest,
            training=manifest.training | {"exporter": used, "opset": OPSET, "parity_max_abs_diff": parity.max_diff},
        )
        manifest.save(staging)
        loss = val_loss_from_onnx(staging)
        manifest = replace(manifest, scores={"val_loss_nats_per_char": loss})
        manifest.save(staging)
        curve = loss_curve if loss_curve is not None else checkpoint.parent / LOSS_CURVE_FILE
        if curve.exists():
            shutil.copyfile(curve, staging / LOSS_CURVE_FILE)
    return ExportReport(folder=out, manifest=manifest, parity=parity, exporter=used, val_loss_nats_per_char=loss)


def export(options: ExportOptions) -> str:
    report = export_char_lm(options.checkpoint, options.out, loss_curve=options.loss_curve, exporter=options.exporter)
    return (
        f"wrote {report.folder} ({report.exporter} exporter): parity max |diff| "
        f"{report.parity.max_diff:.2e} over {report.parity.steps} steps; "
        f"val loss {report.val_loss_nats_per_char:.4f} nats/char (ONNX)"
    )
