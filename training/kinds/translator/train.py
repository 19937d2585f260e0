"""Training the date translator: characters in, ISO date characters out, teacher forcing.

Every step draws a fresh seeded batch of ``(surface form, ISO date)`` pairs from the training
templates (``service.datasets.dates``: the held-out templates are never drawn), so the data is
unlimited and a step's batch is a pure function of ``(seed, step)``. One update is
``training.loops.train_step`` (forward, cross-entropy, clip, AdamW) with the warm-up + cosine
schedule of ``training.loops``. Every ``eval_every`` steps the net decodes greedily a fixed
validation set drawn from the training templates with other dates, and the exact-match rate is
printed beside the loss; the held-out templates are only scored by ``statestream eval``, from
the exported graphs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from service.datasets import dates
from training.checkpoints import LOSS_CURVE_FILE, SUMMARY_FILE, WEIGHTS_FILE, write_weights
from training.loops import (
    History,
    WarmupCosine,
    describe_device,
    make_optimizer,
    next_token_loss,
    save_loss_curve,
    seed_everything,
    train_step,
)
from training.nets.seq2seq import Seq2Seq

PAD, START, END = "<pad>", "<start>", "<end>"
TARGET_TOKENS = (START, END, "-", *"0123456789")
TARGET_STEPS = len("2026-11-27") + 1  # the ISO date, then END
VALIDATION_EXAMPLES = 1000


class UnknownCharacter(ValueError):
    """A source text holds a character the translator was not built for."""


@dataclass(frozen=True)
class Codec:
    """Texts <-> id arrays. Source id 0 is padding; sources are padded to ``max_length``."""

    source: tuple[str, ...]
    target: tuple[str, ...] = TARGET_TOKENS
    max_length: int = dates.MAX_INPUT_CHARS

    @classmethod
    def for_dates(cls) -> Codec:
        return cls(source=(PAD, *dates.alphabet(dates.all_templates())))

    def encode_sources(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [N, L] int64, mask [N, L] float32)``; UnknownCharacter / ValueError on bad text."""
        index = {ch: i for i, ch in enumerate(self.source) if i > 0}
        ids = np.zeros((len(texts), self.max_length), np.int64)
        for row, text in enumerate(texts):
            if not 0 < len(text) <= self.max_length:
                raise ValueError(f"text of {len(text)} characters: must be 1..{self.max_length}")
            unknown = sorted({ch for ch in text if ch not in index})
            if unknown:
                raise UnknownCharacter(f"characters {unknown} are not in the vocabulary")
            ids[row, : len(text)] = [index[ch] for ch in text]
        return ids, (ids != 0).astype(np.float32)

    def encode_targets(self, isos: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(previous, targets)``, each ``[N, TARGET_STEPS]``: targets are the ISO characters
        then END; previous is START then the targets shifted by one (teacher forcing)."""
        index = {tok: i for i, tok in enumerate(self.target)}
        targets = np.array([[index[ch] for ch in iso] + [index[END]] for iso in isos], np.int64)
        previous = np.concatenate([np.full((len(isos), 1), index[START]), targets[:, :-1]], axis=1)
        return previous, targets

    def decode_target(self, ids: Sequence[int]) -> str:
        """Token ids to text, up to the first END."""
        out = []
        for i in ids:
            token = self.target[int(i)]
            if token == END:
                break
            out.append(token if len(token) == 1 else "")
        return "".join(out)


#: One decoder step on numpy arrays: ``(previous ids [B], state) -> (logits [B, V], weights [B, L], state)``.
DecoderStep = Callable[[np.ndarray, Any], tuple[np.ndarray, np.ndarray, Any]]


def greedy_decode(
    step: DecoderStep, state: Any, *, batch: int, start_id: int, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Feeds each step's most likely token to the next; returns ``(tokens [B, steps], weights [B, steps, L])``.

    Every row runs all ``steps`` (rows that ended keep decoding; the caller cuts at END), so a
    batch is one call per step for ONNX Runtime and PyTorch alike."""
    previous = np.full(batch, start_id, np.int64)
    tokens, weights = [], []
    for _ in range(steps):
        logits, attention, state = step(previous, state)
        previous = logits.argmax(axis=-1).astype(np.int64)
        tokens.append(previous)
        weights.append(attention)
    return np.stack(tokens, axis=1), np.stack(weights, axis=1)


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


def exact_match(predicted: Sequence[str], expected: Sequence[str]) -> float:
    return float(np.mean([p == e for p, e in zip(predicted, expected, strict=True)]))


def translate_with_torch(model: Seq2Seq, codec: Codec, texts: Sequence[str]) -> list[str]:
    was_training = model.training
    model.eval()
    chars, mask = codec.encode_sources(texts)
    step, s0 = torch_decoder(model, chars, mask)
    tokens, _ = greedy_decode(step, s0, batch=len(texts), start_id=codec.target.index(START), steps=TARGET_STEPS)
    model.train(was_training)
    return [codec.decode_target(row) for row in tokens]


@dataclass(frozen=True)
class ModelConfig:
    """The ``[model]`` table of a translator recipe (see ``training.nets.seq2seq.Seq2Seq``)."""

    embed: int
    encoder_hidden: int
    decoder_hidden: int
    attention: int
    heads: int = 1


@dataclass(frozen=True)
class TrainConfig:
    """The ``[train]`` table: batch, optimiser steps, AdamW and its schedule, seeding, output."""

    batch: int
    steps: int
    lr: float
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.05
    clip_norm: float = 1.0
    seed: int = 0
    eval_every: int = 200
    out: str = "runs/dates"

    def __post_init__(self) -> None:
        for name in ("batch", "steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.clip_norm <= 0:
            raise ValueError("train.lr and train.clip_norm must be > 0")


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
    import json

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    split = dates.split_templates()
    validation = dates.sample(split.train, VALIDATION_EXAMPLES, [config.seed, 1])
    val_chars, _ = codec.encode_sources([text for text, _ in validation])
    val_previous, val_targets = codec.encode_targets([iso for _, iso in validation])
    seed_everything(config.seed)
    model.train()
    optimizer = make_optimizer(model, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(config.warmup_steps, config.steps, config.min_lr_ratio)
    )
    history = History()
    started = time.monotonic()
    match = 0.0
    step = 0
    bar = tqdm(total=config.steps, disable=not progress, unit="step", dynamic_ncols=True, mininterval=2.0)
    while step < config.steps:
        pairs = dates.sample(split.train, config.batch, [config.seed, 0, step])
        chars, mask = codec.encode_sources([text for text, _ in pairs])
        chars = chars[:, : int(mask.sum(axis=1).max())]  # padding past the longest changes nothing; skip it
        previous, targets = codec.encode_targets([iso for _, iso in pairs])
        loss, _ = train_step(
            model,  # type: ignore[arg-type]  # a 1-tuple net (Seq2Seq.forward): trained like a step net
            torch.from_numpy(chars),
            torch.from_numpy(targets),
            (torch.from_numpy(previous),),
            loss_fn=next_token_loss,
            optimizer=optimizer,
            clip_norm=config.clip_norm,
        )
        schedule.step()
        history.train.append(float(loss))
        step += 1
        bar.update(1)
        if step % config.eval_every == 0 or step == config.steps:
            model.eval()
            with torch.no_grad():
                (logits,) = model(torch.from_numpy(val_chars), torch.from_numpy(val_previous))
                val_loss = float(next_token_loss(logits, torch.from_numpy(val_targets)))
            predicted = translate_with_torch(model, codec, [text for text, _ in validation])
            match = exact_match(predicted, [iso for _, iso in validation])
            model.train()
            history.val.append((step, val_loss))
            bar.write(
                f"step {step}: train {history.final_train_loss():.4f}  val {val_loss:.4f}  "
                f"exact {match:.4f}  ({time.monotonic() - started:.0f}s)"
            )
            save_loss_curve(history, out / LOSS_CURVE_FILE, title)
        if max_minutes is not None and time.monotonic() - started > 60.0 * max_minutes:
            break
    bar.close()
    elapsed = round(time.monotonic() - started, 1)
    facts = {
        "steps": step,
        "time_s": elapsed,
        "device": describe_device(torch.device("cpu")),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "final_train_loss": history.final_train_loss(),
        "validation_exact_match": match,
        "config": asdict(config),
    }
    write_weights(out / WEIGHTS_FILE, model, metadata, facts)
    save_loss_curve(history, out / LOSS_CURVE_FILE, title)
    run = TranslationRun(
        steps=step,
        time_s=elapsed,
        device="cpu",
        final_train_loss=history.final_train_loss(),
        validation_exact_match=match,
        stopped_early=step < config.steps,
        out=str(out),
    )
    (out / SUMMARY_FILE).write_text(json.dumps(asdict(run), indent=1) + "\n")
    return run
