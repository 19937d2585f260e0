"""The recipe of a character language model: the net's size and the truncated-BPTT loop's settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from training.loop_config import LoopConfig


@dataclass(frozen=True)
class CharLSTMConfig:
    """The ``[model]`` table of a character-LSTM recipe (see ``training.tasks.language_model.net.CharLSTM``)."""

    embed: int
    hidden: int
    layers: int
    dropout: float = 0.0


@dataclass(frozen=True)
class CharLMRecipe:
    """A character language model: which net, and how to train it."""

    name: str
    task: str
    model: CharLSTMConfig
    train: LoopConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPE = CharLMRecipe
