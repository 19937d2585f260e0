"""Training the date translator: characters in, ISO date characters out, teacher forcing.

Every step draws a fresh seeded batch of ``(surface form, ISO date)`` pairs from the training
templates (``training.tasks.translator.dates``: the held-out templates are never drawn), so the data is
unlimited and a step's batch is a pure function of ``(seed, step)``. One update is
``training.loops.train_step`` with the warm-up + cosine schedule of ``training.loops``. Every
``eval_every`` steps the net decodes a fixed validation set greedily and the exact-match rate is
printed beside the loss; the held-out templates are only scored from the exported graphs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from training.checkpoints import LOSS_CURVE_FILE, SUMMARY_FILE, WEIGHTS_FILE, write_weights
from training.history import History
from training.loops import (
    WarmupCosine,
    describe_device,
    make_optimizer,
    next_token_loss,
    seed_everything,
    train_step,
)
from training.plots import save_loss_curve
from training.recipes import describe_recipe_path
from training.tasks import TrainOptions
from training.tasks.translator import dates
from training.tasks.translator.codec import START, TARGET_STEPS, Codec, DecoderStep, exact_match, greedy_decode
from training.tasks.translator.net import Seq2Seq
from training.tasks.translator.recipe import ModelConfig, TrainConfig, TranslatorRecipe

VALIDATION_EXAMPLES = 1000


def torch_decoder(model: Seq2Seq, chars: np.ndarray, mask: np.ndarray) -> tuple[DecoderStep, Any]:
    """PyTorch's decoder as a :data:`DecoderStep`, and its initial state (``s_0``)."""
    with torch.no_grad():
        s0, annotations, keys = model.encode(torch.from_numpy(chars), torch.from_numpy(mask))
    mask_t = torch.from_numpy(mask)

    @torch.no_grad()
    def step(previous: np.ndarray, state: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        logits, weights, state = model.step(torch.from_numpy(previous), state, annotations, keys, mask_t)
        return logits.numpy(), weights.mean(dim=1).numpy(), state

    return step, s0


def translate_with_torch(model: Seq2Seq, codec: Codec, texts: Sequence[str]) -> list[str]:
    was_training = model.training
    model.eval()
    chars, mask = codec.encode_sources(texts)
    step, s0 = torch_decoder(model, chars, mask)
    tokens, _ = greedy_decode(step, s0, batch=len(texts), start_id=codec.target.index(START), steps=TARGET_STEPS)
    model.train(was_training)
    return [codec.decode_target(row) for row in tokens]


@dataclass(frozen=True)
class TranslationRun:
    steps: int
    time_s: float
    device: str
    final_train_loss: float
    validation_exact_match: float
    stopped_early: bool
    out: str


def build_model(codec: Codec, config: ModelConfig) -> Seq2Seq:
    return Seq2Seq(source_vocab=len(codec.source), target_vocab=len(codec.target), **asdict(config))


@dataclass(frozen=True)
class ValidationSet:
    """A fixed set drawn from the training templates with other dates than the batches'."""

    texts: list[str]
    isos: list[str]
    chars: torch.Tensor
    previous: torch.Tensor
    targets: torch.Tensor

    @classmethod
    def draw(cls, codec: Codec, seed: int) -> ValidationSet:
        pairs = dates.sample(dates.split_templates().train, VALIDATION_EXAMPLES, [seed, 1])
        texts, isos = [text for text, _ in pairs], [iso for _, iso in pairs]
        chars, _ = codec.encode_sources(texts)
        previous, targets = codec.encode_targets(isos)
        return cls(texts, isos, torch.from_numpy(chars), torch.from_numpy(previous), torch.from_numpy(targets))

    def score(self, model: Seq2Seq, codec: Codec) -> tuple[float, float]:
        """``(teacher-forced loss, greedy exact match)`` of ``model`` on the set."""
        model.eval()
        with torch.no_grad():
            (logits,) = model(self.chars, self.previous)
            loss = float(next_token_loss(logits, self.targets))
        match = exact_match(translate_with_torch(model, codec, self.texts), self.isos)
        model.train()
        return loss, match


def training_batch(
    codec: Codec, templates: Sequence[Any], config: TrainConfig, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step ``step``'s ``(source ids, previous tokens, targets)``: a pure function of ``(seed, step)``."""
    pairs = dates.sample(templates, config.batch, [config.seed, 0, step])
    chars, mask = codec.encode_sources([text for text, _ in pairs])
    chars = chars[:, : int(mask.sum(axis=1).max())]  # padding past the longest changes nothing; skip it
    previous, targets = codec.encode_targets([iso for _, iso in pairs])
    return torch.from_numpy(chars), torch.from_numpy(previous), torch.from_numpy(targets)


def train_translator(
    model: Seq2Seq,
    codec: Codec,
    config: TrainConfig,
    *,
    metadata: dict[str, Any],
    max_minutes: float | None = None,
    progress: bool = True,
    title: str = "dates",
) -> TranslationRun:
    """Train ``model`` on the training templates; writes weights, loss curve and summary to ``config.out``."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    templates = dates.split_templates().train
    validation = ValidationSet.draw(codec, config.seed)
    seed_everything(config.seed)
    model.train()
    optimizer = make_optimizer(model, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(config.warmup_steps, config.steps, config.min_lr_ratio)
    )
    history = History()
    started = time.monotonic()
    match, step = 0.0, 0
    bar = tqdm(total=config.steps, disable=not progress, unit="step", dynamic_ncols=True, mininterval=2.0)
    while step < config.steps:
        chars, previous, targets = training_batch(codec, templates, config, step)
        loss, _ = train_step(
            model,  # type: ignore[arg-type]  # a 1-tuple net (Seq2Seq.forward): trained like a step net
            chars,
            targets,
            (previous,),
            loss_fn=next_token_loss,
            optimizer=optimizer,
            clip_norm=config.clip_norm,
        )
        schedule.step()
        history.train.append(float(loss))
        step += 1
        bar.update(1)
        if step % config.eval_every == 0 or step == config.steps:
            val_loss, match = validation.score(model, codec)
            history.val.append((step, val_loss))
            bar.write(
                f"step {step}: train {history.final_train_loss():.4f}  val {val_loss:.4f}  "
                f"exact {match:.4f}  ({time.monotonic() - started:.0f}s)"
            )
            save_loss_curve(history, out / LOSS_CURVE_FILE, title)
        if max_minutes is not None and time.monotonic() - started > 60.0 * max_minutes:
            break
    bar.close()
    run = TranslationRun(
        steps=step,
        time_s=round(time.monotonic() - started, 1),
        device="cpu",
        final_train_loss=history.final_train_loss(),
        validation_exact_match=match,
        stopped_early=step < config.steps,
        out=str(out),
    )
    write_run(model, config, run, metadata, history, title)
    return run


def write_run(
    model: Seq2Seq, config: TrainConfig, run: TranslationRun, metadata: dict[str, Any], history: History, title: str
) -> None:
    """The weights (with the run's facts), the loss curve and the summary, in ``run.out``."""
    out = Path(run.out)
    facts = {
        "steps": run.steps,
        "time_s": run.time_s,
        "device": describe_device(torch.device("cpu")),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "final_train_loss": run.final_train_loss,
        "validation_exact_match": run.validation_exact_match,
        "config": asdict(config),
    }
    write_weights(out / WEIGHTS_FILE, model, metadata, facts)
    save_loss_curve(history, out / LOSS_CURVE_FILE, title)
    (out / SUMMARY_FILE).write_text(json.dumps(asdict(run), indent=1) + "\n")


def train(recipe: TranslatorRecipe, options: TrainOptions) -> dict[str, Any]:
    if options.resume:
        raise ValueError(f"{recipe.name}: a translator run is short and is not resumable; run it again")
    if options.device not in ("auto", "cpu"):
        raise ValueError(f"{recipe.name}: the translator trains on the CPU (--device {options.device} asked)")
    loop = options.applied_to(recipe.train)
    recipe = replace(recipe, train=loop)
    torch.set_num_threads(1)  # the recorded time is one core's; results do not depend on it
    codec = Codec.for_dates()
    seed_everything(loop.seed)  # the initial weights depend on the seed too
    model = build_model(codec, recipe.model)
    metadata = {
        "recipe": recipe.to_dict(),
        "recipe_file": describe_recipe_path(options.recipe_file),
        "source_vocabulary": list(codec.source),
        "data": dates.DATA_DESCRIPTION,
    }
    params = sum(p.numel() for p in model.parameters())
    print(f"training {recipe.name}: {params:,} parameters on cpu (torch {torch.__version__}), out {loop.out}")
    run = train_translator(
        model,
        codec,
        loop,
        metadata=metadata,
        max_minutes=options.max_minutes,
        progress=options.progress,
        title=f"{recipe.name}: {options.recipe_file.name}",
    )
    return asdict(run)
