"""The recipe of an associative memory: which net (Hopfield, dense Hopfield, RBM) and its settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

NETS = ("hopfield", "dense_hopfield", "rbm")


@dataclass(frozen=True)
class MemoryRecipe:
    """A shipped associative memory. Keys that do not apply to ``net`` must keep their defaults.

    ``letters``: which letter bitmaps a Hopfield net or dense memory stores. Hopfield: ``rule``
    (hebbian | storkey), ``update`` (async | sync). Dense memory: ``beta``. RBM: ``hidden``,
    ``k``, ``persistent``, ``epochs``, ``batch``, ``lr``, ``momentum``, ``weight_decay``
    (``rbm_training.RBMConfig``). ``seed`` seeds the RBM's training and the golden trace.
    """

    name: str
    task: str
    net: str
    out: str
    description: str
    letters: str = ""
    rule: str = "storkey"
    update: str = "async"
    beta: float = 1.0
    hidden: int = 400
    k: int = 1
    persistent: bool = False
    epochs: int = 200
    batch: int = 20
    lr: float = 0.05
    momentum: float = 0.5
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.net not in NETS:
            raise ValueError(f"net must be one of {NETS}, got {self.net!r}")
        if (self.net == "rbm") == bool(self.letters):
            raise ValueError("letters: the letters a Hopfield net or dense memory stores (and nothing for an rbm)")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        owned = {
            "hopfield": {"rule", "update"},
            "dense_hopfield": {"beta"},
            "rbm": {"hidden", "k", "persistent", "epochs", "batch", "lr", "momentum", "weight_decay"},
        }
        foreign = sorted(
            key for net, keys in owned.items() if net != self.net for key in keys if getattr(self, key) != defaults[key]
        )
        if foreign:
            raise ValueError(f"key(s) {foreign} do not apply to a {self.net} net")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPE = MemoryRecipe
