"""The recipe of a forecaster: the series, the net (a reservoir or a gated RNN) and how it learns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from training.tasks.forecaster.scoring import NRMSE84_HORIZON
from training.tasks.forecaster.series import SERIES

RESERVOIRS = ("esn", "adaptive_esn")
GATED_NETS = ("gru", "lstm")
NETS = (*RESERVOIRS, *GATED_NETS)
#: What a reservoir's fields are when a recipe leaves them out (a gated net must leave them out).
RESERVOIR_DEFAULTS = {
    "spectral_radius": 0.9,
    "leak": 1.0,
    "input_scaling": 0.5,
    "bias_scaling": 0.2,
    "ridge": 1e-8,
    "washout": 100,
    "forgetting": 1.0,
    "p_start": 1.0,
    "renewal": 0.0,
    "p_renewed": 1.0,
}


def check_rls(*, forgetting: float, p_start: float, renewal: float, p_renewed: float) -> None:
    """Refuses RLS settings whose P is unbounded (a recipe hears it at ``train``, not at export)."""
    if not 0.0 < forgetting <= 1.0 or not p_start > 0.0 or not p_renewed > 0.0:
        raise ValueError("forgetting must be in (0, 1], p_start and p_renewed > 0")
    if not 1.0 / forgetting - 1.0 < renewal < 1.0 and not (forgetting == 1.0 and renewal == 0.0):
        raise ValueError(
            f"renewal must be in (1/forgetting - 1, 1) = ({1.0 / forgetting - 1.0:.4g}, 1) to bound P, got {renewal}"
        )


@dataclass(frozen=True)
class FreeRunTraining:
    """The ``[bptt]`` table of a gated forecaster: the free-run schedule of ``free_run_training``;
    ``layers`` is the depth of the cell stack."""

    layers: int = 1
    steps: int = 5000
    batch: int = 128
    lr: float = 5e-3
    warmup: int = 100
    burn: int = 30
    horizon: int = NRMSE84_HORIZON
    clip_norm: float = 1.0
    eval_every: int = 500
    curriculum: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.burn < self.warmup:
            raise ValueError(f"burn must be in [0, warmup), got burn {self.burn} and warmup {self.warmup}")
        if min(self.layers, self.steps, self.batch, self.horizon, self.eval_every) < 1:
            raise ValueError("layers, steps, batch, horizon and eval_every must be >= 1")
        if not 0 < self.curriculum <= 1:
            raise ValueError(
                f"curriculum must be in (0, 1] (the fraction of steps the free run grows over), got {self.curriculum}"
            )


@dataclass(frozen=True)
class ForecastRecipe:
    """A shipped forecaster.

    ``series``: mackey_glass | laser | mackey_glass_drift (``training.tasks.forecaster.series``); ``net``:
    esn | adaptive_esn | gru | lstm; ``units``: the reservoir's size, or a gated net's units per
    layer. A reservoir: ``spectral_radius``, ``leak``, ``input_scaling``, ``bias_scaling``,
    ``seed``; its readout: ``ridge`` (λ) after ``washout`` steps. ``adaptive_esn`` adds the
    recursive least squares of each session: ``forgetting`` (λ_RLS), ``p_start``, ``renewal``
    and ``p_renewed``. A gated net learns by the ``[bptt]`` table (``FreeRunTraining``) and
    leaves the reservoir's fields out. ``max_horizon`` bounds a served rollout.
    """

    name: str
    task: str
    series: str
    net: str
    description: str
    out: str
    units: int
    spectral_radius: float = RESERVOIR_DEFAULTS["spectral_radius"]
    leak: float = RESERVOIR_DEFAULTS["leak"]
    input_scaling: float = RESERVOIR_DEFAULTS["input_scaling"]
    ridge: float = RESERVOIR_DEFAULTS["ridge"]
    washout: int = int(RESERVOIR_DEFAULTS["washout"])
    bias_scaling: float = RESERVOIR_DEFAULTS["bias_scaling"]
    seed: int = 0
    forgetting: float = RESERVOIR_DEFAULTS["forgetting"]
    p_start: float = RESERVOIR_DEFAULTS["p_start"]
    renewal: float = RESERVOIR_DEFAULTS["renewal"]
    p_renewed: float = RESERVOIR_DEFAULTS["p_renewed"]
    max_horizon: int = 500
    bptt: FreeRunTraining = dataclasses.field(default_factory=FreeRunTraining)

    def __post_init__(self) -> None:
        if self.net not in NETS:
            raise ValueError(f"net must be one of {NETS}, got {self.net!r}")
        if self.series not in SERIES:
            raise ValueError(f"series must be one of {SERIES}, got {self.series!r}")
        rls = ("forgetting", "p_start", "renewal", "p_renewed")
        if self.net == "esn" and any(getattr(self, k) != RESERVOIR_DEFAULTS[k] for k in rls):
            raise ValueError("forgetting, p_start, renewal and p_renewed belong to an adaptive_esn")
        if self.net in GATED_NETS:
            if any(getattr(self, k) != v for k, v in RESERVOIR_DEFAULTS.items()):
                raise ValueError(f"a {self.net} forecaster has no reservoir: leave out {', '.join(RESERVOIR_DEFAULTS)}")
        elif self.bptt != FreeRunTraining():
            raise ValueError("the [bptt] table belongs to a gru or lstm forecaster")
        if self.net == "adaptive_esn":
            check_rls(forgetting=self.forgetting, p_start=self.p_start, renewal=self.renewal, p_renewed=self.p_renewed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPE = ForecastRecipe
