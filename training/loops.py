"""Training loop for step-contract nets: truncated BPTT over contiguous streams.

Three pieces: ``train_step`` is one update (the step function), ``train`` is the loop around it
(data, schedule, validation, progress), and ``training.checkpoints`` writes and resumes runs.

The corpus (any ``[N, ...]`` sequence: character ids, samples of a series) is cut into
``batch`` parallel rows (:class:`StreamChunks`). Step ``k`` of the run trains on the next
``bptt`` items of every row, starting from the state the previous chunk ended in:

    state_0 = zeros
    for each chunk k:   y, state_k = net(x_k, state_{k-1}.detach())
                        loss_k = loss(y, x shifted by one);  backward;  clip;  AdamW step

Carrying the state lets the net use context longer than ``bptt``; detaching it stops the
gradient at the chunk boundary, so memory and time per step stay O(bptt). That is truncated
back-propagation through time (TBPTT). Each epoch starts the rows at a new offset in
``[0, bptt)`` so chunk boundaries fall in different places, and from a zero state.

The loop is seeded and resumable: a checkpoint holds the model, optimiser, schedule, step,
every random generator, the carried state and the loss history, so ``resume=True`` continues
to the bit-identical result of an uninterrupted run (on the same device and library versions).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from service.datasets.streams import EVAL_CHUNK, EVAL_STREAMS, as_streams
from training.checkpoints import (
    BEST_WEIGHTS_FILE,
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    LOSS_CURVE_FILE,
    SUMMARY_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    rng_state,
    save_atomic,
    set_rng_state,
    write_weights,
)
from training.nets.step import StepNet

__all__ = ["BEST_WEIGHTS_FILE", "CHECKPOINT_FILE", "LOSS_CURVE_FILE", "WEIGHTS_FILE"]

#: Train losses are copied off the device every this many steps (a copy waits for the GPU).
LOG_EVERY = 20
#: The reported train loss is the mean of this many last steps (one step's loss is noisy).
FINAL_LOSS_WINDOW = 50

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per token) of ``logits [B, T, V]`` against ids ``[B, T]``."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@dataclass(frozen=True)
class LoopConfig:
    """The training loop's settings (the ``[train]`` table of a recipe).

    Attributes:
        batch: parallel contiguous streams per step.
        bptt: truncation length: steps per chunk that gradients flow through.
        steps: optimiser steps in the run.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay, applied to matrices only (not biases).
        warmup_steps: steps of linear warm-up from 0 to ``lr`` (Adam's early moments are noisy).
        min_lr_ratio: the cosine schedule decays to ``lr * min_lr_ratio`` at the last step.
        clip_norm: the global gradient norm is clipped to this (guards against exploding gradients).
        seed: seeds torch, numpy and random, and the per-epoch stream offsets.
        eval_every: steps between validation passes (and loss-curve updates).
        checkpoint_every: steps between resumable checkpoints.
        out: folder for checkpoints, weights, the loss curve and the summary.
    """

    batch: int
    bptt: int
    steps: int
    lr: float
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    clip_norm: float = 1.0
    seed: int = 0
    eval_every: int = 100
    checkpoint_every: int = 500
    out: str = "runs/out"

    def __post_init__(self) -> None:
        for name in ("batch", "bptt", "steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.clip_norm <= 0:
            raise ValueError(f"train.lr and train.clip_norm must be > 0, got {self.lr} and {self.clip_norm}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("train.weight_decay and train.warmup_steps must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


#: Settings that may change when a run is resumed; any other change would make it a different run.
RESUMABLE_CHANGES = ("steps", "eval_every", "checkpoint_every", "out")


class WarmupCosine:
    """Learning-rate factor: linear warm-up, then a cosine from 1 down to ``min_ratio``.

    A callable object rather than a closure so ``LambdaLR.state_dict()`` saves it.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class StreamChunks:
    """A sequence cut into ``batch`` contiguous rows, served as TBPTT chunks.

    Chunk ``k`` of epoch ``e`` is ``rows[:, o_e + k*bptt : o_e + (k+1)*bptt]`` with its targets
    one item later; ``o_e`` is a per-epoch offset drawn from ``(seed, e)``. The chunk is a pure
    function of the step number, so a resumed run needs no data-loader state.
    """

    def __init__(self, sequence: torch.Tensor, *, batch: int, bptt: int, seed: int) -> None:
        rows = len(sequence) // batch
        self.chunks_per_epoch = rows // bptt - 1  # one chunk of room for the offset and the shifted target
        if self.chunks_per_epoch < 1:
            raise ValueError(
                f"{len(sequence)} items make {batch} rows of {rows}: too short for chunks of {bptt} (need >= {2 * bptt})"
            )
        self.rows = sequence[: batch * rows].reshape(batch, rows, *sequence.shape[1:])
        self.bptt, self.seed = bptt, seed
        self._offsets: dict[int, int] = {}

    def offset(self, epoch: int) -> int:
        if epoch not in self._offsets:
            self._offsets[epoch] = int(np.random.default_rng([self.seed, epoch]).integers(self.bptt))
        return self._offsets[epoch]

    def chunk(self, step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(inputs, targets, starts_epoch)`` for a step; at an epoch start the state resets."""
        epoch, k = divmod(step, self.chunks_per_epoch)
        start = self.offset(epoch) + k * self.bptt
        return self.rows[:, start : start + self.bptt], self.rows[:, start + 1 : start + self.bptt + 1], k == 0


@dataclass
class History:
    """Loss per step and validation loss per evaluation; saved in checkpoints and plotted."""

    train: list[float] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)
    best_val: float = math.inf
    best_step: int = -1

    def final_train_loss(self) -> float:
        tail = self.train[-FINAL_LOSS_WINDOW:]
        return float(np.mean(tail)) if tail else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "train": self.train,
            "val": [list(v) for v in self.val],
            "best_val": self.best_val,
            "best_step": self.best_step,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        return cls(
            train=list(data["train"]),
            val=[(int(s), float(v)) for s, v in data["val"]],
            best_val=float(data["best_val"]),
            best_step=int(data["best_step"]),
        )


@dataclass(frozen=True)
class TrainResult:
    """What a run did: reported by the CLI and stored with the weights."""

    steps: int
    time_s: float
    device: str
    final_train_loss: float
    val_loss: float
    best_val_loss: float
    best_step: int
    stopped_early: bool
    out: str


def seed_everything(seed: int) -> None:
    """Seed every generator a run draws from: Python's, numpy's and torch's (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


@torch.no_grad()
def stream_loss(
    model: StepNet,
    sequence: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    streams: int = EVAL_STREAMS,
    chunk: int = EVAL_CHUNK,
    loss_fn: LossFn = next_token_loss,
) -> tuple[float, int]:
    """Mean loss per predicted item over ``sequence``, read as ``streams`` rows with the state carried.

    Returns ``(loss, items)``. This is the validation metric; ``training.evaluate`` computes
    the same number from the ONNX graph.
    """
    was_training = model.training
    model.eval()
    grid = torch.from_numpy(as_streams(np.asarray(sequence), streams)).to(device)
    inputs, targets = grid[:, :-1], grid[:, 1:]
    state = model.initial_state(streams, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, inputs.shape[1], chunk):
        y = targets[:, start : start + chunk]
        output, *new_state = model(inputs[:, start : start + chunk], *state)
        state = tuple(new_state)
        total += loss_fn(output, y).double() * y.numel()
    model.train(was_training)
    return float(total) / targets.numel(), targets.numel()


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (decaying biases and gains only hurts)."""
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def save_loss_curve(
    history: History, path: Path, title: str, *, ylabel: str = "loss (nats per item)", log: bool = False
) -> None:
    """Plot train loss per step (raw and smoothed) and validation loss per evaluation (``log``: a
    log y axis, for losses that fall by decades)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if history.train:
        steps = np.arange(1, len(history.train) + 1)
        ax.plot(steps, history.train, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
        window = min(50, len(history.train))
        smooth = np.convolve(history.train, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="tab:blue", label=f"train ({window}-step mean)")
    if history.val:
        val_steps, val_losses = zip(*history.val, strict=True)
        ax.plot(val_steps, val_losses, "o-", color="tab:orange", markersize=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train_step(
    model: StepNet,
    x: torch.Tensor,
    y: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    *,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    clip_norm: float,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One truncated-BPTT update from the carried ``state``; returns the (detached) loss and new state.

    forward through the chunk, loss, backward, clip the global gradient norm to ``clip_norm``,
    optimiser step; the new state is detached, which is the truncation: no gradient flows into
    earlier chunks.
    """
    output, *new_state = model(x, *state)
    loss = loss_fn(output, y)
    optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return loss.detach(), tuple(s.detach() for s in new_state)


def train(
    model: StepNet,
    train_sequence: np.ndarray,
    val_sequence: np.ndarray,
    config: LoopConfig,
    *,
    device: torch.device | str = "cpu",
    loss_fn: LossFn = next_token_loss,
    metadata: Mapping[str, Any] | None = None,
    resume: bool = False,
    max_minutes: float | None = None,
    stop_at_step: int | None = None,
    progress: bool = True,
    title: str = "training loss",
) -> TrainResult:
    """Train ``model`` with truncated BPTT; write checkpoints, weights, loss curve and summary to ``config.out``.

    Args:
        model: a freshly built net (seed before building it for a reproducible start);
            with ``resume`` its weights are replaced by the checkpoint's.
        train_sequence, val_sequence: ``[N, ...]`` arrays (e.g. character ids).
        config: the loop settings.
        device: where to train.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean loss; next-token cross-entropy by default.
        metadata: JSON-able facts the exporter needs (model arguments, vocabulary, recipe);
            stored in every checkpoint and weights file.
        resume: continue from ``config.out/checkpoint.pt``.
        max_minutes: stop (with a checkpoint and weights) once this much wall time has passed.
        stop_at_step: stop after this step as the time guard would (splits a run into parts).
        progress: show a tqdm bar.
        title: the loss-curve title.
    """
    device = torch.device(device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    metadata = dict(metadata or {})
    history = History()
    start_step, elapsed_before = 0, 0.0
    carried: tuple[torch.Tensor, ...] | None = None
    checkpoint: dict[str, Any] | None = None

    if resume:
        checkpoint = load_checkpoint(out / CHECKPOINT_FILE, asdict(config), metadata, RESUMABLE_CHANGES)
        model.load_state_dict(checkpoint["model"])
        history = History.from_dict(checkpoint["history"])
        start_step, elapsed_before = int(checkpoint["step"]), float(checkpoint["elapsed_s"])
        carried = tuple(t.to(device) for t in checkpoint["carried_state"])
    else:
        seed_everything(config.seed)

    model.to(device)
    model.train()
    optimizer = make_optimizer(model, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(config.warmup_steps, config.steps, config.min_lr_ratio)
    )
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["scheduler"])
        schedule.lr_lambdas[0].total_steps = config.steps  # type: ignore[attr-defined]  # a longer run decays later
        set_rng_state(checkpoint["rng"])
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the head; the LSTM is cuDNN's

    data = StreamChunks(
        torch.as_tensor(train_sequence).to(device), batch=config.batch, bptt=config.bptt, seed=config.seed
    )
    state = carried if carried is not None else model.initial_state(config.batch, device)
    device_name = describe_device(device)
    pending: list[torch.Tensor] = []  # losses still on the device
    started = time.monotonic()
    stopped_early = False

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - started

    def flush() -> None:
        if pending:
            history.train.extend(torch.stack(pending).tolist())
            pending.clear()

    def snapshot(step: int) -> dict[str, Any]:
        flush()
        return {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "elapsed_s": elapsed(),
            "config": asdict(config),
            "metadata": metadata,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "history": history.to_dict(),
            "rng": rng_state(),
            "carried_state": [t.detach().cpu() for t in state],
        }

    def training_facts(step: int) -> dict[str, Any]:
        return {
            "steps": step,
            "time_s": round(elapsed(), 1),
            "device": device_name,
            "torch": str(torch.__version__),
            "final_train_loss": history.final_train_loss(),
            "val_loss": history.val[-1][1] if history.val else math.nan,
            "config": asdict(config),
        }

    def validate(step: int) -> float:
        loss, _ = stream_loss(model, val_sequence, device=device, loss_fn=loss_fn)
        history.val.append((step, loss))
        if loss < history.best_val:
            history.best_val, history.best_step = loss, step
            write_weights(out / BEST_WEIGHTS_FILE, model, metadata, training_facts(step))
        return loss

    bar = tqdm(
        total=config.steps, initial=start_step, disable=not progress, unit="step", dynamic_ncols=True, mininterval=2.0
    )
    step = start_step
    while step < config.steps:
        x, y, starts_epoch = data.chunk(step)
        if starts_epoch:
            state = model.initial_state(config.batch, device)
        loss, state = train_step(model, x, y, state, loss_fn=loss_fn, optimizer=optimizer, clip_norm=config.clip_norm)
        schedule.step()
        pending.append(loss)
        step += 1
        bar.update(1)

        if step % LOG_EVERY == 0:
            flush()
            bar.set_postfix(loss=f"{history.train[-1]:.3f}", lr=f"{schedule.get_last_lr()[0]:.2e}", refresh=False)
        if step % config.eval_every == 0 or step == config.steps:
            flush()
            val = validate(step)
            bar.write(f"step {step}: train {history.final_train_loss():.4f}  val {val:.4f}  ({elapsed():.0f}s)")
            save_loss_curve(history, out / LOSS_CURVE_FILE, title)
        out_of_time = max_minutes is not None and elapsed() - elapsed_before > 60.0 * max_minutes
        if out_of_time or step == stop_at_step:
            stopped_early = step < config.steps
            break
        if step % config.checkpoint_every == 0:
            save_atomic(snapshot(step), out / CHECKPOINT_FILE)
    bar.close()

    save_atomic(snapshot(step), out / CHECKPOINT_FILE)
    if not history.val or history.val[-1][0] != step:
        validate(step)
    write_weights(out / WEIGHTS_FILE, model, metadata, training_facts(step))
    save_loss_curve(history, out / LOSS_CURVE_FILE, title)
    result = TrainResult(
        steps=step,
        time_s=round(elapsed(), 1),
        device=device_name,
        final_train_loss=history.final_train_loss(),
        val_loss=history.val[-1][1],
        best_val_loss=history.best_val,
        best_step=history.best_step,
        stopped_early=stopped_early,
        out=str(out),
    )
    (out / SUMMARY_FILE).write_text(json.dumps(asdict(result), indent=1) + "\n")
    return result
