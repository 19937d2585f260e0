"""Training a speaker classifier: AdamW over epochs of utterances, a cosine decay, clipping at norm 1."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional
from tqdm import tqdm

from service.datasets.vowels import DATA_DESCRIPTION, FEATURES, SPEAKERS, feature_stats, load_vowels
from training.bptt import clip_by_norm
from training.checkpoints import WEIGHTS_FILE, write_weights
from training.loops import seed_everything
from training.nets.cell_step import CellStepNet
from training.recipes import describe_recipe_path
from training.tasks import TrainOptions
from training.tasks.sequence_classifier.recipe import ClassifierRecipe
from training.tasks.sequence_classifier.whole_sequence import WholeSequenceClassifier


def build_net(recipe: ClassifierRecipe, mean: Any = None, std: Any = None) -> Any:
    """The untrained net of ``recipe``, normalising its input by ``mean``/``std`` (tensors) inside the graph."""
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
    if hasattr(net, "classify"):
        return functional.cross_entropy(net.classify(x, lengths), labels)
    logits = net(x, *net.initial_state(x.shape[0]))[0]  # [B, frames, classes]
    mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    per_frame = functional.cross_entropy(
        logits.transpose(1, 2), labels[:, None].expand(-1, x.shape[1]), reduction="none"
    )
    return (per_frame * mask).sum() / mask.sum()


def train(recipe: ClassifierRecipe, options: TrainOptions) -> dict[str, Any]:
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
    write_weights(out / WEIGHTS_FILE, net, metadata, training)
    return {"name": recipe.name, "weights": str(out / WEIGHTS_FILE), **training}
