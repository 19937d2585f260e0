"""The recipe of a date translator: the encoder-decoder's size and its training run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """The ``[model]`` table of a translator recipe (see ``training.tasks.translator.net.Seq2Seq``)."""

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
class TranslatorRecipe:
    """A shipped translator: its name, the network's size and the training run."""

    name: str
    task: str
    description: str
    model: ModelConfig
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPE = TranslatorRecipe
