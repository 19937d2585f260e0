"""Training a captioner: teacher forcing on seeded scenes, the best validation exact match kept.

The loss is the cross-entropy per word plus the doubly stochastic regulariser; with ``attention
= "hard"`` it adds the REINFORCE-style gradient of Xu et al. eq. 12, with a moving-average
baseline and an entropy bonus. Validation decodes greedily in PyTorch; the weights with the best
exact match are written to ``OUT/weights.pt`` with a loss curve.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional
from tqdm import tqdm

from service.datasets.scenes import (
    CANVAS,
    DATA_DESCRIPTION,
    END,
    MAX_CAPTION_TOKENS,
    PAD,
    SIZES,
    START,
    VOCABULARY,
    caption_batch,
    scenes,
)
from training.checkpoints import LOSS_CURVE_FILE, WEIGHTS_FILE, write_weights
from training.history import History
from training.loops import seed_everything
from training.plots import save_loss_curve
from training.recipes import describe_recipe_path
from training.tasks import TrainOptions
from training.tasks.captioner.evaluate import grid_centre
from training.tasks.captioner.net import Captioner, doubly_stochastic_penalty
from training.tasks.captioner.recipe import CaptionerModel, CaptionerRecipe, CaptionerTrain

#: Classes of :func:`location_labels`: background, then ten digits small and ten large.
LOCATION_CLASSES = 21


def build_net(model: CaptionerModel) -> Captioner:
    c = model.channels
    return Captioner(
        vocab_size=len(VOCABULARY),
        channels=(c, 2 * c, 2 * c),
        embed=model.embed,
        hidden=model.hidden,
        attention=model.attention,
        heads=model.heads,
        coordinates=model.coordinates,
        canvas=CANVAS,
    )


def teacher_forcing(captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decoder inputs ``[<START>, w_1 .. w_{T-1}]`` and targets ``[w_1 .. w_T]`` (<END>, then <PAD>)."""
    targets = caption_batch(captions)
    inputs = np.concatenate([np.full((len(captions), 1), VOCABULARY.index(START)), targets[:, :-1]], axis=1)
    return inputs, targets


def location_labels(chosen: list[Any], locations: int) -> np.ndarray:
    """``[N, L]`` class of every annotation: 0 where no digit's box holds the location's centre,
    else ``1 + digit`` for a small digit and ``11 + digit`` for a large one.

    The scenes know where every digit is, so the encoder can be told what each of its locations
    shows. Captions alone teach that only through the attention, which early in training is
    spread over the whole grid; this target reaches every location at once. It supervises the
    encoder's features, never the attention: where the decoder looks is still learned from the
    captions alone, so the pointing metric still measures what the attention learned.
    """
    labels = np.zeros((len(chosen), locations), np.int64)
    centres = [grid_centre(i, locations) for i in range(locations)]
    for n, scene in enumerate(chosen):
        for digit, box in zip(scene.digits, scene.boxes, strict=True):
            offset = 11 if box.size == SIZES["large"] else 1
            for i, (row, column) in enumerate(centres):
                if box.contains(row, column):
                    labels[n, i] = offset + digit
    return labels


def greedy_torch(net: Captioner, images: np.ndarray, max_tokens: int) -> list[str]:
    """Greedy captions in PyTorch, for validation during training."""
    end = VOCABULARY.index(END)
    with torch.no_grad():
        h, c, annotations, mask = net.init_graph(torch.from_numpy(images))
        word = torch.full((len(images),), VOCABULARY.index(START), dtype=torch.long)
        ids = []
        for _ in range(max_tokens):
            logits, _, h, c, _ = net.decoder.step(word, h, c, annotations, mask)
            word = logits.argmax(-1)
            ids.append(word)
        table = torch.stack(ids, 1).tolist()
    captions = []
    for row in table:
        row = row[: row.index(end)] if end in row else row
        captions.append(" ".join(VOCABULARY[i] for i in row))
    return captions


@dataclass(frozen=True)
class CaptionData:
    """The seeded scenes a run trains and validates on, as the tensors the loss reads."""

    val_scenes: list[Any]
    val_images: np.ndarray
    images: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    location_targets: torch.Tensor | None

    @classmethod
    def draw(cls, config: CaptionerTrain, net: Captioner) -> CaptionData:
        train_set = scenes("train", config.scenes, seed=config.seed)
        val_set = scenes("validation", config.val_scenes, seed=config.seed)
        inputs, targets = teacher_forcing([s.caption for s in train_set])
        locations = None
        if config.locations:
            locations = torch.from_numpy(location_labels(train_set, net.init_graph.encoder.where.shape[1]))
        return cls(
            val_set,
            np.stack([s.image for s in val_set]),
            torch.from_numpy(np.stack([s.image for s in train_set])),
            torch.from_numpy(inputs),
            torch.from_numpy(targets),
            locations,
        )

    def exact_match(self, net: Captioner) -> float:
        """The fraction of validation scenes whose greedy caption is the reference."""
        net.eval()
        captions = greedy_torch(net, self.val_images, MAX_CAPTION_TOKENS)
        return float(np.mean([c == s.caption for c, s in zip(captions, self.val_scenes, strict=True)]))


