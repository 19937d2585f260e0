"""The ``[train]`` table of a truncated-BPTT recipe: the loop's settings, readable without torch."""

from __future__ import annotations

from dataclasses import dataclass


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
