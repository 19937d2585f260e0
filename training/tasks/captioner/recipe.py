"""The recipe of a captioner: the network's size and the training run (soft or hard attention)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ATTENTION_KINDS = ("soft", "hard")


@dataclass(frozen=True)
class CaptionerModel:
    """``channels``: widths of the three conv blocks; ``heads``: attention heads (hard attention takes 1);
    ``coordinates``: append each location's (row, column) to its annotation (``ConvEncoder``)."""

    channels: int = 32
    embed: int = 32
    hidden: int = 128
    attention: int = 64
    heads: int = 1
    coordinates: bool = False


@dataclass(frozen=True)
class CaptionerTrain:
    """``doubly_stochastic``: lambda of the regulariser. Hard attention: ``reinforce`` (lambda_r),
    ``entropy`` (lambda_e) and ``baseline_decay`` of the moving-average baseline. ``locations``:
    weight of the auxiliary loss that names, at every annotation, the digit and size whose box
    holds it (:func:`location_labels`); its linear head is trained alongside and discarded."""

    scenes: int = 20000
    steps: int = 3000
    batch: int = 64
    lr: float = 2e-3
    clip_norm: float = 5.0
    doubly_stochastic: float = 1.0
    attention: str = "soft"
    reinforce: float = 1.0
    entropy: float = 0.01
    baseline_decay: float = 0.9
    locations: float = 0.0
    eval_every: int = 250
    val_scenes: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")


@dataclass(frozen=True)
class CaptionerRecipe:
    name: str
    task: str
    out: str
    description: str
    model: CaptionerModel = dataclasses.field(default_factory=CaptionerModel)
    train: CaptionerTrain = dataclasses.field(default_factory=CaptionerTrain)

    def __post_init__(self) -> None:
        if self.train.attention == "hard" and self.model.heads != 1:
            raise ValueError("hard attention samples one location: it takes heads = 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPE = CaptionerRecipe
