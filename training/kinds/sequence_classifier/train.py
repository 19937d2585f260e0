"""Sequence classifiers: speaker identification on Japanese Vowels, streamed or whole-sequence.

Two nets, one task (``sequence_classifier``), picked by the recipe's ``net``:

* ``stream_gru``: a unidirectional GRU with a linear readout (``CellStepNet``), exported as a
  one-step graph (``training.export_cells``): one frame in, the class logits after that frame
  out. It is trained on the cross-entropy of *every* frame, so its running answer is meant to be
  right before the utterance ends.
* ``bidirectional_gru``: ``WholeSequenceClassifier``, one padded sequence per call.

``statestream train RECIPE`` writes ``OUT/weights.pt``; ``statestream export --checkpoint
OUT/weights.pt --out models/NAME`` writes the graph (parity, golden trace, self-check), then
scores the installed graph with :func:`evaluate` and records the scores in its manifest;
``statestream eval --model models/NAME`` recomputes them from the ONNX graph.

There is no validation split in the UEA/UCR release and none is carved out: the recipes train
for a fixed number of epochs, chosen once, and the test set is scored once, at export.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from training.kinds import ExportOptions, TrainingKind, TrainOptions
from training.recipes import describe_recipe_path

TASK = "sequence_classifier"
NETS = ("stream_gru", "bidirectional_gru")
WEIGHTS_NAME = "weights.pt"
#: The fractions of an utterance at which the streaming model's running answer is scored.
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class ClassifierRecipe:
    """A shipped speaker classifier.

    ``hidden``: GRU units (per direction); ``max_frames``: the longest utterance a
    whole-sequence call takes (the padded length; the data's longest is 29); ``epochs`` of
    ``batch`` utterances with AdamW (``lr`` with a cosine decay to 5 %, ``weight_decay``),
    gradients clipped at norm 1; ``dropout`` before the readout (bidirectional net only);
    ``input_noise``: the std of Gaussian noise added to the normalised frames in training.
    """

    name: str
    kind: str
    net: str
    out: str
    description: str
    hidden: int = 64
    max_frames: int = 32
    epochs: int = 100
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dropout: float = 0.0
    input_noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.net not in NETS:
            raise ValueError(f"net must be one of {NETS}, got {self.net!r}")
        if self.net == "stream_gru" and self.dropout != 0.0:
            raise ValueError("dropout applies to the bidirectional net only")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_net(recipe: ClassifierRecipe, mean: Any = None, std: Any = None) -> Any:
    """The untrained net of ``recipe``, normalising its input by ``mean``/``std`` (tensors) inside the graph."""
    from service.datasets.vowels import FEATURES, SPEAKERS
    from training.nets.cell_step import CellStepNet
    from training.nets.whole_sequence import WholeSequenceClassifier

    if recipe.net == "stream_gru":
        return CellStepNet.build(
            "gru", input_size=FEATURES, hidden_size=recipe.hidden, readout_size=SPEAKERS, input_mean=mean, input_std=std
        )
    return WholeSequenceClassifier(
        input_size=FEATURES,
        hidden_size=recipe.hidden,
        classes=SPEAKERS,
        max_frames=recipe.max_frames,
        dropout=recipe.dropout,
        input_mean=mean,
        input_std=std,
    )


def frame_losses(net: Any, x: Any, lengths: Any, labels: Any) -> Any:
    """The training loss: a streaming net's cross-entropy averaged over every real frame; a
    whole-sequence net's over sequences."""
    import torch
    from torch.nn import functional

    if hasattr(net, "classify"):
        return functional.cross_entropy(net.classify(x, lengths), labels)
    logits = net(x, *net.initial_state(x.shape[0]))[0]  # [B, frames, classes]
    mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    per_frame = functional.cross_entropy(
        logits.transpose(1, 2), labels[:, None].expand(-1, x.shape[1]), reduction="none"
    )
    return (per_frame * mask).sum() / mask.sum()


def train(recipe: ClassifierRecipe, options: TrainOptions) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from service.datasets.vowels import DATA_DESCRIPTION, feature_stats, load_vowels
    from training.bptt import clip_by_norm
    from training.checkpoints import write_weights
    from training.loops import seed_everything

    if options.steps is not None:
        recipe = replace(recipe, epochs=options.steps)
    if options.out is not None:
        recipe = replace(recipe, out=options.out)
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    seed_everything(recipe.seed)
    data = load_vowels("train")
    mean, std = (torch.from_numpy(v) for v in feature_stats(data))
    net = build_net(recipe, mean, std)
    x_all, lengths_all = (torch.from_numpy(a) for a in data.padded(recipe.max_frames))
    labels_all = torch.from_numpy(data.labels)
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    batches = math.ceil(len(data) / recipe.batch)
    total = recipe.epochs * batches
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )
    generator = torch.Generator().manual_seed(recipe.seed)
    started = time.perf_counter()
    loss = torch.zeros(())
    net.train()
    for _ in tqdm(range(recipe.epochs), desc=recipe.name, disable=not options.progress, unit="epoch"):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), recipe.batch):
            index = order[start : start + recipe.batch]
            x = x_all[index]
            if recipe.input_noise > 0:  # noise in normalised units, on real frames only
                x = x + recipe.input_noise * std * torch.randn(x.shape, generator=generator) * (x != 0)
            loss = frame_losses(net, x, lengths_all[index], labels_all[index])
            optimizer.zero_grad()
            loss.backward()
            clip_by_norm(net.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    net.eval()
    elapsed = time.perf_counter() - started
    metadata = {
        "recipe": recipe.to_dict(),
        "recipe_file": describe_recipe_path(options.recipe_file),
        "data": DATA_DESCRIPTION,
    }
    training = {
        "time_s": round(elapsed, 1),
        "torch": str(torch.__version__),
        "device": "cpu",
        "threads": 1,
        "epochs": recipe.epochs,
        "final_train_loss": float(loss.detach()),
    }
    write_weights(out / WEIGHTS_NAME, net, metadata, training)
    return {"name": recipe.name, "weights": str(out / WEIGHTS_NAME), **training}


def manifest_of(recipe: ClassifierRecipe, net: Any, training: dict[str, Any]) -> Any:
    """The manifest of ``net`` (golden trace and scores come later)."""
    from service.contract import GoldenTrace, Manifest, TensorSpec
    from service.datasets.vowels import FEATURES, SPEAKER_NAMES
    from training.export import GRAPH_FILE
    from training.export_cells import cell_manifest

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
    from service.datasets.vowels import load_vowels

    test = load_vowels("test")
    if recipe.net == "stream_gru":
        frames = np.concatenate(test.utterances)
        per_stream = 300
        return {"frame": np.stack([frames[i * per_stream : (i + 1) * per_stream] for i in range(3)])}
    x, lengths = test.padded(recipe.max_frames)
    return {"frames": x[:24].reshape(3, 8, *x.shape[1:]), "length": lengths[:24].reshape(3, 8)}


def export(options: ExportOptions) -> str:
    from training.checkpoints import load_weights
    from training.export import record_scores
    from training.export_cells import export_one_step

    weights = load_weights(options.checkpoint)
    recipe = ClassifierRecipe(**weights.metadata["recipe"])
    net = build_net(recipe)
    net.load_state_dict(weights.model)
    net.eval()
    recipe_file = str(weights.metadata.get("recipe_file", ""))
    training = {
        "recipe": recipe.to_dict(),
        "recipe_file": describe_recipe_path(Path(recipe_file)) if recipe_file else "",
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


def stream_logits(step: Any, manifest: Any, x: np.ndarray) -> np.ndarray:
    """A streaming graph's logits after every frame of padded utterances ``x [N, frames, 12]``: ``[N, frames, C]``."""
    from training.evaluate import run_sequence

    return run_sequence(step, manifest, {manifest.inputs[0].name: x}, chunk=1)["logits"]


def accuracy_by_fraction(logits: np.ndarray, lengths: np.ndarray, labels: np.ndarray) -> dict[float, float]:
    """Accuracy of the running answer after ``ceil(f * length)`` frames, for each f in :data:`FRACTIONS`."""
    result = {}
    for fraction in FRACTIONS:
        seen = np.maximum(1, np.ceil(fraction * lengths - 1e-9).astype(np.int64))
        guess = logits[np.arange(len(labels)), seen - 1].argmax(axis=-1)
        result[fraction] = float((guess == labels).mean())
    return result


def evaluate(folder: Path, progress: bool = False) -> dict[str, Any]:
    """Test accuracy from the ONNX graph (370 utterances, seconds: no progress bar).

    Streaming model: ``test_accuracy_final_frame`` (the answer after the last frame) and
    ``test_accuracy_at_<p>pct`` (after the first p % of the frames, rounded up). Whole-sequence
    model: ``test_accuracy``.
    """
    from service.contract import Manifest
    from service.datasets.vowels import load_vowels
    from training.evaluate import open_session, ort_step_fn

    manifest = Manifest.load(folder)
    step = ort_step_fn(open_session(Path(folder) / manifest.step_graph))
    test = load_vowels("test")
    if manifest.decoding.get("mode") == "stream":
        x, lengths = test.padded(int(test.lengths.max()))
        by_fraction = accuracy_by_fraction(stream_logits(step, manifest, x), lengths, test.labels)
        scores = {"test_accuracy_final_frame": by_fraction[1.0]}
        scores |= {f"test_accuracy_at_{round(100 * f)}pct": a for f, a in by_fraction.items() if f < 1.0}
    else:
        x, lengths = test.padded(int(manifest.decoding["max_frames"]))
        logits = step({"frames": x[:, None], "length": lengths[:, None]})["logits"][:, 0]
        scores = {"test_accuracy": float((logits.argmax(axis=-1) == test.labels).mean())}
    return {"model": manifest.name, **scores}


KIND = TrainingKind(TASK, ClassifierRecipe, train, export, evaluate)
