"""The recipe of a speaker classifier: the net (streamed or whole-sequence), its size and the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

NETS = ("stream_gru", "bidirectional_gru")


@dataclass(frozen=True)
class ClassifierRecipe:
    """A shipped speaker classifier.

    ``hidden``: GRU units (per direction); ``max_frames``: the longest utterance a
    whole-sequence call takes (the padded length; the data's longest is 29); ``epochs`` of
    ``batch`` utterances with AdamW (``lr`` with a cosine decay to 5 %, ``weight_decay``),
    gradients clipped at norm 1; ``dropout`` before the readout (bidirectional net only);
    ``input_noise``: the std of Gaussian noise added to the normalised frames in training.
    """

    name: str
    task: str
    net: str
    out: str
    description: str
    hidden: int = 64
    max_frames: int = 32
    epochs: int = 100
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dropout: float = 0.0
    input_noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.net not in NETS:
            raise ValueError(f"net must be one of {NETS}, got {self.net!r}")
        if self.net == "stream_gru" and self.dropout != 0.0:
            raise ValueError("dropout applies to the bidirectional net only")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPE = ClassifierRecipe
