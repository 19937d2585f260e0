"""The training loop for step-contract nets: truncated BPTT over contiguous streams.

:func:`train_step` is one update; :func:`train` is the loop around it (data, schedule,
validation, progress, checkpoints through ``training.checkpoints``). The corpus is cut into
``batch`` parallel rows (:class:`StreamChunks`); step ``k`` trains on the next ``bptt`` items of
every row, starting from the state the previous chunk ended in, detached (the truncation):

    for each chunk k:   y, state_k = net(x_k, state_{k-1}.detach())
                        loss_k = loss(y, x shifted by one);  backward;  clip;  AdamW step

The loop is seeded and resumable to the bit-identical result of an uninterrupted run;
docs/training.md says why and what a checkpoint holds.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
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
from training.history import History
from training.loop_config import RESUMABLE_CHANGES, LoopConfig
from training.nets.step import StepNet
from training.plots import save_loss_curve

#: Train losses are copied off the device every this many steps (a copy waits for the GPU).
LOG_EVERY = 20

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per token) of ``logits [B, T, V]`` against ids ``[B, T]``."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


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

    Returns ``(loss, items)``. This is the validation metric; ``training.onnx_replay`` computes
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


class _Run:
    """One :func:`train` call: the model, its optimiser and schedule, the data, the carried state and
    the history (everything a checkpoint saves), and the steps that use them."""

    def __init__(
        self,
        model: StepNet,
        config: LoopConfig,
        train_sequence: np.ndarray,
        val_sequence: np.ndarray,
        *,
        device: torch.device,
        loss_fn: LossFn,
        metadata: dict[str, Any],
        resume: bool,
        title: str,
    ) -> None:
        self.model, self.config, self.device, self.loss_fn = model, config, device, loss_fn
        self.val_sequence, self.metadata, self.title = val_sequence, metadata, title
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.history = History()
        self.step, self.elapsed_before = 0, 0.0
        checkpoint = self._load_checkpoint() if resume else None
        if checkpoint is None:
            seed_everything(config.seed)
        model.to(device)
        model.train()
        self.optimizer = make_optimizer(model, lr=config.lr, weight_decay=config.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(config.warmup_steps, config.steps, config.min_lr_ratio)
        )
        carried = self._resume_optimiser(checkpoint) if checkpoint is not None else None
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for the head; the LSTM is cuDNN's
        self.data = StreamChunks(
            torch.as_tensor(train_sequence).to(device), batch=config.batch, bptt=config.bptt, seed=config.seed
        )
        self.state = carried if carried is not None else model.initial_state(config.batch, device)
        self.device_name = describe_device(device)
        self.pending: list[torch.Tensor] = []  # losses still on the device
        self.started = time.monotonic()

    def _load_checkpoint(self) -> dict[str, Any]:
        checkpoint = load_checkpoint(self.out / CHECKPOINT_FILE, asdict(self.config), self.metadata, RESUMABLE_CHANGES)
        self.model.load_state_dict(checkpoint["model"])
        self.history = History.from_dict(checkpoint["history"])
        self.step, self.elapsed_before = int(checkpoint["step"]), float(checkpoint["elapsed_s"])
        return checkpoint

    def _resume_optimiser(self, checkpoint: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
        """Restores the optimiser, the schedule and every generator; returns the carried state."""
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["scheduler"])
        self.schedule.lr_lambdas[0].total_steps = self.config.steps  # type: ignore[attr-defined]  # a longer run decays later
        set_rng_state(checkpoint["rng"])
        return tuple(t.to(self.device) for t in checkpoint["carried_state"])

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def flush(self) -> None:
        if self.pending:
            self.history.train.extend(torch.stack(self.pending).tolist())
            self.pending.clear()

    def snapshot(self) -> dict[str, Any]:
        self.flush()
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "elapsed_s": self.elapsed(),
            "config": asdict(self.config),
            "metadata": self.metadata,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "history": self.history.to_dict(),
            "rng": rng_state(),
            "carried_state": [t.detach().cpu() for t in self.state],
        }

    def training_facts(self) -> dict[str, Any]:
        return {
            "steps": self.step,
            "time_s": round(self.elapsed(), 1),
            "device": self.device_name,
            "torch": str(torch.__version__),
            "final_train_loss": self.history.final_train_loss(),
            "val_loss": self.history.val[-1][1] if self.history.val else math.nan,
            "config": asdict(self.config),
        }

    def validate(self) -> float:
        loss, _ = stream_loss(self.model, self.val_sequence, device=self.device, loss_fn=self.loss_fn)
        self.history.val.append((self.step, loss))
        if loss < self.history.best_val:
            self.history.best_val, self.history.best_step = loss, self.step
            write_weights(self.out / BEST_WEIGHTS_FILE, self.model, self.metadata, self.training_facts())
        return loss

    def train_one_step(self) -> None:
        x, y, starts_epoch = self.data.chunk(self.step)
        if starts_epoch:
            self.state = self.model.initial_state(self.config.batch, self.device)
        loss, self.state = train_step(
            self.model,
            x,
            y,
            self.state,
            loss_fn=self.loss_fn,
            optimizer=self.optimizer,
            clip_norm=self.config.clip_norm,
        )
        self.schedule.step()
        self.pending.append(loss)
        self.step += 1

    def run(self, *, max_minutes: float | None, stop_at_step: int | None, progress: bool) -> bool:
        """Trains to the last step, or to a stop; True when it stopped before ``config.steps``."""
        config = self.config
        bar = tqdm(
            total=config.steps,
            initial=self.step,
            disable=not progress,
            unit="step",
            dynamic_ncols=True,
            mininterval=2.0,
        )
        stopped_early = False
        while self.step < config.steps:
            self.train_one_step()
            step = self.step
            bar.update(1)
            if step % LOG_EVERY == 0:
                self.flush()
                lr = self.schedule.get_last_lr()[0]
                bar.set_postfix(loss=f"{self.history.train[-1]:.3f}", lr=f"{lr:.2e}", refresh=False)
            if step % config.eval_every == 0 or step == config.steps:
                self.flush()
                val = self.validate()
                bar.write(
                    f"step {step}: train {self.history.final_train_loss():.4f}  val {val:.4f}  ({self.elapsed():.0f}s)"
                )
                save_loss_curve(self.history, self.out / LOSS_CURVE_FILE, self.title)
            out_of_time = max_minutes is not None and self.elapsed() - self.elapsed_before > 60.0 * max_minutes
            if out_of_time or step == stop_at_step:
                stopped_early = step < config.steps
                break
            if step % config.checkpoint_every == 0:
                save_atomic(self.snapshot(), self.out / CHECKPOINT_FILE)
        bar.close()
        return stopped_early

    def finish(self, stopped_early: bool) -> TrainResult:
        """The last checkpoint, validation, weights, loss curve and summary."""
        save_atomic(self.snapshot(), self.out / CHECKPOINT_FILE)
        if not self.history.val or self.history.val[-1][0] != self.step:
            self.validate()
        write_weights(self.out / WEIGHTS_FILE, self.model, self.metadata, self.training_facts())
        save_loss_curve(self.history, self.out / LOSS_CURVE_FILE, self.title)
        result = TrainResult(
            steps=self.step,
            time_s=round(self.elapsed(), 1),
            device=self.device_name,
            final_train_loss=self.history.final_train_loss(),
            val_loss=self.history.val[-1][1],
            best_val_loss=self.history.best_val,
            best_step=self.history.best_step,
            stopped_early=stopped_early,
            out=str(self.out),
        )
        (self.out / SUMMARY_FILE).write_text(json.dumps(asdict(result), indent=1) + "\n")
        return result


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
    run = _Run(
        model,
        config,
        train_sequence,
        val_sequence,
        device=torch.device(device),
        loss_fn=loss_fn,
        metadata=dict(metadata or {}),
        resume=resume,
        title=title,
    )
    stopped_early = run.run(max_minutes=max_minutes, stop_at_step=stop_at_step, progress=progress)
    return run.finish(stopped_early)
