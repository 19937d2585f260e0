"""Export a trained date translator to a model folder: init graph, step graph, manifest, scores.

The graphs follow the attention-decoder contract (``service/drivers/attention.py``):

* ``init.onnx``: ``chars [L]`` (source ids, 0 = padding) and ``chars_mask [L]`` -> the decoder's
  ``h`` (``s_0``) and the context ``annotations [L, D]``, ``keys [L, K*A]`` (the attention's
  ``U_k h_i``, query-free, so computed once here rather than at every step) and ``mask [L]``;
* ``step.onnx``: ``(token, h, annotations, keys, mask) -> (logits [V], attention [L], h_out)``,
  one token per call; ``attention`` is the heads' mean (it sums to 1 like each head's).

Parity is ``training.decoder_export``'s (both graphs, teacher-forced decoding of a batch of
held-out examples) plus a full greedy decode: the graphs must choose exactly the tokens PyTorch
chooses. The scores are then computed from the installed graphs
(``training.tasks.translator.evaluate``) and written into the manifest.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from service.contract import ContextSpec, GoldenTrace, InitSpec, Manifest, StateSpec, TensorSpec
from training import decoder_export
from training.checkpoints import LOSS_CURVE_FILE, load_weights
from training.onnx_export import ParityError, record_scores, staged_folder
from training.recipes import from_table, recorded_recipe
from training.tasks import ExportOptions
from training.tasks.translator import dates
from training.tasks.translator.codec import END, START, TARGET_STEPS, Codec
from training.tasks.translator.evaluate import OnnxTranslator, evaluate_translator
from training.tasks.translator.net import Seq2Seq
from training.tasks.translator.recipe import TranslatorRecipe
from training.tasks.translator.train import build_model, translate_with_torch

GOLDEN_TEXT = "Nov 27, 2026"
GOLDEN_TOLERANCE = 1e-4
PARITY_EXAMPLES = 16
GREEDY_PARITY_EXAMPLES = 200
PARITY_SEED = 7


class TranslatorInit(nn.Module):
    """The init graph: the encoder."""

    def __init__(self, net: Seq2Seq) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, chars: torch.Tensor, chars_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        s0, annotations, keys = self.net.encode(chars, chars_mask)
        return s0, annotations, keys, chars_mask


class TranslatorStep(nn.Module):
    """The step graph: one decoder step with a time axis of 1 in and out."""

    def __init__(self, net: Seq2Seq) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, token: torch.Tensor, h: torch.Tensor, annotations: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, weights, h = self.net.step(token[:, 0], h, annotations, keys, mask)
        return logits.unsqueeze(1), weights.mean(dim=1).unsqueeze(1), h


def translator_manifest(net: Seq2Seq, codec: Codec, recipe: TranslatorRecipe, training: dict[str, object]) -> Manifest:
    """The manifest (golden traces empty, no scores yet)."""
    length, width = codec.max_length, net.annotation_size
    empty = GoldenTrace({}, {})
    return Manifest(
        name=recipe.name,
        version="1",
        task="translator",
        description=recipe.description,
        step_graph=decoder_export.STEP_FILE,
        inputs=(
            TensorSpec("token", "int64", (), "the previous output token's id (decoding.vocabulary); <start> first"),
        ),
        outputs=(
            TensorSpec("logits", "float32", (len(codec.target),), "unnormalised log-probabilities of the next token"),
            TensorSpec(
                "attention", "float32", (length,), "attention over the input characters (heads' mean), sums to 1"
            ),
        ),
        state=(StateSpec("h", "h_out", "float32", (net.decoder_hidden,), "init", "decoder GRU state s"),),
        golden=empty,
        context=(
            ContextSpec("annotations", "float32", (length, width), "encoder annotations h_i = [fwd; bwd GRU]"),
            ContextSpec("keys", "float32", (length, net.keys_size), "the attention's projected keys U_k h_i, per head"),
            ContextSpec("mask", "float32", (length,), "1 at the input's characters, 0 at padding"),
        ),
        init=InitSpec(
            decoder_export.INIT_FILE,
            (
                TensorSpec("chars", "int64", (length,), "source character ids (decoding.source_vocabulary), 0-padded"),
                TensorSpec("chars_mask", "float32", (length,), "1 at the characters, 0 at padding"),
            ),
            empty,
        ),
        decoding={
            "vocabulary": list(codec.target),
            "start_token": START,
            "end_token": END,
            "source_vocabulary": list(codec.source),
            "max_input_chars": length,
        },
        training=training,
    )


def load_translator(checkpoint: Path) -> tuple[Seq2Seq, Codec, TranslatorRecipe, dict[str, object]]:
    """The net of a weights file, its codec, its recipe and the training facts."""
    weights = load_weights(checkpoint)
    recipe = from_table(TranslatorRecipe, recorded_recipe(weights.metadata["recipe"]), where=str(checkpoint))
    codec = Codec(source=tuple(weights.metadata["source_vocabulary"]))
    net = build_model(codec, recipe.model)
    net.load_state_dict(weights.model)
    net.eval()
    training = {
        "recipe": recipe.to_dict(),
        "recipe_file": weights.metadata.get("recipe_file", ""),
        "data": weights.metadata.get("data", ""),
        **{k: v for k, v in weights.training.items() if k != "config"},
        "checkpoint": checkpoint.name,
    }
    return net, codec, recipe, training


def _greedy_parity(net: Seq2Seq, codec: Codec, folder: Path, texts: list[str]) -> None:
    want = translate_with_torch(net, codec, texts)
    got, _ = OnnxTranslator.from_folder(folder).translate(texts)
    differ = [(t, g, w) for t, g, w in zip(texts, got, want, strict=True) if g != w]
    if differ:
        raise ParityError(
            f"greedy decode: ONNX and PyTorch disagree on {len(differ)} of {len(texts)}, e.g. {differ[0]}"
        )


def export_translator(checkpoint: Path, out: Path) -> str:
    """Writes ``out`` (after parity and the self-check) and returns a one-line report."""
    checkpoint, out = Path(checkpoint), Path(out)
    net, codec, recipe, training = load_translator(checkpoint)
    init, step = TranslatorInit(net), TranslatorStep(net)
    manifest = translator_manifest(net, codec, recipe, training)
    split = dates.split_templates()
    pairs = dates.sample(split.heldout, max(PARITY_EXAMPLES, GREEDY_PARITY_EXAMPLES), PARITY_SEED)
    chars, mask = codec.encode_sources([text for text, _ in pairs[:PARITY_EXAMPLES]])
    previous, _ = codec.encode_targets([iso for _, iso in pairs[:PARITY_EXAMPLES]])
    payload = {"chars": chars, "chars_mask": mask}

    golden_chars, golden_mask = codec.encode_sources([GOLDEN_TEXT])
    golden_payload = {"chars": golden_chars, "chars_mask": golden_mask}
    decoded = translate_with_torch(net, codec, [GOLDEN_TEXT])[0]
    golden_tokens = [codec.target.index(START), *[codec.target.index(ch) for ch in decoded][: TARGET_STEPS - 1]]
    init_trace, step_trace = decoder_export.record_golden(
        init, step, manifest, golden_payload, golden_tokens, GOLDEN_TOLERANCE
    )
    assert manifest.init is not None
    manifest = replace(manifest, golden=step_trace, init=replace(manifest.init, golden=init_trace))

    with staged_folder(out) as staging:
        decoder_export.export_graphs(init, step, manifest, staging, payload)
        parity = decoder_export.check_parity(init, step, manifest, staging, payload, previous)
        manifest = replace(manifest, training=manifest.training | {"parity_max_abs_diff": parity.max_diff})
        manifest.save(staging)
        _greedy_parity(net, codec, staging, [text for text, _ in pairs[:GREEDY_PARITY_EXAMPLES]])
        curve = checkpoint.parent / LOSS_CURVE_FILE
        if curve.exists():
            shutil.copyfile(curve, staging / LOSS_CURVE_FILE)
    scores = record_scores(out, evaluate_translator(out))
    return (
        f"wrote {out}: parity max |diff| {parity.max_diff:.2e} (init and {parity.steps} steps of {parity.sessions} "
        f"sessions; greedy decode of {GREEDY_PARITY_EXAMPLES} identical); exact match "
        f"{scores['exact_match_heldout_templates']:.4f} on held-out templates, "
        f"{scores['exact_match_seen_templates']:.4f} on seen ones (ONNX)"
    )


def export(options: ExportOptions) -> str:
    return export_translator(options.checkpoint, options.out)