@dataclass
class HardAttention:
    """REINFORCE for sampled attention: the caption's log-likelihood rewards the sampled locations."""

    sampler: torch.Generator
    baseline: float = 0.0

    def add_terms(
        self,
        loss: torch.Tensor,
        config: CaptionerTrain,
        per_word: torch.Tensor,
        real: torch.Tensor,
        alphas: torch.Tensor,
        logprobs: torch.Tensor,
    ) -> torch.Tensor:
        """``loss`` with the REINFORCE and entropy terms; updates the moving-average baseline."""
        reward = -(per_word * real).sum(dim=1).detach()
        self.baseline = config.baseline_decay * self.baseline + (1 - config.baseline_decay) * float(reward.mean())
        chosen = (logprobs * real).sum(dim=1)
        entropy = -(alphas * torch.log(alphas.clamp_min(1e-12))).sum(-1)
        return (
            loss
            - config.reinforce * ((reward - self.baseline) * chosen).mean()
            - config.entropy * (entropy * real).sum() / real.sum()
        )


def caption_loss(
    net: Captioner,
    data: CaptionData,
    batch: torch.Tensor,
    config: CaptionerTrain,
    locate: torch.nn.Linear | None,
    hard: HardAttention | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, nll)`` of one batch of scenes: words, the regulariser and the optional terms."""
    h, c, annotations, mask = net.init_graph(data.images[batch])
    sample = hard.sampler if hard is not None else None
    logits, alphas, logprobs = net.decoder(data.inputs[batch], h, c, annotations, mask, sample=sample)
    real = (data.targets[batch] != VOCABULARY.index(PAD)).float()
    per_word = functional.cross_entropy(
        logits.transpose(1, 2), data.targets[batch], ignore_index=VOCABULARY.index(PAD), reduction="none"
    )  # [B, T]
    nll = (per_word * real).sum() / real.sum()
    loss = nll + config.doubly_stochastic * doubly_stochastic_penalty(alphas, real)
    if locate is not None and data.location_targets is not None:
        loss = loss + config.locations * functional.cross_entropy(
            locate(annotations).flatten(0, 1), data.location_targets[batch].flatten()
        )
    if hard is not None:
        loss = hard.add_terms(loss, config, per_word, real, alphas, logprobs)
    return loss, nll


def train(recipe: CaptionerRecipe, options: TrainOptions) -> dict[str, Any]:
    config = recipe.train
    if options.steps is not None:
        config = replace(config, steps=options.steps)
    out = Path(options.out or recipe.out)
    recipe = replace(recipe, train=config, out=str(out))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    seed_everything(config.seed)
    net = build_net(recipe.model)
    started = time.perf_counter()
    data = CaptionData.draw(config, net)
    parameters = list(net.parameters())
    locate = None
    if config.locations:
        locate = torch.nn.Linear(net.init_graph.encoder.features, LOCATION_CLASSES)  # auxiliary, not exported
        parameters += list(locate.parameters())
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps, pct_start=0.1)
    order = torch.Generator().manual_seed(config.seed)
    hard = HardAttention(torch.Generator().manual_seed(config.seed + 1)) if config.attention == "hard" else None
    history, best, best_state = History(), -1.0, None
    deadline = started + 60 * options.max_minutes if options.max_minutes else math.inf
    steps = 0
    for step in tqdm(range(config.steps), desc=recipe.name, disable=not options.progress):
        net.train()
        batch = torch.randint(len(data.images), (config.batch,), generator=order)
        loss, nll = caption_loss(net, data, batch, config, locate, hard)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip_norm)
        optimizer.step()
        schedule.step()
        history.train.append(float(nll.detach()))
        steps = step + 1
        if steps % config.eval_every == 0 or steps == config.steps or time.perf_counter() > deadline:
            exact = data.exact_match(net)
            history.val.append((steps, 1.0 - exact))
            if exact > best:
                best, best_state = exact, {k: v.clone() for k, v in net.state_dict().items()}
        if time.perf_counter() > deadline:
            break
    assert best_state is not None
    net.load_state_dict(best_state)
    facts = {
        "steps": steps,
        "time_s": round(time.perf_counter() - started, 1),
        "device": "cpu (1 thread)",
        "torch": str(torch.__version__),
        "final_train_loss": history.final_train_loss(),
        "best_val_exact_match": best,
    }
    write_run(net, recipe, options, history, facts)
    return {"name": recipe.name, "weights": str(out / WEIGHTS_FILE), **facts}


def write_run(
    net: Captioner, recipe: CaptionerRecipe, options: TrainOptions, history: History, facts: dict[str, Any]
) -> None:
    """The weights (with the recipe and the run's facts) and the loss curve, in the recipe's ``out``."""
    metadata = {
        "recipe": recipe.to_dict(),
        "recipe_file": describe_recipe_path(options.recipe_file),
        "data": DATA_DESCRIPTION,
    }
    out = Path(recipe.out)
    write_weights(out / WEIGHTS_FILE, net, metadata, facts)
    save_loss_curve(history, out / LOSS_CURVE_FILE, f"{recipe.name}: train NLL, validation 1 - exact match")
