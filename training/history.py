"""A run's loss history: saved in checkpoints, plotted as the loss curve, summarised in the report."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The reported train loss is the mean of this many last steps (one step's loss is noisy).
FINAL_LOSS_WINDOW = 50


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
